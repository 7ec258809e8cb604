"""P2 — status latency: a guest powers itself off -> a GraphQL subscriber sees ``SHUTOFF``.

A lab of tiny-linux guests whose image carries ``kubekvm.poweroff_after=K`` on its kernel
command line (``<stem>.cmdline``), so every guest powers itself off K seconds after it boots.
The lab is created stopped; each round starts its machines one by one (``startMachine``,
``stagger`` seconds apart, so the power-offs are separate events), and for each guest:

- the QEMU process's exit is caught with a pidfd (``os.pidfd_open`` on the pid libvirt
  writes to ``/run/libvirt/qemu/<domain>.pid``; readable the moment the process is gone);
- libvirt's STOPPED event is stamped too (``libvirt_watch``), as a second reference;
- the end is the arrival, at a ``deploymentEvents(name: lab)`` subscriber, of that machine's
  first ``observed: SHUTOFF`` after it ran; its ``observedAt`` (the server's stamp of the
  agent's report) splits the way into agent and server-to-subscriber parts.
Latency = arrival - exit, on one monotonic clock, over ``guests x rounds`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from tests.support.processes import LOG_DIR, Server

from benchmarks.guest_images import make_image
from benchmarks.libvirt_watch import LifecycleWatch
from benchmarks.live import EventLog, Stamped, lab_events
from benchmarks.plan import Plan
from benchmarks.stack import (
    LIBVIRT_URI,
    add_template,
    database,
    kubekvm_agent,
    kubekvm_server,
    libvirtd_up,
    unique,
)
from benchmarks.stats import summary

STAGGER_SECONDS = 0.6
PID_DIR = Path("/run/libvirt/qemu")


async def _qemu_pid(domain: str, *, timeout: float) -> int:
    """The pid of the domain's running QEMU (checked against its command line)."""
    deadline = time.monotonic() + timeout
    pid_file = PID_DIR / f"{domain}.pid"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            if f"guest={domain}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no QEMU process for {domain} within {timeout} s")


async def _exit_time(pid: int, *, timeout: float) -> float:
    descriptor = os.pidfd_open(pid)
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[float] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(time.monotonic())

    loop.add_reader(descriptor, on_exit)
    try:
        return await asyncio.wait_for(exited, timeout)
    finally:
        loop.remove_reader(descriptor)
        os.close(descriptor)


def _first_event(results: list[Stamped], machine: str, observed: str, after: float) -> Stamped | None:
    for stamp, event in results:
        m = event.get("machine")
        if stamp >= after and m and m["name"] == machine and m["observed"] == observed:
            return stamp, event
    return None


def _first_after(results: list[Stamped], machine: str, observed: str, after: float) -> float | None:
    found = _first_event(results, machine, observed, after)
    return None if found is None else found[0]


async def _one_guest(client: httpx.AsyncClient, server: Server, events: EventLog, watch: LifecycleWatch,
                     *, machine: str, poweroff_after: int) -> dict[str, float]:
    domain = f"kubekvm-{machine}"
    asked = time.monotonic()
    response = await client.post(server.graphql_url, json={
        "query": "mutation($n: String!) { startMachine(name: $n) { name } }", "variables": {"n": machine}})
    if response.json().get("errors"):
        raise RuntimeError(f"startMachine {machine}: {response.json()['errors']}")
    pid = await _qemu_pid(domain, timeout=60)
    running_seen = await events.wait_for(lambda r: _first_after(r, machine, "RUNNING", asked), timeout=60,
                                         what=f"{machine} RUNNING")
    exited = await _exit_time(pid, timeout=poweroff_after + 90)
    seen = await events.wait_for(lambda r: _first_after(r, machine, "SHUTOFF", running_seen), timeout=30,
                                 what=f"{machine} SHUTOFF")
    stopped_event = watch.first(domain, "stopped", after=asked) or float("nan")
    found = _first_event(events.results, machine, "SHUTOFF", running_seen)
    assert found is not None
    # The server's own stamp of the report (observedAt, milliseconds, wall clock).
    wall = datetime.fromisoformat(found[1]["machine"]["observedAt"]).timestamp()
    reported = wall - (time.time() - time.monotonic())
    return {"exit_to_seen": seen - exited, "libvirt_event_to_seen": seen - stopped_event,
            "exit_to_libvirt_event": stopped_event - exited, "libvirt_event_to_server": reported - stopped_event,
            "server_to_seen": seen - reported}


