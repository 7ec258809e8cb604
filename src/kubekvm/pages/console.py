"""The console page: a machine's screen and keyboard in the browser, in a page of its own.

  GET  /machines/{name}/console          the page: a toolbar over noVNC's full-window canvas
  POST /machines/{name}/console/ticket   a one-time ticket for the page's websocket (JSON)

Who may open it is `kubekvm.access.objects.can_open_console` (through the caller's `console_ticket` operation): the
machine's student, the lab's teacher, admins; a classmate gets FORBIDDEN. The page carries no
ticket: its script asks for a fresh one each time it connects, with the session's CSRF token
like any state-changing request, and presents it on `WS /consoles/socket` (`kubekvm.console`,
as the subprotocol `kubekvm.ticket.<ticket>`) within `console_ticket_seconds`. When there is
none the JSON says why, so the page can offer what helps: MACHINE_OFF (with the machine's
desired state: stopped, offer to start it; running, wait), HOST_UNREACHABLE,
TOO_MANY_CONSOLES, FORBIDDEN, NOT_FOUND.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kubekvm.auth import actor_of, services_for
from kubekvm.console import TICKET_PROTOCOL
from kubekvm.errors import KubeKVMError, MachineOff
from kubekvm.pages.common import Renderer, status_of

NO_STORE = {"Cache-Control": "no-store"}


class ConsolePages:
    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def page(self, request: Request) -> Response:
        services = services_for(request)
        machine = await services.console_machine(str(request.path_params["name"]))
        lab = await services.get_deployment(machine.deployment)
        student = actor_of(request).is_student
        return self.renderer.page(request, "console.html", {
            "machine": machine, "lab_title": lab.title,
            "back": "/my" if student else f"/labs/{quote(lab.name)}",
            "back_label": "My VMs" if student else lab.title,
        })

    async def ticket(self, request: Request) -> Response:
        services = services_for(request)
        name = str(request.path_params["name"])
        try:
            ticket = await services.console_ticket(name)
        except KubeKVMError as error:
            said: dict[str, object] = {"code": error.code, "message": error.message}
            if isinstance(error, MachineOff):
                machine = await services.console_machine(name)
                said.update(observed=machine.observed.value, desired=machine.desired.value)
            return JSONResponse({"error": said}, status_code=status_of(error), headers=NO_STORE)
        return JSONResponse({"ticket": ticket, "socket": "/consoles/socket",
                             "protocol": f"{TICKET_PROTOCOL}{ticket}",
                             "expiresIn": services.settings.console_ticket_seconds}, headers=NO_STORE)
