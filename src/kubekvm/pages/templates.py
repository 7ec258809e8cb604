"""The VM templates pages: the list (teachers read), and creating, editing and deleting one (admins).

Template form fields are named as the service's `ValidationFailed.field` names them (`memoryMib`,
`diskGib`), so a service message lands beside the field it is about without a mapping table.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from kubekvm import validation
from kubekvm.auth import services_for
from kubekvm.errors import Conflict, KubeKVMError, ValidationFailed
from kubekvm.models import Template
from kubekvm.pages.common import Flash, FormState, Renderer, is_htmx, raw, text

TEMPLATE_FIELDS = ("name", "title", "description", "os", "image", "vcpus", "memoryMib", "diskGib", "teachers")
SIZES = {"vcpus": "vCPUs", "memoryMib": "Memory", "diskGib": "Disk size"}


class TemplatePages:
    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def templates(self, request: Request) -> Response:
        services = services_for(request)
        return self.renderer.page(request, "vm-templates/list.html", {
            "section": "templates", "templates": await services.list_templates(),
        })

    async def new_template(self, request: Request) -> Response:
        return self._form(request, FormState(values={
            "name": "", "title": "", "description": "", "os": "linux", "image": "",
            "vcpus": "1", "memoryMib": "1024", "diskGib": "10", "teachers": "",
        }))

    async def create_template(self, request: Request) -> Response:
        form = await request.form()
        state = FormState(values={key: raw(form, key) if key in SIZES else text(form, key) for key in TEMPLATE_FIELDS})
        sizes = _check(state, creating=True)
        if not state.errors:
            values = state.values
            try:
                template = await services_for(request).create_template(
                    name=values["name"], title=values["title"] or None,
                    description=values["description"], os=values["os"], image=values["image"],
                    vcpus=sizes["vcpus"], memory_mib=sizes["memoryMib"], disk_gib=sizes["diskGib"],
                    teachers=_names(values["teachers"]),
                )
            except ValidationFailed as error:
                state.fail(error)
            except Conflict as error:
                state.fail(ValidationFailed("name", error.message))
            else:
                return self.renderer.done(request, to="/templates",
                                          flash=Flash(f"Template {template.name} created."))
        return self._form(request, state, status=422)

    async def edit_template(self, request: Request) -> Response:
        template = await services_for(request).get_template(str(request.path_params["name"]))
        return self._form(request, FormState(values={
            "name": template.name, "title": template.title, "description": template.description,
            "os": template.os.value, "image": template.image, "vcpus": str(template.vcpus),
            "memoryMib": str(template.memory_mib), "diskGib": str(template.disk_gib),
            "teachers": ", ".join(template.teachers),
        }), template=template)

    async def update_template(self, request: Request) -> Response:
        services = services_for(request)
        template = await services.get_template(str(request.path_params["name"]))
        form = await request.form()
        state = FormState(values={key: raw(form, key) if key in SIZES else text(form, key) for key in TEMPLATE_FIELDS})
        state.values["name"] = template.name
        sizes = _check(state, creating=False)
        if not state.errors:
            values = state.values
            try:
                await services.update_template(
                    template.name, title=values["title"], description=values["description"],
                    os=values["os"], image=values["image"], vcpus=sizes["vcpus"],
                    memory_mib=sizes["memoryMib"], disk_gib=sizes["diskGib"],
                    teachers=_names(values["teachers"]),
                )
            except ValidationFailed as error:
                state.fail(error)
            else:
                return self.renderer.done(request, to="/templates",
                                          flash=Flash(f"Template {template.name} saved."))
        return self._form(request, state, template=template, status=422)

    async def delete_template(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        try:
            await services_for(request).delete_template(name)
        except KubeKVMError as error:  # in use (Conflict) or already gone
            return self.renderer.error(request, error, back="/templates")
        flash = Flash(f"Template {name} deleted.")
        if is_htmx(request):
            return self.renderer.htmx("", flash=flash)  # the row's outerHTML becomes nothing
        return self.renderer.done(request, to="/templates", flash=flash)

    def _form(self, request: Request, state: FormState, *, template: Template | None = None,
              status: int = 200) -> Response:
        context = {"state": state, "template": template, "section": "templates",
                   "os_families": validation.OS_FAMILIES}
        if is_htmx(request) and request.method == "POST":
            return self.renderer.htmx(self.renderer.fragment("vm-templates/_form.html", **context),
                                      status=status)
        return self.renderer.page(request, "vm-templates/form.html", context, status=status)


def _names(raw: str) -> list[str]:
    """"ana, luis" or one per line: the teachers a template is restricted to."""
    return [n for n in raw.replace(",", " ").split() if n]


def _check(state: FormState, *, creating: bool) -> dict[str, int]:
    """Every template field against the shared rules, collecting all the messages."""
    values = state.values
    checks: list[Callable[[], object]] = [
        lambda: validation.title(values["title"], fallback=values["name"]),
        lambda: validation.description(values["description"]),
        lambda: validation.os_family(values["os"]),
        lambda: validation.image(values["image"]),
    ]
    if creating:
        checks.insert(0, lambda: validation.name(values["name"]))
    for check in checks:
        try:
            check()
        except ValidationFailed as error:
            state.fail(error)
    sizes: dict[str, int] = {}
    for key, label in SIZES.items():
        try:
            sizes[key] = validation.template_size(values[key], field=key, label=label)
        except ValidationFailed as error:
            state.fail(error)
    return sizes
