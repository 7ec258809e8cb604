"""The embedded database: SecantusDB as a child process of `kubekvm serve`, for `make run` and
small installations without a MongoDB (`MONGODB_URI` unset).

SecantusDB (`secantusd-py`, a MongoDB wire-compatible single-node replica set) is GPL-2.0: it is
only ever started as a separate program, never imported. `EmbeddedDatabase` starts it on
127.0.0.1 with its files under `<data dir>/db` (its pid in `<data dir>/db.pid`, its log in
`<data dir>/db.log`), asks Linux to stop it when the server dies however it dies, and
supervises it (`supervise`): when the child dies it is reaped and started again, with backoff,
on the same port and files, and the client reconnects by itself. `running_embedded` finds the
one a running server keeps, so the admin commands (`kubekvm user create` ...) work on it as a
second client while the server runs.
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
from pathlib import Path

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from kubekvm.database import DatabaseUnavailable

log = logging.getLogger(__name__)


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
