"""Host: one running agent, wiring libvirt, the reconciler and the server link together.

Start-up order matters: the libvirt connection is opened (with lifecycle events on this
loop) before anything else, the accelerator is chosen and logged in one line, the
reconciler starts reconciling whatever desired set it has (none until the first
snapshot arrives, so a restarted agent changes nothing before the server speaks), and only
then does the client connect. Stopping cancels the work, closes the consoles being tunnelled
(``agent.console``) and leaves every machine as it is.

Conditions an operator must fix on the host (a ``/dev/kvm`` libvirtd cannot use, libvirt
calls left unanswered) are logged at start-up and listed on the health endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from pathlib import Path

from agent.accelerator import choose_accelerator
from agent.client import HostFacts, ServerClient
from agent.config import AgentConfig
from agent.console import ConsoleTunnels
from agent.health import serve_health
from agent.hypervisor import Hypervisor
from agent.images import Images
from agent.kvm_device import check_kvm_device
from agent.outbox import Outbox
from agent.publisher import Publisher, remove_leftovers
from agent.pulls import Pulls
from agent.reconciler import Reconciler

log = logging.getLogger("agent")


async def run_host(config: AgentConfig, *, stop: asyncio.Event | None = None) -> None:
    """Runs until ``stop`` is set (or the task is cancelled)."""
    stop = stop or asyncio.Event()
    hypervisor = Hypervisor(config.libvirt_uri, call_timeout=config.libvirt_timeout,
                            connections=config.libvirt_connections)
    await hypervisor.open()
    try:
        accelerator = await choose_accelerator(
            hypervisor, requested=config.domain_type, work_dir=config.state_dir / "probe"
        )
        capacity = await hypervisor.capacity()
        log.log(
            logging.INFO if accelerator.usable else logging.WARNING,
            "kubekvm-agent host %s: libvirt %s, domain type %s%s (%s); %d vCPUs, %d MiB",
            config.host_name, config.libvirt_uri, accelerator.domain_type,
            "" if accelerator.usable else " UNUSABLE", accelerator.reason,
            capacity.vcpus, capacity.memory_mib,
        )
        for directory in (config.image_dir, config.state_dir):
            _warn_if_unreachable_by_qemu(directory)
        kvm_problem = check_kvm_device()
        if kvm_problem is not None:
            log.warning("%s", kvm_problem)
        images = Images(config.image_dir)
        outbox = Outbox()
        pulls = Pulls(directory=config.image_dir, servers=config.servers, token_source=config.current_token,
                      on_done=lambda: reconciler.request_resync())
        publish_dir = config.state_dir / "publish"
        remove_leftovers(publish_dir)
        reconciler = Reconciler(
            pulls=pulls,
            publisher=lambda disks: Publisher(disks=disks, work_dir=publish_dir, servers=config.servers,
                                              token_source=config.current_token),
            hypervisor=hypervisor,
            images=images,
            state_dir=config.state_dir,
            accelerator=accelerator,
            report=outbox.machine_state,
            report_orphans=outbox.orphans,
            parallel=config.parallel,
            stop_grace=config.stop_grace,
            resync_interval=config.resync_interval,
            gc_orphans=config.gc_orphans,
            cpu_sample_interval=config.cpu_sample_interval,
        )
        tunnels = ConsoleTunnels(hypervisor=hypervisor, token_source=config.current_token)
        client = ServerClient(
            urls=config.servers,
            host=HostFacts(
                name=config.host_name,
                vcpus=capacity.vcpus,
                memory_mib=capacity.memory_mib,
                domain_type=accelerator.domain_type,
            ),
            images=images.names,
            desired=reconciler,
            outbox=outbox,
            token_source=config.current_token,
            heartbeat_interval=config.heartbeat_interval,
            consoles=tunnels.open,
            pulls=pulls.report,
            drop_images=lambda names: pulls.drop(
                names, in_use={a.template.image for a in reconciler.desired.values()}),
        )
        await reconciler.start()
        health = (await serve_health(address=config.health_address, port=config.health_port,
                                     warnings=lambda: host_warnings(hypervisor))
                  if config.health_port else None)
        connection = asyncio.create_task(client.run(), name="server")
        try:
            await stop.wait()
        finally:
            log.info("stopping; machines are left as they are")
            if health is not None:
                health.close()
            connection.cancel()
            await asyncio.gather(connection, return_exceptions=True)
            await tunnels.close()
            await pulls.close()
            if reconciler.publisher is not None:
                await reconciler.publisher.close()
            await reconciler.close()
    finally:
        await hypervisor.close()


def host_warnings(hypervisor: Hypervisor) -> list[str]:
    """What the health endpoint lists for an operator to look at, checked at each request
    (a stat and a counter), so a fixed host stops saying so without a restart."""
    warnings = []
    kvm_problem = check_kvm_device()
    if kvm_problem is not None:
        warnings.append(kvm_problem)
    if hypervisor.stuck_calls:
        warnings.append(f"{hypervisor.stuck_calls} libvirt call(s) to {hypervisor.uri} timed out "
                        "and have not returned yet (libvirtd busy or stuck)")
    return warnings


def _warn_if_unreachable_by_qemu(directory: Path) -> None:
    """QEMU runs as libvirt's own user (e.g. libvirt-qemu), not as the agent: every parent
    of the overlays and images must be searchable by others, or guests fail to start with
    "Permission denied". Worth one clear line at start rather than an error per machine."""
    for parent in [directory, *directory.parents]:
        try:
            mode = parent.stat().st_mode
        except FileNotFoundError:
            continue
        if not mode & stat.S_IXOTH:
            log.warning(
                "%s is not searchable by other users (mode %o): QEMU, running as libvirt's "
                "user, will not reach %s", parent, stat.S_IMODE(mode), directory,
            )
            return
