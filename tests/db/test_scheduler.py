"""The scheduler (`kubekvm.scheduler`) in-process on a real database, with an injected clock: a
lab's warm start and stop, a restart inside a slot, an event found later than its grace, two
schedulers that both believe they hold the lease, and a course's end and deletion leaving no
document of the lab behind. No test waits for real time to pass."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest

from kubekvm import timetable, timetable_text
from kubekvm.config import Settings
from kubekvm.course_records import LabSchedule, ScheduleFire
from kubekvm.database import Connection, connect
from kubekvm.events import EventFeed
from kubekvm.lease import Lease
from kubekvm.models import AuditEntry, Deployment, LabEvent, Machine, Power
from kubekvm.scheduler import LEASE_NAME, Scheduler
from kubekvm.services import Services


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    services: Services
    connection: Connection
    clock: Clock

    def scheduler(self, *, lease: str = LEASE_NAME) -> Scheduler:
        return Scheduler(services=self.services, interval_seconds=60, clock=self.clock,
                         lease=Lease(collection=self.connection.database["leases"], name=lease, ttl_seconds=180,
                                     clock=self.clock))


# Monday 30 March 2026, the first Monday of summer time in Madrid: 09:00 there is 07:00 UTC.
MONDAY = datetime(2026, 3, 30, tzinfo=UTC)


@pytest.fixture
async def world(secantus_uri: str) -> AsyncIterator[World]:
    connection = await connect(secantus_uri, database=f"t{uuid.uuid4().hex[:12]}")
    settings = Settings(time_zone="Europe/Madrid", schedule_grace_seconds=600, lab_retention_days=30)
    services = Services(settings=settings, feed=EventFeed(), database_description="secantus")
    await services.templates.create_template(name="tiny-linux", title="Tiny Linux", description=None, os="linux",
                                             image="tiny-linux.qcow2", vcpus=1, memory_mib=128, disk_gib=1)
    yield World(services, connection, Clock(MONDAY))
    await connection.client.drop_database(connection.database.name)
    await connection.close()


async def lab_with_timetable(world: World, name: str, *, slots: str = "mon 09:00-11:00",
                             ends_on: date | None = None) -> None:
    await world.services.labs.create_deployment(name=name, template="tiny-linux", replicas=2,
                                                power=Power.STOPPED, owner="ta")
    rule = timetable.Timetable(zone="Europe/Madrid", lead=timedelta(minutes=10),
                               slots=timetable_text.parse_slots(slots), ends_on=ends_on)
    world.clock.now = MONDAY  # saved at midnight UTC, before the day's slot
    await world.services.timetables.save(name, rule, by="ta", now=world.clock.now)


async def power(name: str) -> Power:
    lab = await Deployment.find_one(Deployment.name == name)
    assert lab is not None
    return lab.power


async def lines(name: str) -> list[str]:
    return [e.message for e in await LabEvent.find(LabEvent.deployment == name).sort("at").to_list()]


async def test_warm_start_before_the_slot_and_stop_at_its_end(world: World) -> None:
    await lab_with_timetable(world, "warm")
    scheduler = world.scheduler()
    world.clock.now = MONDAY + timedelta(hours=6, minutes=49)  # 08:49 in Madrid: not yet
    turn = await scheduler.run_once()
    assert turn is not None and not turn.fired
    world.clock.now = MONDAY + timedelta(hours=6, minutes=50, seconds=20)  # 08:50:20: the lead has come
    turn = await scheduler.run_once()
    assert turn is not None and turn.fired == ["warm|start:2026-03-30T06:50:00Z"]
    assert await power("warm") == Power.RUNNING
    record = await ScheduleFire.get(turn.fired[0])
    assert record is not None and record.outcome == "fired" and record.due == datetime(2026, 3, 30, 6, 50, tzinfo=UTC)
    assert (await scheduler.run_once()) == type(turn)()  # fired once, never again
    inside = await world.services.timetables.course("warm", now=MONDAY + timedelta(hours=8))
    assert inside.in_slot and inside.next_stop == datetime(2026, 3, 30, 9, tzinfo=UTC)
    assert inside.next_start == datetime(2026, 4, 6, 6, 50, tzinfo=UTC)
    world.clock.now = MONDAY + timedelta(hours=9, seconds=5)  # 11:00:05
    turn = await scheduler.run_once()
    assert turn is not None and turn.fired == ["warm|stop:2026-03-30T09:00:00Z"]
    assert await power("warm") == Power.STOPPED
    said = await lines("warm")
    assert any(s.startswith("timetable: machines started for Mon 30 Mar 09:00-11:00 Europe/Madrid") for s in said)
    assert any(s.startswith("timetable: machines stopped at the end of") for s in said)
    audit = await AuditEntry.find(AuditEntry.target == "lab:warm", AuditEntry.actor == "scheduler").to_list()
    assert sorted((a.action, a.outcome, a.actor_kind) for a in audit) == [
        ("scheduledStart", "ok", "system"), ("scheduledStop", "ok", "system")]


async def test_a_restart_inside_a_slot_catches_up_and_a_late_event_is_recorded_not_fired(world: World) -> None:
    await lab_with_timetable(world, "restart")
    first = world.scheduler()
    world.clock.now = MONDAY + timedelta(hours=6, minutes=51)
    assert (await first.run_once()).fired == ["restart|start:2026-03-30T06:50:00Z"]  # type: ignore[union-attr]
    await first.stop()  # the replica goes down inside the slot
    # Another process (or this one restarted) remembers nothing: the records say what was done.
    second = world.scheduler()
    world.clock.now = MONDAY + timedelta(hours=8)
    assert (await second.run_once()).fired == []  # type: ignore[union-attr]
    world.clock.now = MONDAY + timedelta(hours=9, minutes=3)
    assert (await second.run_once()).fired == ["restart|stop:2026-03-30T09:00:00Z"]  # type: ignore[union-attr]
    await second.stop()

    # Down across the next Monday's warm start, up again 40 minutes into the slot: past the
    # grace (10 min), so the start is recorded as missed and the machines stay off.
    third = world.scheduler()
    world.clock.now = MONDAY + timedelta(days=7, hours=7, minutes=30)
    turn = await third.run_once()
    assert turn is not None and turn.missed == ["restart|start:2026-04-06T06:50:00Z"] and not turn.fired
    assert await power("restart") == Power.STOPPED
    fire = await ScheduleFire.get(turn.missed[0])
    assert fire is not None and fire.outcome == "missed"
    assert any("missed (found 40 min late" in s for s in await lines("restart"))
    missed = await AuditEntry.find(AuditEntry.action == "scheduledStart", AuditEntry.outcome == "MISSED").to_list()
    assert [a.target for a in missed] == ["lab:restart"]
    # Within the grace after a restart, the start still fires (catching up).
    world.clock.now = MONDAY + timedelta(days=14, hours=6, minutes=58)
    assert (await third.run_once()).fired == ["restart|start:2026-04-13T06:50:00Z"]  # type: ignore[union-attr]
    assert await power("restart") == Power.RUNNING


async def test_two_schedulers_that_both_hold_a_lease_never_fire_an_event_twice(world: World) -> None:
    """Around a lease handover two replicas may each believe they hold it: the event's record
    (its unique key) lets only one of them fire it."""
    await lab_with_timetable(world, "twice")
    one, other = world.scheduler(lease="scheduler-a"), world.scheduler(lease="scheduler-b")
    world.clock.now = MONDAY + timedelta(hours=6, minutes=55)
    first, second = await one.run_once(), await other.run_once()
    assert first is not None and second is not None
    assert sorted(first.fired + second.fired) == ["twice|start:2026-03-30T06:50:00Z"]
    started = [s for s in await lines("twice") if s.startswith("timetable: machines started")]
    assert len(started) == 1
    assert await AuditEntry.find(AuditEntry.action == "scheduledStart", AuditEntry.target == "lab:twice").count() == 1


async def test_course_end_stops_then_deletion_leaves_no_document_behind(world: World) -> None:
    await lab_with_timetable(world, "course", ends_on=date(2026, 4, 3))
    scheduler = world.scheduler()
    course = await world.services.timetables.course("course", now=MONDAY)
    assert course.ends_at == datetime(2026, 4, 3, 22, tzinfo=UTC)
    assert course.deleted_at == datetime(2026, 5, 3, 22, tzinfo=UTC) and not course.warn
    await world.services.labs.start_deployment("course")
    # Past the end (days late: a course's end fires however late), no slot starts it any more.
    world.clock.now = datetime(2026, 4, 6, 7, tzinfo=UTC)
    turn = await scheduler.run_once()
    assert turn is not None and turn.fired == ["course|end:2026-04-03"]
    assert await power("course") == Power.STOPPED
    assert (await world.services.timetables.course("course", now=world.clock.now)).next_start is None
    assert (await world.services.timetables.course("course", now=datetime(2026, 4, 28, tzinfo=UTC))).warn
    world.clock.now = datetime(2026, 4, 28, tzinfo=UTC)  # within the 7 days' warning before the deletion
    turn = await scheduler.run_once()
    assert turn is not None and turn.fired == ["course|warn:2026-04-03"]
    assert any(s.startswith("course over soon: the lab will be deleted with its machines and disks on Mon 04 May "
                            "2026 00:00 Europe/Madrid") for s in await lines("course"))
    world.clock.now = datetime(2026, 5, 3, 22, 1, tzinfo=UTC)
    turn = await scheduler.run_once()
    assert turn is not None and turn.fired == ["course|delete:2026-04-03"]
    # Its machines were never placed (no host here): the lab goes at once, and every record of it.
    for records in (Deployment, Machine, LabEvent, LabSchedule, ScheduleFire):
        field = "name" if records is Deployment else "deployment" if records in (Machine, LabEvent) else "lab"
        left = await records.get_pymongo_collection().count_documents({field: "course"})
        assert left == 0, f"{records.__name__} left behind"
    audit = await AuditEntry.find(AuditEntry.target == "lab:course", AuditEntry.actor == "scheduler").to_list()
    assert sorted(a.action for a in audit) == ["courseDeleted", "courseDeletionWarned", "courseEnded"]


async def test_an_end_date_in_the_past_is_refused(world: World) -> None:
    await world.services.labs.create_deployment(name="past", template="tiny-linux", replicas=1, owner="ta")
    rule = timetable.Timetable(zone="Europe/Madrid", ends_on=date(2026, 3, 1))
    with pytest.raises(Exception) as refused:
        await world.services.timetables.save("past", rule, by="ta", now=MONDAY)
    assert getattr(refused.value, "field", None) == "endsOn"
    assert await LabSchedule.find_one(LabSchedule.lab == "past") is None


async def test_labs_nobody_used_for_the_set_days_are_flagged(world: World) -> None:
    await world.services.labs.create_deployment(name="idle", template="tiny-linux", replicas=1,
                                                power=Power.STOPPED, owner="ta")
    lab = await Deployment.find_one(Deployment.name == "idle")
    assert lab is not None
    made = lab.updated_at
    assert await world.services.timetables.unused(now=made + timedelta(days=59)) == []
    flagged = await world.services.timetables.unused(now=made + timedelta(days=61))
    assert [(u.lab, u.owner, u.days) for u in flagged] == [("idle", "ta", 61)]
    # A machine running now is use, however old the last change.
    await Machine.get_pymongo_collection().update_many({"deployment": "idle"}, {"$set": {"observed": "running"}})
    assert await world.services.timetables.unused(now=made + timedelta(days=61)) == []
