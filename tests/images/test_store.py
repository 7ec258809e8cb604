"""The image store on real files with the real qemu-img: what it takes (qcow2 as is, raw converted),
what it refuses (each hostile image, with the rule it broke), and that a refusal or a cut-off
upload leaves nothing behind, neither in the store nor in its staging area."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubekvm.image_rules import ImageRefused
from kubekvm.image_store import INCOMING, ImageStore
from tests.images import hostile

GIB = 1024**3


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store", max_virtual_bytes=GIB, max_upload_bytes=8 * 1024 * 1024,
                      tool_timeout=60)


def leftovers(store: ImageStore) -> list[str]:
    return sorted(str(p.relative_to(store.directory)) for p in store.directory.rglob("*") if p.is_file())


async def admit_file(store: ImageStore, path: Path, *, format: str | None = None) -> str:
    staged = await store.stage_copy(path)
    return (await store.admit(staged, name=path.name, format=format)).digest


async def test_a_qcow2_is_stored_under_its_digest_unchanged(store: ImageStore, tmp_path: Path) -> None:
    source = hostile.qcow2(tmp_path / "good.qcow2")
    digest = await admit_file(store, source)
    assert digest == "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    assert store.path(digest).read_bytes() == source.read_bytes()
    assert leftovers(store) == [store.path(digest).name]
    # Imported again: the same image, nothing more.
    assert await admit_file(store, source) == digest
    assert store.digests() == [digest]


async def test_raw_data_declared_raw_becomes_a_qcow2(store: ImageStore, tmp_path: Path) -> None:
    source = hostile.raw_disk(tmp_path / "disk.img")
    digest = await admit_file(store, source)
    stored = store.path(digest)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(stored)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == source.stat().st_size
    # The guest sees the same bytes.
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(stored), str(back)], check=True)
    assert back.read_bytes() == source.read_bytes()


@pytest.mark.parametrize(("make", "name", "reason"), [
    (hostile.with_backing_file, "shadow.qcow2", "BACKING_FILE"),
    (hostile.with_data_file, "data.qcow2", "DATA_FILE"),
    (hostile.text_named_qcow2, "notes.qcow2", "NOT_QCOW2"),
    (hostile.truncated, "cut.qcow2", "TRUNCATED"),
    (hostile.text_named_qcow2, "notes.bin", "UNDECLARED_RAW"),
])
async def test_a_hostile_image_is_refused_and_nothing_is_left(store: ImageStore, tmp_path: Path, make: object,
                                                              name: str, reason: str) -> None:
    source = make(tmp_path / name)  # type: ignore[operator]
    with pytest.raises(ImageRefused) as refused:
        await admit_file(store, source)
    assert refused.value.reason == reason, refused.value.message
    assert leftovers(store) == []
    if reason == "BACKING_FILE":
        assert "/etc/shadow" in refused.value.message


async def test_a_virtual_size_over_the_limit_is_refused(store: ImageStore, tmp_path: Path) -> None:
    big = tmp_path / "big.qcow2"
    hostile.qemu_img("create", "-q", "-f", "qcow2", str(big), "2G")
    with pytest.raises(ImageRefused) as refused:
        await admit_file(store, big)
    assert refused.value.reason == "TOO_LARGE" and "2.0 GiB" in refused.value.message
    assert leftovers(store) == []


async def chunks(data: bytes, *, cut_after: int | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 65536):
        if cut_after is not None and start >= cut_after:
            raise ConnectionResetError("client went away")
        yield data[start:start + 65536]


async def test_an_upload_cut_short_leaves_nothing(store: ImageStore, tmp_path: Path) -> None:
    data = hostile.qcow2(tmp_path / "up.qcow2").read_bytes()
    with pytest.raises(ConnectionResetError):
        await store.receive(chunks(data, cut_after=len(data) // 2), expected_size=len(data))
    with pytest.raises(ImageRefused) as refused:
        await store.receive(chunks(data[: len(data) // 2]), expected_size=len(data))
    assert refused.value.reason == "INCOMPLETE_UPLOAD"
    with pytest.raises(ImageRefused) as refused:
        await store.receive(chunks(b"x" * (9 * 1024 * 1024)))
    assert refused.value.reason == "TOO_BIG_UPLOAD"
    assert leftovers(store) == []
    staged = await store.receive(chunks(data), expected_size=len(data))
    assert (await store.admit(staged, name="up.qcow2", format=None)).size == len(data)
    assert not (store.directory / INCOMING).exists() or not any((store.directory / INCOMING).iterdir())


def test_sweep_removes_only_stale_staged_files(store: ImageStore) -> None:
    incoming = store.directory / INCOMING
    incoming.mkdir(parents=True)
    stale, fresh = incoming / "old.upload", incoming / "new.upload"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (1_000_000, 1_000_000))
    assert store.sweep(older_than_seconds=3600) == [stale]
    assert fresh.exists() and not stale.exists()
