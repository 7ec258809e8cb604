"""An agent's pulls from a real server's image store, on real files: pulled and verified into
the image directory, resumed with Range from a partial file, a corrupted store copy refused by
its digest, and a disk too small (a 4 MiB tmpfs) refused before anything is written."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from agent.pulls import PARTIAL_SUFFIX, Pull, Pulls
from tests.images import hostile
from tests.support.processes import Server


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pull-store")


@pytest.fixture(scope="module")
def server(start_kubekvm: Callable[..., Server], store_dir: Path) -> Server:
    return start_kubekvm(env={"KUBEKVM_IMAGE_STORE": str(store_dir), "KUBEKVM_SEED_TEMPLATES": "0"})


def imported(server: Server, path: Path) -> str:
    answer = httpx.post(f"{server.url}/images", content=path.read_bytes(), timeout=60,
                        headers={**server.admin_headers, "X-Image-Name": path.name})
    assert answer.status_code == 200, answer.text
    return f"sha256-{answer.json()['digest'].removeprefix('sha256:')}.qcow2"


async def pull(server: Server, directory: Path, image: str) -> Pull:
    done = asyncio.Event()
    pulls = Pulls(directory=directory, servers=("http://127.0.0.1:1", server.url),
                  token_source=lambda: server.host_token("pull-host"), on_done=done.set)
    started = pulls.request(image)
    assert started is not None
    await asyncio.wait_for(done.wait(), timeout=120)
    assert pulls.request(image) is None or started.error
    return started


async def test_a_pull_is_verified_and_resumes_from_its_partial_file(server: Server, tmp_path: Path) -> None:
    source = hostile.qcow2(tmp_path / "pulled.qcow2", size="64M", marker=b"pull-me")
    image = imported(server, source)
    data = source.read_bytes()
    first = tmp_path / "host-a"
    whole = await pull(server, first, image)
    assert whole.error is None and whole.fetched == len(data)
    assert (first / image).read_bytes() == data and [p.name for p in first.iterdir()] == [image]
    # A pull killed half-way left its partial file: the next one asks only for the rest.
    second = tmp_path / "host-b"
    second.mkdir()
    (second / f".{image}{PARTIAL_SUFFIX}").write_bytes(data[: len(data) // 2])
    resumed = await pull(server, second, image)
    assert resumed.error is None and resumed.fetched == len(data) - len(data) // 2
    assert hashlib.sha256((second / image).read_bytes()).hexdigest() == image[7:71]


async def test_a_corrupted_store_copy_is_refused_by_its_digest(server: Server, store_dir: Path,
                                                               tmp_path: Path) -> None:
    image = imported(server, hostile.qcow2(tmp_path / "rotten.qcow2", marker=b"rotten"))
    stored = store_dir / image
    stored.chmod(0o644)
    with stored.open("r+b") as rot:
        rot.seek(4096)
        rot.write(b"bit rot")
    host = tmp_path / "host"
    failed = await pull(server, host, image)
    assert failed.error is not None and "does not match its digest" in failed.error
    assert list(host.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True, timeout=30)


async def test_a_disk_too_small_is_refused_before_writing(server: Server, small_disk: Path, tmp_path: Path) -> None:
    image = imported(server, hostile.qcow2(tmp_path / "big.qcow2", size="64M", marker=b"too-big"))
    failed = await pull(server, small_disk, image)
    assert failed.error is not None and "not enough disk space" in failed.error
    assert list(small_disk.iterdir()) == []
