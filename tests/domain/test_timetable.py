"""The timetable rule (`kubekvm.timetable`): weekly slots in a zone across both DST changes of
Europe/Madrid, the lead time, closures and one-off sessions, merged slots, and the text forms'
refusals. Pure: times are given, no clock is read."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest

from kubekvm import timetable, timetable_text
from kubekvm.errors import ValidationFailed
from kubekvm.timetable import EventKind, Timetable


def madrid(slots: str, *, lead: int = 10, sessions: str = "", closures: str = "",
           ends_on: date | None = None) -> Timetable:
    return Timetable(zone="Europe/Madrid", lead=timedelta(minutes=lead), slots=timetable_text.parse_slots(slots),
                     sessions=timetable_text.parse_sessions(sessions), closures=timetable_text.parse_closures(closures),
                     ends_on=ends_on)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def starts(rule: Timetable, since: datetime, until: datetime) -> list[datetime]:
    return [e.at for e in timetable.events(rule, since, until) if e.kind == EventKind.START]


def test_a_monday_slot_keeps_its_wall_clock_time_across_both_dst_changes() -> None:
    rule = madrid("mon 09:00-11:00", lead=10)
    # 2026: clocks go forward on Sunday 29 March, back on Sunday 25 October.
    assert starts(rule, utc(2026, 3, 22), utc(2026, 4, 1)) == [utc(2026, 3, 23, 7, 50), utc(2026, 3, 30, 6, 50)]
    assert starts(rule, utc(2026, 10, 18), utc(2026, 10, 28)) == [utc(2026, 10, 19, 6, 50), utc(2026, 10, 26, 7, 50)]
    stops = [e.at for e in timetable.events(rule, utc(2026, 3, 22), utc(2026, 4, 1)) if e.kind == EventKind.STOP]
    assert stops == [utc(2026, 3, 23, 10), utc(2026, 3, 30, 9)]


def test_slots_in_the_hours_a_dst_change_skips_or_repeats() -> None:
    # 02:30 does not exist on 29 March: the instant it would be at the old offset (01:30 UTC).
    spring = madrid("sun 02:30-04:00", lead=0)
    first = timetable.events(spring, utc(2026, 3, 28), utc(2026, 3, 30))
    assert [(e.kind, e.at) for e in first] == [(EventKind.START, utc(2026, 3, 29, 1, 30)),
                                               (EventKind.STOP, utc(2026, 3, 29, 2))]
    # 02:30 happens twice on 25 October: its first occurrence (still summer time, UTC+2).
    autumn = madrid("sun 02:30-04:00", lead=0)
    assert starts(autumn, utc(2026, 10, 24), utc(2026, 10, 26)) == [utc(2026, 10, 25, 0, 30)]
    # Every event id names its instant in UTC, the same however often it is computed.
    assert first[0].id == "start:2026-03-29T01:30:00Z"


def test_lead_time_closures_sessions_and_merged_slots() -> None:
    rule = madrid("mon-wed 09:00-11:00\nwed 11:00-12:00", lead=15,
                  sessions="2026-12-05 16:00-18:00", closures="2026-12-08..2026-12-08 Inmaculada")
    found = [(e.kind.value, e.at) for e in timetable.events(rule, utc(2026, 12, 6), utc(2026, 12, 10))]
    assert found == [
        ("start", utc(2026, 12, 7, 7, 45)), ("stop", utc(2026, 12, 7, 10)),  # Monday
        # Tuesday the 8th is closed; Wednesday's two slots are one interval (no stop at 11:00).
        ("start", utc(2026, 12, 9, 7, 45)), ("stop", utc(2026, 12, 9, 11)),
    ]
    # The one-off session on a Saturday.
    assert starts(rule, utc(2026, 12, 5), utc(2026, 12, 6)) == [utc(2026, 12, 5, 14, 45)]
    now = utc(2026, 12, 7, 7, 50)  # inside Monday's warm-up
    current = timetable.current(rule, now)
    assert current is not None and current.closes == utc(2026, 12, 7, 10)
    nxt = timetable.next_event(rule, now, EventKind.START)
    assert nxt is not None and nxt.at == utc(2026, 12, 9, 7, 45)


def test_course_end_is_midnight_after_the_last_day_in_its_zone() -> None:
    rule = madrid("mon 09:00-11:00", ends_on=date(2026, 6, 30))
    assert timetable.course_end(rule) == utc(2026, 6, 30, 22)


@pytest.mark.parametrize(("parse", "text", "field", "words"), [
    (timetable_text.parse_slots, "mon 09:00-11:00\nfunday 10:00-11:00", "slots", "Line 2"),
    (timetable_text.parse_slots, "mon 11:00-09:00", "slots", "ends before it starts"),
    (timetable_text.parse_slots, "tue 25:00-26:00", "slots", "not a time of day"),
    (timetable_text.parse_slots, "09:00-10:00", "slots", "name the days"),
    (timetable_text.parse_sessions, "2026-02-30 10:00-11:00", "sessions", "not a date"),
    (timetable_text.parse_sessions, "tomorrow 10:00-11:00", "sessions", "YYYY-MM-DD"),
    (timetable_text.parse_closures, "2026-12-24..2026-12-01", "closures", "before the first"),
])
def test_the_text_forms_refuse_with_the_field_and_the_line(parse: object, text: str, field: str,
                                                          words: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        parse(text)  # type: ignore[operator]
    assert refused.value.field == field and words in refused.value.message


def test_the_text_forms_read_what_they_write() -> None:
    slots = timetable_text.parse_slots("Monday, wed 09:00-11:00  # theory\nfri-mon 18:00-19:30")
    assert slots[0] == timetable.WeeklySlot((0, 2), time(9), time(11))
    assert slots[1].days == (0, 4, 5, 6)
    assert timetable_text.parse_slots(timetable_text.text_of(slots)) == slots
    with pytest.raises(ValidationFailed) as refused:
        timetable.time_zone("Mars/Olympus")
    assert refused.value.field == "timeZone"
    with pytest.raises(ValidationFailed):
        timetable_text.lead(500)
