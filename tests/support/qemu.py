"""Real QEMU guests for tests: libvirtd, the tiny-linux guest, and directories QEMU can read.

QEMU runs as libvirt-qemu, so everything it opens must sit below world-traversable
directories, which pytest's 0700 tmp_path is not: tests use /var/tmp/kubekvm-tests.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QEMU_URI = "qemu:///system"
QEMU_TEST_ROOT = Path("/var/tmp/kubekvm-tests")


def traversable_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


def ensure_libvirtd() -> str:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("libvirtd") is None:
        pytest.skip("QEMU and libvirtd are not installed (scripts/setup installs them)")
    subprocess.run([str(REPO / "scripts" / "libvirtd-up")], check=True)
    return QEMU_URI


def build_tiny_linux() -> Path:
    """The tiny-linux guest, built once and kept (with the kernel .deb) between runs."""
    from kubekvm_demo import tiny_linux

    # Keyed by the guest's scripts, so a changed /init never boots from a stale cache.
    version = hashlib.sha256(
        (tiny_linux.INIT_SCRIPT + tiny_linux.POWER_BUTTON_HANDLER).encode()
    ).hexdigest()[:12]
    traversable_dir(QEMU_TEST_ROOT)
    out = traversable_dir(QEMU_TEST_ROOT / f"tiny-linux-{version}")
    tiny_linux.build(out=out, cache=QEMU_TEST_ROOT / "cache")
    return out


def scratch_dir(prefix: str) -> Path:
    """A fresh directory QEMU can reach."""
    traversable_dir(QEMU_TEST_ROOT)
    return traversable_dir(QEMU_TEST_ROOT / f"{prefix}-{uuid.uuid4().hex[:8]}")
