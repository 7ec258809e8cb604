"""The sign-in pages: the password sign-in form (throttled per account and address) and signing out.

Both go through the caller's operations (`kubekvm.services.users`), which write their audit
entries; a sign-in through a directory or an OpenID provider is `kubekvm.pages.identity`'s, and
signing out of one offers the provider's own sign-out too.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from kubekvm.auth import actor_of, services_for, sign_in, sign_out
from kubekvm.errors import Throttled, Unauthenticated, Unavailable, ValidationFailed
from kubekvm.models import Role
from kubekvm.pages.common import Flash, FormState, Renderer, redirect, safe_next, status_of, text
from kubekvm.pages.identity import login_page
from kubekvm.services.accounts import Accounts


class SignInPages:
    """Signing in with a password, and out."""

    def __init__(self, *, renderer: Renderer) -> None:
        self.renderer = renderer

    async def login_form(self, request: Request) -> Response:
        if actor_of(request).is_user:
            return redirect(safe_next(request.query_params.get("next", ""), "/"))
        return self._login(request, FormState(values={"name": "", "next": request.query_params.get("next", "/")}))

    def _login(self, request: Request, state: FormState, *, status: int = 200) -> Response:
        return login_page(self.renderer, request, state, status=status)

    async def login(self, request: Request) -> Response:
        form = await request.form()
        name, password = text(form, "name").lower(), form.get("password")
        state = FormState(values={"name": name, "next": text(form, "next")})
        try:
            user = await services_for(request).sign_in(name=name,
                                                       password=password if isinstance(password, str) else "")
        except Throttled as error:
            state.errors["form"] = error.message
            response = self._login(request, state, status=429)
            response.headers["Retry-After"] = str(error.retry_after)
            return response
        except (Unauthenticated, Unavailable) as error:
            state.errors["form"] = error.message
            return self._login(request, state, status=status_of(error))
        except ValidationFailed as error:  # a directory's username that cannot be one here
            state.errors["form"] = error.message
            return self._login(request, state, status=422)
        await sign_in(request, user=user)
        home = "/my" if user.role == Role.STUDENT else "/"
        return redirect(safe_next(state.values["next"], home) if state.values["next"] not in ("", "/") else home)

    async def logout(self, request: Request) -> Response:
        actor = actor_of(request)
        provider = None
        if actor.is_user:
            await services_for(request).sign_out()
            accounts: Accounts = request.app.state.accounts
            record = await accounts.session_record(actor.session) if actor.session else None
            provider = record.provider if record else None
        await sign_out(request)
        if provider:  # offer the provider's own sign-out too
            return redirect(f"/signed-out?{urlencode({'provider': provider})}")
        return redirect("/login", Flash("You are signed out."))
