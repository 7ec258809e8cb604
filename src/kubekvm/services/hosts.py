"""Hosts: the hypervisors' agents registering, beating and reporting orphans, their readiness
(a heartbeat within the timeout) and the machines assigned to each.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pymongo.errors import DuplicateKeyError

from kubekvm import validation
from kubekvm.errors import NotFound, ValidationFailed
from kubekvm.models import (
    Host,
    ImagePull,
    Machine,
    utcnow,
)
from kubekvm.services.context import Noun
from kubekvm.services.rulebook import HOST_AGENT, HOST_OR_STAFF, SIGNED_IN, STAFF
from kubekvm.services.rules import Operations, named, operation

if TYPE_CHECKING:
    pass

HOST_NAME_RULE = "letters, digits, '.', '_' and '-', at most 63 characters"
HOST_TEXT_MAX = 200  # what an agent says of its host: a domain type, a version, a domain's name


@dataclass(frozen=True, kw_only=True)
class HostStatus:
    host: Host
    ready: bool
    heartbeat_age_seconds: float
    # None: not counted (a host's own calls rarely ask; `Hosts.count_machines` when they do).
    machines: int | None = None


def host_name(name: str, *, field: str = "name") -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name or ""):
        raise ValidationFailed(field, f"A host name uses {HOST_NAME_RULE}.")
    return name


def _pull(pull: ImagePull) -> ImagePull:
    """A pull as an agent reported it, checked: a store image's name, sizes that fit."""
    validation.image(pull.image)
    for size in (pull.done, pull.total or 0):
        validation.whole_number(size, field="pulls", minimum=0, maximum=2**53)
    return ImagePull(image=pull.image, done=pull.done, total=pull.total,
                     error=validation.note(pull.error, max_length=HOST_TEXT_MAX * 2))


class Hosts(Noun):
    """Hosts' records, unchecked (callers use `HostOperations`)."""

    def host_ready(self, host: Host, *, now: datetime | None = None) -> bool:
        return self.ready_at(host.last_heartbeat, now=now)

    def ready_at(self, last_heartbeat: datetime | None, *, now: datetime | None = None) -> bool:
        """Whether a host last heard from then is ready now (a heartbeat within the timeout)."""
        if last_heartbeat is None:
            return False
        if last_heartbeat.tzinfo is None:  # as the database gives it back: UTC
            last_heartbeat = last_heartbeat.replace(tzinfo=UTC)
        return ((now or utcnow()) - last_heartbeat).total_seconds() <= self.ctx.settings.host_timeout_seconds

    async def hosts_reporting(self, names: Iterable[str]) -> dict[str, bool]:
        wanted = sorted(set(names))
        if not wanted:
            return {}
        now = utcnow()
        found = {h.name: self.host_ready(h, now=now)
                 for h in await Host.find({"name": {"$in": wanted}}).to_list()}
        return {name: found.get(name, False) for name in wanted}
    def status_of(self, host: Host, *, machines: int | None = None, now: datetime | None = None) -> HostStatus:
        now = now or utcnow()
        return HostStatus(host=host, ready=self.host_ready(host, now=now),
                          heartbeat_age_seconds=(now - host.last_heartbeat).total_seconds(), machines=machines)

    async def host_status(self, name: str) -> HostStatus:
        """One host as read now, its machines not counted: O(1) whatever the fleet."""
        return self.status_of(await self.get_host(name))

    async def count_machines(self, name: str) -> int:
        """The machines kept on one host (through the index on `host`)."""
        return int(await Machine.get_pymongo_collection().count_documents({"host": name, "retired": False}))

    async def list_hosts(self) -> list[HostStatus]:
        """Every host, their machines counted in one aggregation for all of them."""
        now = utcnow()
        counts: dict[str, int] = defaultdict(int)
        cursor = await Machine.get_pymongo_collection().aggregate(
            [{"$match": {"retired": False, "host": {"$ne": None}}},
             {"$group": {"_id": "$host", "n": {"$sum": 1}}}]
        )
        async for row in cursor:
            counts[row["_id"]] = int(row["n"])
        return [self.status_of(h, machines=counts[h.name], now=now)
                for h in await Host.find_all().sort("name").to_list()]

    async def get_host(self, name: str) -> Host:
        host = await Host.find_one(Host.name == name)
        if host is None:
            raise NotFound(f"There is no host named {name!r}; its agent must register first.")
        return host

    async def register_host(
        self, *, name: str, vcpus: int, memory_mib: int, images: Iterable[str],
        domain_type: str = "", agent_version: str = "",
    ) -> Host:
        checks = validation.Checks()
        checks(lambda: host_name(name))
        checks(lambda: validation.whole_number(vcpus, field="vcpus", minimum=1, maximum=4096, unit="vCPUs"))
        checks(lambda: validation.whole_number(memory_mib, field="memoryMib", minimum=64, maximum=1 << 30,
                                               unit="MiB"))
        kind = checks(lambda: validation.text(domain_type, field="domainType", label="The domain type",
                                              max_length=HOST_TEXT_MAX))
        version = checks(lambda: validation.text(agent_version, field="agentVersion", label="The agent version",
                                                 max_length=HOST_TEXT_MAX))
        checks.done()
        now = utcnow()
        fields = {"vcpus": vcpus, "memory_mib": memory_mib, "images": validation.image_names(images),
                  "domain_type": kind, "agent_version": version, "last_heartbeat": now}
        collection = Host.get_pymongo_collection()
        try:
            await collection.update_one(
                {"name": name},
                {"$set": fields, "$setOnInsert": {"registered_at": now, "allocated_vcpus": 0,
                                                  "allocated_memory_mib": 0, "orphans": []}},
                upsert=True,
            )
        except DuplicateKeyError:  # two registrations raced on the upsert; the other won
            await collection.update_one({"name": name}, {"$set": fields})
        host = await self.get_host(name)
        await self.core.placement.place_pending()
        return host

    async def heartbeat(self, *, name: str, images: Iterable[str] | None = None,
                        pulls: Sequence[ImagePull] | None = None) -> Host:
        """One write that returns the host as it was (a few hundred hosts beat every 10 s: the
        cost must not grow with the fleet); placement runs only when the host came back or its
        images changed."""
        changes: dict[str, Any] = {"last_heartbeat": utcnow()}
        if images is not None:
            changes["images"] = validation.image_names(images)
        if pulls is not None:
            changes["pulls"] = [_pull(p).model_dump() for p in pulls[:50]]
        # One round trip: the record as it was comes back with the write (no read after it).
        # The host's record is not in the event feed, so a beat wakes no subscriber.
        before = await Host.get_pymongo_collection().find_one_and_update({"name": name}, {"$set": changes})
        if before is None:
            raise NotFound(f"There is no host named {name!r}; its agent must register first.")
        host: Host = Host.model_validate({**before, **changes})
        last = before.get("last_heartbeat")
        came_back = not self.ready_at(last if isinstance(last, datetime) else None, now=changes["last_heartbeat"])
        if came_back or host.images != before.get("images"):
            await self.core.placement.place_pending()
        return host

    async def report_orphans(self, *, host: str, domains: Sequence[str]) -> Host:
        domains = [validation.text(d, field="domains", label="A domain name", max_length=HOST_TEXT_MAX, required=True)
                   for d in domains]
        record = await self.get_host(host)
        if sorted(domains) != sorted(record.orphans):
            await Host.get_pymongo_collection().update_one(
                {"_id": record.id}, {"$set": {"orphans": sorted(domains)}}
            )
            record.orphans = sorted(domains)
        return record

    async def host_assignments(self, host: str) -> list[Machine]:
        return await Machine.find(Machine.host == host, Machine.retired == False).to_list()  # noqa: E712


