"""P3 — API throughput: listing 1,000 labs over GraphQL vs a plain endpoint, and subscriptions.

*Requests/s.* ``kubekvm serve`` answers ``deployments(limit: 1000){ items { name phase running
machineCount } }`` (POST, admin bearer token); ``plain_app`` answers ``GET /labs`` with the same
items from the same database, read through the same Beanie models and counted by the same
aggregation. Both are checked to return identical items first. Two databases, both SecantusDB:

- *API-bound*: ``labs`` labs and no machines, so the count aggregation has nothing to scan and
  what is measured is the web and GraphQL layers. ``wrk`` loads each endpoint over loopback,
  alternately (order flipped each round) at each connection count; the figure is GraphQL's
  requests/s as a share of the plain endpoint's at the same connection count.
- *With a fleet*: the same labs with 5-30 machines each (about half running). Requests take
  seconds here (the aggregation dominates, on both sides), so instead of wrk the two are asked
  one request at a time, alternately, and their median request times compared.

*Subscriptions.* On a fresh server with one lab, ``subscribers`` (a process of its own) opens
N ``deploymentEvents(name: lab)`` subscriptions, one websocket each; the lab's title is then
changed M times (``updateDeployment``), each time only once every subscription has the
previous change. Latency = arrival at each subscriber - the moment before the mutation was
sent. The capacity is the largest N whose every delivery arrived, with p99 <= 1 s. All of them
are the admin's, so that server lifts the per-user subscription cap above N.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from tests.support.processes import LOG_DIR, ROOT, VENV_BIN, Server, free_port

from benchmarks import wrk
from benchmarks.plan import Plan
from benchmarks.stack import Database, add_template, database, graphql, kubekvm_server, stop_process, unique
from benchmarks.stats import median, summary
from kubekvm.database import connect
from kubekvm.models import Deployment, Machine, MachineSpec, ObservedState, OSFamily, Phase

LIST_QUERY = "{ deployments(limit: 1000) { items { name phase running machineCount } } }"
P99_LIMIT_S = 1.0
# How long one change may take to reach every subscriber before the ramp moves on.
MARK_TIMEOUT_S = 30.0
# The subscriber process's result is one JSON line with a time per delivery.
RESULT_LINE_LIMIT = 64 * 1024 * 1024


async def _fill(uri: str, database_name: str, labs: int, *, machines: bool) -> int:
    """``labs`` labs of 5-30 machines each (about half running) or, without ``machines``,
    none; returns the number of machines."""
    connection = await connect(uri, database=database_name)
    try:
        spec = MachineSpec(template="bench-tiny", image="bench-tiny.qcow2", os=OSFamily.LINUX, vcpus=1,
                           memory_mib=128, disk_gib=1)
        deployments: list[Deployment] = []
        fleet: list[Machine] = []
        for i in range(labs):
            name = f"bench-lab-{i:04d}"
            replicas = 5 + i % 26
            running = replicas if i % 3 == 0 else replicas // 2 if i % 3 == 1 else 0
            deployments.append(Deployment(name=name, title=name, template="bench-tiny", replicas=replicas,
                                          phase=Phase.ACTIVE if running == replicas else Phase.PENDING))
            fleet += [Machine(deployment=name, index=k, name=f"{name}-{k}", spec=spec, host="bench-host",
                                 observed=ObservedState.RUNNING if k <= running else ObservedState.PENDING)
                      for k in range(1, replicas + 1) if machines]
        await Deployment.insert_many(deployments)
        for start in range(0, len(fleet), 2000):
            await Machine.insert_many(fleet[start:start + 2000])
        return len(fleet)
    finally:
        await connection.close()


@contextlib.contextmanager
def plain_app(db: Database, database_name: str, log: Path) -> Iterator[str]:
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [str(VENV_BIN / "python"), "-m", "benchmarks.plain_app", "--port", str(port), "--mongodb-uri", db.uri,
         "--database", database_name],
        cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the plain app exited with {process.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the plain app did not start; see {log}")
            time.sleep(0.1)
        yield f"{url}/labs"
    finally:
        stop_process(process)


def _same_answers(server: Server, plain_url: str, labs: int) -> None:
    # Not Server.graphql: with a fleet one answer can take longer than its 30 s timeout.
    answer = httpx.post(server.graphql_url, json={"query": LIST_QUERY}, headers=server.admin_headers, timeout=600)
    ours = answer.json()["data"]["deployments"]["items"]
    plain = httpx.get(plain_url, timeout=600).json()["items"]
    if len(ours) != min(labs, 1000) or ours != plain:
        raise RuntimeError(f"GraphQL and the plain endpoint disagree ({len(ours)} vs {len(plain)} items)")


def _graphql_list(server: Server) -> float:
    began = time.monotonic()
    response = httpx.post(server.graphql_url, json={"query": LIST_QUERY}, headers=server.admin_headers, timeout=600)
    response.raise_for_status()
    return time.monotonic() - began


def _plain_list(url: str) -> float:
    began = time.monotonic()
    httpx.get(url, timeout=600).raise_for_status()
    return time.monotonic() - began


def _one_at_a_time(plan: Plan, server: Server, plain_url: str) -> dict[str, Any]:
    times: dict[str, list[float]] = {"graphql": [], "plain": []}
    for round_ in range(plan.p3_fleet_requests):
        for which in (("plain", "graphql") if round_ % 2 == 0 else ("graphql", "plain")):
            times[which].append(_plain_list(plain_url) if which == "plain" else _graphql_list(server))
    graphql_s, plain_s = median(times["graphql"]), median(times["plain"])
    return {"graphql_request_s": round(graphql_s, 3), "plain_request_s": round(plain_s, 3),
            "share": round(plain_s / graphql_s, 3), "requests_each": plan.p3_fleet_requests,
            "times_s": {k: [round(v, 3) for v in found] for k, found in times.items()}}


def _throughput(plan: Plan, server: Server, plain_url: str, work: Path) -> dict[str, Any]:
    levels: dict[str, Any] = {}
    for connections in plan.p3_connections:
        runs: dict[str, list[dict[str, Any]]] = {"graphql": [], "plain": []}
        for round_ in range(plan.p3_runs):
            order = ("plain", "graphql") if round_ % 2 == 0 else ("graphql", "plain")
            for which in order:
                if which == "plain":
                    runs["plain"].append(wrk.run(plain_url, connections=connections, seconds=plan.p3_seconds,
                                                 work=work))
                else:
                    runs["graphql"].append(wrk.run(
                        server.graphql_url, connections=connections, seconds=plan.p3_seconds, work=work,
                        method="POST", body=f'{{"query": "{LIST_QUERY}"}}',
                        headers={"Content-Type": "application/json", **server.admin_headers}))
        for which, found in runs.items():
            bad = sum(r["non_2xx"] + r["socket_errors"] for r in found)
            if bad:
                raise RuntimeError(f"{which}: {bad} failed requests under load: {found}")
        graphql_rps = median([r["requests_per_s"] for r in runs["graphql"]])
        plain_rps = median([r["requests_per_s"] for r in runs["plain"]])
        levels[str(connections)] = {
            "graphql_rps": round(graphql_rps, 2), "plain_rps": round(plain_rps, 2),
            "share": round(graphql_rps / plain_rps, 3), "runs": runs,
        }
    return levels


class _Output:
    """The subscriber process's stdout lines, read as they come; ``ended`` once it closes."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        try:
            while raw := await stream.readline():
                self.lines.append(raw.decode().strip())
                self._changed.set()
        finally:
            self.ended = True
            self._changed.set()

    async def wait_for(self, test: Callable[[str], bool], timeout: float) -> str | None:
        """The first line passing ``test``, or None at the timeout or the end of output."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in self.lines if test(line)), None)
            if found is not None or self.ended or time.monotonic() >= deadline:
                return found
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())


async def _ramp_level(server: Server, lab: str, token_file: Path, count: int, marks: int) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "python"), "-m", "benchmarks.subscribers", "--url", server.ws_url,
        "--token-file", str(token_file), "--lab", lab, "--count", str(count), "--marks", str(marks),
        "--timeout", str(MARK_TIMEOUT_S * marks), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, limit=RESULT_LINE_LIMIT)
    assert process.stdout is not None
    output = _Output(process.stdout)
    fired: dict[int, float] = {}
    try:
        async with httpx.AsyncClient(headers=server.admin_headers, timeout=60) as client:
            async def fire(mark: int) -> None:
                fired[mark] = time.monotonic()
                body = (await client.post(server.graphql_url, json={
                    "query": "mutation($n: String!, $t: String!) { updateDeployment(name: $n, input: {title: $t}) "
                             "{ name } }", "variables": {"n": lab, "t": f"mark-{mark}"}})).json()
                if body.get("errors"):
                    raise RuntimeError(f"updateDeployment: {body['errors']}")

            if await output.wait_for(lambda line: line.startswith("CONNECTED"), 300) is None:
                raise RuntimeError(f"the subscriber process did not connect: {output.lines[-3:]}")
            # Warm-up: repeat mark-0 until every subscription has delivered it.
            for _ in range(10):
                await fire(0)
                if await output.wait_for(lambda line: line == "GOT 0", MARK_TIMEOUT_S / 3) is not None:
                    break
            else:
                raise RuntimeError(f"not every one of {count} subscriptions went live")
            for mark in range(1, marks + 1):
                await asyncio.sleep(0.2)
                await fire(mark)
                await output.wait_for(lambda line, mark=mark: line == f"GOT {mark}", MARK_TIMEOUT_S)
            text = await output.wait_for(lambda line: line.startswith("{"), MARK_TIMEOUT_S * marks + 30)
            if text is None:
                raise RuntimeError("the subscriber process printed no result")
            result: dict[str, Any] = json.loads(text)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
    latencies = [stamp - fired[int(k)] for k, stamps in result["marks"].items() for stamp in stamps]
    expected = result["subscribed"] * marks
    stats = summary(latencies)
    return {"subscribers": count, "subscribed": result["subscribed"], "connect_s": result["connect_s"],
            "deliveries": len(latencies), "expected": expected, "latency_s": stats,
            "ok": result["subscribed"] == count and len(latencies) == expected and stats.get("p99", 99) <= P99_LIMIT_S}


def _subscriptions(plan: Plan, db: Database, work: Path) -> list[dict[str, Any]]:
    # What one server holds, not what one person may: every subscriber here is the admin, so the
    # per-user cap (KUBEKVM_GRAPHQL_MAX_SUBSCRIPTIONS_PER_USER, 50) is lifted above the ramp's top.
    cap = {"KUBEKVM_GRAPHQL_MAX_SUBSCRIPTIONS_PER_USER": str(max(plan.p3_subscriber_levels) + 10)}
    with kubekvm_server(db, env=cap) as server:
        add_template(server, name="bench-tiny", image="bench-tiny.qcow2")
        lab = unique("bench-p3")
        graphql(server, "mutation($n: String!) { createDeployment(input: {name: $n, template: \"bench-tiny\", "
                        "replicas: 3}) { name } }", {"n": lab})
        token_file = work / "p3-admin.token"
        token_file.write_text(server.admin_token)
        token_file.chmod(0o600)
        try:
            return [asyncio.run(_ramp_level(server, lab, token_file, count, plan.p3_mutations_per_level))
                    for count in plan.p3_subscriber_levels]
        finally:
            token_file.unlink(missing_ok=True)


def run(plan: Plan, work: Path) -> dict[str, Any]:
    if not wrk.available():
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with database() as db:
        bare = f"bench{unique('p3').split('-')[-1]}"
        asyncio.run(_fill(db.uri, bare, plan.p3_labs, machines=False))
        with kubekvm_server(db, database_name=bare) as server, \
                plain_app(db, bare, LOG_DIR / f"bench-plain-app-{bare}.log") as plain_url:
            _same_answers(server, plain_url, plan.p3_labs)
            levels = _throughput(plan, server, plain_url, work)
        full = f"bench{unique('p3').split('-')[-1]}"
        machines = asyncio.run(_fill(db.uri, full, plan.p3_labs, machines=True))
        with kubekvm_server(db, database_name=full) as server, \
                plain_app(db, full, LOG_DIR / f"bench-plain-app-{full}.log") as plain_url:
            _same_answers(server, plain_url, plan.p3_labs)
            fleet = _one_at_a_time(plan, server, plain_url)
        ramp = _subscriptions(plan, db, work)
    passing = [level["subscribers"] for level in ramp if level["ok"]]
    capacity = max(passing) if passing else 0
    worst_key = min(levels, key=lambda key: levels[key]["share"])
    worst = levels[worst_key]
    return {
        "benchmark": "P3 API throughput",
        "how": f"{plan.p3_labs} labs in SecantusDB. API-bound (no machines): wrk over loopback, "
               f"{plan.p3_seconds} s per run, {plan.p3_runs} alternating run(s) per endpoint and connection count, "
               "medians. GraphQL: POST deployments(limit: 1000){items{name phase running machineCount}} with "
               "the admin token; plain: GET /labs from benchmarks/plain_app.py (same models, same count "
               f"aggregation, no auth). With a fleet ({machines} machines): {plan.p3_fleet_requests} alternating "
               "single requests each, median request time. Subscriptions: N deploymentEvents websockets in a "
               f"separate client process, {plan.p3_mutations_per_level} title changes per level, latency from "
               "sending the mutation to each arrival.",
        "labs": plan.p3_labs,
        "api_bound_by_connections": levels,
        "with_fleet": {"machines": machines, **fleet},
        "subscription_ramp": ramp,
        "figures": {
            "connections": int(worst_key),
            "graphql_rps": worst["graphql_rps"],
            "plain_rps": worst["plain_rps"],
            "graphql_share_of_plain": worst["share"],
            "fleet_machines": machines,
            "fleet_graphql_request_s": fleet["graphql_request_s"],
            "fleet_plain_request_s": fleet["plain_request_s"],
            "subscriptions_held_p99_under_1s": capacity,
            "largest_level_tried": max(plan.p3_subscriber_levels),
        },
        "targets": [
            {"name": "GraphQL rps / plain rps, API-bound (worst connection count)", "value": worst["share"],
             "limit": 0.4, "better": "higher", "met": worst["share"] >= 0.4},
            {"name": "GraphQL rps / plain rps, with a fleet (one at a time)", "value": fleet["share"],
             "limit": 0.4, "better": "higher", "met": fleet["share"] >= 0.4},
        ],
    }