async def _measure(server: Server, watch: LifecycleWatch, plan: Plan, *, template: str) -> list[dict[str, float]]:
    lab = unique("bench-p2")
    machines = [f"{lab}-{i}" for i in range(1, plan.p2_guests + 1)]
    samples: list[dict[str, float]] = []
    async with httpx.AsyncClient(headers=server.admin_headers, timeout=60) as client:
        response = await client.post(server.graphql_url, json={
            "query": "mutation($n: String!, $t: String!, $r: Int!) { createDeployment(input: "
                     "{name: $n, template: $t, replicas: $r, power: STOPPED}) { name } }",
            "variables": {"n": lab, "t": template, "r": plan.p2_guests}})
        if response.json().get("errors"):
            raise RuntimeError(f"createDeployment: {response.json()['errors']}")
        try:
            async with lab_events(server.ws_url, server.admin_token, name=lab) as events:
                await _wait_inactive(client, server, lab)
                for _ in range(plan.p2_rounds):
                    tasks = []
                    for machine in machines:
                        tasks.append(asyncio.create_task(_one_guest(
                            client, server, events, watch, machine=machine,
                            poweroff_after=plan.p2_poweroff_after)))
                        await asyncio.sleep(STAGGER_SECONDS)
                    samples += await asyncio.gather(*tasks)
        finally:
            await client.post(server.graphql_url, json={
                "query": "mutation($n: String!) { deleteDeployment(name: $n) { name } }", "variables": {"n": lab}})
            await _wait_gone(client, server, lab)
    return samples


async def _lab(client: httpx.AsyncClient, server: Server, lab: str) -> dict[str, Any] | None:
    body = (await client.post(server.graphql_url, json={
        "query": "query($n: String!) { deployment(name: $n) { phase machineCount } }", "variables": {"n": lab}})).json()
    return None if body.get("errors") else body["data"]["deployment"]


async def _wait_inactive(client: httpx.AsyncClient, server: Server, lab: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await _lab(client, server, lab)
        if state is not None and state["phase"] == "INACTIVE":
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"lab {lab} not provisioned (Inactive) within {timeout} s")


async def _wait_gone(client: httpx.AsyncClient, server: Server, lab: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and await _lab(client, server, lab) is not None:
        await asyncio.sleep(0.25)


def run(plan: Plan, work: Path) -> dict[str, Any]:
    libvirtd_up()
    image = make_image(work / "images-p2", "bench-off", size_mib=64, fill=False,
                       cmdline=f"kubekvm.poweroff_after={plan.p2_poweroff_after}")
    watch = LifecycleWatch(LIBVIRT_URI)
    try:
        with database() as db, kubekvm_server(db) as server:
            add_template(server, name=image.stem, image=image.image)
            with kubekvm_agent(server, image_dir=image.directory, state_dir=work / "agent-state-p2",
                               log=LOG_DIR / f"bench-agent-p2-{work.parent.name}.log"):
                samples = asyncio.run(_measure(server, watch, plan, template=image.stem))
    finally:
        watch.close()
    latency = summary([s["exit_to_seen"] for s in samples])
    return {
        "benchmark": "P2 status latency",
        "how": f"{plan.p2_guests} tiny-linux guests x {plan.p2_rounds} rounds; each guest powers itself off "
               f"{plan.p2_poweroff_after} s after boot (kernel cmdline), started {STAGGER_SECONDS} s apart. From "
               "the QEMU process exit (pidfd) to a deploymentEvents subscriber receiving the machine's "
               "SHUTOFF; one monotonic clock.",
        "exit_to_seen_s": latency,
        "libvirt_event_to_seen_s": summary([s["libvirt_event_to_seen"] for s in samples]),
        "exit_to_libvirt_event_s": summary([s["exit_to_libvirt_event"] for s in samples]),
        "libvirt_event_to_server_s": summary([s["libvirt_event_to_server"] for s in samples]),
        "server_to_seen_s": summary([s["server_to_seen"] for s in samples]),
        "figures": {"events": latency["count"], "p50_s": latency["p50"], "p99_s": latency["p99"],
                    "max_s": latency["max"]},
        "targets": [{"name": "p50 guest exit -> subscriber sees SHUTOFF", "value": latency["p50"], "limit": 0.5,
                     "better": "lower", "met": latency["p50"] <= 0.5}],
    }
