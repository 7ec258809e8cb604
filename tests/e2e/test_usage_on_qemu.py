"""Idle shutdown and usage quotas on real QEMU guests (TCG): server + agent + libvirtd, with
thresholds of seconds (a usage check every second, a CPU sample every second).

One lab of two tiny-linux guests, booted once. Ana has a quota of 0.003 h (about 11 s) outside
scheduled slots (the lab has no timetable, so all of it counts) and is stopped when it is spent,
then refused a start until her teacher grants more. Ben was granted hours, so his guest — which
idles once booted, as the tiny-linux demo guest does — is stopped by the idle rule (15 s under
25 % CPU, no console open). Both stops are the agent's ordinary stop (ACPI, then forced), both
are in the lab's events and the audit log, and Ana's running time is the interval the host
observed, not the time between requests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    Agent,
    add_tiny_template,
    gql,
    image_dir_with,
    unique_lab,
    wait_host_ready,
    wait_until,
)
from tests.support.processes import Server

pytestmark = pytest.mark.qemu

MACHINES = ("query($n: String!) { machines(deployment: $n) { name student observed desired stopReason stopMessage "
            "runningSince } }")


def machines(server: Server, lab: str) -> dict[str, dict[str, Any]]:
    return {m["student"]: m for m in gql(server, MACHINES, n=lab)["machines"]}


@pytest.mark.timeout(420)
def test_quota_and_idle_shutdown_on_real_guests(start_kubekvm: Callable[..., Server],
                                                agents: Callable[..., Agent], tiny_linux: Path, site: Path) -> None:
    server = start_kubekvm(env={"KUBEKVM_USAGE_CHECK_INTERVAL": "1"})
    add_tiny_template(server)
    ana_token = server.token_for("ana", "student")
    agent = agents(server, site / "state", image_dir_with(site, tiny_linux), "--cpu-sample-interval", "1",
                   "--stop-grace", "5")
    wait_host_ready(server, agent.host_name)
    lab = unique_lab()
    gql(server, 'mutation($n: String!) { createDeployment(input: {name: $n, template: "tiny-linux", replicas: 2}) '
                "{ name } }", n=lab)
    gql(server, 'mutation($n: String!) { setRoster(name: $n, students: ["ana", "ben"]) { unbound } }', n=lab)
    gql(server, "mutation($n: String!) { setUsagePolicy(name: $n, input: {quotaHours: 0.003, idleMinutes: 0.25, "
                "idleCpuPercent: 25}) { quotaHours } }", n=lab)
    gql(server, 'mutation($n: String!) { grantUsageHours(name: $n, student: "ben", hours: 10) { remainingHours } }',
        n=lab)

    def stopped(student: str) -> dict[str, Any] | None:
        machine = machines(server, lab)[student]
        return machine if machine["stopReason"] and machine["observed"] == "SHUTOFF" else None

    ana = wait_until(lambda: stopped("ana"), timeout=180, what="Ana's machine stopped for her spent hours",
                     detail=lambda: machines(server, lab))
    assert (ana["stopReason"], ana["desired"], ana["runningSince"]) == ("QUOTA", "STOPPED", None)
    ben = wait_until(lambda: stopped("ben"), timeout=180, what="Ben's idle machine stopped",
                     detail=lambda: machines(server, lab))
    assert ben["stopReason"] == "IDLE" and ben["stopMessage"].startswith("Stopped because it was idle")

    # Ana's running time is what the host observed: at least her quota, and not more than she ran.
    usage = {u["student"]: u for u in gql(server, "query($n: String!) { labUsage(name: $n) { student usedHours "
                                                  "remainingHours } }", n=lab)["labUsage"]}
    assert 0.003 <= usage["ana"]["usedHours"] < 0.05 and usage["ana"]["remainingHours"] <= 0

    start = 'mutation($m: String!) { startMachine(name: $m) { name desired } }'
    refused = server.graphql(start, {"m": ana["name"]}, token=ana_token)
    assert refused["errors"][0]["extensions"]["code"] == "QUOTA_SPENT", refused
    gql(server, 'mutation($n: String!) { grantUsageHours(name: $n, student: "ana", hours: 1) { remainingHours } }',
        n=lab)
    assert machines(server, lab)["ana"]["stopReason"] is None, "granted more: the stop's reason no longer holds"
    allowed = server.graphql(start, {"m": ana["name"]}, token=ana_token)
    assert not allowed.get("errors") and allowed["data"]["startMachine"]["desired"] == "RUNNING", allowed

    events = [e["message"] for e in gql(server, "query($n: String!) { deployment(name: $n) { events(limit: 100) "
                                                "{ message } } }", n=lab)["deployment"]["events"]]
    assert any("stopped: Stopped because it was idle for 15 seconds" in e for e in events), events
    assert any("hours outside the lab's scheduled times are spent" in e for e in events), events
    audit = gql(server, '{ auditLog(action: "autoStopMachine") { items { actor actorKind target } } }')
    assert sorted((e["actor"], e["actorKind"], e["target"]) for e in audit["auditLog"]["items"]) == [
        ("kubekvm:usage", "system", f"machine:{ana['name']}"), ("kubekvm:usage", "system", f"machine:{ben['name']}")]
