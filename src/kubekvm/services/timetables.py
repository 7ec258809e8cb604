"""Timetables and the course around a lab: its weekly slots, one-off sessions, closures and end
date (stored as `course_records.LabSchedule`), what the scheduler did with them, what is due next,
when the lab expires and is deleted, its usage as a teacher downloads it, and the labs nobody has
used for a while (for admins).

The rules of time are `kubekvm.timetable`'s; firing the events is `kubekvm.scheduler`'s. Saving
a timetable with no slot, no session and no end date removes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from kubekvm import timetable, timetable_text
from kubekvm.course_records import LabSchedule, ScheduleFire
from kubekvm.errors import Conflict, ValidationFailed
from kubekvm.models import Deployment, Machine, ObservedState, Phase, UsageInterval, utcnow
from kubekvm.services.context import Noun
from kubekvm.services.rulebook import ADMIN, LAB_MANAGED, LAB_SEEN
from kubekvm.services.rules import Operations, named, operation


@dataclass(frozen=True, kw_only=True)
class Course:
    """A lab's timetable as its page and GraphQL show it, at `now`."""

    lab: str
    rule: timetable.Timetable
    stored: bool  # False: the lab has no timetable (the defaults are shown)
    next_start: datetime | None
    next_stop: datetime | None
    in_slot: bool
    ends_at: datetime | None  # the course is over (machines stop)
    deleted_at: datetime | None  # the lab goes, with its VMs and disks
    warn: bool  # the deletion is near (or the course is over): the page says so loudly
    recent: list[ScheduleFire]


@dataclass(frozen=True, kw_only=True)
class UsageRow:
    machine: str
    student: str
    state: str
    host: str
    created_at: datetime
    last_change: datetime
    last_report: datetime | None
    # From the usage accounting (`services.usage`): the machine's running time as its host
    # observed it, and its student's hours outside scheduled slots and what remains of them.
    running_hours: float
    outside_slot_hours: float | None
    remaining_hours: float | None


@dataclass(frozen=True, kw_only=True)
class UnusedLab:
    lab: str
    owner: str
    last_used: datetime
    days: int


