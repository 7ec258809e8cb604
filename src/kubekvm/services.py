"""The service layer: every operation on templates, labs, machines and hosts.

GraphQL resolvers and page handlers call these methods and nothing else; the rules they apply
come from `validation`, `lifecycle` and `placement`. Each method either does all it says or
raises a `KubeKVMError` having written nothing (a half-made lab is removed again).

Several server replicas run this code against one database at once, so:
- creating something unique relies on the unique index, not on a prior lookup;
- host capacity is reserved with a conditional `$inc`, never read-then-write (and recounted
  from the machines by the janitor, `kubekvm.janitor`, should a crash leave it wrong);
- every write of a lab is compare-and-set on `Deployment.version` (`_change_lab`): it is
  computed from the lab as read and stored only if nobody wrote the lab since, else read again
  and recomputed, with a bounded, jittered backoff. Its phase is recomputed from a fresh read
  of its machines after every change, so the last writer always saw the latest machine states;
- machine writes that follow a lab change (scale, power, roster binding) are conditional on
  the machine as read, and checked afterwards against the lab read again: if another replica
  changed the lab meanwhile, they are made again for the newer lab (`_apply_spec`);
- a change and its consequences are one unit: `finish` runs them as a task of their own, so a
  client that drops its connection (its request cancelled mid-await) cannot cut them in half.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from beanie import PydanticObjectId
from beanie.odm.enums import SortDirection
from bson import ObjectId
from bson.errors import InvalidId
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from kubekvm import __version__, lifecycle, placement, roster, validation
from kubekvm.access import Actor
from kubekvm.config import Settings
from kubekvm.consoles import Consoles
from kubekvm.errors import Conflict, NotFound, Unavailable, ValidationFailed
from kubekvm.events import EventFeed
from kubekvm.models import (
    Deployment,
    DesiredState,
    Host,
    LabEvent,
    Machine,
    MachineSpec,
    ObservedState,
    OSFamily,
    Phase,
    Power,
    Template,
    utcnow,
)

log = logging.getLogger(__name__)

SEED_TEMPLATES = (
    dict(name="tecnologia-de-computadores", title="Tecnología de Computadores",
         description="Windows XP with Logisim, for digital logic labs.",
         os="windows", image="winxp.qcow2", vcpus=1, memory_mib=512, disk_gib=4),
    dict(name="redes-neuronales", title="Redes Neuronales",
         description="Ubuntu 16.04 with Anaconda and Jupyter, for neural network labs.",
         os="linux", image="ubuntu16.04.qcow2", vcpus=1, memory_mib=1024, disk_gib=16),
)

BY_LAB_AND_INDEX = [("deployment", SortDirection.ASCENDING), ("index", SortDirection.ASCENDING)]

HOST_NAME_RULE = "letters, digits, '.', '_' and '-', at most 63 characters"
HOST_TEXT_MAX = 200  # what an agent says of its host: a domain type, a version, a domain's name

# A conditional write that lost to another replica is computed again from a fresh read, at most
# this many times, waiting a random fraction of a doubling delay (capped) between attempts.
WRITE_ATTEMPTS = 20
BACKOFF_FIRST_SECONDS = 0.005
BACKOFF_MAX_SECONDS = 0.25

T = TypeVar("T")
LabUpdate = dict[str, Any]

# Tasks `finish` started, kept referenced until they end (the event loop holds tasks weakly).
_finishing: set[asyncio.Task[Any]] = set()


async def backoff(attempt: int) -> None:
    """Wait before attempt `attempt + 1` of a contended write: full jitter, so replicas that
    collided once do not collide again in lockstep."""
    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * (2 ** attempt))
    await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 (jitter, not a secret)


def _log_orphan(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log.warning("a change finished after its client left, and failed: %r", error, exc_info=error)


async def finish(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end even if the caller is cancelled (a client dropped its connection:
    starlette and strawberry cancel the request's task mid-await). The caller still gets the
    result, or CancelledError at once if it was cancelled; the work goes on either way, so a
    state change is never separated from its consequences (the janitor re-runs those too)."""
    task = asyncio.ensure_future(work)
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_log_orphan)  # nobody is left to hear how it ended
        raise


@dataclass(frozen=True, kw_only=True)
class HostStatus:
    host: Host
    ready: bool
    heartbeat_age_seconds: float
    machines: int


@dataclass(frozen=True, kw_only=True)
class ServerInfo:
    version: str
    hostname: str
    database: str
    event_stream: str


@dataclass(frozen=True, kw_only=True)
class Page:
    items: list[Deployment]
    total: int


def object_id(value: str, *, what: str) -> PydanticObjectId:
    """A document id from a client, or NotFound (a malformed id names nothing)."""
    try:
        return PydanticObjectId(ObjectId(value))
    except (InvalidId, TypeError):
        raise NotFound(f"There is no {what} with id {value!r}.") from None


def lab_filter(actor: Actor) -> dict[str, Any] | None:
    """The MongoDB filter of the labs `actor` may see (None: all), the database's form of
    `access.can_view_lab`, so lists are narrowed in the query rather than after reading all."""
    if actor.is_admin:
        return None
    if actor.is_teacher:
        return {"owner": actor.name}
    if actor.is_student:
        return {"roster": actor.name}
    return {"_id": None}  # nothing


