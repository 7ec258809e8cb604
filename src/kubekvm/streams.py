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

`lab_changes` is a lab's feed, the same way when asked for the current state (GraphQL's
`deploymentEvents`): a SNAPSHOT event per lab, SYNCED, then each change, with a cursor to resume
from after a reconnect (replayed when this process still holds the changes, else the current
state again); after a RESYNC, RESYNC and the current state again. The pages' live updates read
their own snapshot instead. Each change is parsed into its typed event once, and that one
object goes to every subscriber (`kubekvm.graphql.sharing` builds on that).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from kubekvm.database import uninterrupted
from kubekvm.events import Change, EventFeed
from kubekvm.models import Deployment, Host, Machine, readable
from kubekvm.shared_reads import SharedReads


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
    # Never sent since hosts left the event feed (`kubekvm.events`); kept in the GraphQL enum
    # so that clients naming it still validate.
    HOST_CHANGED = "HOST_CHANGED"
    RESYNC = "RESYNC"  # changes may have been missed: reload what you show
    SNAPSHOT = "SNAPSHOT"  # one lab as it is now, with its machines (the current state, first)
    SYNCED = "SYNCED"  # the current state has been sent in full (or replayed): changes follow


@dataclass(frozen=True)
class LabChange:
    kind: LabChangeKind
    lab: str
    deployment: Deployment | None = None
    machine: Machine | None = None
    host: Host | None = None
    machines: Sequence[Machine] | None = None  # SNAPSHOT: the lab's machines
    # Where a reconnecting subscriber resumes after this event (`lab_changes(cursor=...)`).
    cursor: str | None = None
    # Made once per change for all its subscribers (the GraphQL event: `kubekvm.graphql`).
    memo: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)


# The current state as the caller sees it, read after the given `SharedReads` ticket.
CurrentState = Callable[[int], Coroutine[Any, Any, list[LabChange]]]


async def lab_changes(*, feed: EventFeed, lab: str | None = None,
                      subscribed: asyncio.Event | None = None, current: CurrentState | None = None,
                      cursor: str | None = None, reads: SharedReads | None = None) -> AsyncIterator[LabChange]:
    """Every change of one lab (or of all labs), as typed objects.

    `subscribed` is set once the feed subscription is taken: a caller that reads a snapshot
    after it (the pages' live updates) misses no change made between the two.

    With `current` (what the caller sees now, as SNAPSHOT events), the stream starts with it and
    a SYNCED event, then changes; after a RESYNC it sends them again. With a `cursor` (of an
    event received earlier) it resumes instead: the changes after it are replayed if this
    process still holds them all and can tell which lab each belongs to, else the current
    state is sent. Either way nothing between the two subscriptions is lost (a change may come
    twice: one made while the state was being read).

    `reads`: the reads a stream starts with (which lab each id is; the current state, for which
    `current` is given a ticket) are shared with every other stream starting at the same time
    whose read began after this one subscribed (`kubekvm.shared_reads`): a crowd arriving at
    once costs the database a few reads, not a few per subscriber."""
    reads = reads or SharedReads()
    names: dict[str, str] = {}  # lab id -> name, for delete events that carry only the id
    machine_labs: dict[str, str] = {}  # machine id -> lab name, likewise
    async with feed.subscribe() as subscription:
        if subscribed is not None:
            subscribed.set()
        # Taken before anything is awaited: a change from now on is in the subscription's queue,
        # every earlier one in these.
        start_cursor = feed.last_cursor
        ticket = reads.ticket()
        replay = feed.replay_after(cursor) if cursor and current is not None else None
        earlier = feed.history() if replay is not None else []
        await uninterrupted(_known_ids(names, machine_labs, lab=lab, reads=reads, after=ticket))
        if current is not None:
            resumed = None if replay is None else _replayed(replay, earlier, names=names,
                                                            machine_labs=machine_labs, lab=lab)
            if resumed is None:
                for state in await uninterrupted(current(ticket)):
                    yield _at(state, start_cursor)
            else:
                for replayed in resumed:
                    yield replayed
            yield LabChange(LabChangeKind.SYNCED, lab or "", cursor=start_cursor if resumed is None
                            else next((c.cursor for c in reversed(replay or [])), cursor))
        while True:
            pending = [await subscription.next()]
            while not subscription.queue.empty():  # what piled up while the last ones were sent
                pending.append(subscription.queue.get_nowait())
            if subscription.overflowed:
                raise FeedOverflow("the event feed fell behind; resubscribe")
            resync = next((c for c in pending if c.resync), None)
            if resync is not None:
                # Read after the resync arrived: at least as new as every change pending with it.
                resync_cursor = feed.last_cursor
                ticket = reads.ticket()
                await uninterrupted(_known_ids(names, machine_labs, lab=lab, reads=reads, after=ticket))
                yield LabChange(LabChangeKind.RESYNC, lab or "", cursor=resync.cursor)
                if current is not None:
                    for state in await uninterrupted(current(ticket)):
                        yield _at(state, resync_cursor)
                    yield LabChange(LabChangeKind.SYNCED, lab or "", cursor=resync_cursor)
                continue
            for change in _latest_per_document(pending):
                event = _lab_change(change, names=names, machine_labs=machine_labs)
                if event is not None and _about(event, lab):
                    yield event


