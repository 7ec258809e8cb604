"""P3 — API throughput: listing 1,000 labs over GraphQL vs a plain endpoint, and subscriptions.

*Requests/s.* ``kubekvm serve`` answers ``deployments(limit: 1000){ items { name phase running
machineCount } }`` (POST, admin bearer token); ``plain_app`` answers ``GET /labs`` with the same
items from the same database, read through the same Beanie models with the same machine counts
(stored with each lab). Both are checked to return identical items first. Two databases, both
SecantusDB:

- *API-bound*: ``labs`` labs and no machines, so what is measured is the web and GraphQL
  layers. ``wrk`` loads each endpoint over loopback, alternately (order flipped each round)
  at each connection count; the figure is GraphQL's requests/s as a share of the plain
  endpoint's at the same connection count.
- *With a fleet*: the same labs with 5-30 machines each (about half running). Requests took
  seconds here (when counts were aggregated from the machines), so instead of wrk each way of
  listing is asked one request at a time, alternately, and their median request times
  compared; the old aggregation is timed beside them.

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
import pymongo
from tests.support.processes import LOG_DIR, ROOT, VENV_BIN, Server, free_port

from benchmarks import wrk
from benchmarks.heartbeats import cpu_seconds
from benchmarks.plan import Plan
from benchmarks.stack import Database, add_template, database, graphql, kubekvm_server, stop_process, unique
from benchmarks.stats import median, summary
from kubekvm.config import Settings
from kubekvm.database import connect
from kubekvm.events import EventFeed
from kubekvm.models import Deployment, Machine, MachineSpec, ObservedState, OSFamily, Phase
from kubekvm.services import Services

LIST_QUERY = "{ deployments(limit: 1000) { items { name phase running machineCount } } }"
# A teacher whose 20 labs are among the 1,000 (every 50th).
TEACHER = "bench-teacher"
TEACHER_EVERY = 50
LIST_TARGET_S = 0.5
SUBSCRIBER_TARGET = 5000
BEFORE_TIMEOUT_S = 300
P99_LIMIT_S = 1.0
# How long the subscriber process may take to open every subscription (a loaded machine: minutes).
CONNECT_TIMEOUT_S = 900
# How often mark-0 is repeated before the level is given up (each waits MARK_TIMEOUT_S / 3).
WARM_UP_TRIES = 30
# How long one change may take to reach every subscriber before the ramp moves on.
MARK_TIMEOUT_S = 30.0
# The subscriber process's result is one JSON line with a time per delivery.
RESULT_LINE_LIMIT = 64 * 1024 * 1024


async def _fill(uri: str, database_name: str, labs: int, *, machines: bool) -> int:
    """``labs`` labs of 5-30 machines each (about half running) or, without ``machines``,
    none, each with its counts stored as the server's recount stores them; every
    ``TEACHER_EVERY``-th lab is ``TEACHER``'s (20 of 1,000), the others other teachers'. Returns
    the number of machines."""
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
            owner = TEACHER if i % TEACHER_EVERY == 0 else f"other-teacher-{i % 7}"
            deployments.append(Deployment(name=name, title=name, template="bench-tiny", replicas=replicas,
                                          phase=Phase.ACTIVE if running == replicas else Phase.PENDING,
                                          owner=owner, running=running if machines else 0,
                                          kept=replicas if machines else 0))
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


def _timed(ask: Callable[[], httpx.Response]) -> float:
    began = time.monotonic()
    response = ask()
    took = time.monotonic() - began
    response.raise_for_status()
    if response.headers.get("content-type", "").startswith("application/json") and response.json().get("errors"):
        raise RuntimeError(f"the request failed: {response.text[:300]}")
    return took


async def _aggregated_before(uri: str, database_name: str) -> float:
    """The count as lists made it before counts were stored: one aggregation matching the
    1,000 labs' names (``Labs.running_counts``, still the recount's), timed in-process."""
    connection = await connect(uri, database=database_name)
    try:
        names = [d.name for d in await Deployment.find({}).sort("name").limit(1000).to_list()]
        services = Services(settings=Settings(), feed=EventFeed(), database_description="bench")
        began = time.monotonic()
        with pymongo.timeout(BEFORE_TIMEOUT_S):  # it took 14 s here: longer than the client's 10 s
            await services.labs.running_counts(names)
        return time.monotonic() - began
    finally:
        await connection.close()


def _lists_with_a_fleet(plan: Plan, server: Server, plain_url: str, db: Database, database_name: str
                        ) -> dict[str, Any]:
    """Each way of listing labs, one request at a time, alternating (order flipped each round);
    medians of ``p3_fleet_requests`` rounds."""
    teacher_token = server.token_for(TEACHER)
    teacher_headers = {"Authorization": f"Bearer {teacher_token}"}
    server.user("bench-admin-pages", "admin")
    admin_page = server.session("bench-admin-pages")
    teacher_page = server.session(TEACHER)
    asks: dict[str, Callable[[], httpx.Response]] = {
        "graphql_admin_1000": lambda: httpx.post(server.graphql_url, json={"query": LIST_QUERY},
                                                 headers=server.admin_headers, timeout=600),
        "plain_admin_1000": lambda: httpx.get(plain_url, timeout=600),
        "graphql_teacher_20": lambda: httpx.post(server.graphql_url, json={"query": LIST_QUERY},
                                                 headers=teacher_headers, timeout=600),
        "plain_teacher_20": lambda: httpx.get(plain_url, params={"owner": TEACHER}, timeout=600),
        "page_admin": lambda: admin_page.get("/labs", timeout=600),
        "page_teacher": lambda: teacher_page.get("/labs", timeout=600),
    }
    times: dict[str, list[float]] = {key: [] for key in asks}
    try:
        for key in asks:  # a first request each (connections, caches), not counted
            _timed(asks[key])
        for round_ in range(plan.p3_fleet_requests):
            for key in (list(asks) if round_ % 2 == 0 else list(reversed(asks))):
                times[key].append(_timed(asks[key]))
    finally:
        admin_page.close()
        teacher_page.close()
    before = [asyncio.run(_aggregated_before(db.uri, database_name)) for _ in range(plan.p3_fleet_requests)]
    medians = {key: round(median(found), 3) for key, found in times.items()}
    return {"median_s": medians, "times_s": {k: [round(v, 3) for v in found] for k, found in times.items()},
            "count_aggregation_before_s": round(median(before), 3),
            "count_aggregation_before_times_s": [round(v, 3) for v in before],
            "requests_each": plan.p3_fleet_requests}


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
        # A failed request (wrk's timeout on a starved machine, an error) is recorded, not fatal:
        # the rest of P3 still runs, and the figure says how many failed.
        failed = {which: sum(r["non_2xx"] + r["socket_errors"] for r in found) for which, found in runs.items()}
        graphql_rps = median([r["requests_per_s"] for r in runs["graphql"]])
        plain_rps = median([r["requests_per_s"] for r in runs["plain"]])
        levels[str(connections)] = {
            "graphql_rps": round(graphql_rps, 2), "plain_rps": round(plain_rps, 2),
            "share": round(graphql_rps / plain_rps, 3) if plain_rps else 0.0, "failed_requests": failed,
            "runs": runs,
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


def rss_kib(pid: int) -> int:
    """A process's resident memory now (VmRSS), in KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _ramp_level(server: Server, db_pid: int, lab: str, token_file: Path, count: int,
                      marks: int) -> dict[str, Any]:
    rss_before = rss_kib(server.child.process.pid)
    # The subscriber process waits this long for the warm-up and again for the marks.
    patience = max(MARK_TIMEOUT_S * marks, WARM_UP_TRIES * MARK_TIMEOUT_S / 3)
    # CPU seconds of the server and of the database: steadier than times on a loaded machine.
    cpu_before = cpu_seconds(server.child.process.pid), cpu_seconds(db_pid)
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "python"), "-m", "benchmarks.subscribers", "--url", server.ws_url,
        "--token-file", str(token_file), "--lab", lab, "--count", str(count), "--marks", str(marks),
        "--timeout", str(patience), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
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

            if await output.wait_for(lambda line: line.startswith("CONNECTED"), CONNECT_TIMEOUT_S) is None:
                raise RuntimeError(f"the subscriber process did not connect: {output.lines[-3:]}")
            # Warm-up: repeat mark-0 until every subscription has delivered it.
            for _ in range(WARM_UP_TRIES):
                await fire(0)
                if await output.wait_for(lambda line: line == "GOT 0", MARK_TIMEOUT_S / 3) is not None:
                    break
            else:
                raise RuntimeError(f"not every one of {count} subscriptions went live")
            rss_live = rss_kib(server.child.process.pid)
            cpu_live = cpu_seconds(server.child.process.pid), cpu_seconds(db_pid)
            for mark in range(1, marks + 1):
                await asyncio.sleep(0.2)
                await fire(mark)
                await output.wait_for(lambda line, mark=mark: line == f"GOT {mark}", MARK_TIMEOUT_S)
            text = await output.wait_for(lambda line: line.startswith("{"), patience + 30)
            if text is None:
                raise RuntimeError("the subscriber process printed no result")
            result: dict[str, Any] = json.loads(text)
            cpu_end = cpu_seconds(server.child.process.pid), cpu_seconds(db_pid)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await process.wait()
    latencies = [stamp - fired[int(k)] for k, stamps in result["marks"].items() for stamp in stamps]
    expected = result["subscribed"] * marks
    stats = summary(latencies)
    grown = (rss_live - rss_before) / 1024
    return {"subscribers": count, "subscribed": result["subscribed"], "connect_s": result["connect_s"],
            "server_rss_mib_before": round(rss_before / 1024, 1), "server_rss_mib_live": round(rss_live / 1024, 1),
            "server_rss_mib_per_1000": round(grown / count * 1000, 1),
            "deliveries": len(latencies), "expected": expected, "latency_s": stats,
            # Subscribing (connect, subscribe, first state, warm-up change) and then each change.
            "server_cpu_s_subscribing": round(cpu_live[0] - cpu_before[0], 2),
            "database_cpu_s_subscribing": round(cpu_live[1] - cpu_before[1], 2),
            "server_cpu_s_per_change": round((cpu_end[0] - cpu_live[0]) / marks, 3),
            "database_cpu_s_per_change": round((cpu_end[1] - cpu_live[1]) / marks, 3),
            "ok": result["subscribed"] == count and len(latencies) == expected and stats.get("p99", 99) <= P99_LIMIT_S}