def _raw(document: Any) -> dict[str, Any]:
    raw: dict[str, Any] = document.model_dump(by_alias=True)
    return raw


class Services:
    def __init__(self, *, settings: Settings, feed: EventFeed, database_description: str) -> None:
        self.settings = settings
        self.feed = feed
        # Machines' consoles: tickets and sessions (the websockets are `kubekvm.console`'s).
        self.consoles = Consoles(settings=settings, feed=feed)
        self.database_description = database_description
        # One count per lab change, shared by every subscriber that shows it (see lab_counts).
        self._lab_counts: dict[tuple[str, int], asyncio.Task[dict[str, tuple[int, int]]]] = {}

    # ------------------------------------------------------------------ events

    def _published(self, document: Deployment | Machine | Host, *, operation: str = "update") -> None:
        self.feed.publish(
            collection=type(document).Settings.name, operation=operation,
            id=str(document.id), document=_raw(document),
        )

    async def _publish_machines(self, query: dict[str, Any]) -> None:
        if self.feed.publishes_locally:
            for machine in await Machine.find(query).to_list():
                self._published(machine)

    async def _note(self, deployment: str, message: str, *, machine: str | None = None) -> None:
        await LabEvent(deployment=deployment, machine=machine, message=message).insert()

    async def lab_events(self, name: str, *, limit: int = 50) -> list[LabEvent]:
        return await LabEvent.find(LabEvent.deployment == name).sort("-at").limit(limit).to_list()

    def server_info(self) -> ServerInfo:
        return ServerInfo(
            version=__version__, hostname=socket.gethostname(),
            database=self.database_description, event_stream=self.feed.mode,
        )

    # --------------------------------------------------------------- templates

    async def seed_templates(self) -> None:
        for fields in SEED_TEMPLATES:
            if await Template.find_one(Template.name == fields["name"]) is None:
                try:
                    await self.create_template(**fields)  # type: ignore[arg-type]
                except Conflict:
                    pass  # another replica seeded it first

    async def list_templates(self, *, teacher: str | None = None) -> list[Template]:
        """Every template, or those `teacher` may use (unrestricted, or listing them)."""
        if teacher is None:
            return await Template.find_all().sort("name").to_list()
        query = {"$or": [{"teachers": {"$exists": False}}, {"teachers": []}, {"teachers": teacher}]}
        return await Template.find(query).sort("name").to_list()

    async def get_template(self, name: str) -> Template:
        template = await Template.find_one(Template.name == name)
        if template is None:
            raise NotFound(f"There is no template named {name!r}.")
        return template

    async def create_template(
        self, *, name: str, title: str | None, description: str | None, os: str, image: str,
        vcpus: int, memory_mib: int, disk_gib: int, teachers: Sequence[str] = (),
    ) -> Template:
        template = Template(
            teachers=_teachers(teachers),
            name=validation.name(name),
            title=validation.title(title, fallback=name),
            description=validation.description(description),
            os=OSFamily(validation.os_family(os)),
            image=validation.image(image),
            **_template_sizes(vcpus=vcpus, memory_mib=memory_mib, disk_gib=disk_gib),
        )
        try:
            await template.insert()
        except DuplicateKeyError:
            raise Conflict(f"A template named {name!r} already exists.") from None
        return template

    async def update_template(
        self, name: str, *, title: str | None = None, description: str | None = None,
        os: str | None = None, image: str | None = None, vcpus: int | None = None,
        memory_mib: int | None = None, disk_gib: int | None = None,
        teachers: Sequence[str] | None = None,
    ) -> Template:
        template = await self.get_template(name)
        changes: dict[str, Any] = {}
        if teachers is not None:
            changes["teachers"] = _teachers(teachers)
        if title is not None:
            changes["title"] = validation.title(title, fallback=name)
        if description is not None:
            changes["description"] = validation.description(description)
        if os is not None:
            changes["os"] = OSFamily(validation.os_family(os))
        if image is not None:
            changes["image"] = validation.image(image)
        sizes = _template_sizes(
            vcpus=template.vcpus if vcpus is None else vcpus,
            memory_mib=template.memory_mib if memory_mib is None else memory_mib,
            disk_gib=template.disk_gib if disk_gib is None else disk_gib,
        )
        # Only the fields asked for are written: writing back the others as read would undo a
        # concurrent edit of them made on another replica.
        given = {"vcpus": vcpus, "memory_mib": memory_mib, "disk_gib": disk_gib}
        changes.update({key: value for key, value in sizes.items() if given[key] is not None})
        changes["updated_at"] = utcnow()
        await template.set(changes)
        return await self.get_template(name)

    async def delete_template(self, name: str) -> Template:
        template = await self.get_template(name)
        users = await Deployment.find(Deployment.template == name).limit(5).to_list()
        if users:
            names = ", ".join(d.name for d in users)
            raise Conflict(f"Template {name!r} is used by lab(s) {names}; delete those labs first.")
        await template.delete()
        return template

    # -------------------------------------------------------------------- labs

    async def list_deployments(
        self, *, phase: Phase | None = None, offset: int = 0, limit: int = 100,
        owner: str | None = None, student: str | None = None, only: dict[str, Any] | None = None,
    ) -> Page:
        """Labs by name; only those in `phase`, owned by `owner`, with `student` on their
        roster, or matching the filter `only`, when given."""
        criteria: dict[str, Any] = dict(only or {})
        if phase:
            criteria["phase"] = phase.value
        if owner is not None:
            criteria["owner"] = owner
        if student is not None:
            criteria["roster"] = student
        query = Deployment.find(criteria)
        total = await query.count()
        items = await query.sort("name").skip(max(offset, 0)).limit(max(min(limit, 1000), 1)).to_list()
        return Page(items=items, total=total)

    async def get_deployment(self, name: str) -> Deployment:
        lab = await Deployment.find_one(Deployment.name == name)
        if lab is None:
            raise NotFound(f"There is no lab named {name!r}.")
        return lab

    async def running_counts(self, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        """lab name -> (machines running, machines kept), in one aggregation."""
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
        """(running, kept) for one lab as of this change of it. Every subscriber of this process
        shows the same change, so they share one aggregation instead of running one each."""
        key = (str(lab.id), lab.version)
        task = self._lab_counts.get(key)
        if task is None:
            task = asyncio.ensure_future(self.running_counts([lab.name]))
            self._lab_counts[key] = task
            while len(self._lab_counts) > 512:  # only the latest changes are asked about
                self._lab_counts.pop(next(iter(self._lab_counts)))
        return (await asyncio.shield(task))[lab.name]

    async def create_deployment(
        self, *, name: str, template: str, replicas: int, title: str | None = None,
        power: Power = Power.RUNNING, owner: str | None = None,
    ) -> Deployment:
        validation.name(name)
        lab_title = validation.title(title, fallback=name)
        validation.replicas(replicas, maximum=self.settings.max_replicas)
        try:
            source = await self.get_template(template)
        except NotFound:
            raise ValidationFailed("template", f"There is no template named {template!r}.") from None
        lab = Deployment(name=name, title=lab_title, template=template, replicas=replicas, power=power,
                         owner=owner)
        try:
            await lab.insert()
        except DuplicateKeyError:
            raise Conflict(f"A lab named {name!r} already exists; choose another name.") from None
        spec = _spec_of(source)
        machines = [_new_machine(lab=name, index=i, spec=spec, power=power) for i in range(1, replicas + 1)]
        try:
            await Machine.insert_many(machines)
            await self._note(name, f"created with {replicas} machine(s) of {template}")
        except PyMongoError as exc:
            # Nothing half-made stays behind: the lab and whatever machines were inserted go.
            await Machine.find(Machine.deployment == name).delete()
            await lab.delete()
            raise Unavailable(f"Could not create the machines of lab {name!r}: {exc}") from None
        self._published(lab, operation="insert")
        await self._publish_machines({"deployment": name})
        # Deleted by another replica while its machines were being made: they go too.
        await self._apply_spec(name, power_request=False)
        await self.place_pending(deployment=name)
        return await self.refresh_phase(name)

    async def _read_lab(self, name: str) -> Deployment:
        """The lab as stored now: every conditional write of a lab starts from this read."""
        return await self.get_deployment(name)

    async def _change_lab(self, name: str,
                          change: Callable[[Deployment], LabUpdate | None]) -> tuple[Deployment, bool]:
        """Write `change(lab)` (an update document; None: nothing to write) to the lab, on the
        condition that it is still the lab `change` saw (same `version`); otherwise read it again
        and recompute. `change` may raise to refuse. Returns the lab as read before the write
        that succeeded, and whether anything was written."""
        collection = Deployment.get_pymongo_collection()
        for attempt in range(WRITE_ATTEMPTS):
            lab = await self._read_lab(name)
            update = change(lab)
            if update is None:
                return lab, False
            update.setdefault("$inc", {})["version"] = 1
            result = await collection.update_one({"_id": lab.id, "version": lab.version}, update)
            if result.matched_count:
                return lab, True
            await backoff(attempt)
        raise Unavailable(f"Lab {name!r} is changing too fast; try again.")

    async def update_deployment(
        self, name: str, *, title: str | None = None, replicas: int | None = None,
        power: Power | None = None, template: str | None = None,
    ) -> Deployment:
        new_title = validation.title(title, fallback=name) if title is not None else None

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
                validation.replicas(replicas, maximum=self.settings.max_replicas)
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

        before, written = await self._change_lab(name, change)
        if written and replicas is not None and replicas != before.replicas:
            await self._note(name, f"scaled from {before.replicas} to {replicas} machine(s)")
        power_changed = written and power is not None and power != before.power
        if power_changed:
            await self._note(name, "start requested" if power == Power.RUNNING else "stop requested")
        if written and (replicas is not None or power is not None):
            await self._apply_spec(name, power_request=power_changed)
        return await self.refresh_phase(name, always_publish=written)

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

        await self._change_lab(name, change)
        await self._note(name, "start requested" if power == Power.RUNNING else "stop requested")
        # Asked again for the power it has: still a request (students' powered-off machines start).
        await self._apply_spec(name, power_request=True)
        return await self.refresh_phase(name, always_publish=True)

    async def _apply_spec(self, name: str, *, power_request: bool) -> None:
        """Make the lab's machines follow its replicas, power and roster as stored now.

        Another replica may change the lab while this one writes machines, and its machine
        writes may land before or after ours. So after each pass the lab is read again: if its
        spec (`generation`) or roster moved, the pass is made again for the newer lab. The
        replica whose machine writes land last therefore always ends on the latest lab.
        `power_request`: the lab's power is a new request, so every kept machine gets it (its
        power generation bumped) even where its desired state is already that."""
        applied_power: Power | None = None
        for attempt in range(WRITE_ATTEMPTS):
            lab = await self._read_lab(name)
            if lab.phase == Phase.DELETING:
                await self._remove_machines(name)
            else:
                await self._scale(lab, replicas=lab.replicas, power=lab.power)
                if (power_request and applied_power is None) or (
                        applied_power is not None and applied_power != lab.power):
                    await self._set_power(name, lab.power)
                applied_power = lab.power
                if lab.roster or await self._anyone_bound(name):
                    await self._bind_roster(name)
            fresh = await self._read_lab(name)
            if (fresh.generation, fresh.roster, fresh.phase == Phase.DELETING) == (
                    lab.generation, lab.roster, lab.phase == Phase.DELETING):
                return
            await backoff(attempt)
        raise Unavailable(f"Lab {name!r} is changing too fast; try again.")

    async def _set_power(self, name: str, power: Power) -> None:
        desired = lifecycle.desired_for(power)
        query = {"deployment": name, "retired": False, "desired": {"$ne": DesiredState.ABSENT.value}}
        await Machine.get_pymongo_collection().update_many(
            query, {"$set": {"desired": desired.value, "updated_at": utcnow()},
                    "$inc": {"power_generation": 1}},
        )
        await self._publish_machines(query)

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
                                                          "student": None, "updated_at": utcnow()}})
            await self._publish_machines(query)
            await self._drop_unplaced(lab.name)
        if plan.revive:
            query = {"deployment": lab.name, "index": {"$in": plan.revive}, "retired": False,
                     "desired": DesiredState.ABSENT.value}
            await collection.update_many(query, {"$set": {"desired": lifecycle.desired_for(power).value},
                                                 "$inc": {"power_generation": 1}})
            await self._publish_machines({"deployment": lab.name, "index": {"$in": plan.revive}})
        if plan.create:
            source = await self.get_template(lab.template)
            new = [_new_machine(lab=lab.name, index=i, spec=_spec_of(source), power=power)
                   for i in plan.create]
            try:
                await Machine.insert_many(new, ordered=False)
            except (DuplicateKeyError, BulkWriteError):
                pass  # a concurrent scale of the same lab made some; same indexes, same spec
            await self._publish_machines({"deployment": lab.name, "index": {"$in": plan.create}})
            await self.place_pending(deployment=lab.name)

    async def check_roster(self, name: str, *, students: Sequence[str],
                           match_replicas: bool = False) -> list[str]:
        """The usernames of a roster request, or ValidationFailed/NotFound/Conflict having
        written nothing: everything a roster change can refuse is checked here, before anything
        (the students' accounts included) is made."""
        names = roster.students(students)
        lab = await self.get_deployment(name)
        if lab.phase == Phase.DELETING:
            raise Conflict(f"Lab {name!r} is being deleted.")
        if match_replicas and len(names) > self.settings.max_replicas:
            raise ValidationFailed("students", (
                f"A lab has at most {self.settings.max_replicas} machines: {len(names)} students "
                "cannot each get one."))
        return names

    async def set_roster(self, name: str, *, students: Sequence[str],
                         match_replicas: bool = False) -> tuple[Deployment, list[str]]:
        """Make `students` the lab's roster and bind each to a machine; with `match_replicas`
        the lab is first scaled to one machine per student. Returns the lab and the students
        left without a machine (more students than machines)."""
        names = await self.check_roster(name, students=students, match_replicas=match_replicas)

        def change(lab: Deployment) -> LabUpdate:
            if lab.phase == Phase.DELETING:
                raise Conflict(f"Lab {name!r} is being deleted.")
            changes: dict[str, Any] = {"roster": names, "updated_at": utcnow()}
            scaled = match_replicas and names and len(names) != lab.replicas
            if scaled:
                changes["replicas"] = len(names)
            return {"$set": changes, "$inc": {"generation": 1 if scaled else 0}}

        before, _ = await self._change_lab(name, change)
        if match_replicas and names and len(names) != before.replicas:
            await self._note(name, f"scaled from {before.replicas} to {len(names)} machine(s)")
        await self._apply_spec(name, power_request=False)
        added = sorted(set(names) - set(before.roster))
        removed = sorted(set(before.roster) - set(names))
        if added or removed:
            said = [f"added {', '.join(added)}" if added else "", f"removed {', '.join(removed)}" if removed else ""]
            await self._note(name, "roster: " + "; ".join(x for x in said if x))
        lab = await self.refresh_phase(name, always_publish=True)
        return lab, await self._unbound(lab)

    async def _unbound(self, lab: Deployment) -> list[str]:
        bound = {m.student for m in await self.list_machines(deployment=lab.name)
                 if m.desired != DesiredState.ABSENT}
        return [student for student in lab.roster if student not in bound]

    async def _anyone_bound(self, name: str) -> bool:
        return await Machine.find({"deployment": name, "student": {"$ne": None}}).count() > 0

    async def _bind_roster(self, name: str) -> None:
        """Bind the lab's roster to its kept machines (`roster.bind`). Each machine is written
        only if it still has the student it was read with; afterwards no student may hold two
        machines of the lab and the roster must be the one bound, or it is done again."""
        collection = Machine.get_pymongo_collection()
        for attempt in range(WRITE_ATTEMPTS):
            lab = await self._read_lab(name)
            # A machine on its way out belongs to nobody any more.
            await collection.update_many({"deployment": name, "desired": DesiredState.ABSENT.value,
                                          "student": {"$ne": None}}, {"$set": {"student": None}})
            kept = await Machine.find({"deployment": name, "retired": False,
                                       "desired": {"$ne": DesiredState.ABSENT.value}}).to_list()
            plan = roster.bind(roster=lab.roster, machines={m.index: m.student for m in kept})
            # Free first, then bind: a student moving between machines never holds two.
            moves: list[tuple[Machine, str | None]] = [
                (m, None) for m in kept if m.student is not None and plan.machines.get(m.index) != m.student]
            moves += [(m, plan.machines[m.index]) for m in kept
                      if plan.machines.get(m.index) is not None and plan.machines[m.index] != m.student]
            lost = False
            for machine, student in moves:
                result = await collection.update_one(
                    {"_id": machine.id, "student": machine.student, "retired": False,
                     "desired": {"$ne": DesiredState.ABSENT.value}},
                    {"$set": {"student": student, "updated_at": utcnow()}})
                if not result.matched_count:
                    lost = True  # changed since read: bind again from a fresh read
                    break
                machine.student = student
                self._published(machine)
            if not lost and (await self._read_lab(name)).roster == lab.roster and not await self._doubly_bound(name):
                return
            await backoff(attempt)
        raise Unavailable(f"The roster of lab {name!r} is changing too fast; try again.")

    async def _doubly_bound(self, name: str) -> list[str]:
        """Students holding more than one kept machine of the lab (there must be none)."""
        cursor = await Machine.get_pymongo_collection().aggregate([
            {"$match": {"deployment": name, "retired": False, "student": {"$ne": None},
                        "desired": {"$ne": DesiredState.ABSENT.value}}},
            {"$group": {"_id": "$student", "n": {"$sum": 1}}},
            {"$match": {"n": {"$gt": 1}}},
        ])
        return [str(row["_id"]) async for row in cursor]

    async def delete_deployment(self, name: str, *, force: bool = False) -> Deployment:
        lab = await self.get_deployment(name)
        if force:
            return await self._force_delete(lab)

        def change(lab: Deployment) -> LabUpdate | None:
            if lab.phase == Phase.DELETING:
                return None  # asked again: the machines' removal below is still made sure of
            return {"$set": {"phase": Phase.DELETING.value, "updated_at": utcnow()}, "$inc": {"generation": 1}}

        _, written = await self._change_lab(name, change)
        await self._remove_machines(name)
        if written:
            await self._note(name, "delete requested")
        return await self.refresh_phase(name, always_publish=True)

    async def _remove_machines(self, name: str) -> None:
        """Every machine of a lab being deleted on its way out; idempotent (the janitor and a
        scale that lost the race to the deletion call it again)."""
        query = {"deployment": name, "retired": False, "desired": {"$ne": DesiredState.ABSENT.value}}
        result = await Machine.get_pymongo_collection().update_many(
            query, {"$set": {"desired": DesiredState.ABSENT.value, "student": None, "updated_at": utcnow()}}
        )
        if result.modified_count:
            await self._publish_machines({"deployment": name, "retired": False})
        await self._drop_unplaced(name)

    async def _force_delete(self, lab: Deployment) -> Deployment:
        machines = await Machine.find(Machine.deployment == lab.name).to_list()
        hosts = {m.host for m in machines if m.host}
        statuses = {s.host.name: s for s in await self.list_hosts()}
        reachable = sorted(h for h in hosts if h in statuses and statuses[h].ready)
        if reachable:
            raise Conflict(
                f"Host(s) {', '.join(reachable)} are still reachable: delete the lab normally so "
                "they remove its VMs and disks. Force is for labs whose hosts are gone."
            )
        for machine in machines:
            await self._forget_machine(machine)
        await Deployment.get_pymongo_collection().delete_one({"_id": lab.id})
        await self._lab_removed(lab)
        return lab

    async def _drop_unplaced(self, name: str) -> None:
        """Machines never given a host have nothing on any host to remove: drop them now."""
        for machine in await Machine.find(
            {"deployment": name, "host": None, "desired": DesiredState.ABSENT.value}
        ).to_list():
            await self._forget_machine(machine)

    async def _forget_machine(self, machine: Machine) -> None:
        result = await Machine.get_pymongo_collection().find_one_and_update(
            {"_id": machine.id, "retired": False}, {"$set": {"retired": True}}
        )
        if result is None:
            return  # another replica is forgetting it
        machine.retired = True
        self._published(machine)
        if machine.host:
            await Host.get_pymongo_collection().update_one(
                {"name": machine.host},
                {"$inc": {"allocated_vcpus": -machine.spec.vcpus,
                          "allocated_memory_mib": -machine.spec.memory_mib}},
            )
        await Machine.get_pymongo_collection().delete_one({"_id": machine.id})
        self.feed.publish(collection="machines", operation="delete", id=str(machine.id), document=None)

    async def _lab_removed(self, lab: Deployment) -> None:
        self.feed.publish(collection="deployments", operation="delete", id=str(lab.id), document=None)
        await LabEvent.find(LabEvent.deployment == lab.name).delete()

    async def converge_lab(self, name: str) -> tuple[Deployment | None, Deployment | None]:
        """The follow-up of every lab change, run again (by the janitor) in case a crash cut it
        short: the machines follow the lab's replicas and roster (a lab being deleted has every
        machine on its way out), and its phase is recomputed. Returns the lab before and after
        (None after: it was removed; None before: there is no such lab, or none this version
        can read)."""
        try:
            before = await self.get_deployment(name)
        except NotFound:
            return None, None
        await self._apply_spec(name, power_request=False)
        after = await self.refresh_phase(name)
        gone = before.phase == Phase.DELETING and await Deployment.find_one(Deployment.id == before.id) is None
        return before, None if gone else after

    async def refresh_phase(self, name: str, *, always_publish: bool = False) -> Deployment:
        """Recompute a lab's phase from a fresh read of its machines and write it with
        compare-and-set; returns the lab as written (or as found, if nothing changed, after
        making sure nobody wrote it meanwhile). A lab being deleted whose machines are all gone
        is removed here, on the same condition. Idempotent: the janitor calls it for every lab."""
        collection = Deployment.get_pymongo_collection()
        for attempt in range(WRITE_ATTEMPTS):
            lab = await self._read_lab(name)
            machines = await Machine.find(Machine.deployment == name, Machine.retired == False).to_list()  # noqa: E712
            deleting = lab.phase == Phase.DELETING
            if deleting and not machines:
                removed = await collection.delete_one({"_id": lab.id, "version": lab.version})
                if removed.deleted_count:
                    await self._lab_removed(lab)
                    return lab
                await backoff(attempt)
                continue
            decision = lifecycle.lab_phase(deleting=deleting, power=lab.power, machines=machines)
            if decision.phase == lab.phase and decision.message == lab.message:
                # Nothing to write, if the lab is still the one this decision was made from.
                if await collection.count_documents({"_id": lab.id, "version": lab.version}, limit=1):
                    if always_publish:
                        self._published(lab)
                    return lab
                await backoff(attempt)
                continue
            result = await collection.update_one(
                {"_id": lab.id, "version": lab.version},
                {"$set": {"phase": decision.phase.value, "message": decision.message,
                          "updated_at": utcnow()}, "$inc": {"version": 1}},
            )
            if result.matched_count:
                if decision.phase != lab.phase:
                    await self._note(name, f"phase {lab.phase.value} → {decision.phase.value}: {decision.message}")
                lab.phase, lab.message, lab.version = decision.phase, decision.message, lab.version + 1
                self._published(lab)
                return lab
            await backoff(attempt)
        raise Unavailable(f"Lab {name!r} is changing too fast; try again.")

    # ---------------------------------------------------------------- machines

    async def list_machines(self, *, deployment: str | None = None, host: str | None = None,
                            student: str | None = None, owner: str | None = None) -> list[Machine]:
        """Machines by lab and index: of one lab, one host, one student, or of the labs one
        teacher owns, as given."""
        query: dict[str, Any] = {"retired": False}
        if deployment is not None:
            query["deployment"] = deployment
        if host is not None:
            query["host"] = host
        if student is not None:
            query["student"] = student
        if owner is not None:
            owned = [lab.name for lab in await Deployment.find({"owner": owner}).to_list()]
            query["deployment"] = {"$in": owned} if deployment is None else (
                deployment if deployment in owned else {"$in": []})
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
        lab = await self.get_deployment(machine.deployment)
        refused = lifecycle.can_act_on_machine(phase=lab.phase, desired=machine.desired)
        if refused:
            raise Conflict(f"Cannot change {name}: {refused}.")
        update: dict[str, Any] = {"$set": {"desired": desired.value, "updated_at": utcnow()},
                                  "$inc": {"power_generation": 1}}
        if reset:
            update["$inc"]["reset_generation"] = 1
            update["$set"].update({"observed": ObservedState.PENDING.value, "message": "resetting"})
        # Only a machine still kept: one the lab's deletion or a scale-down took meanwhile must
        # not be brought back to life by a request made from an older read.
        result = await Machine.get_pymongo_collection().update_one(
            {"_id": machine.id, "retired": False, "desired": {"$ne": DesiredState.ABSENT.value}}, update)
        if not result.matched_count:
            raise Conflict(f"Cannot change {name}: this machine is being removed.")
        await self._note(machine.deployment, note, machine=name)
        fresh = await self.get_machine(name)
        self._published(fresh)
        await self.refresh_phase(machine.deployment)
        return fresh

    # ------------------------------------------------------------------- hosts

    def host_ready(self, host: Host, *, now: datetime | None = None) -> bool:
        age = ((now or utcnow()) - host.last_heartbeat).total_seconds()
        return age <= self.settings.host_timeout_seconds

    async def list_hosts(self) -> list[HostStatus]:
        now = utcnow()
        counts: dict[str, int] = defaultdict(int)
        cursor = await Machine.get_pymongo_collection().aggregate(
            [{"$match": {"retired": False, "host": {"$ne": None}}},
             {"$group": {"_id": "$host", "n": {"$sum": 1}}}]
        )
        async for row in cursor:
            counts[row["_id"]] = int(row["n"])
        return [
            HostStatus(host=h, ready=self.host_ready(h, now=now),
                       heartbeat_age_seconds=(now - h.last_heartbeat).total_seconds(),
                       machines=counts[h.name])
            for h in await Host.find_all().sort("name").to_list()
        ]

    async def get_host(self, name: str) -> Host:
        host = await Host.find_one(Host.name == name)
        if host is None:
            raise NotFound(f"There is no host named {name!r}; its agent must register first.")
        return host

    async def register_host(
        self, *, name: str, vcpus: int, memory_mib: int, images: Iterable[str],
        domain_type: str = "", agent_version: str = "",
    ) -> Host:
        host_name(name)
        validation.whole_number(vcpus, field="vcpus", minimum=1, maximum=4096, unit="vCPUs")
        validation.whole_number(memory_mib, field="memoryMib", minimum=64, maximum=1 << 30, unit="MiB")
        now = utcnow()
        fields = {"vcpus": vcpus, "memory_mib": memory_mib, "images": validation.image_names(images),
                  "domain_type": validation.text(domain_type, field="domainType", label="The domain type",
                                                 max_length=HOST_TEXT_MAX),
                  "agent_version": validation.text(agent_version, field="agentVersion", label="The agent version",
                                                   max_length=HOST_TEXT_MAX),
                  "last_heartbeat": now}
        collection = Host.get_pymongo_collection()
        try:
            await collection.update_one(
                {"name": name},
                {"$set": fields, "$setOnInsert": {"registered_at": now, "allocated_vcpus": 0,
                                                  "allocated_memory_mib": 0, "orphans": []}},
                upsert=True,
            )
        except DuplicateKeyError:  # two registrations raced on the upsert; the other won
            await collection.update_one({"name": name}, {"$set": fields})
        host = await self.get_host(name)
        self._published(host)
        await self.place_pending()
        return host

    async def heartbeat(self, *, name: str, images: Iterable[str] | None = None) -> Host:
        host = await self.get_host(name)
        was_ready = self.host_ready(host)
        changes: dict[str, Any] = {"last_heartbeat": utcnow()}
        new_images = validation.image_names(images) if images is not None else host.images
        if new_images != host.images:
            changes["images"] = new_images
        await Host.get_pymongo_collection().update_one({"_id": host.id}, {"$set": changes})
        host = await self.get_host(name)
        self._published(host)
        if not was_ready or "images" in changes:
            await self.place_pending()
        return host

    async def report_orphans(self, *, host: str, domains: Sequence[str]) -> Host:
        domains = [validation.text(d, field="domains", label="A domain name", max_length=HOST_TEXT_MAX, required=True)
                   for d in domains]
        record = await self.get_host(host)
        if sorted(domains) != sorted(record.orphans):
            await Host.get_pymongo_collection().update_one(
                {"_id": record.id}, {"$set": {"orphans": sorted(domains)}}
            )
            record.orphans = sorted(domains)
            self._published(record)
        return record

    async def host_assignments(self, host: str) -> list[Machine]:
        return await Machine.find(Machine.host == host, Machine.retired == False).to_list()  # noqa: E712

    async def report_machine_state(
        self, *, machine_id: str, host: str, state: ObservedState, message: str = "",
        power_generation: int | None = None,
    ) -> Machine:
        """Record what a host observed and what follows from it (a machine confirmed gone is
        forgotten, its lab's phase recomputed) as one unit: an agent whose connection drops
        right after reporting cannot leave the state written and its consequences not."""
        if power_generation is not None:
            validation.whole_number(power_generation, field="powerGeneration", minimum=0, maximum=2**63 - 1)
        return await finish(self._record_report(machine_id=machine_id, host=host, state=state,
                                                message=message, power_generation=power_generation))

    async def _record_report(
        self, *, machine_id: str, host: str, state: ObservedState, message: str,
        power_generation: int | None,
    ) -> Machine:
        machine = await Machine.get(object_id(machine_id, what="machine"))
        if machine is None or machine.retired:
            raise NotFound(f"There is no machine with id {machine_id}; it was removed.")
        if machine.host != host:
            raise Conflict(f"Machine {machine.name} is assigned to {machine.host or 'no host'}, not {host}.")
        message = validation.note(message)
        seen = power_generation if power_generation is not None else machine.observed_power_generation
        unchanged = (machine.observed, machine.message, machine.observed_power_generation) == (
            state, message, seen)
        if unchanged and not lifecycle.machine_gone(desired=machine.desired, observed=state):
            return machine
        changes = {"observed": state.value, "message": message, "observed_at": utcnow(),
                   "observed_power_generation": seen}
        written = await Machine.get_pymongo_collection().update_one(
            {"_id": machine.id, "retired": False, "host": host}, {"$set": changes}
        )
        if not written.matched_count:
            raise NotFound(f"There is no machine with id {machine_id} on {host}; it was removed.")
        previous = machine.observed
        machine.observed, machine.message, machine.observed_power_generation = state, message, seen
        machine.observed_at = changes["observed_at"]  # type: ignore[assignment]
        self._published(machine)
        if state != previous:
            detail = f": {message}" if message else ""
            await self._note(machine.deployment, f"{machine.name} is {state.value}{detail}", machine=machine.name)
        if lifecycle.machine_gone(desired=machine.desired, observed=state):
            await self._forget_machine(machine)
        await self.refresh_phase(machine.deployment)
        return machine

    # --------------------------------------------------------------- placement

    async def place_pending(self, *, deployment: str | None = None) -> None:
        """Give every unplaced machine (of one lab, or all) a host, or a message saying why not."""
        collection = Machine.get_pymongo_collection()
        query: dict[str, Any] = {"host": None, "retired": False, "desired": {"$ne": DesiredState.ABSENT.value}}
        if deployment is not None:
            query["deployment"] = deployment
        for _ in range(5):
            pending = await Machine.find(query).sort(BY_LAB_AND_INDEX).to_list()
            if not pending:
                return
            statuses = await self.list_hosts()
            capacities = [
                placement.HostCapacity(
                    name=s.host.name, ready=s.ready, images=frozenset(s.host.images),
                    free_vcpus=s.host.vcpus * self.settings.cpu_overcommit - s.host.allocated_vcpus,
                    free_memory_mib=s.host.memory_mib - s.host.allocated_memory_mib,
                )
                for s in statuses
            ]
            needs = [placement.Need(image=m.spec.image, vcpus=m.spec.vcpus, memory_mib=m.spec.memory_mib)
                     for m in pending]
            plan = placement.plan(hosts=capacities, needs=needs)
            contested = False
            groups: dict[tuple[str, int, int], list[Machine]] = defaultdict(list)
            for position, host_name in plan.placed.items():
                m = pending[position]
                groups[(host_name, m.spec.vcpus, m.spec.memory_mib)].append(m)
            for (host_name, vcpus, memory), machines in groups.items():
                if not await self._reserve(host_name, vcpus=vcpus * len(machines), memory_mib=memory * len(machines)):
                    contested = True
                    continue
                ids = [m.id for m in machines]
                result = await collection.update_many(
                    {"_id": {"$in": ids}, "host": None},
                    {"$set": {"host": host_name, "message": "", "updated_at": utcnow()}},
                )
                unclaimed = len(machines) - result.modified_count
                if unclaimed:  # another replica placed some of them meanwhile
                    await self._reserve(host_name, vcpus=-vcpus * unclaimed, memory_mib=-memory * unclaimed)
                await self._publish_machines({"_id": {"$in": ids}})
            for position, why in plan.unplaced.items():
                m = pending[position]
                if m.message != why:
                    await collection.update_one({"_id": m.id, "host": None}, {"$set": {"message": why}})
                    m.message = why
                    self._published(m)
            for lab in sorted({m.deployment for m in pending}):
                await self.refresh_phase(lab)
            if not contested:
                return

    async def _reserve(self, host: str, *, vcpus: int, memory_mib: int) -> bool:
        if vcpus <= 0 and memory_mib <= 0:
            await Host.get_pymongo_collection().update_one(
                {"name": host}, {"$inc": {"allocated_vcpus": vcpus, "allocated_memory_mib": memory_mib}}
            )
            return True
        record = await Host.find_one(Host.name == host)
        if record is None:
            return False
        limit_cpu = record.vcpus * self.settings.cpu_overcommit - vcpus
        limit_mem = record.memory_mib - memory_mib
        result = await Host.get_pymongo_collection().update_one(
            {"name": host, "allocated_vcpus": {"$lte": limit_cpu}, "allocated_memory_mib": {"$lte": limit_mem}},
            {"$inc": {"allocated_vcpus": vcpus, "allocated_memory_mib": memory_mib}},
        )
        return result.modified_count == 1


def _template_sizes(*, vcpus: int, memory_mib: int, disk_gib: int) -> dict[str, int]:
    return {
        "vcpus": validation.template_size(vcpus, field="vcpus"),
        "memory_mib": validation.template_size(memory_mib, field="memoryMib"),
        "disk_gib": validation.template_size(disk_gib, field="diskGib"),
    }


def _spec_of(template: Template) -> MachineSpec:
    return MachineSpec(template=template.name, image=template.image, os=template.os,
                       vcpus=template.vcpus, memory_mib=template.memory_mib, disk_gib=template.disk_gib)


def _new_machine(*, lab: str, index: int, spec: MachineSpec, power: Power) -> Machine:
    return Machine(deployment=lab, index=index, name=f"{lab}-{index}", spec=spec,
                   desired=lifecycle.desired_for(power), message="waiting for a host")


def _teachers(names: Sequence[str]) -> list[str]:
    return sorted({roster.username(n.strip().lower(), field="teachers") for n in names if n.strip()})


def host_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name or ""):
        raise ValidationFailed("name", f"A host name uses {HOST_NAME_RULE}.")
    return name

