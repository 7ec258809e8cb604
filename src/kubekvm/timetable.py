"""A lab's timetable as a rule: when its machines start and stop, computed from the timetable
and a time given by the caller (no clock is read here, no database or web library imported).

A timetable is weekly slots (days, start, end: "mon,wed 09:00-11:00"), one-off sessions
("2026-12-03 16:00-18:00") and closures (holidays, "2026-12-24..2027-01-06 Christmas": no weekly
slot on those days; a one-off session still happens), all in wall-clock time of one IANA time
zone, plus a lead time: the machines start that long before a slot (warm and booted when the
students arrive) and stop at its end. Optionally the course's last day (`ends_on`).

Wall-clock times become instants through `zoneinfo`, so a slot at 09:00 in Europe/Madrid is
08:00 UTC in winter and 07:00 UTC in summer, and the week of a DST change keeps its 09:00.
A time that does not exist on the day the clocks go forward (02:30) is the instant it would
have been with the old offset (03:30 of the new one); one that happens twice when they go back
is its first occurrence. Slots that overlap or touch (the next one's warm start falls before
the previous one ends) are one interval: the machines are not stopped between them.

Each event has an id (`start:2026-03-30T07:00:00Z`) that is the same whoever computes it and
however often: the scheduler records fired ids, so an event fires once.

The text forms of a timetable (the lab page's form) are `kubekvm.timetable_text`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kubekvm.errors import ValidationFailed

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# How far ahead "next start/stop" is looked for (a timetable with only long-past sessions has none).
HORIZON = timedelta(days=400)


class EventKind(StrEnum):
    START = "start"
    STOP = "stop"


@dataclass(frozen=True)
class WeeklySlot:
    days: tuple[int, ...]  # 0 = Monday
    start: time
    end: time

    def text(self) -> str:
        return f"{','.join(DAYS[d] for d in self.days)} {self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class Session:
    day: date
    start: time
    end: time

    def text(self) -> str:
        return f"{self.day.isoformat()} {self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True)
class Closure:
    first: date
    last: date
    reason: str = ""

    def text(self) -> str:
        days = self.first.isoformat() if self.first == self.last else f"{self.first}..{self.last}"
        return f"{days} {self.reason}".rstrip()

    def covers(self, day: date) -> bool:
        return self.first <= day <= self.last


@dataclass(frozen=True, kw_only=True)
class Timetable:
    zone: str
    lead: timedelta = timedelta(0)
    slots: tuple[WeeklySlot, ...] = ()
    sessions: tuple[Session, ...] = ()
    closures: tuple[Closure, ...] = ()
    ends_on: date | None = None

    @property
    def tz(self) -> ZoneInfo:
        return time_zone(self.zone)

    @property
    def empty(self) -> bool:
        return not self.slots and not self.sessions


@dataclass(frozen=True)
class Interval:
    """When the timetable wants the machines on: `opens` (a slot's start) to `closes`."""

    opens: datetime
    closes: datetime


@dataclass(frozen=True)
class Event:
    kind: EventKind
    at: datetime  # UTC
    interval: Interval = field(compare=False)

    @property
    def id(self) -> str:
        return f"{self.kind.value}:{self.at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def time_zone(name: str) -> ZoneInfo:
    """The IANA zone `name`, or a refusal naming the field."""
    try:
        if not name or name != name.strip() or name.startswith("/") or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed("timeZone", f"{name!r} is not an IANA time zone (e.g. Europe/Madrid, UTC).") from None


def instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """Wall-clock `at` on `day` in `tz` as a UTC instant (a time skipped by a DST change: the
    instant it would be at the old offset; a repeated one: its first occurrence)."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


def intervals(timetable: Timetable, since: datetime, until: datetime) -> list[Interval]:
    """The merged intervals of the timetable that may have an event in (since, until]."""
    tz = timetable.tz
    first = since.astimezone(tz).date() - timedelta(days=2)
    last = until.astimezone(tz).date() + timedelta(days=2)
    found: list[Interval] = []
    day = first
    while day <= last:
        if not any(c.covers(day) for c in timetable.closures):
            for slot in timetable.slots:
                if day.weekday() in slot.days:
                    found.append(Interval(instant(day, slot.start, tz), instant(day, slot.end, tz)))
        day += timedelta(days=1)
    for session in timetable.sessions:
        if first <= session.day <= last:
            found.append(Interval(instant(session.day, session.start, tz), instant(session.day, session.end, tz)))
    merged: list[Interval] = []
    for interval in sorted(found, key=lambda i: (i.opens, i.closes)):
        if interval.closes <= interval.opens:
            continue  # a slot whose wall-clock hour a DST change swallowed whole
        if merged and interval.opens - timetable.lead <= merged[-1].closes:
            merged[-1] = Interval(merged[-1].opens, max(merged[-1].closes, interval.closes))
        else:
            merged.append(interval)
    return merged


def events(timetable: Timetable, since: datetime, until: datetime) -> list[Event]:
    """Every start (a lead before a slot) and stop (its end) in (since, until], in order."""
    found: list[Event] = []
    for interval in intervals(timetable, since, until):
        found.append(Event(EventKind.START, interval.opens - timetable.lead, interval))
        found.append(Event(EventKind.STOP, interval.closes, interval))
    return sorted((e for e in found if since < e.at <= until), key=lambda e: (e.at, e.kind != EventKind.STOP))


def next_event(timetable: Timetable, now: datetime, kind: EventKind) -> Event | None:
    """The next start or stop after `now`, or None within a year and a bit."""
    since = now
    step = timedelta(days=14)
    while since - now < HORIZON:
        for event in events(timetable, since, since + step):
            if event.kind == kind:
                return event
        since += step
    return None


def current(timetable: Timetable, now: datetime) -> Interval | None:
    """The interval whose warm start has come and whose end has not, if any."""
    for interval in intervals(timetable, now - timedelta(days=1), now + timedelta(days=1)):
        if interval.opens - timetable.lead <= now < interval.closes:
            return interval
    return None


def course_end(timetable: Timetable) -> datetime | None:
    """When the course is over: midnight after its last day, in its zone."""
    if timetable.ends_on is None:
        return None
    return instant(timetable.ends_on + timedelta(days=1), time(0), timetable.tz)
