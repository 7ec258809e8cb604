"""A course's end on a real QEMU guest (server + agent + libvirtd): the scheduler stops the
running machine when the course is over (the agent's usual stop: ACPI, forced after its grace)
and, once the retention period has passed, deletes the lab: no domain, no overlay, no document.

The course's end is written into the database as if its day had passed (the pages refuse a last
day in the past); the scheduler turns every half second, so nothing waits for real days."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pymongo import MongoClient

from tests.e2e.conftest import (
    Agent,
    add_tiny_template,
    domains,
    gql,
    image_dir_with,
    lab_state,
    unique_lab,
    wait_host_ready,
    wait_until,
)
from tests.support.processes import Server

pytestmark = pytest.mark.qemu
FAST = {"KUBEKVM_SCHEDULER_INTERVAL": "0.5", "KUBEKVM_LAB_RETENTION_DAYS": "30"}


def ended(days_ago: int) -> dict[str, object]:
    day = (datetime.now(UTC) - timedelta(days=days_ago)).date().isoformat()
    return {"time_zone": "UTC", "lead_minutes": 0, "slots": [], "sessions": [], "closures": [], "ends_on": day,
            "updated_at": datetime.now(UTC) - timedelta(days=90), "updated_by": "ta"}


@pytest.mark.timeout(300)
def test_a_course_ends_on_a_real_guest_and_leaves_nothing_behind(
        start_kubekvm: Callable[..., Server], agents: Callable[..., Agent], tiny_linux: Path, site: Path) -> None:
    server = start_kubekvm(env=FAST)
    add_tiny_template(server)
    agent = agents(server, site / "state", image_dir_with(site, tiny_linux), "--stop-grace", "5")
    wait_host_ready(server, agent.host_name)
    lab = unique_lab()
    gql(server, 'mutation($n: String!) { createDeployment(input: {name: $n, template: "tiny-linux", replicas: 1}) '
                "{ name } }", n=lab)
    wait_until(lambda: (lab_state(server, lab) or {}).get("phase") == "ACTIVE", timeout=120, what="lab Active")
    assert domains(f"kubekvm-{lab}-") == {f"kubekvm-{lab}-1": True}
    assert agent.overlay(f"{lab}-1").exists()

    with MongoClient(server.database_uri, tz_aware=True) as client:
        db = client[server.database_name]
        # Over yesterday: the machine is stopped, its disk kept (the retention period runs).
        db["lab_schedules"].insert_one({"lab": lab, **ended(1)})
        wait_until(lambda: (lab_state(server, lab) or {}).get("phase") == "INACTIVE", timeout=90,
                   what="the course's end stopped the guest")
        assert domains(f"kubekvm-{lab}-") == {f"kubekvm-{lab}-1": False}
        assert agent.overlay(f"{lab}-1").exists()
        # Over for longer than the retention period: the lab goes, with its VM and disk.
        db["lab_schedules"].update_one({"lab": lab}, {"$set": ended(40)})
        wait_until(lambda: lab_state(server, lab) is None, timeout=90, what="the lab deleted by its host")
        assert domains(f"kubekvm-{lab}-") == {}
        assert not agent.overlay(f"{lab}-1").exists()
        for collection, key in (("machines", "deployment"), ("lab_events", "deployment"), ("lab_schedules", "lab"),
                                ("schedule_fires", "lab")):
            assert db[collection].count_documents({key: lab}) == 0, f"{collection} keeps {lab}"
        actions = [e["action"] for e in db["audit_log"].find({"target": f"lab:{lab}", "actor": "scheduler"})]
        assert sorted(actions) == ["courseDeleted", "courseEnded", "courseEnded"], actions
