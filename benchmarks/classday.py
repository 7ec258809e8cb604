"""The class-day run (``make classday``): the whole system on this machine, under load and faults.

One run, bounded in time, proves that nothing freezes, nothing is lost and everything
converges when a class starts:

1. *The system.* A SecantusDB process with its data on disk (so it can be SIGKILLed and started
   again on the same data), two ``kubekvm serve`` replicas on it, one ``kubekvm-agent`` on this
   machine's libvirtd + QEMU (TCG guests of the tiny-linux template) and ``simulated_hosts``
   agents on libvirt's test driver (``test:///default``: each agent process has its own
   in-memory hypervisor; overlays are still real ``qemu-img`` files). Every agent knows both
   replicas. Placement prefers the host with most free memory, so the real host (the largest)
   is filled first, up to its vCPUs x ``KUBEKVM_CPU_OVERCOMMIT``; the run sets the overcommit so
   that the real host takes ``real_host_share`` machines and the simulated ones the rest.
2. *Sign-in burst.* ``students`` students sign in through the login page within
   ``sign_in_window_s`` (a real ``POST /login``: argon2 runs), spread over both replicas,
   while ``loop_probe`` (a process of its own) sends ``{ me { kind name } }`` to each replica
   every 100 ms. The probe's p99 during the burst must stay within 250 ms. The students then
   load "My VMs" and follow its live updates, and two ``deploymentEvents`` subscribers follow
   every lab; each must have its first snapshot before the lab is made.
3. *The lab, under faults.* The teacher creates a ``replicas``-machine lab and sets its roster
   to the students; ``subscribers`` more subscribers follow the lab by name (they can only
   once it exists), ``listers`` GraphQL clients list labs. Meanwhile, mid-provision: one server replica is SIGKILLed and
   started again on its port, the database is SIGKILLed and started again on its data after
   ``db_down_s``, and the real host's agent is SIGKILLed ``agent_kills`` times at random
   moments: the first within ``kill_gap_s`` of the lab's creation, each next one a random
   0.3 s to ``kill_gap_s`` after the agent was started again (a random 0.1-1 s after its kill),
   so the kills follow provisioning however fast the machine is (a kill may hit an agent still
   starting; the report says which kills came before every machine first ran).
4. *Afterwards.* The lab must be Active with every machine running; exactly the desired
   domains (``virsh list --all``, ``kubekvm-<lab>-`` names) on the real host and exactly one
   overlay per machine in every host's state directory (on simulated hosts, also what their
   agents report: no orphans); each student bound to one machine; every subscriber's view and
   every student's page equal to the final state; and no failed request outside the kill
   windows. Then the lab is deleted and nothing may be left on any host.

*Kill windows.* Every failed request (a student's, a subscriber's, a lister's, the probe's,
the harness's own reads) is recorded with the replica it went to and when it started and
ended; a machine reported ERROR or a lab seen Failed is recorded against its host / the lab.
A failure is excused when it overlaps a window whose target it hit: a server replica's window
(its URL) runs from its SIGKILL until it answers ``/readyz`` again; the database's (every
target) from its SIGKILL until both replicas answer ``/readyz`` again; an agent's (its host)
from its SIGKILL until the restarted agent's heartbeat reaches the server. Each window is
extended by ``RECOVERY_GRACE_S`` for clients to notice and reconnect. Everything else is an
error of the run.

The report (``benchmarks/results/classday.json`` or ``quick/classday.json``, and
``classday.txt``, a summary for people) carries the figures, every check, every window and
every failure, the machine it ran on, the load average, and each process's resident memory
(sampled every second). ``--quick`` (the CI smoke test) runs the same steps smaller; only its
outcomes are asserted, never its timings. Everything the run starts is stopped and every
domain and file it made removed on every way out (``finally`` + ``atexit``; SIGTERM becomes
an exception).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import math
import os
import random
import re
import resource
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tests.support.processes import LOG_DIR, ROOT, VENV_BIN, Server, start_server

from benchmarks import machine_info, report, stack
from benchmarks.classroom import Failure, Failures, LabWatcher, Monitor, Student, client, list_labs, post_graphql
from benchmarks.guest_images import make_image
from benchmarks.stats import percentile, summary

RESULTS = Path(__file__).resolve().parent / "results"
TEMPLATE = "classday-tiny"
RECOVERY_GRACE_S = 3.0
PROBE_P99_LIMIT_S = 0.25
# The real host's vCPUs, as its libvirtd reports them, when it cannot be asked.
FALLBACK_VCPUS = 2


@dataclass(frozen=True)
class DayPlan:
    name: str
    students: int
    simulated_hosts: int
    replicas: int  # the lab's machines
    real_host_share: int  # of which the real QEMU host takes this many
    sign_in_window_s: float
    listers: int
    lister_concurrency: int
    subscribers: int  # deploymentEvents subscribers of the lab (one more follows every lab)
    agent_kills: int
    kill_gap_s: float  # the real agent is killed at most this long after create / its last restart
    db_down_s: float
    converge_timeout_s: float
    budget_s: float  # the whole run, set-up and clean-up included


FULL = DayPlan(name="full", students=30, simulated_hosts=20, replicas=30, real_host_share=6, sign_in_window_s=5.0,
               listers=200, lister_concurrency=20, subscribers=4, agent_kills=10, kill_gap_s=1.5, db_down_s=2.0,
               converge_timeout_s=240.0, budget_s=600.0)
# The quick run takes about a minute on an idle machine; its budget leaves room for a CI
# machine busy with other tests (everything here is CPU-bound on two cores).
QUICK = DayPlan(name="quick", students=6, simulated_hosts=3, replicas=8, real_host_share=2, sign_in_window_s=2.0,
                listers=20, lister_concurrency=5, subscribers=2, agent_kills=3, kill_gap_s=1.0, db_down_s=1.0,
                converge_timeout_s=60.0, budget_s=150.0)


# ---------------------------------------------------------------------------------------------
# Processes: every child the run starts is registered, so every way out can stop it.


class Children:
    """Stop-functions of everything the run started, called in reverse order exactly once;
    then a sweep of ``/proc`` for any process of the run that escaped them (one a restart in a
    worker thread started while the run was being interrupted), every time it is called."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self.marks: list[bytes] = []  # in a process's command line or environment: it is ours

    def add(self, stop: Callable[[], None]) -> None:
        with self._lock:
            self._stops.append(stop)

    def stop_all(self) -> None:
        with self._lock:
            stops, self._stops = self._stops[::-1], []
        for stop in stops:
            with contextlib.suppress(Exception):
                stop()
        self.kill_leftovers()

    def kill_leftovers(self) -> list[int]:
        killed = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                seen = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
            except OSError:
                continue
            # QEMU guests are libvirtd's: stack.sweep destroys their domains properly.
            if any(mark in seen for mark in self.marks) and b"qemu-system" not in seen.split(b"\0", 1)[0]:
                with contextlib.suppress(OSError):
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(int(entry.name))
        return killed


