"""Reports: what host agents observe of their machines, applied a batch at a time.

An agent coalesces its state reports over a few milliseconds and sends them together
(`reportMachineStates`); a class's worth of machines starting at once is then a handful of
batches, not one round trip each. A batch's states are applied in a fixed number of database
round trips whatever its size: one read of the machines it names, one bulk write of the
changed ones, one insert of the lab history lines, and one phase recomputation per lab it
touches (`Convergence.refresh_phase`), instead of one of each per report. Only the running
time accounting stays per report (`RunningTime.observe`, which writes when a machine starts or
stops running or a report carries a CPU sample).

Each report is its own unit, as a single `reportMachineState` is: a report the server
refuses (its machine was removed meanwhile, it is assigned to another host, a number out of
range) gets its own outcome with the error's code and message, and the others are applied
all the same; an agent must not lose 29 machines' news because the 30th was deleted. What
makes the whole batch malformed (more than `MAX_REPORTS_PER_BATCH` reports, one machine
twice) is refused before anything is written. The batch and its consequences are one unit
(`finish`): an agent whose connection drops mid-batch cannot leave states written and the
labs' phases not recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from beanie import PydanticObjectId
from pymongo import UpdateOne

from kubekvm import lifecycle, validation
from kubekvm.errors import Conflict, KubeKVMError, NotFound, ValidationFailed
from kubekvm.models import LabEvent, Machine, ObservedState, utcnow
from kubekvm.services.context import Noun, finish, object_id

# An agent sends at most 100 at once; a host of a few hundred machines re-reporting everything
# after a reconnection still fits in a few batches, and one request stays bounded.
MAX_REPORTS_PER_BATCH = 500


@dataclass(frozen=True, kw_only=True)
class MachineReport:
    """One machine's state as its host observes it (see `documents.report_machine_states`)."""

    machine_id: str
    state: ObservedState
    message: str = ""
    power_generation: int | None = None
    # The guest's cumulative CPU time, when the report carries a sample (`RunningTime.observe`).
    cpu_seconds: float | None = None


@dataclass(frozen=True)
class ReportOutcome:
    """What became of one report: the machine as recorded, or why it was refused."""

    machine_id: str
    machine: Machine | None = None
    error: KubeKVMError | None = None

    @property
    def accepted(self) -> bool:
        return self.error is None


@dataclass
class _Change:
    """A report that changes its machine: the write, and what it was before."""

    position: int
    machine: Machine
    changes: dict[str, Any]
    previous: ObservedState


