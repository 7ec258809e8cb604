"""The class-day run's people and programs: students, the teacher's watchers, API clients.

Each records every request that failed (``Failure``: who, which replica or host, from when to
when, what) so the run can sort them against its kill windows afterwards; none of them gives
up on a failure, they retry as the real thing would:

- ``Student``: signs in through the login page (a real ``POST /login``, so the server verifies
  an argon2 hash), loads "My VMs" and follows its live updates (``GET /events?mine=1``,
  server-sent events) the way htmx's SSE extension does: when the stream ends it reconnects
  and gets a fresh snapshot; when it fails it tries the other replica, as a load balancer
  would send it there. Its view is the machine rows of the last snapshot.
- ``LabWatcher``: a ``deploymentEvents`` subscriber over GraphQL websockets that keeps a view
  of one lab (phase, machines): on every (re)connection it subscribes, then reads the lab once
  and applies the events on top (snapshot, then changes), the way a dashboard would.
- ``list_labs``: many GraphQL clients, each with a connection of its own, listing labs with
  bounded concurrency.
- ``Monitor``: the harness's own GraphQL reads of the truth (as the admin); its failures count
  like anyone's.

Replicas are plain base URLs (``http://127.0.0.1:PORT``); a session cookie is scoped to the
host, not the port, so a student signed in on one replica is signed in on the other, as
behind one Service.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from gql import GraphQLRequest
from tests.support.graphql import websocket_session

# A reconnect after a failure waits this long, as EventSource's retry and a dashboard's backoff.
RECONNECT_S = 0.5
# A browser waits minutes for a sign-in to answer; an impatient client would count as failed a
# sign-in the server still completes (its time is a figure of the run).
SIGN_IN_TIMEOUT_S = 120.0
# uvicorn closes a keep-alive connection idle for 5 s; a client reusing one just then gets
# "Server disconnected" (browsers quietly retry such a request). Our clients drop idle
# connections sooner, so that race is not counted as the server's failure.
LIMITS = httpx.Limits(keepalive_expiry=2.0)


def client(timeout: float = 30.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout, limits=LIMITS)


@dataclass
class Failure:
    who: str
    target: str  # a replica's URL, or a host's name for a machine that went wrong there
    started: float
    ended: float
    what: str


@dataclass
class Failures:
    items: list[Failure] = field(default_factory=list)

    def add(self, who: str, target: str, started: float, what: str) -> None:
        self.items.append(Failure(who, target, started, time.monotonic(), what[:300]))


def graphql_error(body: dict[str, Any]) -> str | None:
    errors = body.get("errors")
    if not errors:
        return None
    first = errors[0]
    return f"{first.get('extensions', {}).get('code', 'GraphQL error')}: {first.get('message', '')}"


async def post_graphql(client: httpx.AsyncClient, url: str, query: str, variables: dict[str, Any] | None = None,
                       *, token: str | None = None) -> dict[str, Any]:
    """One GraphQL request; raises RuntimeError with the HTTP status or GraphQL error code."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.post(f"{url}/graphql", json={"query": query, "variables": variables or {}},
                                 headers=headers)
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:120]}")
    body: dict[str, Any] = response.json()
    problem = graphql_error(body)
    if problem:
        raise RuntimeError(problem)
    data: dict[str, Any] = body["data"]
    return data


_ROW = re.compile(r'<tr id="machine-([^"]+)".*?class="badge state-([a-z]+)"', re.S)
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def machine_rows(page: str) -> dict[str, str]:
    """Machine name -> observed state, from "My VMs" rows (the page or its live fragment)."""
    return {html.unescape(name): state for name, state in _ROW.findall(page)}


