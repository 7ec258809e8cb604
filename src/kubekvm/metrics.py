"""Metrics: what a sysadmin's Prometheus scrapes from each server replica at `/metrics`.

Each replica is one process with its own registry (`REGISTRY`), so there is nothing to merge
between processes: Prometheus scrapes every replica and sums. Two kinds of figures:

- **This replica's own** (requests, GraphQL operations, subscriptions and live streams open,
  the event feed's lag and restarts, compare-and-set retries, console sessions, sign-ins, audit
  writes): counters, gauges and histograms updated where the thing happens.
- **Shared state** (labs by phase, machines by desired/observed state, hosts by state and their
  capacity): read from the database at scrape time, and only by the replica holding the
  janitor's lease (`kubekvm.janitor`). Every replica exports `kubekvm_shared_state_exporter`
  (1 on the one that exports them, 0 elsewhere), so `sum()` over replicas never counts a lab
  twice, and a dashboard can tell which replica speaks for the fleet.

Labels are bounded by design: route templates (not paths), the schema's own root field names,
error codes, outcomes and states, and host names (the fleet's size, an admin's choice). Never a
lab, a user, a token or a request id: `tests/api/test_metrics.py` checks the scrape for them.

Who may read it (`metrics_endpoint`): an admin (token or session) and a scrape token
(`kubekvm token create-scrape`, the `scraper` actor); anyone else gets 401/403.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kubekvm.access.actors import ActorKind

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # the replica's RSS, CPU seconds, open file descriptors

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter("kubekvm_http_requests", "HTTP requests answered, by route template and outcome.",
                        ["route", "method", "status"], registry=REGISTRY)
HTTP_DURATION = Histogram("kubekvm_http_request_duration_seconds", "Time to answer an HTTP request.",
                          ["route", "method"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
GRAPHQL_OPERATIONS = Counter("kubekvm_graphql_operations",
                             "GraphQL operations, by type, root field of the schema and outcome "
                             "(ok or the first error's extensions.code).",
                             ["type", "field", "outcome"], registry=REGISTRY)
GRAPHQL_DURATION = Histogram("kubekvm_graphql_operation_duration_seconds",
                             "Time to execute a GraphQL query or mutation.", ["type"],
                             buckets=_LATENCY_BUCKETS, registry=REGISTRY)
STREAMS_OPEN = Gauge("kubekvm_streams_open", "Long-lived things open on this replica: GraphQL subscriptions "
                     "(graphql) and the pages' live-update streams (live).", ["kind"], registry=REGISTRY)
FEED_LAG = Gauge("kubekvm_event_feed_lag_seconds",
                 "How far behind the database's clock the last change this replica's event feed read was "
                 "when it read it.", registry=REGISTRY)
FEED_HEALTHY = Gauge("kubekvm_event_feed_healthy", "1 while this replica's event feed follows the database.",
                     registry=REGISTRY)
DATABASE_UP = Gauge("kubekvm_database_up", "1 if the database answered this replica's ping at the last scrape.",
                    registry=REGISTRY)
FEED_RESTARTS = Counter("kubekvm_event_feed_restarts",
                        "Times this replica's event feed restarted its change stream, by reason.", ["reason"],
                        registry=REGISTRY)
WRITE_RETRIES = Counter("kubekvm_write_retries",
                        "Compare-and-set writes computed again after losing to a concurrent writer.",
                        registry=REGISTRY)
CONSOLE_SESSIONS = Gauge("kubekvm_console_sessions_open", "Console sessions piped through this replica.",
                         registry=REGISTRY)
SIGN_INS = Counter("kubekvm_sign_ins", "Sign-in attempts by method and outcome.", ["method", "outcome"],
                   registry=REGISTRY)
AUDIT_WRITES = Counter("kubekvm_audit_writes", "Audit log entries written, by outcome of the audited act.",
                       ["outcome"], registry=REGISTRY)
ERRORS = Counter("kubekvm_errors", "Failures nothing handled (HTTP 5xx answers and INTERNAL GraphQL errors).",
                 ["kind"], registry=REGISTRY)

SHARED_EXPORTER = Gauge("kubekvm_shared_state_exporter",
                        "1 on the replica that exports the fleet's shared gauges (the janitor's lease "
                        "holder), 0 on the others.", registry=REGISTRY)
LABS = Gauge("kubekvm_labs", "Labs by phase (exported by one replica).", ["phase"], registry=REGISTRY)
MACHINES = Gauge("kubekvm_machines", "Machines by desired power and observed state (exported by one replica).",
                 ["desired", "observed"], registry=REGISTRY)
HOSTS = Gauge("kubekvm_hosts", "Hosts by state: ready or unreachable (exported by one replica).", ["state"],
              registry=REGISTRY)
HOST_VCPUS = Gauge("kubekvm_host_vcpus", "A host's vCPUs: its capacity, and those its machines use.",
                   ["host", "kind"], registry=REGISTRY)
HOST_MEMORY = Gauge("kubekvm_host_memory_bytes", "A host's memory: its capacity, and what its machines use.",
                    ["host", "kind"], registry=REGISTRY)
SHARED_STATE_SECONDS = Gauge("kubekvm_shared_state_read_seconds",
                             "How long the last read of the shared gauges took.", registry=REGISTRY)

# What a request that matched no route is called (a 404 scan must not make one series per path).
UNMATCHED = "unmatched"


def route_of(scope: Scope) -> str:
    """The route template that answered (`/labs/{name}`), never the path itself."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class RequestMetrics:
    """Counts and times every HTTP request by route template, method and status class.

    Pure ASGI and outermost but for the security headers, so it sees the status actually sent,
    refusals of the inner middlewares included. Websockets and streams are counted when they
    start (their duration says how long a page stayed open, not how fast we answered)."""

    _METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        streaming = False

        async def sending(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = dict(message.get("headers") or [])
                streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
                if streaming:  # a live stream: counted now, as it may stay open for hours
                    _count(scope, status, started)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if not streaming:
                _count(scope, status, started)


def _count(scope: Scope, status: int, started: float) -> None:
    method = scope.get("method", "GET")
    method = method if method in RequestMetrics._METHODS else "OTHER"
    route = route_of(scope)
    HTTP_REQUESTS.labels(route=route, method=method, status=f"{status // 100}xx").inc()
    HTTP_DURATION.labels(route=route, method=method).observe(time.perf_counter() - started)
    if status >= 500:
        error(kind="http")


# When this replica last answered failures (for the Operations page's "last hour"), bounded.
_recent: deque[float] = deque(maxlen=10_000)


def error(*, kind: str) -> None:
    """A failure nothing handled: counted, and remembered for the Operations page."""
    ERRORS.labels(kind=kind).inc()
    _recent.append(time.monotonic())


def recent_errors(*, within: float) -> int:
    since = time.monotonic() - within
    return sum(1 for at in _recent if at >= since)


_feed_lag: list[float] = []  # the last lag measured, once one was


def set_feed_lag(seconds: float) -> None:
    FEED_LAG.set(seconds)
    _feed_lag[:] = [seconds]


def feed_lag() -> float | None:
    """The event feed's last lag (None before it read any change)."""
    return _feed_lag[0] if _feed_lag else None


def feed_restarts() -> int:
    return int(sum(s.value for family in FEED_RESTARTS.collect() for s in family.samples
                   if s.name.endswith("_total")))


SharedReader = Callable[[], Awaitable[None]]


async def metrics_endpoint(request: Request) -> Response:
    """`/metrics`: for admins and scrape tokens only. The shared gauges are read first, by the
    replica that exports them, within a deadline (a slow database leaves the last figures)."""
    actor = request.state.actor
    if actor.kind == ActorKind.ANONYMOUS:
        return PlainTextResponse("Metrics need an admin's or a scrape token (Authorization: Bearer ...).",
                                 status_code=401, headers={"WWW-Authenticate": 'Bearer realm="kubekvm"'})
    if not (actor.kind == ActorKind.SCRAPER or actor.is_admin):
        return PlainTextResponse("Metrics are for admins and scrape tokens.", status_code=403)
    services = getattr(request.app.state, "services", None)
    if services is not None:
        FEED_HEALTHY.set(1 if services.feed.healthy else 0)
    connection = getattr(request.app.state, "connection", None)
    if connection is not None:
        DATABASE_UP.set(1 if await connection.ping() else 0)
    reader: SharedReader | None = getattr(request.app.state, "shared_metrics", None)
    if reader is not None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(5):
                await reader()
        except (TimeoutError, Exception) as error:
            log.warning("reading the shared gauges failed: %s", error)
        SHARED_STATE_SECONDS.set(time.perf_counter() - started)
    body = await asyncio.to_thread(generate_latest, REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def set_labelled(gauge: Gauge, values: dict[tuple[str, ...], float]) -> None:
    """Replace every series of `gauge` with `values` (a state that emptied drops to absent,
    not to a stale count)."""
    gauge.clear()
    for labels, value in values.items():
        gauge.labels(*labels).set(value)


def figures() -> dict[str, Any]:
    """This replica's figures for the Operations page, read from the registry."""
    out: dict[str, Any] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out
