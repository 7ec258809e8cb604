"""The event feed: every change to labs, machines, hosts and console sessions, delivered to
subscribers in this process (GraphQL subscriptions, the pages' live updates, the agents'
assignment and console-request feeds).

Where the database has change streams (any replica set, and SecantusDB), one watcher per
server process reads the `deployments`, `machines`, `hosts` and `console_sessions`
collections, so a change written by any replica reaches subscribers of every replica. Where it has not, the service
layer publishes its own writes here (`publish`), which only reaches this process: fine for one
server, and said so in the log, because several replicas need a replica set.

Subscribers get a bounded queue. One that falls too far behind is marked `overflowed` and must
resynchronise from a snapshot rather than silently miss changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import PyMongoError

from kubekvm.database import Database

log = logging.getLogger(__name__)

# console_sessions: how a console request written by one replica reaches the replica that
# holds the host agent's subscription (`kubekvm.consoles`).
WATCHED = ("deployments", "machines", "hosts", "console_sessions")


@dataclass(frozen=True)
class Change:
    collection: str
    operation: str  # insert | update | replace | delete
    id: str
    document: Mapping[str, Any] | None  # the whole document after the change; None on delete
    cursor: str


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[Change]
    overflowed: bool = False

    async def next(self) -> Change:
        return await self.queue.get()


@dataclass(eq=False)
class EventFeed:
    """Fan-out of changes to this process's subscribers, with a short replay buffer."""

    mode: str = "in-process"
    queue_size: int = 10_000
    history_size: int = 20_000
    _subscribers: set[Subscription] = field(default_factory=set)
    _history: deque[Change] = field(default_factory=lambda: deque(maxlen=20_000))
    _sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _task: asyncio.Task[None] | None = None

    @property
    def publishes_locally(self) -> bool:
        return self.mode == "in-process"

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        subscription = Subscription(queue=asyncio.Queue(maxsize=self.queue_size))
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    def replay_after(self, cursor: str) -> list[Change] | None:
        """Changes after `cursor` if this process still holds them, else None (resync)."""
        history = list(self._history)
        for position, change in enumerate(history):
            if change.cursor == cursor:
                return history[position + 1 :]
        return None

    @property
    def last_cursor(self) -> str | None:
        return self._history[-1].cursor if self._history else None

    def publish(self, *, collection: str, operation: str, id: str,
                document: Mapping[str, Any] | None) -> None:
        """Called by the service layer after each write; a no-op where change streams carry
        the writes instead (they would otherwise arrive twice)."""
        if not self.publishes_locally:
            return
        cursor = f"local-{os.getpid()}-{next(self._sequence)}"
        self._deliver(Change(collection, operation, id, document, cursor))

    def _deliver(self, change: Change) -> None:
        self._history.append(change)
        for subscriber in self._subscribers:
            if subscriber.overflowed:
                continue
            try:
                subscriber.queue.put_nowait(change)
            except asyncio.QueueFull:
                subscriber.overflowed = True

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


@dataclass(eq=False)
class ChangeStreamFeed(EventFeed):
    database: Database | None = None
    mode: str = "change-streams"
    _resume_token: Mapping[str, Any] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="kubekvm-change-stream")
        # Subscribers that arrive before the stream is open would miss the first changes.
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def _watch(self) -> None:
        assert self.database is not None
        pipeline = [{"$match": {"ns.coll": {"$in": list(WATCHED)}}}]
        delay = 0.2
        while True:
            try:
                async with await self.database.watch(
                    pipeline, full_document="updateLookup", resume_after=self._resume_token
                ) as stream:
                    self._ready.set()
                    delay = 0.2
                    async for event in stream:
                        self._resume_token = stream.resume_token
                        self._deliver(_to_change(event))
            except asyncio.CancelledError:
                raise
            except PyMongoError as exc:
                log.warning("change stream interrupted (%s); resuming in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def _to_change(event: Mapping[str, Any]) -> Change:
    token = event["_id"]
    cursor = str(token.get("_data", token)) if isinstance(token, Mapping) else str(token)
    return Change(
        collection=event["ns"]["coll"],
        operation=event["operationType"],
        id=str(event["documentKey"]["_id"]),
        document=event.get("fullDocument"),
        cursor=cursor,
    )
