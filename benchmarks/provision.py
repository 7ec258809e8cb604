"""P1 — provision a class: N lab VMs of one template, ours against the raw limit and the seed.

*Ours* is the whole platform: ``createDeployment`` over GraphQL to a ``kubekvm serve`` process,
placement on the one host, the real ``kubekvm-agent`` on libvirtd (linked-clone overlay,
define, start) and its ``reportMachineState`` back. The clock runs from the mutation's
response to the moment a ``deploymentEvents`` subscriber has seen every machine ``RUNNING``
(``live``). The per-phase breakdown is derived from what each part records itself, on one
clock (``time.monotonic``; wall-clock stamps are converted):

- placement: the mutation's round trip (the server places machines before it answers) and
  when the subscriber saw each machine get its host;
- clone: inotify on the agent's overlay directory (``dir_watch``): ``qemu-img`` creating the
  temporary file, then the agent renaming the finished overlay into place;
- define / start: libvirt's DEFINED and STARTED lifecycle events (``libvirt_watch``);
- report: the server's ``observedAt`` of the RUNNING report, then the subscriber's receipt.
The agent itself logs no per-machine timings, so none are taken from its log.

Each N runs the raw limit and ours alternately (``repeats`` times, order flipped every time,
the CPUs let settle in between) and, up to ``p1_seed_max`` machines, the seed's method once
(its full copies would fill the disk at 100); medians are compared. The server places up to
``CPU_OVERCOMMIT`` vCPUs per host CPU, so the largest lab fits on this one host.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from tests.support.processes import LOG_DIR, Server

from benchmarks.baselines import SEED_POLL_SECONDS, raw_limit, seed_method
from benchmarks.dir_watch import DirectoryWatch
from benchmarks.guest_images import GuestImage, make_image
from benchmarks.libvirt_watch import LifecycleWatch
from benchmarks.live import Stamped, lab_events
from benchmarks.plan import Plan
from benchmarks.stack import (
    LIBVIRT_URI,
    Agent,
    add_template,
    database,
    kubekvm_agent,
    kubekvm_server,
    libvirtd_up,
    unique,
    wait_for_quiet_cpu,
)
from benchmarks.stats import median, summary

# The largest lab (100 one-vCPU guests) must fit on this host's CPUs as placement counts them.
CPU_OVERCOMMIT = 128
CREATE = """
mutation($n: String!, $t: String!, $r: Int!) {
  createDeployment(input: {name: $n, template: $t, replicas: $r}) { name phase }
}
"""


def _wall_to_monotonic(wall: float) -> float:
    return wall - (time.time() - time.monotonic())


def _first_per_machine(results: list[Stamped], lab: str, test: Any) -> dict[str, float]:
    seen: dict[str, float] = {}
    for stamp, event in results:
        machine = event.get("machine")
        if event["lab"] == lab and machine and machine["name"] not in seen and test(machine):
            seen[machine["name"]] = stamp
    return seen


async def _wait_gone(server: Server, lab: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = await asyncio.to_thread(server.graphql, "query($n: String!) { deployment(name: $n) { phase } }",
                                       {"n": lab})
        if body.get("errors"):
            return
        await asyncio.sleep(0.25)
    raise TimeoutError(f"lab {lab} was not removed within {timeout} s")


async def ours_once(server: Server, agent: Agent, image: GuestImage, *, count: int,
                    watch: LifecycleWatch, files: DirectoryWatch) -> dict[str, Any]:
    lab = unique(f"bench-p1-n{count}")
    names = [f"{lab}-{i}" for i in range(1, count + 1)]
    try:
        async with lab_events(server.ws_url, server.admin_token) as events, \
                httpx.AsyncClient(headers=server.admin_headers, timeout=60) as client:
            sent = time.monotonic()
            response = await client.post(server.graphql_url, json={
                "query": CREATE, "variables": {"n": lab, "t": image.stem, "r": count}})
            returned = time.monotonic()
            body = response.json()
            if body.get("errors"):
                raise RuntimeError(f"createDeployment failed: {body['errors']}")

            def all_running(results: list[Stamped]) -> float | None:
                running = _first_per_machine(results, lab, lambda m: m["observed"] == "RUNNING")
                return max(running.values()) if len(running) == count else None

            def active(results: list[Stamped]) -> float | None:
                return next((stamp for stamp, e in results if e["lab"] == lab and e.get("deployment")
                             and e["deployment"]["phase"] == "ACTIVE"), None)

            done = await events.wait_for(all_running, timeout=60 + 4 * count, what=f"{count} machines running")
            active_at = await events.wait_for(active, timeout=10, what="lab Active")
            results = list(events.results)
        return _breakdown(results, watch, files, lab=lab, names=names, sent=sent, returned=returned,
                          done=done, active_at=active_at)
    finally:
        await asyncio.to_thread(server.graphql, "mutation($n: String!) { deleteDeployment(name: $n) { name } }",
                                {"n": lab})
        await _wait_gone(server, lab, timeout=120)


def _breakdown(results: list[Stamped], watch: LifecycleWatch, files: DirectoryWatch, *, lab: str, names: list[str],
               sent: float, returned: float, done: float, active_at: float) -> dict[str, Any]:
    placed = _first_per_machine(results, lab, lambda m: m["host"] is not None)
    seen = _first_per_machine(results, lab, lambda m: m["observed"] == "RUNNING")
    observed: dict[str, float] = {}
    for _, event in results:
        machine = event.get("machine")
        if event["lab"] == lab and machine and machine["observed"] == "RUNNING" and machine["name"] not in observed:
            observed[machine["name"]] = _wall_to_monotonic(datetime.fromisoformat(machine["observedAt"]).timestamp())
    cloning: dict[str, float] = {}
    overlay: dict[str, float] = {}
    defined: dict[str, float] = {}
    started: dict[str, float] = {}
    missing = float("nan")
    for name in names:
        domain = f"kubekvm-{name}"
        cloning[name] = files.created_with_prefix(f".{domain}.qcow2.partial-") or missing
        overlay[name] = files.moved_in.get(f"{domain}.qcow2", missing)
        defined[name] = watch.first(domain, "defined", after=sent - 1) or missing
        started[name] = watch.first(domain, "started", after=sent - 1) or missing

    def since_return(stamps: dict[str, float]) -> float:
        return round(max(stamps.values()) - returned, 3)

    return {
        "total_s": round(done - returned, 3),
        "total_from_request_s": round(done - sent, 3),
        "mutation_round_trip_s": round(returned - sent, 3),
        "lab_active_seen_s": round(active_at - returned, 3),
        "milestones_after_return_s": {
            "last_placed_seen": since_return(placed),
            "last_overlay": since_return(overlay),
            "last_defined": since_return(defined),
            "last_started": since_return(started),
            "last_reported_to_server": since_return(observed),
            "last_seen_by_subscriber": since_return(seen),
        },
        "per_machine_s": {
            "queued_after_return": summary([cloning[n] - returned for n in names]),
            "clone": summary([overlay[n] - cloning[n] for n in names]),
            "define": summary([defined[n] - overlay[n] for n in names]),
            "start": summary([started[n] - defined[n] for n in names]),
            "report_agent_to_server": summary([observed[n] - started[n] for n in names]),
            "report_server_to_subscriber": summary([seen[n] - observed[n] for n in names]),
        },
    }


def run(plan: Plan, work: Path) -> dict[str, Any]:
    libvirtd_up()
    image = make_image(work / "images", "bench-base", size_mib=plan.p1_base_mib)
    watch = LifecycleWatch(LIBVIRT_URI)
    sizes: dict[str, Any] = {}
    try:
        with database() as db, kubekvm_server(db, env={"KUBEKVM_CPU_OVERCOMMIT": str(CPU_OVERCOMMIT)}) as server:
            add_template(server, name=image.stem, image=image.image)
            with kubekvm_agent(server, image_dir=image.directory, state_dir=work / "agent-state",
                               log=LOG_DIR / f"bench-agent-p1-{work.parent.name}.log") as agent:
                files = DirectoryWatch(agent.state_dir / "disks")
                try:
                    for count in plan.p1_counts:
                        sizes[str(count)] = _one_size(plan, work, image, server, agent, (watch, files), count)
                finally:
                    files.close()
    finally:
        watch.close()
        image.base.unlink(missing_ok=True)
    seeded = sizes[str(max(n for n in plan.p1_counts if n <= plan.p1_seed_max))]
    judged = [n for n in plan.p1_counts if n >= 30] or [max(plan.p1_counts)]
    return {
        "benchmark": "P1 provision a class",
        "how": "N VMs of a tiny-linux template with a base disk of real data, on this host's libvirtd "
               "(QEMU TCG). Ours: createDeployment response -> a deploymentEvents subscriber has seen "
               "every machine RUNNING. Raw limit: qemu-img linked clone + defineXML + create() per VM "
               "from its own thread and libvirt connection, to the last create() returning (domains "
               "checked RUNNING). Seed: virt-clone full copy + virsh start, one VM after the other, up to "
               f"N={plan.p1_seed_max}; its {SEED_POLL_SECONDS:g} s status poll is reported separately. "
               "Medians of the repeats.",
        "base_image": {"virtual_mib": image.size_mib, "filled_with": "0xab (qemu-io write)",
                       "seconds_to_make": image.seconds_to_write},
        "sizes": sizes,
        "figures": {
            "n": max(plan.p1_counts),
            "ours_s": sizes[str(max(plan.p1_counts))]["ours_median_s"],
            "raw_limit_s": sizes[str(max(plan.p1_counts))]["raw_median_s"],
            "seed_n": seeded["n"],
            "seed_s": seeded["seed_s"],
            "ours_from_request_s": sizes[str(max(plan.p1_counts))]["ours_from_request_median_s"],
            "ours_from_request_over_raw": sizes[str(max(plan.p1_counts))]["ours_from_request_over_raw"],
            "seed_over_ours": seeded["seed_over_ours"],
            "seed_plus_mean_poll_over_ours": seeded["seed_plus_mean_poll_over_ours"],
            "report_agent_to_server_p50_s": sizes[str(judged[0])]["report_agent_to_server_p50_s"],
            **{f"ours_over_raw_n{n}": sizes[str(n)]["ours_over_raw"] for n in plan.p1_counts},
        },
        "targets": [
            *({"name": f"ours / raw limit at N={n}", "value": sizes[str(n)]["ours_over_raw"], "limit": 1.3,
               "better": "lower", "met": sizes[str(n)]["ours_over_raw"] <= 1.3} for n in judged),
            {"name": f"per-machine agent -> server report p50 at N={judged[0]} (s)",
             "value": sizes[str(judged[0])]["report_agent_to_server_p50_s"], "limit": 0.05, "better": "lower",
             "met": sizes[str(judged[0])]["report_agent_to_server_p50_s"] <= 0.05},
            {"name": f"seed / ours at N={seeded['n']}", "value": seeded["seed_over_ours"],
             "limit": 50.0, "better": "higher", "met": seeded["seed_over_ours"] >= 50.0},
        ],
    }


def _one_size(plan: Plan, work: Path, image: GuestImage, server: Server, agent: Agent,
              watches: tuple[LifecycleWatch, DirectoryWatch], count: int) -> dict[str, Any]:
    ours_runs: list[dict[str, Any]] = []
    raw_runs: list[dict[str, Any]] = []
    for repeat in range(plan.p1_repeats):
        order = ("raw", "ours") if repeat % 2 == 0 else ("ours", "raw")
        for which in order:
            idle = wait_for_quiet_cpu(timeout=plan.p1_settle_s)
            if which == "raw":
                raw_runs.append({**raw_limit(image, work, count, tag=f"n{count}r{repeat}"), "cpu_idle_before": idle})
            else:
                ours_runs.append({**asyncio.run(ours_once(server, agent, image, count=count, watch=watches[0],
                                                          files=watches[1])), "cpu_idle_before": idle})
    ours = median([r["total_s"] for r in ours_runs])
    ours_from_request = median([r["total_from_request_s"] for r in ours_runs])
    raw = median([r["total_s"] for r in raw_runs])
    seeded: dict[str, Any] = {}
    if count <= plan.p1_seed_max:
        idle = wait_for_quiet_cpu(timeout=plan.p1_settle_s)
        seed = {**seed_method(image, work, count, tag=f"n{count}"), "cpu_idle_before": idle}
        seeded = {
            "seed_s": seed["total_s"],
            "seed_poll_s": SEED_POLL_SECONDS,
            "seed_over_ours": round(seed["total_s"] / ours, 1),
            "seed_plus_mean_poll_over_ours": round((seed["total_s"] + SEED_POLL_SECONDS / 2) / ours, 1),
            "seed": seed,
        }
    return {
        "n": count,
        "ours_median_s": round(ours, 3),
        "ours_from_request_median_s": round(ours_from_request, 3),
        "raw_median_s": round(raw, 3),
        "ours_over_raw": round(ours / raw, 2),
        "ours_from_request_over_raw": round(ours_from_request / raw, 2),
        "ours_over_raw_pairs": [round(o["total_s"] / r["total_s"], 2)
                                for o, r in zip(ours_runs, raw_runs, strict=True)],
        # Per machine: the server's observedAt of its RUNNING report after libvirt's STARTED
        # event (median of the runs' medians).
        "report_agent_to_server_p50_s": round(median(
            [r["per_machine_s"]["report_agent_to_server"]["p50"] for r in ours_runs]), 4),
        **seeded,
        "ours_runs": ours_runs,
        "raw_runs": raw_runs,
    }
