"""Templates: the VM images and sizes labs are made from, and which teachers may use them.

Seeded with the two original courses' templates at start-up (`seed`); a template cannot be
deleted while a lab uses it — checked again after the delete, since another replica may make
a lab from it meanwhile (the template is then put back). Creating one relies on the unique
index (several replicas); an edit writes only the fields it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pymongo.errors import DuplicateKeyError

from kubekvm import image_rules, placement, roster, validation
from kubekvm.errors import Conflict, NotFound
from kubekvm.models import (
    Deployment,
    MachineSpec,
    OSFamily,
    Template,
    utcnow,
)
from kubekvm.services.context import Noun
from kubekvm.services.rulebook import ADMIN, STAFF, TEMPLATE_USABLE
from kubekvm.services.rules import Operations, named, operation

if TYPE_CHECKING:
    pass

SEED_TEMPLATES = (
    dict(name="tecnologia-de-computadores", title="Tecnología de Computadores",
         description="Windows XP with Logisim, for digital logic labs.",
         os="windows", image="winxp.qcow2", vcpus=1, memory_mib=512, disk_gib=4),
    dict(name="redes-neuronales", title="Redes Neuronales",
         description="Ubuntu 16.04 with Anaconda and Jupyter, for neural network labs.",
         os="linux", image="ubuntu16.04.qcow2", vcpus=1, memory_mib=1024, disk_gib=16),
)


class Templates(Noun):
    """Templates' records, unchecked (callers use `TemplateOperations`)."""

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
        checks = validation.Checks()
        fields = {
            "teachers": checks(lambda: _teachers(teachers)),
            "name": checks(lambda: validation.name(name)),
            "title": checks(lambda: validation.title(title, fallback=name)),
            "description": checks(lambda: validation.description(description)),
            "os": checks(lambda: OSFamily(validation.os_family(os))),
            "image": checks(lambda: validation.image(image)),
            **(checks(lambda: _template_sizes(vcpus=vcpus, memory_mib=memory_mib, disk_gib=disk_gib)) or {}),
        }
        checks.done()
        template = Template(**fields)
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
        checks = validation.Checks()
        given_text: dict[str, tuple[object, Callable[[], object]]] = {
            "teachers": (teachers, lambda: _teachers(teachers or ())),
            "title": (title, lambda: validation.title(title, fallback=name)),
            "description": (description, lambda: validation.description(description)),
            "os": (os, lambda: OSFamily(validation.os_family(os or ""))),
            "image": (image, lambda: validation.image(image or "")),
        }
        changes: dict[str, Any] = {key: checks(check) for key, (value, check) in given_text.items()
                                   if value is not None}
        sizes = checks(lambda: _template_sizes(
            vcpus=template.vcpus if vcpus is None else vcpus,
            memory_mib=template.memory_mib if memory_mib is None else memory_mib,
            disk_gib=template.disk_gib if disk_gib is None else disk_gib,
        )) or {}
        checks.done()
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
        raw = await Template.get_pymongo_collection().find_one({"_id": template.id})
        await template.delete()
        # A lab created from it between the check above and the delete (on another replica)
        # would be left with no template: seen now, the template is put back and the delete
        # refused. (A creation checks the other way round after inserting its lab.)
        users = await Deployment.find(Deployment.template == name).limit(5).to_list()
        if users and raw is not None:
            try:
                await Template.get_pymongo_collection().insert_one(raw)
            except DuplicateKeyError:
                pass  # made again meanwhile: it exists, which is all the labs need
            names = ", ".join(d.name for d in users)
            raise Conflict(f"Template {name!r} is used by lab(s) {names}; delete those labs first.")
        return template


def _template_sizes(*, vcpus: int, memory_mib: int, disk_gib: int) -> dict[str, int]:
    """The three sizes, every bad one refused at once."""
    checks = validation.Checks()
    sizes = {
        "vcpus": checks(lambda: validation.template_size(vcpus, field="vcpus")),
        "memory_mib": checks(lambda: validation.template_size(memory_mib, field="memoryMib")),
        "disk_gib": checks(lambda: validation.template_size(disk_gib, field="diskGib")),
    }
    checks.done()
    return {key: value for key, value in sizes.items() if value is not None}


def machine_spec(template: Template, *, version: int | None = None) -> MachineSpec:
    """A new machine's spec: of the template's version `version` (a lab's pinned one), else of
    its current image."""
    image, number = template.image, None
    chosen = next((v for v in template.versions if v.number == version), None) if version is not None else None
    if chosen is not None:
        image, number = image_rules.file_name(chosen.digest), chosen.number
    return MachineSpec(template=template.name, image=image, os=template.os, vcpus=template.vcpus,
                       memory_mib=template.memory_mib, disk_gib=template.disk_gib, version=number)


def newest_version(template: Template) -> int | None:
    """The version new labs get: the newest one not retired."""
    kept = [v.number for v in template.versions if not v.retired]
    return max(kept) if kept else None


def _teachers(names: Sequence[str]) -> list[str]:
    return sorted({roster.username(n.strip().lower(), field="teachers") for n in names if n.strip()})


class TemplateOperations(Operations):
    """Templates as a caller may use them: staff read those they may use, admins change them."""

    @operation(STAFF, field="templates")
    async def list_templates(self) -> list[Template]:
        return await self.services.templates.list_templates(
            teacher=None if self.actor.is_admin else self.actor.name)

    @operation(STAFF)
    async def template_availability(self) -> dict[str, placement.Availability]:
        """For the templates the caller may use: how many machines the hosts could take now
        (the new-lab form shows it, and preselects one that can run)."""
        templates = await self.services.templates.list_templates(
            teacher=None if self.actor.is_admin else self.actor.name)
        return await self.services.placement.availability(templates)

    @operation(TEMPLATE_USABLE, field="template")
    async def get_template(self, name: str) -> Template:
        return await self.services.templates.get_template(name)

    @operation(ADMIN, audit="createTemplate", target=named("template"))
    async def create_template(self, *, name: str, title: str | None, description: str | None, os: str,
                              image: str, vcpus: int, memory_mib: int, disk_gib: int,
                              teachers: Sequence[str] = ()) -> Template:
        return await self.services.templates.create_template(
            name=name, title=title, description=description, os=os, image=image, vcpus=vcpus,
            memory_mib=memory_mib, disk_gib=disk_gib, teachers=teachers)

    @operation(ADMIN, audit="updateTemplate", target=named("template"))
    async def update_template(self, name: str, *, title: str | None = None, description: str | None = None,
                              os: str | None = None, image: str | None = None, vcpus: int | None = None,
                              memory_mib: int | None = None, disk_gib: int | None = None,
                              teachers: Sequence[str] | None = None) -> Template:
        return await self.services.templates.update_template(
            name, title=title, description=description, os=os, image=image, vcpus=vcpus,
            memory_mib=memory_mib, disk_gib=disk_gib, teachers=teachers)

    @operation(ADMIN, audit="deleteTemplate", target=named("template"))
    async def delete_template(self, name: str) -> Template:
        return await self.services.templates.delete_template(name)
