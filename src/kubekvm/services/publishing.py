"""Publishing a machine: a teacher's prepared VM becomes the next version of its template, or a
new template.

Asked for on a stopped machine (by its lab's teacher, for a template they may use, or an
admin): the machine gets a publish job and is locked (no start, stop or reset) until the job
ends. Its host's agent hears the job in its assignment feed, flattens the machine's disk chain
(overlay and base) into one standalone qcow2 with ``qemu-img convert`` and uploads it to
``POST /machines/{name}/publish/{job}`` (`kubekvm.pages.images`) with its host token. The
upload goes through the image store's import like any other (inspected, content-addressed,
nothing half-written), and the image becomes the template's next version (or v1 of the new
template, with the machine's sizes). The job records the bytes received as they come (the
pages show its progress), then how it ended; a failed job unlocks the machine too, and so does
one its host has not taken up within 15 minutes (the host is gone): it may be asked for again.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from kubekvm import validation
from kubekvm.access.roles import require_staff
from kubekvm.errors import Conflict, NotFound, ValidationFailed
from kubekvm.image_models import Image
from kubekvm.models import DesiredState, Machine, ObservedState, PublishJob, Template, utcnow
from kubekvm.services.context import Noun
from kubekvm.services.rulebook import HOST_AGENT
from kubekvm.services.rules import Arguments, Operations, Rule, named, operation, outcomes

# The job's progress is written about this often (bytes), not for every chunk.
PROGRESS_STEP = 8 * 1024 * 1024


class Publishing(Noun):
    """Publish jobs' records, unchecked (callers use `PublishOperations`)."""

    async def request(self, name: str, *, note: str, new_template: str | None, by: str) -> Machine:
        machine = await self.core.machines.get_machine(name)
        if machine.publish is not None and machine.publish.active:
            raise Conflict(f"{name} is being published already.")
        if machine.desired != DesiredState.STOPPED or machine.observed != ObservedState.SHUTOFF:
            raise Conflict(f"Stop {name} first: only a stopped machine can be published (its disk must not "
                           "change while it is copied).")
        target = machine.spec.template
        if new_template:
            target = validation.name(new_template)
            if await Template.find_one(Template.name == target) is not None:
                raise ValidationFailed("newTemplate", f"A template named {target!r} already exists.")
        job = PublishJob(id=secrets.token_hex(8), template=target, new_template=bool(new_template),
                         note=validation.note(note, max_length=500) if note else "", requested_by=by)
        written = await Machine.get_pymongo_collection().update_one(
            {"_id": machine.id, "retired": False, "desired": DesiredState.STOPPED.value,
             "$or": [{"publish": None}, {"publish.state": {"$in": ["done", "failed"]}},
                     # a job whose host never took it up (it lapsed: `PublishJob.active`)
                     {"publish.state": "requested", "publish.id": machine.publish.id if machine.publish else ""}]},
            {"$set": {"publish": job.model_dump(), "updated_at": utcnow()}})
        if not written.matched_count:
            raise Conflict(f"{name} changed meanwhile (started, or being published); try again.")
        await self.ctx.note(machine.deployment, f"publishing {name} as a new version of {target} (locked meanwhile)",
                            machine=name)
        fresh = await self.core.machines.get_machine(name)
        self.ctx.published(fresh)
        return fresh

    async def _set(self, machine: Machine, job: str, changes: dict[str, Any]) -> None:
        await Machine.get_pymongo_collection().update_one(
            {"_id": machine.id, "publish.id": job}, {"$set": {f"publish.{k}": v for k, v in changes.items()}})
        fresh = await Machine.get(machine.id)
        if fresh is not None:
            self.ctx.published(fresh)

    async def receive(self, name: str, job: str, *, host: str, upload: AsyncIterable[bytes], size: int | None,
                      failure: str | None) -> Machine:
        machine = await self.core.machines.get_machine(name)
        if machine.host != host or machine.publish is None or machine.publish.id != job or not machine.publish.active:
            raise NotFound(f"There is no publish job {job} of {name} on {host}.")
        publish = machine.publish
        if failure:
            await self._set(machine, job, {"state": "failed", "message": validation.note(failure, max_length=500)})
            await self.ctx.note(machine.deployment, f"publishing {name} failed: {failure}", machine=name)
            raise Conflict(f"Publishing {name} failed on its host: {failure}")
        await self._set(machine, job, {"state": "uploading", "total": size, "done": 0})
        try:
            staged = await self.core.images.store.receive(self._counted(machine, job, upload), expected_size=size)
            image, _ = await self.core.images.import_staged(staged, name=f"{name}.qcow2", format="qcow2",
                                                            by=publish.requested_by)
            template = await self._version(machine, publish, image)
        except Exception as error:
            said = getattr(error, "message", None) or str(error) or type(error).__name__
            await self._set(machine, job, {"state": "failed", "message": said[:500]})
            await self.ctx.note(machine.deployment, f"publishing {name} failed: {said}", machine=name)
            raise
        number = template.versions[-1].number
        await self._set(machine, job, {"state": "done", "message": f"published as {template.name} v{number} "
                                                                   f"({image.digest[:19]}…)"})
        await self.ctx.note(machine.deployment, f"{name} published as {template.name} v{number}", machine=name)
        return await self.core.machines.get_machine(name)

    async def _counted(self, machine: Machine, job: str, upload: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        done, written = 0, 0
        async for chunk in upload:
            done += len(chunk)
            if done - written >= PROGRESS_STEP:
                await self._set(machine, job, {"done": done})
                written = done
            yield chunk
        await self._set(machine, job, {"done": done})

    async def _version(self, machine: Machine, publish: PublishJob, image: Image) -> Template:
        if publish.new_template:
            source = await self.core.templates.get_template(machine.spec.template)
            await self.core.templates.create_template(
                name=publish.template, title=None, description=f"Published from {machine.name}.", os=source.os.value,
                image=f"{machine.name}.qcow2".replace("_", "-"), vcpus=machine.spec.vcpus,
                memory_mib=machine.spec.memory_mib, disk_gib=machine.spec.disk_gib, teachers=source.teachers)
        return await self.core.template_versions.publish_version(
            publish.template, digest=image.digest, note=publish.note or f"published from {machine.name}",
            author=publish.requested_by)


async def _machine_publisher(ops: Operations, args: Arguments) -> None:
    """The machine's lab's teacher, for a template they may use; admins always."""
    require_staff(ops.actor)
    machine = await ops.seen_machine(args["name"])
    await ops.managed_lab(machine.deployment)
    await ops.usable_template(machine.spec.template)


MACHINE_PUBLISHER = Rule("the teacher of the machine's lab, for a template they may use, and admins",
                         _machine_publisher, outcomes(other="NOT_FOUND", owner="ok"))


class PublishOperations(Operations):
    @operation(MACHINE_PUBLISHER, audit="publishMachine", target=named("machine"),
               message=lambda args, actor: f"as {args.get('new_template') or 'next version'}")
    async def publish_machine(self, name: str, *, note: str = "", new_template: str | None = None) -> Machine:
        return await self.services.publishing.request(name, note=note, new_template=new_template, by=self.actor.name)

    @operation(HOST_AGENT, audit="uploadPublishedImage", target=named("machine"))
    async def receive_published(self, name: str, *, job: str, host: str, upload: AsyncIterable[bytes],
                                size: int | None, failure: str | None = None) -> Machine:
        return await self.services.publishing.receive(name, job, host=host, upload=upload, size=size, failure=failure)
