"""The agent when libvirtd misbehaves: it drops the connection, refuses new ones, or does not
answer a call. libvirt's test driver runs the domains (real libvirt semantics and events); a
thin wrapper around each connection plays the faults the driver cannot: a connection closed
under the agent ("client socket is closed", as after libvirtd's keepalive timeout), refused
reconnections, and a call that hangs until the test lets it go.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import libvirt
import pytest
from tests.support.waiting import wait_until_async

from agent.hypervisor import (
    MAX_CALLS_PER_CONNECTION,
    MAX_STUCK_CALLS,
    Hypervisor,
    HypervisorError,
    HypervisorTimeout,
    HypervisorUnavailable,
    ThreadPool,
    connection_lost,
)

TEST_URI = "test:///default"
Make = Callable[..., Any]


class FakeLibvirtError(libvirt.libvirtError):
    """A libvirt error with the code and domain libvirt gives the real one."""

    def __init__(self, message: str, *, code: int, domain: int) -> None:
        super().__init__(message)
        self.code, self.domain, self.message = code, domain, message

    def get_error_code(self) -> int:
        return self.code

    def get_error_domain(self) -> int:
        return self.domain

    def get_error_message(self) -> str:
        return self.message


def socket_closed() -> FakeLibvirtError:
    # What libvirt's RPC client raises on a connection libvirtd has dropped.
    return FakeLibvirtError("internal error: client socket is closed",
                            code=libvirt.VIR_ERR_INTERNAL_ERROR, domain=libvirt.VIR_FROM_RPC)


@dataclass
class Hold:
    """Holds the first call that matches until released (or 30 s, so no thread outlives a test)."""

    matches: Callable[[str, tuple[Any, ...]], bool]
    once: bool = True
    held: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


@dataclass
class Libvirtd:
    """The faults, shared by every connection a ``FaultyHypervisor`` opens."""

    generation: int = 0  # connections opened in an older generation are closed
    cut_on: str | None = None  # the next call of this method closes every connection first
    cut_always: str | None = None  # every call of this method does
    refuse: int = 0  # connection attempts still to refuse
    opened: int = 0
    refused: int = 0
    cuts: int = 0
    holds: list[Hold] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cut(self) -> None:
        self.generation += 1
        self.cuts += 1

    def hold(self, matches: Callable[[str, tuple[Any, ...]], bool], *, once: bool = True) -> Hold:
        hold = Hold(matches, once)
        self.holds.append(hold)
        return hold

    def before(self, method: str, args: tuple[Any, ...], generation: int) -> None:
        with self.lock:
            if method in (self.cut_on, self.cut_always):
                if self.cut_on == method:
                    self.cut_on = None
                self.cut()
            if generation != self.generation:
                raise socket_closed()
            hold = next((h for h in self.holds if h.matches(method, args)), None)
            if hold is not None and hold.once:
                self.holds.remove(hold)
        if hold is not None:
            hold.held.set()
            hold.released.wait(30)


class _Faulty:
    """Forwards to a libvirt object, through the faults."""

    def __init__(self, real: Any, libvirtd: Libvirtd, generation: int) -> None:
        self._real, self._libvirtd, self._generation = real, libvirtd, generation

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._libvirtd.before(name, args, self._generation)
            return self._wrap(attribute(*args, **kwargs))

        return call

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, libvirt.virDomain):
            return _Faulty(value, self._libvirtd, self._generation)
        if isinstance(value, list):
            return [self._wrap(item) for item in value]
        return value


class FaultyConnection(_Faulty):
    def isAlive(self) -> int:
        return int(self._generation == self._libvirtd.generation)

    # Closing must work on a dead connection, as libvirt's does.
    def close(self) -> int:
        return int(self._real.close())

    def domainEventDeregisterAny(self, callback_id: int) -> None:
        self._real.domainEventDeregisterAny(callback_id)


class FaultyHypervisor(Hypervisor):
    def __init__(self, libvirtd: Libvirtd, **options: Any) -> None:
        super().__init__(TEST_URI, **options)
        self.libvirtd = libvirtd

    def _libvirt_open(self) -> libvirt.virConnect:
        with self.libvirtd.lock:
            if self.libvirtd.refuse > 0:
                self.libvirtd.refuse -= 1
                self.libvirtd.refused += 1
                raise FakeLibvirtError(
                    "Failed to connect socket to '/run/libvirt/libvirt-sock': Connection refused",
                    code=libvirt.VIR_ERR_SYSTEM_ERROR, domain=libvirt.VIR_FROM_RPC)
            self.libvirtd.opened += 1
            generation = self.libvirtd.generation
        return FaultyConnection(super()._libvirt_open(), self.libvirtd, generation)  # type: ignore[return-value]


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    code = getattr(predicate, "__code__", None)  # the awaited condition, named by where it is written
    what = f"the condition at line {code.co_firstlineno}" if code else repr(predicate)
    await wait_until_async(predicate, timeout=timeout, interval=0.02, what=what)


@pytest.fixture
def own_connection() -> Iterator[libvirt.virConnect]:
    """The test's own connection to the test driver. It also keeps the driver's shared state
    alive while the agent has none open (the driver drops it with its last connection)."""
    connection = libvirt.open(TEST_URI)
    yield connection
    connection.close()


# -- telling a lost connection from a failed call ---------------------------------------

def test_connection_errors_are_told_from_machine_errors() -> None:
    connection = libvirt.open(TEST_URI)
    try:
        assert connection_lost(socket_closed(), connection)
        for code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC):
            assert connection_lost(FakeLibvirtError("x", code=code, domain=libvirt.VIR_FROM_NONE),
                                   connection)
        keepalive = FakeLibvirtError("internal error: connection closed due to keepalive timeout",
                                     code=libvirt.VIR_ERR_INTERNAL_ERROR, domain=libvirt.VIR_FROM_RPC)
        assert connection_lost(keepalive, connection)
        # A real error from a live connection is the machine's.
        with pytest.raises(libvirt.libvirtError) as real:
            connection.lookupByName("kubekvm-no-such-domain")
        assert not connection_lost(real.value, connection)
        failed = FakeLibvirtError("internal error: process exited while connecting to monitor",
                                  code=libvirt.VIR_ERR_INTERNAL_ERROR, domain=libvirt.VIR_FROM_QEMU)
        assert not connection_lost(failed, connection)
    finally:
        connection.close()
    # The same error on a connection that says it is dead is a lost connection.
    dead = FaultyConnection(libvirt.open(TEST_URI), Libvirtd(generation=1), 0)
    try:
        assert connection_lost(failed, dead)  # type: ignore[arg-type]
    finally:
        dead.close()


# -- the hypervisor adapter ---------------------------------------------------------------

async def test_a_dropped_connection_fails_the_call_as_unavailable_and_the_next_call_reconnects() -> None:
    libvirtd = Libvirtd()
    hypervisor = FaultyHypervisor(libvirtd)
    lost: list[None] = []
    hypervisor.add_connection_listener(lambda: lost.append(None))
    try:
        await hypervisor.capacity()
        libvirtd.cut()
        libvirtd.refuse = 1
        # Whether the call finds the connection dead before or after sending it, the caller
        # learns "libvirtd unreachable", never a plain error it would blame on a machine.
        with pytest.raises(HypervisorUnavailable):
            await hypervisor.capacity()
        assert lost, "the reconciler must hear that events may have been missed"
        assert (await hypervisor.capacity()).vcpus > 0
        assert (libvirtd.opened, libvirtd.refused) == (2, 1)
        # A call that failed for its own reason stays a plain error, on the same connection.
        with pytest.raises(HypervisorError) as error:
            await hypervisor.define("<domain type='test'><name>no memory</name></domain>")
        assert not isinstance(error.value, HypervisorUnavailable)
        assert libvirtd.opened == 2
    finally:
        await hypervisor.close()


async def test_calls_spread_over_the_pool_each_connection_within_libvirtds_request_limit() -> None:
    libvirtd = Libvirtd()
    hypervisor = FaultyHypervisor(libvirtd, connections=3)
    running: dict[int, int] = {}
    most: dict[int, int] = {}
    gate = threading.Lock()
    release = threading.Event()

    def busy(connection: libvirt.virConnect) -> None:
        key = id(connection)
        with gate:
            running[key] = running.get(key, 0) + 1
            most[key] = max(most.get(key, 0), running[key])
        release.wait(10)  # a libvirt call that takes a while (in its worker thread)
        with gate:
            running[key] -= 1
        connection.getInfo()

    try:
        await hypervisor.open()
        assert hypervisor.open_connections == 1  # an idle agent holds one connection
        calls = asyncio.gather(*(hypervisor._call(busy) for _ in range(4 * MAX_CALLS_PER_CONNECTION)))
        # Three connections, every slot of each taken (the rest wait), none beyond.
        await wait_for(lambda: sum(running.values()) == 3 * MAX_CALLS_PER_CONNECTION)
        release.set()
        await calls
        assert hypervisor.open_connections == 3
        assert libvirtd.opened == 3
    finally:
        release.set()
        await hypervisor.close()
    # libvirtd's default max_client_requests is 5: one more and it stops reading the client.
    assert sorted(most.values()) == [MAX_CALLS_PER_CONNECTION] * 3
    assert MAX_CALLS_PER_CONNECTION < 5


async def test_one_connection_lost_leaves_the_others_working() -> None:
    """A connection of the pool dies under a call (a keepalive timeout of that client): that
    call fails as unavailable, the calls on the other connections are neither failed nor held
    up, the events' connection stays (no resync: no event was missed), and the dead
    connection is replaced when calls need it."""
    libvirtd = Libvirtd()
    hypervisor = FaultyHypervisor(libvirtd, connections=2)
    resyncs: list[None] = []
    hypervisor.add_connection_listener(lambda: resyncs.append(None))
    first_held = libvirtd.hold(lambda method, _: method == "getInfo", once=False)

    def dies(_connection: libvirt.virConnect) -> None:
        raise socket_closed()

    try:
        await hypervisor.open()
        events_link = hypervisor._links[0]
        # Fill the first connection, so the next call opens the second.
        fillers = [asyncio.create_task(hypervisor.capacity()) for _ in range(MAX_CALLS_PER_CONNECTION)]
        await wait_for(lambda: first_held.held.is_set() and events_link.in_flight == MAX_CALLS_PER_CONNECTION)
        with pytest.raises(HypervisorUnavailable, match="connection lost"):
            await hypervisor._call(dies, what="a call on the second connection")
        assert hypervisor._links[1] is None  # retired
        assert not any(filler.done() for filler in fillers)
        first_held.released.set()
        assert all(capacity.vcpus > 0 for capacity in await asyncio.gather(*fillers))
        assert hypervisor._links[0] is events_link and resyncs == []
        assert (await hypervisor.capacity()).vcpus > 0
    finally:
        first_held.released.set()
        await hypervisor.close()


async def test_the_events_connection_lost_is_reopened_first_and_asks_for_a_resync(
        own_connection: libvirt.virConnect) -> None:
    libvirtd = Libvirtd()
    hypervisor = FaultyHypervisor(libvirtd, connections=2)
    resyncs: list[None] = []
    events: list[tuple[str, str]] = []
    hypervisor.add_connection_listener(lambda: resyncs.append(None))
    hypervisor.add_lifecycle_listener(lambda name, state: events.append((name, state)))
    try:
        await hypervisor.open()
        first = hypervisor._links[0]
        libvirtd.cut()  # every connection dies (libvirtd restarted)
        assert (await hypervisor.capacity()).vcpus > 0
        assert resyncs == [None]
        assert hypervisor._links[0] is not None and hypervisor._links[0] is not first
        assert hypervisor._links[0].callback_id is not None and hypervisor._links[0].callback_id is not None
        # Events flow again on the new connection.
        own_connection.lookupByName("test").suspend()
        own_connection.lookupByName("test").resume()
        await wait_for(lambda: ("test", "running") in events)
    finally:
        await hypervisor.close()


async def test_a_hung_call_times_out_and_its_connection_is_replaced() -> None:
    libvirtd = Libvirtd()
    hypervisor = FaultyHypervisor(libvirtd, call_timeout=0.3)
    hold = libvirtd.hold(lambda method, _: method == "getCapabilities")
    try:
        await hypervisor.open()
        with pytest.raises(HypervisorTimeout, match=r"did not answer within 0\.3 s"):
            await hypervisor.capabilities()
        assert hypervisor.stuck_calls == 1
        # Nothing waits for the stuck thread: the next call runs on a new connection.
        assert (await hypervisor.capacity()).vcpus > 0
        assert libvirtd.opened == 2
        hold.released.set()
        await wait_for(lambda: hypervisor.stuck_calls == 0)
    finally:
        hold.released.set()
        await hypervisor.close()


async def test_threads_stuck_in_libvirt_are_bounded() -> None:
    libvirtd = Libvirtd()
    hypervisor = FaultyHypervisor(libvirtd, call_timeout=0.2)
    hold = libvirtd.hold(lambda method, _: method == "getInfo", once=False)
    try:
        while hypervisor.stuck_calls < MAX_STUCK_CALLS:
            results = await asyncio.gather(
                *(hypervisor.capacity() for _ in range(MAX_CALLS_PER_CONNECTION)),
                return_exceptions=True)
            assert all(isinstance(result, HypervisorTimeout) for result in results)
        # libvirtd answers nothing: the agent stops feeding it threads, and says why at once.
        with pytest.raises(HypervisorUnavailable, match=f"{MAX_STUCK_CALLS} calls unanswered"):
            await asyncio.wait_for(hypervisor.capacity(), 0.1)
        libvirtd.holds.clear()
        hold.released.set()
        await wait_for(lambda: hypervisor.stuck_calls == 0)
        assert (await hypervisor.capacity()).vcpus > 0
    finally:
        hold.released.set()
        await hypervisor.close()


# -- the reconciler -----------------------------------------------------------------------

async def running_machines(make_rig: Make, make_assignment: Make, lab: str,
                           count: int) -> tuple[Any, Libvirtd, list[Any]]:
    """A reconciler over a faulty libvirtd that has made and started ``count`` machines."""
    libvirtd = Libvirtd()
    rig = await make_rig(hypervisor=FaultyHypervisor(libvirtd), resync_interval=60.0)
    machines = [make_assignment(lab, i) for i in range(count)]
    rig.reconciler.replace_desired(machines)
    await rig.reports.wait_states({m.machine_id: "running" for m in machines})
    await rig.reconciler.wait_idle()
    return rig, libvirtd, machines


async def test_a_lost_libvirt_connection_is_not_a_machine_error(
    make_rig: Make, make_assignment: Make, lab: str, own_connection: libvirt.virConnect
) -> None:
    """libvirtd drops the agent while it creates two machines and re-reads three running ones,
    then refuses it for a while; a guest powers itself off meanwhile. No machine is reported
    ERROR, the running ones are never reported otherwise, and once the agent is back it
    reports what libvirt then shows."""
    rig, libvirtd, running = await running_machines(make_rig, make_assignment, lab, 3)
    mark = len(rig.reports.sent)

    libvirtd.cut_on = "defineXML"
    libvirtd.refuse = 1000
    created = [make_assignment(lab, i) for i in range(3, 5)]
    rig.reconciler.request_resync()
    rig.reconciler.update_desired(created)
    await wait_for(lambda: libvirtd.cuts == 1 and libvirtd.refused >= 2)
    own_connection.lookupByName(running[1].domain_name).destroy()  # the guest powers off
    libvirtd.refuse = 0

    await rig.reports.wait_states({
        running[0].machine_id: "running", running[1].machine_id: "shutoff",
        running[2].machine_id: "running",
        **{m.machine_id: "running" for m in created},
    }, timeout=30)
    await rig.reconciler.wait_idle()
    after = rig.reports.sent[mark:]
    assert [r for r in after if r.state == "error"] == []
    assert {r.state for r in after if r.machine_id in (running[0].machine_id, running[2].machine_id)} <= {"running"}
    assert [r.state for r in after if r.machine_id == running[1].machine_id] == ["shutoff"]
    waiting = [r for r in after if r.state == "pending" and "waiting for libvirtd" in (r.message or "")]
    assert waiting and {r.machine_id for r in waiting} <= {m.machine_id for m in created}
    assert libvirtd.opened >= 2


async def test_a_snapshot_while_libvirtd_is_away_reports_nothing_it_does_not_know(
    make_rig: Make, make_assignment: Make, lab: str, own_connection: libvirt.virConnect
) -> None:
    """The server link comes back (a fresh snapshot: "tell me everything again") while
    libvirtd is away: the agent does not know what the machines do, so it says nothing
    (the server keeps "running") until libvirtd answers."""
    rig, libvirtd, machines = await running_machines(make_rig, make_assignment, lab, 2)
    mark = len(rig.reports.sent)

    libvirtd.cut()
    libvirtd.refuse = 1000
    rig.reconciler.replace_desired(machines)
    await wait_for(lambda: libvirtd.refused >= 3)
    await rig.reconciler.wait_idle()
    assert rig.reports.sent[mark:] == []
    libvirtd.refuse = 0
    await rig.reports.wait(lambda: len(rig.reports.sent) >= mark + 2, timeout=20)
    assert {(r.machine_id, r.state) for r in rig.reports.sent[mark:]} == {
        (m.machine_id, "running") for m in machines}


async def test_a_libvirtd_that_keeps_dropping_the_agent_is_retried_with_backoff(
    make_rig: Make, make_assignment: Make, lab: str, own_connection: libvirt.virConnect
) -> None:
    """Each lost connection asks for a resync (events were missed); a resync that loses the
    connection again must still back off, not reconnect in a tight loop."""
    rig, libvirtd, _ = await running_machines(make_rig, make_assignment, lab, 1)
    libvirtd.cut_always = "listAllDomains"
    opened = libvirtd.opened
    rig.reconciler.request_resync()
    await wait_for(lambda: libvirtd.opened >= opened + 2)
    # The passing of time is what is tested here: how often the agent tries in 2 s.
    await asyncio.sleep(2.0)
    attempts = libvirtd.opened - opened
    assert attempts <= 8, f"{attempts} connections in about 2 s: no backoff"
    libvirtd.cut_always = None


async def test_a_hung_libvirt_call_holds_up_only_its_own_machine(make_rig: Make, make_assignment: Make,
                                                                 lab: str) -> None:
    libvirtd = Libvirtd()
    hypervisor = FaultyHypervisor(libvirtd, call_timeout=2.0)
    rig = await make_rig(hypervisor=hypervisor)
    stuck, free = make_assignment(lab, 0), make_assignment(lab, 1)
    hold = libvirtd.hold(lambda method, args: method == "defineXML"
                         and f"<name>{stuck.domain_name}</name>" in args[0])
    try:
        rig.reconciler.replace_desired([stuck, free])
        await wait_for(hold.held.is_set)
        # The other machine is made and started while the first one's define hangs (its
        # thread stays stuck until the test releases it, timeout or not).
        await rig.reports.wait_states({free.machine_id: "running"})
        assert not hold.released.is_set()
        # The hung call fails with a clear timeout, not as a machine error, and the machine
        # is tried again on a new connection.
        await rig.reports.wait(lambda: any(
            state == "pending" and "defineXML did not answer within 2 s" in (message or "")
            for _, machine_id, state, message in rig.reports.states if machine_id == stuck.machine_id))
        hold.released.set()
        await rig.reports.wait_states({stuck.machine_id: "running", free.machine_id: "running"})
        await rig.reconciler.wait_idle()
        assert "error" not in {r.state for r in rig.reports.sent}
        await wait_for(lambda: hypervisor.stuck_calls == 0)
    finally:
        hold.released.set()


def test_a_thread_stuck_in_libvirt_does_not_keep_the_agent_from_exiting() -> None:
    """A stopping agent must exit even when a libvirt call never returns (the standard
    ThreadPoolExecutor joins its threads at exit, and would wait for ever)."""
    program = (
        "import threading\n"
        "from agent.hypervisor import ThreadPool\n"
        "pool = ThreadPool(2, name='libvirt')\n"
        "started = threading.Event()\n"
        "pool.submit(lambda: (started.set(), threading.Event().wait()))\n"
        "started.wait()\n"
        "print('exiting', flush=True)\n"
    )
    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                              timeout=30)
    assert (finished.returncode, finished.stdout) == (0, "exiting\n"), finished.stderr


async def test_the_pool_runs_calls_in_its_threads_and_ends_them_on_shutdown() -> None:
    pool = ThreadPool(MAX_CALLS_PER_CONNECTION, name="libvirt-test")
    names = await asyncio.gather(*(asyncio.wrap_future(pool.submit(lambda: threading.current_thread().name))
                                   for _ in range(8)))
    assert set(names) <= {f"libvirt-test-{i}" for i in range(MAX_CALLS_PER_CONNECTION)}
    with pytest.raises(ValueError, match="boom"):
        await asyncio.wrap_future(pool.submit(lambda: int("boom")))
    pool.shutdown()
    assert not any(thread.name.startswith("libvirt-test-") for thread in threading.enumerate())
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


async def test_a_call_cancelled_as_it_completes_is_cancelled() -> None:
    """A stopping agent cancels its passes; one whose libvirt call returns at that very moment
    must still end (Python 3.11's asyncio.wait_for would return the result and swallow the
    cancellation, and a reconciler waiting for its tasks would wait for ever)."""
    hypervisor = Hypervisor(TEST_URI)
    await hypervisor.open()
    link = hypervisor._links[0]
    assert link is not None
    submitted: list[Any] = []
    submit = link.executor.submit

    def recording(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        submitted.append(future := submit(fn, *args, **kwargs))
        return future

    link.executor.submit = recording  # type: ignore[method-assign]
    release, delivered = threading.Event(), threading.Event()
    try:
        task = asyncio.create_task(hypervisor._call(lambda connection: release.wait(10)))
        await wait_for(lambda: bool(submitted))
        # Registered after the adapter's own callbacks, so it runs after them: once it has,
        # the result is on its way to the loop.
        submitted[0].add_done_callback(lambda _: delivered.set())
        release.set()
        assert delivered.wait(10)
        task.cancel()  # before the loop has seen the result
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
    finally:
        release.set()
        await hypervisor.close()


async def test_a_started_machine_is_reported_running_before_its_pass_ends(make_rig: Make, make_assignment: Make,
                                                                          lab: str) -> None:
    """Once the guest has started, its last calls (recording the generation) may wait behind a
    class's other starts: the running report must not wait for them, nor be sent twice."""
    libvirtd = Libvirtd()
    rig = await make_rig(hypervisor=FaultyHypervisor(libvirtd))
    machine = make_assignment(lab, 0)
    hold = libvirtd.hold(lambda method, _: method == "setMetadata")
    try:
        rig.reconciler.replace_desired([machine])
        await wait_for(hold.held.is_set)
        await rig.reports.wait_states({machine.machine_id: "running"})
        assert hold.held.is_set() and not hold.released.is_set()  # the pass has not ended
        hold.released.set()
        await rig.reconciler.wait_idle()
        running = [r for r in rig.reports.sent if r.machine_id == machine.machine_id and r.state == "running"]
        assert len(running) == 1 and running[0].power_generation == machine.power_generation
    finally:
        hold.released.set()