def _level_or_failure(server: Server, db_pid: int, lab: str, token_file: Path, count: int,
                      marks: int) -> dict[str, Any]:
    """One level of the ramp; a level that fails (its subscribers did not all connect in time
    on a starved machine) is recorded as failed, and the ramp and the rest of P3 go on."""
    try:
        return asyncio.run(_ramp_level(server, db_pid, lab, token_file, count, marks))
    except (RuntimeError, TimeoutError) as error:
        return {"subscribers": count, "ok": False, "error": str(error)[:300]}


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
            return [_level_or_failure(server, db.child.process.pid, lab, token_file, count,
                                      plan.p3_mutations_per_level)
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
            fleet = _lists_with_a_fleet(plan, server, plain_url, db, full)
        ramp = _subscriptions(plan, db, work)
    passing = [level["subscribers"] for level in ramp if level["ok"]]
    capacity = max(passing) if passing else 0
    lists = fleet["median_s"]
    measured = [level for level in ramp if "server_rss_mib_per_1000" in level]
    rss_per_1000 = max(measured, key=lambda level: level["subscribers"])["server_rss_mib_per_1000"] if measured else 0.0
    worst_key = min(levels, key=lambda key: levels[key]["share"])
    worst = levels[worst_key]
    return {
        "benchmark": "P3 API throughput",
        "how": f"{plan.p3_labs} labs in SecantusDB. API-bound (no machines): wrk over loopback, "
               f"{plan.p3_seconds} s per run, {plan.p3_runs} alternating run(s) per endpoint and connection count, "
               "medians. GraphQL: POST deployments(limit: 1000){items{name phase running machineCount}} with "
               "the admin token; plain: GET /labs from benchmarks/plain_app.py (same models, the same stored "
               f"counts, no auth). With a fleet ({machines} machines): after one unmeasured request each, "
               f"{plan.p3_fleet_requests} rounds of single requests of each kind (GraphQL and plain, the admin's "
               f"1,000 and a teacher's {plan.p3_labs // TEACHER_EVERY}; the HTML labs page as an admin and as "
               "that teacher, signed in), order flipped each round, median request time; beside them the "
               "count aggregation the lists ran before counts were stored (deployment $in 1,000 names, then "
               "$group), timed in-process. Subscriptions: N deploymentEvents websockets in a separate client "
               f"process, {plan.p3_mutations_per_level} title changes per level, latency from sending the "
               "mutation to each arrival; server RSS (VmRSS) before the subscribers connect and once all "
               "are live.",
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
            "fleet_graphql_admin_1000_s": lists["graphql_admin_1000"],
            "fleet_plain_admin_1000_s": lists["plain_admin_1000"],
            "fleet_graphql_teacher_20_s": lists["graphql_teacher_20"],
            "fleet_plain_teacher_20_s": lists["plain_teacher_20"],
            "fleet_labs_page_admin_s": lists["page_admin"],
            "fleet_labs_page_teacher_s": lists["page_teacher"],
            "fleet_count_aggregation_before_s": fleet["count_aggregation_before_s"],
            "subscriptions_held_p99_under_1s": capacity,
            "largest_level_tried": max(plan.p3_subscriber_levels),
            "server_rss_mib_per_1000_subscribers": rss_per_1000,
        },
        "targets": [
            {"name": "GraphQL rps / plain rps, API-bound (worst connection count)", "value": worst["share"],
             "limit": 0.4, "better": "higher", "met": worst["share"] >= 0.4},
            *[{"name": f"{what} with {machines} machines (s)", "value": lists[key], "limit": LIST_TARGET_S,
               "better": "lower", "met": lists[key] <= LIST_TARGET_S}
              for key, what in (("graphql_admin_1000", "deployments(limit: 1000), admin"),
                                ("graphql_teacher_20", f"deployments, a teacher's {plan.p3_labs // TEACHER_EVERY} "
                                                       f"of {plan.p3_labs}"),
                                ("page_admin", "labs page, admin"), ("page_teacher", "labs page, a teacher"))],
            {"name": "deploymentEvents subscribers with p99 <= 1 s", "value": capacity,
             "limit": SUBSCRIBER_TARGET, "better": "higher", "met": capacity >= SUBSCRIBER_TARGET},
        ],
    }


