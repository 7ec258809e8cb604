"""Who is asking: the session cookie, bearer tokens, and the actor of every request.

`AuthMiddleware` (pure ASGI, so server-sent events and websockets pass through untouched)
runs before every route:

- it reads the signed session cookie into `scope["session"]` (what `request.session` shows)
  and writes it back when a handler changed it: HttpOnly, SameSite=Lax, and Secure when the
  request came over HTTPS (uvicorn's proxy headers turn a trusted proxy's X-Forwarded-Proto
  into the request's scheme). Signed in, the cookie carries only the random id of a session
  document in MongoDB (`kubekvm.services.sessions`): the server decides whether that session still
  exists, so signing out, a password change or an admin ends it on every replica at once, and
  an idle one lapses. Before signing in, it carries only the sign-in form's CSRF token;
- it finds the actor: an `Authorization: Bearer` token (API or host token) wins, else the
  session's user, else anonymous. An unknown or revoked token is refused outright (401, or a
  refused websocket handshake) rather than quietly treated as anonymous; a cookie of a session
  that ended is dropped (the browser is anonymous again);
- it puts the actor and its operations (`kubekvm.authorized.Authorized`) in `request.state`,
  so handlers and resolvers have one way to reach the services.

A browser's cookie is sent with requests other sites make, so a session-authenticated
request that changes something must prove it came from our pages: the forms carry a CSRF
token (checked by the pages' guard), and GraphQL over a session accepts only JSON bodies
(which another site cannot send without a CORS preflight this server never grants). Bearer
tokens are never sent by a browser on its own, so they need neither.
"""

from __future__ import annotations

import json
import secrets
from http.cookies import SimpleCookie
from typing import Any

import structlog
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from kubekvm.access.actors import Actor, ActorKind, anonymous
from kubekvm.authorized import Authorized
from kubekvm.boundary import send_refusal
from kubekvm.config import Settings
from kubekvm.headers import on_response_start
from kubekvm.models import User
from kubekvm.services import Services
from kubekvm.services.accounts import Accounts

SESSION_COOKIE = "kubekvm_session"
SESSION_ID_KEY = "sid"
CSRF_KEY = "csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def serializer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt="kubekvm-session")


def bearer(value: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` value (header or connection_init payload)."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def csrf_token(request: Request) -> str:
    """This session's CSRF token, made on first use."""
    token = request.session.get(CSRF_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(24)
        request.session[CSRF_KEY] = token
    return token


def actor_of(request: Request) -> Actor:
    actor: Actor = request.state.actor
    return actor


def services_for(request: Request) -> Authorized:
    """The services as the request's actor may use them."""
    services: Authorized = request.state.services
    return services


async def sign_in(request: Request, *, user: User, provider: str | None = None) -> None:
    """A fresh session for `user` (a new CSRF token too: nothing from before sign-in carries
    over, and a session id planted before cannot be ridden); `provider`: the OpenID provider
    it came through."""
    accounts: Accounts = request.app.state.accounts
    session_id, record = await accounts.start_session(user, address=actor_of(request).address, provider=provider)
    request.session.clear()
    request.session.update({SESSION_ID_KEY: session_id, CSRF_KEY: record.csrf})


async def sign_out(request: Request) -> None:
    """End this browser's session on the server (a copy of its cookie is worthless after)."""
    session_id = request.session.get(SESSION_ID_KEY)
    if isinstance(session_id, str) and session_id:
        accounts: Accounts = request.app.state.accounts
        await accounts.end_session(session_id)
    request.session.clear()


def _cookie_value(session: dict[str, Any]) -> dict[str, Any]:
    """What the cookie carries: a signed-in session's id only (its CSRF token is kept with it on
    the server), else the little an anonymous visitor has (the sign-in form's CSRF token)."""
    if isinstance(session.get(SESSION_ID_KEY), str):
        return {SESSION_ID_KEY: session[SESSION_ID_KEY]}
    return dict(session)


class AuthMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        services: Services = state.services
        accounts: Accounts = state.accounts
        signer: URLSafeTimedSerializer = state.session_serializer
        request = HTTPConnection(scope)
        address = scope["client"][0] if scope.get("client") else ""

        settings: Settings = state.settings
        raw_cookie = request.cookies.get(SESSION_COOKIE)
        session: dict[str, Any] = {}
        if raw_cookie:
            try:
                loaded = signer.loads(raw_cookie, max_age=int(settings.session_max_seconds))
                session = loaded if isinstance(loaded, dict) else {}
            except BadSignature:  # tampered with, or too old
                session = {}
        scope["session"] = session
        before = json.dumps(_cookie_value(session), sort_keys=True)

        actor = anonymous(address)
        token = bearer(request.headers.get("authorization"))
        if token is not None:
            found = await accounts.actor_for_token(token, address=address)
            if found is None:
                await _refuse(scope, receive, send,
                              "The bearer token is unknown or revoked, or its account is disabled.")
                return
            actor = found
        elif isinstance(session.get(SESSION_ID_KEY), str):
            resumed = await accounts.resume_session(session[SESSION_ID_KEY])
            if resumed is not None:
                record, user = resumed
                session[CSRF_KEY] = record.csrf
                actor = Actor(kind=ActorKind.USER, name=user.name, role=user.role, address=address,
                              via="session", session=str(record.id))
            else:  # signed out, ended by a password change or an admin, or lapsed
                session.clear()
        scope.setdefault("state", {})
        scope["state"]["actor"] = actor
        if actor.kind != ActorKind.ANONYMOUS:
            structlog.contextvars.bind_contextvars(actor=f"{actor.kind.value}:{actor.name}")
        scope["state"]["services"] = Authorized(services, accounts, actor)

        if (scope["type"] == "http" and actor.via == "session" and scope["path"] == "/graphql"
                and scope["method"] not in ("GET", "HEAD", "OPTIONS")
                and not request.headers.get("content-type", "").startswith("application/json")):
            await _refuse(scope, receive, send, "GraphQL with a session cookie takes JSON bodies only.",
                          status=403, code="FORBIDDEN")
            return

        secure = scope.get("scheme") in ("https", "wss")

        def set_cookie(headers: MutableHeaders) -> None:
            value = _cookie_value(session)
            if json.dumps(value, sort_keys=True) != before:
                cookie: SimpleCookie = SimpleCookie()
                cookie[SESSION_COOKIE] = signer.dumps(value) if value else ""
                morsel = cookie[SESSION_COOKIE]
                morsel["path"] = "/"
                morsel["httponly"] = True
                morsel["samesite"] = "Lax"
                morsel["max-age"] = int(settings.session_max_seconds) if value else 0
                if secure:
                    morsel["secure"] = True
                headers.append("Set-Cookie", morsel.OutputString())

        await self.app(scope, receive, on_response_start(send, set_cookie))


async def _refuse(scope: Scope, receive: Receive, send: Send, message: str, *, status: int = 401,
                  code: str = "UNAUTHENTICATED") -> None:
    if scope["type"] == "websocket":
        # Closing before accepting refuses the handshake (the client sees HTTP 403).
        await send({"type": "websocket.close", "code": 4401, "reason": message[:100]})
        return
    await send_refusal(send, status=status, message=message, code=code, graphql=True,
                       headers={"WWW-Authenticate": 'Bearer realm="kubekvm"'} if status == 401 else None)
