"""Placement writes: every unplaced machine gets a host (`kubekvm.placement` plans it) or a message
saying why not. Capacity is reserved with a conditional `$inc`, never read-then-write, so two
replicas placing at once cannot over-commit a host (the loser plans again); the janitor
recounts it from the machines should a crash leave it wrong.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kubekvm import placement
from kubekvm.models import (
    DesiredState,
    Host,
    Machine,
    Template,
    utcnow,
)
from kubekvm.services.context import BY_LAB_AND_INDEX, Noun

if TYPE_CHECKING:
    pass


class Placement(Noun):
    """Placing pending machines on hosts."""

    async def capacities(self) -> list[placement.HostCapacity]:
        """Every host's readiness, images and free capacity, as placement counts them."""
        return [
            placement.HostCapacity(
                name=s.host.name, ready=s.ready, images=frozenset(s.host.images),
                free_vcpus=s.host.vcpus * self.ctx.settings.cpu_overcommit - s.host.allocated_vcpus,
                free_memory_mib=s.host.memory_mib - s.host.allocated_memory_mib,
            )
            for s in await self.core.hosts.list_hosts()
        ]

    async def availability(self, templates: Sequence[Template]) -> dict[str, placement.Availability]:
        """For each template: how many of its machines the hosts could take right now."""
        hosts = await self.capacities()
        return {t.name: placement.availability(hosts=hosts, need=placement.Need(
                    image=t.image, vcpus=t.vcpus, memory_mib=t.memory_mib)) for t in templates}

    async def place_pending(self, *, deployment: str | None = None) -> None:
        """Give every unplaced machine (of one lab, or all) a host, or a message saying why not."""
        collection = Machine.get_pymongo_collection()
        query: dict[str, Any] = {"host": None, "retired": False, "desired": {"$ne": DesiredState.ABSENT.value}}
        if deployment is not None:
            query["deployment"] = deployment
        for _ in range(5):
            pending = await Machine.find(query).sort(BY_LAB_AND_INDEX).to_list()
            if not pending:
                return
            capacities = await self.capacities()
            needs = [placement.Need(image=m.spec.image, vcpus=m.spec.vcpus, memory_mib=m.spec.memory_mib)
                     for m in pending]
            plan = placement.plan(hosts=capacities, needs=needs)
            contested = False
            groups: dict[tuple[str, int, int], list[Machine]] = defaultdict(list)
            for position, host_name in plan.placed.items():
                m = pending[position]
                groups[(host_name, m.spec.vcpus, m.spec.memory_mib)].append(m)
            for (host_name, vcpus, memory), machines in groups.items():
                if not await self._reserve(host_name, vcpus=vcpus * len(machines), memory_mib=memory * len(machines)):
                    contested = True
                    continue
                ids = [m.id for m in machines]
                result = await collection.update_many(
                    {"_id": {"$in": ids}, "host": None},
                    {"$set": {"host": host_name, "message": "", "updated_at": utcnow(), "since": utcnow()}},
                )
                unclaimed = len(machines) - result.modified_count
                if unclaimed:  # another replica placed some of them meanwhile
                    await self._reserve(host_name, vcpus=-vcpus * unclaimed, memory_mib=-memory * unclaimed)
                await self.ctx.publish_machines({"_id": {"$in": ids}})
            for position, why in plan.unplaced.items():
                m = pending[position]
                if m.message != why:
                    await collection.update_one({"_id": m.id, "host": None}, {"$set": {"message": why}})
                    m.message = why
                    self.ctx.published(m)
            for lab in sorted({m.deployment for m in pending}):
                await self.core.convergence.refresh_phase(lab)
            if not contested:
                return

    async def _reserve(self, host: str, *, vcpus: int, memory_mib: int) -> bool:
        if vcpus <= 0 and memory_mib <= 0:
            await Host.get_pymongo_collection().update_one(
                {"name": host}, {"$inc": {"allocated_vcpus": vcpus, "allocated_memory_mib": memory_mib}}
            )
            return True
        record = await Host.find_one(Host.name == host)
        if record is None:
            return False
        limit_cpu = record.vcpus * self.ctx.settings.cpu_overcommit - vcpus
        limit_mem = record.memory_mib - memory_mib
        result = await Host.get_pymongo_collection().update_one(
            {"name": host, "allocated_vcpus": {"$lte": limit_cpu}, "allocated_memory_mib": {"$lte": limit_mem}},
            {"$inc": {"allocated_vcpus": vcpus, "allocated_memory_mib": memory_mib}},
        )
        return result.modified_count == 1
