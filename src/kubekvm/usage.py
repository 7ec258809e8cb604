"""Usage quotas as plain rules: a student's hours outside scheduled slots, and what follows.

A lab may give each student a budget of hours (`quota_hours`, off by default) to use their
machine outside the lab's scheduled slots; inside a slot the machine runs free. Running time is
what hosts *observed*: an interval runs from the report that a machine is running to the report
that it no longer is (`kubekvm.services.running_time` records them), never from start and stop requests
(a machine asked to start that never booted cost nothing; one a student powered off from inside
stopped costing at once).

Which moments are inside a slot is the timetable's business (`kubekvm.timetable`): the rules
here take it as a function, `SlotOverlap(start, end)`: how many seconds of [start, end) lie
inside a scheduled slot, its warm-up lead included (the platform started the machine then, not
the student). `slot_overlap` makes one from a timetable; a lab without one has none (`no_slots`).

When the hours used reach the budget plus what the teacher granted, the machine is stopped
(`quota_stop`) and may not be started outside a slot until the teacher grants more
(`start_refusal`). Nothing here touches the database, the web or libvirt.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from kubekvm import timetable
from kubekvm.domain import StopReason
from kubekvm.errors import ValidationFailed
from kubekvm.idle import IdlePolicy

# Seconds of [start, end) that lie inside one of the lab's scheduled slots.
SlotOverlap = Callable[[datetime, datetime], float]

# The largest number a lab's limits take: a year in minutes or hours is more than any course.
MAX_MINUTES = 366 * 24 * 60.0
MAX_HOURS = 366 * 24.0


def no_slots(start: datetime, end: datetime) -> float:
    """The timetable of a lab without one: nothing is inside a slot."""
    return 0.0


def slot_overlap(rule: timetable.Timetable) -> SlotOverlap:
    """The `SlotOverlap` of a timetable: each of its (merged) intervals counts from its warm
    start, a lead before the slot, to the slot's end."""
    if rule.empty:
        return no_slots

    def overlap(start: datetime, end: datetime) -> float:
        total = 0.0
        for interval in timetable.intervals(rule, start, end):
            first, last = max(start, interval.opens - rule.lead), min(end, interval.closes)
            if last > first:
                total += (last - first).total_seconds()
        return total

    return overlap


def in_slot(overlap: SlotOverlap, now: datetime) -> bool:
    """Whether `now` is inside a scheduled slot."""
    return overlap(now, now + timedelta(seconds=1)) > 0


def counted_seconds(intervals: Iterable[tuple[datetime, datetime]], *, overlap: SlotOverlap) -> float:
    """Running time outside scheduled slots over `intervals` (start, end)."""
    total = 0.0
    for start, end in intervals:
        if end > start:
            total += max(0.0, (end - start).total_seconds() - overlap(start, end))
    return total


@dataclass(frozen=True, kw_only=True)
class Balance:
    """One student's hours in one lab."""

    budget_hours: float | None  # None: the lab has no quota
    granted_hours: float
    used_seconds: float

    @property
    def used_hours(self) -> float:
        return self.used_seconds / 3600.0

    @property
    def remaining_hours(self) -> float | None:
        if self.budget_hours is None:
            return None
        return self.budget_hours + self.granted_hours - self.used_hours

    @property
    def spent(self) -> bool:
        remaining = self.remaining_hours
        return remaining is not None and remaining <= 0


def quota_stop(balance: Balance, *, running: bool, inside_slot: bool) -> StopReason | None:
    """QUOTA when a running machine's student has spent their hours and no slot is on."""
    return StopReason.QUOTA if running and balance.spent and not inside_slot else None


def start_refusal(balance: Balance, *, student: str, inside_slot: bool) -> str | None:
    """Why `student`'s machine may not start now, or None (whoever asks: the lab's teacher grants
    hours rather than starting a machine the next check would stop again)."""
    if balance.spent and not inside_slot:
        return (f"{student}'s {_hours((balance.budget_hours or 0.0) + balance.granted_hours)} of use outside the "
                "lab's scheduled hours are spent; the lab's teacher can grant more")
    return None


def describe_stop(reason: StopReason, *, policy: IdlePolicy | None = None) -> str:
    """The words a student reads for why the platform stopped their machine."""
    if reason == StopReason.IDLE:
        after = f" for {_minutes(policy.idle_seconds)}" if policy and policy.idle_seconds is not None else ""
        return f"Stopped because it was idle{after} (no console open, almost no CPU use). Start it again to go on."
    if reason == StopReason.MAX_RUNTIME:
        after = f" ({_minutes(policy.max_run_seconds)})" if policy and policy.max_run_seconds is not None else ""
        return f"Stopped after running the longest time the lab allows in one go{after}. Start it again to go on."
    return "Stopped: your hours outside the lab's scheduled times are spent. Your teacher can grant more."


def limits_text(policy: IdlePolicy) -> str:
    """A lab's stops as its students read them beforehand ("" when none is on)."""
    parts = []
    if policy.idle_seconds is not None:
        parts.append(f"after {_minutes(policy.idle_seconds)} idle")
    if policy.max_run_seconds is not None:
        parts.append(f"after {_minutes(policy.max_run_seconds)} running")
    return f"Stops by itself {' or '.join(parts)}." if parts else ""


def _minutes(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} second{'s' if round(seconds) != 1 else ''}"
    minutes = round(seconds / 60.0, 1)
    return f"{minutes:g} minute{'s' if minutes != 1 else ''}"


def _hours(hours: float) -> str:
    return f"{hours:g} hour{'s' if hours != 1 else ''}"


def hours_text(hours: float | None) -> str:
    """Remaining hours as people read them: "2.5 h", "0 h" (never negative), "no limit"."""
    if hours is None:
        return "no limit"
    return f"{max(hours, 0.0):.1f} h"


def amount(value: float | None, *, field: str, label: str, maximum: float, minimum: float = 0.0,
           exclusive_minimum: bool = True) -> float | None:
    """A limit as sent (None: off), or ValidationFailed naming the field."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationFailed(field, f"{label} must be a number.")
    if value < minimum or (exclusive_minimum and value == minimum) or value > maximum:
        above = "more than" if exclusive_minimum else "at least"
        raise ValidationFailed(field, f"{label} must be {above} {minimum:g} and at most {maximum:g}.")
    return float(value)


_DECIMAL = re.compile(r"[0-9]{1,7}(?:[.,][0-9]{1,3})?")


def decimal_text(value: str, *, field: str) -> float | None:
    """A number typed in a form ("20", "1.5", "1,5"), None when empty, or ValidationFailed: ASCII
    digits with at most one decimal separator, nothing Python's `float()` would also take
    ("1e3", "inf", "nan", "٣")."""
    value = value.strip()
    if value == "":
        return None
    if not _DECIMAL.fullmatch(value):
        raise ValidationFailed(field, "Write a number such as 20 or 1.5, or leave it empty.")
    return float(value.replace(",", "."))
