"""Template versions: a template's numbered images, which labs pin and machines are based on.

Publishing a version (an image of the store, with a note, its author and date) appends it
under the next number and makes it what new labs get; it never touches an existing machine:
each machine's spec names the image its disk is based on, and keeps it. A lab pins the version
it was made with; its teacher moves it to another (`move_lab`): from then on its new machines
and every machine reset start from that version (a reset is the moment a machine's changes are
erased anyway), the others keep their disks on the old base. A version no lab pins and no
machine is based on can be retired; an image no kept version and no machine uses any more is
then garbage-collected: deleted from the store and marked retired, which hosts hear in their
heartbeat's answer (`Host.drop_images`) and drop their copies.

Several replicas: a version number is taken with a conditional push (the template must still
have exactly the versions read), and a retirement is checked again after it is written (a lab
moved onto the version meanwhile on another replica puts it back).
"""

from __future__ import annotations

from typing import Any

from kubekvm import image_rules, validation
from kubekvm.errors import Conflict, NotFound, ValidationFailed
from kubekvm.image_models import Image
from kubekvm.models import Deployment, Machine, Template, TemplateVersion, utcnow
from kubekvm.services.context import Noun, backoff
from kubekvm.services.rulebook import ADMIN, LAB_MANAGED
from kubekvm.services.rules import Operations, named, operation
from kubekvm.services.templates import newest_version

NOTE_MAX = 500
ATTEMPTS = 20


def version_label(number: int | None) -> str:
    return f"v{number}" if number is not None else "unversioned"


class TemplateVersions(Noun):
    """Template versions' records, unchecked (callers use `TemplateVersionOperations`)."""

    async def publish_version(self, name: str, *, digest: str, note: str, author: str) -> Template:
        digest = image_rules.digest(digest)
        note = validation.note(note)[:NOTE_MAX] if note else ""
        image = await Image.find_one(Image.digest == digest)
        if image is None or image.retired:
            raise ValidationFailed("digest", f"There is no image {digest} in the image store; import it first.")
        for attempt in range(ATTEMPTS):
            template = await self.core.templates.get_template(name)
            count = len(template.versions)
            version = TemplateVersion(number=(template.versions[-1].number if count else 0) + 1,
                                      digest=digest, note=note, author=author)
            written = await Template.get_pymongo_collection().update_one(
                {"_id": template.id, "versions": {"$size": count}},
                {"$push": {"versions": version.model_dump()},
                 "$set": {"image": image_rules.file_name(digest), "updated_at": utcnow()}})
            if written.modified_count:
                return await self.core.templates.get_template(name)
            await backoff(attempt)
        raise Conflict(f"Template {name!r} is changing too fast; try again.")

    async def move_lab(self, name: str, *, version: int) -> Deployment:
        lab = await self.core.labs.get_deployment(name)
        template = await self.core.templates.get_template(lab.template)
        chosen = _version(template, version)
        if chosen.retired:
            raise ValidationFailed("version", f"Version v{version} of {template.name} is retired.")
        await Deployment.get_pymongo_collection().update_one(
            {"_id": lab.id}, {"$set": {"template_version": version, "updated_at": utcnow()}})
        await self.ctx.note(name, f"moved to {template.name} v{version}: new and reset machines start from it; "
                                  "the others keep their disks until they are reset")
        fresh = await self.core.labs.get_deployment(name)
        self.ctx.published(fresh)
        return fresh

    async def users(self, template: str, version: int) -> list[str]:
        labs = [d.name for d in await Deployment.find({"template": template, "template_version": version})
                .limit(5).to_list()]
        machines = [m.name for m in await Machine.find({"spec.template": template, "spec.version": version,
                                                        "retired": False}).limit(5).to_list()]
        return [*(f"lab {n}" for n in labs), *(f"machine {n}" for n in machines)]

    async def retire_version(self, name: str, *, version: int) -> Template:
        template = await self.core.templates.get_template(name)
        chosen = _version(template, version)
        if chosen.retired:
            return template
        if not [v for v in template.versions if not v.retired and v.number != version]:
            raise Conflict(f"v{version} is the only version of {name} left; publish another before retiring it.")
        used = await self.users(name, version)
        if used:
            raise Conflict(f"v{version} of {name} is still used by {', '.join(used)}: move those labs to "
                           "another version and reset or delete those machines first.")
        await self._mark(template, version, retired=True)
        used = await self.users(name, version)
        if used:  # a lab moved onto it on another replica meanwhile
            await self._mark(template, version, retired=False)
            raise Conflict(f"v{version} of {name} was taken into use meanwhile by {', '.join(used)}.")
        await self.collect(chosen.digest)
        return await self.core.templates.get_template(name)

    async def _mark(self, template: Template, version: int, *, retired: bool) -> None:
        fresh = await self.core.templates.get_template(template.name)
        changes: dict[str, Any] = {"versions.$[v].retired": retired, "updated_at": utcnow()}
        for v in fresh.versions:
            if v.number == version:
                v.retired = retired
        newest = newest_version(fresh)
        kept = next((v for v in fresh.versions if v.number == newest), None)
        if kept is not None:
            changes["image"] = image_rules.file_name(kept.digest)
        await Template.get_pymongo_collection().update_one(
            {"_id": template.id}, {"$set": changes}, array_filters=[{"v.number": version}])

    async def collect(self, digest: str) -> bool:
        """Deletes an image no kept version of any template and no machine uses; True if it did."""
        file = image_rules.file_name(digest)
        if await Template.find({"versions": {"$elemMatch": {"digest": digest, "retired": False}}}).count():
            return False
        if await Machine.find({"spec.image": file, "retired": False}).count():
            return False
        await Image.get_pymongo_collection().update_one({"digest": digest}, {"$set": {"retired": True}})
        await self.core.images.store.remove(digest)
        return True


def _version(template: Template, number: int) -> TemplateVersion:
    found = next((v for v in template.versions if v.number == number), None)
    if found is None:
        raise NotFound(f"Template {template.name} has no version v{number}.")
    return found


class TemplateVersionOperations(Operations):
    """Versions as a caller may use them: admins publish and retire, a lab's teacher moves it."""

    @operation(ADMIN, audit="publishTemplateVersion", target=named("template"),
               message=lambda args, actor: f"image {args['digest']}")
    async def publish_template_version(self, name: str, *, digest: str, note: str = "") -> Template:
        return await self.services.template_versions.publish_version(name, digest=digest, note=note,
                                                                     author=self.actor.name)

    @operation(LAB_MANAGED, audit="moveDeploymentToVersion", target=named("lab"),
               message=lambda args, actor: f"to v{args['version']}")
    async def move_deployment_to_version(self, name: str, *, version: int) -> Deployment:
        return await self.services.template_versions.move_lab(name, version=version)

    @operation(ADMIN, audit="retireTemplateVersion", target=named("template"),
               message=lambda args, actor: f"v{args['version']}")
    async def retire_template_version(self, name: str, *, version: int) -> Template:
        return await self.services.template_versions.retire_version(name, version=version)
