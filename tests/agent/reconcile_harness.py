"""Runs a reconciler in its own process over a fixed desired set, for the crash tests.

Usage: python reconcile_harness.py SPEC.json, where SPEC holds the libvirt URI, the image
and state directories and the assignments (GraphQL shape). It prints each report as a JSON
line and ``CONVERGED`` once every machine's domain runs with its overlay, then exits. The
test SIGKILLs it at random moments before letting one run converge.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from agent.accelerator import Accelerator
from agent.assignment import Assignment
from agent.hypervisor import Hypervisor
from agent.images import Images
from agent.machine_state import StateReport
from agent.reconciler import Reconciler


async def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    assignments = [Assignment.from_graphql(payload) for payload in spec["assignments"]]

    async def report(sent: StateReport) -> None:
        print(json.dumps({"machine": sent.machine_id, "state": sent.state, "message": sent.message,
                          "power_generation": sent.power_generation}), flush=True)

    async def report_orphans(names: list[str]) -> None:
        print(json.dumps({"orphans": names}), flush=True)

    hypervisor = Hypervisor(spec["uri"])
    reconciler = Reconciler(
        hypervisor=hypervisor,
        images=Images(Path(spec["image_dir"])),
        state_dir=Path(spec["state_dir"]),
        accelerator=Accelerator(spec.get("domain_type", "qemu"), True, "harness"),
        report=report,
        report_orphans=report_orphans,
        parallel=spec.get("parallel", 8),
        resync_interval=1.0,
    )
    await reconciler.start()
    reconciler.replace_desired(assignments)
    while True:
        await reconciler.wait_idle()
        statuses = [await hypervisor.status(a.domain_name) for a in assignments]
        if all(
            status is not None and status.state == "running"
            and reconciler.disks.exists(status.name)
            for status in statuses
        ):
            break
        await asyncio.sleep(0.1)  # the poll interval; the test's subprocess timeout is the deadline
    print("CONVERGED", flush=True)
    await reconciler.close()
    await hypervisor.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