@dataclass
class Window:
    what: str
    target: str  # a replica URL, a host name, or "*" (the database: everything)
    killed_at: float
    back_at: float | None = None  # None: it did not come back within the run
    restarted_at: float | None = None  # the process started again (answering, for the database)
    ends: float = math.inf

    def close(self, back_at: float | None, *, limit: float) -> None:
        self.back_at = back_at
        self.ends = (back_at if back_at is not None else limit) + RECOVERY_GRACE_S


def excused(failure: Failure, windows: list[Window]) -> Window | None:
    """The kill window that explains ``failure``, if any (see the module's docstring)."""
    for window in windows:
        if window.target in ("*", failure.target) and failure.started <= window.ends \
                and failure.ended >= window.killed_at:
            return window
    return None


class RssSampler:
    """Each role's resident memory (VmRSS), sampled every second; peaks and last values; and
    the CPU time each role's processes used (utime + stime, the last seen of every process,
    restarted ones included), which tells a busy process from one starved of CPU."""

    def __init__(self, roles: Callable[[], dict[str, list[int]]]) -> None:
        self.roles = roles
        self.peak: dict[str, int] = {}
        self.last: dict[str, list[int]] = {}
        self.cpu_ticks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss_kib(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()

    @staticmethod
    def cpu_ticks_of(pid: int) -> int | None:
        try:
            # The command name (field 2) may hold spaces: count fields after its closing ")".
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            return None

    def sample(self) -> None:
        for role, pids in self.roles().items():
            for pid in pids:
                ticks = self.cpu_ticks_of(pid)
                if ticks is not None:
                    self.cpu_ticks[pid] = (role, ticks)
            values = [v for v in (self.rss_kib(pid) for pid in pids) if v]
            if values:
                self.last[role] = values
                self.peak[role] = max(self.peak.get(role, 0), max(values))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=5)
        per_second = os.sysconf("SC_CLK_TCK")
        cpu: dict[str, float] = {}
        for role, ticks in self.cpu_ticks.values():
            cpu[role] = cpu.get(role, 0.0) + ticks / per_second
        return {role: {"peak_mib_per_process": round(self.peak[role] / 1024, 1),
                       "last_mib_per_process": [round(v / 1024, 1) for v in self.last.get(role, [])],
                       "last_total_mib": round(sum(self.last.get(role, [])) / 1024, 1),
                       "cpu_seconds": round(cpu.get(role, 0.0), 1)}
                for role in sorted(self.peak)}


# ---------------------------------------------------------------------------------------------
# The system


@dataclass
class System:
    plan: DayPlan
    work: Path
    children: Children
    db: stack.DiskDatabase
    servers: list[Server]
    database_name: str
    server_env: dict[str, str]
    real: stack.Agent
    sims: list[stack.Agent]
    lab: str
    overcommit: int
    real_vcpus: int

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    @property
    def admin_token(self) -> str:
        return self.servers[0].admin_token

    def pids(self) -> dict[str, list[int]]:
        def alive(process: subprocess.Popen[bytes] | None) -> list[int]:
            return [process.pid] if process is not None and process.poll() is None else []

        return {"database": alive(self.db.process),
                **{f"server-{'ab'[i]}": alive(s.child.process) for i, s in enumerate(self.servers)},
                "agent-real": alive(self.real.process),
                "agent-simulated": [pid for sim in self.sims for pid in alive(sim.process)]}


def _real_vcpus() -> int:
    import libvirt

    try:
        connection = libvirt.open(stack.LIBVIRT_URI)
    except libvirt.libvirtError:
        return FALLBACK_VCPUS
    try:
        return int(connection.getInfo()[2])
    finally:
        connection.close()


def start_server_replica(system_db: stack.DiskDatabase, database_name: str, env: dict[str, str],
                         *, port: int | None = None) -> Server:
    return start_server(database_uri=system_db.uri, database_name=database_name, env=env, port=port,
                        timeout=60.0)


def build(plan: DayPlan, work: Path, children: Children) -> System:
    """Starts the database, both replicas and every agent; returns once every host is ready."""
    tag = secrets.token_hex(2)
    database_name = f"classday{tag}"
    # Servers carry their database's name in their environment; the database, the agents and
    # the probe have the run directory on their command lines.
    children.marks += [f"KUBEKVM_DATABASE={database_name}\0".encode(), str(work).encode()]
    db = stack.DiskDatabase(work / "db", LOG_DIR / f"classday-db-{work.name}.log")
    children.add(db.kill)
    db.start()
    real_vcpus = _real_vcpus()
    overcommit = max(1, math.ceil(plan.real_host_share / real_vcpus))
    env = {"KUBEKVM_SEED_TEMPLATES": "0", "KUBEKVM_CPU_OVERCOMMIT": str(overcommit),
           "KUBEKVM_HOST_TIMEOUT": "30"}
    servers: list[Server] = []
    for _ in range(2):
        server = start_server_replica(db, database_name, env)
        servers.append(server)
        children.add(lambda server=server: server.child.stop(signal.SIGKILL))  # type: ignore[misc]
    stack.add_template(servers[0], name=TEMPLATE, image=f"{TEMPLATE}.qcow2", memory_mib=128, disk_gib=1)

    image = make_image(work / "images", TEMPLATE, size_mib=64, fill=False)
    sim_images = stack.traversable_dir(work / "sim-images")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(sim_images / f"{TEMPLATE}.qcow2"), "64M"],
                   check=True)
    logs = LOG_DIR / f"classday-{work.name}"
    real = stack.Agent(servers[0], f"bench-cd-real-{tag}", image.directory,
                       stack.traversable_dir(work / "state-real"), logs / "agent-real.log",
                       fallbacks=[servers[1].url])
    sims = [stack.Agent(servers[i % 2], f"bench-cd-sim{i:02d}-{tag}", sim_images,
                        stack.traversable_dir(work / f"state-sim{i:02d}"), logs / f"agent-sim{i:02d}.log",
                        libvirt_uri="test:///default", fallbacks=[servers[(i + 1) % 2].url])
            for i in range(plan.simulated_hosts)]
    for agent in [real, *sims]:
        children.add(agent.kill)
        agent.start()
    _wait_hosts_ready(servers[0], [real, *sims], timeout=120)
    return System(plan=plan, work=work, children=children, db=db, servers=servers, database_name=database_name,
                  server_env=env, real=real, sims=sims, lab=stack.unique("bench-cd"), overcommit=overcommit,
                  real_vcpus=real_vcpus)


