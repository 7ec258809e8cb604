"""P4's server side: what a fleet of agents' heartbeats costs the server (part of ``agent_scale``).

A ``kubekvm serve`` process on its own SecantusDB holds a fleet of machines spread over the
hosts (so a heartbeat whose cost grew with the fleet would show); ``heartbeat_agents``, a
process of its own, registers the hosts, each with its own host token, and beats for each of
them every ``interval`` as the agent does (its websocket, its documents, its assignment and
console-request subscriptions held open). The figure is the
server process's CPU time (user + system, ``/proc/PID/stat``) over the measured rounds, as a
share of one core, less what it spends in as long with the same agents connected and not
beating (its own periodic work: leases, the change feed, keep-alives; reported beside it),
with each heartbeat's round trip.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.processes import ROOT, VENV_BIN, Server

from benchmarks.plan import Plan
from benchmarks.stack import database, kubekvm_server, stop_process
from benchmarks.stats import summary
from kubekvm.database import connect
from kubekvm.models import Machine, MachineSpec, ObservedState, OSFamily

CPU_SHARE_LIMIT = 0.05


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _fleet(server: Server, hosts: list[str], machines: int) -> None:
    connection = await connect(server.database_uri, database=server.database_name)
    try:
        spec = MachineSpec(template="bench-tiny", image="bench-tiny.qcow2", os=OSFamily.LINUX, vcpus=1,
                           memory_mib=128, disk_gib=1)
        fleet = [Machine(deployment=f"bench-hb-lab-{i // 25:04d}", index=i % 25 + 1,
                         name=f"bench-hb-lab-{i // 25:04d}-{i % 25 + 1}", spec=spec, host=hosts[i % len(hosts)],
                         observed=ObservedState.RUNNING) for i in range(machines)]
        for start in range(0, len(fleet), 500):  # each insert within the database's call timeout
            await Machine.insert_many(fleet[start:start + 500])
    finally:
        await connection.close()


def run(plan: Plan, work: Path) -> dict[str, Any]:
    agents, interval, rounds = plan.p4_heartbeat_agents, plan.p4_heartbeat_interval_s, plan.p4_heartbeat_rounds
    hosts = [f"bench-hb-{i:03d}" for i in range(agents)]
    # The janitor's turn (every lab's phase recounted from its machines) would land in the window
    # now and then; it is not what a heartbeat costs.
    with database() as db, kubekvm_server(db, env={"KUBEKVM_JANITOR_INTERVAL": "0"}) as server:
        asyncio.run(_fleet(server, hosts, plan.p4_heartbeat_fleet))
        tokens_file = work / "host-tokens.json"
        tokens_file.write_text(json.dumps({host: server.host_token(host) for host in hosts}))
        pid = server.child.process.pid
        child = subprocess.Popen(
            [str(VENV_BIN / "python"), "-m", "benchmarks.heartbeat_agents", "--url", server.ws_url,
             "--tokens-file", str(tokens_file), "--interval", str(interval), "--rounds", str(rounds)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=(work / "heartbeat-agents.log").open("wb"), text=True)
        try:
            assert child.stdout is not None
            marks: dict[str, tuple[float, float]] = {}
            result: dict[str, Any] = {}
            for line in child.stdout:
                if line.startswith(("IDLE", "MEASURE")):
                    marks[line.strip()] = (time.monotonic(), cpu_seconds(pid))
                elif line.startswith("{"):
                    result = json.loads(line)
            if child.wait(timeout=60) != 0 or not result or len(marks) != 4:
                raise RuntimeError(f"heartbeat_agents failed; see {work / 'heartbeat-agents.log'}")
        finally:
            stop_process(child)  # type: ignore[arg-type]
    (began, cpu_began), (ended, cpu_ended) = marks["MEASURE START"], marks["MEASURE END"]
    (idle_began, idle_cpu_began), (idle_ended, idle_cpu_ended) = marks["IDLE START"], marks["IDLE END"]
    total = (cpu_ended - cpu_began) / (ended - began)
    idle = (idle_cpu_ended - idle_cpu_began) / (idle_ended - idle_began)
    return {
        "agents": agents, "interval_s": interval, "rounds_measured": rounds, "fleet_machines": plan.p4_heartbeat_fleet,
        "window_s": round(ended - began, 2), "server_cpu_s": round(cpu_ended - cpu_began, 3),
        "server_cpu_share_total": round(total, 4), "server_cpu_share_idle": round(idle, 4),
        "server_cpu_share_of_one_core": round(max(total - idle, 0.0), 4), "heartbeats": result["heartbeats"],
        "failures": len(result["failures"]), "failure_examples": result["failures"][:5],
        "round_trip_s": summary(result["times"]),
    }
