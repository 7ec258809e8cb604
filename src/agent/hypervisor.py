"""Hypervisor: a thin asyncio adapter over one libvirt connection.

The reconciler speaks in domain names, observed states and KubeKVM metadata; this module
translates that to libvirt-python. Calls that may take a while (define, start, destroy,
listing) run in a worker thread so the event loop stays free to deliver lifecycle events,
which libvirt dispatches on the agent's own asyncio loop through ``libvirtaio`` (registered
before the connection is opened, as libvirt requires). A dropped connection, e.g. libvirtd
restarting, is reopened on the next call; the periodic resync makes up for missed events.

Errors that only mean "already done" (destroying a stopped domain, starting a running one,
undefining a missing one) are swallowed: every step the reconciler takes must be idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt
import libvirtaio

from agent.domain_xml import NAMESPACE, PREFIX, MachineMetadata, metadata_xml, parse_machine_metadata
from agent.machine_state import ObservedState

log = logging.getLogger(__name__)

T = TypeVar("T")
LifecycleListener = Callable[[str, ObservedState], None]

_ALREADY_DONE = frozenset({libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN})


class HypervisorError(RuntimeError):
    """A libvirt call failed for a reason worth reporting."""


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
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._connection: libvirt.virConnect | None = None
        self._opening = asyncio.Lock()
        self._listeners: list[LifecycleListener] = []
        self._callback_id: int | None = None

    def add_lifecycle_listener(self, listener: LifecycleListener) -> None:
        self._listeners.append(listener)

    def remove_lifecycle_listener(self, listener: LifecycleListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def open(self) -> None:
        await self._connect()

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if self._callback_id is not None:
                connection.domainEventDeregisterAny(self._callback_id)
            connection.close()
        except libvirt.libvirtError:
            pass
        self._callback_id = None

    async def capacity(self) -> Capacity:
        info = await self._call(lambda connection: connection.getInfo())
        return Capacity(vcpus=int(info[2]), memory_mib=int(info[1]))

    async def capabilities(self) -> str:
        return await self._call(lambda connection: str(connection.getCapabilities()))

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

        return await self._call(collect)

    async def status(self, name: str) -> DomainStatus | None:
        def read(connection: libvirt.virConnect) -> DomainStatus | None:
            try:
                return _status(connection.lookupByName(name))
            except libvirt.libvirtError as error:
                if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        return await self._call(read)

    async def define(self, xml: str) -> None:
        """Defines a persistent domain; defining an existing name updates it in place."""
        await self._call(lambda connection: connection.defineXML(xml))

    async def start(self, name: str) -> None:
        await self._on_domain(name, lambda domain: domain.create())

    async def shutdown(self, name: str) -> None:
        """Asks the guest to power off; the guest decides when (or whether) it does."""
        # No flags: QEMU then presses the ACPI power button (our domains have no guest
        # agent), and drivers that know no ACPI still get a request they understand.
        await self._on_domain(name, lambda domain: domain.shutdown())

    async def destroy(self, name: str) -> None:
        await self._on_domain(name, lambda domain: domain.destroy())

    async def resume(self, name: str) -> None:
        await self._on_domain(name, lambda domain: domain.resume())

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

        await self._on_domain(name, undefine)

    async def set_metadata(self, name: str, metadata: MachineMetadata) -> None:
        def write(domain: libvirt.virDomain) -> None:
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if domain.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            domain.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata_xml(metadata), PREFIX, NAMESPACE,
                flags,
            )

        await self._on_domain(name, write)

    async def open_display(self, name: str) -> socket.socket:
        """A new client connection to a running domain's display (its VNC server), handed over
        by libvirtd as a connected socket (``virDomainOpenGraphicsFD``): the agent reaches the
        display whatever network namespace it runs in, and never through the network."""

        def open_fd(connection: libvirt.virConnect) -> socket.socket:
            descriptor = connection.lookupByName(name).openGraphicsFD(0, 0)
            return socket.socket(fileno=descriptor)

        return await self._call(open_fd)

    async def create_transient(self, xml: str) -> None:
        await self._call(lambda connection: connection.createXML(xml, 0))

    async def _on_domain(self, name: str, action: Callable[[libvirt.virDomain], Any]) -> None:
        def run(connection: libvirt.virConnect) -> None:
            try:
                action(connection.lookupByName(name))
            except libvirt.libvirtError as error:
                if error.get_error_code() not in _ALREADY_DONE:
                    raise

        await self._call(run)

    async def _call(self, function: Callable[[libvirt.virConnect], T]) -> T:
        connection = await self._connect()
        try:
            return await asyncio.to_thread(function, connection)
        except libvirt.libvirtError as error:
            raise HypervisorError(str(error.get_error_message() or error)) from error

    async def _connect(self) -> libvirt.virConnect:
        async with self._opening:
            connection = self._connection
            if connection is not None and connection.isAlive():
                return connection
            if connection is not None:
                log.warning("libvirt connection to %s lost; reconnecting", self.uri)
                await self.close()
            loop = asyncio.get_running_loop()
            implementation = libvirtaio.getCurrentImpl()
            if implementation is None or implementation.loop is not loop:
                libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
            libvirt.registerErrorHandler(_silence, None)
            try:
                opened: libvirt.virConnect = await asyncio.to_thread(libvirt.open, self.uri)
            except libvirt.libvirtError as error:
                raise HypervisorError(
                    f"cannot connect to libvirt at {self.uri}: {error.get_error_message()}"
                ) from error
            self._callback_id = opened.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
            self._connection = opened
            return opened

    def _on_lifecycle(
        self, _connection: object, domain: libvirt.virDomain, event: int, detail: int,
        _opaque: object,
    ) -> None:
        state = event_state(event, detail)
        if state is None:
            return
        name = domain.name()
        for listener in list(self._listeners):
            try:
                listener(name, state)
            except Exception:
                log.exception("lifecycle listener failed for %s", name)


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