def _wait_hosts_ready(server: Server, agents: list[stack.Agent], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    wanted = {agent.host_name for agent in agents}
    while True:
        for agent in agents:
            if agent.process is not None and agent.process.poll() is not None:
                raise RuntimeError(f"agent {agent.host_name} exited with {agent.process.returncode}; see {agent.log}")
        hosts = stack.graphql(server, "{ hosts { name ready } }")["hosts"]
        ready = {h["name"] for h in hosts if h["ready"]}
        if wanted <= ready:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"hosts not ready within {timeout} s: {sorted(wanted - ready)}")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# The day


async def _wait_ready(url: str, *, timeout: float) -> float | None:
    """When ``url``'s /readyz answered 200 (monotonic), or None at the timeout."""
    deadline = time.monotonic() + timeout
    async with client(2) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return time.monotonic()
            await asyncio.sleep(0.1)
    return None


class Faults:
    """The kills, each recorded as a window (see the module's docstring)."""

    def __init__(self, system: System, monitor: Monitor, rng: random.Random) -> None:
        self.system, self.monitor, self.rng = system, monitor, rng
        self.windows: list[Window] = []

    async def server_kill(self, at: float) -> None:
        await _sleep_until(at)
        victim = self.system.servers[1]
        window = Window("server replica b SIGKILL", victim.url, time.monotonic())
        self.windows.append(window)
        victim.child.process.kill()
        victim.child.process.wait()
        port = int(victim.url.rsplit(":", 1)[1])
        # A rescheduled pod behind the same Service: the same address, database and settings.
        restarted = await asyncio.to_thread(start_server_replica, self.system.db, self.system.database_name,
                                            self.system.server_env, port=port)
        window.restarted_at = time.monotonic()
        self.system.servers[1] = restarted
        self.system.children.add(lambda: restarted.child.stop(signal.SIGKILL))
        window.close(await _wait_ready(restarted.url, timeout=60), limit=time.monotonic())

    async def database_kill(self, at: float) -> None:
        await _sleep_until(at)
        window = Window("database SIGKILL", "*", time.monotonic())
        self.windows.append(window)
        await asyncio.to_thread(self.system.db.kill)
        await asyncio.sleep(self.system.plan.db_down_s)
        await asyncio.to_thread(self.system.db.start)
        window.restarted_at = time.monotonic()
        answered = [await _wait_ready(url, timeout=90) for url in list(self.system.urls)]
        window.close(None if None in answered else max(a for a in answered if a is not None),
                     limit=time.monotonic())

    async def agent_kills(self, first: float, *, count: int, gap: float) -> None:
        agent = self.system.real
        at = first
        for _ in range(count):
            await _sleep_until(at)
            window = Window("real agent SIGKILL", agent.host_name, time.monotonic())
            self.windows.append(window)
            await asyncio.to_thread(agent.kill)
            await asyncio.sleep(self.rng.uniform(0.1, 1.0))
            restarted_wall = time.time()
            await asyncio.to_thread(agent.start)
            window.restarted_at = time.monotonic()
            asyncio.get_running_loop().create_task(self._agent_back(window, restarted_wall))
            at = window.restarted_at + self.rng.uniform(0.3, gap)

    async def _agent_back(self, window: Window, since_wall: float) -> None:
        """Closes an agent's window when its heartbeat after the restart reaches the server."""
        from datetime import datetime

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            data = await self.monitor.query("{ hosts { name lastHeartbeat } }")
            for host in (data or {}).get("hosts", []):
                if host["name"] == window.target and \
                        datetime.fromisoformat(host["lastHeartbeat"]).timestamp() >= since_wall:
                    window.close(time.monotonic(), limit=time.monotonic())
                    return
            await asyncio.sleep(0.25)
        window.close(None, limit=time.monotonic())


async def _sleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


LAB_TRUTH = """
query($n: String!) {
  deployment(name: $n) { phase message running machineCount roster
                         machines { name index host student observed desired } }
}
"""


async def _create_accounts(system: System, students: list[str]) -> dict[str, str]:
    """The teacher and the students, with passwords, made by the admin on both replicas."""
    passwords = {name: f"pw-{secrets.token_urlsafe(12)}" for name in ["teacher-cd", *students]}
    gate = asyncio.Semaphore(8)

    async def make(index: int, name: str) -> None:
        role = "TEACHER" if name == "teacher-cd" else "STUDENT"
        async with gate, client(60) as http:
            await post_graphql(http, system.urls[index % 2], "mutation($i: UserInput!) { createUser(input: $i) "
                               "{ name } }", {"i": {"name": name, "role": role, "password": passwords[name]}},
                               token=system.admin_token)

    await asyncio.gather(*(make(i, name) for i, name in enumerate(passwords)))
    return passwords


async def _teacher_token(system: System, password: str) -> str:
    def sign_in() -> str:
        client = system.servers[0].session("teacher-cd", password)
        try:
            body = client.post("/graphql", json={"query": 'mutation { createApiToken(label: "classday") '
                                                          "{ token } }"}).json()
        finally:
            client.close()
        token: str = body["data"]["createApiToken"]["token"]
        return token

    return await asyncio.to_thread(sign_in)


