"""Convergence: what follows every change of a lab, made again until it holds.

Several server replicas run this against one database at once, so:
- every write of a lab is compare-and-set on `Deployment.version` (`change_lab`): computed from
  the lab as read and stored only if nobody wrote the lab since, else read again and
  recomputed, with a bounded, jittered backoff. Its phase and machine counts are recomputed
  from a fresh read of its machines after every change (`refresh_phase`), so the last writer
  always saw the latest machine states;
- machine writes that follow a lab change (scale, power, roster binding) are conditional on the
  machine as read, and checked afterwards against the lab read again: if another replica changed
  the lab meanwhile, they are made again for the newer lab (`apply_spec`);
- the janitor (`kubekvm.janitor`) calls `converge_lab` for every lab, in case a crash cut a
  change's follow-up short.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

from kubekvm import lifecycle
from kubekvm.course_records import LabSchedule, LegacyImport, ScheduleFire
from kubekvm.errors import NotFound, Unavailable
from kubekvm.logs import current_request_id
from kubekvm.models import (
    Deployment,
    DesiredState,
    Host,
    LabEvent,
    Machine,
    MachineSpec,
    Phase,
    Power,
    UsageGrant,
    UsageInterval,
    utcnow,
)
from kubekvm.services.context import WRITE_ATTEMPTS, Noun, backoff
from kubekvm.services.templates import machine_spec

if TYPE_CHECKING:
    pass

LabUpdate = dict[str, Any]


def new_machine(*, lab: str, index: int, spec: MachineSpec, power: Power) -> Machine:
    return Machine(deployment=lab, index=index, name=f"{lab}-{index}", spec=spec,
                   desired=lifecycle.desired_for(power), message="waiting for a host",
                   request_id=current_request_id(), since=utcnow())


class Convergence(Noun):
    """A lab's machines following its spec, roster and deletion; its phase recomputed."""

    async def read_lab(self, name: str) -> Deployment:
        """The lab as stored now: every conditional write of a lab starts from this read."""
        return await self.core.labs.get_deployment(name)

    async def change_lab(self, name: str,
                          change: Callable[[Deployment], LabUpdate | None]) -> tuple[Deployment, bool]:
        """Write `change(lab)` (an update document; None: nothing to write) to the lab, on the
        condition that it is still the lab `change` saw (same `version`); otherwise read it again
        and recompute. `change` may raise to refuse. Returns the lab as read before the write
        that succeeded, and whether anything was written."""
        collection = Deployment.get_pymongo_collection()
        for attempt in range(WRITE_ATTEMPTS):
            lab = await self.read_lab(name)
            update = change(lab)
            if update is None:
                return lab, False
            update.setdefault("$inc", {})["version"] = 1
            result = await collection.update_one({"_id": lab.id, "version": lab.version}, update)
            if result.matched_count:
                return lab, True
            await backoff(attempt)
        raise Unavailable(f"Lab {name!r} is changing too fast; try again.")

    async def apply_spec(self, name: str, *, power_request: bool) -> None:
        """Make the lab's machines follow its replicas, power and roster as stored now.

        Another replica may change the lab while this one writes machines, and its machine
        writes may land before or after ours. So after each pass the lab is read again: if its
        spec (`generation`) or roster moved, the pass is made again for the newer lab. The
        replica whose machine writes land last therefore always ends on the latest lab.
        `power_request`: the lab's power is a new request, so every kept machine gets it (its
        power generation bumped) even where its desired state is already that."""
        applied_power: Power | None = None
        for attempt in range(WRITE_ATTEMPTS):
            lab = await self.read_lab(name)
            if lab.phase == Phase.DELETING:
                await self.remove_machines(name)
            else:
                await self._scale(lab, replicas=lab.replicas, power=lab.power)
                if (power_request and applied_power is None) or (
                        applied_power is not None and applied_power != lab.power):
                    await self._set_power(name, lab.power)
                applied_power = lab.power
                if lab.roster or await self.core.rosters.anyone_bound(name):
                    await self.core.rosters.bind_roster(name)
            fresh = await self.read_lab(name)
            if (fresh.generation, fresh.roster, fresh.phase == Phase.DELETING) == (
                    lab.generation, lab.roster, lab.phase == Phase.DELETING):
                return
            await backoff(attempt)
        raise Unavailable(f"Lab {name!r} is changing too fast; try again.")

    async def _set_power(self, name: str, power: Power) -> None:
        desired = lifecycle.desired_for(power)
        query = {"deployment": name, "retired": False, "desired": {"$ne": DesiredState.ABSENT.value}}
        await Machine.get_pymongo_collection().update_many(
            query, {"$set": {"desired": desired.value, "stop_reason": None, "updated_at": utcnow(),
                             "request_id": current_request_id(), "since": utcnow()},
                    "$inc": {"power_generation": 1}},
        )
        await self.ctx.publish_machines(query)

    async def _scale(self, lab: Deployment, *, replicas: int, power: Power) -> None:
        """Machines 1..replicas kept, the others on their way out; idempotent."""
        existing = {
            m.index: m.desired
            for m in await Machine.find(Machine.deployment == lab.name, Machine.retired == False).to_list()  # noqa: E712
        }
        plan = lifecycle.scale(existing=existing, replicas=replicas)
        collection = Machine.get_pymongo_collection()
        if plan.retire:
            query = {"deployment": lab.name, "index": {"$in": plan.retire}, "retired": False}
            await collection.update_many(query, {"$set": {"desired": DesiredState.ABSENT.value,
                                                          "student": None, "updated_at": utcnow(),
                                                          "request_id": current_request_id(), "since": utcnow()}})
            await self.ctx.publish_machines(query)
            await self._drop_unplaced(lab.name)
        if plan.revive:
            query = {"deployment": lab.name, "index": {"$in": plan.revive}, "retired": False,
                     "desired": DesiredState.ABSENT.value}
            await collection.update_many(query, {"$set": {"desired": lifecycle.desired_for(power).value,
                                                          "request_id": current_request_id(), "since": utcnow()},
                                                 "$inc": {"power_generation": 1}})
            await self.ctx.publish_machines({"deployment": lab.name, "index": {"$in": plan.revive}})
        if plan.create:
            source = await self.core.templates.get_template(lab.template)
            new = [new_machine(lab=lab.name, index=i, spec=machine_spec(source, version=lab.template_version),
                                power=power)
                   for i in plan.create]
            try:
                await Machine.insert_many(new, ordered=False)
            except (DuplicateKeyError, BulkWriteError):
                pass  # a concurrent scale of the same lab made some; same indexes, same spec
            await self.ctx.publish_machines({"deployment": lab.name, "index": {"$in": plan.create}})
            await self.core.placement.place_pending(deployment=lab.name)

    async def remove_machines(self, name: str) -> None:
        """Every machine of a lab being deleted on its way out; idempotent (the janitor and a
        scale that lost the race to the deletion call it again)."""
        query = {"deployment": name, "retired": False, "desired": {"$ne": DesiredState.ABSENT.value}}
        result = await Machine.get_pymongo_collection().update_many(
            query, {"$set": {"desired": DesiredState.ABSENT.value, "student": None, "updated_at": utcnow(),
                             "request_id": current_request_id(), "since": utcnow()}}
        )
        if result.modified_count:
            await self.ctx.publish_machines({"deployment": name, "retired": False})
        await self._drop_unplaced(name)

    async def _drop_unplaced(self, name: str) -> None:
        """Machines never given a host have nothing on any host to remove: drop them now."""
        for machine in await Machine.find(
            {"deployment": name, "host": None, "desired": DesiredState.ABSENT.value}
        ).to_list():
            await self.forget_machine(machine)

    async def forget_machine(self, machine: Machine) -> None:
        result = await Machine.get_pymongo_collection().find_one_and_update(
            {"_id": machine.id, "retired": False}, {"$set": {"retired": True}}
        )
        if result is None:
            return  # another replica is forgetting it
        if machine.running_since is not None:
            # Removed while its host last said it ran: that running time is its student's.
            await self.core.running_time.close_span(machine, end=utcnow())
        machine.retired = True
        self.ctx.published(machine)
        if machine.host:
            await Host.get_pymongo_collection().update_one(
                {"name": machine.host},
                {"$inc": {"allocated_vcpus": -machine.spec.vcpus,
                          "allocated_memory_mib": -machine.spec.memory_mib}},
            )
        await Machine.get_pymongo_collection().delete_one({"_id": machine.id})
        self.ctx.feed.publish(collection="machines", operation="delete", id=str(machine.id), document=None)

    async def lab_removed(self, lab: Deployment) -> None:
        self.ctx.feed.publish(collection="deployments", operation="delete", id=str(lab.id), document=None)
        await LabEvent.find(LabEvent.deployment == lab.name).delete()
        # Its timetable, the record of what that fired, and what it was imported from go too.
        for records in (LabSchedule, ScheduleFire, LegacyImport):
            await records.get_pymongo_collection().delete_many({"lab": lab.name})
        # Its running time and grants go with it (a new lab of the same name starts afresh).
        await UsageInterval.find(UsageInterval.deployment == lab.name).delete()
        await UsageGrant.find(UsageGrant.deployment == lab.name).delete()

    async def converge_lab(self, name: str) -> tuple[Deployment | None, Deployment | None]:
        """The follow-up of every lab change, run again (by the janitor) in case a crash cut it
        short: the machines follow the lab's replicas and roster (a lab being deleted has every
        machine on its way out), and its phase is recomputed. Returns the lab before and after
        (None after: it was removed; None before: there is no such lab, or none this version
        can read)."""
        try:
            before = await self.core.labs.get_deployment(name)
        except NotFound:
            return None, None
        await self.apply_spec(name, power_request=False)
        after = await self.refresh_phase(name)
        gone = before.phase == Phase.DELETING and await Deployment.find_one(Deployment.id == before.id) is None
        return before, None if gone else after

    async def refresh_phase(self, name: str, *, always_publish: bool = False) -> Deployment:
        """Recompute a lab's phase and counts (`Deployment.running`, `.kept`) from a fresh read of
        its machines and write them with compare-and-set; returns the lab as written (or as
        found, if nothing changed, after making sure nobody wrote it meanwhile). A lab being
        deleted whose machines are all gone is removed here, on the same condition.
        Idempotent: the janitor calls it for every lab."""
        collection = Deployment.get_pymongo_collection()
        for attempt in range(WRITE_ATTEMPTS):
            lab = await self.read_lab(name)
            machines = await Machine.find(Machine.deployment == name, Machine.retired == False).to_list()  # noqa: E712
            deleting = lab.phase == Phase.DELETING
            if deleting and not machines:
                removed = await collection.delete_one({"_id": lab.id, "version": lab.version})
                if removed.deleted_count:
                    await self.lab_removed(lab)
                    return lab
                await backoff(attempt)
                continue
            decision = lifecycle.lab_phase(deleting=deleting, power=lab.power, machines=machines)
            running, kept = lifecycle.machine_counts(machines)
            if (decision.phase, decision.message, running, kept) == (lab.phase, lab.message, lab.running, lab.kept):
                # Nothing to write, if the lab is still the one this decision was made from.
                if await collection.count_documents({"_id": lab.id, "version": lab.version}, limit=1):
                    if always_publish:
                        self.ctx.published(lab)
                    return lab
                await backoff(attempt)
                continue
            changes: dict[str, Any] = {"phase": decision.phase.value, "message": decision.message,
                                       "running": running, "kept": kept, "updated_at": utcnow()}
            if decision.phase != lab.phase:
                changes["phase_since"] = changes["updated_at"]
            result = await collection.update_one(
                {"_id": lab.id, "version": lab.version}, {"$set": changes, "$inc": {"version": 1}})
            if result.matched_count:
                if decision.phase != lab.phase:
                    await self.ctx.note(name, f"phase {lab.phase.value} → {decision.phase.value}: {decision.message}")
                lab.phase, lab.message, lab.version = decision.phase, decision.message, lab.version + 1
                lab.running, lab.kept = running, kept
                lab.phase_since = changes.get("phase_since", lab.phase_since)
                self.ctx.published(lab)
                return lab
            await backoff(attempt)
        raise Unavailable(f"Lab {name!r} is changing too fast; try again.")
