"""Guest images for the real-QEMU benchmarks: a base disk with real data, booting tiny-linux.

A lab template's image is ``<stem>.qcow2`` in the agent's image directory; with
``<stem>.kernel`` and ``<stem>.initrd`` beside it the domain boots that kernel (see
``agent.images``), and ``<stem>.cmdline`` adds to its command line. The benchmark's base disk
is made fresh each run: ``qemu-img create`` of the wanted size, then ``qemu-io`` writes a
non-zero pattern over all of it, so a full copy really moves that many bytes while a linked
clone moves none. The kernel and initramfs are the project's tiny-linux guest, built once
into ``GUEST_ROOT`` and kept between runs.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.stack import GUEST_ROOT, traversable_dir
from kubekvm_demo import tiny_linux


@dataclass(frozen=True)
class GuestImage:
    directory: Path
    stem: str
    size_mib: int
    seconds_to_write: float

    @property
    def image(self) -> str:
        return f"{self.stem}.qcow2"

    @property
    def base(self) -> Path:
        return self.directory / self.image

    @property
    def kernel(self) -> Path:
        return self.directory / f"{self.stem}.kernel"

    @property
    def initrd(self) -> Path:
        return self.directory / f"{self.stem}.initrd"


def tiny_linux_files() -> tiny_linux.GuestFiles:
    """The tiny-linux kernel and initramfs, keyed by its /init so a changed guest rebuilds."""
    traversable_dir(GUEST_ROOT)
    out = traversable_dir(GUEST_ROOT / f"tiny-linux-{tiny_linux.VERSION}")
    return tiny_linux.build(out=out, cache=traversable_dir(GUEST_ROOT / "cache"))


def make_image(directory: Path, stem: str, *, size_mib: int, fill: bool = True, cmdline: str = "") -> GuestImage:
    """``<stem>.qcow2`` of ``size_mib`` (filled with 0xab when ``fill``), the tiny-linux kernel
    and initrd beside it, and ``<stem>.cmdline`` when given."""
    traversable_dir(directory)
    guest = tiny_linux_files()
    for source, suffix in ((guest.kernel, "kernel"), (guest.initrd, "initrd")):
        target = directory / f"{stem}.{suffix}"
        target.unlink(missing_ok=True)
        os.link(source, target)
    if cmdline:
        (directory / f"{stem}.cmdline").write_text(cmdline + "\n")
    base = directory / f"{stem}.qcow2"
    base.unlink(missing_ok=True)
    started = time.monotonic()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), f"{size_mib}M"], check=True)
    if fill:
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0xab 0 {size_mib}M", str(base)],
                       check=True, stdout=subprocess.DEVNULL)
    base.chmod(0o644)
    return GuestImage(directory, stem, size_mib, round(time.monotonic() - started, 2))