def _probe_samples(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _converged(monitor: Monitor, lab: str, replicas: int) -> dict[str, Any] | None:
    data = await monitor.query(LAB_TRUTH, {"n": lab})
    if data is None:
        return None
    truth: dict[str, Any] = data["deployment"]
    machines = truth["machines"]
    if truth["phase"] == "ACTIVE" and truth["running"] == replicas and len(machines) == replicas and \
            all(m["observed"] == "RUNNING" and m["host"] for m in machines):
        return truth
    return None


def _virsh_domains(prefix: str) -> tuple[set[str], set[str]]:
    """(every domain, running domains) named ``prefix...`` on this machine's libvirtd."""
    def names(*flags: str) -> set[str]:
        listed = subprocess.run(["virsh", "-c", stack.LIBVIRT_URI, "list", "--name", *flags],
                                capture_output=True, text=True, check=True, timeout=60).stdout
        return {line.strip() for line in listed.splitlines() if line.strip().startswith(prefix)}

    return names("--all"), names("--state-running")


def _overlays(agent: stack.Agent) -> list[str]:
    disks = agent.state_dir / "disks"
    return sorted(p.name for p in disks.iterdir()) if disks.is_dir() else []


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Outcome:
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)


PHASE = {"now": "set-up"}


def say(began: float, message: str) -> None:
    PHASE["now"] = message
    print(f"[{time.monotonic() - began:6.1f} s] {message}", flush=True)


