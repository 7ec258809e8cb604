"""GraphQL over websocket for tests, with the same client library the agent uses (gql)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
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

    async def until_live(self, poke: Callable[[], object], predicate: Callable[[dict[str, Any]], bool], *,
                         timeout: float = 20.0, interval: float = 0.3) -> dict[str, Any]:
        """Proof that the subscription is registered on the server: graphql-transport-ws
        acknowledges nothing, so `poke` (a blocking call, run in a thread) makes a change and is
        repeated every `interval` until a result satisfying `predicate` arrives, which is
        returned. Changes after that reach this subscriber."""
        async def poked() -> dict[str, Any]:
            while True:
                await asyncio.to_thread(poke)
                with contextlib.suppress(TimeoutError):
                    return await self.wait_for(predicate, timeout=interval)

        try:
            return await asyncio.wait_for(poked(), timeout)
        except TimeoutError:
            raise AssertionError(f"the subscription gave no sign of life in {timeout:g} s: "
                                 f"{len(self.results)} results") from None

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
