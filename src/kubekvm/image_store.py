"""The image store: a directory of content-addressed, immutable disk images, shared by every
server replica (in Kubernetes a ReadWriteMany volume).

Each image is one standalone qcow2 named by the sha256 of its bytes
(``sha256-<hex>.qcow2``, `kubekvm.image_rules.file_name`). Nothing enters under that name
but a whole, inspected, fsync'ed file: an upload or a copy is first written under a random
name in ``.incoming/`` (streamed, never held in memory), inspected with ``qemu-img`` and
judged by `kubekvm.image_rules` (raw data is converted to qcow2 there), hashed, fsync'ed, and
only then renamed into place (then the directory is fsync'ed too). Whatever fails on the way,
the staged files are removed: nothing half-imported is left, and a crash leaves at most a
file in ``.incoming/``, which `sweep` removes once it is old (a replica's upload in progress
keeps its file's modification time fresh).

Every file operation and every hash runs in a worker thread, and every ``qemu-img`` run in a
child process with a timeout: the event loop serving pages never waits on a disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kubekvm import image_rules, qemu_img
from kubekvm.image_rules import ImageRefused

INCOMING = ".incoming"
_BLOCK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Admitted:
    digest: str
    size: int
    virtual_size: int
    source_format: str


class ImageStore:
    def __init__(self, directory: Path, *, max_virtual_bytes: int, max_upload_bytes: int,
                 tool_timeout: float) -> None:
        self.directory = directory.absolute()
        self.max_virtual_bytes = max_virtual_bytes
        self.max_upload_bytes = max_upload_bytes
        self.tool_timeout = tool_timeout

    def path(self, digest: str) -> Path:
        return self.directory / image_rules.file_name(digest)

    def holds(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def digests(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        found = (image_rules.digest_of_file_name(p.name) for p in self.directory.iterdir())
        return sorted(d for d in found if d is not None)

    def _staging(self, suffix: str) -> Path:
        incoming = self.directory / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        return incoming / f"{secrets.token_hex(8)}.{suffix}"

    async def receive(self, chunks: AsyncIterable[bytes], *, expected_size: int | None = None) -> Path:
        """Writes an upload to a staged file (its bytes pass through memory a block at a time);
        the staged file is removed if the upload is cut short or over the limit."""
        if expected_size is not None and expected_size > self.max_upload_bytes:
            raise _too_big(self.max_upload_bytes)
        staged = await asyncio.to_thread(self._staging, "upload")
        handle: BinaryIO = await asyncio.to_thread(open, staged, "xb")
        size = 0
        buffered: list[bytes] = []
        pending = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_upload_bytes:
                    raise _too_big(self.max_upload_bytes)
                buffered.append(chunk)
                pending += len(chunk)
                if pending >= _BLOCK:
                    await asyncio.to_thread(handle.write, b"".join(buffered))
                    buffered, pending = [], 0
            await asyncio.to_thread(_finish_writing, handle, b"".join(buffered))
            if expected_size is not None and size != expected_size:
                raise ImageRefused("INCOMPLETE_UPLOAD", f"The upload ended after {size} of {expected_size} bytes; "
                                                        "nothing was imported. Upload the file again.")
        except BaseException:
            await asyncio.to_thread(_discard, handle, staged)
            raise
        return staged

    async def stage_copy(self, source: Path) -> Path:
        """A staged copy of a local file (the CLI's import): the original is never modified."""
        staged = await asyncio.to_thread(self._staging, "upload")
        try:
            await asyncio.to_thread(_copy, source, staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged

    async def admit(self, staged: Path, *, name: str, format: str | None) -> Admitted:
        """Inspects a staged file and, if the rules take it, moves it into the store as a qcow2
        named by its digest. The staged file is gone afterwards whatever happened."""
        converted = staged.with_suffix(".qcow2")
        try:
            declared = image_rules.declared_format(name, format)
            size = (await asyncio.to_thread(staged.stat)).st_size
            try:
                info = await qemu_img.info(staged, timeout=self.tool_timeout)
            except qemu_img.ToolFailed as error:
                raise ImageRefused("UNREADABLE", f"qemu-img cannot read this file as a disk image: "
                                                 f"{_short(str(error))}") from None
            inspection = image_rules.check_info(info, declared=declared, file_size=size,
                                                max_virtual_bytes=self.max_virtual_bytes)
            final = staged
            if inspection.format == "qcow2":
                status, report = await qemu_img.check(staged, timeout=self.tool_timeout)
                image_rules.check_consistency(report, status=status)
            else:
                await qemu_img.convert(staged, converted, source_format="raw", timeout=self.tool_timeout)
                final = converted
            digest, stored_size = await asyncio.to_thread(_hash_and_sync, final)
            await asyncio.to_thread(_place, final, self.path(digest))
            return Admitted(digest=digest, size=stored_size, virtual_size=inspection.virtual_size,
                            source_format=inspection.format)
        finally:
            await asyncio.to_thread(_remove, staged, converted)

    async def remove(self, digest: str) -> bool:
        path = self.path(digest)
        existed = await asyncio.to_thread(path.exists)
        await asyncio.to_thread(path.unlink, missing_ok=True)
        return existed

    def sweep(self, *, older_than_seconds: float) -> list[Path]:
        """Removes staged files nobody has written for a while (a crashed import's)."""
        incoming = self.directory / INCOMING
        if not incoming.is_dir():
            return []
        cutoff = time.time() - older_than_seconds
        removed = []
        for path in incoming.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue
        return removed


def _too_big(limit: int) -> ImageRefused:
    return ImageRefused("TOO_BIG_UPLOAD", f"The upload is over the limit of {limit / 1024**3:.1f} GiB; nothing "
                                          "was imported.")


def _short(text: str) -> str:
    return text.splitlines()[0][:300] if text else "unknown error"


def _finish_writing(handle: BinaryIO, rest: bytes) -> None:
    with handle:
        handle.write(rest)
        handle.flush()
        os.fsync(handle.fileno())


def _discard(handle: BinaryIO, path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _copy(source: Path, target: Path) -> None:
    with source.open("rb") as reading, target.open("xb") as writing:
        while block := reading.read(_BLOCK):
            writing.write(block)
        writing.flush()
        os.fsync(writing.fileno())


def _hash_and_sync(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as reading:
        while block := reading.read(_BLOCK):
            digest.update(block)
            size += len(block)
        # qemu-img convert wrote this file without fsync: it must be on disk before its name is.
        os.fsync(reading.fileno())
    return f"sha256:{digest.hexdigest()}", size


def _place(staged: Path, target: Path) -> None:
    """The staged file under its digest's name, atomically; the same image imported twice (or by
    two replicas at once) is the same bytes, so the second rename changes nothing."""
    os.chmod(staged, 0o444)
    os.replace(staged, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
