"""P6 — image pull: one image of the store pulled to one host, against ``cp`` of the same file.

A qcow2 of incompressible data (``p6_image_mib``) is imported into a real server's image store;
then, alternately, the agent's pull (`agent.pulls.Pulls`: HTTP from the server with the host
token, written to a partial file, sha256 checked, fsync'ed, renamed into place) copies it into an
empty image directory, and ``cp`` copies the store's file to another one, ``p6_repeats`` times
each on the same disk, and ``cp`` followed by ``sync`` of the copy. The figures are each one's
median MiB/s; the target compares the pull with ``cp`` + ``sync`` (both end with the file on disk),
as a fraction: the pull also goes through HTTP and hashes every byte.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from agent.pulls import Pulls
from benchmarks.plan import Plan
from benchmarks.stack import database, kubekvm_server
from benchmarks.stats import median

# The pull must reach at least this fraction of cp's throughput.
RATIO_LIMIT = 0.25
MIB = 1024 * 1024


def _image(work: Path, mib: int) -> Path:
    raw = work / "source.raw"
    with raw.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MIB))
    image = work / "golden.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(image)],
                   check=True, timeout=600)
    raw.unlink()
    return image


async def _pull(server_url: str, token: str, directory: Path, image: str) -> None:
    done = asyncio.Event()
    pulls = Pulls(directory=directory, servers=(server_url,), token_source=lambda: token, on_done=done.set)
    pull = pulls.request(image)
    assert pull is not None
    await asyncio.wait_for(done.wait(), timeout=600)
    if pull.error:
        raise RuntimeError(pull.error)


def run(plan: Plan, work: Path) -> dict[str, Any]:
    image = _image(work, plan.p6_image_mib)
    size = image.stat().st_size
    runs: dict[str, list[float]] = {"pull": [], "cp": [], "cp_sync": []}
    with database() as db, kubekvm_server(db, env={"KUBEKVM_IMAGE_STORE": str(work / "store")}) as server:
        answer = httpx.post(f"{server.url}/images", content=image.read_bytes(), timeout=600,
                            headers={**server.admin_headers, "X-Image-Name": image.name})
        answer.raise_for_status()
        name = f"sha256-{answer.json()['digest'].removeprefix('sha256:')}.qcow2"
        stored = work / "store" / name
        token = server.host_token("bench-pull-host")
        for attempt in range(plan.p6_repeats):
            order = ("pull", "cp", "cp_sync")
            for kind in (order if attempt % 2 == 0 else order[::-1]):
                target = work / f"{kind}-{attempt}"
                target.mkdir()
                started = time.monotonic()
                if kind == "pull":
                    asyncio.run(_pull(server.url, token, target, name))
                else:
                    subprocess.run(["cp", str(stored), str(target / name)], check=True, timeout=600)
                    if kind == "cp_sync":  # on disk, as the pull leaves it
                        subprocess.run(["sync", str(target / name)], check=True, timeout=600)
                runs[kind].append(time.monotonic() - started)
                shutil.rmtree(target)
    pull_s, cp_s, cp_sync_s = median(runs["pull"]), median(runs["cp"]), median(runs["cp_sync"])
    pull_rate, cp_rate, cp_sync_rate = size / MIB / pull_s, size / MIB / cp_s, size / MIB / cp_sync_s
    ratio = round(pull_rate / cp_sync_rate, 2)
    return {
        "benchmark": "P6 image pull vs cp",
        "how": f"a {plan.p6_image_mib} MiB qcow2 of random data imported into a kubekvm server's store; the agent's "
               f"pull (HTTP with the host token, sha256 checked, fsync, rename), cp of the store's file, and cp "
               f"followed by sync of the copy (on disk, as the pull leaves it), each into an empty directory on "
               f"the same disk, {plan.p6_repeats} run(s) each alternately; medians.",
        "runs": runs,
        "figures": {
            "image_mib": round(size / MIB, 1),
            "pull_s": round(pull_s, 3),
            "cp_s": round(cp_s, 3),
            "pull_mib_s": round(pull_rate, 1),
            "cp_mib_s": round(cp_rate, 1),
            "cp_sync_s": round(cp_sync_s, 3),
            "cp_sync_mib_s": round(cp_sync_rate, 1),
            "pull_over_cp_sync": ratio,
        },
        "targets": [
            {"name": "pull throughput / cp+sync throughput", "value": ratio, "limit": RATIO_LIMIT, "better": "higher",
             "met": ratio >= RATIO_LIMIT},
        ],
    }
