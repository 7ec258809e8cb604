"""The tiny-linux initramfs: a valid newc archive with init, busybox and the ACPI handler."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

from kubekvm_demo.tiny_linux import INIT_SCRIPT, MARKER, initramfs


def test_initramfs_is_a_cpio_the_tools_can_read(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake busybox")
    module = tmp_path / "button.ko"
    module.write_bytes(b"module")
    archive = gzip.decompress(initramfs(busybox=busybox, modules=[module]))
    listing = subprocess.run(["cpio", "-itv"], input=archive, capture_output=True,
                             check=True).stdout.decode()
    names = {line.split()[-1] for line in listing.splitlines()}
    assert {"init", "bin/busybox", "dev/console", "etc/acpi/PWRF/00000080",
            "lib/modules/button.ko"} <= names
    init_line = next(line for line in listing.splitlines() if line.endswith(" init"))
    assert init_line.startswith("-rwxr-xr-x")
    console_line = next(line for line in listing.splitlines() if line.endswith("dev/console"))
    assert console_line.startswith("crw")
    extracted = tmp_path / "root"
    extracted.mkdir()
    subprocess.run(["cpio", "-id", "--no-absolute-filenames", "bin/busybox", "init"],
                   input=archive, cwd=extracted, capture_output=True, check=True)
    assert (extracted / "bin" / "busybox").read_bytes() == busybox.read_bytes()
    assert (extracted / "init").read_text() == INIT_SCRIPT
    assert f'echo "{MARKER} $host"' in INIT_SCRIPT
