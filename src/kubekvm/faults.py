"""Faults that are not the server's bugs: its database gone, or its client gone.

While the database is unreachable a request gets "unavailable, try again", never uvicorn's
plain-text 500 with a traceback in the log.

`DatabaseFaults` is the outermost middleware. A database fault (`kubekvm.database.unavailable`
decides which errors are one) that escapes whatever runs below it (the auth middleware's token
and session lookups, a page, a live-update stream) becomes the answers below; and while the
database is known to be down (`Connection.available`) a request gets them at once, without
waiting for its calls to time out (only /healthz, /readyz and static files still pass):

- for GraphQL (`/graphql`, or a client that asked for JSON): HTTP 503 with a GraphQL error body,
  `extensions.code` UNAVAILABLE, and Retry-After;
- for a page: a 503 HTML page saying to try again in a moment, and Retry-After;
- for a websocket: a refused handshake with HTTP 503, or, once accepted, close code 1013
  ("try again later"), which clients treat as retryable;
- for a response already under way (a live-update stream): its end, so the browser reconnects
  and resynchronises once the database is back.

Errors raised inside GraphQL resolvers never get here (strawberry catches them): the GraphQL
error mapping (`kubekvm.graphql.errors`) applies the same rule to them, and the pages' guard
renders the same message as its 503 error page. Each fault is logged as one warning line (at
most one every few seconds, with a count), not as a traceback per request.

A client that goes away mid-request (a GraphQL POST whose body never all came, a browser
closing a live page, an agent's websocket dropped while a subscription was sending to it) is
ordinary, tens of times a minute under load: it is a debug line here, and for GraphQL
subscriptions `quiet_task_failure` says the same of strawberry's per-operation tasks
(`kubekvm.graphql.websocket`).

uvicorn's websockets-sansio protocol (0.54) logs "ASGI callable returned without completing
handshake." at ERROR after every handshake refused with a denial response, though the client
got that response (uvicorn pull request #3138, open): `DeniedHandshakeLog` drops that one line
for the connections refused here, and only for those, so a real incomplete handshake (a bug of
ours) still shows.
"""

from __future__ import annotations

import contextlib
import contextvars
import html
import json
import logging
import time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect
from strawberry.http.exceptions import WebSocketDisconnected

from kubekvm.database import UNAVAILABLE_MESSAGE, Connection, unavailable

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
LOG_EVERY_SECONDS = 10.0


# Set in the connection's own task when this module refuses its handshake with a denial
# response; uvicorn logs the spurious error in that same task right after the app returns.
_denied_here: contextvars.ContextVar[bool] = contextvars.ContextVar("kubekvm_denied_handshake", default=False)
INCOMPLETE_HANDSHAKE = "ASGI callable returned without completing handshake."


class DeniedHandshakeLog(logging.Filter):
    """For `uvicorn.error`: drops uvicorn's "without completing handshake" error for a websocket
    this module refused with a denial response (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == INCOMPLETE_HANDSHAKE and _denied_here.get())


class DatabaseDown(Exception):
    """What the log says when a request is turned away without trying the database."""


class _QuietLog:
    """One warning line per `LOG_EVERY_SECONDS` while the database stays unreachable."""

    def __init__(self) -> None:
        self.last = 0.0
        self.muted = 0

    def fault(self, where: str, error: BaseException) -> None:
        now = time.monotonic()
        if now - self.last < LOG_EVERY_SECONDS:
            self.muted += 1
            return
        muted, self.muted, self.last = self.muted, 0, now
        first_line = (str(error).splitlines() or [type(error).__name__])[0][:200]
        more = f" ({muted} more since the last such line)" if muted else ""
        log.warning("database unavailable (%s: %s), answered UNAVAILABLE to %s%s",
                    type(error).__name__, first_line, where, more)


quiet = _QuietLog()


def graphql_unavailable_body(message: str = UNAVAILABLE_MESSAGE) -> bytes:
    return json.dumps({"data": None,
                       "errors": [{"message": message, "extensions": {"code": "UNAVAILABLE"}}]}).encode()


UNAVAILABLE_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>KubeKVM: briefly unavailable</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>KubeKVM is briefly unavailable</h1>
<p>{html.escape(UNAVAILABLE_MESSAGE)}</p><p><a href="">Try again</a></p></main></body></html>
"""


class DatabaseFaults:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        connection: Connection | None = getattr(scope["app"].state, "connection", None)
        if (connection is not None and not connection.available
                and path not in ("/healthz", "/readyz") and not path.startswith("/static/")):
            # Known down: say so now, rather than after every call's timeout.
            quiet.fault(f"{scope.get('method', 'WEBSOCKET')} {path}", DatabaseDown("no database server reachable"))
            await _answer(scope, send, started=False)
            return
        started = completed = False

        async def tracking(message: Message) -> None:
            nonlocal started, completed
            kind = message["type"]
            if kind in ("http.response.start", "websocket.accept", "websocket.close",
                        "websocket.http.response.start"):
                started = True
            if kind == "websocket.close" or (kind == "http.response.body" and not message.get("more_body")):
                completed = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as error:
            if client_gone(error):
                log.debug("%s %s: the client went away (%s)", scope.get("method", "WEBSOCKET"), path,
                          type(error).__name__)
                return
            if unavailable(error) is None:
                raise
            quiet.fault(f"{scope.get('method', 'WEBSOCKET')} {scope['path']}", error)
            if completed:
                return
            # The client may be gone already; nothing more is owed to it then.
            with contextlib.suppress(Exception):
                await _answer(scope, send, started=started)


def client_gone(error: BaseException) -> bool:
    """The error says the other end of the connection is gone (uvicorn's ClientDisconnected is
    an OSError, like a reset or broken pipe)."""
    return isinstance(error, (ClientDisconnect, WebSocketDisconnect, WebSocketDisconnected,
                              ConnectionError)) or type(error).__name__ == "ClientDisconnected"


def quiet_task_failure(error: BaseException) -> bool:
    """For a GraphQL subscription's task that failed: True (and a debug or one warning line)
    when its client had left while a result was on its way, or the database was unreachable
    (the client got its error), rather than "Exception in worker task" with a traceback."""
    if client_gone(error):
        log.debug("a subscription's client went away (%s)", type(error).__name__)
        return True
    if unavailable(error) is not None:
        quiet.fault("a GraphQL subscription", error)
        return True
    return False


async def _answer(scope: Scope, send: Send, *, started: bool) -> None:
    if scope["type"] == "websocket":
        if not started and "websocket.http.response" in scope.get("extensions", {}):
            # Refuse the handshake with a 503 (a bare close before accepting would be a 403,
            # which a client takes for "your credentials are bad").
            body = graphql_unavailable_body()
            _denied_here.set(True)
            await send({"type": "websocket.http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"retry-after", str(RETRY_AFTER_SECONDS).encode())]})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        if not started:
            await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1013, "reason": "database unavailable, try again"})
        return
    if started:  # a stream under way: end it cleanly (a browser's EventSource reconnects)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    accept = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"accept"), "")
    if scope["path"] == "/graphql" or ("json" in accept and "html" not in accept):
        body, kind = graphql_unavailable_body(), b"application/json"
    else:
        body, kind = UNAVAILABLE_PAGE.encode(), b"text/html; charset=utf-8"
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
