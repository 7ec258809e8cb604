"""Machines: one student's VM — listing, starting, stopping, resetting — and what hosts report
of them (applied by `reports`, a batch at a time; a report and its consequences are one unit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kubekvm import lifecycle
from kubekvm.access.actors import Actor
from kubekvm.errors import Conflict, NotFound
from kubekvm.logs import current_request_id
from kubekvm.models import (
    Deployment,
    DesiredState,
    Machine,
    ObservedState,
    utcnow,
)
from kubekvm.services.context import BY_LAB_AND_INDEX, Noun
from kubekvm.services.reports import MachineReport, ReportOutcome
from kubekvm.services.rulebook import HOST_AGENT, MACHINE_SEEN, SIGNED_IN
from kubekvm.services.rules import Operations, named, operation
from kubekvm.services.templates import machine_spec

if TYPE_CHECKING:
    pass


class Machines(Noun):
    """Single machines and the hosts' reports of them, unchecked (callers use `MachineOperations`)."""

    async def list_machines(self, *, deployment: str | Sequence[str] | None = None, host: str | None = None,
                            student: str | None = None, owner: str | None = None) -> list[Machine]:
        """Machines by lab and index: of one lab (or several), one host, one student, or of the
        labs one teacher owns, as given. One query for the machines (and, with `owner`, one
        for the names of the owner's labs among those asked for)."""
        labs: list[str] | None = None
        if deployment is not None:
            labs = [deployment] if isinstance(deployment, str) else list(deployment)
        query: dict[str, Any] = {"retired": False}
        if host is not None:
            query["host"] = host
        if student is not None:
            query["student"] = student
        if owner is not None:
            among: dict[str, Any] = {"owner": owner}
            if labs is not None:
                among["name"] = {"$in": labs}
            labs = [doc["name"] async for doc in Deployment.get_pymongo_collection().find(among, {"name": 1})]
        if labs is not None:
            query["deployment"] = labs[0] if len(labs) == 1 else {"$in": labs}
        return await Machine.find(query).sort(BY_LAB_AND_INDEX).to_list()

    async def get_machine(self, name: str) -> Machine:
        machine = await Machine.find_one(Machine.name == name, Machine.retired == False)  # noqa: E712
        if machine is None:
            raise NotFound(f"There is no machine named {name!r}.")
        return machine

    async def start_machine(self, name: str) -> Machine:
        return await self._machine_request(name, desired=DesiredState.RUNNING, note="start requested")

    async def stop_machine(self, name: str) -> Machine:
        return await self._machine_request(name, desired=DesiredState.STOPPED, note="stop requested")

    async def reset_machine(self, name: str) -> Machine:
        return await self._machine_request(
            name, desired=DesiredState.RUNNING, note="reset requested: disk rebuilt from the template",
            reset=True,
        )

    async def _machine_request(self, name: str, *, desired: DesiredState, note: str,
                               reset: bool = False) -> Machine:
        machine = await self.get_machine(name)
        lab = await self.core.labs.get_deployment(machine.deployment)
        refused = lifecycle.can_act_on_machine(phase=lab.phase, desired=machine.desired)
        if refused:
            raise Conflict(f"Cannot change {name}: {refused}.")
        if machine.publish is not None and machine.publish.active:
            raise Conflict(f"Cannot change {name}: it is being published as a template version; wait until "
                           "that ends.")
        if desired == DesiredState.RUNNING:
            await self.core.usage.check_start(machine)
        # A person's request supersedes the platform's reason for a stop (idle, quota).
        update: dict[str, Any] = {"$set": {"desired": desired.value, "stop_reason": None, "updated_at": utcnow(),
                                           "request_id": current_request_id(), "since": utcnow()},
                                  "$inc": {"power_generation": 1}}
        if reset:
            update["$inc"]["reset_generation"] = 1
            update["$set"].update({"observed": ObservedState.PENDING.value, "message": "resetting"})
            if lab.template_version is not None and machine.spec.version != lab.template_version:
                # A reset erases the machine's changes anyway: it starts from the lab's version.
                template = await self.core.templates.get_template(lab.template)
                spec = machine_spec(template, version=lab.template_version)
                update["$set"].update({"spec.image": spec.image, "spec.version": spec.version})
                note = f"{note} (template v{spec.version})"
        # Only a machine still kept: one the lab's deletion or a scale-down took meanwhile must
        # not be brought back to life by a request made from an older read.
        result = await Machine.get_pymongo_collection().update_one(
            {"_id": machine.id, "retired": False, "desired": {"$ne": DesiredState.ABSENT.value}}, update)
        if not result.matched_count:
            raise Conflict(f"Cannot change {name}: this machine is being removed.")
        await self.ctx.note(machine.deployment, note, machine=name)
        fresh = await self.get_machine(name)
        self.ctx.published(fresh)
        await self.core.convergence.refresh_phase(machine.deployment)
        return fresh

    async def report_machine_state(
        self, *, machine_id: str, host: str, state: ObservedState, message: str = "",
        power_generation: int | None = None, cpu_seconds: float | None = None,
    ) -> Machine:
        """Record what a host observed of one machine and what follows from it (a machine
        confirmed gone is forgotten, its lab's phase recomputed), as one unit: a batch of one
        (`Reports`), its refusal raised."""
        [outcome] = await self.core.reports.report_machine_states(host=host, reports=[MachineReport(
            machine_id=machine_id, state=state, message=message, power_generation=power_generation,
            cpu_seconds=cpu_seconds)])
        if outcome.error is not None:
            raise outcome.error
        assert outcome.machine is not None
        return outcome.machine


