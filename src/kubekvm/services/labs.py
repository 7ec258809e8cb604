"""Labs: creating, listing, changing, starting, stopping and deleting them, and their counts.

Every write of a lab is compare-and-set on `Deployment.version` (`Convergence.change_lab`): it
is computed from the lab as read and stored only if nobody wrote it since. What follows from a
change — the machines following the lab's spec and roster, the phase recomputed — is
`kubekvm.services.convergence`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymongo.errors import DuplicateKeyError, PyMongoError

from kubekvm import validation
from kubekvm.access.actors import Actor
from kubekvm.access.roles import require_staff
from kubekvm.errors import Conflict, Forbidden, NotFound, Unavailable, ValidationFailed
from kubekvm.models import (
    Deployment,
    DesiredState,
    LabEvent,
    Machine,
    Phase,
    Power,
    Role,
    Template,
    utcnow,
)
from kubekvm.services.context import Noun
from kubekvm.services.convergence import LabUpdate, new_machine
from kubekvm.services.paging import read_page
from kubekvm.services.rulebook import LAB_MANAGED, LAB_SEEN, SIGNED_IN, STAFF
from kubekvm.services.rules import Arguments, Operations, Rule, named, operation
from kubekvm.services.templates import machine_spec, newest_version
from kubekvm.shared_reads import offered

if TYPE_CHECKING:
    from kubekvm.services import Services


@dataclass(frozen=True, kw_only=True)
class Page:
    items: list[Deployment]
    # None: not counted (asked for with `count=False`, and more labs follow the page).
    total: int | None

    @property
    def counted(self) -> int:
        """The total of a page read with `count=True` (the default), which always has one."""
        if self.total is None:
            raise ValueError("this page of labs was read without its total")
        return self.total


def lab_filter(actor: Actor) -> dict[str, Any] | None:
    """The MongoDB filter of the labs `actor` may see (None: all), the database's form of
    `can_view_lab`, so lists are narrowed in the query rather than after reading all."""
    if actor.is_admin:
        return None
    if actor.is_teacher:
        return {"owner": actor.name}
    if actor.is_student:
        return {"roster": actor.name}
    return {"_id": None}  # nothing


class Labs(Noun):
    """Labs' records as a whole, unchecked (callers use `LabOperations`; a lab's machines: `Machines`;
    its roster: `Rosters`)."""

    def __init__(self, core: Services) -> None:
        super().__init__(core)
        # One count per lab change, shared by every subscriber that shows it (see lab_counts).
        self._lab_counts: dict[tuple[str, int], asyncio.Task[dict[str, tuple[int, int]]]] = {}

    async def lab_events(self, name: str, *, limit: int = 50) -> list[LabEvent]:
        return await LabEvent.find(LabEvent.deployment == name).sort("-at").limit(limit).to_list()

    async def list_deployments(
        self, *, phase: Phase | None = None, offset: int = 0, limit: int = 100,
        owner: str | None = None, student: str | None = None, only: dict[str, Any] | None = None,
        count: bool = True,
    ) -> Page:
        """Labs by name; only those in `phase`, owned by `owner`, with `student` on their
        roster, or matching the filter `only`, when given; without `count`, the total only when
        the read tells it."""
        criteria: dict[str, Any] = dict(only or {})
        if phase:
            criteria["phase"] = phase.value
        if owner is not None:
            criteria["owner"] = owner
        if student is not None:
            criteria["roster"] = student
        # Only labs a read can show are counted and skipped (a 2019 leftover is not), and the
        # database judges that only where it must (`paging`: it cost more than the read).
        items, total = await read_page(Deployment, criteria, sort="name", offset=max(offset, 0),
                                       limit=max(min(limit, 1000), 1), count=count)
        return Page(items=items, total=total)

    async def get_deployment(self, name: str) -> Deployment:
        # Shared only inside `SharedReads.joining()` (a crowd of subscriptions to this lab).
        lab = await offered(("lab", name), lambda: Deployment.find_one(Deployment.name == name))
        if lab is None:
            raise NotFound(f"There is no lab named {name!r}.")
        return lab

    async def counts_of(self, labs: Sequence[Deployment]) -> dict[str, tuple[int, int]]:
        """lab name -> (machines running, machines kept), as each lab's last recount stored them
        (`Convergence.refresh_phase`); only a lab never counted (stored by an older version) is
        counted here, until the janitor's next turn stores its counts too."""
        counts = {lab.name: (lab.running, lab.kept) for lab in labs
                  if lab.running is not None and lab.kept is not None}
        missing = [lab.name for lab in labs if lab.name not in counts]
        if missing:
            counts.update(await self.running_counts(missing))
        return counts

    async def running_counts(self, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        """lab name -> (machines running, machines kept), counted from the machines in one
        aggregation (a scan per name on some servers: lists read the stored counts instead)."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"deployment": {"$in": list(names)}, "retired": False,
                        "desired": {"$ne": DesiredState.ABSENT.value}}},
            {"$group": {"_id": "$deployment", "total": {"$sum": 1},
                        "running": {"$sum": {"$cond": [{"$eq": ["$observed", "running"]}, 1, 0]}}}},
        ]
        counts = {name: (0, 0) for name in names}
        cursor = await Machine.get_pymongo_collection().aggregate(pipeline)
        async for row in cursor:
            counts[row["_id"]] = (int(row["running"]), int(row["total"]))
        return counts

    async def lab_counts(self, lab: Deployment) -> tuple[int, int]:
        """(running, kept) for one lab as of this change of it: as stored with it, or, for a lab
        never counted, one aggregation shared by every subscriber of this process that shows
        the same change."""
        if lab.running is not None and lab.kept is not None:
            return lab.running, lab.kept
        key = (str(lab.id), lab.version)
        task = self._lab_counts.get(key)
        if task is None:
            task = asyncio.ensure_future(self.running_counts([lab.name]))
            self._lab_counts[key] = task
            while len(self._lab_counts) > 512:  # only the latest changes are asked about
                self._lab_counts.pop(next(iter(self._lab_counts)))
        return (await asyncio.shield(task))[lab.name]

    def lab_fields(self, *, name: str, title: str | None, replicas: int) -> validation.Checks:
        """A new lab's own fields judged (not yet refused), so that the refusal of one of them, or
        of its template or owner, names every bad field at once."""
        checks = validation.Checks()
        checks(lambda: validation.name(name))
        checks(lambda: validation.title(title, fallback=name))
        checks(lambda: validation.replicas(replicas, maximum=self.ctx.settings.max_replicas))
        return checks

    async def create_deployment(
        self, *, name: str, template: str, replicas: int, title: str | None = None,
        power: Power = Power.RUNNING, owner: str | None = None,
    ) -> Deployment:
        checks = self.lab_fields(name=name, title=title, replicas=replicas)
        lab_title = validation.title(title, fallback=name) if not checks.failures else name
        try:
            source = await self.core.templates.get_template(template)
        except NotFound:
            checks.fail(ValidationFailed("template", f"There is no template named {template!r}."))
        checks.done()
        lab = Deployment(name=name, title=lab_title, template=template, replicas=replicas, power=power,
                         phase_since=utcnow(),
                         owner=owner, template_version=newest_version(source))
        try:
            await lab.insert()
        except DuplicateKeyError:
            raise Conflict(f"A lab named {name!r} already exists; choose another name.") from None
        if await Template.find_one(Template.name == template) is None:
            # Deleted by another replica after it was read: the lab would have no template.
            await lab.delete()
            raise ValidationFailed("template", f"Template {template!r} was deleted meanwhile.")
        spec = machine_spec(source, version=lab.template_version)
        machines = [new_machine(lab=name, index=i, spec=spec, power=power) for i in range(1, replicas + 1)]
        try:
            await Machine.insert_many(machines)
            await self.ctx.note(name, f"created with {replicas} machine(s) of {template}")
        except PyMongoError as exc:
            # Nothing half-made stays behind: the lab and whatever machines were inserted go.
            await Machine.find(Machine.deployment == name).delete()
            await lab.delete()
            raise Unavailable(f"Could not create the machines of lab {name!r}: {exc}") from None
        self.ctx.published(lab, operation="insert")
        await self.ctx.publish_machines({"deployment": name})
        # Deleted by another replica while its machines were being made: they go too.
        await self.core.convergence.apply_spec(name, power_request=False)
        await self.core.placement.place_pending(deployment=name)
        return await self.core.convergence.refresh_phase(name)

    async def update_deployment(
        self, name: str, *, title: str | None = None, replicas: int | None = None,
        power: Power | None = None, template: str | None = None,
    ) -> Deployment:
        checks = validation.Checks()
        new_title = checks(lambda: validation.title(title, fallback=name)) if title is not None else None
        if replicas is not None:
            checks(lambda: validation.replicas(replicas, maximum=self.ctx.settings.max_replicas))
        checks.done()

        def change(lab: Deployment) -> LabUpdate | None:
            if lab.phase == Phase.DELETING:
                raise Conflict(f"Lab {name!r} is being deleted.")
            if template is not None and template != lab.template:
                raise ValidationFailed(
                    "template",
                    "The template of an existing lab cannot change: its machines' disks were made "
                    "from it. Create a new lab with the other template instead.",
                )
            if replicas is not None:
                validation.replicas(replicas, maximum=self.ctx.settings.max_replicas)
            changes: dict[str, Any] = {}
            if new_title is not None:
                changes["title"] = new_title
            if replicas is not None:
                changes["replicas"] = replicas
            if power is not None:
                changes["power"] = power.value
            if not changes:
                return None
            changes["updated_at"] = utcnow()
            spec_changed = (replicas is not None and replicas != lab.replicas) or (
                power is not None and power != lab.power)
            return {"$set": changes, "$inc": {"generation": 1 if spec_changed else 0}}

        before, written = await self.core.convergence.change_lab(name, change)
        if written and replicas is not None and replicas != before.replicas:
            await self.ctx.note(name, f"scaled from {before.replicas} to {replicas} machine(s)")
        power_changed = written and power is not None and power != before.power
        if power_changed:
            await self.ctx.note(name, "start requested" if power == Power.RUNNING else "stop requested")
        if written and (replicas is not None or power is not None):
            await self.core.convergence.apply_spec(name, power_request=power_changed)
        return await self.core.convergence.refresh_phase(name, always_publish=written)

    async def start_deployment(self, name: str) -> Deployment:
        return await self._power_request(name, Power.RUNNING)

    async def stop_deployment(self, name: str) -> Deployment:
        return await self._power_request(name, Power.STOPPED)

    async def _power_request(self, name: str, power: Power) -> Deployment:
        def change(lab: Deployment) -> LabUpdate:
            if lab.phase == Phase.DELETING:
                raise Conflict(f"Lab {name!r} is being deleted.")
            return {"$set": {"power": power.value, "updated_at": utcnow()},
                    "$inc": {"generation": 1 if power != lab.power else 0}}

        await self.core.convergence.change_lab(name, change)
        await self.ctx.note(name, "start requested" if power == Power.RUNNING else "stop requested")
        # Asked again for the power it has: still a request (students' powered-off machines start).
        await self.core.convergence.apply_spec(name, power_request=True)
        return await self.core.convergence.refresh_phase(name, always_publish=True)

    async def delete_deployment(self, name: str, *, force: bool = False) -> Deployment:
        lab = await self.get_deployment(name)
        if force:
            return await self._force_delete(lab)

        def change(lab: Deployment) -> LabUpdate | None:
            if lab.phase == Phase.DELETING:
                return None  # asked again: the machines' removal below is still made sure of
            return {"$set": {"phase": Phase.DELETING.value, "updated_at": utcnow(), "phase_since": utcnow()},
                    "$inc": {"generation": 1}}

        _, written = await self.core.convergence.change_lab(name, change)
        await self.core.convergence.remove_machines(name)
        if written:
            await self.ctx.note(name, "delete requested")
        return await self.core.convergence.refresh_phase(name, always_publish=True)

    async def _force_delete(self, lab: Deployment) -> Deployment:
        machines = await Machine.find(Machine.deployment == lab.name).to_list()
        hosts = {m.host for m in machines if m.host}
        statuses = {s.host.name: s for s in await self.core.hosts.list_hosts()}
        reachable = sorted(h for h in hosts if h in statuses and statuses[h].ready)
        if reachable:
            raise Conflict(
                f"Host(s) {', '.join(reachable)} are still reachable: delete the lab normally so "
                "they remove its VMs and disks. Force is for labs whose hosts are gone."
            )
        for machine in machines:
            await self.core.convergence.forget_machine(machine)
        await Deployment.get_pymongo_collection().delete_one({"_id": lab.id})
        await self.core.convergence.lab_removed(lab)
        return lab


async def _may_create_lab(ops: Operations, args: Arguments) -> None:
    """Staff create labs of their own, from a template they may use; an admin may create one for
    another teacher or admin."""
    require_staff(ops.actor)
    owner = args["owner"]
    if owner is not None and owner != ops.actor.name and not ops.actor.is_admin:
        raise Forbidden("Teachers create labs of their own; only an admin may create one for someone else.")
    # An unknown owner or template is a bad field like the others: refused with all of them.
    checks = ops.services.labs.lab_fields(name=args["name"], title=args["title"], replicas=args["replicas"])
    if owner is not None and owner != ops.actor.name:
        account = await ops.accounts.find_user(owner)
        if account is None or account.role == Role.STUDENT:
            checks.fail(ValidationFailed("owner", f"There is no teacher or admin named {owner!r}."))
    try:
        await ops.usable_template(args["template"])
    except NotFound:
        checks.fail(ValidationFailed("template", f"There is no template named {args['template']!r}."))
    checks.done()


LAB_CREATOR = Rule("teachers and admins (for someone else: admins)", _may_create_lab, STAFF.outcomes)


class LabOperations(Operations):
    """Labs as a caller may use them: everyone signed in sees the labs they may (teachers their
    own, students those they are on the roster of); owners and admins change them."""

    @operation(SIGNED_IN, field="deployments")
    async def list_deployments(self, *, phase: Phase | None = None, offset: int = 0, limit: int = 100,
                               count: bool = True) -> Page:
        offset = validation.offset(offset)
        limit = validation.limit(limit, maximum=validation.DEPLOYMENTS_PAGE_MAX)
        return await self.services.labs.list_deployments(phase=phase, offset=offset, limit=limit,
                                                         only=lab_filter(self.actor), count=count)

    @operation(SIGNED_IN)
    async def labs_named(self, names: Sequence[str]) -> dict[str, Deployment]:
        """Several labs by name at once (one query), those of them the caller may see."""
        if not names:
            return {}
        only: dict[str, Any] = {"name": {"$in": list(names)}}
        scope = lab_filter(self.actor)
        page = await self.services.labs.list_deployments(only={"$and": [only, scope]} if scope else only,
                                                         limit=len(names))
        return {lab.name: lab for lab in page.items}

    @operation(LAB_SEEN, field="deployment")
    async def get_deployment(self, name: str) -> Deployment:
        return await self.services.labs.get_deployment(name)

    # Counts of labs the caller already holds (listed or read through here, or passed by the
    # event filter of `lab_changes`).
    @operation(SIGNED_IN)
    async def lab_counts(self, lab: Deployment) -> tuple[int, int]:
        return await self.services.labs.lab_counts(lab)

    @operation(SIGNED_IN)
    async def running_counts(self, labs: Sequence[Deployment]) -> dict[str, tuple[int, int]]:
        return await self.services.labs.counts_of(labs)

    @operation(LAB_SEEN)
    async def lab_events(self, name: str, *, limit: int = 50) -> list[LabEvent]:
        events = await self.services.labs.lab_events(name, limit=limit)
        if self.actor.is_student:
            # The lab's history names other students' machines: a student sees the lab's own
            # lines and those of their machine.
            mine = {m.name for m in await self.services.machines.list_machines(deployment=name,
                                                                               student=self.actor.name)}
            events = [e for e in events if e.machine is None or e.machine in mine]
        return events

    @operation(LAB_CREATOR, audit="createDeployment", target=named("lab"))
    async def create_deployment(self, *, name: str, template: str, replicas: int, title: str | None = None,
                                power: Power = Power.RUNNING, owner: str | None = None) -> Deployment:
        return await self.services.labs.create_deployment(name=name, template=template, replicas=replicas,
                                                          title=title, power=power, owner=owner or self.actor.name)

    @operation(LAB_MANAGED, audit="updateDeployment", target=named("lab"))
    async def update_deployment(self, name: str, *, title: str | None = None, replicas: int | None = None,
                                power: Power | None = None, template: str | None = None) -> Deployment:
        return await self.services.labs.update_deployment(name, title=title, replicas=replicas, power=power,
                                                          template=template)

    @operation(LAB_MANAGED, audit="startDeployment", target=named("lab"))
    async def start_deployment(self, name: str) -> Deployment:
        return await self.services.labs.start_deployment(name)

    @operation(LAB_MANAGED, audit="stopDeployment", target=named("lab"))
    async def stop_deployment(self, name: str) -> Deployment:
        return await self.services.labs.stop_deployment(name)

    @operation(LAB_MANAGED, audit="deleteDeployment", target=named("lab"))
    async def delete_deployment(self, name: str, *, force: bool = False) -> Deployment:
        return await self.services.labs.delete_deployment(name, force=force)
