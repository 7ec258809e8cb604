"""The parts of the lab pages that change while a teacher looks at them.

A lab card, a lab's status, a machine row, a lab's machine table and its event list are each one
Jinja2 template, rendered by the same code for a whole page, for an htmx response and for a
live update (`kubekvm.live`), so the three can never disagree. Live updates and htmx responses
ask for the out-of-band form (`oob=True`): the element carries `hx-swap-oob` and replaces the
element with the same id wherever it is on the page.

What a row or card shows (which actions are allowed, what a machine is doing) is decided here
from `kubekvm.lifecycle`, so the templates only lay it out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import escape

from kubekvm import lifecycle, progress, usage, validation
from kubekvm.authorized import Authorized
from kubekvm.models import Deployment, DesiredState, LabEvent, Machine, ObservedState, Phase, utcnow
from kubekvm.pages.common import Renderer
from kubekvm.services.usage import idle_policy

PAGE_SIZE = 100


@dataclass(frozen=True, kw_only=True)
class Clock:
    """What a status is judged against: now, whether the machines' hosts still report, and the
    thresholds of "unusually long" (settings)."""

    now: datetime
    reporting: Mapping[str, bool]
    thresholds: progress.Thresholds

    def machine(self, machine: Machine) -> progress.Progress:
        since = machine.since or machine.observed_at or machine.created_at
        return progress.machine_progress(
            machine, since=since, now=self.now, thresholds=self.thresholds,
            host_reporting=None if machine.host is None else self.reporting.get(machine.host, False))


async def clock_for(services: Authorized, machines: Sequence[Machine] = ()) -> Clock:
    settings = services.settings
    return Clock(now=utcnow(), reporting=await services.hosts_reporting(m.host for m in machines if m.host),
                 thresholds=progress.Thresholds(create_seconds=settings.slow_create_seconds,
                                                change_seconds=settings.slow_change_seconds))


@dataclass(frozen=True)
class LabSummary:
    lab: Deployment
    running: int
    total: int
    template_title: str
    since_seconds: float = 0.0
    slow: bool = False
    slow_after: float | None = None  # a phase that settles (Pending, Deleting) is flagged after this

    @property
    def elapsed(self) -> str:
        return progress.elapsed(self.since_seconds)

    @property
    def deleting(self) -> bool:
        return self.lab.phase == Phase.DELETING

    @property
    def note(self) -> str:
        """The lab's message (derived from its machines with its phase, `lifecycle.lab_phase`),
        unless it only repeats the progress bar's "3/30 running"."""
        message = self.lab.message
        return "" if message == f"{self.running}/{self.total} running" else message

    @property
    def headline(self) -> str:
        """What a screen reader hears when the lab's phase changes."""
        return f"Lab {self.lab.title}: {self.lab.phase.value}, {self.running} of {self.total} running."


@dataclass(frozen=True)
class MachineRow:
    machine: Machine
    refused: str | None  # why start/stop/reset are not offered, or None
    transition: str | None  # what the machine is on its way to doing, if anything
    can_start: bool  # False when it runs (or is starting) and should: the button would do nothing
    can_stop: bool  # False when it is off and should be
    status: progress.Progress  # what it does and waits on, for how long
    # Why the platform stopped it (idle, longest run, spent hours), in words; "" if it did not.
    stopped_because: str = ""


def machine_row(machine: Machine, *, phase: Phase, clock: Clock) -> MachineRow:
    status = clock.machine(machine)
    transition = status.doing if status.doing != "waiting for a host" else "creating"
    refused = lifecycle.can_act_on_machine(phase=phase, desired=machine.desired)
    off = machine.observed in (ObservedState.SHUTOFF, ObservedState.CRASHED)
    return MachineRow(
        machine=machine, refused=refused, transition=transition, status=status,
        can_start=not (machine.desired == DesiredState.RUNNING
                       and machine.observed in (ObservedState.RUNNING, ObservedState.PENDING)),
        can_stop=not (machine.desired == DesiredState.STOPPED and off),
        stopped_because=usage.describe_stop(machine.stop_reason)
        if machine.stop_reason is not None and machine.desired == DesiredState.STOPPED else "",
    )


@dataclass(frozen=True)
class MyMachine:
    """A row of a student's "My VMs": their machine and the lab's title."""

    row: MachineRow
    lab_title: str
    # The student's hours left outside the lab's scheduled slots ("" when the lab has no quota).
    hours_left: str = ""
    # When the platform stops it by itself (idle, longest run), told beforehand ("" if never).
    limits: str = ""


