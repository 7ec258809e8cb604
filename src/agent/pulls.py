"""Pulls: images of the server's image store, fetched into the image directory when a machine
assigned here needs one the host does not hold yet.

A store image is named by its digest (``sha256-<hex>.qcow2``); any other name is a file the
administrator put there, never pulled. A pull downloads ``GET /images/sha256:<hex>/file`` with
the host token into a hidden partial file in the image directory (``.sha256-<hex>.qcow2.pull``),
then checks the sha256 of the whole file against the name, fsyncs it and renames it into place:
the image directory only ever holds whole, verified images under their real names. A pull
that breaks off (the server went away, the agent was killed) keeps its partial file, and the
next one asks for the rest with ``Range``; one whose bytes do not match the digest is deleted
and reported. Before downloading, the free space of the image directory is checked against what
is left to fetch: a host whose disk would fill up says so instead of filling it.

The transfer runs in a worker thread (plain ``http.client``; the event loop never waits on the
network or the disk), one pull per image however many machines wait for it; `request` tells
the reconciler where a pull stands, and `on_done` pokes it when one ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent import metrics

log = logging.getLogger(__name__)

_STORE_NAME = re.compile(r"sha256-([0-9a-f]{64})\.qcow2")
_BLOCK = 1024 * 1024
PARTIAL_SUFFIX = ".pull"
# A failed pull is tried again after this long (the reconciler asks on every pass).
RETRY_SECONDS = 30.0
# Left free on the image directory's file system beyond the image itself.
RESERVE_BYTES = 64 * 1024 * 1024


class PullFailed(RuntimeError):
    pass


@dataclass
class Pull:
    image: str
    done: int = 0
    # Bytes this pull received (less than `done` when it resumed a partial file).
    fetched: int = 0
    total: int | None = None
    error: str | None = None
    failed_at: float = 0.0
    finished: bool = False
    stop: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> str:
        if self.total:
            return f"pulling image {self.image}: {100 * self.done // self.total}% of {self.total // (1024 * 1024)} MiB"
        return f"pulling image {self.image}"


def digest_of(image: str) -> str | None:
    found = _STORE_NAME.fullmatch(image)
    return found.group(1) if found else None


class Pulls:
    def __init__(self, *, directory: Path, servers: tuple[str, ...], token_source: Callable[[], str | None],
                 on_done: Callable[[], None] = lambda: None, timeout: float = 60.0) -> None:
        self.directory = directory.absolute()
        self.servers = servers
        self.token_source = token_source
        self.on_done = on_done
        self.timeout = timeout
        self.pulls: dict[str, Pull] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self, image: str) -> Pull | None:
        """Where the pull of `image` stands, starting it if need be; None when `image` is not a
        store image (nothing to pull) or is already here."""
        if digest_of(image) is None or (self.directory / image).is_file():
            return None
        pull = self.pulls.get(image)
        if pull is not None and (pull.error is None or time.monotonic() - pull.failed_at < RETRY_SECONDS):
            return pull
        pull = Pull(image=image)
        self.pulls[image] = pull
        task = asyncio.create_task(self._run(pull), name=f"pull-{image[:19]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pull

    def in_progress(self) -> list[Pull]:
        return [p for p in self.pulls.values() if p.error is None and not p.finished]

    def report(self) -> list[dict[str, Any]]:
        """The pulls under way or failed, as the heartbeat carries them (`documents.heartbeat`)."""
        return [{"image": p.image, "doneBytes": p.done, "totalBytes": p.total, "error": p.error or ""}
                for p in self.pulls.values() if not p.finished][:50]

    def drop(self, images: list[str], *, in_use: set[str]) -> list[str]:
        """Deletes the store images the server garbage-collected, unless a machine here still
        needs one (then the server will not have collected it: this is a second lock)."""
        dropped = []
        for image in images:
            if digest_of(image) is None or image in in_use:
                continue
            path = self.directory / image
            if path.is_file():
                path.unlink()
                dropped.append(image)
                log.info("deleted image %s: the store retired it", image)
            self._partial(image).unlink(missing_ok=True)
            self.pulls.pop(image, None)
        return dropped

    async def close(self) -> None:
        for pull in self.pulls.values():
            pull.stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, pull: Pull) -> None:
        try:
            await asyncio.to_thread(self._download, pull)
            pull.finished = True
            metrics.IMAGE_PULLS.labels(outcome="ok").inc()
            log.info("pulled image %s (%d bytes, %d of them by this pull)", pull.image, pull.done, pull.fetched)
        except PullFailed as error:
            pull.error, pull.failed_at = str(error), time.monotonic()
            metrics.IMAGE_PULLS.labels(outcome="failed").inc()
            log.warning("pull of image %s failed: %s", pull.image, error)
        except Exception as error:  # a bug must not kill the agent: the machine reports it
            pull.error, pull.failed_at = f"pull failed: {error!r}", time.monotonic()
            metrics.IMAGE_PULLS.labels(outcome="error").inc()
            log.exception("pull of image %s failed", pull.image)
        finally:
            metrics.IMAGE_PULL_BYTES.inc(pull.fetched)
            self.on_done()

    def _download(self, pull: Pull) -> None:
        errors = []
        for server in self.servers:
            try:
                self._download_from(server, pull)
                return
            except (OSError, http.client.HTTPException) as error:
                if isinstance(error, OSError) and error.errno == 28:  # ENOSPC
                    self._partial(pull.image).unlink(missing_ok=True)
                    raise PullFailed(f"the image directory {self.directory} ran out of disk space while "
                                     f"pulling {pull.image}; the partial file was removed") from None
                errors.append(f"{server}: {error}")
        raise PullFailed(f"could not reach a server to pull {pull.image}: {'; '.join(errors)}")

    def _partial(self, image: str) -> Path:
        return self.directory / f".{image}{PARTIAL_SUFFIX}"

    def _download_from(self, server: str, pull: Pull) -> None:
        digest = digest_of(pull.image)
        assert digest is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self._partial(pull.image)
        have = partial.stat().st_size if partial.is_file() else 0
        where = urlsplit(server)
        connection_class = http.client.HTTPSConnection if where.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(where.hostname or "localhost", where.port, timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.token_source() or ''}"}
        if have:
            headers["Range"] = f"bytes={have}-"
            log.info("resuming the pull of %s from byte %d", pull.image, have)
        try:
            prefix = where.path.rstrip("/").removesuffix("/graphql")
            connection.request("GET", f"{prefix}/images/sha256:{digest}/file", headers=headers)
            answer = connection.getresponse()
            if answer.status == 416 and have:  # the partial file is whole already: verify it
                answer.read()
                total = have
            elif answer.status in (200, 206):
                if answer.status == 200:
                    have = 0
                total = _total(answer, have)
                self._check_space(pull.image, total - have)
                pull.total, pull.done = total, have
                with partial.open("ab" if have else "wb") as writing:
                    while not pull.stop.is_set():
                        block = answer.read(_BLOCK)
                        if not block:
                            break
                        writing.write(block)
                        pull.done += len(block)
                        pull.fetched += len(block)
                    writing.flush()
                    os.fsync(writing.fileno())
                if pull.stop.is_set():
                    raise PullFailed("the agent is stopping; the pull resumes when it starts again")
                if pull.done < total:
                    raise OSError(f"the server sent {pull.done} of {total} bytes")
            else:
                raise PullFailed(f"the server refused the pull of {pull.image} (HTTP {answer.status}): "
                                 f"{_said(answer.read())}")
        finally:
            connection.close()
        self._verify_and_place(pull.image, partial, digest)

    def _check_space(self, image: str, needed: int) -> None:
        free = shutil.disk_usage(self.directory).free
        if needed + RESERVE_BYTES > free:
            raise PullFailed(f"not enough disk space to pull {image}: it needs {needed // (1024 * 1024)} MiB more "
                             f"(plus {RESERVE_BYTES // (1024 * 1024)} MiB kept free), and {self.directory} has "
                             f"{free // (1024 * 1024)} MiB free")

    def _verify_and_place(self, image: str, partial: Path, digest: str) -> None:
        hashed = hashlib.sha256()
        with partial.open("rb") as reading:
            while block := reading.read(_BLOCK):
                hashed.update(block)
        if hashed.hexdigest() != digest:
            partial.unlink(missing_ok=True)
            raise PullFailed(f"the pulled image {image} does not match its digest (got sha256:"
                             f"{hashed.hexdigest()}); it was deleted, and is pulled again on the next try")
        os.chmod(partial, 0o444)
        os.replace(partial, self.directory / image)
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _total(answer: http.client.HTTPResponse, have: int) -> int:
    ranged = answer.getheader("Content-Range", "")
    if ranged and "/" in ranged:
        with contextlib.suppress(ValueError):
            return int(ranged.rsplit("/", 1)[1])
    length = answer.getheader("Content-Length")
    if length is None or not length.isdigit():
        raise OSError("the server did not say how long the image is")
    return have + int(length)


def _said(body: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body)["message"])[:300]
    return body[:200].decode(errors="replace")
