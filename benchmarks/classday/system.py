"""The class day's system: the database on disk, two server replicas, the real host's agent and
the simulated hosts' agents, built and waited for (`build`)."""

from __future__ import annotations

import math
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import LOG_DIR, Server, start_server

from benchmarks import stack
from benchmarks.classday.plan import FALLBACK_VCPUS, TEMPLATE, DayPlan
from benchmarks.classday.processes import Children
from benchmarks.guest_images import make_image


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
