"""The tiny-linux test guest: a Debian cloud kernel and a busybox initramfs.

Tests and demos need a guest that boots in seconds under QEMU's TCG, says when it is up and
answers the ACPI power button, without any network beyond Debian's archive; and a newcomer who
opens its console should find something that answers. This module builds one from Debian
packages alone:

- ``tiny-linux.kernel``: the vmlinuz of the kernel package ``linux-image-cloud-amd64``
  depends on (downloaded once into a cache directory);
- ``tiny-linux.initrd``: a gzip'd cpio (written here, no ``cpio`` binary needed) holding the
  static busybox, the ``button`` and ``evdev`` modules of that kernel and an ``/init`` that
  prints ``KUBEKVM-GUEST-UP <hostname>`` to the serial console once busybox ``acpid`` is
  ready, powers off after ``kubekvm.poweroff_after=N`` seconds when the kernel command line
  asks for it, and powers off on the ACPI power button (``virsh shutdown``); then it gives the
  screen (``tty1``, what the browser console shows) and the serial port (``ttyS0``) a busybox
  shell each, through ``getty`` (so the shell has its terminal, and Ctrl-C works), that says
  what it is in one line (``BANNER``) and starts again when it exits;
- ``tiny-linux.qcow2``: a small empty base disk, so the template's image exists and every
  machine gets a real linked-clone overlay like any other template.

The agent boots a template directly from ``<stem>.kernel`` + ``<stem>.initrd`` when they sit
next to its base image (see ``agent.images``). ``VERSION`` names the guest's scripts: a build
into a folder holding an initrd of another version makes it again. Usage:
``python -m kubekvm_demo.tiny_linux --out DIR``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STEM = "tiny-linux"
MARKER = "KUBEKVM-GUEST-UP"
META_PACKAGE = "linux-image-cloud-amd64"
BASE_DISK_SIZE = "64M"
BUSYBOX = Path("/bin/busybox")
# Both are plain modules without dependencies in Debian's cloud kernel: the ACPI button
# driver turns the power button into an input event, evdev hands it to busybox acpid.
GUEST_MODULES = ("kernel/drivers/acpi/button.ko", "kernel/drivers/input/evdev.ko")

BANNER = "KubeKVM demo guest tiny-linux — a shell for trying the console; nothing is saved"
# What getty starts on each console: the banner, then a shell (busybox ash).
SHELL_SCRIPT = f"""#!/bin/busybox sh
echo
echo "{BANNER}"
export HOME=/ PATH=/bin PS1='\\h:\\w# '
cd /
exec /bin/sh
"""

# The guest's PID 1. It must never exit: the kernel would panic and, with panic=-1 and
# on_reboot=restart, the guest would reboot forever instead of staying up.
INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox --install -s /bin
export PATH=/bin
host=none
after=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    kubekvm.hostname=*) host="${{arg#*=}}" ;;
    kubekvm.poweroff_after=*) after="${{arg#*=}}" ;;
  esac
done
hostname "$host"
for module in /lib/modules/*.ko; do insmod "$module"; done
acpid -f -c /etc/acpi -l /var/log/acpid.log -p /var/run/acpid.pid &
acpid=$!
# "Up" must mean "the power button works": wait until acpid holds the input devices.
tries=0
while [ $tries -lt 100 ] && ! ls -l /proc/$acpid/fd 2>/dev/null | grep -q /dev/input/; do
  sleep 0.05
  tries=$((tries + 1))
done
echo "{MARKER} $host" >/dev/ttyS0
echo "<2>{MARKER} $host" >/dev/kmsg
if [ -n "$after" ]; then (sleep "$after"; poweroff -f) & fi
# A shell on the screen and one on the serial port, each started again when it exits (the
# pause keeps a getty that cannot open its terminal from spinning). getty makes each shell the
# leader of a session of its own with its terminal, so Ctrl-C and job control work.
for tty in tty1 ttyS0; do
  stty -F "/dev/$tty" >/dev/null 2>&1 || continue  # a machine without that port
  (while true; do getty -L -n -i -l /bin/demo-shell 0 "$tty" linux; sleep 1; done) &
done
while true; do sleep 3600; done
"""

# busybox acpid runs /etc/acpi/<ACTION>/<PARAMETER>; the power button maps to PWRF/00000080.
POWER_BUTTON_HANDLER = "#!/bin/busybox sh\n/bin/busybox poweroff -f\n"

