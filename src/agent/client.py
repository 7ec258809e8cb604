"""Client: the agent's GraphQL-over-websocket link to the KubeKVM server.

One websocket (subprotocol ``graphql-transport-ws``) carries everything: on each
(re)connection the agent registers its host, then subscribes to ``hostAssignments``. The
first batch is a SNAPSHOT that replaces the reconciler's desired set; later CHANGE batches
upsert assignments and drop the ``removed`` machine ids. Meanwhile a heartbeat mutation
(with the re-scanned image list) goes out every ``heartbeat_interval``, the outbox is
drained through ``reportMachineStates`` (the reports of a few milliseconds in one request)
and ``reportOrphans``, and ``consoleRequests`` hands
each console a browser opens on this host's machines to the tunnels (``agent.console``).

Any failure closes the connection and the client moves on to the next server URL after an
exponential, jittered backoff. Machines are never touched because the server went away:
the reconciler keeps the last desired set and the outbox keeps the reports until later.
Every document sent is in ``agent.documents``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport

from agent import __version__, documents, metrics
from agent.assignment import Assignment, AssignmentError
from agent.backoff import backoff_delay
from agent.console import ConsoleRequest, ConsoleRequestError
from agent.machine_state import StateReport
from agent.outbox import Outbox

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 15.0
# How long the first report of a burst waits for more to go in the same request, and the most
# one request carries (the server takes up to 500).
REPORT_WINDOW = 0.005
REPORTS_PER_BATCH = 100

class DesiredSet(Protocol):
    """Where assignments go: the reconciler."""

    def replace_desired(self, assignments: list[Assignment]) -> None: ...

    def update_desired(self, assignments: list[Assignment], removed: list[str]) -> None: ...


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What registration tells the server about this host."""

    name: str
    vcpus: int
    memory_mib: int
    domain_type: str


def websocket_url(server: str) -> str:
    """``host:port``, ``http(s)://host`` or ``ws(s)://host/path`` -> the GraphQL ws URL."""
    server = server.strip().rstrip("/")
    scheme, separator, rest = server.partition("://")
    if not separator:
        scheme, rest = "ws", server
    scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())
    if scheme not in ("ws", "wss"):
        raise ValueError(f"unsupported server URL {server!r}: use ws://, wss://, http:// or https://")
    if "/" not in rest:
        rest = f"{rest}/graphql"
    return f"{scheme}://{rest}"


