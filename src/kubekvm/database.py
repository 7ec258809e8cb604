"""Connecting to MongoDB, or starting the embedded one.

With `MONGODB_URI` unset, `kubekvm serve` runs SecantusDB (`secantusd-py`, a MongoDB
wire-compatible single-node replica set) as a child process with its files under
`<data dir>/db`. SecantusDB is GPL-2.0: it is only ever started as a separate program, never
imported. With `MONGODB_URI` set, that server is used and nothing is started.

`connect()` also finds out whether the server has change streams (any replica set does);
the event feed needs them to carry changes between server replicas.
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
from dataclasses import dataclass
from pathlib import Path

from beanie import init_beanie
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, PyMongoError

from kubekvm.models import DOCUMENT_MODELS

log = logging.getLogger(__name__)

Database = AsyncDatabase[dict[str, object]]


class DatabaseUnavailable(Exception):
    """The database cannot be started or reached; the message is one line for a person."""


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


def _stop_stale(pid_file: Path) -> None:
    """A database left running by a server that died before PDEATHSIG existed (or on another
    kernel) still holds the files' lock: stop it if it is ours."""
    try:
        pid = int(pid_file.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"secantusd" in command:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)


class EmbeddedDatabase:
    """A SecantusDB child process on 127.0.0.1 with its data under `storage`."""

    def __init__(self, *, storage: Path | None, port: int | None = None) -> None:
        self.storage = storage
        self.port = port or _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    async def start(self, *, timeout: float = 30.0) -> str:
        path = ":memory:"
        if self.storage is not None:
            self.storage.mkdir(parents=True, exist_ok=True)
            path = str(self.storage)
        log_path = (self.storage.parent if self.storage else Path(os.devnull))
        output = open(log_path / "db.log", "ab") if self.storage else subprocess.DEVNULL
        if self.storage is not None:
            _stop_stale(self.storage.parent / "db.pid")
        self._process = subprocess.Popen(
            [_secantus_command(), "--host", "127.0.0.1", "--port", str(self.port),
             "--storage-path", path],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
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

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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

    async def ping(self) -> bool:
        try:
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


async def connect(uri: str, *, database: str, timeout: float = 10.0) -> Connection:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=int(timeout * 1000), tz_aware=True
    )
    try:
        await client.admin.command("ping")
    except PyMongoError as exc:
        await client.close()
        first_line = str(exc).splitlines()[0][:200]
        raise DatabaseUnavailable(
            f"cannot reach MongoDB at {describe_uri(uri)}: {first_line}"
        ) from None
    db = client[database]
    await init_beanie(database=db, document_models=DOCUMENT_MODELS)
    return Connection(client=client, database=db, uri=uri, change_streams=await _has_change_streams(db))


async def _has_change_streams(db: Database) -> bool:
    try:
        stream = await db.watch(max_await_time_ms=1)
    except (OperationFailure, NotImplementedError, PyMongoError) as exc:
        log.debug("change streams unavailable: %s", exc)
        return False
    with contextlib.suppress(PyMongoError):
        await stream.close()
    return True
