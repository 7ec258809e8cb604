"""Disk images for the image tests, made with the real qemu-img: good ones, and the hostile
ones the store must refuse (a backing file, an external data file, a text file named .qcow2,
a truncated qcow2)."""

from __future__ import annotations

import subprocess
from pathlib import Path

MIB = 1024 * 1024


def qemu_img(*arguments: str) -> None:
    subprocess.run(["qemu-img", *arguments], check=True, capture_output=True, timeout=60)


def qcow2(path: Path, *, size: str = "16M", marker: bytes = b"") -> Path:
    """A small qcow2 with some data in it (`marker` at offset 0), so it has clusters and each
    marker makes other bytes."""
    seed = path.with_suffix(".seed")
    seed.write_bytes((marker or b"kubekvm-test-image").ljust(2 * MIB, b"\x5a"))
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", str(seed), str(path))
    seed.unlink()
    qemu_img("resize", "-q", "-f", "qcow2", str(path), size)
    return path


def raw_disk(path: Path, *, size: int = 2 * MIB) -> Path:
    path.write_bytes(b"\x00" * 512 + b"raw-disk-marker".ljust(size - 512, b"\x11"))
    return path


def with_backing_file(path: Path, backing: str = "/etc/shadow") -> Path:
    qemu_img("create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", str(path), "1M")
    return path


def with_data_file(path: Path) -> Path:
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={path.with_suffix('.data')}", str(path), "16M")
    return path


def text_named_qcow2(path: Path) -> Path:
    path.write_text("this is not a disk image\n" * 40)
    return path


def truncated(path: Path) -> Path:
    whole = qcow2(path.with_name(f"whole-{path.name}"), size="64M")
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    whole.unlink()
    return path
