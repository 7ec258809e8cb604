"""The power buttons: a lab's start and stop (every machine of it), and a machine's start, stop
and reset (which students use on "My VMs" too).

Without JavaScript a button posts and comes back (303) to where it was pressed (`next`, checked
by `safe_next`) with a flash; a reset asks on a page of its own, as there was no confirm() dialog.
With htmx the answer is the fragment the button sits in, drawn afresh: the lab's card or status,
a lab page's machine row, or a student's row on "My VMs".
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kubekvm.auth import services_for
from kubekvm.errors import KubeKVMError, NotFound
from kubekvm.pages.common import Flash, Renderer, hx_target, is_htmx, redirect, safe_next, text
from kubekvm.pages.fragments import Fragments, clock_for, machine_row, my_rows, summary


class PowerPages:
    def __init__(self, *, renderer: Renderer, fragments: Fragments) -> None:
        self.renderer = renderer
        self.fragments = fragments

    async def start(self, request: Request) -> Response:
        return await self._power(request, start=True)

    async def stop(self, request: Request) -> Response:
        return await self._power(request, start=False)

    async def _power(self, request: Request, *, start: bool) -> Response:
        services = services_for(request)
        name = str(request.path_params["name"])
        form = await request.form()
        back = safe_next(text(form, "next"), f"/labs/{name}")
        try:
            lab = await (services.start_deployment(name) if start else services.stop_deployment(name))
        except KubeKVMError as error:
            return self.renderer.error(request, error, back=back)
        flash = Flash(f"Starting every machine of lab {lab.name}." if start
                      else f"Stopping every machine of lab {lab.name}.")
        if not is_htmx(request):
            return redirect(back, flash)
        fresh = await summary(services, name)
        target = hx_target(request)
        html = (self.fragments.card(fresh) if target == f"lab-{name}"
                else self.fragments.status(fresh) if target == "lab-status" else "")
        return self.renderer.htmx(html, flash=flash, reswap=None if html else "none")

    async def machine_action(self, request: Request) -> Response:
        services = services_for(request)
        name = str(request.path_params["name"])
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
            return redirect(back, flash)
        if services.actor.is_student:
            mine = next(m for m in await my_rows(services) if m.row.machine.name == name)
            return self.renderer.htmx(self.fragments.my_row(mine), flash=flash)
        lab = await services.get_deployment(machine.deployment)
        clock = await clock_for(services, [machine])
        return self.renderer.htmx(self.fragments.row(machine_row(machine, phase=lab.phase, clock=clock)),
                                  flash=flash)
