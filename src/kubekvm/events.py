"""The event feed: every change to labs, machines and console sessions, delivered to
subscribers in this process (GraphQL subscriptions, the pages' live updates, the agents'
assignment and console-request feeds).

Where the database has change streams (any replica set, and SecantusDB), one watcher per
server process reads the `deployments`, `machines` and `console_sessions` collections, so a
change written by any replica reaches subscribers of every replica. Hosts are not followed:
every agent's heartbeat writes its host's record (200 hosts every 10 s), no subscriber shows a
host, and a host going quiet writes nothing anyway, so whatever shows readiness reads it when
it renders (`kubekvm.services.hosts`). Where it has not, the service
layer publishes its own writes here (`publish`), which only reaches this process: fine for one
server, and said so in the log, because several replicas need a replica set.

Subscribers get a bounded queue. One that falls too far behind is marked `overflowed` and must
resynchronise from a snapshot rather than silently miss changes.

The watcher never dies silently: it is supervised (any failure is logged and the stream is
reopened, resuming after the last change seen, with a backoff while it keeps failing), and
`healthy` says whether it is following the database right now (`/readyz` fails while not).
When changes may have been missed without a trace — the change history no longer reaches back
to where the stream stopped, a watched collection or the database was dropped or renamed (a
`mongorestore --drop` does that), the stream was invalidated, or an event could not be read —
the watcher starts again from "now" and, once the new stream is open, delivers one `RESYNC`
change to every subscriber: each reloads what it shows (an agent's feed sends a fresh
SNAPSHOT, a page redraws its lists). The replay buffer is emptied too, so nobody resumes
across the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import Timestamp
from pymongo.errors import OperationFailure, PyMongoError

from kubekvm import metrics
from kubekvm.database import Database
from kubekvm.memory import Release

log = logging.getLogger(__name__)

# console_sessions: how a console request written by one replica reaches the replica that
# holds the host agent's subscription (`kubekvm.services.console_requests`).
WATCHED = ("deployments", "machines", "console_sessions")

# The operation of the change that tells every subscriber to reload what it shows.
RESYNC = "resync"
# Change events that carry one document's new state (or its deletion).
DOCUMENT_OPERATIONS = frozenset({"insert", "update", "replace", "delete"})
# Events after which documents may have vanished or changed without an event of their own.
LOSSY_OPERATIONS = frozenset({"drop", "rename", "dropDatabase", "invalidate"})
# The server no longer has the history to resume from the token it was given.
HISTORY_LOST_CODES = frozenset({286, 280, 136})  # ChangeStreamHistoryLost, ChangeStreamFatalError, CappedPositionLost
FIRST_RETRY_SECONDS = 0.2
MAX_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Change:
    collection: str  # "" for RESYNC
    operation: str  # insert | update | replace | delete | resync
    id: str
    document: Mapping[str, Any] | None  # the whole document after the change; None on delete
    cursor: str
    reason: str = ""  # RESYNC only: why changes may have been missed (for logs and tests)

    @property
    def resync(self) -> bool:
        """Changes may have been missed: reload whatever is shown from the database."""
        return self.operation == RESYNC


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[Change]
    overflowed: bool = False

    async def next(self) -> Change:
        return await self.queue.get()


# How many recent changes a resuming subscriber can be replayed (older: it resynchronises).
REPLAY_CHANGES = 20_000


@dataclass(eq=False)
class EventFeed:
    """Fan-out of changes to this process's subscribers, with a short replay buffer."""

    mode: str = "in-process"
    queue_size: int = 10_000
    _subscribers: set[Subscription] = field(default_factory=set)
    _history: deque[Change] = field(default_factory=lambda: deque(maxlen=REPLAY_CHANGES))
    _sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _task: asyncio.Task[None] | None = None
    _release: Release = field(default_factory=Release)
    # How long shutdown waits for the watcher to end once cancelled (see `stop`).
    stop_grace: float = 5.0

    @property
    def publishes_locally(self) -> bool:
        return self.mode == "in-process"

    @property
    def healthy(self) -> bool:
        """Delivering changes as they happen (an in-process feed always is)."""
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        """Cancels the watcher and waits for it, but at most `stop_grace`: a read cancelled inside
        pymongo's async cursor can fail to finish (seen with pymongo 4.20), and a server told to
        stop must not wait on it for good; closing the database client afterwards ends it."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.stop_grace)
        if not done:
            log.warning("the change-stream watcher did not end within %.0f s of being cancelled; "
                        "shutting down without it", self.stop_grace)
            return
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
            # After a crowd leaves, what it took goes back to the system (`kubekvm.memory`).
            self._release.departed(remaining=len(self._subscribers))

    def history(self) -> list[Change]:
        """The changes this process still holds, oldest first."""
        return list(self._history)

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

    def resync(self, reason: str) -> None:
        """Tell every subscriber to reload from the database, and forget the replay buffer (a
        cursor from before this point cannot be resumed from: the gap is not in it)."""
        log.warning("event feed: %s; every subscriber reloads what it shows", reason)
        self._history.clear()
        self._deliver(Change("", RESYNC, "", None, f"resync-{os.getpid()}-{next(self._sequence)}",
                             reason=reason))

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
    start_timeout: float = 10.0
    _resume_token: Mapping[str, Any] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _open: bool = False
    _resync_reason: str | None = None  # set when the next stream opened must be followed by a RESYNC

    @property
    def healthy(self) -> bool:
        return self._open and self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="kubekvm-change-stream")
        self._task.add_done_callback(_ended)
        # Subscribers that arrive before the stream is open would miss the first changes.
        try:
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), timeout=self.start_timeout)
        except TimeoutError:
            log.error("the change stream did not open within %.0f s; /readyz fails until it does",
                      self.start_timeout)

    async def _supervise(self) -> None:
        """Follow the database until cancelled, whatever happens to one stream."""
        delay = FIRST_RETRY_SECONDS
        while True:
            why = "error"  # for the restarts' metric: a closed set of words
            try:
                if await self._follow():
                    delay = FIRST_RETRY_SECONDS
                    metrics.FEED_RESTARTS.labels(reason="invalidated").inc()
                    continue  # invalidated: reopen from now at once
                why = "closed"
                log.warning("the server closed the change stream; reopening in %.1f s", delay)
            except asyncio.CancelledError:
                why = ""
                raise
            except OperationFailure as exc:
                if self._resume_token is not None and (exc.code in HISTORY_LOST_CODES or _history_lost(exc)):
                    why = "history_lost"
                    # Retrying the same token would fail forever: start from now, and resync.
                    self._restart_from_now(f"the change history no longer reaches back to the last "
                                           f"change seen ({_first_line(exc)})")
                else:
                    why = "failed"
                    log.warning("change stream failed (%s); reopening in %.1f s", _first_line(exc), delay)
            except PyMongoError as exc:
                why = "interrupted"
                log.warning("change stream interrupted (%s); resuming in %.1f s", _first_line(exc), delay)
            except Exception:
                log.exception("change stream watcher failed; restarting it in %.1f s", delay)
            finally:
                was_open, self._open = self._open, False
                if why:
                    metrics.FEED_RESTARTS.labels(reason=why).inc()
            if was_open:  # it ran for a while: a new failure starts the backoff afresh
                delay = FIRST_RETRY_SECONDS
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def _follow(self) -> bool:
        """One change stream, from the last change seen (or now), until it fails or ends; True
        when it ended because it was invalidated."""
        assert self.database is not None
        pipeline = [{"$match": {"$or": [{"ns.coll": {"$in": list(WATCHED)}},
                                        {"operationType": {"$in": ["dropDatabase", "invalidate"]}}]}}]
        # try_next, not `async for`: each call is one getMore that waits at most a second, so
        # the client's operation timeout bounds a hung server without ending a quiet stream.
        async with await self.database.watch(
            pipeline, full_document="updateLookup", resume_after=self._resume_token,
            max_await_time_ms=1000,
        ) as stream:
            self._open = True
            self._ready.set()
            if self._resync_reason is not None:
                # Only now: a subscriber's reload reads the database after this stream is
                # watching, so no change falls between the two.
                reason, self._resync_reason = self._resync_reason, None
                self.resync(reason)
            while stream.alive:
                event = await stream.try_next()
                if event is None:
                    continue
                if not self._handle(event, stream.resume_token):
                    return True
        return False

    def _handle(self, event: Mapping[str, Any], token: Mapping[str, Any] | None) -> bool:
        """Deliver one event; False when the stream must be reopened from now."""
        operation = event.get("operationType")
        if operation in DOCUMENT_OPERATIONS:
            try:
                change = _to_change(event)
            except (KeyError, TypeError, AttributeError) as exc:
                self._resume_token = token  # never read it again
                log.error("unreadable %s change event (%r); skipping it", operation, exc)
                self.resync(f"an unreadable {operation} event was skipped")
                return True
            self._resume_token = token
            _measure_lag(event)
            self._deliver(change)
            return True
        if operation in LOSSY_OPERATIONS:
            where = event.get("ns", {}).get("coll") or event.get("ns", {}).get("db") or "the database"
            if operation == "invalidate":
                # An invalidated stream cannot be resumed after its own token: start again.
                self._restart_from_now("the change stream was invalidated")
                return False
            self._resume_token = token
            self.resync(f"{operation} of {where}")
            return True
        # Anything else (create, createIndexes, modify ...) changes no document we show.
        self._resume_token = token
        log.debug("change event %s ignored", operation)
        return True

    def _restart_from_now(self, reason: str) -> None:
        self._resume_token = None
        self._resync_reason = reason


def _ended(task: asyncio.Task[None]) -> None:
    """The supervisor itself never returns; if something gets past it, say so (and /readyz
    fails, as `healthy` looks at the task)."""
    if not task.cancelled():
        log.error("the change-stream watcher stopped: %r; the event feed is down", task.exception())


def _measure_lag(event: Mapping[str, Any]) -> None:
    """How far behind the database's clock this change is read (its `wallTime`, or the
    second-precision `clusterTime` where the server sends no wall time)."""
    written = event.get("wallTime")
    if isinstance(written, datetime):
        at = written if written.tzinfo else written.replace(tzinfo=UTC)
        metrics.set_feed_lag(max(0.0, (datetime.now(UTC) - at).total_seconds()))
        return
    cluster = event.get("clusterTime")
    if isinstance(cluster, Timestamp):
        metrics.set_feed_lag(max(0.0, time.time() - cluster.time))


def _history_lost(error: OperationFailure) -> bool:
    message = str(error).lower()
    return "resume token was not found" in message or "resume point may no longer be in the oplog" in message


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


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
