"""The labs list and a lab's page (its machines, roster, usage limits and recent events).

The list sends a student to "My VMs"; a lab's page is drawn by `LabPages.render_detail`, which
the roster and usage forms (`kubekvm.pages.rosters`, `kubekvm.pages.usage`) call again with a
refused form in place, so the teacher sees it beside the rest of the lab. The new/edit/delete
forms are `kubekvm.pages.lab_forms`; the power buttons are `kubekvm.pages.power`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kubekvm.auth import services_for
from kubekvm.authorized import Authorized
from kubekvm.models import Deployment, Phase
from kubekvm.pages.common import Renderer, redirect
from kubekvm.pages.fragments import PAGE_SIZE, ListView, clock_for, machine_rows, summaries, summary
from kubekvm.pages.timetables import shown
from kubekvm.pages.usage import usage_context


class LabPages:
    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def index(self, request: Request) -> Response:
        services = services_for(request)
        if services.actor.is_student:
            return redirect("/my")
        view = ListView.parse(request.query_params.get("phase"), request.query_params.get("offset"))
        page = await services.list_deployments(phase=view.phase, offset=view.offset, limit=PAGE_SIZE)
        return self.renderer.page(request, "labs/list.html", {
            "section": "labs", "labs": await summaries(services, page.items), "view": view,
            "total": page.total, "page_size": PAGE_SIZE, "phases": [p.value for p in Phase],
            "oob": False,
        })

    async def detail(self, request: Request) -> Response:
        return await self.render_detail(request, str(request.path_params["name"]))

    async def render_detail(self, request: Request, name: str, *, extra: dict[str, object] | None = None,
                            status: int = 200) -> Response:
        """A lab's page; `extra` replaces parts of it (a refused form, shown again with why)."""
        services = services_for(request)
        lab = await summary(services, name)
        machines = await services.list_machines(deployment=lab.lab.name)
        return self.renderer.page(request, "labs/detail.html", {
            "section": "labs", "s": lab, "oob": False,
            "rows": machine_rows(machines, phase=lab.lab.phase, clock=await clock_for(services, machines)),
            "events": await services.lab_events(lab.lab.name),
            "course": shown(await services.course(lab.lab.name)),
            **await roster_context(services, lab.lab, text=None),
            **await usage_context(services, lab.lab),
            **(extra or {}),
        }, status=status)


async def roster_context(services: Authorized, lab: Deployment, *, text: str | None,
                         error: str | None = None) -> dict[str, object]:
    """What the roster part of a lab's page shows; `text` is what was typed, if it was refused."""
    students = {u.name: u for u in await services.students_of(lab.name)}
    machines = {m.student: m.name for m in await services.list_machines(deployment=lab.name) if m.student}
    return {"roster": [(name, students.get(name), machines.get(name)) for name in lab.roster],
            "roster_text": "\n".join(lab.roster) if text is None else text, "roster_error": error,
            "directory": services.settings.identity.ldap is not None}
