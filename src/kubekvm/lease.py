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
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

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