async def day(system: System, rng: random.Random, outcome: Outcome, *, began: float) -> dict[str, Any]:
    """The class day on ``system``; ``outcome`` collects the checks as they are made, so a run
    that fails half-way still reports what it had checked."""
    plan, lab = system.plan, system.lab
    failures = Failures()
    monitor = Monitor(system.urls, system.admin_token, failures)
    students_names = [f"student{i:02d}-cd" for i in range(1, plan.students + 1)]
    say(began, f"making the teacher and {plan.students} student accounts")
    passwords = await _create_accounts(system, students_names)
    teacher = await _teacher_token(system, passwords["teacher-cd"])

    token_file = system.work / "probe.token"
    token_file.write_text(system.admin_token)
    token_file.chmod(0o600)
    probe_out = system.work / "probe.jsonl"
    probe = subprocess.Popen(
        [str(VENV_BIN / "python"), "-m", "benchmarks.loop_probe", *[a for u in system.urls for a in ("--url", u)],
         "--token-file", str(token_file), "--out", str(probe_out)],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    system.children.add(lambda: stack.stop_process(probe, timeout=15))
    await asyncio.sleep(3.0)  # calm samples before the burst, for comparison

    # -- the sign-in burst
    say(began, f"sign-in burst: {plan.students} students within {plan.sign_in_window_s:g} s")
    students = [Student(name, passwords[name], home=i, replicas=system.urls, failures=failures)
                for i, name in enumerate(students_names)]
    burst_began = time.monotonic()

    async def sign_in(index: int, student: Student) -> None:
        await _sleep_until(burst_began + index * plan.sign_in_window_s / plan.students)
        with contextlib.suppress(httpx.HTTPError, RuntimeError):
            await student.sign_in()

    await asyncio.gather(*(sign_in(i, s) for i, s in enumerate(students)))
    burst_ended = time.monotonic()
    signed_in = [s for s in students if s.sign_in_s is not None]
    outcome.check("every student signed in", len(signed_in) == plan.students,
                  f"{len(signed_in)} of {plan.students}")

    # -- students wait on "My VMs", dashboards follow every lab: all before the lab exists
    stop = asyncio.Event()

    async def student_day(student: Student) -> None:
        await student.load_my()
        await student.follow(stop)

    early = [LabWatcher(f"all-{i + 1}", lab, everything=True, home=i, replicas=system.urls, token=teacher,
                        failures=failures) for i in range(2)]
    background = [asyncio.create_task(w.run(stop)) for w in early]
    background += [asyncio.create_task(student_day(s)) for s in signed_in]
    followers: list[Any] = [*early, *signed_in]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(f.live.wait() for f in followers)), 30)
    outcome.check("every student page and all-labs subscriber followed before the lab was made",
                  all(f.live.is_set() for f in followers),
                  f"{sum(f.live.is_set() for f in followers)} of {len(followers)} within 30 s")

    # -- the lab, under faults
    # Placement takes only hosts whose heartbeat is recent: how many were, just before.
    hosts_before = (await monitor.query("{ hosts { name ready } }") or {}).get("hosts", [])
    our_hosts = {a.host_name for a in [system.real, *system.sims]}
    ready_at_create = sum(1 for h in hosts_before if h["ready"] and h["name"] in our_hosts)
    say(began, f"the teacher creates a {plan.replicas}-machine lab {lab}; faults begin")
    async with client(60) as http:
        created_at = time.monotonic()
        await post_graphql(http, system.urls[0], "mutation($n: String!, $t: String!, $r: Int!) { createDeployment("
                           "input: {name: $n, template: $t, replicas: $r}) { name } }",
                           {"n": lab, "t": TEMPLATE, "r": plan.replicas}, token=teacher)
        created_returned = time.monotonic()
        await post_graphql(http, system.urls[1], "mutation($n: String!, $s: [String!]!) { setRoster(name: $n, "
                           "students: $s) { unbound } }", {"n": lab, "s": students_names}, token=teacher)
        roster_returned = time.monotonic()
    # Subscribers of the lab by name can only come once it exists: amid the faults, as a
    # dashboard opened at that moment would.
    watchers = [*early, *(LabWatcher(f"{i + 1}", lab, everything=False, home=i, replicas=system.urls,
                                     token=teacher, failures=failures) for i in range(plan.subscribers))]
    background += [asyncio.create_task(w.run(stop)) for w in watchers[len(early):]]
    faults_from = created_returned
    listing = asyncio.create_task(list_labs(count=plan.listers, concurrency=plan.lister_concurrency,
                                            replicas=system.urls, token=teacher, failures=failures))
    faults = Faults(system, monitor, rng)
    server_at = faults_from + rng.uniform(0.5, 1.5)
    db_at = faults_from + rng.uniform(3.0, 5.0)
    first_agent_kill = faults_from + rng.uniform(0.3, plan.kill_gap_s)
    fault_tasks = [asyncio.create_task(faults.server_kill(server_at)),
                   asyncio.create_task(faults.database_kill(db_at)),
                   asyncio.create_task(faults.agent_kills(first_agent_kill, count=plan.agent_kills,
                                                          gap=plan.kill_gap_s))]

    say(began, f"kills: server at "
               f"+{server_at - faults_from:.1f} s, database at +{db_at - faults_from:.1f} s, agent first at "
               f"+{first_agent_kill - faults_from:.1f} s, then {plan.agent_kills - 1} more")
    first_converged: float | None = None
    truth: dict[str, Any] | None = None
    deadline = created_returned + plan.converge_timeout_s
    while time.monotonic() < deadline:
        truth = await _converged(monitor, lab, plan.replicas)
        if truth is not None and first_converged is None:
            first_converged = time.monotonic()
            say(began, "every machine running")
        if truth is not None and all(t.done() for t in fault_tasks):
            break
        await asyncio.sleep(0.5)
    for task in fault_tasks:
        if task.done():
            task.result()  # a harness failure (a restart that did not work) is the run's error
    # Agent windows close asynchronously: give the last one its chance.
    for _ in range(120):
        if all(w.back_at is not None or w.ends != math.inf for w in faults.windows):
            break
        await asyncio.sleep(0.25)
    converged_at = time.monotonic()
    outcome.check("the lab converged (Active, every machine running) after the faults", truth is not None,
                  f"within {plan.converge_timeout_s:g} s of its creation" if truth else
                  f"not within {plan.converge_timeout_s:g} s")
    lister_result = await listing

    # -- afterwards: the exact set, on every host
    say(began, "converged after the faults; checking every host" if truth else "did NOT converge; checking anyway")
    truth = await _settled_truth(monitor, lab, plan.replicas) or truth
    machines = (truth or {}).get("machines", [])
    expected_names = {f"{lab}-{i}" for i in range(1, plan.replicas + 1)}
    outcome.check("exactly the lab's machines exist (none lost, none duplicated)",
                  sorted(m["name"] for m in machines) == sorted(expected_names),
                  f"{len(machines)} machine(s) for {plan.replicas} replicas")
    by_host: dict[str, list[str]] = {}
    for machine in machines:
        by_host.setdefault(machine["host"] or "(none)", []).append(machine["name"])
    real_expected = {f"kubekvm-{name}" for name in by_host.get(system.real.host_name, [])}
    outcome.check("the real QEMU host runs some of the lab", len(real_expected) > 0,
                  f"{len(real_expected)} machine(s) on {system.real.host_name}")
    all_domains, running_domains = await asyncio.to_thread(_virsh_domains, f"kubekvm-{lab}-")
    outcome.check("real host: exactly the desired domains (virsh list --all)", all_domains == real_expected,
                  _difference(all_domains, real_expected))
    outcome.check("real host: every desired domain running", running_domains == real_expected,
                  _difference(running_domains, real_expected))
    overlay_problems = []
    for agent in [system.real, *system.sims]:
        wanted = sorted(f"kubekvm-{name}.qcow2" for name in by_host.get(agent.host_name, []))
        found = _overlays(agent)
        if found != wanted:
            overlay_problems.append(f"{agent.host_name}: {_difference(set(found), set(wanted))}")
    outcome.check("every host: exactly one overlay per machine, no partial files", not overlay_problems,
                  "; ".join(overlay_problems))
    hosts = (await monitor.query("{ hosts { name ready orphans machines } }") or {}).get("hosts", [])
    ours = {a.host_name for a in [system.real, *system.sims]}
    reported = {h["name"]: h for h in hosts if h["name"] in ours}
    outcome.check("every host ready, reporting no orphan domains",
                  len(reported) == len(ours) and all(h["ready"] and not h["orphans"] for h in reported.values()),
                  "; ".join(f"{n}: ready={h['ready']} orphans={h['orphans']}" for n, h in reported.items()
                            if not h["ready"] or h["orphans"]) or f"{len(reported)} of {len(ours)} hosts reported")
    students_of = [m["student"] for m in machines if m["student"]]
    outcome.check("each student bound to exactly one machine",
                  sorted(students_of) == sorted(students_names) and set((truth or {}).get("roster", [])) ==
                  set(students_names), f"{len(set(students_of))} students on {len(students_of)} machines")

    # -- every subscriber and every student page saw the final state
    say(began, "waiting for subscribers and students' pages to show the final state")
    final = {m["name"]: "RUNNING" for m in machines}
    mine = {m["student"]: m["name"] for m in machines if m["student"]}

    def watcher_ok(w: LabWatcher) -> bool:
        return w.phase == "ACTIVE" and {n: m["observed"] for n, m in w.machines.items()} == final

    def student_ok(s: Student) -> bool:
        return s.machines == {mine.get(s.name, "?"): "running"}

    settle_deadline = time.monotonic() + (30 if plan is FULL else 15)
    while time.monotonic() < settle_deadline and not (all(watcher_ok(w) for w in watchers) and
                                                      all(student_ok(s) for s in signed_in)):
        await asyncio.sleep(0.25)
    outcome.check("every deploymentEvents subscriber saw the final state", all(watcher_ok(w) for w in watchers),
                  "; ".join(f"subscriber {w.label}: phase {w.phase}, {_running(w)}/{len(w.machines)} running"
                            for w in watchers if not watcher_ok(w)))
    outcome.check("every student's My VMs page shows their machine running", all(student_ok(s) for s in signed_in),
                  "; ".join(f"{s.name}: {s.machines}" for s in signed_in if not student_ok(s))[:600])
    stop.set()
    await asyncio.gather(*background, return_exceptions=True)
    for student in students:
        await student.close()
    for watcher in watchers:
        for when, what, message in watcher.errors_seen:
            host = next((m["host"] for m in machines if m["name"] == what), None)
            failures.items.append(Failure(f"subscriber {watcher.label} saw", host or f"lab:{lab}", when, when,
                                          f"{what}: {message}"))

    # -- delete: nothing may be left anywhere
    say(began, "deleting the lab")
    deleted_at = time.monotonic()
    async with client(60) as http:
        await post_graphql(http, system.urls[0], "mutation($n: String!) { deleteDeployment(name: $n) { name } }",
                           {"n": lab}, token=teacher)
    gone_at = None
    while time.monotonic() < deleted_at + (90 if plan is FULL else 30):
        data = await monitor.query("{ deployments(limit: 1000) { items { name } } }")
        if data is not None and lab not in {d["name"] for d in data["deployments"]["items"]}:
            gone_at = time.monotonic()
            break
        await asyncio.sleep(0.5)
    outcome.check("after delete: the lab is gone", gone_at is not None)
    leftovers = []
    for _ in range(40):  # the agents remove domains and files as the server drops the machines
        domains = (await asyncio.to_thread(_virsh_domains, f"kubekvm-{lab}-"))[0]
        leftovers = sorted(domains) + [f"{a.host_name}:{f}" for a in [system.real, *system.sims] for f in _overlays(a)]
        if not leftovers:
            break
        await asyncio.sleep(0.5)
    outcome.check("after delete: no domain and no overlay left on any host", not leftovers, ", ".join(leftovers[:10]))
    await monitor.close()

    # -- figures
    say(began, "done; reading the probe's samples")
    stack.stop_process(probe, timeout=15)
    samples = _probe_samples(probe_out)
    burst = [s["seconds"] for s in samples if burst_began <= s["sent"] <= burst_ended and not s["error"]]
    calm = [s["seconds"] for s in samples if s["sent"] < burst_began and not s["error"]]
    for sample in samples:
        if sample["error"]:
            failures.items.append(Failure("loop probe", sample["url"], sample["sent"],
                                          sample["sent"] + sample["seconds"], sample["error"]))
    windows = faults.windows
    inside = [(f, w) for f in failures.items if (w := excused(f, windows)) is not None]
    outside = sorted((f for f in failures.items if excused(f, windows) is None), key=lambda f: f.started)
    outcome.check("no failed request outside the kill windows", not outside,
                  "; ".join(f"{f.who} -> {f.target}: {f.what}" for f in outside[:8]))
    outcome.check("every kill happened", len(windows) == plan.agent_kills + 2,
                  f"{len(windows)} of {plan.agent_kills + 2}")
    burst_p99 = percentile(burst, 99) if burst else None
    # The loop never freezes: every answered probe outside the kill windows, the whole run long.
    steady_samples = [s for s in samples if not s["error"] and excused(
        Failure("loop probe", s["url"], s["sent"], s["sent"] + s["seconds"], ""), windows) is None]
    steady = [s["seconds"] for s in steady_samples]
    end = time.monotonic()
    phases = {"calm before the burst": (0.0, burst_began), "sign-in burst": (burst_began, burst_ended),
              "until the lab is made": (burst_ended, created_at),
              "lab created and its roster set": (created_at, roster_returned),
              "provisioning under faults": (roster_returned, converged_at),
              "afterwards (checks, delete)": (converged_at, end)}
    sign_ins = [s.sign_in_s for s in signed_in if s.sign_in_s is not None]

    def rel(stamp: float | None) -> float | None:
        return None if stamp is None else round(stamp - began, 3)

    return {
        "lab": lab,
        "checks": [asdict(c) for c in outcome.checks],
        "passed": all(c.ok for c in outcome.checks),
        "placement": {host: len(names) for host, names in sorted(by_host.items())},
        "figures": {
            "students": plan.students, "hosts_real": 1, "hosts_simulated": plan.simulated_hosts,
            "lab_replicas": plan.replicas, "hosts_ready_at_create": ready_at_create,
            "machines_on_real_host": len(real_expected),
            "sign_in_burst_s": round(burst_ended - burst_began, 3),
            "sign_in_p50_s": round(percentile(sign_ins, 50), 3) if sign_ins else None,
            "sign_in_max_s": round(max(sign_ins), 3) if sign_ins else None,
            "probe_calm_p99_s": round(percentile(calm, 99), 4) if calm else None,
            "probe_burst_samples": len(burst),
            "probe_burst_p50_s": round(percentile(burst, 50), 4) if burst else None,
            "probe_burst_p99_s": None if burst_p99 is None else round(burst_p99, 4),
            "probe_burst_max_s": round(max(burst), 4) if burst else None,
            "probe_outside_kill_windows_p99_s": round(percentile(steady, 99), 4) if steady else None,
            "lab_listers_answered": lister_result["answered"], "lab_listers_failed": lister_result["failed"],
            "lab_list_p99_s": round(percentile(lister_result["seconds"], 99), 3) if lister_result["seconds"] else None,
            "first_all_running_s": round(first_converged - created_returned, 3) if first_converged else None,
            "converged_after_faults_s": round(converged_at - created_returned, 3),
            "delete_gone_s": round(gone_at - deleted_at, 3) if gone_at else None,
            "kills_server": sum(w.what.startswith("server") for w in windows),
            "kills_database": sum(w.target == "*" for w in windows),
            "kills_agent": sum(w.what.startswith("real agent") for w in windows),
            "failures_total": len(failures.items), "failures_in_kill_windows": len(inside),
            "failures_outside_kill_windows": len(outside),
        },
        "targets": [
            {"name": "loop probe p99 during the sign-in burst (s)",
             "value": None if burst_p99 is None else round(burst_p99, 4), "limit": PROBE_P99_LIMIT_S,
             "better": "lower", "met": burst_p99 is not None and burst_p99 <= PROBE_P99_LIMIT_S},
            {"name": "failed requests outside the kill windows", "value": len(outside), "limit": 0,
             "better": "lower", "met": not outside},
        ],
        "timeline_s": {"lab_created": rel(created_at), "create_returned": rel(created_returned),
                       "followers_live": rel(faults_from),
                       "sign_in_burst": [rel(burst_began), rel(burst_ended)],
                       "first_all_running": rel(first_converged), "converged_after_faults": rel(converged_at),
                       "delete_requested": rel(deleted_at), "lab_gone": rel(gone_at)},
        "kill_windows": [{"what": w.what, "target": w.target, "killed_at_s": rel(w.killed_at),
                          "restarted_at_s": rel(w.restarted_at), "back_at_s": rel(w.back_at),
                          "window_ends_s": rel(w.ends) if w.ends != math.inf else None,
                          "mid_provision": first_converged is None or w.killed_at < first_converged}
                         for w in windows],
        "failure_kinds_outside_windows": _kinds((f, None) for f in outside),
        "failure_kinds_in_windows": _kinds(inside),
        "failures_in_windows": [{"who": f.who, "target": f.target, "at_s": rel(f.started), "what": f.what,
                                 "window": w.what} for f, w in inside],
        "failures_outside_windows": [{"who": f.who, "target": f.target, "at_s": rel(f.started),
                                      "ended_s": rel(f.ended), "what": f.what} for f in outside],
        "probe": {"samples": len(samples), "interval_s": 0.1, "query": "query Probe { me { kind name } }",
                  "burst_s": summary(burst), "calm_before_burst_s": summary(calm),
                  "outside_kill_windows_s": summary(steady),
                  "outside_kill_windows_by_phase_s": {
                      name: summary([s["seconds"] for s in steady_samples if start <= s["sent"] < stop])
                      for name, (start, stop) in phases.items()},
                  # Per second of the run: the slowest answer (s) and the failed probes.
                  "timeline": _timeline(samples, began),
                  "all_answered_s": summary([s["seconds"] for s in samples if not s["error"]]),
                  "errors": sum(1 for s in samples if s["error"])},
        "subscribers": [{"label": w.label, "all_labs": w.everything, "events": w.events,
                         "connections": w.connections} for w in watchers],
        "students": {"signed_in": len(signed_in), "sign_in_s": summary(sign_ins),
                     "live_snapshots": summary([float(s.snapshots) for s in signed_in])},
        "lab_listers": {k: v for k, v in lister_result.items() if k != "seconds"}
        | {"seconds": summary(lister_result["seconds"])},
    }


