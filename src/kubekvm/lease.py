"""A lease in MongoDB: which one server replica does a periodic job right now.

Several replicas run the same code; jobs such as the janitor (`kubekvm.janitor`) must run on
exactly one of them at a time, and on another one soon after that one dies. A lease is one
document `{_id: <job>, holder, expires}` in the `leases` collection. Taking or renewing it is
one conditional update — "set me as holder until now+ttl, where the holder is me or the lease
has expired", upserting when there is none — so two replicas can never both believe they hold
it: the unique `_id` turns the second upsert into a duplicate-key refusal.

A holder renews well within `ttl`; one that stops renewing (killed, partitioned) loses the
lease when it expires and another replica takes it over. Times come from `clock`, so tests
move time instead of waiting. Holders should keep the work of one turn shorter than the ttl
(it is re-checked before each turn, not during it).

`Periodic` is the loop a job needs on top: every interval, take or renew the lease and, if held,
do one turn; a failed turn is logged and the next one comes; stopping hands the lease over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from kubekvm.database import unavailable
from kubekvm.models import utcnow

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def holder_name() -> str:
    """This process, as a lease shows it: host name and a random suffix (two replicas in one
    pod, or a restarted one, are different holders)."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(self, *, collection: AsyncCollection[dict[str, Any]], name: str, ttl_seconds: float,
                 holder: str | None = None, clock: Clock = utcnow) -> None:
        if ttl_seconds <= 0:
            raise ValueError("a lease needs a positive ttl")
        self.collection = collection
        self.name = name
        self.ttl = timedelta(seconds=ttl_seconds)
        self.holder = holder or holder_name()
        self.clock = clock
        self._held = False

    @property
    def held(self) -> bool:
        """Whether the last acquire() got the lease (it may have expired since, if not renewed)."""
        return self._held

    async def acquire(self) -> bool:
        """Take the lease, or renew it if this holder has it; False if another holder's lease
        has not expired. One conditional update, safe against every other replica."""
        now = self.clock()
        try:
            document = await self.collection.find_one_and_update(
                {"_id": self.name, "$or": [{"holder": self.holder}, {"expires": {"$lte": now}}]},
                {"$set": {"holder": self.holder, "expires": now + self.ttl, "renewed": now}},
                upsert=True, return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            document = None  # held by another, unexpired: our upsert collided with its document
        got = document is not None and document.get("holder") == self.holder
        if got and not self._held:
            log.info("lease %s taken by %s", self.name, self.holder)
        if self._held and not got:
            log.warning("lease %s lost by %s", self.name, self.holder)
        self._held = got
        return got

    async def release(self) -> None:
        """Give the lease up now (on shutdown), so another replica need not wait for expiry."""
        if self._held:
            await self.collection.update_one({"_id": self.name, "holder": self.holder},
                                             {"$set": {"expires": self.clock()}})
            self._held = False

    async def current_holder(self) -> str | None:
        """Who holds the lease now (None: nobody, or it expired)."""
        document = await self.collection.find_one({"_id": self.name})
        if document is None or document["expires"] <= self.clock():
            return None
        holder: str = document["holder"]
        return holder


class Periodic:
    """Run `turn` every `interval_seconds` on whichever replica holds `lease`; `turn(held)` is
    told whether this replica holds it (a job drops what it remembered when it does not)."""

    def __init__(self, *, lease: Lease, interval_seconds: float,
                 turn: Callable[[bool], Awaitable[object]]) -> None:
        self.lease = lease
        self.interval = interval_seconds
        self.turn = turn
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def run_once(self) -> bool:
        """One turn; whether this replica held the lease for it."""
        held = await self.lease.acquire()
        await self.turn(held)
        return held

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception as error:
                # A database outage or a bug must not stop the job for good: next turn. An
                # outage is one line (the server says so elsewhere too); a bug its traceback.
                if unavailable(error) is not None:
                    log.warning("%s turn skipped: the database is unavailable (%s)", self.lease.name,
                                type(error).__name__)
                else:
                    log.exception("%s turn failed", self.lease.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    def start(self) -> None:
        if self._task is None:
            self._stopping = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name=self.lease.name)

    async def stop(self, *, timeout: float = 3.0) -> None:
        """Stop turning and hand the lease over at once. A turn in progress is let finish (a
        renewal cut off mid-flight could still land after the release and hold the lease until
        it expires); bounded: a database that is down at shutdown must not hold the server up
        (the lease then simply expires)."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            await asyncio.wait({task}, timeout=timeout)
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.lease.release(), timeout)