def machine_scope(actor: Actor) -> dict[str, str]:
    """How a list of machines is narrowed for `actor` (in the query: `Machines.list_machines`)."""
    if actor.is_admin:
        return {}
    if actor.is_teacher:
        return {"owner": actor.name}
    return {"student": actor.name}


class MachineOperations(Operations):
    """Machines as a caller may use them: a student their own, a teacher those of their labs,
    admins all; host agents report what they observe of their host's machines."""

    def _scope(self) -> dict[str, str]:
        return machine_scope(self.actor)

    @operation(SIGNED_IN, field="machines")
    async def list_machines(self, *, deployment: str | None = None, host: str | None = None) -> list[Machine]:
        return await self.services.machines.list_machines(deployment=deployment, host=host, **self._scope())

    @operation(SIGNED_IN)
    async def machines_of_labs(self, names: Sequence[str]) -> dict[str, list[Machine]]:
        """The machines of several labs at once, as the caller may see them (a page of labs
        shows each one's machines: one query, not one per lab)."""
        found: dict[str, list[Machine]] = {name: [] for name in names}
        for machine in await self.services.machines.list_machines(deployment=list(names), **self._scope()):
            found[machine.deployment].append(machine)
        return found

    @operation(MACHINE_SEEN)
    async def get_machine(self, name: str) -> Machine:
        return await self.services.machines.get_machine(name)

    @operation(MACHINE_SEEN, audit="startMachine", target=named("machine"))
    async def start_machine(self, name: str) -> Machine:
        return await self.services.machines.start_machine(name)

    @operation(MACHINE_SEEN, audit="stopMachine", target=named("machine"))
    async def stop_machine(self, name: str) -> Machine:
        return await self.services.machines.stop_machine(name)

    @operation(MACHINE_SEEN, audit="resetMachine", target=named("machine"))
    async def reset_machine(self, name: str) -> Machine:
        return await self.services.machines.reset_machine(name)

    @operation(HOST_AGENT, audit="reportMachineState", target=named("machine-id", "machine_id"), routine=True)
    async def report_machine_state(self, *, machine_id: str, host: str, state: ObservedState,
                                   message: str = "", power_generation: int | None = None,
                                   cpu_seconds: float | None = None) -> Machine:
        return await self.services.machines.report_machine_state(
            machine_id=machine_id, host=host, state=state, message=message, power_generation=power_generation,
            cpu_seconds=cpu_seconds)

    @operation(HOST_AGENT, audit="reportMachineStates", target=named("host", "host"), routine=True)
    async def report_machine_states(self, *, host: str, reports: Sequence[MachineReport]) -> list[ReportOutcome]:
        return await self.services.reports.report_machine_states(host=host, reports=reports)
