"""Choosing a host for each new machine.

A host qualifies when it is ready (heartbeat within the timeout), has the template's base
image, and has the memory and vCPUs free. An image of the image store (named by its digest,
`image_rules.file_name`) need not be there yet: the host's agent pulls it. Among those, a host
that already holds the image wins (no pull to wait for), then the one with most free memory,
which spreads a class over the hosts. The plan is computed here from a snapshot; the service
layer then reserves capacity with one conditional `$inc` per host, so two server replicas
placing at once cannot over-commit a host (the loser re-plans). `availability` answers the new-lab
form's question with the same rule: how many machines of a template could be placed right now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kubekvm.image_rules import digest_of_file_name


@dataclass(frozen=True, kw_only=True)
class HostCapacity:
    name: str
    ready: bool
    images: frozenset[str]
    free_vcpus: int
    free_memory_mib: int


@dataclass(frozen=True, kw_only=True)
class Need:
    image: str
    vcpus: int
    memory_mib: int


@dataclass(frozen=True)
class Plan:
    # machine position in the request list -> host name
    placed: dict[int, str]
    # machine position -> why it could not be placed
    unplaced: dict[int, str]


def plan(*, hosts: Sequence[HostCapacity], needs: Sequence[Need]) -> Plan:
    free = {h.name: [h.free_vcpus, h.free_memory_mib] for h in hosts}
    placed: dict[int, str] = {}
    unplaced: dict[int, str] = {}
    for position, need in enumerate(needs):
        pullable = digest_of_file_name(need.image) is not None
        candidates = [
            h for h in hosts
            if h.ready and (need.image in h.images or pullable)
            and free[h.name][0] >= need.vcpus and free[h.name][1] >= need.memory_mib
        ]
        if not candidates:
            unplaced[position] = why_unplaced(hosts=hosts, need=need)
            continue
        best = max(candidates, key=lambda h: (need.image in h.images, free[h.name][1], free[h.name][0], h.name))
        free[best.name][0] -= need.vcpus
        free[best.name][1] -= need.memory_mib
        placed[position] = best.name
    return Plan(placed=placed, unplaced=unplaced)


def why_unplaced(*, hosts: Sequence[HostCapacity], need: Need) -> str:
    if not hosts:
        return "no host is registered yet (start kubekvm-agent on a KVM host)"
    ready = [h for h in hosts if h.ready]
    if not ready:
        return "no host is ready (no agent heartbeat recently)"
    with_image = [h for h in ready if need.image in h.images or digest_of_file_name(need.image)]
    if not with_image:
        return f"no ready host has image {need.image}"
    return (
        f"no ready host has image {need.image} with {need.memory_mib} MiB and "
        f"{need.vcpus} vCPU(s) free"
    )


@dataclass(frozen=True, kw_only=True)
class Availability:
    """What a template could get right now: ready hosts holding (or able to pull) its image, and
    how many of its machines their free capacity takes; `reason` says why none, if none."""

    hosts: int
    machines: int
    reason: str | None

    @property
    def can_run(self) -> bool:
        return self.machines > 0


def availability(*, hosts: Sequence[HostCapacity], need: Need) -> Availability:
    pullable = digest_of_file_name(need.image) is not None
    usable = [h for h in hosts if h.ready and (need.image in h.images or pullable)]
    machines = sum(min(h.free_vcpus // max(need.vcpus, 1), h.free_memory_mib // max(need.memory_mib, 1))
                   for h in usable if h.free_vcpus > 0 and h.free_memory_mib > 0)
    return Availability(hosts=len(usable), machines=machines,
                        reason=None if machines else why_unplaced(hosts=hosts, need=need))
