"""The change-stream watcher under the faults a class day brings: a collection or the whole
database dropped (a `mongorestore --drop`), an invalidated stream, lost history, a bug.

The watcher must survive every one of them, tell every subscriber to resynchronise when changes
may have been missed, and go on delivering. Drops and invalidation are produced for real on
SecantusDB (it emits `drop`, `dropDatabase` and `invalidate` events as MongoDB does). Lost
history cannot be produced there: SecantusDB resumes from any well-formed token, even one older
than its oplog, instead of failing with ChangeStreamHistoryLost, so that case (and an
unexpected exception) runs the watcher loop over a stub database raising pymongo's own
exception classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from kubekvm.database import Connection, connect
from kubekvm.events import Change, ChangeStreamFeed, EventFeed, Subscription
from kubekvm.streams import BatchKind, LabChangeKind, host_assignments, lab_changes

WAIT = 20.0


@pytest.fixture
async def connection(secantus_uri: str) -> AsyncIterator[Connection]:
    connection = await connect(secantus_uri, database=f"t{uuid.uuid4().hex[:12]}")
    yield connection
    await connection.client.drop_database(connection.database.name)
    await connection.close()


@pytest.fixture
async def feed(connection: Connection) -> AsyncIterator[ChangeStreamFeed]:
    feed = ChangeStreamFeed(database=connection.database)
    await feed.start()
    yield feed
    await feed.stop()


async def next_matching(subscription: Subscription, predicate: Callable[[Change], bool]) -> Change:
    async def scan() -> Change:
        while True:
            change = await subscription.next()
            if predicate(change):
                return change
    return await asyncio.wait_for(scan(), WAIT)


async def test_a_hosts_heartbeat_reaches_no_subscriber(connection: Connection, feed: ChangeStreamFeed) -> None:
    """Every agent's heartbeat writes its host's record: were hosts followed, each beat of 200
    hosts would wake every subscriber of every replica for nothing (no subscriber shows a host)."""
    db = connection.database
    async with feed.subscribe() as subscription:
        await db.hosts.insert_one({"_id": "h1", "name": "h1"})
        await db.hosts.update_one({"_id": "h1"}, {"$set": {"last_heartbeat": 1}})
        await db.machines.insert_one({"_id": "after-the-beat", "host": "h1"})
        # Changes arrive in order: had the host's writes been delivered, they would come first.
        first = await next_matching(subscription, lambda c: True)
        assert (first.collection, first.id) == ("machines", "after-the-beat")


async def test_a_dropped_collection_resyncs_every_subscriber_and_the_feed_goes_on(
        connection: Connection, feed: ChangeStreamFeed) -> None:
    db = connection.database
    async with feed.subscribe() as first, feed.subscribe() as second:
        await db.machines.insert_one({"_id": "m1", "host": "h1"})
        assert (await next_matching(first, lambda c: c.collection == "machines")).operation == "insert"

        await db.machines.drop()  # what `mongorestore --drop` does before it restores

        for subscription in (first, second):
            await next_matching(subscription, lambda c: c.resync)
        assert feed.healthy
        await db.console_sessions.insert_one({"_id": "after-the-drop"})
        for subscription in (first, second):
            change = await next_matching(subscription, lambda c: c.collection == "console_sessions")
            assert change.id == "after-the-drop"
        # A cursor from before the gap cannot be resumed from any more: replaying it would skip it.
        assert feed.replay_after("anything-from-before") is None


async def test_a_dropped_database_invalidates_the_stream_which_reopens_from_now(
        connection: Connection, feed: ChangeStreamFeed) -> None:
    db = connection.database
    async with feed.subscribe() as subscription:
        await db.console_sessions.insert_one({"_id": "before"})
        await next_matching(subscription, lambda c: c.id == "before")

        await connection.client.drop_database(db.name)  # drop of each collection, dropDatabase, invalidate

        # Each drop resyncs at once; the change that says the stream is watching again is the
        # one after the invalidation (an insert before it could fall in the gap, by design).
        await next_matching(subscription, lambda c: c.resync and "invalidated" in c.reason)
        await db.console_sessions.insert_one({"_id": "after"})
        assert (await next_matching(subscription, lambda c: c.collection == "console_sessions")).id == "after"
        assert feed.healthy


# ------------------------------------------------------------- the loop, over a stub


def event(token: str, collection: str = "machines", key: str = "m1") -> dict[str, Any]:
    return {"_id": {"_data": token}, "operationType": "insert", "ns": {"db": "t", "coll": collection},
            "documentKey": {"_id": key}, "fullDocument": {"_id": key, "host": "h1"}}


class StubStream:
    """A change stream that yields `events`, then raises `then` (or waits forever)."""

    def __init__(self, events: list[dict[str, Any]], then: BaseException | None = None) -> None:
        self.events, self.then = list(events), then
        self.resume_token: dict[str, Any] | None = None
        self.alive = True

    async def try_next(self) -> dict[str, Any] | None:
        if self.events:
            found = self.events.pop(0)
            self.resume_token = found["_id"]
            return found
        if self.then is not None:
            raise self.then
        await asyncio.Event().wait()
        return None

    def __aiter__(self) -> StubStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            found = await self.try_next()
            if found is not None:
                return found

    async def __aenter__(self) -> StubStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class StubDatabase:
    """`watch` answers from `opens` in turn (the last one again when they run out); any watch
    that resumes after a token in `lost` fails as a server whose oplog no longer has it."""

    def __init__(self, opens: list[Callable[[], StubStream]], *, lost: tuple[str, ...] = ()) -> None:
        self.opens, self.lost = opens, lost
        self.resumed_after: list[str | None] = []
        self.opened = asyncio.Event()

    async def watch(self, pipeline: list[Any], **options: Any) -> StubStream:
        token = options.get("resume_after")
        self.resumed_after.append(token["_data"] if token else None)
        if token is not None and token["_data"] in self.lost:
            raise OperationFailure("Resume of change stream was not possible, as the resume point may "
                                   "no longer be in the oplog.", code=286)
        stream = (self.opens.pop(0) if len(self.opens) > 1 else self.opens[0])()
        self.opened.set()
        return stream


async def test_lost_history_restarts_from_now_and_resyncs() -> None:
    stub = StubDatabase([lambda: StubStream([event("t1")], then=AutoReconnect("connection reset")),
                         lambda: StubStream([])], lost=("t1",))
    feed = ChangeStreamFeed(database=stub)  # type: ignore[arg-type]
    async with feed.subscribe() as subscription:
        await feed.start()
        try:
            assert (await next_matching(subscription, lambda c: True)).cursor == "t1"
            await next_matching(subscription, lambda c: c.resync)
            # Resumed once after t1, was told its history is gone, and started from now,
            # instead of retrying t1 for ever.
            assert stub.resumed_after[:3] == [None, "t1", None]
            assert feed.healthy
        finally:
            await feed.stop()


async def test_the_watcher_survives_an_unexpected_error_and_is_down_meanwhile() -> None:
    failing = StubStream([event("t1")], then=RuntimeError("a bug in the watcher"))
    stub = StubDatabase([lambda: failing, lambda: StubStream([event("t2", key="m2")])])
    feed = ChangeStreamFeed(database=stub)  # type: ignore[arg-type]
    async with feed.subscribe() as subscription:
        await feed.start()
        try:
            await next_matching(subscription, lambda c: c.cursor == "t1")
            assert (await next_matching(subscription, lambda c: c.cursor == "t2")).id == "m2"
            assert stub.resumed_after[:2] == [None, "t1"]  # resumed where it was
            assert feed.healthy
        finally:
            await feed.stop()
    assert not feed.healthy


async def test_an_unreadable_event_is_skipped_with_a_resync() -> None:
    broken = {"_id": {"_data": "t1"}, "operationType": "update", "ns": {"db": "t", "coll": "machines"}}
    stub = StubDatabase([lambda: StubStream([broken, event("t2")])])
    feed = ChangeStreamFeed(database=stub)  # type: ignore[arg-type]
    async with feed.subscribe() as subscription:
        await feed.start()
        try:
            assert (await next_matching(subscription, lambda c: True)).resync
            assert (await next_matching(subscription, lambda c: True)).cursor == "t2"
        finally:
            await feed.stop()


# ------------------------------------------------------------- what subscribers do with it


class Machines:
    def __init__(self) -> None:
        self.reads = 0

    async def host_assignments(self, host: str) -> list[Any]:
        self.reads += 1
        return []


async def test_an_agent_feed_sends_a_fresh_snapshot_on_resync() -> None:
    feed = EventFeed()
    source = Machines()
    batches = host_assignments(services=source, feed=feed, host="h1")
    assert (await anext(batches)).kind == BatchKind.SNAPSHOT
    pending = asyncio.ensure_future(anext(batches))
    feed.resync("a test")
    batch = await asyncio.wait_for(pending, WAIT)
    assert batch.kind == BatchKind.SNAPSHOT and source.reads == 2
    await batches.aclose()  # type: ignore[attr-defined]


async def test_a_lab_subscriber_is_told_to_reload_on_resync(connection: Connection) -> None:
    feed = EventFeed()
    subscribed = asyncio.Event()
    changes = lab_changes(feed=feed, subscribed=subscribed)
    pending = asyncio.ensure_future(anext(changes))
    await asyncio.wait_for(subscribed.wait(), WAIT)
    feed.resync("a test")
    assert (await asyncio.wait_for(pending, WAIT)).kind == LabChangeKind.RESYNC
    await changes.aclose()  # type: ignore[attr-defined]


async def test_the_feed_is_down_while_the_stream_cannot_open_and_up_once_it_does() -> None:
    """What /readyz reports: `healthy` is false while no stream is open."""
    stub = StubDatabase([lambda: StubStream([event("t1")])])
    refusals = iter([AutoReconnect("connection refused")] * 3)
    opening = stub.watch

    async def flaky(pipeline: list[Any], **options: Any) -> StubStream:
        refusal = next(refusals, None)
        if refusal is not None:
            raise refusal
        return await opening(pipeline, **options)

    stub.watch = flaky  # type: ignore[method-assign]
    feed = ChangeStreamFeed(database=stub, start_timeout=0.05)  # type: ignore[arg-type]
    async with feed.subscribe() as subscription:
        await feed.start()  # gives up waiting, logs, and keeps trying in the background
        try:
            assert not feed.healthy
            assert (await next_matching(subscription, lambda c: True)).cursor == "t1"
            assert feed.healthy
        finally:
            await feed.stop()


async def test_a_lab_subscriber_cancelled_while_it_reads_leaves_no_subscription(connection: Connection) -> None:
    """A page closed (or an agent gone) while its stream still reads what it needs from the
    database: the subscription must go with it. pymongo's async client, cancelled in the middle
    of a cursor, could leave the task waiting for good, holding its feed subscription (here:
    about 1 in 20 such cancellations, with timeoutMS set)."""
    await connection.database.deployments.insert_many([{"name": f"lab-{i}"} for i in range(50)])
    feed = EventFeed()
    for steps in range(60):  # cancelled at a different point of its reads each time
        subscribed = asyncio.Event()

        async def follow(subscribed: asyncio.Event = subscribed) -> None:
            async for _ in lab_changes(feed=feed, subscribed=subscribed):
                pass

        task = asyncio.ensure_future(follow())
        await asyncio.wait_for(subscribed.wait(), WAIT)
        for _ in range(steps):
            await asyncio.sleep(0)  # one turn of the loop: let the reads get that far
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=WAIT)
        assert done, f"the cancelled subscriber was still running {WAIT:.0f} s later (after {steps} steps)"
        assert feed.subscriber_count == 0


async def test_stopping_does_not_wait_for_good_on_a_watcher_that_ignores_cancellation(
        caplog: pytest.LogCaptureFixture) -> None:
    """The shutdown hang: a watcher stuck in a read that swallows its cancellation (pymongo's
    async cursor did) kept `kubekvm serve` from exiting on SIGTERM. Stopping now gives up after
    the grace, says so, and the rest of shutdown (closing the client) goes on."""
    release = asyncio.Event()

    async def stuck() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    feed = EventFeed(stop_grace=0.2)
    feed._task = asyncio.create_task(stuck())
    await asyncio.sleep(0)  # not synchronisation: let the task reach its await before the cancel
    await asyncio.wait_for(feed.stop(), timeout=10)
    assert "did not end within" in caplog.text
    release.set()
