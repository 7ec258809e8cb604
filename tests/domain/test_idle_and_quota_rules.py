"""Idle shutdown and usage quotas as plain rules, with time passed in (no clock, no waiting):
CPU samples folded into a quiet span, consoles and starts cutting it, the longest run, and a
student's hours outside scheduled slots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kubekvm import idle, usage
from kubekvm.domain import StopReason
from kubekvm.errors import ValidationFailed

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
POLICY = idle.IdlePolicy(idle_seconds=600, cpu_percent=5.0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def samples(*points: tuple[float, float], vcpus: int = 1, threshold: float = 5.0) -> idle.CpuActivity | None:
    """Fold (seconds after T0, guest CPU seconds) samples in order."""
    activity: idle.CpuActivity | None = None
    for when, cpu in points:
        activity = idle.next_activity(activity, cpu_seconds=cpu, at=at(when), vcpus=vcpus, threshold_percent=threshold)
    return activity


def test_one_sample_says_nothing_and_two_give_the_load() -> None:
    first = samples((0, 10.0))
    assert first is not None and first.load_percent is None and first.quiet_since is None
    second = samples((0, 10.0), (60, 13.0), vcpus=2)  # 3 s of CPU in 60 s over 2 vCPUs
    assert second is not None and second.load_percent == pytest.approx(2.5) and second.quiet_since == at(0)


def test_a_busy_interval_ends_the_quiet_span_and_a_quiet_one_starts_it_again() -> None:
    activity = samples((0, 0.0), (60, 0.5), (120, 30.5), (180, 31.0), (240, 31.2))
    assert activity is not None
    assert activity.quiet_since == at(120), "quiet again from the end of the busy interval"


def test_a_counter_that_goes_back_is_a_restarted_guest_not_a_negative_load() -> None:
    activity = samples((0, 500.0), (60, 500.1), (120, 1.0))
    assert activity is not None and activity.load_percent is None and activity.quiet_since is None


def test_idle_for_the_whole_span_stops_and_not_a_second_earlier() -> None:
    activity = samples(*[(t, 0.01 * t) for t in range(0, 601, 60)])  # 1 % load throughout
    decide = lambda act: idle.idle_stop(POLICY, now=at(600), running_since=at(0), activity=act,  # noqa: E731
                                        console_open=False, console_closed_at=None)
    assert decide(activity) == StopReason.IDLE
    shorter = samples(*[(t, 0.01 * t) for t in range(0, 541, 60)])
    assert decide(shorter) is None


def test_the_span_is_proven_by_samples_not_by_the_clock() -> None:
    """A host whose agent stopped sampling proves nothing about the minutes since."""
    activity = samples((0, 0.0), (60, 0.1))
    assert idle.idle_stop(POLICY, now=at(7200), running_since=at(0), activity=activity, console_open=False,
                          console_closed_at=None) is None


def test_an_open_console_keeps_a_machine_awake_and_its_closing_restarts_the_span() -> None:
    activity = samples(*[(t, 0.0) for t in range(0, 1201, 60)])
    common = {"now": at(1200), "running_since": at(0), "activity": activity}
    assert idle.idle_stop(POLICY, console_open=True, console_closed_at=None, **common) is None
    assert idle.idle_stop(POLICY, console_open=False, console_closed_at=at(700), **common) is None
    assert idle.idle_stop(POLICY, console_open=False, console_closed_at=at(600), **common) == StopReason.IDLE


def test_the_span_starts_no_earlier_than_the_machine_did() -> None:
    activity = samples(*[(t, 0.0) for t in range(0, 1201, 60)])
    assert idle.idle_stop(POLICY, now=at(1200), running_since=at(700), activity=activity, console_open=False,
                          console_closed_at=None) is None


def test_the_longest_run_stops_whatever_the_load_and_consoles() -> None:
    policy = idle.IdlePolicy(max_run_seconds=3600)
    busy = samples((0, 0.0), (3600, 3600.0))
    assert idle.idle_stop(policy, now=at(3599), running_since=at(0), activity=busy, console_open=True,
                          console_closed_at=None) is None
    assert idle.idle_stop(policy, now=at(3600), running_since=at(0), activity=busy, console_open=True,
                          console_closed_at=None) == StopReason.MAX_RUNTIME
    assert idle.idle_stop(policy, now=at(9999), running_since=None, activity=busy, console_open=False,
                          console_closed_at=None) is None, "a machine not running is not stopped"


def test_off_by_default() -> None:
    activity = samples(*[(t, 0.0) for t in range(0, 86_401, 3600)])
    assert not idle.IdlePolicy().active
    assert idle.idle_stop(idle.IdlePolicy(), now=at(86_400), running_since=at(0), activity=activity,
                          console_open=False, console_closed_at=None) is None


def slots(*spans: tuple[float, float]) -> usage.SlotOverlap:
    """A timetable of (start, end) seconds after T0, as the overlap function the rules take."""
    def overlap(start: datetime, end: datetime) -> float:
        return sum(max(0.0, (min(end, at(b)) - max(start, at(a))).total_seconds()) for a, b in spans)
    return overlap


def test_running_time_inside_scheduled_slots_is_free() -> None:
    timetable = slots((3600, 7200))  # a class from 10:00 to 11:00
    intervals = [(at(0), at(1800)), (at(3000), at(8000)), (at(9000), at(9600))]
    assert usage.counted_seconds(intervals, overlap=usage.no_slots) == 1800 + 5000 + 600
    assert usage.counted_seconds(intervals, overlap=timetable) == 1800 + (5000 - 3600) + 600
    assert usage.in_slot(timetable, at(3600)) and not usage.in_slot(timetable, at(7200))


def test_a_spent_budget_stops_and_refuses_a_start_outside_slots_only() -> None:
    spent = usage.Balance(budget_hours=2.0, granted_hours=0.5, used_seconds=2.5 * 3600)
    assert spent.spent and spent.remaining_hours == 0
    assert usage.quota_stop(spent, running=True, inside_slot=False) == StopReason.QUOTA
    assert usage.quota_stop(spent, running=True, inside_slot=True) is None
    assert usage.quota_stop(spent, running=False, inside_slot=False) is None
    refusal = usage.start_refusal(spent, student="ana", inside_slot=False)
    assert refusal is not None and "2.5 hours" in refusal
    assert usage.start_refusal(spent, student="ana", inside_slot=True) is None
    left = usage.Balance(budget_hours=2.0, granted_hours=0.5, used_seconds=2.4 * 3600)
    assert not left.spent and left.remaining_hours == pytest.approx(0.1)
    unlimited = usage.Balance(budget_hours=None, granted_hours=0, used_seconds=10**9)
    assert not unlimited.spent and unlimited.remaining_hours is None
    assert usage.hours_text(spent.remaining_hours) == "0.0 h" and usage.hours_text(None) == "no limit"


def test_the_reason_a_student_reads() -> None:
    policy = idle.IdlePolicy(idle_seconds=1200, max_run_seconds=4 * 3600)
    assert "idle for 20 minutes" in usage.describe_stop(StopReason.IDLE, policy=policy)
    assert "(240 minutes)" in usage.describe_stop(StopReason.MAX_RUNTIME, policy=policy)
    assert "grant more" in usage.describe_stop(StopReason.QUOTA)
    assert usage.limits_text(policy) == "Stops by itself after 20 minutes idle or after 240 minutes running."
    assert usage.limits_text(idle.IdlePolicy()) == ""
    assert "idle for 15 seconds" in usage.describe_stop(StopReason.IDLE, policy=idle.IdlePolicy(idle_seconds=15))
    assert "idle for 1.5 minutes" in usage.describe_stop(StopReason.IDLE, policy=idle.IdlePolicy(idle_seconds=90))


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), 10**9, True])
def test_a_limit_out_of_range_names_its_field(value: float) -> None:
    with pytest.raises(ValidationFailed) as refused:
        usage.amount(value, field="idleMinutes", label="The idle time", maximum=usage.MAX_MINUTES)
    assert refused.value.field == "idleMinutes"


def test_a_quota_of_zero_hours_is_allowed_and_none_is_off() -> None:
    assert usage.amount(0, field="quotaHours", label="x", maximum=10, exclusive_minimum=False) == 0.0
    assert usage.amount(None, field="quotaHours", label="x", maximum=10) is None


def test_a_timetable_s_slots_and_their_warm_up_are_free_across_a_dst_change() -> None:
    """Mondays 09:00-11:00 in Europe/Madrid with a 15-minute warm start: 06:45-09:00 UTC in
    summer, 07:45-10:00 UTC in winter (the clocks go back on Sunday 2026-10-25)."""
    from datetime import time

    from kubekvm import timetable

    rule = timetable.Timetable(zone="Europe/Madrid", lead=timedelta(minutes=15),
                               slots=(timetable.WeeklySlot(days=(0,), start=time(9), end=time(11)),))
    overlap = usage.slot_overlap(rule)
    summer, winter = datetime(2026, 10, 19, tzinfo=UTC), datetime(2026, 10, 26, tzinfo=UTC)
    day = timedelta(hours=24)
    assert overlap(summer, summer + day) == 2.25 * 3600 == overlap(winter, winter + day)
    assert usage.in_slot(overlap, winter + timedelta(hours=9, minutes=50)), "10:50 in Madrid"
    assert not usage.in_slot(overlap, summer + timedelta(hours=9, minutes=30)), "11:30 in Madrid"
    assert usage.in_slot(overlap, summer + timedelta(hours=6, minutes=50)), "08:50: the warm start"
    running = [(summer + timedelta(hours=7), summer + timedelta(hours=12))]  # 09:00-14:00 in Madrid
    assert usage.counted_seconds(running, overlap=overlap) == (5 - 2) * 3600
    assert usage.slot_overlap(timetable.Timetable(zone="UTC")) is usage.no_slots
