"""Real QEMU guests for tests: libvirtd, the tiny-linux guest, and directories QEMU can read.

QEMU runs as libvirt-qemu, so everything it opens must sit below world-traversable
directories, which pytest's 0700 tmp_path is not: tests use /var/tmp/kubekvm-tests — the built
guest (kept between runs) and, per test session, `tests.support.leftovers.session_root()`, below
which every scratch folder is made and which must be empty when the session ends.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.leftovers import session_root

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
    traversable_dir(QEMU_TEST_ROOT)
    out = traversable_dir(QEMU_TEST_ROOT / f"tiny-linux-{tiny_linux.VERSION}")
    tiny_linux.build(out=out, cache=QEMU_TEST_ROOT / "cache")
    return out


def scratch_dir(prefix: str) -> Path:
    """A fresh directory QEMU can reach, in this session's scratch folder."""
    return traversable_dir(session_root() / f"{prefix}-{uuid.uuid4().hex[:8]}")


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """`scratch_dir`, removed afterwards whatever happened (with whatever libvirt still defines
    on it: its domains go first, their disks and logs are in it)."""
    path = scratch_dir(prefix)
    try:
        yield path
    finally:
        try:
            remove_domains_under(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)


def remove_domains_under(path: Path) -> list[str]:
    """Destroys and undefines the domains (and storage pools: virt-clone makes one per folder it
    copies into) on libvirtd whose definition points below `path`: a test's own, never another
    run's, however they are named. Returns what it removed."""
    import libvirt

    def inside(xml: str) -> bool:
        return f"{path}/" in xml or f"<path>{path}</path>" in xml

    removed = []
    connection = libvirt.open(QEMU_URI)
    try:
        items = [("domain", d) for d in connection.listAllDomains(0)]
        items += [("pool", p) for p in connection.listAllStoragePools(0)]
        for kind, item in items:
            try:
                if not inside(item.XMLDesc(0)):
                    continue
                if item.isActive():
                    item.destroy()
                item.undefine()
            except libvirt.libvirtError:  # gone meanwhile, or already stopped
                continue
            removed.append(f"{kind} {item.name()}")
    finally:
        connection.close()
    return removed
