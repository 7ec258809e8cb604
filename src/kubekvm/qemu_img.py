"""``qemu-img`` as the server runs it: argument lists only, never a shell string, each run with a
timeout after which the process is killed, and the event loop never blocked meanwhile.

The image store (`kubekvm.image_store`) inspects (`info`, `check`) and converts (`convert`)
every image it takes in with these; the rules that judge their answers are
`kubekvm.image_rules`'.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ToolFailed(RuntimeError):
    """``qemu-img`` could not run, failed, or ran out of time (and was killed)."""


@dataclass(frozen=True, slots=True)
class Ran:
    status: int
    stdout: str
    stderr: str


async def run(arguments: list[str], *, timeout: float) -> Ran:
    try:
        process = await asyncio.create_subprocess_exec(
            "qemu-img", *arguments, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as error:
        raise ToolFailed(f"qemu-img could not be started: {error}") from None
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    except BaseException as error:
        if process.returncode is None:
            process.kill()
            await asyncio.shield(process.wait())
        if isinstance(error, TimeoutError):
            raise ToolFailed(f"qemu-img {arguments[0]} did not finish within {timeout:g} s (killed)") from None
        raise
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace").strip())


async def info(path: Path, *, timeout: float) -> dict[str, Any]:
    """``qemu-img info``, the format probed (the caller judges it); ToolFailed when it cannot read
    the file at all."""
    ran = await run(["info", "--output=json", str(path)], timeout=timeout)
    if ran.status != 0:
        raise ToolFailed(ran.stderr or f"exit status {ran.status}")
    parsed = json.loads(ran.stdout)
    if not isinstance(parsed, dict):
        raise ToolFailed("qemu-img info did not answer a JSON object")
    return parsed


async def check(path: Path, *, timeout: float) -> tuple[int, dict[str, Any]]:
    """``qemu-img check`` of a qcow2: its exit status (0 clean, 2 corrupt, 3 leaks) and report."""
    ran = await run(["check", "--output=json", "-f", "qcow2", str(path)], timeout=timeout)
    try:
        parsed = json.loads(ran.stdout) if ran.stdout.strip() else {}
    except json.JSONDecodeError:
        parsed = {}
    return ran.status, parsed if isinstance(parsed, dict) else {}


async def convert(source: Path, target: Path, *, source_format: str, timeout: float) -> None:
    """A standalone qcow2 copy of `source` (read as `source_format`, never probed)."""
    ran = await run(["convert", "-q", "-f", source_format, "-O", "qcow2", str(source), str(target)],
                    timeout=timeout)
    if ran.status != 0:
        raise ToolFailed(ran.stderr or f"exit status {ran.status}")
