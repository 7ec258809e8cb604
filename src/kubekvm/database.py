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
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
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
        self._process = subprocess.Popen(
            [_secantus_command(), "--host", "127.0.0.1", "--port", str(self.port),
             "--storage-path", path],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
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
