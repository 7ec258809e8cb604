"""Hypervisor: a thin asyncio adapter over a libvirt connection, that never trusts it too far.

The reconciler speaks in domain names, observed states and KubeKVM metadata; this module
translates that to libvirt-python. Every libvirt call is blocking, so each one runs in a
worker thread, and every call has a timeout (``call_timeout``): a libvirtd busy re-probing
QEMU once held an agent's first ``createXML`` for minutes, and nothing may wait on it for
ever. Lifecycle events are dispatched on the agent's own asyncio loop through ``libvirtaio``
(registered before the connection is opened, as libvirt requires).

A pool of up to ``connections`` libvirt connections (``--libvirt-connections``), each with
its own thread pool of ``MAX_CALLS_PER_CONNECTION`` threads and as many call slots: libvirtd
serves one client at most ``max_client_requests`` calls at once (5 by default) and stops
*reading* from a client that sends more; its keepalive answers then go unread and libvirtd
drops the client ("Client hit max requests limit 5", then a keepalive timeout). Four calls in
flight stay below that with room for libvirt's own keepalive and event traffic. A class's
worth of starts (each holds its call for the seconds QEMU takes to come up) therefore needs
several connections to run side by side: a call goes to the least busy open connection, and
a new one is opened only when every open one has all its slots taken, so an idle agent holds
one connection and a busy one at most ``connections`` (libvirtd runs at most ``max_workers``
calls at once, 20 by default, whatever the number of clients). The first connection also
carries the lifecycle events (registered on it alone, so each event arrives once).

A connection that is lost (libvirtd restarting, a keepalive timeout, an RPC error) or that
let a call time out is *retired*: its calls fail with ``HypervisorUnavailable`` (not a
machine error: nothing is known about the machine, and the step is worth retrying), a new
connection replaces it when one is needed, and the calls on the other connections go on.
When the retired one carried the events, the next call reopens it first (with the events)
and the connection listeners are told so that the reconciler re-reads everything (events
were missed). A timed-out call's thread cannot be stopped; it
stays in the retired connection's pool, holding no lock of ours, and the connection is closed
once its last call returns. At most ``MAX_STUCK_CALLS`` such threads may exist; beyond that
calls fail at once until libvirtd answers again. The pools' threads are daemon threads, so a
thread stuck in libvirt never keeps a stopping agent from exiting.

Errors that only mean "already done" (destroying a stopped domain, starting a running one,
undefining a missing one) are swallowed: every step the reconciler takes must be idempotent.

Longer than 400 lines: one adapter, one method per libvirt call the agent makes, each a few lines
around the shared connection, thread pool and timeout handling.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import libvirt
import libvirtaio

from agent import metrics
from agent.domain_xml import NAMESPACE, PREFIX, MachineMetadata, metadata_xml, parse_machine_metadata
from agent.machine_state import ObservedState

log = logging.getLogger(__name__)

T = TypeVar("T")
LifecycleListener = Callable[[str, ObservedState], None]
ConnectionListener = Callable[[], None]

_ALREADY_DONE = frozenset({libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN})
# Errors that are about the link to libvirtd, never about a domain.
_CONNECTION_ERRORS = frozenset({
    libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC,
})

# Below libvirtd's default max_client_requests (5); see the module docstring.
MAX_CALLS_PER_CONNECTION = 4
# Connections at most: 4 x 4 = 16 calls in flight, below libvirtd's default max_workers (20),
# which leaves it threads for other clients (virsh, monitoring) while the agent starts a class.
CONNECTIONS = 4
# Generous: a define or start on a healthy host takes milliseconds to a few seconds, and a
# start under load tens of seconds; a call still unanswered after a minute is stuck.
CALL_TIMEOUT = 60.0
# Threads of timed-out calls the agent tolerates before it stops sending libvirtd more work.
MAX_STUCK_CALLS = 4 * MAX_CALLS_PER_CONNECTION


class HypervisorError(RuntimeError):
    """A libvirt call failed for a reason worth reporting."""


class HypervisorUnavailable(HypervisorError):
    """libvirtd could not be asked: the connection is lost, or it did not answer in time.
    Says nothing about the machine; the step is retried on a new connection."""


class HypervisorTimeout(HypervisorUnavailable):
    """A libvirt call did not return within the call timeout."""


@dataclass(frozen=True, slots=True)
class Capacity:
    vcpus: int
    memory_mib: int


@dataclass(frozen=True, slots=True)
class DomainStatus:
    name: str
    uuid: str
    state: ObservedState
    # False only when libvirt has no process for the domain.
    active: bool
    metadata: MachineMetadata | None


_Job = tuple[concurrent.futures.Future[Any], Callable[[], Any]]


class ThreadPool(concurrent.futures.Executor):
    """A fixed number of daemon threads running submitted calls in order.

    Not ``ThreadPoolExecutor``: its threads are joined when the interpreter exits, so one
    thread stuck in a libvirt call would keep the agent from ever stopping."""

    def __init__(self, size: int, *, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
                         for i in range(size)]
        self._shut = False
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        if self._shut:
            raise RuntimeError("cannot submit to a pool that was shut down")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, lambda: fn(*args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Lets the threads finish what was submitted, then end."""
        if not self._shut:
            self._shut = True
            for _ in self._threads:
                self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as error:
                future.set_exception(error)
            else:
                future.set_result(result)