# Names this guest's scripts: caches of built guests are keyed by it, and `build` makes the
# initrd again where it finds one of another version.
VERSION = hashlib.sha256((INIT_SCRIPT + POWER_BUTTON_HANDLER + SHELL_SCRIPT).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class GuestFiles:
    """Where a built tiny-linux guest lives."""

    kernel: Path
    initrd: Path
    base: Path


def guest_files(out: Path) -> GuestFiles:
    return GuestFiles(
        kernel=out / f"{STEM}.kernel",
        initrd=out / f"{STEM}.initrd",
        base=out / f"{STEM}.qcow2",
    )


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "kubekvm" / "tiny-linux"


def build(*, out: Path, cache: Path | None = None) -> GuestFiles:
    """Builds whatever of the guest is missing in ``out``, and its initrd again when that is of
    another ``VERSION`` (as in /var/lib/kubekvm/images after an update); the rest is kept."""
    files = guest_files(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = cache or default_cache_dir()
    stamp = out / f".{STEM}.initrd.version"
    current = files.initrd.exists() and stamp.exists() and stamp.read_text().strip() == VERSION
    if not files.kernel.exists() or not current:
        cache.mkdir(parents=True, exist_ok=True)
        deb = _kernel_deb(cache)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            tree = Path(scratch)
            subprocess.run([_tool("dpkg-deb"), "-x", str(deb), str(tree)], check=True)
            if not files.kernel.exists():
                (vmlinuz,) = sorted((tree / "boot").glob("vmlinuz-*"))
                _write_atomic(files.kernel, vmlinuz.read_bytes())
            if not current:
                (module_root,) = sorted((tree / "lib" / "modules").iterdir())
                modules = [module_root / relative for relative in GUEST_MODULES]
                _write_atomic(files.initrd, initramfs(busybox=BUSYBOX, modules=modules))
                _write_atomic(stamp, f"{VERSION}\n".encode())
    if not files.base.exists():
        partial = files.base.with_name(f".{files.base.name}.partial")
        subprocess.run(
            [_tool("qemu-img"), "create", "-q", "-f", "qcow2", str(partial), BASE_DISK_SIZE],
            check=True,
        )
        os.replace(partial, files.base)
    return files


def _kernel_deb(cache: Path) -> Path:
    try:
        package = kernel_package()
        cached = sorted(cache.glob(f"{package}_*.deb"))
        if cached:
            return cached[-1]
        _download(package, cache)
    except (subprocess.CalledProcessError, RuntimeError) as error:
        # An old or missing package list is the usual reason; refresh it once and retry.
        log.info("%s; running apt-get update", error)
        subprocess.run([_tool("apt-get"), "update", "-qq"], check=True)
        package = kernel_package()
        _download(package, cache)
    (deb,) = sorted(cache.glob(f"{package}_*.deb"))
    return deb


def _download(package: str, cache: Path) -> None:
    subprocess.run(
        [_tool("apt-get"), "download", "-qq", package],
        cwd=cache,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kernel_package() -> str:
    """The versioned kernel package the cloud meta-package currently points at."""
    result = subprocess.run(
        [_tool("apt-cache"), "depends", META_PACKAGE],
        check=True,
        capture_output=True,
        text=True,
    )
    for line in result.stdout.splitlines():
        kind, _, name = line.strip().partition(": ")
        if kind == "Depends" and name.startswith("linux-image-"):
            return name
    raise RuntimeError(f"apt-cache knows no kernel that {META_PACKAGE} depends on")


def initramfs(*, busybox: Path, modules: Sequence[Path]) -> bytes:
    """The guest's initramfs as a gzip'd newc cpio archive."""
    archive = _Cpio()
    for directory in ("bin", "dev", "proc", "sys", "etc", "etc/acpi", "etc/acpi/PWRF", "lib",
                      "lib/modules", "var", "var/log", "var/run"):
        archive.directory(directory)
    # The kernel opens /dev/console for init's stdio before init mounts devtmpfs.
    archive.char_device("dev/console", major=5, minor=1)
    archive.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    archive.file("init", INIT_SCRIPT.encode(), mode=0o755)
    archive.file("bin/demo-shell", SHELL_SCRIPT.encode(), mode=0o755)
    archive.file("etc/acpi/PWRF/00000080", POWER_BUTTON_HANDLER.encode(), mode=0o755)
    for module in modules:
        archive.file(f"lib/modules/{module.name}", module.read_bytes(), mode=0o644)
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


class _Cpio:
    """Writes the SVR4 "newc" cpio format the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._inode = 1

    def directory(self, name: str) -> None:
        self._entry(name, b"", mode=0o040755)

    def file(self, name: str, data: bytes, *, mode: int) -> None:
        self._entry(name, data, mode=0o100000 | mode)

    def char_device(self, name: str, *, major: int, minor: int) -> None:
        self._entry(name, b"", mode=0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", b"", mode=0, nlink=1)
        return b"".join(self._chunks)

    def _entry(
        self,
        name: str,
        data: bytes,
        *,
        mode: int,
        nlink: int | None = None,
        rdev: tuple[int, int] = (0, 0),
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = (
            self._inode, mode, 0, 0, nlink or (2 if mode & 0o040000 else 1), 0, len(data),
            0, 0, rdev[0], rdev[1], len(encoded), 0,
        )
        self._inode += 1
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._chunks += [header, encoded, _padding(len(header) + len(encoded)), data,
                         _padding(len(data))]


def _padding(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: building tiny-linux needs a Debian host")
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    # A partial file of this writer's own: two builds into one folder never mix their bytes.
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    os.chmod(partial, 0o644)
    os.replace(partial, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubekvm_demo.tiny_linux",
        description="Build the tiny-linux test guest (kernel, initrd, base qcow2).",
    )
    parser.add_argument("--out", type=Path, required=True, help="image directory to write to")
    parser.add_argument("--cache", type=Path, default=None,
                        help=f"where the kernel .deb is kept (default {default_cache_dir()})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = build(out=args.out, cache=args.cache)
    for path in (files.kernel, files.initrd, files.base):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

