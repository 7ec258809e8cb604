"""The server link against a small strawberry server that implements the agent's contract.

The schema below is the contract the real server implements (mutations, the assignment
subscription, enums); it is served over a real websocket by uvicorn on 127.0.0.1, so the
client's GraphQL documents (``agent.documents``) are validated and its reconnection and
queuing really happen. ``test_documents`` checks the same documents against the real
``schema.graphql``, and that this contract agrees with it.
"""

from __future__ import annotations

import asyncio
import enum
import signal
import socket
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import strawberry
import uvicorn
from strawberry.asgi import GraphQL
from tests.support.waiting import wait_until_async

from agent.assignment import Assignment
from agent.backoff import backoff_delay
from agent.client import HostFacts, ServerClient, websocket_url
from agent.outbox import Outbox, StateReport

# -- the contract -----------------------------------------------------------------------


@strawberry.enum
class ObservedMachineState(enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SHUTOFF = "SHUTOFF"
    PAUSED = "PAUSED"
    CRASHED = "CRASHED"
    ABSENT = "ABSENT"
    ERROR = "ERROR"


@strawberry.enum
class DesiredMachineState(enum.Enum):
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    ABSENT = "ABSENT"


@strawberry.enum
class AssignmentBatchKind(enum.Enum):
    SNAPSHOT = "SNAPSHOT"
    CHANGE = "CHANGE"


@strawberry.type
class Host:
    name: str
    ready: bool
    drop_images: list[str] = strawberry.field(default_factory=list)


@strawberry.type
class Machine:
    id: strawberry.ID


@strawberry.type
class AssignmentTemplate:
    name: str
    image: str
    os: str
    vcpus: int
    memory_mib: int
    disk_gib: int


@strawberry.type(name="Assignment")
class AssignmentType:
    machine_id: strawberry.ID
    vm_name: str
    deployment: str
    index: int
    desired: DesiredMachineState
    reset_generation: int
    power_generation: int
    template: AssignmentTemplate
    publish_job: str | None = None
    request_id: str | None = None


@strawberry.type
class AssignmentBatch:
    kind: AssignmentBatchKind
    cursor: str | None
    assignments: list[AssignmentType]
    removed: list[strawberry.ID]


@strawberry.input
class RegisterHostInput:
    name: str
    vcpus: int
    memory_mib: int
    images: list[str]
    domain_type: str
    agent_version: str


@strawberry.input
class ImagePullInput:
    image: str
    done_bytes: float = 0
    total_bytes: float | None = None
    error: str = ""


@strawberry.input
class HeartbeatInput:
    name: str
    images: list[str] | None = None
    pulls: list[ImagePullInput] | None = None


@strawberry.input
class ReportMachineStateInput:
    machine_id: strawberry.ID
    host: str
    state: ObservedMachineState
    message: str | None = None
    power_generation: int | None = None
    cpu_seconds: float | None = None


@strawberry.input
class MachineStateReportInput:
    machine_id: strawberry.ID
    state: ObservedMachineState
    message: str | None = None
    power_generation: int | None = None
    cpu_seconds: float | None = None


@strawberry.input
class MachineStateReportsInput:
    host: str
    reports: list[MachineStateReportInput]


@strawberry.type
class MachineReportOutcome:
    machine_id: strawberry.ID
    accepted: bool
    code: str | None
    message: str | None


@strawberry.input
class ReportOrphansInput:
    host: str
    domains: list[str]


@dataclass
class FakeServer:
    """What the fake server received, and the batches it will send."""

    registrations: list[RegisterHostInput] = field(default_factory=list)
    heartbeats: list[HeartbeatInput] = field(default_factory=list)
    reports: list[tuple[str, str, str | None]] = field(default_factory=list)
    # The size of each request that carried reports (1 for each single reportMachineState).
    requests: list[int] = field(default_factory=list)
    # Machine id -> the power generation of each of its reports, in order.
    generations: dict[str, list[int | None]] = field(default_factory=dict)
    orphans: list[list[str]] = field(default_factory=list)
    connection_params: list[dict[str, Any]] = field(default_factory=list)
    authorization_headers: list[str | None] = field(default_factory=list)
    cursors: list[str | None] = field(default_factory=list)
    batches: asyncio.Queue[AssignmentBatch] = field(default_factory=asyncio.Queue)
    snapshot: list[AssignmentType] = field(default_factory=list)


def build_schema(state: FakeServer, *, batches: bool = True) -> strawberry.Schema:
    """The contract; ``batches=False``: a server older than ``reportMachineStates``."""

    def record(machine_id: str, machine_state: ObservedMachineState, message: str | None,
               power_generation: int | None) -> None:
        state.reports.append((machine_id, machine_state.value, message))
        state.generations.setdefault(machine_id, []).append(power_generation)

    @strawberry.type
    class Query:
        ping: str = "pong"

    @strawberry.type
    class Batches:
        @strawberry.mutation
        def report_machine_states(self, input: MachineStateReportsInput) -> list[MachineReportOutcome]:
            state.requests.append(len(input.reports))
            outcomes = []
            for report in input.reports:
                if report.machine_id == "unknown":
                    outcomes.append(MachineReportOutcome(machine_id=report.machine_id, accepted=False,
                                                         code="NOT_FOUND", message="no such machine"))
                    continue
                record(str(report.machine_id), report.state, report.message, report.power_generation)
                outcomes.append(MachineReportOutcome(machine_id=report.machine_id, accepted=True, code=None,
                                                     message=None))
            return outcomes

    @strawberry.type
    class Mutation(Batches if batches else object):  # type: ignore[misc]
        @strawberry.mutation
        def register_host(self, input: RegisterHostInput) -> Host:
            state.registrations.append(input)
            return Host(name=input.name, ready=True)

        @strawberry.mutation
        def heartbeat(self, input: HeartbeatInput) -> Host:
            state.heartbeats.append(input)
            return Host(name=input.name, ready=True)

        @strawberry.mutation
        def report_machine_state(self, input: ReportMachineStateInput) -> Machine:
            state.requests.append(1)
            if input.machine_id == "unknown":
                raise ValueError("no such machine")
            record(str(input.machine_id), input.state, input.message, input.power_generation)
            return Machine(id=input.machine_id)

        @strawberry.mutation
        def report_orphans(self, input: ReportOrphansInput) -> Host:
            state.orphans.append(list(input.domains))
            return Host(name=input.host, ready=True)

    @strawberry.type
    class Subscription:
        @strawberry.subscription
        async def host_assignments(
            self, host: str, cursor: str | None = None
        ) -> AsyncGenerator[AssignmentBatch, None]:
            state.cursors.append(cursor)
            yield AssignmentBatch(kind=AssignmentBatchKind.SNAPSHOT, cursor="c1",
                                  assignments=list(state.snapshot), removed=[])
            while True:
                yield await state.batches.get()

    return strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription)


