"""Connecting to MongoDB, or starting the embedded one.

With `MONGODB_URI` unset, `kubekvm serve` runs SecantusDB (`secantusd-py`, a MongoDB
wire-compatible single-node replica set) as a child process with its files under
`<data dir>/db`. SecantusDB is GPL-2.0: it is only ever started as a separate program, never
imported. With `MONGODB_URI` set, that server is used and nothing is started.

`connect()` also finds out whether the server has change streams (any replica set does);
the event feed needs them to carry changes between server replicas.

Faults: every call has a deadline (`DatabaseTimeouts`, from the settings: pymongo's
`timeoutMS`, a short server-selection timeout, `wtimeoutMS` for majority writes), so while the
database is down, restarting or electing a primary a call fails in seconds instead of hanging.
`unavailable()` is the one place that decides which database errors mean "not reachable right
now" (timeouts, lost connections, no primary); the adapters turn those into `Unavailable`
(GraphQL `UNAVAILABLE`, a 503 page) rather than an internal error. The embedded database is
supervised (`EmbeddedDatabase.supervise`): when the child dies it is reaped and started again,
with backoff, on the same port and files, and the client reconnects by itself.

Longer than 400 lines: the connection and the embedded server it may start share the timeouts,
the fault classification and the supervision; splitting the embedded server out is a candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pymongo
from beanie import init_beanie
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, ExecutionTimeout, OperationFailure, PyMongoError, WTimeoutError

from kubekvm.course_records import COURSE_MODELS
from kubekvm.errors import Unavailable
from kubekvm.image_models import IMAGE_MODELS
from kubekvm.models import DOCUMENT_MODELS

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _secantus_command() -> str:
    beside_python = Path(sys.executable).parent / "secantusd-py"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("secantusd-py")
    if found is None:
        raise DatabaseUnavailable(
            "MONGODB_URI is not set and the embedded database (secantusd-py, from PyPI "
            "secantusdb==0.7.0b3) is not installed: run `make run`, or set MONGODB_URI."
        )
    return found


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the server dies, however the
    server dies (even SIGKILL), so the database files are never left locked by an orphan."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _embedded_process(pid_file: Path) -> tuple[int, list[str]] | None:
    """The pid and arguments of the SecantusDB child a server wrote into `pid_file`, while it runs."""
    try:
        pid = int(pid_file.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if b"secantusd" not in command:
        return None
    return pid, command.decode(errors="replace").split("\0")


def _stop_stale(pid_file: Path) -> None:
    """A database left running by a server that died before PDEATHSIG existed (or on another
    kernel) still holds the files' lock: stop it if it is ours."""
    found = _embedded_process(pid_file)
    if found is None:
        return
    pid = found[0]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.05)


def running_embedded(storage: Path) -> str | None:
    """The URI of the embedded database a running server keeps its files in `storage` with, or
    None when none runs. It is a database server like any other: the admin commands (`kubekvm
    user create`, `token create` ...) work on it as a second client while the server runs."""
    found = _embedded_process(storage.parent / "db.pid")
    if found is None:
        return None
    arguments = found[1]

    def option(name: str) -> str | None:
        return arguments[arguments.index(name) + 1] if name in arguments[:-1] else None

    port = option("--port")
    if option("--storage-path") != str(storage) or port is None or not port.isdigit():
        return None
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


class EmbeddedDatabase:
    """A SecantusDB child process on 127.0.0.1 with its data under `storage`."""

    def __init__(self, *, storage: Path | None, port: int | None = None) -> None:
        self.storage = storage
        self.port = port or _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = False

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def running(self) -> bool:
        """The child is alive (it may still be starting)."""
        return self._process is not None and self._process.poll() is None

    async def start(self, *, timeout: float = 30.0) -> str:
        self._stopping = False
        path = ":memory:"
        if self.storage is not None:
            self.storage.mkdir(parents=True, exist_ok=True)
            path = str(self.storage)
        log_path = (self.storage.parent if self.storage else Path(os.devnull))
        if self.storage is not None:
            _stop_stale(self.storage.parent / "db.pid")
        output = open(log_path / "db.log", "ab") if self.storage else None
        try:
            # The same port every time: a restarted child is found by the client that is
            # already connected to the old one, with no new URI to hand around.
            # --sync-on-commit: without it SecantusDB keeps acknowledged writes in its own
            # memory for a moment, and a killed child loses them (seen here: 3 of 10 inserts made
            # just before a SIGKILL). With it each commit costs ~4 ms here, which a class's
            # writes can afford; losing a lab someone was told exists they cannot.
            durable = ["--sync-on-commit"] if self.storage is not None else []
            self._process = subprocess.Popen(
                [_secantus_command(), "--host", "127.0.0.1", "--port", str(self.port),
                 "--storage-path", path, *durable],
                stdout=output or subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            if output is not None:
                output.close()  # the child has its own descriptor
        if self.storage is not None:
            (self.storage.parent / "db.pid").write_text(f"{self._process.pid}\n")
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self._process.poll() is not None:
                where = f" (see {log_path / 'db.log'})" if self.storage else ""
                raise DatabaseUnavailable(
                    f"the embedded database exited with code {self._process.returncode}{where}"
                )
            if await _answers(self.uri):
                return self.uri
            if asyncio.get_running_loop().time() > deadline:
                self.stop()
                raise DatabaseUnavailable(f"the embedded database did not answer within {timeout:.0f} s")
            await asyncio.sleep(0.1)

    async def supervise(self, *, first_delay: float = 0.5, max_delay: float = 10.0,
                        steady_seconds: float = 30.0) -> None:
        """Run until cancelled (or `stop`): whenever the child dies, reap it and start it again on
        the same port and files, after a delay that doubles while restarts keep failing (or the
        child keeps dying within `steady_seconds`). The data survives: it is on disk."""
        loop = asyncio.get_running_loop()
        delay = first_delay
        while True:
            process = self._process
            if process is None or self._stopping:
                return
            since = loop.time()
            code = await _exited(process)
            if self._stopping or self._process is not process:
                return
            if loop.time() - since >= steady_seconds:
                delay = first_delay
            log.error("the embedded database (pid %d) exited with code %s; restarting it in %.1f s",
                      process.pid, code, delay)
            while not self._stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
                try:
                    await self.start()
                except DatabaseUnavailable as error:
                    log.error("restarting the embedded database failed: %s; next try in %.1f s", error, delay)
                    continue
                log.warning("the embedded database is back (pid %d, same data)", self._process.pid)
                break

    def stop(self) -> None:
        self._stopping = True
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _exited(process: subprocess.Popen[bytes]) -> int:
    """Wait for a child to end without blocking the loop or a thread, and reap it (no zombie).
    A pidfd becomes readable when the process exits; without one (an old kernel), a thread waits."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # gone already (then wait() returns at once), or no pidfd here
        return await asyncio.to_thread(process.wait)
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        if process.poll() is None:
            await ended
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return process.wait()


async def _answers(uri: str) -> bool:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=300, connectTimeoutMS=300
    )
    try:
        await client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        await client.close()


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
