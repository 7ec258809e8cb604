"""What a subscriber sees of the event feed: a host's assignments, or a lab's changes.

Both GraphQL subscriptions and the pages' server-sent events are built on these two
generators, so every transport shows the same thing at the same moment.

`host_assignments` is the agent's feed: a SNAPSHOT batch of every machine assigned to the host,
then CHANGE batches. The subscription to the feed is taken *before* the snapshot is read, so no
change between the two is lost (one seen twice is harmless: the agent is level-triggered).
A reconnecting agent may pass the cursor of the last batch it applied; if this server process
still holds the changes after it, they are replayed instead of a snapshot. When the feed says
changes may have been missed (a RESYNC change, `kubekvm.events`), the agent gets a fresh
SNAPSHOT in the same subscription; a lab's subscribers get a RESYNC event, on which they
reload what they show.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from kubekvm.database import uninterrupted
from kubekvm.events import Change, EventFeed
from kubekvm.models import Deployment, Host, Machine, readable


class AssignmentSource(Protocol):
    """Whatever reads a host's machines: the caller's operations (`host_assignments`, which
    checks that the caller is that host's agent)."""

    async def host_assignments(self, host: str) -> list[Machine]: ...


class BatchKind(StrEnum):
    SNAPSHOT = "SNAPSHOT"
    CHANGE = "CHANGE"


@dataclass(frozen=True)
class AssignmentBatch:
    kind: BatchKind
    cursor: str | None
    machines: list[Machine]
    removed: list[str] = field(default_factory=list)


async def host_assignments(
    *, services: AssignmentSource, feed: EventFeed, host: str, cursor: str | None = None
) -> AsyncIterator[AssignmentBatch]:
    known: set[str] = set()
    async with feed.subscribe() as subscription:
        replay = feed.replay_after(cursor) if cursor else None
        if replay is None:
            start_cursor = feed.last_cursor
            snapshot = await uninterrupted(services.host_assignments(host))
            known.update(str(m.id) for m in snapshot)
            yield AssignmentBatch(BatchKind.SNAPSHOT, start_cursor, snapshot)
        else:
            batch = _host_batch(replay, host=host, known=known, replaying=True)
            if batch is not None:
                yield batch
        while True:
            change = await subscription.next()
            pending = [change]
            while not subscription.queue.empty():  # batch what has piled up
                pending.append(subscription.queue.get_nowait())
            if subscription.overflowed:
                raise FeedOverflow("the assignment feed fell behind; reconnect to resync")
            if any(c.resync for c in pending):
                # Read after the resync arrived, so the snapshot is at least as new as every
                # change pending with it.
                start_cursor = feed.last_cursor
                snapshot = await uninterrupted(services.host_assignments(host))
                known.clear()
                known.update(str(m.id) for m in snapshot)
                yield AssignmentBatch(BatchKind.SNAPSHOT, start_cursor, snapshot)
                continue
            batch = _host_batch(pending, host=host, known=known, replaying=False)
            if batch is not None:
                yield batch


class FeedOverflow(Exception):
    pass


def _host_batch(changes: Iterable[Change], *, host: str, known: set[str],
                replaying: bool) -> AssignmentBatch | None:
    upserts: dict[str, Machine] = {}
    removed: list[str] = []
    last: str | None = None
    for change in changes:
        last = change.cursor
        if change.collection != "machines":
            continue
        document = change.document
        if document is None:
            # Deleted, or retired and deleted before the watcher looked the document up:
            # either way a machine this host had is gone.
            if change.id in known:
                known.discard(change.id)
                upserts.pop(change.id, None)
                removed.append(change.id)
            continue
        ours = document.get("host") == host and not document.get("retired", False)
        if ours:
            machine = readable(Machine, document)
            # One this version cannot read is left as the host has it (never taken for removed:
            # the host would destroy a VM over a document it merely could not parse).
            if machine is not None:
                known.add(change.id)
                upserts[change.id] = machine
        elif change.id in known or (replaying and document.get("host") == host):
            known.discard(change.id)
            upserts.pop(change.id, None)
            removed.append(change.id)
    if not upserts and not removed:
        return None
    return AssignmentBatch(BatchKind.CHANGE, last, list(upserts.values()), removed)


class LabChangeKind(StrEnum):
    LAB_CHANGED = "LAB_CHANGED"
    LAB_DELETED = "LAB_DELETED"
    MACHINE_CHANGED = "MACHINE_CHANGED"
    MACHINE_REMOVED = "MACHINE_REMOVED"
    HOST_CHANGED = "HOST_CHANGED"
    RESYNC = "RESYNC"  # changes may have been missed: reload what you show


@dataclass(frozen=True)
class LabChange:
    kind: LabChangeKind
    lab: str
    deployment: Deployment | None = None
    machine: Machine | None = None
    host: Host | None = None


async def lab_changes(*, feed: EventFeed, lab: str | None = None, include_hosts: bool = False,
                      subscribed: asyncio.Event | None = None) -> AsyncIterator[LabChange]:
    """Every change of one lab (or of all labs), as typed objects.

    `subscribed` is set once the feed subscription is taken: a caller that reads a snapshot
    after it (the pages' live updates) misses no change made between the two."""
    names: dict[str, str] = {}  # lab id -> name, for delete events that carry only the id
    machine_labs: dict[str, str] = {}  # machine id -> lab name, likewise
    async with feed.subscribe() as subscription:
        if subscribed is not None:
            subscribed.set()
        await uninterrupted(_known_ids(names, machine_labs, lab=lab))
        while True:
            change = await subscription.next()
            if subscription.overflowed:
                raise FeedOverflow("the event feed fell behind; resubscribe")
            if change.resync:
                await uninterrupted(_known_ids(names, machine_labs, lab=lab))
                yield LabChange(LabChangeKind.RESYNC, lab or "")
                continue
            event = _lab_change(change, names=names, machine_labs=machine_labs,
                                include_hosts=include_hosts)
            if event is not None and (lab is None or event.lab == lab or event.kind == LabChangeKind.HOST_CHANGED):
                yield event


async def _known_ids(names: dict[str, str], machine_labs: dict[str, str], *, lab: str | None) -> None:
    """Which lab each lab and machine id belongs to, read afresh."""
    names.clear()
    machine_labs.clear()
    for known in await Deployment.find_all().to_list():
        names[str(known.id)] = known.name
    cursor = Machine.get_pymongo_collection().find(
        {} if lab is None else {"deployment": lab}, {"deployment": 1})
    async for raw in cursor:
        if isinstance(raw.get("deployment"), str):  # else not a machine this version can read
            machine_labs[str(raw["_id"])] = raw["deployment"]


def _lab_change(change: Change, *, names: dict[str, str], machine_labs: dict[str, str],
                include_hosts: bool) -> LabChange | None:
    document = change.document
    if change.collection == "deployments":
        if document is None:
            name = names.pop(change.id, None)
            return None if name is None else LabChange(LabChangeKind.LAB_DELETED, name)
        deployment = readable(Deployment, document)
        if deployment is None:  # not a lab this version can show (warned about)
            return None
        names[change.id] = deployment.name
        return LabChange(LabChangeKind.LAB_CHANGED, deployment.name, deployment=deployment)
    if change.collection == "machines":
        if document is None:
            # The full document is looked up when the watcher reads the change, so a reader a
            # little behind finds none once the machine is deleted, for the retiring update
            # too: the machine is gone either way, and its subscribers must hear so once.
            lab = machine_labs.pop(change.id, None)
            return None if lab is None else LabChange(LabChangeKind.MACHINE_REMOVED, lab)
        machine = readable(Machine, document)
        if machine is None:
            return None
        if machine.retired:
            machine_labs.pop(change.id, None)
            return LabChange(LabChangeKind.MACHINE_REMOVED, machine.deployment, machine=machine)
        machine_labs[change.id] = machine.deployment
        return LabChange(LabChangeKind.MACHINE_CHANGED, machine.deployment, machine=machine)
    if change.collection == "hosts" and document is not None and include_hosts:
        host = readable(Host, document)
        return None if host is None else LabChange(LabChangeKind.HOST_CHANGED, "", host=host)
    return None
