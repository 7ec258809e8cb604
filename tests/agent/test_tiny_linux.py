"""The tiny-linux initramfs: a valid newc archive with init, busybox, the ACPI handler and the
consoles' shell (tests/console/test_console_qemu.py types into that shell on a real guest)."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

from kubekvm_demo.tiny_linux import BANNER, INIT_SCRIPT, MARKER, SHELL_SCRIPT, initramfs


def test_initramfs_is_a_cpio_the_tools_can_read(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake busybox")
    module = tmp_path / "button.ko"
    module.write_bytes(b"module")
    archive = gzip.decompress(initramfs(busybox=busybox, modules=[module]))
    listing = subprocess.run(["cpio", "-itv"], input=archive, capture_output=True,
                             check=True).stdout.decode()
    names = {line.split()[-1] for line in listing.splitlines()}
    assert {"init", "bin/busybox", "bin/demo-shell", "dev/console", "etc/acpi/PWRF/00000080",
            "lib/modules/button.ko"} <= names
    init_line = next(line for line in listing.splitlines() if line.endswith(" init"))
    assert init_line.startswith("-rwxr-xr-x")
    console_line = next(line for line in listing.splitlines() if line.endswith("dev/console"))
    assert console_line.startswith("crw")
    extracted = tmp_path / "root"
    extracted.mkdir()
    subprocess.run(["cpio", "-id", "--no-absolute-filenames", "bin/busybox", "bin/demo-shell", "init"],
                   input=archive, cwd=extracted, capture_output=True, check=True)
    assert (extracted / "bin" / "busybox").read_bytes() == busybox.read_bytes()
    assert (extracted / "init").read_text() == INIT_SCRIPT
    assert f'echo "{MARKER} $host"' in INIT_SCRIPT
    # Both consoles get the shell, which says what it is.
    assert (extracted / "bin" / "demo-shell").read_text() == SHELL_SCRIPT
    shell_line = next(line for line in listing.splitlines() if line.endswith(" bin/demo-shell"))
    assert shell_line.startswith("-rwxr-xr-x")
    assert f'echo "{BANNER}"' in SHELL_SCRIPT and "exec /bin/sh" in SHELL_SCRIPT
    assert 'for tty in tty1 ttyS0' in INIT_SCRIPT and "getty -L -n -i -l /bin/demo-shell" in INIT_SCRIPT
    # The marker comes first: tests and benchmarks wait for it, then the shells start.
    assert INIT_SCRIPT.index(MARKER) < INIT_SCRIPT.index("getty")
