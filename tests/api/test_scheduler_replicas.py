"""The scheduler as `kubekvm serve` runs it: two server replicas on one database, a timetable set
through GraphQL whose session starts now, fired by exactly one replica (one record, one line in
the lab's events, one audit entry), not again when the timetable is saved again, and by the other
replica once the first has shut down."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pymongo import MongoClient

from tests.api.test_graphql import data, ensure_tiny_template
from tests.support.processes import Server
from tests.support.waiting import wait_until

FAST = {"KUBEKVM_SCHEDULER_INTERVAL": "0.3", "KUBEKVM_TIME_ZONE": "UTC"}
SET = ("mutation($n: String!, $i: TimetableInput!) { setTimetable(name: $n, input: $i) "
       "{ timeZone inSlot nextStop recent { event outcome } } }")


def session_now() -> dict[str, object]:
    """A one-off session from this minute to the next (the minute before, at 23:59 UTC)."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    if now.hour == 23 and now.minute == 59:
        now -= timedelta(minutes=1)
    return {"date": now.date().isoformat(), "start": f"{now:%H:%M}", "end": f"{now + timedelta(minutes=1):%H:%M}"}


def test_two_replicas_fire_each_event_once_and_hand_over(start_kubekvm: Callable[..., Server]) -> None:
    # At info level each log says when its replica takes the scheduler's lease.
    first = start_kubekvm(env=FAST, log_level="info")
    second = start_kubekvm(env=FAST, database_name=first.database_name, log_level="info")
    ensure_tiny_template(first)
    client: MongoClient[dict[str, object]] = MongoClient(first.database_uri, tz_aware=True)
    db = client[first.database_name]
    try:
        for lab in ("sched-a", "sched-b"):
            data(first.graphql(f'mutation {{ createDeployment(input: {{name: "{lab}", template: "tiny-linux", '
                               'replicas: 1, power: STOPPED}) { name } }'))
        session = session_now()
        set_a = data(second.graphql(SET, {"n": "sched-a", "i": {"leadMinutes": 0, "sessions": [session]}}))
        assert set_a["setTimetable"]["timeZone"] == "UTC"

        def fired(lab: str) -> list[dict[str, object]]:
            return list(db["schedule_fires"].find({"lab": lab, "kind": "start"}))

        started = wait_until(lambda: [f for f in fired("sched-a") if f["outcome"] == "fired"], timeout=60,
                             what="the session's start fired")
        assert len(started) == 1 and len(fired("sched-a")) == 1
        wait_until(lambda: db["deployments"].find_one({"name": "sched-a", "power": "running"}), timeout=30,
                   what="the lab asked to run")
        # Saved again (same session): the event is the same one, already fired.
        data(first.graphql(SET, {"n": "sched-a", "i": {"leadMinutes": 0, "sessions": [session]}}))
        both_turned = {str(f["replica"]) for f in fired("sched-a")}
        lines = [e["message"] for e in db["lab_events"].find({"deployment": "sched-a"})
                 if str(e["message"]).startswith("timetable: machines started")]
        assert len(lines) == 1, lines
        audit = list(db["audit_log"].find({"action": "scheduledStart", "target": "lab:sched-a"}))
        assert len(audit) == 1 and audit[0]["actor_kind"] == "system", audit

        # The holder shuts down; the other replica takes the lease and fires the next event.
        holder_name = db["leases"].find_one({"_id": "scheduler"})["holder"]  # type: ignore[index]
        assert both_turned == {holder_name}
        holder, other = (first, second) if _holds(first, holder_name) else (second, first)
        assert _holds(holder, holder_name) and not _holds(other, holder_name)
        holder.stop()
        data(other.graphql(SET, {"n": "sched-b", "i": {"leadMinutes": 0, "sessions": [session_now()]}}))
        taken = wait_until(lambda: [f for f in fired("sched-b") if f["outcome"] == "fired"], timeout=60,
                           what="the other replica fired sched-b's start")
        assert [str(f["replica"]) for f in taken] != [holder_name]
        assert other.child.process.poll() is None
    finally:
        client.close()


def _holds(server: Server, holder: str) -> bool:
    text = server.child.log.read_text()
    return f"lease scheduler taken by {holder}" in text