class Timetables(Noun):
    """Labs' timetables and courses, unchecked (callers use `TimetableOperations`)."""

    def default(self) -> timetable.Timetable:
        return timetable.Timetable(zone=self.ctx.settings.time_zone,
                                   lead=timedelta(minutes=self.ctx.settings.schedule_lead_minutes))

    async def stored(self, lab: str) -> LabSchedule | None:
        return await LabSchedule.find_one(LabSchedule.lab == lab)

    async def course(self, lab: str, *, now: datetime | None = None) -> Course:
        now = now or utcnow()
        record = await self.stored(lab)
        rule = record.rule() if record is not None else self.default()
        ends_at = timetable.course_end(rule)
        deleted_at = ends_at + timedelta(days=self.ctx.settings.lab_retention_days) if ends_at else None
        horizon = timedelta(days=self.ctx.settings.lab_expiry_warning_days)
        next_start = timetable.next_event(rule, now, timetable.EventKind.START)
        next_stop = timetable.next_event(rule, now, timetable.EventKind.STOP)
        if ends_at is not None:  # nothing starts once the course is over
            next_start = next_start if next_start and next_start.at < ends_at else None
        recent = await ScheduleFire.find(ScheduleFire.lab == lab).sort("-due").limit(10).to_list()
        return Course(
            lab=lab, rule=rule, stored=record is not None,
            next_start=next_start.at if next_start else None, next_stop=next_stop.at if next_stop else None,
            in_slot=timetable.current(rule, now) is not None, ends_at=ends_at, deleted_at=deleted_at,
            warn=deleted_at is not None and (now >= (ends_at or now) or deleted_at - now <= horizon),
            recent=recent,
        )

    async def save(self, lab: str, rule: timetable.Timetable, *, by: str, now: datetime | None = None) -> Course:
        """Store `rule` as the lab's timetable (validated; none at all removes it)."""
        now = now or utcnow()
        found = await self.core.labs.get_deployment(lab)
        if found.phase == Phase.DELETING:
            raise Conflict(f"Lab {lab!r} is being deleted.")
        tz = rule.tz  # refuses an unknown zone
        timetable_text.lead(int(rule.lead.total_seconds() // 60))
        before = await self.stored(lab)
        if rule.ends_on is not None and (before is None or before.ends_on != rule.ends_on.isoformat()):
            # A past end date would stop the machines, and soon delete the lab, at once.
            if rule.ends_on < now.astimezone(tz).date():
                raise ValidationFailed("endsOn", "The course's last day cannot be in the past.")
        if rule.empty and rule.ends_on is None and not rule.closures:
            await LabSchedule.get_pymongo_collection().delete_one({"lab": lab})
            await self.ctx.note(lab, "timetable removed")
            return await self.course(lab, now=now)
        record = LabSchedule.of(lab, rule, by=by)
        record.updated_at = now
        document = record.model_dump(by_alias=True, exclude={"id"})
        await LabSchedule.get_pymongo_collection().replace_one({"lab": lab}, document, upsert=True)
        said = f"{len(rule.slots)} weekly slot(s), {len(rule.sessions)} session(s), {len(rule.closures)} closure(s)"
        if rule.ends_on:
            said += f", last day {rule.ends_on.isoformat()}"
        await self.ctx.note(lab, f"timetable saved: {said} ({rule.zone})")
        return await self.course(lab, now=now)

    async def usage(self, lab: str, *, now: datetime | None = None) -> list[UsageRow]:
        now = now or utcnow()
        found = await self.core.labs.get_deployment(lab)
        machines = await Machine.find(Machine.deployment == lab, Machine.retired == False).sort("index").to_list()  # noqa: E712
        ran: dict[str, float] = {}
        async for row in UsageInterval.get_pymongo_collection().find({"deployment": lab}, {"machine": 1, "start": 1,
                                                                                        "end": 1}):
            ran[row["machine"]] = ran.get(row["machine"], 0.0) + (row["end"] - row["start"]).total_seconds()
        balances = {b.student: b.balance for b in await self.core.usage.balances(found, now=now)}
        rows = []
        for m in machines:
            running = ran.get(m.name, 0.0) + ((now - m.running_since).total_seconds() if m.running_since else 0.0)
            balance = balances.get(m.student) if m.student else None
            rows.append(UsageRow(
                machine=m.name, student=m.student or "", state=m.observed.value, host=m.host or "",
                created_at=m.created_at, last_change=m.updated_at, last_report=m.observed_at,
                running_hours=running / 3600.0, outside_slot_hours=balance.used_hours if balance else None,
                remaining_hours=balance.remaining_hours if balance else None))
        return rows

    async def unused(self, *, now: datetime | None = None) -> list[UnusedLab]:
        """Labs none of whose machines runs and that nobody (nor the timetable) changed, started
        or stopped for `lab_unused_days`: the labs an admin may want to ask about."""
        now = now or utcnow()
        limit = timedelta(days=self.ctx.settings.lab_unused_days)
        latest: dict[str, tuple[datetime, bool]] = {}
        cursor = await Machine.get_pymongo_collection().aggregate([
            {"$match": {"retired": False}},
            {"$group": {"_id": "$deployment", "changed": {"$max": "$updated_at"},
                        "running": {"$max": {"$cond": [{"$eq": ["$observed", ObservedState.RUNNING.value]}, 1, 0]}}}},
        ])
        async for row in cursor:
            latest[str(row["_id"])] = (row["changed"], bool(row["running"]))
        found: list[UnusedLab] = []
        for lab in await Deployment.find_all().sort("name").to_list():
            changed, running = latest.get(lab.name, (lab.updated_at, False))
            last = max(_aware(lab.updated_at), _aware(changed))
            if not running and now - last >= limit:
                found.append(UnusedLab(lab=lab.name, owner=lab.owner or "", last_used=last,
                                       days=(now - last).days))
        return found


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_day(raw: str | None, *, field: str = "endsOn") -> date | None:
    """An optional YYYY-MM-DD from a form or GraphQL."""
    if raw is None or not raw.strip():
        return None
    try:
        return date.fromisoformat(raw.strip())
    except ValueError:
        raise ValidationFailed(field, f"{raw.strip()!r} is not a date (YYYY-MM-DD).") from None


class TimetableOperations(Operations):
    """A lab's timetable and course: whoever sees the lab reads them; its owner and admins change
    them and download its usage; admins list the unused labs."""

    @operation(LAB_SEEN, field="timetable")
    async def course(self, name: str) -> Course:
        return await self.services.timetables.course(name)

    @operation(LAB_MANAGED, audit="setTimetable", target=named("lab"))
    async def set_timetable(self, name: str, *,
                            rule: timetable.Timetable | Callable[[], timetable.Timetable]) -> Course:
        """`rule` may come as the parse of the caller's input, run only once the caller may change
        the lab (so a refusal for who they are comes before one for what they typed)."""
        return await self.services.timetables.save(name, rule() if callable(rule) else rule, by=self.actor.name)

    @operation(LAB_MANAGED)
    async def lab_usage(self, name: str) -> list[UsageRow]:
        return await self.services.timetables.usage(name)

    @operation(ADMIN, field="unusedLabs")
    async def unused_labs(self) -> list[UnusedLab]:
        return await self.services.timetables.unused()