def _latest_per_document(changes: list[Change]) -> list[Change]:
    """Of several changes of one document waiting for a subscriber, only the last: it carries the
    document as it is now, which is what a subscriber shows. A subscriber that keeps up gets every
    change; one that falls behind (thousands of them, a burst of a big lab) catches up with fewer
    messages instead of ever more late ones. In the order of each document's last change."""
    if len(changes) == 1:
        return changes
    latest: dict[tuple[str, str], Change] = {}
    for change in changes:
        key = (change.collection, change.id)
        latest.pop(key, None)
        latest[key] = change
    return list(latest.values())


def _about(event: LabChange, lab: str | None) -> bool:
    return lab is None or event.lab == lab


def _replayed(replay: list[Change], earlier: list[Change], *, names: dict[str, str],
              machine_labs: dict[str, str], lab: str | None) -> list[LabChange] | None:
    """The typed changes of `replay`, or None if one of them cannot be told apart: a deletion of a
    lab or machine whose lab neither the database nor the changes held name (the subscriber must
    then get the current state instead, or it would miss that deletion)."""
    for change in earlier:  # what the ids deleted meanwhile were, from their last documents
        if change.document is not None and change.collection == "deployments":
            names.setdefault(change.id, str(change.document.get("name", "")))
        elif change.document is not None and change.collection == "machines":
            machine_labs.setdefault(change.id, str(change.document.get("deployment", "")))
    events: list[LabChange] = []
    for change in replay:
        if change.resync:
            return None
        known = {"deployments": names, "machines": machine_labs}.get(change.collection)
        if change.document is None and known is not None and change.id not in known:
            return None
        event = _lab_change(change, names=names, machine_labs=machine_labs)
        if event is not None and _about(event, lab):
            events.append(event)
    return events


def _at(state: LabChange, cursor: str | None) -> LabChange:
    """A state read for the current state, with the cursor to resume from: one object for every
    stream that shares the read and the cursor, so its GraphQL result is shared too."""
    key = f"at:{cursor}"
    found = state.memo.get(key)
    if found is None:
        found = state.memo[key] = replace(state, cursor=cursor)
    return found


async def _known_ids(names: dict[str, str], machine_labs: dict[str, str], *, lab: str | None,
                     reads: SharedReads, after: int) -> None:
    """Which lab each lab and machine id belongs to, read afresh (after the ticket `after`)."""
    known_names, known_machines = await reads.read(("known_ids", lab), lambda: _read_known_ids(lab),
                                                   after=after)
    names.clear()
    names.update(known_names)
    machine_labs.clear()
    machine_labs.update(known_machines)


async def _read_known_ids(lab: str | None) -> tuple[dict[str, str], dict[str, str]]:
    names = {str(known.id): known.name for known in await Deployment.find_all().to_list()}
    machine_labs: dict[str, str] = {}
    cursor = Machine.get_pymongo_collection().find(
        {} if lab is None else {"deployment": lab}, {"deployment": 1})
    async for raw in cursor:
        if isinstance(raw.get("deployment"), str):  # else not a machine this version can read
            machine_labs[str(raw["_id"])] = raw["deployment"]
    return names, machine_labs


def _lab_change(change: Change, *, names: dict[str, str], machine_labs: dict[str, str]) -> LabChange | None:
    document = change.document
    if change.collection == "deployments":
        if document is None:
            name = names.pop(change.id, None)
            return None if name is None else LabChange(LabChangeKind.LAB_DELETED, name, cursor=change.cursor)
        shared = _typed(change)
        if shared is not None:
            names[change.id] = shared.lab
        return shared
    if change.collection == "machines":
        if document is None:
            # The full document is looked up when the watcher reads the change, so a reader a
            # little behind finds none once the machine is deleted, for the retiring update
            # too: the machine is gone either way, and its subscribers must hear so once.
            lab = machine_labs.pop(change.id, None)
            return None if lab is None else LabChange(LabChangeKind.MACHINE_REMOVED, lab, cursor=change.cursor)
        shared = _typed(change)
        if shared is None:
            return None
        if shared.kind == LabChangeKind.MACHINE_REMOVED:
            machine_labs.pop(change.id, None)
        else:
            machine_labs[change.id] = shared.lab
        return shared
    return None


# The typed events of the latest changes, by the change's identity (holding it, so an id is
# never reused while here): every subscriber of a change is handed the same event, parsed once.
# Bounded, because the feed's replay buffer keeps changes long after they were delivered: a
# subscriber that far behind parses again.
TYPED_CHANGES = 2048
_typed_changes: OrderedDict[int, tuple[Change, LabChange | None]] = OrderedDict()


def _typed(change: Change) -> LabChange | None:
    """The change of one document as a typed event, parsed once for every subscriber (the first
    to ask parses it)."""
    known = _typed_changes.get(id(change))
    if known is not None and known[0] is change:
        return known[1]
    document = change.document
    assert document is not None
    typed: LabChange | None = None
    if change.collection == "deployments":
        deployment = readable(Deployment, document)
        if deployment is not None:  # else not a lab this version can show (warned about)
            typed = LabChange(LabChangeKind.LAB_CHANGED, deployment.name, deployment=deployment,
                              cursor=change.cursor)
    elif change.collection == "machines":
        machine = readable(Machine, document)
        if machine is not None:
            kind = LabChangeKind.MACHINE_REMOVED if machine.retired else LabChangeKind.MACHINE_CHANGED
            typed = LabChange(kind, machine.deployment, machine=machine, cursor=change.cursor)
    _typed_changes[id(change)] = (change, typed)
    while len(_typed_changes) > TYPED_CHANGES:
        _typed_changes.popitem(last=False)
    return typed
