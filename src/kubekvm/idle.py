"""Idle shutdown as plain rules: when a running machine has been idle, or running, for too long.

A lab may ask (its `UsagePolicy`, off by default) that a machine be stopped when, for
`idle_minutes`, nobody had its console open and its guest's CPU stayed under `idle_cpu_percent`
— and/or once it has run `max_run_minutes` in one go. The evidence comes from two places:

- the host's agent samples each running domain's cumulative guest CPU time (libvirt) and sends
  it with its state reports; `next_activity` folds each sample into the machine's
  `CpuActivity`: the load of the interval since the previous sample and, while the load stays
  under the lab's threshold, since when it has (`quiet_since`). The threshold is the lab's at
  the time of each sample: a changed threshold judges the samples from then on.
- the server knows the consoles (`ConsoleSession`s): one open now keeps the machine awake, and
  one closed lately restarts the quiet span from its closing.

`idle_stop` decides from those and the time the machine was observed to start running. The
quiet span is measured up to the last sample, never to "now": a host whose agent stopped
sending samples proves nothing about the minutes since, so its machines are not stopped for it.

Nothing here touches the database, the web or libvirt; times are passed in (tests inject them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kubekvm.domain import StopReason

# The load, in percent of the machine's vCPUs, under which a guest counts as idle by default:
# an idle Linux desktop or shell guest uses well under 1 %, one compiling or browsing far more.
DEFAULT_IDLE_CPU_PERCENT = 5.0


@dataclass(frozen=True, kw_only=True)
class IdlePolicy:
    """A lab's idle-shutdown settings; None turns a limit off."""

    idle_seconds: float | None = None
    cpu_percent: float = DEFAULT_IDLE_CPU_PERCENT
    max_run_seconds: float | None = None

    @property
    def active(self) -> bool:
        return self.idle_seconds is not None or self.max_run_seconds is not None


@dataclass(frozen=True, kw_only=True)
class CpuActivity:
    """What the samples so far say of a running machine's guest CPU."""

    cpu_seconds: float  # cumulative guest CPU time at the last sample
    sampled_at: datetime
    load_percent: float | None = None  # of the interval ending at the last sample; None: first sample
    quiet_since: datetime | None = None  # the start of the current run of quiet intervals


def next_activity(previous: CpuActivity | None, *, cpu_seconds: float, at: datetime, vcpus: int,
                  threshold_percent: float) -> CpuActivity:
    """Fold one sample in. A first sample, one not after the previous, or a counter that went
    back (the guest was started again) only starts the count: one sample alone says nothing."""
    if previous is None or at <= previous.sampled_at or cpu_seconds < previous.cpu_seconds:
        return CpuActivity(cpu_seconds=cpu_seconds, sampled_at=at)
    elapsed = (at - previous.sampled_at).total_seconds()
    load = 100.0 * (cpu_seconds - previous.cpu_seconds) / (elapsed * max(vcpus, 1))
    quiet_since = (previous.quiet_since or previous.sampled_at) if load < threshold_percent else None
    return CpuActivity(cpu_seconds=cpu_seconds, sampled_at=at, load_percent=round(load, 3), quiet_since=quiet_since)


def quiet_seconds(*, activity: CpuActivity | None, running_since: datetime,
                  console_closed_at: datetime | None) -> float:
    """How long the machine has been proven idle: from the latest of the start of its quiet run,
    its start and its last console's closing, up to its last sample."""
    if activity is None or activity.quiet_since is None:
        return 0.0
    start = max(activity.quiet_since, running_since, console_closed_at or running_since)
    return max(0.0, (activity.sampled_at - start).total_seconds())


def idle_stop(policy: IdlePolicy, *, now: datetime, running_since: datetime | None,
              activity: CpuActivity | None, console_open: bool,
              console_closed_at: datetime | None) -> StopReason | None:
    """Why the machine should be stopped now, or None. `running_since`: when it was observed to
    start running (None: it is not running)."""
    if running_since is None:
        return None
    if policy.max_run_seconds is not None and (now - running_since).total_seconds() >= policy.max_run_seconds:
        return StopReason.MAX_RUNTIME
    if policy.idle_seconds is None or console_open:
        return None
    quiet = quiet_seconds(activity=activity, running_since=running_since, console_closed_at=console_closed_at)
    return StopReason.IDLE if quiet >= policy.idle_seconds else None