def run_subscribers(plan: Plan, work: Path) -> dict[str, Any]:
    """P3's subscriber ramp alone (``python -m benchmarks.api_throughput --subscribers``)."""
    with database() as db:
        ramp = _subscriptions(plan, db, work)
    passing = [level["subscribers"] for level in ramp if level["ok"]]
    return {"subscription_ramp": ramp, "subscriptions_held_p99_under_1s": max(passing) if passing else 0}


def main(argv: list[str] | None = None) -> None:
    import argparse
    import dataclasses
    import resource
    import tempfile

    from benchmarks.plan import FULL, QUICK
    from benchmarks.report import load_average

    parser = argparse.ArgumentParser(prog="python -m benchmarks.api_throughput",
                                     description="P3's deploymentEvents subscriber ramp alone; prints JSON")
    parser.add_argument("--subscribers", default="", help="comma-separated levels (default: the plan's)")
    parser.add_argument("--quick", action="store_true", help="the quick plan's levels and marks")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.subscribers:
        plan = dataclasses.replace(plan, p3_subscriber_levels=tuple(int(n) for n in args.subscribers.split(",")))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    began = {"load_average": load_average()}
    with tempfile.TemporaryDirectory(prefix="kubekvm-p3-ramp-") as work:
        result = run_subscribers(plan, Path(work))
    print(json.dumps({**began, "load_average_at_end": load_average(), **result}, indent=1))


if __name__ == "__main__":
    main()