async def _settled_truth(monitor: Monitor, lab: str, replicas: int) -> dict[str, Any] | None:
    for _ in range(20):
        truth = await _converged(monitor, lab, replicas)
        if truth is not None:
            return truth
        await asyncio.sleep(0.5)
    data = await monitor.query(LAB_TRUTH, {"n": lab})
    return None if data is None else data["deployment"]


def _timeline(samples: list[dict[str, Any]], began: float) -> list[list[float]]:
    """[second of the run, slowest answer in it, probes failed in it], for every second probed."""
    seconds: dict[int, list[float]] = {}
    for sample in samples:
        second = seconds.setdefault(int(sample["sent"] - began), [0.0, 0.0])
        if sample["error"]:
            second[1] += 1
        else:
            second[0] = max(second[0], sample["seconds"])
    return [[second, round(slowest, 3), failed] for second, (slowest, failed) in sorted(seconds.items())]


def _running(watcher: LabWatcher) -> int:
    return sum(m["observed"] == "RUNNING" for m in watcher.machines.values())


def _difference(found: set[str], wanted: set[str]) -> str:
    extra, missing = sorted(found - wanted), sorted(wanted - found)
    return (f"{len(found)} found" + (f"; extra {extra[:5]}" if extra else "") +
            (f"; missing {missing[:5]}" if missing else ""))


