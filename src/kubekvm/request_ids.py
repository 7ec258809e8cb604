"""Request ids: every request (and websocket) gets one, for its log lines and what it causes.

A client or a proxy may send `X-Request-ID`; a well-formed one (1 to 64 letters, digits and
`._:-`) is kept, anything else is replaced by a new random id (a header must not smuggle text
into the logs). The id is bound to the request's logging context (`kubekvm.logs`) and sent
back in the answer's `X-Request-ID`; a machine a request changes records it, so its host
agent's log lines carry it too.
"""

from __future__ import annotations

import re
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Receive, Scope, Send

from kubekvm.headers import on_response_start

HEADER = "x-request-id"
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_of(offered: str | None) -> str:
    """The offered id if well formed, else a new one."""
    if offered is not None and _WELL_FORMED.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        offered = next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k == HEADER.encode()), None)
        request_id = request_id_of(offered)
        scope.setdefault("state", {})["request_id"] = request_id

        def tag(headers: MutableHeaders) -> None:
            headers["X-Request-ID"] = request_id

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, on_response_start(send, tag))
