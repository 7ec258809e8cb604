"""A GraphQL subscription whose every result is stamped with ``time.monotonic()`` on arrival.

The latency figures are "until a subscriber sees it", so the stamp is taken where an API
client would first hold the result: as the websocket client (gql, the library the agent
uses, through ``tests.support.graphql``) yields it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from gql import GraphQLRequest
from tests.support.graphql import websocket_session

LAB_EVENTS = """
subscription($name: String) {
  deploymentEvents(name: $name) {
    kind lab
    deployment { phase running machineCount }
    machine { name host observed observedAt }
  }
}
"""

Stamped = tuple[float, dict[str, Any]]


class EventLog:
    """Results of one subscription, in arrival order, with their arrival times."""

    def __init__(self) -> None:
        self.results: list[Stamped] = []
        self.changed = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None

    async def wait_for(self, predicate: Callable[[list[Stamped]], float | None], *, timeout: float,
                       what: str) -> float:
        """Waits until ``predicate(results)`` gives a time (not None) and returns it."""

        async def scan() -> float:
            async with self.changed:
                while True:
                    found = predicate(self.results)
                    if found is not None:
                        return found
                    if self.task is not None and self.task.done():
                        self.task.result()
                        raise RuntimeError("the subscription ended")
                    await self.changed.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None


@contextlib.asynccontextmanager
async def lab_events(ws_url: str, token: str, *, name: str | None = None,
                     settle: float = 0.5) -> AsyncIterator[EventLog]:
    """Subscribes to ``deploymentEvents`` (one lab, or all) for the duration of the block."""
    log = EventLog()
    async with websocket_session(ws_url, token) as session:
        async def consume() -> None:
            request = GraphQLRequest(LAB_EVENTS, variable_values={"name": name})
            async for result in session.subscribe(request):
                stamp = time.monotonic()
                async with log.changed:
                    log.results.append((stamp, result["deploymentEvents"]))
                    log.changed.notify_all()

        log.task = asyncio.create_task(consume())
        # graphql-transport-ws does not acknowledge a subscribe: give the server a moment to
        # take its feed subscription before anything happens that the test must see.
        await asyncio.sleep(settle)
        try:
            yield log
        finally:
            log.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await log.task
