"""P4 — agent scale: one agent converging 2,000 machines on libvirt's test driver, and what
200 agents' heartbeats cost the server (``heartbeats``).

``agent_scale_child`` runs the agent's reconciler in a process of its own with 2,000
synthetic assignments (1 vCPU, 64 MiB, a 1 GiB disk, as the server would send them) on
``test:///default``, libvirt's in-memory driver: every step is real (a ``qemu-img`` linked
clone per machine, define, start, metadata, reports into the outbox), only the guests are
not. Time = the snapshot handed over -> every machine reported ``running``; memory = the
child's peak resident set (``VmHWM``, from its own ``/proc/self/status``).
The agent's defaults are used (``--parallel``, ``--libvirt-connections``).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.support.processes import ROOT, VENV_BIN

from agent.config import PARALLEL
from agent.hypervisor import CONNECTIONS
from benchmarks import heartbeats
from benchmarks.plan import Plan


def run(plan: Plan, work: Path) -> dict[str, Any]:
    site = work / "p4"
    images = site / "images"
    images.mkdir(parents=True, exist_ok=True)
    # 1 GiB virtual, nothing allocated: the overlay needs no resize, as for a template of 1 GiB.
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "bench-tiny.qcow2"), "1G"], check=True)
    spec = {"uri": "test:///default", "image_dir": str(images), "state_dir": str(site / "state"),
            "machines": plan.p4_machines, "parallel": PARALLEL, "connections": CONNECTIONS, "disk_gib": 1,
            "timeout": 600,
            "lab": f"bench-p4-{secrets.token_hex(2)}"}
    spec_file = site / "spec.json"
    spec_file.write_text(json.dumps(spec))
    try:
        completed = subprocess.run([str(VENV_BIN / "python"), "-m", "benchmarks.agent_scale_child", str(spec_file)],
                                   cwd=ROOT, capture_output=True, text=True, timeout=660, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"agent_scale_child failed: {completed.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(site, ignore_errors=True)
    if result["domains_running"] != plan.p4_machines or result["overlays"] != plan.p4_machines:
        raise RuntimeError(f"the reconciler did not converge: {result}")
    peak_mib = round(result["peak_rss_kib"] / 1024, 1)
    beats = heartbeats.run(plan, work)
    share = beats["server_cpu_share_of_one_core"]
    return {
        "benchmark": "P4 agent scale",
        "how": f"Reconciler (agent code, --parallel {PARALLEL}, --libvirt-connections {CONNECTIONS}) in its own "
               f"process on test:///default, {plan.p4_machines} synthetic assignments as one snapshot; time to "
               "every machine reported running; peak RSS = the process's VmHWM. Heartbeats: "
               f"{plan.p4_heartbeat_agents} agents (own websocket, host token and documents each, their "
               "hostAssignments and consoleRequests subscriptions open, one process) "
               f"beating every {plan.p4_heartbeat_interval_s:g} s against a server holding "
               f"{plan.p4_heartbeat_fleet} machines; the server process's CPU time over "
               f"{plan.p4_heartbeat_rounds} rounds after a warm-up one, as a share of one core, less its share "
               "with the agents connected and silent for one interval (both in `heartbeats`).",
        **result,
        "heartbeats": beats,
        "figures": {"machines": plan.p4_machines, "converge_s": result["converged_s"], "peak_rss_mib": peak_mib,
                    "heartbeat_agents": plan.p4_heartbeat_agents, "heartbeat_server_cpu_share": share,
                    "heartbeat_server_cpu_share_total": beats["server_cpu_share_total"],
                    "heartbeat_p50_s": beats["round_trip_s"]["p50"], "heartbeat_failures": beats["failures"]},
        "targets": [
            {"name": f"converge {plan.p4_machines} machines", "value": result["converged_s"], "limit": 20.0,
             "better": "lower", "met": result["converged_s"] <= 20.0},
            {"name": "agent peak RSS (MiB)", "value": peak_mib, "limit": 150.0, "better": "lower",
             "met": peak_mib <= 150.0},
            {"name": f"server CPU for {plan.p4_heartbeat_agents} agents' heartbeats every "
                     f"{plan.p4_heartbeat_interval_s:g} s (share of one core)", "value": share,
             "limit": heartbeats.CPU_SHARE_LIMIT, "better": "lower",
             "met": share <= heartbeats.CPU_SHARE_LIMIT and beats["failures"] == 0},
        ],
    }
