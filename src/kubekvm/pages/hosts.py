"""The hosts page: the KVM hosts and what they hold (teachers read), and the host tokens admins
issue for the hosts' agents (a new one shown once, on the page the form leads to).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kubekvm.auth import services_for
from kubekvm.errors import ValidationFailed
from kubekvm.models import ApiToken
from kubekvm.pages.common import Flash, FormState, Renderer, text
from kubekvm.pages.reveal import reveal_and_go, revealed


class HostPages:
    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def hosts(self, request: Request) -> Response:
        return await self._hosts(request, new_token=None, state=FormState(values={"host": ""}))

    async def _hosts(self, request: Request, *, new_token: tuple[ApiToken | None, str] | None, state: FormState,
                     status: int = 200) -> Response:
        services = services_for(request)
        return self.renderer.page(request, "hosts.html", {
            "section": "hosts", "hosts": await services.list_hosts(),
            "overcommit": services.settings.cpu_overcommit,
            "timeout": services.settings.host_timeout_seconds,
            "host_tokens": await services.host_tokens() if services.actor.is_admin else [],
            "new_token": new_token or self._carried_token(request), "state": state,
        }, status=status)

    async def host_token(self, request: Request) -> Response:
        """A token for a host's agent, shown once on the page that made it."""
        form = await request.form()
        state = FormState(values={"host": text(form, "host")})
        try:
            made = await services_for(request).create_host_token(host=state.values["host"],
                                                                label=text(form, "label"))
        except ValidationFailed as error:
            state.fail(ValidationFailed("host", error.message))
            return await self._hosts(request, new_token=None, state=state, status=422)
        return reveal_and_go(request, to="/hosts", kind="host-token", secret={"token": made[1]},
                             flash=Flash(f"Token for host {made[0].owner} created."))

    @staticmethod
    def _carried_token(request: Request) -> tuple[None, str] | None:
        carried = revealed(request, kind="host-token")
        return (None, carried["token"]) if carried is not None else None