class Student:
    def __init__(self, name: str, password: str, *, home: int, replicas: list[str], failures: Failures) -> None:
        self.name, self.password = name, password
        self.replicas = replicas
        self.current = home % len(replicas)
        self.failures = failures
        self.client = client()
        self.sign_in_s: float | None = None
        self.my_page_rows: dict[str, str] | None = None
        self.machines: dict[str, str] = {}
        self.snapshots = 0
        self.last_snapshot_at = 0.0
        self.live = asyncio.Event()  # its first snapshot has arrived

    @property
    def url(self) -> str:
        return self.replicas[self.current]

    def _fail_over(self) -> None:
        self.current = (self.current + 1) % len(self.replicas)

    async def sign_in(self) -> None:
        """GET the login form, POST name, password and its CSRF token; a 303 is success."""
        started = time.monotonic()
        url = self.url
        try:
            form = await self.client.get(f"{url}/login")
            csrf = _CSRF.search(form.text)
            if not csrf:
                raise RuntimeError(f"no CSRF token on the login page (HTTP {form.status_code})")
            answer = await self.client.post(f"{url}/login", data={
                "name": self.name, "password": self.password, "csrf_token": csrf.group(1)},
                timeout=SIGN_IN_TIMEOUT_S)
            if answer.status_code != 303:
                raise RuntimeError(f"sign-in answered HTTP {answer.status_code}")
        except (httpx.HTTPError, RuntimeError) as error:
            self.failures.add(f"student {self.name} sign-in", url, started, f"{type(error).__name__}: {error}")
            raise
        self.sign_in_s = time.monotonic() - started

    async def load_my(self) -> None:
        """GET /my until it answers (a failure is recorded and retried on the other replica)."""
        while True:
            started, url = time.monotonic(), self.url
            try:
                page = await self.client.get(f"{url}/my")
                if page.status_code == 200:
                    self.my_page_rows = machine_rows(page.text)
                    return
                raise RuntimeError(f"HTTP {page.status_code}")
            except (httpx.HTTPError, RuntimeError) as error:
                self.failures.add(f"student {self.name} My VMs", url, started, f"{type(error).__name__}: {error}")
                self._fail_over()
                await asyncio.sleep(RECONNECT_S)

    async def follow(self, stop: asyncio.Event) -> None:
        """Follow My VMs' live updates until ``stop``."""
        while not stop.is_set():
            started, url = time.monotonic(), self.url
            try:
                async with self.client.stream("GET", f"{url}/events", params={"mine": "1"},
                                              timeout=httpx.Timeout(30, read=None)) as response:
                    if response.status_code != 200:
                        raise RuntimeError(f"HTTP {response.status_code}")
                    await self._read(response, stop)
                # The server ended the stream (it does so to make the page resynchronise).
            except (httpx.HTTPError, RuntimeError) as error:
                if stop.is_set():
                    return
                self.failures.add(f"student {self.name} live updates", url, started,
                                  f"{type(error).__name__}: {error}")
                self._fail_over()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RECONNECT_S)

    async def _read(self, response: httpx.Response, stop: asyncio.Event) -> None:
        event, data = "message", []
        lines = response.aiter_lines()
        while not stop.is_set():
            reading = asyncio.ensure_future(anext(lines))
            stopping = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, httpx.HTTPError):
                    await reading
                return
            stopping.cancel()
            try:
                line = reading.result()
            except StopAsyncIteration:
                return
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line:
                if event == "machines":
                    self.machines = machine_rows("\n".join(data))
                    self.snapshots += 1
                    self.last_snapshot_at = time.monotonic()
                    self.live.set()
                event, data = "message", []

    async def close(self) -> None:
        await self.client.aclose()


LAB_EVENTS = """
subscription($name: String) {
  deploymentEvents(name: $name) {
    kind lab
    deployment { name phase running machineCount }
    machine { name host observed observedAt }
  }
}
"""
LAB_STATE = """
query($n: String!) {
  deployment(name: $n) { name phase running machineCount machines { name host observed observedAt } }
}
"""


