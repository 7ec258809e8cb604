"""The parts a benchmark runs against: libvirtd, a database, `kubekvm serve`, `kubekvm-agent`.

Servers and databases come from ``tests.support.processes`` (the same way the test suite starts
them, admin token and host tokens included), so the benchmarks exercise exactly what the
tests do. Everything a benchmark creates on libvirt is named with a ``bench-`` prefix (the
agent's domains are ``kubekvm-bench-...``) and lives under a run directory in ``WORK_ROOT``
(``KUBEKVM_BENCH_RUNS``: the smoke tests name a scratch folder of their own), which QEMU
(running as libvirt's own user) can reach; the guest images stay in ``GUEST_ROOT`` between
runs. A run directory names the process that owns it, so ``sweep`` can remove one run's
domains, storage pools, processes and files, or everything that runs which ended without
cleaning up left behind, and never touch a run still going (the smoke test may start while
someone runs ``make bench``). ``exit_cleanly_on_signals`` makes SIGTERM and SIGHUP run every
clean-up too.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import (
    ROOT,
    VENV_BIN,
    Child,
    Server,
    free_port,
    start_secantus,
    start_server,
    wait_for_mongo,
)

LIBVIRT_URI = "qemu:///system"
GUEST_ROOT = Path("/var/tmp/kubekvm-bench")
WORK_ROOT = Path(os.environ.get("KUBEKVM_BENCH_RUNS") or GUEST_ROOT)
DOMAIN_PREFIXES = ("bench-", "kubekvm-bench-")
OWNER_FILE = "owner.pid"


def traversable_dir(path: Path) -> Path:
    """A directory QEMU (another user) can enter: every benchmark file lives below one."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


def exit_cleanly_on_signals() -> None:
    """SIGTERM and SIGHUP (a closed terminal) become ``SystemExit``, as Ctrl-C is
    ``KeyboardInterrupt`` already, so every ``finally`` still runs: processes stopped, domains,
    pools and files removed. (A SIGKILL cannot be caught: whoever sends one sweeps after it.)"""

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, terminate)


def libvirtd_up() -> None:
    subprocess.run([str(ROOT / "scripts" / "libvirtd-up")], check=True)


def new_run_dir() -> Path:
    traversable_dir(WORK_ROOT)
    name = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    # Made under another name and renamed: a concurrent sweep never sees it without its owner.
    partial = traversable_dir(WORK_ROOT / f".{name}")
    (partial / OWNER_FILE).write_text(f"{os.getpid()}\n")
    run = WORK_ROOT / name
    partial.rename(run)
    return run


def unique(prefix: str) -> str:
    """A lab or host name of our own: ``bench-...`` plus a few random hex digits."""
    return f"{prefix}-{secrets.token_hex(3)}"


def _live(run: Path) -> bool:
    """Whether the benchmark process that made ``run`` still runs."""
    try:
        pid = int((run / OWNER_FILE).read_text().strip())
        return b"benchmarks" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def live_runs() -> list[str]:
    return sorted(path.name for path in WORK_ROOT.glob("run-*") if _live(path))


def _run_of(xml: str) -> Path | None:
    """The run directory a domain's or pool's XML points into, if any."""
    match = re.search(rf"{re.escape(str(WORK_ROOT))}/(run-[A-Za-z0-9-]+)", xml)
    return WORK_ROOT / match.group(1) if match else None


def sweep(uri: str = LIBVIRT_URI, *, run: Path | None = None) -> list[str]:
    """With ``run``: removes that run's domains, storage pools (virt-clone makes one for each
    directory it copies into) and directory. Without: removes what ended runs left behind:
    ``bench-`` domains and pools that point into no live run, and dead runs' directories.
    Returns what it removed."""
    import libvirt

    def doomed(xml: str) -> bool:
        owner = _run_of(xml)
        return owner == run if run is not None else owner is None or not _live(owner)

    removed: list[str] = []
    connection = libvirt.open(uri)
    try:
        for domain in connection.listAllDomains(0):
            if domain.name().startswith(DOMAIN_PREFIXES) and doomed(domain.XMLDesc(0)):
                stop_and_undefine(domain)
                removed.append(f"domain {domain.name()}")
        for pool in connection.listAllStoragePools(0):
            xml = pool.XMLDesc(0)
            if f"<path>{WORK_ROOT}/" in xml and doomed(xml):
                stop_and_undefine(pool)
                removed.append(f"pool {pool.name()}")
    finally:
        connection.close()
    removed += _kill_processes(doomed)
    for path in [run] if run is not None else [p for p in WORK_ROOT.glob("run-*") if not _live(p)]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"dir {path}")
    return removed


