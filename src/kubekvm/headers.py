"""Security headers on every answer: pages, fragments, static files, GraphQL, errors.

`SecurityHeaders` is pure ASGI (so server-sent events and websockets pass untouched) and adds:

- `Content-Security-Policy` (`POLICY`): scripts, styles, fonts and connections from this origin
  only, no inline script or style, no plugins, no `<base>`, forms post here only, and no page
  may be framed (`frame-ancestors 'none'`, with `X-Frame-Options: DENY` for older browsers).
  The pages satisfy it: every script is a file under static/, htmx runs with `allowEval` and
  `includeIndicatorStyles` off, and the console (noVNC) draws on a canvas from static/ code.
  An answer that sets its own policy keeps it: the GraphiQL explorer at /graphql (vendored
  under static/vendor/graphiql, started by static/graphiql.js) gets `EXPLORER_POLICY`, the same
  but for the fonts GraphiQL's stylesheet carries inline as data: URLs;
- `X-Content-Type-Options: nosniff`, `Referrer-Policy: same-origin` (URLs of set-password and
  setup links carry one-time codes: they never leave in a Referer);
- `Strict-Transport-Security` when the request came over HTTPS (uvicorn turns a trusted proxy's
  X-Forwarded-Proto into the scheme) or the server's public URL is https.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    # noVNC sets its cursor as a data: URL image.
    "img-src 'self' data:",
    "font-src 'self'",
    # 'self' covers this origin's ws:// and wss:// too (the console, GraphQL subscriptions).
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))

# GraphiQL's stylesheet embeds its fonts as data: URLs; nothing else differs.
EXPLORER_POLICY = POLICY.replace("font-src 'self'", "font-src 'self' data:")


class SecurityHeaders:
    def __init__(self, app: ASGIApp, *, public_url: str = "", hsts_seconds: int = 31_536_000) -> None:
        self.app = app
        self.always_https = public_url.lower().startswith("https://")
        self.hsts_seconds = hsts_seconds

    def add(self, headers: MutableHeaders, scope: Scope) -> None:
        """The headers on one answer (also used for the 500 Starlette sends from outside every
        middleware, `kubekvm.app.internal_error`)."""
        if "content-security-policy" not in headers:
            headers["Content-Security-Policy"] = POLICY
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "same-origin"
        if (self.always_https or scope.get("scheme") == "https") and self.hsts_seconds > 0:
            headers["Strict-Transport-Security"] = f"max-age={self.hsts_seconds}; includeSubDomains"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, on_response_start(send, lambda headers: self.add(headers, scope)))


def on_response_start(send: Send, add: Callable[[MutableHeaders], None]) -> Send:
    """`send`, giving `add` the headers of an HTTP response's start message before it goes out:
    how a pure ASGI middleware adds a header without buffering the answer (every middleware here
    that adds one — these, the request id, the session cookie — goes through this)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            add(MutableHeaders(scope=message))
        await send(message)

    return sending
