"""A timetable's text forms (the lab page's form, the GraphQL input's lines): parsed line by line,
each line checked, the refusal naming the field and the line; and written back the same way.

"mon,wed 09:00-11:00" (weekly slots: "mon-fri", "Monday", "tue thu" too), "2026-12-03
16:00-18:00" (one-off sessions), "2026-12-24..2027-01-06 Christmas" (closures); a "#" starts a
comment. What the parsed timetable means (instants, DST, next start/stop) is `kubekvm.timetable`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date, time, timedelta

from kubekvm import validation
from kubekvm.errors import ValidationFailed
from kubekvm.timetable import Closure, Session, WeeklySlot

MAX_SLOTS, MAX_SESSIONS, MAX_CLOSURES = 50, 200, 100
MAX_LEAD_MINUTES = 240

_TIMES = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _lines(text: str) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            yield number, line


def _times(raw: str, field: str, where: str) -> tuple[time, time]:
    match = _TIMES.fullmatch(raw.strip())
    if match is None:
        raise ValidationFailed(field, f"{where}: give the times as HH:MM-HH:MM (e.g. 09:00-11:00).")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValidationFailed(field, f"{where}: {raw.strip()} is not a time of day (00:00 to 23:59).")
    start, end = time(h1, m1), time(h2, m2)
    if end <= start:
        raise ValidationFailed(field, f"{where}: it ends before it starts (a slot past midnight: split it in two).")
    return start, end


def _date(raw: str, field: str, where: str) -> date:
    if not _DATE.fullmatch(raw):
        raise ValidationFailed(field, f"{where}: give dates as YYYY-MM-DD.")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed(field, f"{where}: {raw} is not a date.") from None


FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(word: str) -> int | None:
    """mon, Monday, thurs: the weekday a word of three letters or more begins (0 = Monday)."""
    for index, full in enumerate(FULL_DAYS):
        if len(word) >= 3 and full.startswith(word):
            return index
    return None


def _days(raw: str, where: str) -> tuple[int, ...]:
    chosen: set[int] = set()
    for part in re.split(r"[,\s]+", raw.strip().lower()):
        if not part:
            continue
        ends = part.split("-")
        picked = [_day(e) for e in ends]
        if len(ends) > 2 or None in picked:
            raise ValidationFailed("slots", f"{where}: {part!r} is not a day (mon, tue, … sun, or a range mon-fri).")
        first, last = picked[0], picked[-1]
        assert first is not None and last is not None
        # A range wraps around the week end: fri-mon is Friday to Monday.
        chosen.update(range(first, last + 1) if first <= last else [*range(first, 7), *range(0, last + 1)])
    if not chosen:
        raise ValidationFailed("slots", f"{where}: name the days (e.g. mon,wed 09:00-11:00).")
    return tuple(sorted(chosen))


def parse_slots(text: str, *, label: str = "Line") -> tuple[WeeklySlot, ...]:
    """"mon,wed 09:00-11:00" per line ("mon-fri", "tue thu" too)."""
    slots: list[WeeklySlot] = []
    for number, line in _lines(text):
        where = f"{label} {number}"
        match = re.search(r"\d", line)
        if match is None:
            raise ValidationFailed("slots", f"{where}: give the days and the times (e.g. mon,wed 09:00-11:00).")
        days = _days(line[:match.start()], where)
        start, end = _times(line[match.start():], "slots", where)
        slots.append(WeeklySlot(days, start, end))
    if len(slots) > MAX_SLOTS:
        raise ValidationFailed("slots", f"At most {MAX_SLOTS} weekly slots.")
    return tuple(slots)


def parse_sessions(text: str, *, label: str = "Line") -> tuple[Session, ...]:
    """"2026-12-03 16:00-18:00" per line."""
    sessions: list[Session] = []
    for number, line in _lines(text):
        where = f"{label} {number}"
        day, _, rest = line.partition(" ")
        on = _date(day, "sessions", where)
        start, end = _times(rest, "sessions", where)
        sessions.append(Session(on, start, end))
    if len(sessions) > MAX_SESSIONS:
        raise ValidationFailed("sessions", f"At most {MAX_SESSIONS} one-off sessions.")
    return tuple(sessions)


def parse_closures(text: str, *, label: str = "Line") -> tuple[Closure, ...]:
    """"2026-12-24" or "2026-12-24..2027-01-06 Christmas" per line."""
    closures: list[Closure] = []
    for number, line in _lines(text):
        where = f"{label} {number}"
        days, _, reason = line.partition(" ")
        first_raw, _, last_raw = days.partition("..")
        first = _date(first_raw, "closures", where)
        last = _date(last_raw, "closures", where) if last_raw else first
        if last < first:
            raise ValidationFailed("closures", f"{where}: the last day comes before the first.")
        said = validation.text(reason, field="closures", label=f"{where}: the reason", max_length=120)
        closures.append(Closure(first, last, said))
    if len(closures) > MAX_CLOSURES:
        raise ValidationFailed("closures", f"At most {MAX_CLOSURES} closures.")
    return tuple(closures)


def lead(minutes: int) -> timedelta:
    if not 0 <= minutes <= MAX_LEAD_MINUTES:
        raise ValidationFailed("leadMinutes", f"The lead time is 0 to {MAX_LEAD_MINUTES} minutes.")
    return timedelta(minutes=minutes)


def text_of(items: Sequence[WeeklySlot | Session | Closure]) -> str:
    return "\n".join(item.text() for item in items)
