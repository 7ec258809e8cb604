"""Publisher: a stopped machine's disk, flattened and uploaded to become a template version.

The server asks through the machine's assignment (``publishJob``, `kubekvm.services.publishing`)
while the machine is stopped and locked. The reconciler hands the job here once the domain is
off; this flattens the overlay and its base into one standalone qcow2 (``qemu-img convert``,
`agent.disks.Disks.flatten`) in the state directory and streams it to
``POST /machines/{vm}/publish/{job}`` with the host token (in a worker thread: the event loop
never waits on the network or the disk). If flattening fails, the same request carries the
reason (``X-Publish-Error``) so the server unlocks the machine and shows why. One run per job;
the flattened file is removed afterwards, whatever happened.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit

from agent.disks import DiskError, Disks

log = logging.getLogger(__name__)

FLATTEN_TIMEOUT = 3600.0
_BLOCK = 1024 * 1024


class Publisher:
    def __init__(self, *, disks: Disks, work_dir: Path, servers: tuple[str, ...],
                 token_source: Callable[[], str | None], timeout: float = 120.0) -> None:
        self.disks = disks
        self.work_dir = work_dir.absolute()
        self.servers = servers
        self.token_source = token_source
        self.timeout = timeout
        self._jobs: dict[str, asyncio.Task[None]] = {}

    def request(self, job: str, *, vm: str, domain: str) -> None:
        """Starts the job unless it ran or runs already."""
        if job in self._jobs or not job.isalnum():
            return
        self._jobs[job] = asyncio.create_task(self._run(job, vm=vm, domain=domain), name=f"publish-{vm}")

    async def close(self) -> None:
        for task in self._jobs.values():
            task.cancel()
        await asyncio.gather(*self._jobs.values(), return_exceptions=True)

    async def _run(self, job: str, *, vm: str, domain: str) -> None:
        target = self.work_dir / f"{job}.qcow2"
        try:
            failure = None
            try:
                await self.disks.flatten(domain, target, timeout=FLATTEN_TIMEOUT)
            except (DiskError, OSError) as error:
                failure = f"flattening the disk failed: {error}"
            said = await asyncio.to_thread(self._upload, job, vm, None if failure else target, failure)
            log.info("publish of %s: %s", vm, said)
        except Exception:
            log.exception("publish of %s failed", vm)
        finally:
            target.unlink(missing_ok=True)

    def _upload(self, job: str, vm: str, path: Path | None, failure: str | None) -> str:
        errors = []
        for server in self.servers:
            where = urlsplit(server)
            connection_class = (http.client.HTTPSConnection if where.scheme in ("https", "wss")
                                else http.client.HTTPConnection)
            connection = connection_class(where.hostname or "localhost", where.port, timeout=self.timeout)
            headers = {"Authorization": f"Bearer {self.token_source() or ''}",
                       "Content-Type": "application/octet-stream",
                       "Content-Length": str(path.stat().st_size if path is not None else 0)}
            if failure:
                headers["X-Publish-Error"] = quote(failure[:400])
            try:
                connection.putrequest("POST", f"{where.path.rstrip('/').removesuffix('/graphql')}/machines/"
                                              f"{quote(vm)}/publish/{job}")
                for key, value in headers.items():
                    connection.putheader(key, value)
                connection.endheaders()
                if path is not None:
                    with path.open("rb") as reading:
                        while block := reading.read(_BLOCK):
                            connection.send(block)
                answer = connection.getresponse()
                return f"HTTP {answer.status}: {answer.read(500).decode(errors='replace')}"
            except (OSError, http.client.HTTPException) as error:
                errors.append(f"{server}: {error}")
            finally:
                connection.close()
        return "could not reach a server: " + "; ".join(errors)


def remove_leftovers(work_dir: Path) -> None:
    """Flattened files a killed agent left (one agent per host: none belongs to a live job)."""
    if work_dir.is_dir():
        for path in work_dir.iterdir():
            if path.is_file():
                os.unlink(path)
