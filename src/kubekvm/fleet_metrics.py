"""The fleet's shared gauges: labs by phase, machines by state, hosts and their capacity.

These describe the database, not a replica, so exactly one replica exports them: the holder of
the `metrics` lease (`kubekvm.lease`), taken or renewed at each scrape. Prometheus scrapes every
replica every few seconds, so the holder keeps it while it lives; when it dies, the next replica
scraped after the lease's expiry takes over. Every replica says whether it is the exporter
(`kubekvm_shared_state_exporter`), and the others export no shared series at all, so a `sum()`
over replicas counts each lab once.

The reads are the Operations page's (`kubekvm.services.overview.read_fleet`: aggregations
grouped by a bounded field) and the hosts' list; each one round trip whatever the fleet's size.
"""

from __future__ import annotations

from collections import defaultdict

from kubekvm import metrics
from kubekvm.lease import Lease
from kubekvm.models import Host
from kubekvm.services import Services
from kubekvm.services.overview import read_fleet

LEASE_NAME = "metrics"
MIB = 1024 * 1024


class FleetGauges:
    def __init__(self, *, services: Services, lease: Lease) -> None:
        self.services = services
        self.lease = lease

    async def __call__(self) -> None:
        """Refresh the shared gauges if this replica is (or becomes) their exporter."""
        exporter = await self.lease.acquire()
        metrics.SHARED_EXPORTER.set(1 if exporter else 0)
        if not exporter:
            for gauge in (metrics.LABS, metrics.MACHINES, metrics.HOSTS, metrics.HOST_VCPUS, metrics.HOST_MEMORY):
                gauge.clear()
            return
        fleet = await read_fleet()
        labs: dict[tuple[str, ...], float] = {(phase,): float(n) for phase, n in fleet.labs_by_phase.items()}
        machines: dict[tuple[str, ...], float] = {state: float(n) for state, n in fleet.machines_by_state.items()}
        hosts: dict[tuple[str, ...], float] = defaultdict(float)
        vcpus: dict[tuple[str, ...], float] = {}
        memory: dict[tuple[str, ...], float] = {}
        for host in await Host.find_all().to_list():
            ready = self.services.hosts.host_ready(host)
            hosts[("ready" if ready else "unreachable",)] += 1
            vcpus[(host.name, "capacity")] = host.vcpus
            vcpus[(host.name, "allocated")] = host.allocated_vcpus
            memory[(host.name, "capacity")] = host.memory_mib * MIB
            memory[(host.name, "allocated")] = host.allocated_memory_mib * MIB
        hosts.setdefault(("ready",), 0.0)
        hosts.setdefault(("unreachable",), 0.0)
        metrics.set_labelled(metrics.LABS, labs)
        metrics.set_labelled(metrics.MACHINES, machines)
        metrics.set_labelled(metrics.HOSTS, dict(hosts))
        metrics.set_labelled(metrics.HOST_VCPUS, vcpus)
        metrics.set_labelled(metrics.HOST_MEMORY, memory)