def _kill_processes(doomed: Callable[[str], bool]) -> list[str]:
    """SIGKILLs the processes (agents, databases, probes) whose command line points into a doomed
    run directory: what a run killed outright (SIGKILL, OOM) could not stop. QEMU's guests are
    left to libvirt (their domains are destroyed above)."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        words = command.split(b"\0")
        if b"qemu-system" in words[0] or f"{WORK_ROOT}/run-".encode() not in command:
            continue
        text = command.replace(b"\0", b" ").decode(errors="replace")
        if _run_of(text) is not None and doomed(text):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(f"process {entry.name}")
    return killed


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_and_undefine(item: Any) -> None:
    """Destroys (if active) and undefines a libvirt domain or storage pool; either step may
    find it already done."""
    import libvirt

    with contextlib.suppress(libvirt.libvirtError):
        if item.isActive():
            item.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        item.undefine()


def remove_pools(connection: Any, directory: Path) -> list[str]:
    """Destroys and undefines the storage pools on ``directory`` or below it (virt-clone
    makes a pool for each directory it copies into)."""
    removed = []
    for pool in connection.listAllStoragePools(0):
        path = ET.fromstring(pool.XMLDesc(0)).findtext("target/path") or ""
        if path != str(directory) and not path.startswith(f"{directory}/"):
            continue
        stop_and_undefine(pool)
        removed.append(f"pool {pool.name()}")
    return removed


@dataclass
class Database:
    uri: str
    child: Child

    def stop(self) -> None:
        self.child.stop()


@contextlib.contextmanager
def database() -> Iterator[Database]:
    """A SecantusDB of its own (in memory), as the tests start it."""
    uri, child = start_secantus()
    try:
        yield Database(uri, child)
    finally:
        child.stop()


class DiskDatabase:
    """A SecantusDB process with its data on disk, on a fixed port, so it can be SIGKILLed and
    started again on the same data and address (the class-day run's "database fails over")."""

    def __init__(self, storage: Path, log: Path) -> None:
        self.storage = storage
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, *, timeout: float = 60.0) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            # --sync-on-commit, as the embedded database runs (kubekvm.database): without it a
            # SIGKILL loses writes SecantusDB had already acknowledged, which no majority-write
            # replica set does, and the run would count those as lost by the product.
            [str(VENV_BIN / "secantusd-py"), "--host", "127.0.0.1", "--port", str(self.port),
             "--storage-path", str(self.storage), "--sync-on-commit"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_mongo(self.uri, timeout=timeout, process=self.process)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush beyond what the storage engine already made durable."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


@contextlib.contextmanager
def kubekvm_server(db: Database, *, database_name: str | None = None,
                   env: dict[str, str] | None = None) -> Iterator[Server]:
    """`kubekvm serve` on ``database_name`` (default: a fresh one), with the bootstrap admin token."""
    # A generous start deadline: on a machine loaded by other jobs a start takes tens of seconds.
    server = start_server(database_uri=db.uri, database_name=database_name,
                          env={"KUBEKVM_SEED_TEMPLATES": "0", **(env or {})}, timeout=120.0)
    try:
        yield server
    finally:
        server.stop()


def graphql(server: Server, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """A GraphQL request as the admin; raises on errors."""
    body = server.graphql(query, variables or {})
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    data: dict[str, Any] = body["data"]  # type: ignore[assignment]
    return data


def add_template(server: Server, *, name: str, image: str, memory_mib: int = 128, disk_gib: int = 1) -> None:
    graphql(server, "mutation($i: TemplateInput!) { createTemplate(input: $i) { name } }",
            {"i": {"name": name, "title": name, "os": "LINUX", "image": image, "vcpus": 1,
                   "memoryMib": memory_mib, "diskGib": disk_gib}})


@dataclass
class Agent:
    """A `kubekvm-agent` process on libvirtd with its own image and state directories."""

    server: Server
    host_name: str
    image_dir: Path
    state_dir: Path
    log: Path
    extra: list[str] = field(default_factory=list)
    libvirt_uri: str = LIBVIRT_URI
    # More server replicas the agent tries in turn when the first does not answer.
    fallbacks: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    token: str = ""

    def start(self) -> Agent:
        # One token for the agent's lifetime: a restart (after a kill) needs no server round trip.
        self.token = self.token or self.server.host_token(self.host_name)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # The token goes in the environment, not on the command line (ps shows arguments).
        environment = {**os.environ, "KUBEKVM_HOST_TOKEN": self.token}
        self.process = subprocess.Popen(
            [str(VENV_BIN / "kubekvm-agent"), "--server", ",".join([self.server.url, *self.fallbacks]),
             "--host-name", self.host_name, "--libvirt-uri", self.libvirt_uri, "--image-dir", str(self.image_dir),
             "--state-dir", str(self.state_dir), "--domain-type", "qemu", *self.extra],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=environment, start_new_session=True,
        )
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it: no cleanup of any kind."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"kubekvm-agent exited with {self.process.returncode}; see {self.log}")
            hosts = graphql(self.server, "{ hosts { name ready images } }")["hosts"]
            if any(h["name"] == self.host_name and h["ready"] for h in hosts):
                return
            time.sleep(0.2)
        raise RuntimeError(f"host {self.host_name} not ready within {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def kubekvm_agent(server: Server, *, image_dir: Path, state_dir: Path, log: Path,
                  extra: list[str] | None = None) -> Iterator[Agent]:
    agent = Agent(server, unique("bench-host"), image_dir, traversable_dir(state_dir), log, extra or [])
    agent.start()
    try:
        agent.wait_ready()
        yield agent
    finally:
        agent.stop()


def _cpu_idle_fraction(interval: float) -> float:
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    idle_before, total_before = sample()
    time.sleep(interval)
    idle_after, total_after = sample()
    return (idle_after - idle_before) / max(total_after - total_before, 1)


def wait_for_quiet_cpu(*, idle: float = 0.85, timeout: float = 20.0) -> float:
    """Waits (bounded) until the CPUs are mostly idle, so one measurement does not pay for the
    previous one's guests still booting or being torn down; returns the idle fraction seen."""
    deadline = time.monotonic() + timeout
    seen = _cpu_idle_fraction(0.5)
    while seen < idle and time.monotonic() < deadline:
        seen = _cpu_idle_fraction(0.5)
    return round(seen, 3)