async def my_rows(services: Authorized) -> list[MyMachine]:
    """The signed-in student's machines (`list_machines` is narrowed to them)."""
    machines = await services.list_machines()
    labs = await services.labs_named(sorted({m.deployment for m in machines}))
    clock = await clock_for(services, machines)
    left: dict[str, str] = {}
    for lab in labs.values():
        if lab.policy.quota_hours is not None and services.actor.is_student:
            mine = await services.student_hours(lab.name)
            if mine:
                left[lab.name] = usage.hours_text(mine[0].balance.remaining_hours)
    # A lab the student left between the two reads (taken off its roster) is no longer theirs.
    return [MyMachine(row=machine_row(m, phase=labs[m.deployment].phase, clock=clock),
                      lab_title=labs[m.deployment].title, hours_left=left.get(m.deployment, ""),
                      limits=usage.limits_text(idle_policy(labs[m.deployment].policy)))
            for m in machines if m.deployment in labs]


def machine_rows(machines: Sequence[Machine], *, phase: Phase, clock: Clock) -> list[MachineRow]:
    return [machine_row(m, phase=phase, clock=clock) for m in machines]


async def summaries(services: Authorized, labs: Sequence[Deployment]) -> list[LabSummary]:
    counts = await services.running_counts(labs)
    titles = {t.name: t.title for t in await services.list_templates()} if labs else {}
    settings, now = services.settings, utcnow()

    def made(lab: Deployment) -> LabSummary:
        seconds = max(0.0, (now - (lab.phase_since or lab.updated_at)).total_seconds())
        settling = lab.phase in (Phase.PENDING, Phase.DELETING)
        return LabSummary(lab=lab, running=counts[lab.name][0], total=counts[lab.name][1],
                          template_title=titles.get(lab.template, lab.template), since_seconds=seconds,
                          slow=settling and seconds > settings.slow_create_seconds,
                          slow_after=settings.slow_create_seconds if settling else None)
    return [made(lab) for lab in labs]


async def summary(services: Authorized, name: str) -> LabSummary:
    """One lab's summary; NotFound if it is gone."""
    return (await summaries(services, [await services.get_deployment(name)]))[0]


@dataclass(frozen=True)
class ListView:
    """Which slice of the labs list a page shows."""

    phase: Phase | None = None
    offset: int = 0

    @classmethod
    def parse(cls, phase: str | None, offset: str | None) -> ListView:
        """The view a query string asks for; ValidationFailed for an offset that is no number
        or out of range (an unknown phase shows every phase)."""
        try:
            chosen = Phase(phase) if phase else None
        except ValueError:
            chosen = None
        # A bad offset is refused (422, naming it), never reaches the database: see `validation`.
        return cls(phase=chosen, offset=validation.offset(offset))

    @property
    def query(self) -> str:
        parts = []
        if self.phase:
            parts.append(f"phase={self.phase.value}")
        if self.offset:
            parts.append(f"offset={self.offset}")
        return "&".join(parts)


class Fragments:
    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer

    def card(self, lab: LabSummary, *, oob: bool = False) -> str:
        return self.renderer.fragment("labs/_card.html", s=lab, oob=oob, next="/")

    def lab_list(self, labs: Sequence[LabSummary], *, view: ListView, total: int,
                 oob: bool = False) -> str:
        return self.renderer.fragment(
            "labs/_list.html", labs=labs, view=view, total=total, page_size=PAGE_SIZE,
            phases=[p.value for p in Phase], oob=oob,
        )

    def status(self, lab: LabSummary, *, oob: bool = False) -> str:
        return self.renderer.fragment("labs/_status.html", s=lab, oob=oob)

    def row(self, row: MachineRow, *, oob: bool = False) -> str:
        return self.renderer.fragment("labs/_machine.html", row=row, oob=oob)

    def rows(self, rows: Sequence[MachineRow], *, oob: bool = False) -> str:
        return self.renderer.fragment("labs/_machines.html", rows=rows, oob=oob)

    def my_row(self, mine: MyMachine, *, oob: bool = False) -> str:
        return self.renderer.fragment("my/_machine.html", mine=mine, oob=oob)

    def my_rows(self, rows: Sequence[MyMachine], *, oob: bool = False) -> str:
        return self.renderer.fragment("my/_machines.html", rows=rows, oob=oob)

    def removed_row(self, machine_name: str) -> str:
        return f'<tr id="machine-{escape(machine_name)}" hx-swap-oob="delete"></tr>'

    def events(self, events: Sequence[LabEvent], *, oob: bool = False) -> str:
        return self.renderer.fragment("labs/_events.html", events=events, oob=oob)

    def gone(self, name: str) -> str:
        return self.renderer.fragment("labs/_gone.html", name=name)

    def announce(self, text: str) -> str:
        return self.renderer.fragment("_announce.html", text=text)
