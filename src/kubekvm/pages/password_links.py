"""The page a set-password link opens: whose account it is for, and the form that sets the
password with the link's code (`services.links`; the rules of who may make one and how long it
holds are `kubekvm.access.passwords`'). A password is never put in a page.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kubekvm import credentials
from kubekvm.auth import services_for
from kubekvm.errors import ValidationFailed
from kubekvm.pages.common import Flash, FormState, Renderer, redirect, text


class PasswordLinkPages:
    """Setting a password with a link's code."""

    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def set_password_form(self, request: Request) -> Response:
        code = request.query_params.get("code", "")
        user = await services_for(request).password_link_user(code)
        return self.renderer.page(request, "accounts/set_password.html", {
            "state": FormState(values={"code": code}), "user": user, "section": "login"})

    async def set_password(self, request: Request) -> Response:
        form = await request.form()
        state = FormState(values={"code": text(form, "code")})
        services = services_for(request)
        user = await services.password_link_user(state.values["code"])
        password, again = form.get("password"), form.get("again")
        if password != again:
            state.errors["again"] = "The two passwords differ."
            state.check(lambda: credentials.check_password_rules(password if isinstance(password, str) else ""))
        else:
            try:
                user = await services.set_password_with_code(state.values["code"],
                                                             password if isinstance(password, str) else "")
            except ValidationFailed as error:
                state.fail(error)
            else:
                return redirect("/login", Flash("Your password is set: sign in with it."))
        return self.renderer.page(request, "accounts/set_password.html",
                                  {"state": state, "user": user, "section": "login"}, status=422)
