"""The service layer's shared context: the database-facing helpers every noun module uses.

`Context` holds what every operation needs besides the database (the settings, the event feed,
what the server says of itself) and publishes the documents it writes to this process's feed
where the database has no change streams. `finish` runs a change and its consequences as one
unit; `backoff` spaces out the retries of a contended compare-and-set.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from beanie import PydanticObjectId
from beanie.odm.enums import SortDirection
from bson import ObjectId
from bson.errors import InvalidId

from kubekvm import __version__, metrics
from kubekvm.config import Settings
from kubekvm.errors import NotFound
from kubekvm.events import EventFeed
from kubekvm.models import Deployment, LabEvent, Machine

if TYPE_CHECKING:
    from kubekvm.services import Services

log = logging.getLogger(__name__)

BY_LAB_AND_INDEX = [("deployment", SortDirection.ASCENDING), ("index", SortDirection.ASCENDING)]

# A conditional write that lost to another replica is computed again from a fresh read, at most
# this many times, waiting a random fraction of a doubling delay (capped) between attempts.
WRITE_ATTEMPTS = 20
BACKOFF_FIRST_SECONDS = 0.005
BACKOFF_MAX_SECONDS = 0.25

T = TypeVar("T")
# Tasks `finish` started, kept referenced until they end (the event loop holds tasks weakly).
_finishing: set[asyncio.Task[Any]] = set()


async def backoff(attempt: int) -> None:
    """Wait before attempt `attempt + 1` of a contended write: full jitter, so replicas that
    collided once do not collide again in lockstep."""
    metrics.WRITE_RETRIES.inc()
    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * (2 ** attempt))
    await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 (jitter, not a secret)


def _log_orphan(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log.warning("a change finished after its client left, and failed: %r", error, exc_info=error)


async def finish(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end even if the caller is cancelled (a client dropped its connection:
    starlette and strawberry cancel the request's task mid-await). The caller still gets the
    result, or CancelledError at once if it was cancelled; the work goes on either way, so a
    state change is never separated from its consequences (the janitor re-runs those too)."""
    task = asyncio.ensure_future(work)
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_log_orphan)  # nobody is left to hear how it ended
        raise


@dataclass(frozen=True, kw_only=True)
class ServerInfo:
    version: str
    hostname: str
    database: str
    event_stream: str


def object_id(value: str, *, what: str) -> PydanticObjectId:
    """A document id from a client, or NotFound (a malformed id names nothing)."""
    try:
        return PydanticObjectId(ObjectId(value))
    except (InvalidId, TypeError):
        raise NotFound(f"There is no {what} with id {value!r}.") from None


def _raw(document: Any) -> dict[str, Any]:
    raw: dict[str, Any] = document.model_dump(by_alias=True)
    return raw


class Context:
    """What every noun of the service layer shares: the settings, the event feed, and what the
    server says of itself."""

    def __init__(self, *, settings: Settings, feed: EventFeed, database_description: str) -> None:
        self.settings = settings
        self.feed = feed
        self.database_description = database_description

    def published(self, document: Deployment | Machine, *, operation: str = "update") -> None:
        """A write, for the feed's subscribers where no change stream carries it (dumped only
        then: most writes are not published from here). Hosts are not in the feed (`kubekvm.events`)."""
        if not self.feed.publishes_locally:
            return
        self.feed.publish(
            collection=type(document).Settings.name, operation=operation,
            id=str(document.id), document=_raw(document),
        )

    async def publish_machines(self, query: dict[str, Any]) -> None:
        if self.feed.publishes_locally:
            for machine in await Machine.find(query).to_list():
                self.published(machine)

    async def note(self, deployment: str, message: str, *, machine: str | None = None) -> None:
        """A line of the lab's history (its page shows them)."""
        await LabEvent(deployment=deployment, machine=machine, message=message).insert()

    def server_info(self) -> ServerInfo:
        return ServerInfo(
            version=__version__, hostname=socket.gethostname(),
            database=self.database_description, event_stream=self.feed.mode,
        )


class Noun:
    """One noun of the service layer (templates, labs, …): it reaches the shared context as
    `ctx` and the other nouns through the composition root, `core` (`kubekvm.services.Services`)."""

    def __init__(self, core: Services) -> None:
        self.core = core
        self.ctx = core.ctx
