"""Tests leave nothing behind: how a test session's leftovers are found and removed — a process,
a libvirt domain or storage pool, a scratch folder. The pytest plugin
(`tests.support.leftovers_plugin`) fails a session that leaves any; `scripts/check-leftovers`
(`python3 -m tests.support.leftovers TAG`, standard library only: it runs even when the venv
is not there) checks a whole `make test` the same way from outside.

Several test runs share this machine (other checkouts, `make bench`), so "the session's own"
is never found by a global listing but by marks only this session puts on what it makes:

- **processes**: the session puts `KUBEKVM_TEST_SESSION=<id>` in its environment at start, and
  every process it starts (servers, databases, agents, benchmarks, browsers, `make run`)
  inherits it, however deep; `/proc/PID/environ` shows it. libvirtd is started without it
  (scripts/libvirtd-up): a daemon that outlives the run on purpose is nobody's leftover.
- **a whole run** under scripts/check-leftovers: it puts `KUBEKVM_LEFTOVER_TAG=<tag>` in the
  environment of `make test`, and every session's scratch folder is then named `...<id>.<tag>`.
- **scratch folders**: every folder a test makes for QEMU (pytest's own tmp_path is 0700 and
  QEMU runs as another user) is made below `session_root()`, `/var/tmp/kubekvm-tests/session-<id>`;
  it must be empty at the end. The built guest and its kernel cache beside it are kept on purpose.
- **domains and pools**: a `kubekvm-` or `bench-` domain (or a storage pool) whose definition
  points into `session_root()`: its disks and serial log are the session's.

libvirt is asked through `virsh` with a timeout, so a hung libvirtd cannot hang the run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SESSION_VARIABLE = "KUBEKVM_TEST_SESSION"
# Set by scripts/check-leftovers around a whole `make test`; inherited like the session's mark.
RUN_VARIABLE = "KUBEKVM_LEFTOVER_TAG"
TESTS_ROOT = Path("/var/tmp/kubekvm-tests")
LIBVIRT_URI = "qemu:///system"
LIBVIRT_SOCKET = Path("/run/libvirt/libvirt-sock")
DOMAIN_PREFIXES = ("kubekvm-", "bench-")
# How long processes the session stopped may take to be gone (a server finishing its
# shutdown, an agent closing its libvirt connection) before they count as left behind
# (KUBEKVM_LEFTOVER_GRACE: tests/test_leftovers.py's leaking runs need not wait so long).
GRACE_VARIABLE = "KUBEKVM_LEFTOVER_GRACE"
EXIT_GRACE_SECONDS = 20.0


def session_id() -> str:
    """This session's mark (made at first use; a nested pytest makes its own)."""
    value = os.environ.get(SESSION_VARIABLE, "")
    if not value or os.environ.get("_KUBEKVM_TEST_SESSION_PID") != str(os.getpid()):
        value = secrets.token_hex(4)
        os.environ[SESSION_VARIABLE] = value
        os.environ["_KUBEKVM_TEST_SESSION_PID"] = str(os.getpid())
    return value


def session_root() -> Path:
    """The session's scratch folder for everything QEMU must reach (world-traversable); a run
    under scripts/check-leftovers names its tag in it, so the script finds it too."""
    tag = os.environ.get(RUN_VARIABLE, "")
    root = TESTS_ROOT / (f"session-{session_id()}.{tag}" if tag else f"session-{session_id()}")
    for folder in (TESTS_ROOT, root):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
    return root


def marked_processes(variable: str, value: str) -> dict[int, str]:
    """pid -> command line of the live processes whose environment holds `variable=value`
    (not this process, nor a zombie, whose environment reads empty)."""
    needle = f"{variable}={value}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes()
            if needle not in environment.split(b"\0"):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found[int(entry.name)] = command[:200]
    return found


def processes_left(variable: str, value: str, *, grace: float | None = None) -> dict[int, str]:
    """The marked processes still alive after `grace` seconds (waited on, not slept through:
    the check returns as soon as none is left); each is then SIGKILLed."""
    if grace is None:
        grace = float(os.environ.get(GRACE_VARIABLE) or EXIT_GRACE_SECONDS)
    deadline = time.monotonic() + grace
    left = marked_processes(variable, value)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)  # the poll interval
        left = marked_processes(variable, value)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


def _virsh(*args: str) -> str:
    """virsh's answer, or nothing when it fails or does not answer within 30 s."""
    try:
        done = subprocess.run(["virsh", "-q", "-c", LIBVIRT_URI, *args], capture_output=True, text=True,
                              timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout if done.returncode == 0 else ""


def libvirt_left(root: Path) -> list[str]:
    """The domains and storage pools defined on libvirtd that point into `root`; each is then
    destroyed and undefined."""
    if not LIBVIRT_SOCKET.exists() or shutil.which("virsh") is None:
        return []
    marker = f"{root}/"
    left = []
    for name in _virsh("list", "--all", "--name").split():
        if name.startswith(DOMAIN_PREFIXES) and marker in _virsh("dumpxml", name):
            left.append(f"domain {name}")
            _virsh("destroy", name)
            _virsh("undefine", name)
    for name in _virsh("pool-list", "--all", "--name").split():
        if marker in _virsh("pool-dumpxml", name) or f"<path>{root}</path>" in _virsh("pool-dumpxml", name):
            left.append(f"pool {name}")
            _virsh("pool-destroy", name)
            _virsh("pool-undefine", name)
    return left


def folders_left(root: Path) -> list[str]:
    """What is still in the scratch folder `root`; it is then removed."""
    if not root.is_dir():
        return []
    left = sorted(str(path) for path in root.iterdir())
    shutil.rmtree(root, ignore_errors=True)
    return left


@dataclass
class Verdict:
    processes: dict[int, str] = field(default_factory=dict)
    libvirt: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return ([f"process {pid}: {command}" for pid, command in sorted(self.processes.items())]
                + self.libvirt + [f"folder {path}" for path in self.folders])


def sweep_session() -> Verdict:
    """What this session left (after its fixtures), removed."""
    root = session_root()
    # Processes first: an agent still running could define a domain after the domains' check.
    processes = processes_left(SESSION_VARIABLE, session_id())
    return Verdict(processes, libvirt_left(root), folders_left(root))


def sweep_run(tag: str) -> Verdict:
    """What a whole run tagged `tag` left (every session in it, and anything they started), removed."""
    verdict = Verdict(processes=processes_left(RUN_VARIABLE, tag))
    for root in sorted(TESTS_ROOT.glob(f"session-*.{tag}")):
        verdict.libvirt += libvirt_left(root)
        verdict.folders += folders_left(root) or [str(root)]
    return verdict


def main(argv: list[str]) -> int:
    """`python3 -m tests.support.leftovers TAG`: exit 1, listing them, if the run tagged TAG
    left anything behind (removed now)."""
    (tag,) = argv
    lines = sweep_run(tag).lines()
    for line in lines:
        print(f"left behind: {line}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
