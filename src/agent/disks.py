"""Disks: each machine's qcow2 overlay on top of its template's base image.

An overlay is a linked clone (``qemu-img create -b <base> -F qcow2``): it holds only what
the student's machine wrote, so creating one is instant and resetting a machine is replacing
its overlay with a fresh one. Overlays are made under a hidden temporary name in the same
directory and then renamed over the real name, so a crash at any moment leaves either the
old overlay, the new one or a temporary file, never a half-written overlay under the real
name; temporary files are removed when the agent starts (one agent per host, so none of
them can belong to a live operation then).

Every ``qemu-img`` run has a timeout (``qemu_img_timeout``): one stuck on a hung storage
mount or an unreadable base must fail its machine's step with a clear error, and is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from pathlib import Path

GIB = 1024**3
_PARTIAL_MARK = ".partial-"
# Overlays are metadata-only (milliseconds); a minute means qemu-img is stuck, not busy.
QEMU_IMG_TIMEOUT = 60.0


class DiskError(RuntimeError):
    """``qemu-img`` failed; the message carries its error output."""


class Disks:
    def __init__(self, directory: Path, *, qemu_img_timeout: float = QEMU_IMG_TIMEOUT) -> None:
        self.directory = directory.absolute()
        self.qemu_img_timeout = qemu_img_timeout
        # Base image -> (its inode, size and mtime; its virtual size). Every overlay of a
        # template needs the base's virtual size: asking qemu-img once per machine would cost
        # a process per machine. A base replaced or resized has another identity.
        self._base_sizes: dict[Path, tuple[tuple[int, int, int], int]] = {}

    def path(self, domain: str) -> Path:
        return self.directory / f"{domain}.qcow2"

    def exists(self, domain: str) -> bool:
        return self.path(domain).is_file()

    def domains(self) -> set[str]:
        """Domain names that have an overlay here."""
        if not self.directory.is_dir():
            return set()
        return {
            path.name.removesuffix(".qcow2")
            for path in self.directory.glob("*.qcow2")
            if not path.name.startswith(".")
        }

    def remove_partials(self) -> list[Path]:
        """Removes temporary files a killed agent left behind; returns what it removed."""
        removed = []
        if self.directory.is_dir():
            for path in self.directory.glob(f".*{_PARTIAL_MARK}*"):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    async def create(self, domain: str, *, base: Path, size_gib: int = 0) -> Path:
        """Creates (or, for a reset, replaces) the overlay; the file is always a new inode."""
        if not base.is_absolute():
            # A relative backing path would be resolved against the overlay's directory.
            raise DiskError(f"base image path {base} is not absolute")
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(domain)
        partial = target.with_name(f".{target.name}{_PARTIAL_MARK}{secrets.token_hex(4)}")
        command = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base),
                   "-F", "qcow2", str(partial)]
        # Grow the disk to the template's size; never shrink it below the base image.
        wanted = size_gib * GIB
        if wanted and wanted > await self._base_size(base):
            command.append(str(wanted))
        try:
            await _run(command, timeout=self.qemu_img_timeout)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    async def _base_size(self, base: Path) -> int:
        info = await asyncio.to_thread(base.stat)
        identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        cached = self._base_sizes.get(base)
        if cached is not None and cached[0] == identity:
            return cached[1]
        size = await virtual_size(base, timeout=self.qemu_img_timeout)
        self._base_sizes[base] = (identity, size)
        return size

    async def flatten(self, domain: str, target: Path, *, timeout: float) -> Path:
        """The overlay and its base as one standalone qcow2 at `target` (a stopped machine's disk
        published as a template version, `agent.publisher`); written under a temporary name."""
        partial = target.with_name(f".{target.name}{_PARTIAL_MARK}{secrets.token_hex(4)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            await _run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2", str(self.path(domain)),
                        str(partial)], timeout=timeout)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    async def delete(self, domain: str) -> bool:
        path = self.path(domain)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed


async def virtual_size(image: Path, *, timeout: float = QEMU_IMG_TIMEOUT) -> int:
    # -U: running machines hold locks on their base images; reading the header is safe.
    output = await _run(["qemu-img", "info", "-U", "--output=json", str(image)], timeout=timeout)
    size = json.loads(output)["virtual-size"]
    return int(size)


async def _run(command: list[str], *, timeout: float) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    except BaseException as error:
        # Timed out, or cancelled (agent stopping): do not leave qemu-img running, nor
        # writing a file we then delete.
        if process.returncode is None:
            process.kill()
            await asyncio.shield(process.wait())
        if isinstance(error, TimeoutError):
            raise DiskError(
                f"{command[0]} {command[1]} did not finish within {timeout:g} s (killed)"
            ) from None
        raise
    if process.returncode != 0:
        detail = stderr.decode(errors="replace").strip() or f"exit status {process.returncode}"
        raise DiskError(f"{command[0]} {command[1]} failed: {detail}")
    return stdout.decode(errors="replace")
