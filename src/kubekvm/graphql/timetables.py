"""GraphQL of running a course: a lab's timetable (read and set), what its scheduler did, and the
labs nobody uses. `schema.Query` and `schema.Mutation` take these fields in by inheritance; like
every resolver, these only translate (the operations are `services.timetables.TimetableOperations`,
the rules of time `kubekvm.timetable`)."""

from __future__ import annotations

from datetime import datetime

import strawberry

from kubekvm import timetable, timetable_text
from kubekvm.authorized import Authorized
from kubekvm.errors import ValidationFailed
from kubekvm.services.timetables import Course, parse_day


def _services(info: strawberry.Info) -> Authorized:
    services: Authorized = info.context["services"]
    return services


@strawberry.type(description="A weekly slot: on these days, from start to end (HH:MM, the timetable's zone).")
class WeeklySlot:
    days: list[str] = strawberry.field(description="mon, tue, wed, thu, fri, sat, sun.")
    start: str
    end: str


@strawberry.type(description="A one-off session on one date (YYYY-MM-DD), start to end (HH:MM).")
class OneOffSession:
    date: str
    start: str
    end: str


@strawberry.type(description="Days without weekly slots (holidays), first to last (YYYY-MM-DD).")
class Closure:
    first: str
    last: str
    reason: str


@strawberry.type(description="An event of the timetable (or the course's end) as the scheduler handled it.")
class ScheduledEvent:
    event: str = strawberry.field(description="e.g. start:2026-03-30T06:50:00Z, end:2026-06-30.")
    kind: str = strawberry.field(
        description="start, stop, end (the course is over), warn (its deletion is near), delete.")
    due: datetime
    outcome: str = strawberry.field(description=(
        "fired; missed (found later than the grace: not fired); failed; claimed (its replica stopped before firing)."))
    message: str


@strawberry.type(description=(
    "A lab's timetable: its machines start `leadMinutes` before each slot and stop at its end."))
class Timetable:
    deployment: str
    stored: bool = strawberry.field(description="False: the lab has no timetable (the defaults are shown).")
    time_zone: str
    lead_minutes: int
    slots: list[WeeklySlot]
    sessions: list[OneOffSession]
    closures: list[Closure]
    ends_on: str | None = strawberry.field(description="The course's last day: machines stop after it.")
    next_start: datetime | None
    next_stop: datetime | None
    in_slot: bool
    ends_at: datetime | None
    deleted_at: datetime | None = strawberry.field(
        description="When the lab is deleted with its VMs and disks (the retention period after its end).")
    recent: list[ScheduledEvent]

    @classmethod
    def of(cls, course: Course) -> Timetable:
        rule = course.rule
        return cls(
            deployment=course.lab, stored=course.stored, time_zone=rule.zone,
            lead_minutes=int(rule.lead.total_seconds() // 60),
            slots=[WeeklySlot(days=[timetable.DAYS[d] for d in s.days], start=f"{s.start:%H:%M}", end=f"{s.end:%H:%M}")
                   for s in rule.slots],
            sessions=[OneOffSession(date=s.day.isoformat(), start=f"{s.start:%H:%M}", end=f"{s.end:%H:%M}")
                      for s in rule.sessions],
            closures=[Closure(first=c.first.isoformat(), last=c.last.isoformat(), reason=c.reason)
                      for c in rule.closures],
            ends_on=rule.ends_on.isoformat() if rule.ends_on else None, next_start=course.next_start,
            next_stop=course.next_stop, in_slot=course.in_slot, ends_at=course.ends_at, deleted_at=course.deleted_at,
            recent=[ScheduledEvent(event=f.id.partition("|")[2], kind=f.kind, due=f.due, outcome=f.outcome,
                                   message=f.message) for f in course.recent],
        )


@strawberry.type(description="A lab none of whose machines ran, and that nobody changed, for a while.")
class UnusedLab:
    name: str
    owner: str
    last_used: datetime
    days: int


@strawberry.input
class WeeklySlotInput:
    days: list[str]
    start: str
    end: str


@strawberry.input
class OneOffSessionInput:
    date: str
    start: str
    end: str


@strawberry.input
class ClosureInput:
    first: str
    last: str | None = None
    reason: str = ""


@strawberry.input(description="The whole timetable (it replaces the lab's). No slot, session, closure or end "
                              "date: the lab has no timetable any more.")
class TimetableInput:
    time_zone: str | None = strawberry.field(default=None, description="IANA zone; default: the server's.")
    lead_minutes: int | None = strawberry.field(default=None, description="0-240; default: the server's.")
    slots: list[WeeklySlotInput] = strawberry.field(default_factory=list)
    sessions: list[OneOffSessionInput] = strawberry.field(default_factory=list)
    closures: list[ClosureInput] = strawberry.field(default_factory=list)
    ends_on: str | None = None


def _lines(items: list[str], field: str, most: int) -> str:
    if len(items) > most:
        raise ValidationFailed(field, f"At most {most} {field}.")
    if any("\n" in item or "\r" in item or "#" in item for item in items):
        raise ValidationFailed(field, "One item per entry: no line breaks or # in it.")
    return "\n".join(items)


def rule_of(input: TimetableInput, *, default: timetable.Timetable) -> timetable.Timetable:
    """The input as the domain's timetable, each part checked, the refusal naming the field."""
    zone = input.time_zone if input.time_zone is not None else default.zone
    timetable.time_zone(zone)
    lead = timetable_text.lead(input.lead_minutes) if input.lead_minutes is not None else default.lead
    slots = _lines([f"{','.join(s.days)} {s.start}-{s.end}" for s in input.slots], "slots", timetable_text.MAX_SLOTS)
    sessions = _lines([f"{s.date} {s.start}-{s.end}" for s in input.sessions], "sessions", timetable_text.MAX_SESSIONS)
    closures = _lines([f"{c.first}..{c.last or c.first} {c.reason}" for c in input.closures], "closures",
                      timetable_text.MAX_CLOSURES)
    return timetable.Timetable(
        zone=zone, lead=lead,
        slots=timetable_text.parse_slots(slots, label="Item"),
        sessions=timetable_text.parse_sessions(sessions, label="Item"),
        closures=timetable_text.parse_closures(closures, label="Item"), ends_on=parse_day(input.ends_on))


@strawberry.type
class TimetableQuery:
    @strawberry.field(description="A lab's timetable, what is due next and what its scheduler did lately.")
    async def timetable(self, info: strawberry.Info, name: str) -> Timetable:
        return Timetable.of(await _services(info).course(name))

    @strawberry.field(description="Admins only: labs none of whose machines ran, and nobody changed, for "
                                  "KUBEKVM_LAB_UNUSED_DAYS days.")
    async def unused_labs(self, info: strawberry.Info) -> list[UnusedLab]:
        return [UnusedLab(name=u.lab, owner=u.owner, last_used=u.last_used, days=u.days)
                for u in await _services(info).unused_labs()]


@strawberry.type
class TimetableMutation:
    @strawberry.mutation(description="Replace the lab's timetable (and the course's last day).")
    async def set_timetable(self, info: strawberry.Info, name: str, input: TimetableInput) -> Timetable:
        services = _services(info)
        default = services.services.timetables.default()
        return Timetable.of(await services.set_timetable(name, rule=lambda: rule_of(input, default=default)))
