"""P4's measured process: one agent reconciler converging N machines on ``test:///default``.

Run by ``agent_scale`` as ``python -m benchmarks.agent_scale_child SPEC.json``. It builds what
``agent.host.run_host`` builds for a host (hypervisor, images, reconciler reporting into an
``Outbox``, the client module loaded) minus the websocket, hands the reconciler N synthetic
assignments as one snapshot, the way the server's first ``hostAssignments`` batch arrives, and
waits until every machine has been reported ``running`` and no pass is left. libvirt's test
driver runs inside this process, so its domains count in this process's memory too. It
prints one JSON line: the time to converge and its memory (``VmHWM``, the peak resident set,
from ``/proc/self/status``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import agent.client  # noqa: F401  (loaded as in the real agent, for an honest footprint)
from agent.accelerator import Accelerator
from agent.assignment import Assignment, TemplateSpec
from agent.hypervisor import Hypervisor
from agent.images import Images
from agent.machine_state import StateReport
from agent.outbox import Outbox
from agent.reconciler import Reconciler


def memory_kib() -> dict[str, int]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    return values


async def converge(spec: dict[str, Any]) -> dict[str, Any]:
    count = spec["machines"]
    template = TemplateSpec(name="bench-tiny", image="bench-tiny.qcow2", os="linux", vcpus=1, memory_mib=64,
                            disk_gib=spec["disk_gib"])
    lab = spec["lab"]
    assignments = [Assignment(machine_id=f"m{i:05d}", vm_name=f"{lab}-{i}", deployment=lab, index=i,
                              desired="running", reset_generation=0, power_generation=1, template=template)
                   for i in range(1, count + 1)]
    outbox = Outbox()
    running: set[str] = set()
    all_running = asyncio.Event()

    async def report(sent: StateReport) -> None:
        await outbox.machine_state(sent)
        if sent.state == "running":
            running.add(sent.machine_id)
            if len(running) == count:
                all_running.set()
        else:
            running.discard(sent.machine_id)

    hypervisor = Hypervisor(spec["uri"], connections=spec["connections"])
    reconciler = Reconciler(
        hypervisor=hypervisor, images=Images(Path(spec["image_dir"])), state_dir=Path(spec["state_dir"]),
        accelerator=Accelerator("qemu", True, "benchmark"), report=report, report_orphans=outbox.orphans,
        parallel=spec["parallel"],
    )
    await reconciler.start()
    before = memory_kib()
    began = time.monotonic()
    reconciler.replace_desired(assignments)
    await asyncio.wait_for(all_running.wait(), spec["timeout"])
    converged = time.monotonic()
    await reconciler.wait_idle()
    idle = time.monotonic()
    domains = await hypervisor.list_domains()
    after = memory_kib()
    await reconciler.close()
    await hypervisor.close()
    return {
        "machines": count,
        "converged_s": round(converged - began, 3),
        "idle_s": round(idle - began, 3),
        # The test driver starts with a domain of its own ("test"): count ours only.
        "domains_running": sum(1 for name, d in domains.items()
                               if name.startswith(f"kubekvm-{lab}-") and d.state == "running"),
        "overlays": len(list(Path(spec["state_dir"], "disks").glob("*.qcow2"))),
        "reports_queued": len(outbox),  # never drained here: there is no server
        "rss_before_kib": before["VmRSS"],
        "peak_rss_kib": after["VmHWM"],
        "rss_after_kib": after["VmRSS"],
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(asyncio.run(converge(spec))), flush=True)


if __name__ == "__main__":
    main()
