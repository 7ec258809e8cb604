"""The janitor: periodically recounts what is kept as running totals, and finishes what a
crash or a dropped connection left half-done, on exactly one server replica at a time.

Some state is kept incrementally for speed: a host's `allocated_vcpus`/`allocated_memory_mib`
are `$inc`ed at placement and when a machine is forgotten, and a lab's phase and machine counts
(`running`, `kept`: what the lab lists show) are recomputed after each change. A process killed
between two steps (the `$inc` done, the machine not yet claimed; a machine document removed,
its lab not yet recomputed) would leave them wrong for good. So one replica — the holder of the
`janitor` lease (`kubekvm.lease`) — every `KUBEKVM_JANITOR_INTERVAL` seconds:

- recounts each host's allocations from the machines placed on it and repairs a drift, if
  the same drift is seen on two turns in a row (a placement or a removal in flight shows a
  drift for a few milliseconds; a leak shows the same one turn after turn) and the host's
  counters did not move in between (the repair is conditional on them);
- removes machine documents left retired (their removal was cut short), likewise only once
  seen on two turns;
- for every lab: a lab being deleted has all its machines on their way out, and its phase and
  counts are recomputed from its machines (one being deleted with no machine left is removed;
  one stored before counts were kept is counted the first time);
- places machines still waiting for a host.

Every repair is logged at WARNING with what was wrong and what it is now.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kubekvm.errors import KubeKVMError
from kubekvm.lease import Lease, Periodic
from kubekvm.models import Deployment, Host, Machine
from kubekvm.services import Services

log = logging.getLogger(__name__)

LEASE_NAME = "janitor"


@dataclass
class Repairs:
    """What one turn found wrong and fixed (empty lists: all was well)."""

    hosts: list[str] = field(default_factory=list)
    labs: list[str] = field(default_factory=list)
    machines: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.hosts or self.labs or self.machines)


# host name -> (allocated vCPUs, allocated MiB, counted vCPUs, counted MiB) as last seen drifting
Drift = tuple[int, int, int, int]


class Janitor:
    def __init__(self, *, services: Services, lease: Lease, interval_seconds: float) -> None:
        self.services = services
        self.lease = lease
        self.periodic = Periodic(lease=lease, interval_seconds=interval_seconds, turn=self._turn)
        self._drifts: dict[str, Drift] = {}
        self._retired: set[Any] = set()
        self._last: Repairs | None = None

    def start(self) -> None:
        """Turn every interval (on the lease holder only) until `stop`."""
        self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()

    async def run_once(self) -> Repairs | None:
        """One turn: None if another replica holds the lease, else what was repaired."""
        held = await self.periodic.run_once()
        return self._last if held else None

    async def _turn(self, held: bool) -> None:
        self._last = None
        if not held:
            # Another replica is the janitor; what we saw drifting is its business now.
            self._drifts.clear()
            self._retired.clear()
            return
        repairs = Repairs()
        await self._recount_hosts(repairs)
        await self._finish_retired(repairs)
        await self._converge_labs(repairs)
        await self.services.placement.place_pending()
        self._last = repairs

    async def _recount_hosts(self, repairs: Repairs) -> None:
        counted: dict[str, tuple[int, int]] = {}
        cursor = await Machine.get_pymongo_collection().aggregate([
            {"$match": {"retired": False, "host": {"$ne": None}}},
            {"$group": {"_id": "$host", "vcpus": {"$sum": "$spec.vcpus"},
                        "memory": {"$sum": "$spec.memory_mib"}}},
        ])
        async for row in cursor:
            counted[str(row["_id"])] = (int(row["vcpus"]), int(row["memory"]))
        drifts: dict[str, Drift] = {}
        collection = Host.get_pymongo_collection()
        for host in await Host.find_all().to_list():
            vcpus, memory = counted.get(host.name, (0, 0))
            if (host.allocated_vcpus, host.allocated_memory_mib) == (vcpus, memory):
                continue
            drift = (host.allocated_vcpus, host.allocated_memory_mib, vcpus, memory)
            if self._drifts.get(host.name) != drift:
                drifts[host.name] = drift  # first sight: may be a placement in flight
                continue
            result = await collection.update_one(
                {"_id": host.id, "allocated_vcpus": host.allocated_vcpus,
                 "allocated_memory_mib": host.allocated_memory_mib},
                {"$set": {"allocated_vcpus": vcpus, "allocated_memory_mib": memory}},
            )
            if result.modified_count:
                log.warning("janitor: host %s had %d vCPUs and %d MiB allocated, its machines use %d vCPUs "
                            "and %d MiB: recounted", host.name, host.allocated_vcpus,
                            host.allocated_memory_mib, vcpus, memory)
                repairs.hosts.append(host.name)
        self._drifts = drifts

    async def _finish_retired(self, repairs: Repairs) -> None:
        collection = Machine.get_pymongo_collection()
        leftovers = {row["_id"]: row async for row in collection.find(
            {"retired": True}, {"name": 1, "deployment": 1})}
        for key in set(leftovers) & self._retired:
            if (await collection.delete_one({"_id": key, "retired": True})).deleted_count:
                name = str(leftovers[key].get("name"))
                log.warning("janitor: machine %s was retired but never removed: removed", name)
                self.services.feed.publish(collection="machines", operation="delete", id=str(key), document=None)
                repairs.machines.append(name)
        self._retired = set(leftovers) - set(repairs.machines)

    async def _converge_labs(self, repairs: Repairs) -> None:
        names = [str(name) for name in await Deployment.get_pymongo_collection().distinct("name")]
        for name in sorted(names):
            try:
                before, after = await self.services.convergence.converge_lab(name)
            except KubeKVMError as error:  # gone meanwhile, or too busy now: next turn
                log.debug("janitor: lab %s skipped: %s", name, error.message)
                continue
            if before is None:
                continue
            if after is None:
                log.warning("janitor: lab %s was %s (%s) with no machine left: removed",
                            name, before.phase.value, before.message)
                repairs.labs.append(name)
            elif (after.phase, after.message) != (before.phase, before.message):
                log.warning("janitor: lab %s was %s (%s), its machines say %s (%s): corrected", name,
                            before.phase.value, before.message, after.phase.value, after.message)
                repairs.labs.append(name)
            elif (after.running, after.kept) != (before.running, before.kept):
                # A lab stored before counts were kept is counted for the first time; any other
                # difference is a recount a crash cut short.
                level = logging.INFO if before.kept is None else logging.WARNING
                log.log(level, "janitor: lab %s counted %s/%s running, its machines say %s/%s: recounted",
                        name, before.running, before.kept, after.running, after.kept)
                if before.kept is not None:
                    repairs.labs.append(name)
