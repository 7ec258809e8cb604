"""The forms that make, change and delete a lab: new, edit (title, replicas, power) and delete
(which asks for the lab's name while its machines run).

Each handler reads the form, asks the service layer, and renders. The form handlers check every
field against the shared rules in `kubekvm.validation` before calling the service, so a teacher
sees all that is wrong at once; the service checks again (it is the authority, and GraphQL calls
it without the pages).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kubekvm import validation
from kubekvm.auth import services_for
from kubekvm.config import Settings
from kubekvm.errors import Conflict, NotFound, ValidationFailed
from kubekvm.models import Deployment, Power
from kubekvm.pages.common import Flash, FormState, Renderer, is_htmx, raw, text
from kubekvm.pages.fragments import summary

LAB_FIELDS = ("name", "title", "template", "replicas")
EDIT_FIELDS = ("title", "replicas", "power")


class LabFormPages:
    def __init__(self, *, renderer: Renderer, settings: Settings) -> None:
        self.renderer = renderer
        self.settings = settings

    async def new(self, request: Request) -> Response:
        chosen = request.query_params.get("template", "")
        return await self._form(request, FormState(values={
            "name": "", "title": "", "template": chosen, "replicas": "",
        }))

    async def create(self, request: Request) -> Response:
        form = await request.form()
        state = FormState(values={key: text(form, key) for key in LAB_FIELDS} | {"replicas": raw(form, "replicas")})
        values = state.values
        replicas = self._check(state, name=values["name"], title=values["title"],
                               replicas=values["replicas"])
        if not values["template"]:
            state.fail(ValidationFailed("template", "Choose the template the machines are made from."))
        if not state.errors and replicas is not None:
            try:
                lab = await services_for(request).create_deployment(
                    name=values["name"], title=values["title"] or None,
                    template=values["template"], replicas=replicas,
                )
            except ValidationFailed as error:
                state.fail(error)
            except Conflict as error:  # the name is taken: say so beside the name
                state.fail(ValidationFailed("name", error.message))
            else:
                return self.renderer.done(request, to=f"/labs/{lab.name}", flash=Flash(
                    f"Lab {lab.name} created: {replicas} machine(s) of {lab.template} are being made."))
        return await self._form(request, state, status=422)

    async def edit(self, request: Request) -> Response:
        lab = await services_for(request).get_deployment(str(request.path_params["name"]))
        return await self._form(request, FormState(values={
            "title": lab.title, "replicas": str(lab.replicas), "power": lab.power.value,
        }), lab=lab)

    async def update(self, request: Request) -> Response:
        services = services_for(request)
        lab = await services.get_deployment(str(request.path_params["name"]))
        form = await request.form()
        state = FormState(values={key: text(form, key) for key in EDIT_FIELDS} | {"replicas": raw(form, "replicas")})
        values = state.values
        replicas = self._check(state, name=None, title=values["title"], replicas=values["replicas"],
                               fallback=lab.name)
        power: Power | None = None
        try:
            power = Power(values["power"])
        except ValueError:
            state.fail(ValidationFailed("power", "Choose whether the machines run or stay stopped."))
        if not state.errors and replicas is not None:
            try:
                updated = await services.update_deployment(
                    lab.name, title=values["title"], replicas=replicas, power=power,
                )
            except ValidationFailed as error:
                state.fail(error)
            else:
                return self.renderer.done(request, to=f"/labs/{lab.name}",
                                          flash=Flash(_saved(before=lab, after=updated)))
        return await self._form(request, state, lab=lab, status=422)

    def _check(self, state: FormState, *, name: str | None, title: str, replicas: str,
               fallback: str = "") -> int | None:
        """Every field against the shared rules, collecting all the messages."""
        if name is not None:
            try:
                validation.name(name)
            except ValidationFailed as error:
                state.fail(error)
        try:
            validation.title(title, fallback=fallback or name or "")
        except ValidationFailed as error:
            state.fail(error)
        try:
            return validation.replicas(replicas, maximum=self.settings.max_replicas)
        except ValidationFailed as error:
            state.fail(error)
            return None

    async def _form(self, request: Request, state: FormState, *, lab: Deployment | None = None,
                    status: int = 200) -> Response:
        services = services_for(request)
        templates = await services.list_templates()
        available = await services.template_availability() if lab is None else {}
        if lab is None and not state.values.get("template") and templates:
            # Preselect a template the hosts can run now (else the first): the one with most room.
            runnable = [t for t in templates if t.name in available and available[t.name].can_run]
            state.values["template"] = (max(runnable, key=lambda t: available[t.name].machines)
                                        if runnable else templates[0]).name
        context = {
            "state": state, "lab": lab, "templates": templates, "available": available,
            "max_replicas": self.settings.max_replicas, "section": "new-lab" if lab is None else "labs",
        }
        if is_htmx(request) and request.method == "POST":
            return self.renderer.htmx(self.renderer.fragment("labs/_form.html", **context),
                                      status=status)
        return self.renderer.page(request, "labs/form.html", context, status=status)

    async def confirm_delete(self, request: Request) -> Response:
        lab = await summary(services_for(request), str(request.path_params["name"]))
        return self.renderer.page(request, "labs/delete.html", {
            "section": "labs", "s": lab, "state": FormState(values={"confirm": ""}),
        })

    async def delete(self, request: Request) -> Response:
        services = services_for(request)
        lab = await summary(services, str(request.path_params["name"]))
        form = await request.form()
        state = FormState(values={"confirm": text(form, "confirm")})
        # Running machines are students' work in progress: make the teacher type the name,
        # here on the server too, so a stray POST cannot skip the question.
        if lab.running and state.values["confirm"] != lab.lab.name:
            state.fail(ValidationFailed("confirm", (
                f"{lab.running} machine(s) of this lab are running. "
                f"Type the lab's name, {lab.lab.name}, to delete it.")))
            context = {"section": "labs", "s": lab, "state": state}
            if is_htmx(request):
                return self.renderer.htmx(
                    self.renderer.fragment("labs/_delete_form.html", **context), status=422)
            return self.renderer.page(request, "labs/delete.html", context, status=422)
        await services.delete_deployment(lab.lab.name)
        try:
            await services.get_deployment(lab.lab.name)
            flash = Flash(f"Deleting lab {lab.lab.name}… it disappears once its hosts have "
                          "removed its machines.")
        except NotFound:
            flash = Flash(f"Lab {lab.lab.name} deleted.")
        return self.renderer.done(request, to="/", flash=flash)


def _saved(*, before: Deployment, after: Deployment) -> str:
    said = [f"Lab {after.name} saved"]
    if after.replicas != before.replicas:
        said.append(f"scaling from {before.replicas} to {after.replicas} machine(s)")
    if after.power != before.power:
        said.append("starting its machines" if after.power == Power.RUNNING else "stopping its machines")
    return ": ".join([said[0], ", ".join(said[1:])]) + "." if len(said) > 1 else said[0] + "."
