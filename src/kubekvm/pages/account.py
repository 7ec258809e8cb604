"""Your account page: who you are, your API tokens (make, revoke) and changing your password.

A new token is shown once, on the page the form leads to (`kubekvm.pages.reveal`), and never
again; a password change keeps this session and ends every other one of the user's.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kubekvm import credentials
from kubekvm.auth import services_for
from kubekvm.errors import Throttled, ValidationFailed
from kubekvm.models import ApiToken
from kubekvm.pages.common import Flash, FormState, Renderer, redirect, safe_next, text
from kubekvm.pages.reveal import reveal_and_go, revealed


class AccountPages:
    """The signed-in person's own account and tokens."""

    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def account(self, request: Request) -> Response:
        return await self._account(request)

    async def _account(self, request: Request, *, state: FormState | None = None, pw: FormState | None = None,
                       new_token: tuple[ApiToken | None, str] | None = None, status: int = 200) -> Response:
        services = services_for(request)
        carried = revealed(request, kind="token")
        if new_token is None and carried is not None:
            new_token = (None, carried["token"])
        return self.renderer.page(request, "accounts/account.html", {
            "section": "account", "tokens": await services.list_tokens(), "new_token": new_token,
            "account": await services.me(),
            "state": state or FormState(values={"label": ""}), "pw": pw or FormState(),
        }, status=status)

    async def create_token(self, request: Request) -> Response:
        services = services_for(request)
        form = await request.form()
        state = FormState(values={"label": text(form, "label")})
        try:
            record, token = await services.create_token(label=state.values["label"])
        except ValidationFailed as error:
            state.fail(error)
            return await self._account(request, state=state, status=422)
        return reveal_and_go(request, to="/account", kind="token", secret={"token": token},
                             flash=Flash(f"Token {record.label} created."))

    async def revoke_token(self, request: Request) -> Response:
        services = services_for(request)
        record = await services.revoke_token(str(request.path_params["id"]))
        form = await request.form()
        back = safe_next(text(form, "next"), "/account")
        return redirect(back, Flash(f"Token {record.label} ({record.prefix}…) revoked."))

    async def change_password(self, request: Request) -> Response:
        services = services_for(request)
        form = await request.form()
        current, password, again = form.get("current"), form.get("password"), form.get("again")
        pw = FormState()
        if not isinstance(password, str) or password != again:
            pw.errors["again"] = "The two new passwords differ; nothing changed."
            pw.check(lambda: credentials.check_password_rules(password if isinstance(password, str) else ""))
        else:
            try:
                # This session stays; every other one of the user's ends.
                await services.change_password(current=current if isinstance(current, str) else "", new=password)
            except ValidationFailed as error:
                pw.errors["current" if error.field == "currentPassword" else "password"] = error.message
            except Throttled as error:
                pw.errors["current"] = error.message
        if pw.errors:
            return await self._account(request, pw=pw, status=422)
        return redirect("/account", Flash("Password changed. Other sessions of yours are signed out."))