class RecordingApp(GraphQL):  # type: ignore[type-arg]
    def __init__(self, state: FakeServer, *, batches: bool = True) -> None:
        super().__init__(build_schema(state, batches=batches))
        self.state = state

    async def on_ws_connect(self, context: Any) -> Any:
        self.state.connection_params.append(context.get("connection_params") or {})
        self.state.authorization_headers.append(context["request"].headers.get("authorization"))
        return await super().on_ws_connect(context)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """uvicorn serving the fake schema in this event loop; can be stopped and restarted."""

    def __init__(self, state: FakeServer, port: int, *, batches: bool = True) -> None:
        self.state = state
        self.port = port
        self.batches = batches
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = uvicorn.Config(RecordingApp(self.state, batches=self.batches), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        server = self.server
        await wait_until_async(lambda: server.started, timeout=10, what=f"uvicorn on port {self.port} to start")

    async def stop(self) -> None:
        assert self.server is not None and self.task is not None
        self.server.should_exit = True
        self.server.force_exit = True
        await self.task


@dataclass
class DesiredRecorder:
    snapshots: list[list[Assignment]] = field(default_factory=list)
    changes: list[tuple[list[Assignment], list[str]]] = field(default_factory=list)

    def replace_desired(self, assignments: list[Assignment]) -> None:
        self.snapshots.append(list(assignments))

    def update_desired(self, assignments: list[Assignment], removed: list[str]) -> None:
        self.changes.append((list(assignments), list(removed)))


def assignment_type(machine_id: str, index: int, *, desired: str = "RUNNING",
                    deployment: str = "os101") -> AssignmentType:
    return AssignmentType(
        machine_id=strawberry.ID(machine_id), vm_name=f"{deployment}-{index}",
        deployment=deployment, index=index, desired=DesiredMachineState(desired),
        reset_generation=0, power_generation=1,
        template=AssignmentTemplate(name="Tiny", image="tiny-linux.qcow2", os="linux",
                                    vcpus=1, memory_mib=64, disk_gib=1),
    )


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    code = predicate.__code__  # the awaited condition, named by where it is written
    await wait_until_async(predicate, timeout=timeout, interval=0.02,
                           what=f"the condition at {Path(code.co_filename).name}:{code.co_firstlineno}")


@pytest.fixture
async def fake_server() -> AsyncIterator[ServerProcess]:
    server = ServerProcess(FakeServer(), free_port())
    await server.start()
    yield server
    if server.server is not None and not server.task.done():  # type: ignore[union-attr]
        await server.stop()


def test_server_urls_become_graphql_websocket_urls() -> None:
    assert websocket_url("kubekvm.example:8000") == "ws://kubekvm.example:8000/graphql"
    assert websocket_url("https://kubekvm.example/") == "wss://kubekvm.example/graphql"
    assert websocket_url("ws://h:1/custom") == "ws://h:1/custom"
    with pytest.raises(ValueError, match="unsupported"):
        websocket_url("ftp://h")


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    assert 0.25 <= backoff_delay(0) <= 0.5
    assert 2.0 <= backoff_delay(3) <= 4.0
    assert all(5.0 <= backoff_delay(n) <= 10.0 for n in range(5, 40))


async def test_register_snapshot_changes_reports_and_reconnect(
    fake_server: ServerProcess,
) -> None:
    state = fake_server.state
    state.snapshot = [assignment_type("m1", 0), assignment_type("m2", 1),
                      assignment_type("bad", 2, deployment="Bad;Name")]
    desired = DesiredRecorder()
    outbox = Outbox()
    dead_port = free_port()
    client = ServerClient(
        urls=[f"127.0.0.1:{dead_port}", f"ws://127.0.0.1:{fake_server.port}/graphql"],
        host=HostFacts(name="kvm-01", vcpus=16, memory_mib=65536, domain_type="qemu"),
        images=lambda: ["tiny-linux.qcow2", "win10.qcow2"],
        desired=desired,
        outbox=outbox,
        token="s3cret",
        heartbeat_interval=0.2,
        backoff_cap=0.3,
    )
    outbox.put_state("m1", "pending", "queued before connecting")
    running = asyncio.create_task(client.run())
    try:
        # The dead first URL is skipped; registration, then the snapshot.
        await wait_until(lambda: desired.snapshots)
        registration = state.registrations[0]
        assert (registration.name, registration.vcpus, registration.memory_mib) == (
            "kvm-01", 16, 65536)
        assert registration.images == ["tiny-linux.qcow2", "win10.qcow2"]
        assert registration.domain_type == "qemu"
        assert state.connection_params[0] == {"authorization": "Bearer s3cret"}
        assert state.authorization_headers[0] == "Bearer s3cret"
        assert [a.machine_id for a in desired.snapshots[0]] == ["m1", "m2"]
        assert desired.snapshots[0][0].desired == "running"
        await wait_until(lambda: ("bad", "ERROR") in [(m, s) for m, s, _ in state.reports])
        await wait_until(lambda: ("m1", "PENDING", "queued before connecting") in state.reports)

        await state.batches.put(AssignmentBatch(
            kind=AssignmentBatchKind.CHANGE, cursor="c2",
            assignments=[assignment_type("m3", 3, desired="STOPPED")],
            removed=[strawberry.ID("m2")],
        ))
        await wait_until(lambda: desired.changes)
        upserts, removed = desired.changes[0]
        assert [(a.machine_id, a.desired) for a in upserts] == [("m3", "stopped")]
        assert removed == ["m2"]

        await outbox.machine_state(StateReport("m1", "running", None, power_generation=3))
        outbox.put_state("unknown", "running", None)  # refused, then dropped
        await outbox.orphans(["kubekvm-old-0"])
        await wait_until(lambda: ("m1", "RUNNING", None) in state.reports and state.orphans)
        assert state.orphans == [["kubekvm-old-0"]]
        # The generation the agent observed reaches the server with the state; a report
        # that does not know it says so (null), and the server keeps what it had.
        assert state.generations["m1"] == [None, 3]
        await wait_until(lambda: len(state.heartbeats) >= 2)
        assert state.heartbeats[0].images == ["tiny-linux.qcow2", "win10.qcow2"]

        # The server goes away: reports queue up (latest wins) and go out on reconnect.
        await fake_server.stop()
        await wait_until(lambda: not client.connected.is_set())
        outbox.put_state("m1", "shutoff", "first")
        outbox.put_state("m1", "crashed", "latest")
        before = len(state.reports)
        await fake_server.start()
        await wait_until(lambda: ("m1", "CRASHED", "latest") in state.reports)
        assert ("m1", "SHUTOFF", "first") not in state.reports[before:]
        await wait_until(lambda: len(desired.snapshots) == 2)
        assert len(state.registrations) == 2
        assert state.cursors == [None, "c2"]
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_the_agent_command_runs_a_snapshot_and_stops_on_sigterm(
    fake_server: ServerProcess, image_dir: Path, tmp_path: Path
) -> None:
    """The whole agent process: CLI, libvirt (its own test driver), reconciler and client."""
    state = fake_server.state
    state.snapshot = [assignment_type("m1", 0), assignment_type("m2", 1)]
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli",
        "--server", f"127.0.0.1:{fake_server.port}", "--host-name", "kvm-07",
        "--libvirt-uri", "test:///default", "--image-dir", str(image_dir),
        "--state-dir", str(tmp_path / "state"), "--heartbeat-interval", "0.2",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until(
            lambda: {("m1", "RUNNING", None), ("m2", "RUNNING", None)} <= set(state.reports),
            timeout=60,  # a deadline, not a speed target: a whole agent process starts on a loaded machine
        )
        registration = state.registrations[0]
        assert (registration.name, registration.domain_type) == ("kvm-07", "qemu")
        assert registration.images == ["tiny-linux.qcow2"]
        assert state.orphans == [[]]
        await wait_until(lambda: state.heartbeats)
        # The running machine's report says which start request it carried out (the
        # assignments' generation 1), so the server can tell "started" from "not yet".
        assert state.generations["m1"][-1] == 1
        assert sorted(p.name for p in (tmp_path / "state" / "disks").iterdir()) == [
            "kubekvm-os101-0.qcow2", "kubekvm-os101-1.qcow2"]
    finally:
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            returncode = await agent.wait()
        assert agent.stderr is not None
        log = (await agent.stderr.read()).decode()
    assert returncode == 0, log
    assert "libvirt test:///default, domain type qemu" in log
    assert "stopping; machines are left as they are" in log


def batch_client(server: ServerProcess, outbox: Outbox, *, report_window: float = 0.005) -> ServerClient:
    return ServerClient(
        urls=[f"ws://127.0.0.1:{server.port}/graphql"],
        host=HostFacts(name="kvm-02", vcpus=4, memory_mib=8192, domain_type="qemu"),
        images=lambda: [], desired=DesiredRecorder(), outbox=outbox, heartbeat_interval=60,
        backoff_cap=0.3, report_window=report_window,
    )


async def test_reports_queued_together_go_in_one_request_and_a_refused_one_spares_the_others(
    fake_server: ServerProcess,
) -> None:
    state = fake_server.state
    outbox = Outbox()
    client = batch_client(fake_server, outbox)
    running = asyncio.create_task(client.run())
    try:
        await wait_until(lambda: client.connected.is_set())
        await wait_until(lambda: not len(outbox))  # the orphan list, if any, went out
        before = len(state.requests)
        # A burst, as a class's machines start: one request carries it.
        for index in range(5):
            outbox.put(StateReport(f"m{index}", "running", None, power_generation=1))
        outbox.put_state("unknown", "running", None)
        await wait_until(lambda: sum(state.requests[before:]) == 6)
        assert state.requests[before:] == [6]
        assert {machine_id for machine_id, _, _ in state.reports} == {f"m{index}" for index in range(5)}
        assert state.generations["m4"] == [1]
        assert not len(outbox)  # the refused one is dropped, not resent for ever
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_server_without_batches_gets_the_reports_one_by_one() -> None:
    """An agent upgraded before its server (a rolling upgrade) still reports."""
    server = ServerProcess(FakeServer(), free_port(), batches=False)
    await server.start()
    outbox = Outbox()
    client = batch_client(server, outbox)
    running = asyncio.create_task(client.run())
    try:
        for index in range(3):
            outbox.put_state(f"m{index}", "pending", "creating")
        await wait_until(lambda: len(server.state.reports) == 3)
        assert server.state.requests == [1, 1, 1]
        outbox.put_state("m0", "running", None)
        await wait_until(lambda: ("m0", "RUNNING", None) in server.state.reports)
        assert server.state.requests == [1, 1, 1, 1]
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await server.stop()
