"""Two checks at the edge of the server, before any route runs (pure ASGI middlewares):

`BodyLimit` refuses a request body above `Settings.max_body_bytes` before anything parses it:
at once when Content-Length says so, else as soon as the bytes streamed in (a chunked body)
pass the limit, without reading the rest. The answer is 413; on /graphql it is GraphQL-shaped
JSON (`extensions.code` PAYLOAD_TOO_LARGE), elsewhere a sentence. What is under the limit is
handed on whole (at most the limit is ever held in memory). The exceptions are an image
import (POST /images, `kubekvm.pages.images`) and a published machine's upload: they stream
their bodies into the image store, under that store's own limit, so they pass untouched.
Websocket messages have their own limit, `Settings.websocket_max_message_bytes`, enforced by
uvicorn (`kubekvm.cli`): a bigger message closes the socket with 1009.

`OriginCheck` refuses cross-site websocket hijacking: a browser attaches the session cookie to
a websocket handshake that any page opens (CORS does not apply to websockets, and SameSite=Lax
still sends the cookie from a sibling subdomain), so a handshake whose `Origin` is neither this
server's nor a trusted one is refused before the route runs (HTTP 403), whatever the path:
GraphQL's /graphql (Strawberry checks too), the console's /consoles/socket, and any socket
added later. The same goes for the pages' live streams (GET /events): they only read, and a
foreign page could not read them anyway (no CORS is granted, and SameSite=Lax keeps the cookie
off cross-site requests), but refusing them keeps a foreign page from holding a user's streams.
No `Origin` means no browser (the agent, scripts): those carry no ambient cookie to abuse.
This server's own origin is the Host the request reached (as Strawberry decides it), or
`KUBEKVM_PUBLIC_URL`'s when a proxy reaches us under another name, or `KUBEKVM_ALLOWED_ORIGINS`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.http.websocket_origin import is_same_origin, normalize_allowed_origins, normalize_origin

from kubekvm.config import Settings

log = logging.getLogger(__name__)

GRAPHQL_PATH = "/graphql"
LIVE_PATH = "/events"
# Routes that stream their (large) bodies to disk themselves, under their own limit: image
# imports, and a host's upload of a machine being published.
STREAMED_UPLOADS = re.compile(r"/images|/machines/[^/]+/publish/[^/]+")


def graphql_error(message: str, code: str) -> bytes:
    """A GraphQL-shaped error body: what every refusal on /graphql answers."""
    return json.dumps({"errors": [{"message": message, "extensions": {"code": code}}]}).encode()


async def send_refusal(send: Send, *, status: int, message: str, code: str, graphql: bool,
                       headers: Mapping[str, str] | None = None) -> None:
    body = graphql_error(message, code) if graphql else message.encode()
    kind = b"application/json" if graphql else b"text/plain; charset=utf-8"
    raw = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] == "POST" and STREAMED_UPLOADS.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        if "content-length" not in headers and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body (a GET, an event stream)
            return
        graphql = scope["path"] == GRAPHQL_PATH
        declared = headers.get("content-length", "")
        # isascii: str.isdigit also takes "²", which int() refuses (uvicorn's parser refuses such
        # a header first; this must not crash if another server does not).
        if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > self.max_bytes):
            await self._refuse(send, graphql=graphql)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, graphql=graphql)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: the disconnect a handler may wait for

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, *, graphql: bool) -> None:
        # "Connection: close": uvicorn then drops what the client is still sending.
        await send_refusal(send, status=413, graphql=graphql, code="PAYLOAD_TOO_LARGE",
                           message=f"The request body is larger than this server accepts ({self.max_bytes} bytes).",
                           headers={"Connection": "close"})


def allowed_origins(settings: Settings) -> frozenset[str]:
    """The origins trusted besides the one a request reached: the public URL's, and those set
    (a setting that is not an origin stops the server with a sentence saying which)."""
    if "*" in settings.allowed_origins:
        raise SystemExit("KUBEKVM_ALLOWED_ORIGINS: '*' would let every site act with its visitors' sessions; "
                         "name the origins")
    try:
        configured = set(normalize_allowed_origins(settings.allowed_origins))
    except ValueError as error:
        raise SystemExit(f"KUBEKVM_ALLOWED_ORIGINS: {error}") from None
    public = normalize_origin(settings.public_url) if settings.public_url else None
    if public is not None:
        configured.add(public)
    elif settings.public_url:
        log.warning("KUBEKVM_PUBLIC_URL %r is not a URL like https://kubekvm.example.edu: pages served under "
                    "it cannot open websockets unless the proxy passes their Host on", settings.public_url)
    return frozenset(configured)


def origin_allowed(headers: Headers, allowed: Collection[str]) -> bool:
    """Whether a request may go on, by its `Origin` (the rule Strawberry applies to /graphql)."""
    origin = headers.get("origin")
    if origin is None:
        return True
    if headers.get("sec-fetch-site") == "same-origin" or is_same_origin(origin, headers.get("host")):
        return True
    normalized = normalize_origin(origin)
    return normalized is not None and normalized in allowed


class OriginCheck:
    def __init__(self, app: ASGIApp, *, allowed: Collection[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        checked = scope["type"] == "websocket" or (scope["type"] == "http" and scope["path"] == LIVE_PATH)
        if checked:
            headers = Headers(scope=scope)
            if not origin_allowed(headers, self.allowed):
                log.warning("refused a %s to %s from origin %r (host %r)", scope["type"], scope["path"],
                            headers.get("origin"), headers.get("host"))
                if scope["type"] == "websocket":
                    # Closing before accepting refuses the handshake: the client sees HTTP 403.
                    await send({"type": "websocket.close", "code": 4403, "reason": "origin not allowed"})
                else:
                    await send_refusal(send, status=403, graphql=False, code="FORBIDDEN",
                                       message="Live updates are for this server's own pages.")
                return
        await self.app(scope, receive, send)