class ServerClient:
    def __init__(
        self,
        *,
        urls: Sequence[str],
        host: HostFacts,
        images: Callable[[], list[str]],
        desired: DesiredSet,
        outbox: Outbox,
        token: str | None = None,
        token_source: Callable[[], str | None] | None = None,
        heartbeat_interval: float = 10.0,
        backoff_cap: float = 10.0,
        consoles: Callable[[ConsoleRequest], None] | None = None,
        pulls: Callable[[], list[dict[str, Any]]] | None = None,
        drop_images: Callable[[list[str]], object] | None = None,
        report_window: float = REPORT_WINDOW,
    ) -> None:
        if not urls:
            raise ValueError("at least one server URL is needed")
        self.urls = [websocket_url(url) for url in urls]
        self.host = host
        self.images = images
        self.desired = desired
        self.outbox = outbox
        self.token_source = token_source or (lambda: token)
        self.heartbeat_interval = heartbeat_interval
        self.backoff_cap = backoff_cap
        self.consoles = consoles
        # Store images: the pulls in progress go out with each heartbeat, and the answer names
        # the host's images the store has garbage-collected, which `drop_images` deletes.
        self.pulls = pulls
        self.drop_images = drop_images
        self.report_window = report_window
        # Set when the server turns out to know only the one-by-one reportMachineState.
        self._single_reports = False
        self.connected = asyncio.Event()
        self._cursor: str | None = None

    async def run(self) -> None:
        """Connects, and reconnects, until cancelled."""
        failures = 0
        index = 0
        while True:
            url = self.urls[index]
            try:
                await self._session(url)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("server %s: %s", url, _describe(error))
            if self.connected.is_set():
                failures = 0
            else:
                metrics.SERVER_CONNECTS.labels(outcome="failed").inc()
            self.connected.clear()
            metrics.SERVER_CONNECTED.set(0)
            failures += 1
            index = (index + 1) % len(self.urls)
            await asyncio.sleep(backoff_delay(failures - 1, cap=self.backoff_cap))

    async def _session(self, url: str) -> None:
        self._single_reports = False  # this server may know the batches
        token = self.token_source()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        init_payload = {"authorization": f"Bearer {token}"} if token else {}
        transport = WebsocketsTransport(
            url=url,
            headers=headers,
            init_payload=init_payload,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            connect_timeout=REQUEST_TIMEOUT,
            ack_timeout=REQUEST_TIMEOUT,
        )
        async with Client(transport=transport, fetch_schema_from_transport=False) as session:
            images = self.images()
            registered = await _execute(session, documents.REGISTER_HOST, documents.register_host(
                name=self.host.name, vcpus=self.host.vcpus, memory_mib=self.host.memory_mib,
                images=images, domain_type=self.host.domain_type, agent_version=__version__,
            ))
            log.info(
                "connected to %s as host %s (ready: %s; %d images)", url, self.host.name,
                registered["registerHost"].get("ready"), len(images),
            )
            self.connected.set()
            metrics.SERVER_CONNECTED.set(1)
            metrics.SERVER_CONNECTS.labels(outcome="ok").inc()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._heartbeats(session))
                group.create_task(self._drain(session))
                if self.consoles is not None:
                    group.create_task(self._console_requests(session, self.consoles))
                await self._assignments(session)
                raise ConnectionError("assignment stream ended")

    async def _assignments(self, session: Any) -> None:
        request = GraphQLRequest(
            documents.HOST_ASSIGNMENTS,
            variable_values=documents.host_assignments(host=self.host.name, cursor=self._cursor),
        )
        async for batch in session.subscribe(request):
            self._apply(batch["hostAssignments"])

    async def _console_requests(self, session: Any, serve: Callable[[ConsoleRequest], None]) -> None:
        """Each console a browser opens on this host's machines, handed to the tunnels. A server
        without consoles (older) refuses the subscription: the rest of the link carries on."""
        request = GraphQLRequest(documents.CONSOLE_REQUESTS,
                                 variable_values=documents.console_requests(host=self.host.name))
        try:
            async for result in session.subscribe(request):
                try:
                    serve(ConsoleRequest.from_graphql(result["consoleRequests"]))
                except ConsoleRequestError as error:
                    log.warning("%s", error)
        except TransportQueryError as error:
            log.warning("the server offers no consoles: %s", _describe(error))
            await asyncio.Event().wait()
        raise ConnectionError("console request stream ended")

    def _apply(self, batch: dict[str, Any]) -> None:
        assignments = []
        for payload in batch.get("assignments") or []:
            try:
                assignments.append(Assignment.from_graphql(payload))
            except AssignmentError as error:
                log.warning("rejected assignment: %s", error)
                if error.machine_id:
                    self.outbox.put_state(error.machine_id, "error", str(error))
        removed = [str(machine_id) for machine_id in batch.get("removed") or []]
        if batch.get("kind") == "SNAPSHOT":
            log.info("snapshot: %d machines assigned", len(assignments))
            self.desired.replace_desired(assignments)
        else:
            self.desired.update_desired(assignments, removed)
        self._cursor = batch.get("cursor") or self._cursor

    async def _heartbeats(self, session: Any) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            answer = await _execute(session, documents.HEARTBEAT, documents.heartbeat(
                name=self.host.name, images=self.images(), pulls=self.pulls() if self.pulls else None))
            dropped = ((answer or {}).get("heartbeat") or {}).get("dropImages") or []
            if dropped and self.drop_images is not None:
                self.drop_images([str(name) for name in dropped])

    async def _drain(self, session: Any) -> None:
        while True:
            await self.outbox.wait()
            # Reports come in bursts (a class's machines start within seconds): waiting a few
            # milliseconds lets one request carry the burst, not the first report alone.
            await asyncio.sleep(self.report_window)
            while batch := self.outbox.take_states(REPORTS_PER_BATCH):
                try:
                    await self._send_states(session, batch)
                except BaseException:
                    self.outbox.return_states(batch)
                    raise
            orphans = self.outbox.take_orphans()
            if orphans is not None:
                try:
                    await _execute(session, documents.REPORT_ORPHANS,
                                   documents.report_orphans(host=self.host.name, domains=orphans))
                except TransportQueryError as error:
                    log.warning("server refused the orphan list: %s", _describe(error))
                except BaseException:
                    self.outbox.return_orphans(orphans)
                    raise

    async def _send_states(self, session: Any, batch: list[StateReport]) -> None:
        """One ``reportMachineStates``; a report the server refuses (e.g. its machine is gone)
        is logged and dropped: resending it would not help, and the next observation reports
        again. A server older than the batches gets the reports one by one."""
        if self._single_reports:
            for report in batch:
                await self._send_state(session, report)
            return
        try:
            result = await _execute(session, documents.REPORT_MACHINE_STATES, documents.report_machine_states(
                host=self.host.name, reports=[documents.machine_state_report(
                    machine_id=report.machine_id, state=report.state, message=report.message,
                    power_generation=report.power_generation, cpu_seconds=report.cpu_seconds)
                    for report in batch]))
        except TransportQueryError as error:
            if not _batches_unknown(error):
                log.warning("server refused %d state reports: %s", len(batch), _describe(error))
                return
            log.info("the server knows no reportMachineStates (older): reports go one by one")
            self._single_reports = True
            for report in batch:
                await self._send_state(session, report)
            return
        for outcome in result["reportMachineStates"]:
            if not outcome["accepted"]:
                log.warning("server refused state of machine %s: %s (%s)", outcome["machineId"],
                            outcome["message"], outcome["code"])

    async def _send_state(self, session: Any, report: StateReport) -> None:
        try:
            await _execute(session, documents.REPORT_MACHINE_STATE, documents.report_machine_state(
                machine_id=report.machine_id, host=self.host.name, state=report.state,
                message=report.message, power_generation=report.power_generation,
                cpu_seconds=report.cpu_seconds))
        except TransportQueryError as error:
            log.warning("server refused state of machine %s: %s", report.machine_id, _describe(error))


def _batches_unknown(error: TransportQueryError) -> bool:
    """Whether the server refused the batch document itself (it has no reportMachineStates)."""
    said = " ".join(str(each.get("message")) for each in error.errors or []) or str(error)
    return "reportMachineStates" in said or "MachineStateReportInput" in said


async def _execute(session: Any, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    async with asyncio.timeout(REQUEST_TIMEOUT):
        result: dict[str, Any] = await session.execute(
            GraphQLRequest(query, variable_values=variables)
        )
    return result


def _describe(error: BaseException) -> str:
    if isinstance(error, TransportQueryError) and error.errors:
        first = error.errors[0]
        code = (first.get("extensions") or {}).get("code")
        return f"{first.get('message')} ({code})" if code else str(first.get("message"))
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
