"""Overlays with the real qemu-img: linked clones, created atomically, replaced on reset."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from agent.disks import GIB, DiskError, Disks


def info(path: Path) -> dict[str, object]:
    output = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output)  # type: ignore[no-any-return]


async def test_overlay_is_a_linked_clone_of_the_base(tmp_path: Path, image_dir: Path) -> None:
    base = image_dir / "tiny-linux.qcow2"
    disks = Disks(tmp_path / "disks")
    overlay = await disks.create("kubekvm-lab-0", base=base)
    assert overlay == tmp_path / "disks" / "kubekvm-lab-0.qcow2"
    details = info(overlay)
    assert details["format"] == "qcow2"
    assert details["backing-filename"] == str(base)
    assert details["backing-filename-format"] == "qcow2"
    assert details["virtual-size"] == 16 * 1024 * 1024
    # A linked clone is tiny: it does not copy the base.
    assert overlay.stat().st_size < 1024 * 1024
    assert disks.exists("kubekvm-lab-0")
    assert disks.domains() == {"kubekvm-lab-0"}


async def test_overlay_grows_to_the_template_size_but_never_shrinks(tmp_path: Path, image_dir: Path) -> None:
    base = image_dir / "tiny-linux.qcow2"
    disks = Disks(tmp_path / "disks")
    assert info(await disks.create("kubekvm-a-0", base=base, size_gib=2))["virtual-size"] == 2 * GIB
    small = await disks.create("kubekvm-a-1", base=base, size_gib=0)
    assert info(small)["virtual-size"] == 16 * 1024 * 1024


async def test_reset_replaces_the_overlay_with_a_new_inode(tmp_path: Path, image_dir: Path) -> None:
    base = image_dir / "tiny-linux.qcow2"
    disks = Disks(tmp_path / "disks")
    first = (await disks.create("kubekvm-lab-0", base=base)).stat().st_ino
    second = (await disks.create("kubekvm-lab-0", base=base)).stat().st_ino
    assert first != second
    assert [p.name for p in (tmp_path / "disks").iterdir()] == ["kubekvm-lab-0.qcow2"]


async def test_failed_creation_leaves_nothing_behind(tmp_path: Path) -> None:
    disks = Disks(tmp_path / "disks")
    (tmp_path / "disks").mkdir()
    with pytest.raises(DiskError, match="qemu-img create failed"):
        await disks.create("kubekvm-lab-0", base=tmp_path / "missing.qcow2")
    assert list((tmp_path / "disks").iterdir()) == []
    with pytest.raises(DiskError, match="not absolute"):
        await disks.create("kubekvm-lab-0", base=Path("relative.qcow2"))


async def test_stale_partials_are_removed_and_overlays_deleted(tmp_path: Path, image_dir: Path) -> None:
    base = image_dir / "tiny-linux.qcow2"
    disks = Disks(tmp_path / "disks")
    await disks.create("kubekvm-lab-0", base=base)
    stale = tmp_path / "disks" / ".kubekvm-lab-1.qcow2.partial-0123abcd"
    stale.write_bytes(b"half")
    assert disks.domains() == {"kubekvm-lab-0"}
    assert disks.remove_partials() == [stale]
    assert not stale.exists()
    assert await disks.delete("kubekvm-lab-0")
    assert not await disks.delete("kubekvm-lab-0")
    assert disks.domains() == set()


async def test_a_hung_qemu_img_fails_with_a_timeout_and_is_killed(tmp_path: Path) -> None:
    # qemu-img opening a FIFO blocks until a writer comes: a real hang, like a dead mount's.
    base = tmp_path / "base.qcow2"
    os.mkfifo(base)
    disks = Disks(tmp_path / "disks", qemu_img_timeout=0.5)
    with pytest.raises(DiskError, match=r"qemu-img info did not finish within 0.5 s \(killed\)"):
        await disks.create("kubekvm-lab-0", base=base, size_gib=1)
    assert not disks.exists("kubekvm-lab-0")
    hung = subprocess.run(["pgrep", "-f", f"qemu-img info -U --output=json {base}"],
                          capture_output=True, text=True)
    assert hung.stdout == "", "the hung qemu-img was left running"