def _kinds(failures: Iterable[tuple[Failure, Window | None]]) -> list[dict[str, Any]]:
    """Failures counted by who (without the numbers), what (its first words) and window."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for failure, window in failures:
        who = re.sub(r"\b(student\d+-cd|\d+)\b", "N", failure.who)
        # "RuntimeError: HTTP 503: ..." / "RuntimeError: UNAVAILABLE: ...": the status or code says it.
        parts = [part.strip() for part in failure.what.split(":")]
        what = " ".join(parts[:2]) if parts[0] == "RuntimeError" and len(parts) > 1 else parts[0]
        counts[(who, what, window.what if window else "")] += 1
    return [{"who": who, "what": what, "window": window, "count": count}
            for (who, what, window), count in counts.most_common()]


def _log_findings(system: System) -> dict[str, Any]:
    """Tracebacks and ERROR lines in every server and agent log of the run, with a sample, and
    the agents' lost server links (WARNING agent.client: server ...)."""
    found: dict[str, Any] = {}
    logs = [("server-a", system.servers[0].child.log), ("server-b", system.servers[1].child.log),
            ("agent-real", system.real.log), *((f"agent-{s.host_name}", s.log) for s in system.sims)]
    for name, path in logs:
        with contextlib.suppress(OSError):
            lines = path.read_text(errors="replace").splitlines()
            errors = [line for line in lines if re.search(r"\bERROR\b|Traceback", line)]
            links = [line for line in lines if "WARNING agent.client: server" in line]
            exceptions = Counter(line.split(":", 1)[0] for line in lines
                                 if re.match(r"^[a-z_.]+\.[A-Za-z]+(Error|Exception|Disconnect|Disconnected)\b", line))
            if errors or links:
                found[name] = {"log": str(path), "error_lines": len(errors), "first": errors[:5],
                               "exceptions": dict(exceptions.most_common(8)),
                               "server_link_lost": len(links), "server_link_lost_first": links[:5]}
    return found


# ---------------------------------------------------------------------------------------------
# The run