@dataclass(eq=False)
class _Link:
    """One libvirt connection with its own threads and call slots."""

    connection: libvirt.virConnect
    executor: ThreadPool
    # Passed as the opaque value of this connection's callbacks: how a late event of a
    # retired connection is told from the current one's.
    token: object
    slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_CALLS_PER_CONNECTION))
    callback_id: int | None = None
    # Its place in the pool; place 0 carries the lifecycle events.
    place: int = 0
    in_flight: int = 0
    lost: bool = False
    closed: concurrent.futures.Future[None] | None = None


def observed_state(state: int, reason: int) -> ObservedState:
    """Maps ``virDomainGetState`` (state, reason) to the states the server knows."""
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
        return "running"
    # Being shut down: still running until QEMU exits.
    if state == libvirt.VIR_DOMAIN_SHUTDOWN:
        return "running"
    if state == libvirt.VIR_DOMAIN_PAUSED:
        if reason == libvirt.VIR_DOMAIN_PAUSED_STARTING_UP:
            return "pending"
        if reason == libvirt.VIR_DOMAIN_PAUSED_CRASHED:
            return "crashed"
        return "paused"
    if state == libvirt.VIR_DOMAIN_PMSUSPENDED:
        return "paused"
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        if reason in (libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, libvirt.VIR_DOMAIN_SHUTOFF_FAILED):
            return "crashed"
        return "shutoff"
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return "crashed"
    return "pending"


def event_state(event: int, detail: int) -> ObservedState | None:
    """Maps a lifecycle event to the state it leaves the domain in (None: no change)."""
    if event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
        return "running"
    if event in (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED):
        return "paused"
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        if detail in (libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
                      libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED):
            return "crashed"
        return "shutoff"
    if event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
        return "crashed"
    if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
        return "absent"
    return None


def _silence(_context: object, _error: object) -> None:
    # libvirt's default handler prints every error to stderr; ours become exceptions.
    return None