class HostOperations(Operations):
    """Hosts as a caller may use them: staff read them; a host's agent (with its host token)
    registers, beats and reports for its own host only, and follows its assignments."""

    @operation(STAFF, field="hosts")
    async def list_hosts(self) -> list[HostStatus]:
        return await self.services.hosts.list_hosts()

    @operation(SIGNED_IN)
    async def hosts_reporting(self, names: Iterable[str]) -> dict[str, bool]:
        """Whether each of these hosts (those of machines the caller sees) is still heard from, so
        a machine's status can say its host has gone quiet; only the names asked about."""
        return await self.services.hosts.hosts_reporting(names)

    @operation(HOST_OR_STAFF)
    async def host_status(self, name: str) -> HostStatus:
        return await self.services.hosts.host_status(name)

    @operation(HOST_OR_STAFF)
    async def count_host_machines(self, name: str) -> int:
        return await self.services.hosts.count_machines(name)

    @operation(HOST_AGENT, audit="registerHost", target=named("host"))
    async def register_host(self, *, name: str, vcpus: int, memory_mib: int, images: Iterable[str],
                            domain_type: str = "", agent_version: str = "") -> Host:
        return await self.services.hosts.register_host(name=name, vcpus=vcpus, memory_mib=memory_mib, images=images,
                                                       domain_type=domain_type, agent_version=agent_version)

    @operation(HOST_AGENT, audit="heartbeat", target=named("host"), routine=True)
    async def heartbeat(self, *, name: str, images: Iterable[str] | None = None,
                        pulls: Sequence[ImagePull] | None = None) -> HostStatus:
        return self.services.hosts.status_of(
            await self.services.hosts.heartbeat(name=name, images=images, pulls=pulls))

    @operation(HOST_OR_STAFF)
    async def dropped_images(self, host: str, images: Sequence[str]) -> list[str]:
        """Which of a host's images the store has garbage-collected: its agent deletes them."""
        return await self.services.images.retired_among(images)

    @operation(HOST_AGENT, audit="reportOrphans", target=named("host", "host"))
    async def report_orphans(self, *, host: str, domains: Sequence[str]) -> Host:
        return await self.services.hosts.report_orphans(host=host, domains=domains)

    @operation(HOST_AGENT)
    async def host_assignments(self, host: str) -> list[Machine]:
        return await self.services.hosts.host_assignments(host)

    @operation(HOST_AGENT, field="hostAssignments")
    async def follow_host(self, host: str) -> None:
        """The check before a host's assignment feed: its own agent (or an admin), a known host."""
        await self.services.hosts.get_host(host)
