"""The labs pages: the list, a lab's machines, roster and events, the new/edit/delete forms, and
the lab-wide and per-machine power buttons (which students use on "My VMs" too).

Each handler reads the form, asks the service layer, and renders. The form handlers check every
field against the shared rules in `kubekvm.validation` before calling the service, so a teacher
sees all that is wrong at once; the service checks again (it is the authority, and GraphQL calls
it without the pages).
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from kubekvm import roster, validation
from kubekvm.auth import services_for
from kubekvm.authorized import Authorized
from kubekvm.config import Settings
from kubekvm.errors import Conflict, KubeKVMError, NotFound, ValidationFailed
from kubekvm.models import Deployment, Phase, Power
from kubekvm.pages.common import (
    Flash,
    FormState,
    Renderer,
    hx_target,
    is_htmx,
    raw,
    safe_next,
    set_flash,
    text,
)
from kubekvm.pages.fragments import (
    PAGE_SIZE,
    Fragments,
    ListView,
    clock_for,
    machine_row,
    machine_rows,
    my_rows,
    summaries,
    summary,
)
from kubekvm.pages.reveal import reveal_and_go, revealed
from kubekvm.pages.timetables import shown
from kubekvm.pages.usage import usage_context

LAB_FIELDS = ("name", "title", "template", "replicas")
EDIT_FIELDS = ("title", "replicas", "power")


def services_of(request: Request) -> Authorized:
    return services_for(request)


def _name(request: Request) -> str:
    return str(request.path_params["name"])


class LabPages:
    def __init__(self, *, renderer: Renderer, fragments: Fragments, settings: Settings) -> None:
        self.renderer = renderer
        self.fragments = fragments
        self.settings = settings

    # ------------------------------------------------------------------ reading

    async def index(self, request: Request) -> Response:
        services = services_of(request)
        if services.actor.is_student:
            return RedirectResponse("/my", status_code=303)
        view = ListView.parse(request.query_params.get("phase"), request.query_params.get("offset"))
        page = await services.list_deployments(phase=view.phase, offset=view.offset, limit=PAGE_SIZE)
        return self.renderer.page(request, "labs/list.html", {
            "section": "labs", "labs": await summaries(services, page.items), "view": view,
            "total": page.total, "page_size": PAGE_SIZE, "phases": [p.value for p in Phase],
            "oob": False,
        })

    services_of = staticmethod(services_of)

    async def detail(self, request: Request) -> Response:
        return await self.render_detail(request, _name(request))

    async def render_detail(self, request: Request, name: str, *, extra: dict[str, object] | None = None,
                            status: int = 200) -> Response:
        """A lab's page; `extra` replaces parts of it (a refused form, shown again with why)."""
        services = services_of(request)
        lab = await summary(services, name)
        machines = await services.list_machines(deployment=lab.lab.name)
        return self.renderer.page(request, "labs/detail.html", {
            "section": "labs", "s": lab, "oob": False,
            "rows": machine_rows(machines, phase=lab.lab.phase, clock=await clock_for(services, machines)),
            "events": await services.lab_events(lab.lab.name),
            "course": shown(await services.course(lab.lab.name)),
            **await self._roster_context(services, lab.lab, text=None),
            **await usage_context(services, lab.lab),
            **(extra or {}),
        }, status=status)

    async def _roster_context(self, services: Authorized, lab: Deployment, *, text: str | None,
                              error: str | None = None) -> dict[str, object]:
        students = {u.name: u for u in await services.students_of(lab.name)}
        machines = {m.student: m.name for m in await services.list_machines(deployment=lab.name) if m.student}
        return {"roster": [(name, students.get(name), machines.get(name)) for name in lab.roster],
                "roster_text": "\n".join(lab.roster) if text is None else text, "roster_error": error,
                "directory": services.settings.identity.ldap is not None}

    # ------------------------------------------------------------------ roster

    async def set_roster(self, request: Request) -> Response:
        services = services_of(request)
        lab = await services.get_deployment(_name(request))
        form = await request.form()
        typed = text(form, "students")
        upload = form.get("csv")
        try:
            names = roster.parse(typed)
            if isinstance(upload, UploadFile) and upload.filename:
                content = (await upload.read(1_000_000)).decode("utf-8-sig", errors="replace")
                names += [n for n in roster.parse(content) if n not in names]
            match = text(form, "match_replicas") == "yes"
            updated, unbound, created = await services.set_roster(lab.name, students=names, match_replicas=match)
        except ValidationFailed as error:
            return await self.render_detail(request, lab.name, status=422, extra=await self._roster_context(
                services, lab, text=typed, error=error.message))
        said = [f"Roster of {updated.name} saved: {len(updated.roster)} student(s)"]
        if created:
            said.append(f"new accounts (no password yet): {', '.join(created)}")
        if unbound:
            said.append(f"without a machine, as the lab has fewer machines than students: {', '.join(unbound)}")
        return _back(f"/labs/{lab.name}#roster", Flash("; ".join(said) + ".", "error" if unbound else "ok"))

    async def roster_from_group(self, request: Request) -> Response:
        """The roster from a directory group (or refreshed from the one it came from); a refusal
        comes back as the guard's flash."""
        services = services_of(request)
        form = await request.form()
        updated, unbound, created, left_out = await services.fill_roster_from_group(
            _name(request), group=text(form, "group") or None, match_replicas=text(form, "match_replicas") == "yes")
        said = [f"Roster of {updated.name} filled from {updated.roster_group}: {len(updated.roster)} student(s)"]
        if created:
            said.append(f"new accounts: {', '.join(created)}")
        if left_out:
            said.append(f"left out as staff: {', '.join(left_out)}")
        if unbound:
            said.append(f"without a machine, as the lab has fewer machines than students: {', '.join(unbound)}")
        return _back(f"/labs/{updated.name}#roster", Flash("; ".join(said) + ".", "error" if unbound else "ok"))

    async def password_link(self, request: Request) -> Response:
        services = services_of(request)
        lab = await services.get_deployment(_name(request))
        student = str(request.path_params["student"])
        if student not in lab.roster:
            raise NotFound(f"{student!r} is not on the roster of {lab.name}.")
        code = await services.password_link(student)
        link = str(request.url_for("set_password_page").include_query_params(code=code))
        return reveal_and_go(request, to=f"/labs/{lab.name}/roster/{student}/link", kind="link",
                             secret={"name": student, "link": link})

    async def password_link_page(self, request: Request) -> Response:
        """The link just made (once); afterwards, back to the lab's roster."""
        services = services_of(request)
        lab = await services.get_deployment(_name(request))
        student = str(request.path_params["student"])
        carried = revealed(request, kind="link")
        if carried is None or carried["name"] != student:
            return RedirectResponse(f"/labs/{lab.name}#roster", status_code=303)
        return self.renderer.page(request, "labs/password_link.html", {
            "section": "labs", "lab": lab, "student": student, "link": carried["link"],
        })

    # -------------------------------------------------------------- new / edit

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
                lab = await services_of(request).create_deployment(
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
        lab = await services_of(request).get_deployment(_name(request))
        return await self._form(request, FormState(values={
            "title": lab.title, "replicas": str(lab.replicas), "power": lab.power.value,
        }), lab=lab)

    async def update(self, request: Request) -> Response:
        services = services_of(request)
        lab = await services.get_deployment(_name(request))
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
        services = services_of(request)
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

    # ------------------------------------------------------------------ delete

    async def confirm_delete(self, request: Request) -> Response:
        lab = await summary(services_of(request), _name(request))
        return self.renderer.page(request, "labs/delete.html", {
            "section": "labs", "s": lab, "state": FormState(values={"confirm": ""}),
        })

    async def delete(self, request: Request) -> Response:
        services = services_of(request)
        lab = await summary(services, _name(request))
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

    # ----------------------------------------------------------- power buttons

    async def start(self, request: Request) -> Response:
        return await self._power(request, start=True)

    async def stop(self, request: Request) -> Response:
        return await self._power(request, start=False)

    async def _power(self, request: Request, *, start: bool) -> Response:
        services = services_of(request)
        name = _name(request)
        form = await request.form()
        back = safe_next(text(form, "next"), f"/labs/{name}")
        try:
            lab = await (services.start_deployment(name) if start else services.stop_deployment(name))
        except KubeKVMError as error:
            return self.renderer.error(request, error, back=back)
        flash = Flash(f"Starting every machine of lab {lab.name}." if start
                      else f"Stopping every machine of lab {lab.name}.")
        if not is_htmx(request):
            return _back(back, flash)
        fresh = await summary(services, name)
        target = hx_target(request)
        html = (self.fragments.card(fresh) if target == f"lab-{name}"
                else self.fragments.status(fresh) if target == "lab-status" else "")
        return self.renderer.htmx(html, flash=flash, reswap=None if html else "none")

    async def machine_action(self, request: Request) -> Response:
        services = services_of(request)
        name = _name(request)
        action = str(request.path_params["action"])
        if action not in ("start", "stop", "reset"):
            raise NotFound(f"Machines can be started, stopped or reset, not {action!r}.")
        form = await request.form()
        back = safe_next(text(form, "next"), "/")
        if action == "reset" and text(form, "confirmed") != "yes":
            # Without JavaScript there was no confirm() dialog: ask on a page of its own.
            machine = await services.get_machine(name)
            return self.renderer.page(request, "labs/reset.html", {
                "section": "labs", "machine": machine, "next": back,
            })
        try:
            if action == "start":
                machine = await services.start_machine(name)
                said = f"Starting {name}."
            elif action == "stop":
                machine = await services.stop_machine(name)
                said = f"Stopping {name}."
            else:
                machine = await services.reset_machine(name)
                said = f"Resetting {name}: its disk is rebuilt from the template."
        except KubeKVMError as error:
            return self.renderer.error(request, error, back=back)
        flash = Flash(said)
        if not is_htmx(request):
            return _back(back, flash)
        if services.actor.is_student:
            mine = next(m for m in await my_rows(services) if m.row.machine.name == name)
            return self.renderer.htmx(self.fragments.my_row(mine), flash=flash)
        lab = await services.get_deployment(machine.deployment)
        clock = await clock_for(services, [machine])
        return self.renderer.htmx(self.fragments.row(machine_row(machine, phase=lab.phase, clock=clock)),
                                  flash=flash)


def _back(to: str, flash: Flash) -> Response:
    response = RedirectResponse(to, status_code=303)
    set_flash(response, flash)
    return response


def _saved(*, before: Deployment, after: Deployment) -> str:
    said = [f"Lab {after.name} saved"]
    if after.replicas != before.replicas:
        said.append(f"scaling from {before.replicas} to {after.replicas} machine(s)")
    if after.power != before.power:
        said.append("starting its machines" if after.power == Power.RUNNING else "stopping its machines")
    return ": ".join([said[0], ", ".join(said[1:])]) + "." if len(said) > 1 else said[0] + "."
