"""The first admin's page (/setup): open only with the start-up's one-time code while no admin
exists; it makes the account and signs it in (`services.server`'s `complete_setup`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kubekvm import credentials, roster
from kubekvm.auth import services_for, sign_in
from kubekvm.errors import NotFound, ValidationFailed
from kubekvm.pages.common import Flash, FormState, Renderer, redirect, text


class SetupPages:
    """Making the first admin."""

    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def setup_form(self, request: Request) -> Response:
        code = request.query_params.get("code", "")
        if not await services_for(request).setup_open(code):
            raise NotFound("There is nothing to set up: an admin exists already, or this link's code is wrong or old.")
        return self.renderer.page(request, "accounts/setup.html", {
            "state": FormState(values={"name": "", "code": code}), "section": "login"})

    async def setup(self, request: Request) -> Response:
        form = await request.form()
        state = FormState(values={"name": text(form, "name").lower(), "code": text(form, "code")})
        password, again = form.get("password"), form.get("again")
        if password != again:
            state.errors["again"] = "The two passwords differ."
            state.check(lambda: roster.username(state.values["name"]))
            state.check(lambda: credentials.check_password_rules(password if isinstance(password, str) else ""))
        else:
            try:
                user = await services_for(request).complete_setup(
                    code=state.values["code"], name=state.values["name"],
                    password=password if isinstance(password, str) else "")
            except ValidationFailed as error:
                state.fail(error)
            else:
                await sign_in(request, user=user)
                return redirect("/", Flash(f"Welcome, {user.name}: you are the first admin. "
                                      "Add teachers on the Users page."))
        return self.renderer.page(request, "accounts/setup.html", {"state": state, "section": "login"}, status=422)
