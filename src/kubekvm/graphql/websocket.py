"""The graphql-transport-ws protocol with every client message checked before it is used.

Strawberry's handler trusts a message's shape: a `subscribe` whose `query` is a number reaches
the GraphQL parser and fails there as an internal error with a traceback, and a message that is
a JSON array breaks the connection's handler. Here a message that is not what the protocol
says closes the socket with 4400 and a reason, as the protocol prescribes for invalid messages.

A result shared by every subscriber of a change goes out as text encoded once for all of them
(`kubekvm.graphql.sharing`), with each subscriber's operation id.

A subscription whose client left while a result was on its way (or whose database went away)
is not logged as "Exception in worker task" with a traceback: see `kubekvm.faults`.
"""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import Message

from kubekvm.faults import quiet_task_failure
from kubekvm.graphql.sharing import encoded_next


def problem(message: object) -> str | None:
    """What is wrong with a client message, or None if its shape is right."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return "A message must be a JSON object with a string `type`."
    kind = message["type"]
    if kind in ("subscribe", "complete") and not isinstance(message.get("id"), str):
        return f"A {kind} message needs a string `id`."
    if kind == "subscribe":
        payload = message.get("payload")
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            return "A subscribe message needs a payload with a string `query`."
        for key in ("variables", "extensions"):
            if not isinstance(payload.get(key), dict | None):
                return f"`{key}` must be an object or null."
        if not isinstance(payload.get("operationName"), str | None):
            return "`operationName` must be a string or null."
    return None


class CheckedTransportWS(BaseGraphQLTransportWSHandler[dict[str, Any], None]):
    async def send_message(self, message: Message) -> None:
        # A result shared by every subscriber of a change is encoded once (`kubekvm.graphql.sharing`).
        if message["type"] == "next" and isinstance(self.websocket, ASGIWebSocketAdapter):
            text = encoded_next(message["id"], dict(message["payload"]))
            if text is not None:
                try:
                    await self.websocket.ws.send_text(text)
                except WebSocketDisconnect as exc:
                    raise WebSocketDisconnected from exc
                return
        await super().send_message(message)

    async def handle_message(self, message: Message) -> None:
        wrong = problem(message)
        if wrong is not None:
            await self.handle_invalid_message(wrong)
            return
        await super().handle_message(message)

    async def handle_task_exception(self, error: Exception) -> None:
        if not quiet_task_failure(error):
            await super().handle_task_exception(error)
