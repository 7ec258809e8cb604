"""The pages of template versions: a template's versions (admins publish an image of the store as
the next one, and retire unused ones), and a lab's version (its teacher moves it to another,
told plainly what a reset then erases).

  GET  /templates/{name}/versions   POST /templates/{name}/versions (publish)
  POST /templates/{name}/versions/{number}/retire
  GET  /labs/{name}/version         POST /labs/{name}/version (move)
  POST /machines/{name}/publish     a stopped machine published as a version (or a new template)
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kubekvm import validation
from kubekvm.auth import services_for
from kubekvm.errors import KubeKVMError
from kubekvm.pages.common import Flash, Renderer, raw, text


def _number(value: str, *, field: str) -> int:
    return validation.whole_number(value, field=field, minimum=1, maximum=1_000_000)


class VersionPages:
    """The handlers; each is a thin adapter over the operations of `services.template_versions`
    and `services.publishing`."""

    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def template_versions(self, request: Request) -> Response:
        services = services_for(request)
        template = await services.get_template(str(request.path_params["name"]))
        images = await services.list_images() if services.actor.is_admin else []
        return self.renderer.page(request, "vm-templates/versions.html", {
            "section": "templates", "template": template,
            "images": [i for i in images if not i.retired],
        })

    async def publish(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        back = f"/templates/{name}/versions"
        form = await request.form()
        try:
            template = await services_for(request).publish_template_version(
                name, digest=text(form, "digest"), note=text(form, "note"))
        except KubeKVMError as error:
            return self.renderer.error(request, error, back=back)
        number = template.versions[-1].number
        return self.renderer.done(request, to=back, flash=Flash(
            f"Published v{number} of {name}. New labs get it; existing machines keep their disks."))

    async def retire(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        back = f"/templates/{name}/versions"
        try:
            number = _number(str(request.path_params["number"]), field="version")
            await services_for(request).retire_template_version(name, version=number)
        except KubeKVMError as error:
            return self.renderer.error(request, error, back=back)
        return self.renderer.done(request, to=back, flash=Flash(
            f"Retired v{number} of {name}; its image is deleted from the store and the hosts once nothing uses it."))

    async def lab_version(self, request: Request) -> Response:
        services = services_for(request)
        lab = await services.get_deployment(str(request.path_params["name"]))
        template = await services.get_template(lab.template)
        machines = await services.list_machines(deployment=lab.name)
        return self.renderer.page(request, "labs/version.html", {
            "section": "labs", "lab": lab, "template": template, "machines": machines,
        })

    async def move(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        back = f"/labs/{name}/version"
        form = await request.form()
        try:
            number = _number(raw(form, "version"), field="version")
            await services_for(request).move_deployment_to_version(name, version=number)
        except KubeKVMError as error:
            return self.renderer.error(request, error, back=back)
        return self.renderer.done(request, to=back, flash=Flash(
            f"Lab {name} now uses v{number}: new machines start from it, and so does each machine when it is "
            "reset (which erases its changes). The others keep their disks."))

    async def publish_machine(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        services = services_for(request)
        machine = await services.get_machine(name)
        back = f"/labs/{machine.deployment}/version"
        form = await request.form()
        try:
            await services.publish_machine(name, note=text(form, "note"),
                                           new_template=text(form, "newTemplate") or None)
        except KubeKVMError as error:
            return self.renderer.error(request, error, back=back)
        return self.renderer.done(request, to=back, flash=Flash(
            f"Publishing {name}: its host flattens and uploads its disk; the machine is locked until it is done."))
