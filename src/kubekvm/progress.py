"""Honest status: what a machine or a lab is doing, what it waits on, for how long, and whether
that is unusually long.

Everything shown is derived here from the state as stored now (desired and observed state, the
pending request's generation, the host and whether it still reports, the time the state began),
never from a text stored with an earlier state: a machine's own message is the agent's detail of
the work it is doing *now* (it comes with every report and is replaced by the next), so it is
shown beside the derived status, not instead of it. The server records `since` when a machine's
state or request changes (and a lab's `phase_since` when its phase changes), so the time in a
state survives a restart and is the same on every replica.

Pure: no database, web or libvirt import. The pages render the elapsed time server-side, the
live updates re-render it with every change, and between changes (a machine stuck in a step sends
none) `static/elapsed.js` keeps the clock going and flags the step once it passes `slow_after`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from kubekvm.domain import DesiredState, ObservedState
from kubekvm.lifecycle import MachineView, acknowledged

_OFF = frozenset({ObservedState.SHUTOFF, ObservedState.CRASHED})


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """How long a step may take before it is called unusually long (settings
    KUBEKVM_SLOW_CREATE_SECONDS and KUBEKVM_SLOW_CHANGE_SECONDS): making a machine copies a disk
    and defines a VM, which takes minutes on a busy host; a start, stop or removal seconds."""

    create_seconds: float = 600.0
    change_seconds: float = 180.0


class MachineState(MachineView, Protocol):
    @property
    def host(self) -> str | None: ...


@dataclass(frozen=True, kw_only=True)
class Progress:
    """`doing`: the step under way ("creating", "starting" …), None when the machine rests in its
    state; `waits_on`: who must act next, in words; `seconds`: how long it has been so; `slow`."""

    doing: str | None
    waits_on: str | None
    seconds: float
    slow: bool
    # When `doing` becomes unusually long (None: never, at rest): the page's clock flags it then.
    slow_after: float | None = None

    @property
    def elapsed(self) -> str:
        return elapsed(self.seconds)

    @property
    def text(self) -> str:
        """One line: "creating for 7 min — waiting on kvm1: cloning the disk (unusually long)"."""
        if self.doing is None:
            return f"for {self.elapsed}" + (f" — {self.waits_on}" if self.waits_on else "")
        line = f"{self.doing} for {self.elapsed}"
        if self.waits_on:
            line += f" — waiting on {self.waits_on}"
        return line + (" (unusually long)" if self.slow else "")


def elapsed(seconds: float) -> str:
    """A duration as a person reads it: "12 s", "4 min", "2 h 5 min", "3 d"."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86400:
        hours, minutes = divmod(whole // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{whole // 86400} d"


def machine_progress(machine: MachineState, *, since: datetime, now: datetime, host_reporting: bool | None,
                     thresholds: Thresholds) -> Progress:
    """What `machine` is doing and waits on. `host_reporting`: whether its host's agent is heard
    from (None: it has no host)."""
    seconds = max(0.0, (now - since).total_seconds())
    detail = machine.message.strip()
    silent = f"{machine.host}, which has not reported for a while" if host_reporting is False else None
    doing: str | None
    waits_on: str | None
    limit = thresholds.change_seconds
    if machine.desired == DesiredState.ABSENT:
        doing, waits_on = "removing", silent or f"{machine.host} to remove the VM and its disk"
    elif machine.host is None:
        # Placement stores why no host takes it ("no ready host has image …") as its message.
        doing, waits_on = "waiting for a host", f"placement: {detail}" if detail else "placement"
        limit = thresholds.create_seconds
    elif machine.observed == ObservedState.ERROR:
        doing, waits_on = None, detail or "the host reported an error"
    elif machine.observed == ObservedState.PENDING:
        doing = "resetting" if detail.startswith("resetting") else "creating"
        # The agent names the step ("creating: cloning the disk from x.qcow2"); the word
        # "creating" is already said.
        step = detail.removeprefix("creating").lstrip(": ")
        waits_on = silent or (f"{machine.host}: {step}" if step
                              else f"{machine.host} to copy the disk and define the VM")
        limit = thresholds.create_seconds
    elif not acknowledged(machine):
        doing = "starting" if machine.desired == DesiredState.RUNNING else "stopping"
        waits_on = silent or f"{machine.host} to {'start' if doing == 'starting' else 'stop'} it"
    elif machine.desired == DesiredState.STOPPED and machine.observed not in _OFF:
        # Asked to stop, the guest still runs: the agent says what it does (ACPI, then forced).
        doing, waits_on = "stopping", silent or (f"{machine.host}: {detail}" if detail else "the guest to shut down")
    else:
        doing = None
        waits_on = silent
    return Progress(doing=doing, waits_on=waits_on, seconds=seconds,
                    slow=doing is not None and seconds > limit, slow_after=limit if doing is not None else None)


def unusually_long(seconds: float, *, thresholds: Thresholds) -> bool:
    """For a lab: Pending (or Deleting) longer than making a machine may take."""
    return seconds > thresholds.create_seconds