class LabWatcher:
    """A ``deploymentEvents`` subscriber's view of one lab (subscribed to that lab, or to all)."""

    def __init__(self, label: str, lab: str, *, everything: bool, home: int, replicas: list[str], token: str,
                 failures: Failures) -> None:
        self.label, self.lab, self.everything = label, lab, everything
        self.replicas, self.current = replicas, home % len(replicas)
        self.token, self.failures = token, failures
        self.phase: str | None = None
        self.machines: dict[str, dict[str, Any]] = {}
        self.events = 0
        self.connections = 0
        self.live = asyncio.Event()  # subscribed, and the lab read once
        self.errors_seen: list[tuple[float, str, str]] = []  # (when, machine or lab, what)

    def _machine(self, machine: dict[str, Any]) -> None:
        known = self.machines.get(machine["name"])
        # A snapshot and an event about the same machine may cross: the later report wins.
        if known and known.get("observedAt") and machine.get("observedAt") and \
                machine["observedAt"] < known["observedAt"]:
            return
        self.machines[machine["name"]] = machine

    def _apply(self, event: dict[str, Any]) -> None:
        if event["lab"] != self.lab:
            return
        self.events += 1
        kind = event["kind"]
        if event.get("deployment"):
            self.phase = event["deployment"]["phase"]
            if self.phase == "FAILED":
                self.errors_seen.append((time.monotonic(), self.lab, "lab phase FAILED"))
        machine = event.get("machine")
        if kind == "MACHINE_REMOVED" and machine:
            self.machines.pop(machine["name"], None)
        elif machine:
            self._machine(machine)
            if machine["observed"] == "ERROR":
                self.errors_seen.append((time.monotonic(), machine["name"], f"ERROR on {machine['host']}"))
        if kind == "LAB_DELETED":
            self.phase, self.machines = None, {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started, url = time.monotonic(), self.replicas[self.current]
            try:
                await self._session(url, stop)
            except Exception as error:  # any end of the link is retried, as a client would
                if stop.is_set():
                    return
                self.failures.add(f"subscriber {self.label}", url, started, f"{type(error).__name__}: {error}")
                self.current = (self.current + 1) % len(self.replicas)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RECONNECT_S)

    async def _session(self, url: str, stop: asyncio.Event) -> None:
        ws_url = f"{url}/graphql".replace("http://", "ws://")
        async with websocket_session(ws_url, self.token) as session:
            self.connections += 1
            request = GraphQLRequest(LAB_EVENTS, variable_values={"name": None if self.everything else self.lab})

            async def consume() -> None:
                async for result in session.subscribe(request):
                    self._apply(result["deploymentEvents"])

            consumer = asyncio.create_task(consume())
            try:
                try:
                    async with client() as http:
                        data = await post_graphql(http, url, LAB_STATE, {"n": self.lab}, token=self.token)
                    lab = data["deployment"]
                except RuntimeError as error:
                    # Following every lab before this one is made: nothing to show of it yet.
                    if not (self.everything and str(error).startswith("NOT_FOUND")):
                        raise
                    lab = {"phase": None, "machines": []}
                self.phase = lab["phase"]
                for machine in lab["machines"]:
                    self._machine(machine)
                stale = set(self.machines) - {m["name"] for m in lab["machines"]}
                for name in stale:
                    self.machines.pop(name, None)
                self.live.set()
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({consumer, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if consumer.done():
                    consumer.result()  # raises what ended it
                    raise RuntimeError("the subscription ended")
            finally:
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await consumer


LIST_LABS = "{ deployments(limit: 100) { total items { name phase running machineCount } } }"


async def list_labs(*, count: int, concurrency: int, replicas: list[str], token: str,
                    failures: Failures) -> dict[str, Any]:
    """``count`` clients, each with a connection of its own, list labs once; at most
    ``concurrency`` at a time. A failed one is recorded, not retried (its caller would)."""
    gate = asyncio.Semaphore(concurrency)
    seconds: list[float] = []

    async def one(index: int) -> None:
        url = replicas[index % len(replicas)]
        async with gate, client() as http:
            started = time.monotonic()
            try:
                await post_graphql(http, url, LIST_LABS, token=token)
                seconds.append(time.monotonic() - started)
            except (httpx.HTTPError, RuntimeError) as error:
                failures.add(f"lab lister {index}", url, started, f"{type(error).__name__}: {error}")

    began = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    return {"clients": count, "concurrency": concurrency, "answered": len(seconds),
            "failed": count - len(seconds), "wall_s": round(time.monotonic() - began, 2), "seconds": seconds}


class Monitor:
    """The harness's reads of the truth, as the admin, alternating replicas."""

    def __init__(self, replicas: list[str], token: str, failures: Failures) -> None:
        self.replicas, self.token, self.failures = replicas, token, failures
        self.turn = 0
        self.client = client()

    async def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The data, or None after recording the failure."""
        url = self.replicas[self.turn % len(self.replicas)]
        self.turn += 1
        started = time.monotonic()
        try:
            return await post_graphql(self.client, url, query, variables, token=self.token)
        except (httpx.HTTPError, RuntimeError) as error:
            self.failures.add("monitor", url, started, f"{type(error).__name__}: {error}")
            return None

    async def close(self) -> None:
        await self.client.aclose()
