"""The usage check as `kubekvm serve` runs it: two server replicas on one database, checking
every 0.3 s; machines over their lab's longest run are stopped once each, by whichever replica
holds the `usage-check` lease, never by both."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pymongo import MongoClient

from agent import documents
from tests.api.test_graphql import data, ensure_tiny_template, register_host
from tests.support.processes import Server
from tests.support.waiting import wait_until

FAST = {"KUBEKVM_USAGE_CHECK_INTERVAL": "0.3"}
MACHINES = 'query { machines(deployment: "u2") { id name desired stopReason powerGeneration } }'


def test_two_replicas_stop_each_machine_once(start_kubekvm: Callable[..., Server]) -> None:
    first = start_kubekvm(env=FAST)
    second = start_kubekvm(env=FAST, database_name=first.database_name)
    ensure_tiny_template(first)
    register_host(first, "kvm-u")
    data(first.graphql('mutation { createDeployment(input: {name: "u2", template: "tiny-linux", replicas: 2}) '
                       "{ name } }"))
    data(second.graphql('mutation { setUsagePolicy(name: "u2", input: {maxRunMinutes: 0.01}) { maxRunMinutes } }'))
    for machine in data(first.graphql(MACHINES))["machines"]:
        # As the host's agent reports a machine it started (an admin may report for any host).
        data(first.graphql(documents.REPORT_MACHINE_STATE, documents.report_machine_state(
            machine_id=machine["id"], host="kvm-u", state="running", message=None,
            power_generation=machine["powerGeneration"])))

    def stopped() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = data(second.graphql(MACHINES))["machines"]
        return found if all(m["stopReason"] == "MAX_RUNTIME" for m in found) else None

    machines = wait_until(stopped, timeout=60, what="both machines stopped for their longest run")
    assert machines is not None and {m["desired"] for m in machines} == {"STOPPED"}
    # A few more turns of the lease holder (it renews the lease each turn) change nothing.
    with MongoClient(first.database_uri, tz_aware=True) as client:
        leases = client[first.database_name]["leases"]
        seen = leases.find_one({"_id": "usage-check"})
        assert seen is not None
        wait_until(lambda: (leases.find_one({"_id": "usage-check"}) or {})["renewed"] >= seen["renewed"]
                   + timedelta(seconds=1), timeout=30, what="three more turns of the usage check")
    audit = data(first.graphql('{ auditLog(action: "autoStopMachine") { items { target actor } } }'))
    assert sorted(e["target"] for e in audit["auditLog"]["items"]) == ["machine:u2-1", "machine:u2-2"]
    assert [m["powerGeneration"] for m in data(first.graphql(MACHINES))["machines"]] == [
        m["powerGeneration"] for m in machines], "stopped again after the first stop"
