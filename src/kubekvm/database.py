"""Connecting to MongoDB.

With `MONGODB_URI` set, that server is used and nothing is started; with it unset, `kubekvm
serve` runs the embedded database (`kubekvm.embedded`) and connects to it.

`connect()` also finds out whether the server has change streams (any replica set does);
the event feed needs them to carry changes between server replicas.

Faults: every call has a deadline (`DatabaseTimeouts`, from the settings: pymongo's
`timeoutMS`, a short server-selection timeout, `wtimeoutMS` for majority writes), so while the
database is down, restarting or electing a primary a call fails in seconds instead of hanging.
`unavailable()` is the one place that decides which database errors mean "not reachable right
now" (timeouts, lost connections, no primary); the adapters turn those into `Unavailable`
(GraphQL `UNAVAILABLE`, a 503 page) rather than an internal error. A `Connection` to the
embedded database knows it (`embedded`): while its child is down, the database is known to be
unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pymongo
from beanie import init_beanie
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, ExecutionTimeout, OperationFailure, PyMongoError, WTimeoutError

from kubekvm.course_records import COURSE_MODELS
from kubekvm.errors import Unavailable
from kubekvm.image_models import IMAGE_MODELS
from kubekvm.models import DOCUMENT_MODELS

if TYPE_CHECKING:  # kubekvm.embedded imports this module
    from kubekvm.embedded import EmbeddedDatabase

log = logging.getLogger(__name__)

Database = AsyncDatabase[dict[str, object]]
T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """The database cannot be started or reached; the message is one line for a person."""


UNAVAILABLE_MESSAGE = "The database is not answering right now; try again in a few seconds."

# Server error codes that mean "this server cannot serve you at the moment" (a primary stepping
# down, a node shutting down or not yet primary, a server-side time limit), whatever exception
# class pymongo wraps them in.
_TRANSIENT_CODES = frozenset({6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


def unavailable(error: BaseException) -> Unavailable | None:
    """The `Unavailable` a database fault amounts to (no server reachable or selectable in time,
    a lost connection, a timed-out call, no primary during an election), or None for any other
    error, which stays a bug to report. Looks through the chain of causes, so a fault wrapped
    by a library still counts."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PyMongoError) and _transient(current):
            return Unavailable(UNAVAILABLE_MESSAGE)
        if isinstance(current, BaseExceptionGroup):  # from a task group (a streaming response)
            return next((found for inner in current.exceptions if (found := unavailable(inner))), None)
        current = current.__cause__ or current.__context__
    return None


def _transient(error: PyMongoError) -> bool:
    if isinstance(error, (ConnectionFailure, ExecutionTimeout, WTimeoutError)) or error.timeout:
        return True
    if error.has_error_label("TransientTransactionError") or error.has_error_label("RetryableWriteError"):
        return True
    return isinstance(error, OperationFailure) and error.code in _TRANSIENT_CODES


async def uninterrupted(call: Coroutine[Any, Any, T]) -> T:
    """Await database work that a cancellation of the caller does not interrupt midway: the
    caller leaves at once, the work finishes (or times out, `DatabaseTimeouts`) on its own.

    For the reads of a subscription or a live stream, which are cancelled whenever their client
    goes: pymongo's async client (4.20), cancelled in the middle of a cursor, can leave the
    cancelled task waiting for good (seen here: 1 in 20 cancelled reads with timeoutMS set), and
    with it the feed subscription the task holds, which then leaks."""
    task = asyncio.ensure_future(call)
    task.add_done_callback(_retrieve)
    return await asyncio.shield(task)


def _retrieve(task: asyncio.Future[Any]) -> None:
    # Whoever awaited it may have left: the outcome is theirs no more, and no one should be
    # told "exception never retrieved" about it.
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True, kw_only=True)
class DatabaseTimeouts:
    """How long a database call may take (`Settings.db_*`); 0 operation timeout: no limit.

    With `timeoutMS` set pymongo gives server selection the whole operation budget (and retries
    within it), so a call made while the database is down would wait all of it: `Connection.
    available` lets requests fail at once instead, once the client's monitor has seen the
    server go (it checks every `heartbeat` seconds; a dropped connection it sees at once)."""

    operation: float = 10.0
    server_selection: float = 2.0
    write_concern: float = 5.0
    heartbeat: float = 1.0
    connect: float = 5.0  # also bounds the monitor's check of a server that accepts but never answers

    def client_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"serverSelectionTimeoutMS": _ms(self.server_selection),
                                   "wtimeoutMS": _ms(self.write_concern), "tz_aware": True,
                                   "heartbeatFrequencyMS": max(500, _ms(self.heartbeat)),
                                   "connectTimeoutMS": _ms(self.connect)}
        if self.operation > 0:
            options["timeoutMS"] = _ms(self.operation)
        return options


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass
class Connection:
    client: AsyncMongoClient[dict[str, object]]
    database: Database
    uri: str
    change_streams: bool
    embedded: EmbeddedDatabase | None = None

    @property
    def available(self) -> bool:
        """False while the database is known to be unreachable: the embedded child is down, or
        the client's monitor sees no server it could write to (down, or a replica set between
        primaries). Requests then get UNAVAILABLE at once (`kubekvm.faults`) rather than each
        waiting out its timeout; the monitor notices the database back within a heartbeat."""
        if self.embedded is not None and not self.embedded.running:
            return False
        return self.client.topology_description.has_writable_server()

    async def ping(self, *, timeout: float = 1.0) -> bool:
        """Whether the database answers within `timeout` (the readiness probe must answer fast
        itself, not after the probe's own deadline)."""
        if not self.available:
            return False
        try:
            with pymongo.timeout(timeout):
                await self.client.admin.command("ping")
            return True
        except PyMongoError:
            return False

    async def close(self) -> None:
        await self.client.close()


def describe_uri(uri: str) -> str:
    """The URI without credentials, for logs and the server page."""
    scheme, _, rest = uri.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}://{rest.split('?', 1)[0]}"


async def connect(uri: str, *, database: str, timeout: float = 10.0,
                  timeouts: DatabaseTimeouts | None = None,
                  embedded: EmbeddedDatabase | None = None) -> Connection:
    """A client with the deadlines of `timeouts` on every call, once the server answers (it is
    given `timeout` seconds to, at start-up)."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        uri, **(timeouts or DatabaseTimeouts()).client_options())
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await client.admin.command("ping")
            break
        except PyMongoError as exc:
            if asyncio.get_running_loop().time() < deadline and unavailable(exc) is not None:
                await asyncio.sleep(0.1)  # each try already waited for server selection
                continue
            await client.close()
            first_line = str(exc).splitlines()[0][:200]
            raise DatabaseUnavailable(
                f"cannot reach MongoDB at {describe_uri(uri)}: {first_line}"
            ) from None
    db = client[database]
    await init_beanie(database=db, document_models=[*DOCUMENT_MODELS, *IMAGE_MODELS, *COURSE_MODELS])
    return Connection(client=client, database=db, uri=uri, change_streams=await _has_change_streams(db),
                      embedded=embedded)


async def _has_change_streams(db: Database) -> bool:
    try:
        stream = await db.watch(max_await_time_ms=1)
    except (OperationFailure, NotImplementedError, PyMongoError) as exc:
        log.debug("change streams unavailable: %s", exc)
        return False
    with contextlib.suppress(PyMongoError):
        await stream.close()
    return True
