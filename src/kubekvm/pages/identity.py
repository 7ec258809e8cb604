"""The pages of signing in from outside: the login page's "Sign in with …" buttons, the OpenID
Connect flow's two ends, and the signed-out page that offers the provider's own sign-out.

  GET /login/oidc/{provider}            off to the provider (authorization code flow, PKCE)
  GET /login/oidc/{provider}/callback   back from it: the answer validated (`kubekvm.oidc`),
                                        the account made or found (`services.identities`)
  GET /signed-out?provider=             after signing out of a provider's session

A refused callback shows the login page with the reason and signs nobody in. The LDAP sign-in
is the login form's own (`kubekvm.services.identities.IdentityRecords.authenticate`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from kubekvm.auth import actor_of, services_for, sign_in
from kubekvm.config import Settings
from kubekvm.errors import KubeKVMError
from kubekvm.models import Role
from kubekvm.oidc import OpenIdSignIn
from kubekvm.pages.common import FormState, Renderer, status_of


def oidc_of(request: Request) -> OpenIdSignIn:
    oidc: OpenIdSignIn = request.app.state.oidc
    return oidc


def login_page(renderer: Renderer, request: Request, state: FormState, *, status: int = 200) -> Response:
    """The sign-in page: a button per OpenID provider, and the password form unless no password
    is accepted at all (local passwords off and no directory)."""
    settings: Settings = request.app.state.settings
    return renderer.page(request, "accounts/login.html", {
        "state": state, "section": "login", "providers": list(oidc_of(request).providers.values()),
        "passwords": settings.identity.local_passwords or settings.identity.ldap is not None,
        "directory": settings.identity.ldap is not None}, status=status)


class IdentityPages:
    def __init__(self, *, renderer: Renderer, settings: Settings) -> None:
        self.renderer = renderer
        self.public_url = settings.public_url.rstrip("/")

    def _base(self, request: Request) -> str:
        return self.public_url or str(request.base_url).rstrip("/")

    async def start(self, request: Request) -> Response:
        if actor_of(request).is_user:
            return RedirectResponse("/", status_code=303)
        name = str(request.path_params["provider"])
        oidc = oidc_of(request)
        oidc.provider(name)  # an unknown one is NOT_FOUND, not a sign-in failure
        try:
            return await oidc.start(request, name, redirect_uri=f"{self._base(request)}/login/oidc/{name}/callback")
        except KubeKVMError as error:  # the provider cannot be reached: say so where the button was
            return self._refused(request, error)

    async def callback(self, request: Request) -> Response:
        name = str(request.path_params["provider"])
        oidc = oidc_of(request)
        provider = oidc.provider(name)
        try:
            person = await oidc.finish(request, name)
            user = await services_for(request).sign_in_external(person, rules=provider.roles)
        except KubeKVMError as error:
            return self._refused(request, error)
        await sign_in(request, user=user, provider=name)
        return RedirectResponse("/my" if user.role == Role.STUDENT else "/", status_code=303)

    def _refused(self, request: Request, error: KubeKVMError) -> Response:
        """The login page with the reason: nobody is signed in."""
        state = FormState(values={"name": "", "next": "/"})
        state.errors["form"] = error.message
        return login_page(self.renderer, request, state, status=status_of(error))

    async def signed_out(self, request: Request) -> Response:
        name = request.query_params.get("provider", "")
        oidc = oidc_of(request)
        provider = oidc.providers.get(name)
        end = await oidc.end_session_url(name, post_logout=f"{self._base(request)}/login") if provider else None
        return self.renderer.page(request, "accounts/signed_out.html", {
            "section": "login", "provider": provider, "end_session": end})
