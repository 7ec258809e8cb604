"""The scheduler: fires labs' timetables (machines start a lead time before each slot and stop at
its end) and their courses' ends (machines stop; after the retention period the lab is deleted
with its VMs and disks), on exactly one server replica at a time.

Every `KUBEKVM_SCHEDULER_INTERVAL` seconds the replica holding the `scheduler` lease
(`kubekvm.lease`) looks, for every lab with a timetable, at the events due since a day ago (or
since a grace before the timetable was saved, if later: earlier events are not its own) and handles each one
not handled yet:

- it claims the event by inserting its record (`course_records.ScheduleFire`, keyed by lab and
  event id): a second claim — another replica that also believed it held the lease around a
  handover, or this one again — is refused by the unique key, so an event fires at most once
  (a replica killed between the claim and the fire leaves the record `claimed`, not `fired`:
  that one event is lost, visibly, rather than risk firing it twice);
- an event found within `KUBEKVM_SCHEDULE_GRACE` of its time is fired through the labs' own
  start and stop (the stop is the usual one: ACPI shutdown, forced after the agent's grace);
  one found later (the server was down) is recorded as missed, not fired late. A replica that
  restarts inside a slot thus starts its machines if the warm start is still within the grace,
  and stops them at the slot's end whatever happened in between (nothing is kept in memory);
- the course's end is fired however late (machines of a course that is over stop), and so is
  the deletion `KUBEKVM_LAB_RETENTION_DAYS` after it, announced in the lab's events
  `KUBEKVM_LAB_EXPIRY_WARNING_DAYS` before (as its page warns from then on).

Every fire, miss and failure is a line of the lab's events and an entry of the audit log (actor
`scheduler`, of kind `system`). Times come from `clock`, so tests move time instead of waiting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pymongo.errors import DuplicateKeyError

from kubekvm import timetable
from kubekvm.access.actors import Actor, ActorKind
from kubekvm.course_records import LabSchedule, ScheduleFire
from kubekvm.errors import KubeKVMError, NotFound
from kubekvm.lease import Clock, Lease, Periodic
from kubekvm.models import utcnow
from kubekvm.services import Services
from kubekvm.services.audit import record

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
LOOKBACK = timedelta(days=1)


@dataclass
class Turn:
    """What one turn did: event keys (`lab|event id`) fired, missed, failed."""

    fired: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Due:
    lab: str
    id: str
    kind: str  # start | stop | end | warn | delete
    at: datetime
    late_ok: bool  # a course's end and deletion fire however late
    said: str


class Scheduler:
    def __init__(self, *, services: Services, lease: Lease, interval_seconds: float, clock: Clock = utcnow) -> None:
        self.services = services
        self.lease = lease
        self.clock = clock
        self.periodic = Periodic(lease=lease, interval_seconds=interval_seconds, turn=self._turn)
        self._last: Turn | None = None
        self.actor = Actor(kind=ActorKind.SYSTEM, name="scheduler", address=lease.holder)

    def start(self) -> None:
        self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()

    async def run_once(self) -> Turn | None:
        """One turn: None if another replica holds the lease, else what it did."""
        held = await self.periodic.run_once()
        return self._last if held else None

    async def _turn(self, held: bool) -> None:
        self._last = None
        if not held:
            return
        turn = Turn()
        now = self.clock()
        for schedule in await LabSchedule.find_all().to_list():
            try:
                due = self.due(schedule, now)
            except (ValueError, KubeKVMError) as error:  # a document edited by hand into nonsense
                log.warning("scheduler: the timetable of lab %s cannot be read: %s", schedule.lab, error)
                continue
            for event in due:
                await self._handle(event, now, turn)
        self._last = turn

    def due(self, schedule: LabSchedule, now: datetime) -> list[Due]:
        """The lab's events up to `now` that may need handling (handled ones are skipped by
        their record)."""
        rule = schedule.rule()
        ends = timetable.course_end(rule)
        # Events from a grace before the timetable was saved are its own too: saved at 08:52 for a
        # slot whose warm start was 08:50, the machines start.
        grace = timedelta(seconds=self.services.settings.schedule_grace_seconds)
        since = max(now - LOOKBACK, schedule.updated_at - grace)
        until = min(now, ends) if ends is not None else now
        zone = rule.zone
        found = [Due(schedule.lab, e.id, e.kind.value, e.at, False,
                     f"{e.interval.opens.astimezone(rule.tz):%a %d %b %H:%M}-"
                     f"{e.interval.closes.astimezone(rule.tz):%H:%M} {zone}")
                 for e in timetable.events(rule, since, until)] if until > since else []
        if ends is not None:
            settings = self.services.settings
            day = rule.ends_on.isoformat() if rule.ends_on else ""
            deleted = ends + timedelta(days=settings.lab_retention_days)
            warned = deleted - timedelta(days=settings.lab_expiry_warning_days)
            if warned <= now < deleted:  # one line in the lab's events, besides its page's warning
                found.append(Due(schedule.lab, f"warn:{day}", "warn", warned, True,
                                 f"{deleted.astimezone(rule.tz):%a %d %b %Y %H:%M} {zone}"))
            if ends <= now:
                found.append(Due(schedule.lab, f"end:{day}", "end", ends, True, f"the course ended on {day}"))
            if deleted <= now:
                found.append(Due(schedule.lab, f"delete:{day}", "delete", deleted, True,
                                 f"{settings.lab_retention_days} day(s) after the course ended"))
        return found

    async def _handle(self, event: Due, now: datetime, turn: Turn) -> None:
        key = f"{event.lab}|{event.id}"
        late = now - event.at
        missed = not event.late_ok and late > timedelta(seconds=self.services.settings.schedule_grace_seconds)
        claim = ScheduleFire(id=key, lab=event.lab, kind=event.kind, due=event.at,
                             outcome="missed" if missed else "claimed", replica=self.lease.holder, at=now)
        try:
            await claim.insert()
        except DuplicateKeyError:
            return  # handled already, here or by another replica
        action = {"start": "scheduledStart", "stop": "scheduledStop", "end": "courseEnded",
                  "delete": "courseDeleted", "warn": "courseDeletionWarned"}[event.kind]
        target = f"lab:{event.lab}"
        if missed:
            said = (f"timetable: {event.kind} of {event.said} missed (found {int(late.total_seconds() // 60)} "
                    "min late, the server was not running): not fired late")
            await self._tell(event.lab, said)
            await record(self.actor, action=action, target=target, outcome="MISSED", message=said)
            turn.missed.append(key)
            return
        try:
            await self._fire(event)
        except KubeKVMError as error:
            if isinstance(error, NotFound):  # the lab went meanwhile: so does this claim
                await ScheduleFire.get_pymongo_collection().delete_one({"_id": key})
                return
            said = f"timetable: {event.kind} of {event.said} failed: {error.message}"
            await ScheduleFire.get_pymongo_collection().update_one(
                {"_id": key}, {"$set": {"outcome": "failed", "message": error.message}})
            await self._tell(event.lab, said)
            await record(self.actor, action=action, target=target, outcome=error.code, message=said)
            turn.failed.append(key)
            return
        said = {"start": f"timetable: machines started for {event.said}",
                "stop": f"timetable: machines stopped at the end of {event.said}",
                "end": f"course over: machines stopped ({event.said})",
                "delete": f"course over: lab deleted with its machines and disks ({event.said})",
                "warn": f"course over soon: the lab will be deleted with its machines and disks on {event.said}; "
                        "download its usage (CSV) before"}[event.kind]
        await ScheduleFire.get_pymongo_collection().update_one({"_id": key}, {"$set": {"outcome": "fired"}})
        if event.kind != "delete":  # a deleted lab's events go with it
            await self._tell(event.lab, said)
        await record(self.actor, action=action, target=target, message=said)
        log.info("scheduler: lab %s: %s", event.lab, said)
        turn.fired.append(key)

    async def _fire(self, event: Due) -> None:
        labs = self.services.labs
        if event.kind == "start":
            await labs.start_deployment(event.lab)
        elif event.kind in ("stop", "end"):
            await labs.stop_deployment(event.lab)
        elif event.kind == "delete":
            await labs.delete_deployment(event.lab)
        # "warn" does nothing but say so (in the lab's events and the audit log).

    async def _tell(self, lab: str, said: str) -> None:
        await self.services.ctx.note(lab, said)
