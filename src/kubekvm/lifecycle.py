"""The lab lifecycle as plain rules: from the machines' desired and observed states to the
lab's phase, and from a teacher's request to the machines' new desired states.

Nothing here touches the database, GraphQL, HTML or libvirt; the service layer reads
documents, asks these functions what follows, and writes the answer.

Phases:
  Pending   some machine is not yet where its desired state says (being made, starting, stopping)
  Active    every machine that should run is running (students may have powered some off since)
  Inactive  every machine is shut off: the teacher stopped the lab, or every student powered off
  Failed    a host reported an error for a machine (the message says which and why)
  Deleting  the lab is being removed; its document goes when the hosts report every VM gone
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kubekvm.domain import DesiredState, ObservedState, Phase, Power

# States a machine can rest in without the platform doing anything more about it.
_OFF = frozenset({ObservedState.SHUTOFF, ObservedState.CRASHED})


class MachineView(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def desired(self) -> DesiredState: ...
    @property
    def observed(self) -> ObservedState: ...
    @property
    def message(self) -> str: ...
    @property
    def power_generation(self) -> int: ...
    @property
    def observed_power_generation(self) -> int | None: ...


@dataclass(frozen=True)
class PhaseDecision:
    phase: Phase
    message: str


def acknowledged(machine: MachineView) -> bool:
    """Has the host acted on the latest start/stop request for this machine?

    Until it has, a report of `shutoff` for a machine that should run means "not started
    yet", not "a student powered it off". A report that carries no generation (an agent's
    event about a domain it has not yet reported, such as one just defined) acknowledges
    nothing: it must not turn machines that are still starting into "powered off by students".
    """
    seen = machine.observed_power_generation
    return seen is not None and seen >= machine.power_generation


def lab_phase(*, deleting: bool, power: Power, machines: Sequence[MachineView]) -> PhaseDecision:
    """The phase and its message, both derived from the machines as they are now and the
    request pending on them (never kept from an earlier state)."""
    if deleting:
        left = len(machines)
        return PhaseDecision(Phase.DELETING, f"removing {left} machine(s) from their hosts" if left
                             else "removing the lab")
    kept = [m for m in machines if m.desired != DesiredState.ABSENT]
    failed = [m for m in kept if m.observed == ObservedState.ERROR]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return PhaseDecision(Phase.FAILED, f"{first.name}: {first.message or 'error'}{more}")
    if not kept:
        return PhaseDecision(Phase.PENDING, "no machines")
    running = sum(1 for m in kept if m.observed == ObservedState.RUNNING)
    off = sum(1 for m in kept if m.observed in _OFF and acknowledged(m))
    settled_off_or_running = running + off
    if power == Power.RUNNING:
        if running == len(kept):
            return PhaseDecision(Phase.ACTIVE, f"{running}/{len(kept)} running")
        if off == len(kept):
            return PhaseDecision(Phase.INACTIVE, "every machine is shut off")
        unsettled = [m for m in kept if m.observed not in _OFF | {ObservedState.RUNNING}
                     or (m.observed in _OFF and not acknowledged(m))]
        if not unsettled and settled_off_or_running == len(kept):
            return PhaseDecision(
                Phase.ACTIVE, f"{running}/{len(kept)} running ({off} powered off by students)"
            )
        return PhaseDecision(Phase.PENDING, _pending_message(kept, running))
    # power stopped
    if off == len(kept):
        return PhaseDecision(Phase.INACTIVE, "stopped")
    return PhaseDecision(Phase.PENDING, "stopping: " + _pending_message(kept, running))


def _pending_message(kept: Sequence[MachineView], running: int) -> str:
    """"1/3 running, 2 starting": how many machines are at each step, counted from their states
    and pending requests; then what the first one being made waits for, in its host's words."""
    steps = {"being made": 0, "starting": 0, "stopping": 0, "powered off by students": 0}
    for m in kept:
        if m.observed == ObservedState.PENDING:
            steps["being made"] += 1
        elif m.observed == ObservedState.RUNNING and m.desired == DesiredState.RUNNING:
            continue
        elif not acknowledged(m):
            steps["starting" if m.desired == DesiredState.RUNNING else "stopping"] += 1
        elif m.desired == DesiredState.STOPPED and m.observed not in _OFF:
            steps["stopping"] += 1
        elif m.observed in _OFF and m.desired == DesiredState.RUNNING:
            steps["powered off by students"] += 1
    parts = [f"{running}/{len(kept)} running"] + [f"{count} {step}" for step, count in steps.items() if count]
    waiting = [m for m in kept if m.observed == ObservedState.PENDING and m.message]
    detail = f" — {waiting[0].name}: {waiting[0].message}" if waiting else ""
    return ", ".join(parts) + detail


@dataclass(frozen=True)
class ScalePlan:
    """What a change of replicas does: indexes to create, revive and retire."""

    create: list[int]
    revive: list[int]
    retire: list[int]


def scale(*, existing: dict[int, DesiredState], replicas: int) -> ScalePlan:
    """Indexes are 1..replicas. Scaling down retires the highest indexes; scaling up first
    revives retiring machines still on their host (their disk is still there), then creates."""
    create = [i for i in range(1, replicas + 1) if i not in existing]
    revive = [i for i, d in existing.items() if i <= replicas and d == DesiredState.ABSENT]
    retire = [i for i, d in existing.items() if i > replicas and d != DesiredState.ABSENT]
    return ScalePlan(create=create, revive=sorted(revive), retire=sorted(retire))


def desired_for(power: Power) -> DesiredState:
    return DesiredState.RUNNING if power == Power.RUNNING else DesiredState.STOPPED


def machine_gone(*, desired: DesiredState, observed: ObservedState) -> bool:
    """A machine's document may be dropped once its host confirms the VM and disk are gone."""
    return desired == DesiredState.ABSENT and observed == ObservedState.ABSENT


def can_act_on_machine(*, phase: Phase, desired: DesiredState) -> str | None:
    """None when a per-machine start/stop/reset is allowed, else why not."""
    if phase == Phase.DELETING:
        return "the lab is being deleted"
    if desired == DesiredState.ABSENT:
        return "this machine is being removed"
    return None


def machine_counts(machines: Sequence[MachineView]) -> tuple[int, int]:
    """(running, kept) of a lab's machines: those kept (not on their way out), and of them those
    observed running; what the lab lists show beside each lab."""
    kept = [m for m in machines if m.desired != DesiredState.ABSENT]
    return sum(1 for m in kept if m.observed == ObservedState.RUNNING), len(kept)