def run(plan: DayPlan, work: Path, *, seed: int | None = None) -> dict[str, Any]:
    """The whole class day in ``work`` (a run directory of ``stack``); returns the report."""
    seed = seed if seed is not None else secrets.randbits(32)
    rng = random.Random(seed)
    children = Children()
    atexit.register(children.stop_all)
    began = time.monotonic()
    system: System | None = None
    sampler: RssSampler | None = None
    outcome = Outcome()
    context = {"plan": asdict(plan), "seed": seed, "machine": machine_info.describe(),
               "load_average_at_start": report.load_average(), "busiest_processes_at_start": _busiest(),
               "other_benchmark_runs_at_start": stack.live_runs(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        say(began, f"starting the database, 2 server replicas, 1 real and {plan.simulated_hosts} simulated agents")
        system = build(plan, work, children)
        # The harness's own process runs every client but the probe: its CPU is load too.
        sampler = RssSampler(lambda: {**system.pids(), "harness-clients": [os.getpid()]})
        context["setup_s"] = round(time.monotonic() - began, 1)
        context["real_host"] = {"name": system.real.host_name, "vcpus": system.real_vcpus,
                                "cpu_overcommit": system.overcommit}
        budget = plan.budget_s - (time.monotonic() - began) - 20  # 20 s kept for clean-up
        result = asyncio.run(asyncio.wait_for(day(system, rng, outcome, began=began), timeout=budget))
        context["load_average_at_end"] = report.load_average()
        result["rss"] = sampler.stop()
        say(began, "stopping everything")
        result["log_findings"] = _log_findings(system)
        result["logs"] = str(LOG_DIR / f"classday-{work.name}")
    except BaseException as error:
        context["load_average_at_end"] = report.load_average()
        problem = f"{type(error).__name__}: {error}"
        if isinstance(error, TimeoutError):
            problem = f"the run exceeded its budget of {plan.budget_s:g} s"
        result = {"error": f"{problem} (during: {PHASE['now']})", "passed": False,
                  "checks": [asdict(c) for c in outcome.checks],
                  "rss": sampler.stop() if sampler else {},
                  "log_findings": _log_findings(system) if system else {}}
        if not isinstance(error, Exception):
            raise
    finally:
        children.stop_all()
    context["seconds"] = round(time.monotonic() - began, 1)
    return {"benchmark": "class day", "how": __doc__.split("\n\n", 1)[1] if __doc__ else "", **context, **result}


def _busiest(count: int = 8) -> list[str]:
    """What else keeps this machine busy: the processes using the most CPU (ps's %CPU is over
    each one's lifetime, so a long-lived idle process does not show)."""
    listed = subprocess.run(["ps", "-eo", "pcpu,etimes,args", "--sort=-pcpu", "--no-headers"],
                            capture_output=True, text=True, check=False).stdout
    return [" ".join(line.split())[:140] for line in listed.splitlines()[:count]]


def text_summary(result: dict[str, Any]) -> str:
    lines = [f"Class day ({result['plan']['name']} plan), {result['started']}, {result['seconds']} s; "
             f"load average {result['load_average_at_start']} -> {result.get('load_average_at_end')}; "
             f"seed {result['seed']}"]
    if "error" in result:
        lines.append(f"ERROR: {result['error']}")
    for check in result.get("checks", []):
        lines.append(f"  [{'ok' if check['ok'] else 'FAIL'}] {check['name']}"
                     + (f" ({check['detail']})" if check["detail"] else ""))
    for target in result.get("targets", []):
        sign = "<=" if target["better"] == "lower" else ">="
        lines.append(f"  target {target['name']}: {target['value']} {sign} {target['limit']} "
                     f"{'met' if target['met'] else 'MISSED'}")
    by_phase = result.get("probe", {}).get("outside_kill_windows_by_phase_s", {})
    if by_phase:
        lines.append("loop probe outside the kill windows, by phase (p50 / p99 / max, s):")
        lines += [f"  {name}: {v.get('p50')} / {v.get('p99')} / {v.get('max')} ({v['count']} samples)"
                  for name, v in by_phase.items()]
    if result.get("figures"):
        lines.append("figures:")
        lines += [f"  {name}: {value}" for name, value in result["figures"].items()]
    if result.get("placement"):
        lines.append(f"placement: {result['placement']}")
    for window in result.get("kill_windows", []):
        lines.append(f"  window {window['what']} ({window['target']}): killed {window['killed_at_s']}, restarted "
                     f"{window['restarted_at_s']}, back {window['back_at_s']} s"
                     f"{' (mid-provision)' if window['mid_provision'] else ''}")
    for kind in result.get("failure_kinds_outside_windows", []):
        lines.append(f"  OUTSIDE the windows: {kind['count']} x {kind['who']}: {kind['what']}")
    for failure in result.get("failures_outside_windows", [])[:5]:
        lines.append(f"    e.g. at {failure['at_s']} s: {failure['who']} -> {failure['target']}: {failure['what']}")
    for kind in result.get("failure_kinds_in_windows", []):
        lines.append(f"  in window {kind['window']}: {kind['count']} x {kind['who']}: {kind['what']}")
    if result.get("rss"):
        lines.append("resident memory (MiB, peak per process / last total) and CPU time used (s):")
        lines += [f"  {role}: {v['peak_mib_per_process']} / {v['last_total_mib']}; {v.get('cpu_seconds')} s CPU"
                  for role, v in result["rss"].items()]
    findings = result.get("log_findings", {})
    simulated = [f for name, f in findings.items() if name.startswith("agent-") and name != "agent-real"]
    if simulated:
        lines.append(f"  logs of {len(simulated)} simulated agents: "
                     f"{sum(f['error_lines'] for f in simulated)} ERROR/Traceback line(s); "
                     f"{sum(f['server_link_lost'] for f in simulated)} lost server link(s)")
    for name, finding in findings.items():
        if finding in simulated:
            continue
        lines.append(f"  log {name}: {finding['error_lines']} ERROR/Traceback line(s) {finding['exceptions']}; "
                     f"{finding['server_link_lost']} lost server link(s) ({finding['log']})")
    return "\n".join(lines)


@contextlib.contextmanager
def _run_dir() -> Iterator[Path]:
    stack.libvirtd_up()
    stack.sweep()
    work = stack.new_run_dir()
    try:
        yield work
    finally:
        stack.sweep(run=work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.classday", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small CI variant")
    parser.add_argument("--out", type=Path, default=None, help="where classday.json and classday.txt go")
    parser.add_argument("--seed", type=int, default=None, help="the kill moments' random seed")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    stack.exit_cleanly_on_signals()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with _run_dir() as work:
        result = run(plan, work, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classday.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = text_summary(result)
    (out / "classday.txt").write_text(text + "\n")
    print(text)
    print(f"\nwritten: {out / 'classday.json'}, {out / 'classday.txt'}")
    judged = [t["met"] for t in result.get("targets", [])] if plan is FULL else []
    return 0 if result.get("passed") and all(judged) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
