"""The janitor as `kubekvm serve` runs it: two server replicas on one database, one janitor at
a time (the lease), capacity drift injected into the database repaired and logged by exactly
that one, and the lease handed over when its holder shuts down."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from pymongo import MongoClient

from tests.api.test_graphql import data, ensure_tiny_template, register_host
from tests.support.processes import Server

FAST = {"KUBEKVM_JANITOR_INTERVAL": "0.3"}


def _wait(condition: Callable[[], bool], *, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_one_replica_repairs_drift_and_hands_the_lease_over(start_kubekvm: Callable[..., Server]) -> None:
    first = start_kubekvm(env=FAST)
    second = start_kubekvm(env=FAST, database_name=first.database_name)
    ensure_tiny_template(first)
    register_host(first, "kvm-j")
    data(first.graphql('mutation { createDeployment(input: {name: "j", template: "tiny-linux", replicas: 2}) '
                       '{ name } }'))
    client: MongoClient[dict[str, object]] = MongoClient(first.database_uri, tz_aware=True)
    db = client[first.database_name]
    try:
        assert _wait(lambda: db["leases"].find_one({"_id": "janitor"}) is not None)
        # A crash between reserving and claiming capacity leaves this on the host.
        db["hosts"].update_one({"name": "kvm-j"}, {"$inc": {"allocated_vcpus": 7, "allocated_memory_mib": 900}})

        def repaired() -> bool:
            host = db["hosts"].find_one({"name": "kvm-j"})
            return host is not None and (host["allocated_vcpus"], host["allocated_memory_mib"]) == (2, 256)

        assert _wait(repaired), db["hosts"].find_one({"name": "kvm-j"})
        line = "janitor: host kvm-j had 9 vCPUs and 1156 MiB allocated"
        assert _wait(lambda: any(line in s.child.log.read_text() for s in (first, second)))
        assert [line in s.child.log.read_text() for s in (first, second)].count(True) == 1, \
            "both replicas repaired the same drift"

        lease = db["leases"].find_one({"_id": "janitor"})
        assert lease is not None
        holder, other = (first, second) if line in first.child.log.read_text() else (second, first)
        held_by = lease["holder"]
        holder.stop()  # SIGTERM: shutting down gives the lease up at once, not when it expires
        released = db["leases"].find_one({"_id": "janitor"})
        assert released is not None
        assert released["holder"] != held_by or released["expires"] <= datetime.now(UTC)
        assert _wait(lambda: (db["leases"].find_one({"_id": "janitor"}) or {}).get("holder") not in (None, held_by))
        assert other.child.process.poll() is None
    finally:
        client.close()