class Reports(Noun):
    """The hosts' reports of their machines, unchecked (callers use `MachineOperations`)."""

    async def report_machine_states(self, *, host: str, reports: Sequence[MachineReport]) -> list[ReportOutcome]:
        """Apply a host's batch of reports; one outcome per report, in the batch's order."""
        if len(reports) > MAX_REPORTS_PER_BATCH:
            raise ValidationFailed("reports", f"A batch holds at most {MAX_REPORTS_PER_BATCH} reports; "
                                              f"this one has {len(reports)}.")
        seen: set[str] = set()
        for report in reports:
            if report.machine_id in seen:
                raise ValidationFailed("reports", f"Machine {report.machine_id} is reported twice in one batch; "
                                                  "send only its latest state.")
            seen.add(report.machine_id)
        return await finish(self._apply(host, reports))

    async def _apply(self, host: str, reports: Sequence[MachineReport]) -> list[ReportOutcome]:
        outcomes: list[ReportOutcome | None] = [None] * len(reports)
        ids: dict[int, PydanticObjectId] = {}
        for position, report in enumerate(reports):
            try:
                if report.power_generation is not None:
                    validation.whole_number(report.power_generation, field="powerGeneration", minimum=0,
                                            maximum=2**63 - 1)
                ids[position] = object_id(report.machine_id, what="machine")
            except KubeKVMError as error:
                outcomes[position] = ReportOutcome(report.machine_id, error=error)
        collection = Machine.get_pymongo_collection()
        found = {document["_id"]: Machine.model_validate(document)
                 async for document in collection.find({"_id": {"$in": list(ids.values())}})}
        now = utcnow()
        pending: list[_Change] = []
        for position, machine_id in ids.items():
            report = reports[position]
            machine = found.get(machine_id)
            if machine is None or machine.retired:
                outcomes[position] = ReportOutcome(report.machine_id, error=NotFound(
                    f"There is no machine with id {report.machine_id}; it was removed."))
                continue
            if machine.host != host:
                outcomes[position] = ReportOutcome(report.machine_id, error=Conflict(
                    f"Machine {machine.name} is assigned to {machine.host or 'no host'}, not {host}."))
                continue
            message = validation.note(report.message)
            try:
                # Running time and guest CPU are accounted from every report, changed state or not.
                await self.core.running_time.observe(machine, state=report.state, cpu_seconds=report.cpu_seconds)
            except KubeKVMError as error:
                outcomes[position] = ReportOutcome(report.machine_id, error=error)
                continue
            seen = report.power_generation if report.power_generation is not None else machine.observed_power_generation
            unchanged = (machine.observed, machine.message, machine.observed_power_generation) == (
                report.state, message, seen)
            if unchanged and not lifecycle.machine_gone(desired=machine.desired, observed=report.state):
                outcomes[position] = ReportOutcome(report.machine_id, machine=machine)
                continue
            changes: dict[str, Any] = {"observed": report.state.value, "message": message, "observed_at": now,
                                       "observed_power_generation": seen}
            if report.state != machine.observed or seen != machine.observed_power_generation:
                changes["since"] = now
            pending.append(_Change(position, machine, changes, machine.observed))
        written = await self._write(host, pending)
        notes: list[LabEvent] = []
        labs: dict[str, None] = {}
        for change in pending:
            report, machine = reports[change.position], change.machine
            if machine.id not in written:
                outcomes[change.position] = ReportOutcome(report.machine_id, error=NotFound(
                    f"There is no machine with id {report.machine_id} on {host}; it was removed."))
                continue
            machine.observed, machine.message = report.state, change.changes["message"]
            machine.observed_power_generation = change.changes["observed_power_generation"]
            machine.observed_at = now
            machine.since = change.changes.get("since", machine.since)
            self.ctx.published(machine)
            if report.state != change.previous:
                detail = f": {machine.message}" if machine.message else ""
                notes.append(LabEvent(deployment=machine.deployment, machine=machine.name,
                                      message=f"{machine.name} is {report.state.value}{detail}"))
            labs[machine.deployment] = None
            outcomes[change.position] = ReportOutcome(report.machine_id, machine=machine)
        if notes:
            await LabEvent.insert_many(notes)
        for change in pending:
            if change.machine.id in written and lifecycle.machine_gone(
                    desired=change.machine.desired, observed=change.machine.observed):
                await self.core.convergence.forget_machine(change.machine)
        for lab in labs:
            await self.core.convergence.refresh_phase(lab)
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(reports), "every report has its outcome"
        return done

    async def _write(self, host: str, pending: Sequence[_Change]) -> set[PydanticObjectId | None]:
        """One bulk write of every change, each on the condition that its machine is still kept on
        this host; returns the ids written. Only when some did not match (removed or moved
        meanwhile) are they told apart, by reading which still match."""
        if not pending:
            return set()
        collection = Machine.get_pymongo_collection()
        result = await collection.bulk_write(
            [UpdateOne({"_id": change.machine.id, "retired": False, "host": host}, {"$set": change.changes})
             for change in pending], ordered=False)
        ids = [change.machine.id for change in pending]
        if result.matched_count == len(pending):
            return set(ids)
        kept = collection.find({"_id": {"$in": ids}, "retired": False, "host": host}, {"_id": 1})
        return {document["_id"] async for document in kept}
