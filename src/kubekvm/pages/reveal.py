"""A secret shown once, across Post/Redirect/Get.

A form that makes a secret (an API token, a host token, a set-password link) cannot simply
answer its POST with the page showing it: the address bar would keep the POST's URL, and a reload
would post again (a second token, a new link cancelling the first). So it answers 303 to the page
that shows the result, and the secret travels in a cookie made for that hop only: signed (with the
session key, another salt) so nobody else can plant one, good for REVEAL_SECONDS, scoped to the
destination's path, HttpOnly, SameSite=Strict, Secure over HTTPS, bound to the user who made it,
and deleted by the page that shows it (`Renderer.page`). A reload of that page then shows the
page without the secret, as "shown this once" promises.
"""

from __future__ import annotations

from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from kubekvm.auth import actor_of
from kubekvm.pages.common import REVEAL_COOKIE, Flash, set_flash

REVEAL_SECONDS = 60


def _signer(request: Request) -> URLSafeTimedSerializer:
    session: URLSafeTimedSerializer = request.app.state.session_serializer
    return URLSafeTimedSerializer(session.secret_keys, salt="kubekvm-reveal")


def reveal_and_go(request: Request, *, to: str, kind: str, secret: dict[str, str],
                  flash: Flash | None = None) -> Response:
    """303 to `to`, carrying `secret` for the page there to show once."""
    response = RedirectResponse(to, status_code=303)
    value = _signer(request).dumps({"kind": kind, "for": actor_of(request).name, **secret})
    response.set_cookie(REVEAL_COOKIE, value, max_age=REVEAL_SECONDS, path=to.split("#")[0].split("?")[0],
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    if flash is not None:
        set_flash(response, flash)
    return response


def revealed(request: Request, *, kind: str) -> dict[str, str] | None:
    """The secret carried to this page, if one of `kind` came for this user and is fresh."""
    raw = request.cookies.get(REVEAL_COOKIE)
    if not raw:
        return None
    try:
        found: Any = _signer(request).loads(raw, max_age=REVEAL_SECONDS)
    except BadSignature:
        return None
    if not isinstance(found, dict) or found.get("kind") != kind or found.get("for") != actor_of(request).name:
        return None
    return {str(k): str(v) for k, v in found.items()}