class Hypervisor:
    def __init__(self, uri: str, *, call_timeout: float = CALL_TIMEOUT,
                 connections: int = CONNECTIONS) -> None:
        if connections < 1:
            raise ValueError("at least one libvirt connection is needed")
        self.uri = uri
        self.call_timeout = call_timeout
        self.connections = connections
        self._links: list[_Link | None] = [None] * connections
        self._opening = [asyncio.Lock() for _ in range(connections)]
        # Calls headed for each place: opening its connection, waiting for a slot or running
        # (how busy it is, counted before the connection exists so a burst spreads out).
        self._heading = [0] * connections
        self._listeners: list[LifecycleListener] = []
        self._connection_listeners: list[ConnectionListener] = []
        self._stuck = 0

    def add_lifecycle_listener(self, listener: LifecycleListener) -> None:
        self._listeners.append(listener)

    def remove_lifecycle_listener(self, listener: LifecycleListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """``listener()`` runs whenever a connection is lost: events may have been missed."""
        self._connection_listeners.append(listener)

    def remove_connection_listener(self, listener: ConnectionListener) -> None:
        if listener in self._connection_listeners:
            self._connection_listeners.remove(listener)

    @property
    def stuck_calls(self) -> int:
        """Timed-out calls whose threads have not returned yet."""
        return self._stuck

    @property
    def open_connections(self) -> int:
        return sum(1 for link in self._links if link is not None and not link.lost)

    async def open(self) -> None:
        """Opens the first connection (the one with the lifecycle events)."""
        await self._current(0)

    async def close(self) -> None:
        links = [link for link in self._links if link is not None]
        self._links = [None] * self.connections
        for link in links:
            self._retire(link, "closed", notify=False)
        for link in links:
            if link.closed is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.call_timeout):
                        await asyncio.wrap_future(link.closed)

    async def capacity(self) -> Capacity:
        info = await self._call(lambda connection: connection.getInfo(), what="getInfo", call="getInfo")
        return Capacity(vcpus=int(info[2]), memory_mib=int(info[1]))

    async def capabilities(self) -> str:
        return await self._call(lambda connection: str(connection.getCapabilities()), call="getCapabilities",
                                what="getCapabilities")

    async def offers_domain_type(self, domain_type: str) -> bool:
        root = ET.fromstring(await self.capabilities())  # noqa: S314 (from libvirtd)
        return root.find(f"guest/arch/domain[@type='{domain_type}']") is not None

    async def list_domains(self) -> dict[str, DomainStatus]:
        """Every domain libvirt knows; ``metadata`` is None for those that are not ours."""

        def collect(connection: libvirt.virConnect) -> dict[str, DomainStatus]:
            found = {}
            for domain in connection.listAllDomains(0):
                try:
                    status = _status(domain)
                except libvirt.libvirtError as error:
                    if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue  # undefined while we were listing
                    raise
                found[status.name] = status
            return found

        return await self._call(collect, what="listAllDomains", call="listAllDomains")

    async def cpu_times(self) -> dict[str, float]:
        """Every running domain's cumulative guest CPU time in seconds, in one libvirt call
        (the bulk stats API: one round trip for the whole host, not one per domain)."""

        def collect(connection: libvirt.virConnect) -> dict[str, float]:
            stats = connection.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_CPU_TOTAL,
                                                 libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
            return {domain.name(): int(values["cpu.time"]) / 1e9
                    for domain, values in stats if "cpu.time" in values}

        return await self._call(collect, what="getAllDomainStats", call="getAllDomainStats")

    async def status(self, name: str) -> DomainStatus | None:
        def read(connection: libvirt.virConnect) -> DomainStatus | None:
            try:
                return _status(connection.lookupByName(name))
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        return await self._call(read, what=f"reading {name}", call="domainState")

    async def define(self, xml: str) -> None:
        """Defines a persistent domain; defining an existing name updates it in place."""
        await self._call(lambda connection: connection.defineXML(xml), what="defineXML", call="defineXML")

    async def start(self, name: str) -> None:
        await self._on_domain(name, lambda domain: domain.create(), what="starting", call="create")

    async def shutdown(self, name: str) -> None:
        """Asks the guest to power off; the guest decides when (or whether) it does."""
        # No flags: QEMU then presses the ACPI power button (our domains have no guest
        # agent), and drivers that know no ACPI still get a request they understand.
        await self._on_domain(name, lambda domain: domain.shutdown(), what="shutting down", call="shutdown")

    async def destroy(self, name: str) -> None:
        await self._on_domain(name, lambda domain: domain.destroy(), what="destroying", call="destroy")

    async def resume(self, name: str) -> None:
        await self._on_domain(name, lambda domain: domain.resume(), what="resuming", call="resume")

    async def undefine(self, name: str) -> None:
        def undefine(domain: libvirt.virDomain) -> None:
            # Only the flags the domain needs: drivers reject flags they do not know.
            flags = 0
            if domain.hasManagedSaveImage(0):
                flags |= libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            if domain.snapshotNum(0):
                flags |= libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            definition = ET.fromstring(  # noqa: S314 (from libvirtd)
                domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            )
            if definition.find("os/nvram") is not None:
                flags |= libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            domain.undefineFlags(flags)

        await self._on_domain(name, undefine, what="undefining", call="undefine")

    async def set_metadata(self, name: str, metadata: MachineMetadata) -> None:
        def write(domain: libvirt.virDomain) -> None:
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if domain.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            domain.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata_xml(metadata), PREFIX, NAMESPACE,
                flags,
            )

        await self._on_domain(name, write, what="recording metadata of", call="setMetadata")

    async def open_display(self, name: str) -> socket.socket:
        """A new client connection to a running domain's display (its VNC server), handed over
        by libvirtd as a connected socket (``virDomainOpenGraphicsFD``): the agent reaches the
        display whatever network namespace it runs in, and never through the network."""

        def open_fd(connection: libvirt.virConnect) -> socket.socket:
            descriptor = connection.lookupByName(name).openGraphicsFD(0, 0)
            return socket.socket(fileno=descriptor)

        return await self._call(open_fd, what=f"opening the display of {name}", call="openGraphicsFD")

    async def create_transient(self, xml: str) -> None:
        await self._call(lambda connection: connection.createXML(xml, 0), what="createXML", call="createXML")

    async def _on_domain(
        self, name: str, action: Callable[[libvirt.virDomain], Any], *, what: str, call: str = metrics.OTHER_CALL
    ) -> None:
        def run(connection: libvirt.virConnect) -> None:
            try:
                action(connection.lookupByName(name))
            except libvirt.libvirtError as error:
                if error.get_error_code() not in _ALREADY_DONE:
                    raise

        await self._call(run, what=f"{what} {name}", call=call)

    async def _call(self, function: Callable[[libvirt.virConnect], T], *, what: str = "call",
                    call: str = metrics.OTHER_CALL) -> T:
        """Runs ``function(connection)`` in the connection's threads, within the timeout.

        Waiting for a free slot does not count against the timeout: it is bounded by the
        timeouts of the calls that hold the slots. ``call`` names the libvirt API call for the
        metrics (a bounded label: never a domain's name, which ``what`` may carry)."""
        while True:
            place = self._pick()
            self._heading[place] += 1
            try:
                link = await self._current(place)
                async with link.slots:
                    if link.lost:
                        continue  # retired while this call waited for a slot: pick again
                    return await self._run(link, function, what=what, call=call)
            finally:
                self._heading[place] -= 1

    def _pick(self) -> int:
        """The place the next call goes to: the events' connection if it must be reopened (so
        events flow again at once); else a place with a free slot, an open connection before
        a new one, the least busy first; else (every slot taken) the least busy open one."""
        first = self._links[0]
        if first is None or first.lost:
            return 0

        def busy(place: int) -> tuple[bool, bool, int]:
            link = self._links[place]
            heading = self._heading[place]
            return heading >= MAX_CALLS_PER_CONNECTION, link is None or link.lost, heading

        return min(range(self.connections), key=busy)

    async def _run(self, link: _Link, function: Callable[[libvirt.virConnect], T], *,
                   what: str, call: str = metrics.OTHER_CALL) -> T:
        if self._stuck >= MAX_STUCK_CALLS:
            raise HypervisorUnavailable(
                f"libvirt {what}: libvirtd at {self.uri} has left {self._stuck} calls "
                "unanswered; no more are sent until it answers"
            )

        def work() -> T:
            try:
                return function(link.connection)
            except libvirt.libvirtError as error:
                raise _translate(error, link.connection, what=what) from error

        loop = asyncio.get_running_loop()
        future = link.executor.submit(work)
        link.in_flight += 1
        future.add_done_callback(lambda _: _on_loop(loop, self._call_ended, link))
        started, outcome = time.monotonic(), "error"
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
            # that arrives as the call completes, and a stopping reconciler would wait for ever.
            async with asyncio.timeout(self.call_timeout):
                result = await asyncio.wrap_future(future)
            outcome = "ok"
            return result
        except TimeoutError:
            outcome = "timeout"
            self._abandon(loop, future)
            self._retire(link, f"left {what} unanswered for {self.call_timeout:g} s")
            raise HypervisorTimeout(
                f"libvirt {what} did not answer within {self.call_timeout:g} s "
                f"(libvirtd at {self.uri} busy or stuck); retrying on a new connection"
            ) from None
        except HypervisorUnavailable as error:
            self._retire(link, f"is lost ({error})")
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            metrics.LIBVIRT_CALLS.labels(call=call, outcome=outcome).inc()
            metrics.LIBVIRT_DURATION.labels(call=call).observe(time.monotonic() - started)

    def _call_ended(self, link: _Link) -> None:
        link.in_flight -= 1
        if link.lost and link.in_flight == 0:
            self._close_link(link)

    def _abandon(self, loop: asyncio.AbstractEventLoop, future: concurrent.futures.Future[Any]) -> None:
        """Counts a timed-out call's thread as stuck until it returns."""
        if future.cancel():
            return  # it had not started: nothing is stuck
        self._stuck += 1
        future.add_done_callback(lambda _: _on_loop(loop, self._unstick))

    def _unstick(self) -> None:
        self._stuck -= 1

    async def _current(self, place: int) -> _Link:
        """The open connection at ``place``, opened (or reopened) if need be."""
        link = self._links[place]
        if link is not None and not link.lost and link.connection.isAlive():
            return link
        async with self._opening[place]:
            link = self._links[place]
            if link is not None and not link.lost:
                if link.connection.isAlive():
                    return link
                self._retire(link, "was closed")
            opened = await self._open(place)
            self._links[place] = opened
            self._count_links()
            return opened

    def _count_links(self) -> None:
        """`kubekvm_agent_libvirt_connected`: 1 while any connection to libvirtd is open."""
        metrics.LIBVIRT_CONNECTED.set(1 if any(link is not None and not link.lost for link in self._links) else 0)

    async def _open(self, place: int) -> _Link:
        loop = asyncio.get_running_loop()
        implementation = libvirtaio.getCurrentImpl()
        if implementation is None or implementation.loop is not loop:
            libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
        libvirt.registerErrorHandler(_silence, None)
        executor = ThreadPool(MAX_CALLS_PER_CONNECTION, name=f"libvirt{place}")

        token = object()

        def connect() -> tuple[libvirt.virConnect, int | None]:
            connection = self._libvirt_open()
            try:
                callback_id = None
                if place == 0:
                    callback_id = connection.domainEventRegisterAny(
                        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, token)
                with contextlib.suppress(libvirt.libvirtError):  # not every driver has it
                    connection.registerCloseCallback(self._on_closed, token)
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    connection.close()
                raise
            return connection, callback_id

        future = executor.submit(connect)
        try:
            async with asyncio.timeout(self.call_timeout):
                connection, callback_id = await asyncio.wrap_future(future)
        except BaseException as error:
            executor.shutdown(wait=False)
            if not future.done():
                # Timed out or cancelled: should it connect after all, nobody will use it.
                future.add_done_callback(_close_late_connection)
            if isinstance(error, TimeoutError):
                self._abandon(loop, future)
                raise HypervisorTimeout(
                    f"libvirtd at {self.uri} did not accept a connection within "
                    f"{self.call_timeout:g} s"
                ) from None
            if isinstance(error, libvirt.libvirtError):
                raise HypervisorUnavailable(
                    f"cannot connect to libvirt at {self.uri}: {error.get_error_message()}"
                ) from error
            raise
        return _Link(connection=connection, executor=executor, token=token,
                     callback_id=callback_id, place=place)

    def _libvirt_open(self) -> libvirt.virConnect:
        """Opens a connection (in a worker thread); the fault tests wrap what it returns."""
        connection: libvirt.virConnect = libvirt.open(self.uri)
        return connection

    def _retire(self, link: _Link, reason: str, *, notify: bool = True) -> None:
        """Stops using a connection; it is closed once no call of it is running. Only the loss
        of the events' connection tells the listeners: the others carried no events."""
        if link.lost:
            return
        link.lost = True
        if self._links[link.place] is link:
            self._links[link.place] = None
        self._count_links()
        if notify:
            log.warning("libvirt connection %d to %s %s; a new one replaces it when needed",
                        link.place, self.uri, reason)
        if link.in_flight == 0:
            self._close_link(link)
        if notify and link.place == 0:
            for listener in list(self._connection_listeners):
                try:
                    listener()
                except Exception:
                    log.exception("connection listener failed")

    def _close_link(self, link: _Link) -> None:
        if link.closed is not None:
            return
        # Closing is a libvirt call too, and may block: it runs on the link's own thread.
        link.closed = link.executor.submit(_close_connection, link.connection, link.callback_id)
        link.executor.shutdown(wait=False)

    def _on_closed(self, _connection: libvirt.virConnect, reason: int, token: object) -> None:
        """libvirt's close callback (on the loop): keepalive timeout, EOF, libvirtd gone."""
        for link in self._links:
            if link is not None and link.token is token:
                self._retire(link, f"was closed by libvirt (reason {reason})")

    def _on_lifecycle(
        self, _connection: libvirt.virConnect, domain: libvirt.virDomain, event: int, detail: int,
        token: object,
    ) -> None:
        link = self._links[0]
        if link is None or link.token is not token:
            return  # a retired connection's late event; the new one's resync has it
        state = event_state(event, detail)
        if state is None:
            return
        name = domain.name()
        for listener in list(self._listeners):
            try:
                listener(name, state)
            except Exception:
                log.exception("lifecycle listener failed for %s", name)


