"""A course's end as the whole platform carries it out: a real server (its scheduler turning
fast) and the real agent on libvirt's test driver (real qcow2 overlays, no QEMU). A lab whose
course ended longer ago than the retention period has its machines stopped and then is deleted:
afterwards no machine, overlay or document of it is left, and the audit log says why."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pymongo import MongoClient
from tests.agent.test_with_the_server import TEMPLATE, AgentProcess, data, wait_phase
from tests.support.processes import Server
from tests.support.waiting import wait_until

FAST = {"KUBEKVM_SCHEDULER_INTERVAL": "0.5", "KUBEKVM_LAB_RETENTION_DAYS": "30"}


def test_a_course_over_for_longer_than_the_retention_leaves_nothing_behind(
        start_kubekvm: Callable[..., Server], image_dir: Path, tmp_path: Path) -> None:
    server = start_kubekvm(env=FAST)
    data(server.graphql(TEMPLATE, {"i": {"name": "tiny-linux", "title": "Tiny Linux", "os": "LINUX",
                                         "image": "tiny-linux.qcow2", "vcpus": 1, "memoryMib": 64, "diskGib": 1}}))
    state_dir = tmp_path / "state"
    agent = AgentProcess(server, host=f"exp-{uuid.uuid4().hex[:6]}", image_dir=image_dir, state_dir=state_dir)
    agent.start()
    name = f"exp{uuid.uuid4().hex[:6]}"
    client: MongoClient[dict[str, object]] = MongoClient(server.database_uri, tz_aware=True)
    db = client[server.database_name]
    try:
        data(server.graphql("mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }",
                            {"i": {"name": name, "template": "tiny-linux", "replicas": 2}}))
        wait_phase(server, name, "ACTIVE")

        def overlays() -> list[str]:
            return sorted(p.name for d in (image_dir, state_dir) if d.exists() for p in d.rglob(f"*{name}-*"))

        assert len(overlays()) == 2, overlays()
        # The course ended 40 days ago (as if time had passed since its timetable was saved: the
        # page refuses a last day in the past).
        ended = (datetime.now(UTC) - timedelta(days=40)).date()
        db["lab_schedules"].insert_one({
            "lab": name, "time_zone": "UTC", "lead_minutes": 0, "slots": [], "sessions": [], "closures": [],
            "ends_on": ended.isoformat(), "updated_at": datetime.now(UTC) - timedelta(days=60), "updated_by": "ta"})
        wait_until(lambda: server.graphql("query($n: String!) { deployment(name: $n) { name } }",
                                          {"n": name}).get("errors"), timeout=120,
                   what=f"lab {name} stopped, deleted and removed by its host")
        assert overlays() == []
        for collection, key in (("deployments", "name"), ("machines", "deployment"), ("lab_events", "deployment"),
                                ("lab_schedules", "lab"), ("schedule_fires", "lab")):
            assert db[collection].count_documents({key: name}) == 0, f"{collection} keeps {name}"
        actions = sorted(str(e["action"]) for e in db["audit_log"].find({"target": f"lab:{name}", "actor": "scheduler"}))
        assert actions == ["courseDeleted", "courseEnded"]
        host = db["hosts"].find_one({"name": agent.host})
        assert host is not None and (host["allocated_vcpus"], host["allocated_memory_mib"]) == (0, 0)
    finally:
        client.close()
        agent.stop()
