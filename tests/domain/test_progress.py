"""Honest status (issue 15): what a machine does, waits on, for how long, and when that is long."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kubekvm import progress
from kubekvm.models import DesiredState, ObservedState

D, S = DesiredState, ObservedState
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
LIMITS = progress.Thresholds(create_seconds=300, change_seconds=60)


@dataclass
class M:
    observed: ObservedState
    desired: DesiredState = D.RUNNING
    host: str | None = "kvm1"
    name: str = "lab-1"
    message: str = ""
    power_generation: int = 1
    observed_power_generation: int | None = 1


def status(machine: M, *, ago: float, reporting: bool | None = True) -> progress.Progress:
    return progress.machine_progress(machine, since=NOW - timedelta(seconds=ago), now=NOW,
                                     host_reporting=reporting, thresholds=LIMITS)


def test_a_machine_being_made_says_the_step_and_how_long_and_when_that_is_long() -> None:
    quick = status(M(S.PENDING, message="creating: cloning the disk from tiny.qcow2"), ago=90)
    assert quick.text == "creating for 1 min — waiting on kvm1: cloning the disk from tiny.qcow2"
    assert not quick.slow
    slow = status(M(S.PENDING, message="creating: defining the VM"), ago=6 * 60)
    assert slow.slow and slow.text.endswith("(unusually long)")


def test_what_a_machine_waits_on() -> None:
    placement = status(M(S.PENDING, host=None, message="no ready host has image w.qcow2"), ago=10, reporting=None)
    assert placement.waits_on == "placement: no ready host has image w.qcow2"
    starting = status(M(S.SHUTOFF, power_generation=2), ago=30)
    assert (starting.doing, starting.waits_on) == ("starting", "kvm1 to start it")
    silent = status(M(S.SHUTOFF, power_generation=2), ago=120, reporting=False)
    assert silent.waits_on == "kvm1, which has not reported for a while" and silent.slow
    stopping = status(M(S.RUNNING, D.STOPPED, message="shutting down; forcing off after 60 s"), ago=5)
    assert stopping.text == "stopping for 5 s — waiting on kvm1: shutting down; forcing off after 60 s"
    removing = status(M(S.RUNNING, D.ABSENT), ago=3)
    assert removing.doing == "removing"


def test_a_machine_at_rest_waits_on_nothing_and_is_never_slow() -> None:
    resting = status(M(S.RUNNING), ago=3 * 86400)
    assert (resting.doing, resting.slow, resting.text) == (None, False, "for 3 d")
    # A stop long done: the agent's old "forcing off" words are not a wait.
    off = status(M(S.SHUTOFF, D.STOPPED, message="forced off: no ACPI shutdown within 60 s"), ago=4000)
    assert off.doing is None and off.text == "for 1 h 6 min"


def test_elapsed_reads_like_a_person_would_say_it() -> None:
    assert [progress.elapsed(s) for s in (0, 59, 60, 3599, 3600, 3660, 86400)] == [
        "0 s", "59 s", "1 min", "59 min", "1 h", "1 h 1 min", "1 d"]