def connection_lost(error: libvirt.libvirtError, connection: libvirt.virConnect) -> bool:
    """Whether a libvirt error means "the link to libvirtd is gone", not "the call failed":
    RPC-layer errors (a closed socket, a keepalive timeout), no or an invalid connection,
    and any error after which the connection reports itself dead."""
    if error.get_error_code() in _CONNECTION_ERRORS:
        return True
    if error.get_error_domain() == libvirt.VIR_FROM_RPC:
        return True
    try:
        return bool(connection.isAlive() != 1)
    except libvirt.libvirtError:
        return True


def _translate(error: libvirt.libvirtError, connection: libvirt.virConnect, *,
               what: str) -> HypervisorError:
    message = error.get_error_message() or str(error)
    if connection_lost(error, connection):
        return HypervisorUnavailable(f"libvirt {what}: connection lost: {message}")
    return HypervisorError(message)


def _on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Runs ``callback`` on the loop from a worker thread (nothing to do once it is closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _close_connection(connection: libvirt.virConnect, callback_id: int | None) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        if callback_id is not None:
            connection.domainEventDeregisterAny(callback_id)
        connection.close()


def _close_late_connection(future: concurrent.futures.Future[tuple[libvirt.virConnect, int | None]]) -> None:
    if not future.cancelled() and future.exception() is None:
        _close_connection(*future.result())


def _status(domain: libvirt.virDomain) -> DomainStatus:
    state, reason = domain.state(0)
    # A transient domain (someone's `virsh create`) has no persistent config to read; ours are
    # always defined persistently, but a stranger's must not break the listing.
    where = libvirt.VIR_DOMAIN_AFFECT_CONFIG if domain.isPersistent() else libvirt.VIR_DOMAIN_AFFECT_LIVE
    try:
        metadata = parse_machine_metadata(
            domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, where)
        )
    except libvirt.libvirtError as error:
        if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            raise
        metadata = None
    return DomainStatus(
        name=domain.name(),
        uuid=domain.UUIDString(),
        state=observed_state(state, reason),
        active=state != libvirt.VIR_DOMAIN_SHUTOFF,
        metadata=metadata,
    )
