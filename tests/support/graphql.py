"""GraphQL over websocket for tests, with the same client library the agent uses (gql)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from gql import Client, GraphQLRequest
from gql.client import AsyncClientSession
from gql.transport.websockets import WebsocketsTransport


@contextlib.asynccontextmanager
async def websocket_session(ws_url: str, token: str | None = None, *, in_header: bool = True,
                            in_init: bool = True) -> AsyncIterator[AsyncClientSession]:
    """A websocket session, authenticated as the agent does it: the token in the upgrade
    request's Authorization header and/or in connection_init's payload."""
    headers = {"Authorization": f"Bearer {token}"} if token and in_header else None
    init_payload = {"authorization": f"Bearer {token}"} if token and in_init else {}
    transport = WebsocketsTransport(url=ws_url, headers=headers, init_payload=init_payload,
                                    subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL])
    async with Client(transport=transport, fetch_schema_from_transport=False) as session:
        yield session


class Subscriber:
    """Runs a subscription in the background and collects its results."""

    def __init__(self, session: AsyncClientSession, query: str, **variables: Any) -> None:
        self.results: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._run(session, GraphQLRequest(query, variable_values=variables)))

    async def _run(self, session: AsyncClientSession, request: GraphQLRequest) -> None:
        async for result in session.subscribe(request):
            async with self._changed:
                self.results.append(result)
                self._changed.notify_all()

    async def wait_for(self, predicate: Any, *, timeout: float = 10.0) -> dict[str, Any]:
        """The first result (in arrival order) satisfying predicate."""
        async def scan() -> dict[str, Any]:
            seen = 0
            async with self._changed:
                while True:
                    for result in self.results[seen:]:
                        if predicate(result):
                            return result
                    seen = len(self.results)
                    if self._task.done():
                        self._task.result()
                        raise AssertionError("subscription ended")
                    await self._changed.wait()
        return await asyncio.wait_for(scan(), timeout)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
