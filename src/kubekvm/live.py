"""Live updates for the pages: server-sent events carrying the HTML fragments htmx swaps in.

`GET /events?lab=NAME` follows one lab (its status, machine rows and events);
`GET /events?phase=...&offset=...` follows the labs list as the page shows it;
`GET /events?mine=1` follows a student's own machines ("My VMs"). All read the caller's
`Authorized.lab_changes` (`kubekvm.streams.lab_changes` less what the caller may not see), the
stream the GraphQL subscriptions read, which the change-stream feed fills from every server
replica's writes; every snapshot and redraw is read through the caller's operations too.

A stream is *snapshot, then changes*, like the host agents' feed: it subscribes first, then
renders the whole of what the page shows (closing the gap between the page being rendered and
the browser connecting, and resynchronising after a reconnect) — both before it answers, so a
200 is a stream that holds its slot and delivers, and one the database cannot serve now is a 503
the browser retries — then one batch of fragments per burst of changes. When the feed says
changes may have been missed (RESYNC), the stream sends the whole snapshot again. Every fragment
is an out-of-band swap (`hx-swap-oob`) addressed by element id, sent under an event name saying
what it is:

  lab       a lab's status block (lab page) or its cards (list page)
  labs      the whole list (a lab appeared, went, or left the filtered phase)
  machine   machine rows that changed, or a removed one's delete instruction
  machines  the whole machine table (a machine was added; on "My VMs", any change)
  events    the lab's recent events
  announce  a sentence for screen readers when a phase changes (an aria-live region)
  gone      the lab was deleted: the page says so and the stream ends

The page listens with htmx's SSE extension: one hidden `sse-swap="lab,labs,..."` element with
`hx-swap="none"`, so only the out-of-band parts land. A comment line goes out every
`live_heartbeat_seconds` so idle proxies keep the stream and a vanished client is noticed;
when the client goes, Starlette cancels the generator and the feed subscription is dropped.

A user holds at most `live_max_streams_per_user` streams on this replica (`kubekvm.quotas`);
one more is refused with 429 and a sentence, and the slot is given back when a stream ends.
Streams asked for by a page of another origin never get here (`kubekvm.boundary.OriginCheck`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import ExitStack, suppress
from typing import Protocol

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from kubekvm import metrics
from kubekvm.access.actors import ActorKind
from kubekvm.auth import services_for
from kubekvm.authorized import Authorized
from kubekvm.database import unavailable, uninterrupted
from kubekvm.errors import NotFound, TooManySubscriptions, ValidationFailed
from kubekvm.faults import quiet
from kubekvm.models import Machine, Phase
from kubekvm.pages.fragments import (
    PAGE_SIZE,
    Fragments,
    LabSummary,
    ListView,
    clock_for,
    machine_row,
    machine_rows,
    my_rows,
    summaries,
    summary,
)
from kubekvm.quotas import Quota, holder
from kubekvm.streams import FeedOverflow, LabChange, LabChangeKind

log = logging.getLogger(__name__)

# Changes come in bursts (a lab of 30 starting); waiting this long after the first one lets a
# burst go out as one batch, well inside the one second a teacher should wait to see a change.
COALESCE_SECONDS = 0.05
QUEUE_LIMIT = 10_000

Message = tuple[str, str]  # (event name, HTML)


class Watch(Protocol):
    lab: str | None
    finished: bool

    async def snapshot(self) -> list[Message]: ...
    async def update(self, batch: Sequence[LabChange]) -> list[Message]: ...


class LabWatch:
    """What the lab page shows of one lab."""

    def __init__(self, services: Authorized, fragments: Fragments, lab: str) -> None:
        self.services, self.fragments = services, fragments
        self.lab: str | None = lab
        self.name = lab
        self.finished = False
        self.shown: set[str] = set()  # machine names that have a row on the page
        self.phase: Phase | None = None

    async def snapshot(self) -> list[Message]:
        try:
            lab = await summary(self.services, self.name)
        except NotFound:
            return self._gone()
        self.phase = lab.lab.phase
        machines = await self.services.list_machines(deployment=self.name)
        self.shown = {m.name for m in machines}
        return [("lab", self.fragments.status(lab, oob=True)), await self._table(lab, machines),
                await self._events()]

    async def update(self, batch: Sequence[LabChange]) -> list[Message]:
        if any(change.kind == LabChangeKind.LAB_DELETED for change in batch):
            return self._gone()
        try:
            return await self._redraw(batch)
        except NotFound:  # deleted while this batch was being drawn (the next batch says so)
            return self._gone()

    async def _redraw(self, batch: Sequence[LabChange]) -> list[Message]:
        lab = await summary(self.services, self.name)
        messages = [("lab", self.fragments.status(lab, oob=True))]
        phase_changed = lab.lab.phase != self.phase
        if phase_changed:
            messages.append(("announce", self.fragments.announce(lab.headline)))
        machine_kinds = (LabChangeKind.MACHINE_CHANGED, LabChangeKind.MACHINE_REMOVED)
        if phase_changed or any(change.kind in machine_kinds for change in batch):
            # The changes say which rows to redraw; the database says what they hold now (a
            # change may come without its machine, when it was read after the machine went).
            machines = await self.services.list_machines(deployment=self.name)
            now = {m.name: m for m in machines}
            if phase_changed or now.keys() - self.shown:
                # New rows must land in index order, and a phase change (Deleting) changes
                # every row's buttons: redraw the table.
                messages.append(await self._table(lab, machines))
            else:
                touched = {c.machine.name for c in batch if c.machine is not None} & now.keys()
                rows = [self.fragments.removed_row(name) for name in sorted(self.shown - now.keys())]
                clock = await clock_for(self.services, [now[name] for name in touched])
                rows += [self.fragments.row(machine_row(now[name], phase=lab.lab.phase, clock=clock), oob=True)
                         for name in sorted(touched)]
                if rows:
                    messages.append(("machine", "".join(rows)))
            self.shown = set(now)
        self.phase = lab.lab.phase
        messages.append(await self._events())
        return messages

    async def _table(self, lab: LabSummary, machines: Sequence[Machine]) -> Message:
        rows = machine_rows(machines, phase=lab.lab.phase, clock=await clock_for(self.services, machines))
        return ("machines", self.fragments.rows(rows, oob=True))

    async def _events(self) -> Message:
        return ("events", self.fragments.events(await self.services.lab_events(self.name), oob=True))

    def _gone(self) -> list[Message]:
        self.finished = True
        return [("gone", self.fragments.gone(self.name)),
                ("announce", self.fragments.announce(f"Lab {self.name} was deleted."))]


# How many labs that left a list page it remembers, to announce their deletion when it comes.
DEPARTED_REMEMBERED = 200


class ListWatch:
    """What the labs list shows: one page of labs, maybe only those in one phase."""

    lab: str | None = None

    def __init__(self, services: Authorized, fragments: Fragments, view: ListView) -> None:
        self.services, self.fragments, self.view = services, fragments, view
        self.finished = False
        self.shown: list[str] = []
        self.phases: dict[str, Phase] = {}
        # Labs that left the page since they were shown, newest last: a lab's deletion can be
        # read (its machines' removal redraws the list) before the change saying so arrives.
        self.departed: dict[str, None] = {}

    async def snapshot(self) -> list[Message]:
        labs, total = await self._page()
        self._remember(labs)
        return [("labs", self.fragments.lab_list(labs, view=self.view, total=total, oob=True))]

    async def update(self, batch: Sequence[LabChange]) -> list[Message]:
        touched = {change.lab for change in batch}
        deleted = {change.lab for change in batch if change.kind == LabChangeKind.LAB_DELETED}
        # Counted only for a redraw of the whole list (most changes redraw cards only).
        page = await self.services.list_deployments(
            phase=self.view.phase, offset=self.view.offset, limit=PAGE_SIZE, count=False)
        names = [lab.name for lab in page.items]
        messages: list[Message] = []
        if names != self.shown:
            labs = await summaries(self.services, page.items)
            total = page.total
            if total is None:
                total = (await self.services.list_deployments(phase=self.view.phase, limit=1)).counted
            messages.append(("labs", self.fragments.lab_list(labs, view=self.view, total=total, oob=True)))
        else:
            labs = await summaries(self.services, [lab for lab in page.items if lab.name in touched])
            if labs:
                messages.append(("lab", "".join(self.fragments.card(s, oob=True) for s in labs)))
        said = [s.headline for s in labs if self.phases.get(s.lab.name) not in (None, s.lab.phase)]
        said += [f"Lab {name} was deleted." for name in sorted(deleted & (set(self.shown) | set(self.departed)))]
        if said:
            messages.append(("announce", self.fragments.announce(" ".join(said))))
        self._depart([name for name in self.shown if name not in names], deleted=deleted)
        self._remember(labs, names=names)
        return messages

    def _depart(self, left: list[str], *, deleted: set[str]) -> None:
        """Remember what left the page until its deletion is heard (or it is long gone)."""
        for name in left:
            self.departed.pop(name, None)
            self.departed[name] = None
        for name in deleted:
            self.departed.pop(name, None)
        while len(self.departed) > DEPARTED_REMEMBERED:
            del self.departed[next(iter(self.departed))]

    async def _page(self) -> tuple[list[LabSummary], int]:
        page = await self.services.list_deployments(
            phase=self.view.phase, offset=self.view.offset, limit=PAGE_SIZE)
        return await summaries(self.services, page.items), page.counted

    def _remember(self, labs: Sequence[LabSummary], *, names: list[str] | None = None) -> None:
        self.shown = names if names is not None else [s.lab.name for s in labs]
        self.phases = {name: phase for name, phase in self.phases.items() if name in self.shown}
        self.phases.update({s.lab.name: s.lab.phase for s in labs})


class MineWatch:
    """What a student's "My VMs" page shows: their machines, in every lab."""

    lab: str | None = None

    def __init__(self, services: Authorized, fragments: Fragments) -> None:
        self.services, self.fragments = services, fragments
        self.finished = False

    async def snapshot(self) -> list[Message]:
        return [("machines", self.fragments.my_rows(await my_rows(self.services), oob=True))]

    async def update(self, batch: Sequence[LabChange]) -> list[Message]:
        return await self.snapshot()


def message(event: str, html: str) -> str:
    """One server-sent event; every line of the HTML becomes a `data:` line."""
    lines = html.splitlines() or [""]
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


class HeldStream(StreamingResponse):
    """An event stream holding its slot of the user's quota for as long as it is answered,
    whether it ends, fails or is cancelled (the generator's own `finally` would not run for a
    client gone before the first byte)."""

    def __init__(self, content: AsyncIterator[str], *, slot: ExitStack, headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.slot:
            await super().__call__(scope, receive, send)


class LiveUpdates:
    def __init__(self, *, fragments: Fragments, heartbeat_seconds: float, max_streams_per_user: int) -> None:
        self.fragments = fragments
        self.heartbeat_seconds = heartbeat_seconds
        self.quota = Quota(limit=max_streams_per_user, what="live-update streams (pages open)",
                           gauge=metrics.STREAMS_OPEN.labels(kind="live"))

    def routes(self) -> list[BaseRoute]:
        return [Route("/events", self.events)]

    async def events(self, request: Request) -> Response:
        services = services_for(request)
        if services.actor.kind != ActorKind.USER:
            return PlainTextResponse("Sign in to follow live updates.", status_code=401)
        lab = request.query_params.get("lab")
        watch: Watch
        if request.query_params.get("mine"):
            watch = MineWatch(services, self.fragments)
        elif lab:
            watch = LabWatch(services, self.fragments, lab)
        else:
            try:
                view = ListView.parse(request.query_params.get("phase"),
                                      request.query_params.get("offset"))
            except ValidationFailed as error:
                return PlainTextResponse(error.message, status_code=422)
            watch = ListWatch(services, self.fragments, view)
        slot = ExitStack()
        try:
            slot.enter_context(self.quota.hold(holder(services.actor)))
        except TooManySubscriptions as error:
            # The page's SSE extension tries again later, with a growing delay.
            return PlainTextResponse(error.message, status_code=429)
        try:
            # Subscribed and the snapshot read before answering 200: a stream that is answered
            # holds its slot and delivers; one the database cannot serve now is a 503 (and its
            # slot is free again at once), never a 200 that ends before its first event.
            pump, queue, snapshot = await self.open(services, watch, slot=slot)
        except Exception as error:
            slot.close()
            if unavailable(error) is None and not isinstance(error, TimeoutError):
                raise
            quiet.fault("a live-update stream", error)
            return PlainTextResponse("The server cannot follow changes right now; the page tries again.",
                                     status_code=503, headers={"Retry-After": "2"})
        return HeldStream(
            self.stream(services, watch, pump=pump, queue=queue, snapshot=snapshot), slot=slot,
            # X-Accel-Buffering: an nginx ingress would otherwise hold events back.
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def open(self, services: Authorized, watch: Watch,
                   *, slot: ExitStack) -> tuple[asyncio.Task[None], asyncio.Queue[LabChange], list[Message]]:
        """Follow the changes, then read what the page shows (no change falls between the two);
        the feed is left when the slot is given back, however the stream ends."""
        queue: asyncio.Queue[LabChange] = asyncio.Queue(maxsize=QUEUE_LIMIT)
        subscribed = asyncio.Event()
        pump = asyncio.create_task(_pump(
            await services.lab_changes(lab=watch.lab, subscribed=subscribed), queue))
        slot.callback(pump.cancel)
        # Generous: on a loaded replica (a class opening its pages at once) the feed can take
        # seconds to acknowledge.
        await asyncio.wait_for(subscribed.wait(), timeout=60)
        if pump.done():  # the feed failed before acknowledging: say why
            pump.result()
        return pump, queue, await uninterrupted(watch.snapshot())

    async def stream(self, services: Authorized, watch: Watch, *, pump: asyncio.Task[None],
                     queue: asyncio.Queue[LabChange], snapshot: list[Message]) -> AsyncIterator[str]:
        # If the stream ends, the browser reconnects after this long and gets a new snapshot.
        yield "retry: 2000\n\n"
        for event, html in snapshot:
            yield message(event, html)
        while not watch.finished:
            if pump.done():
                return  # the feed ended or this client fell behind: reconnecting resyncs
            try:
                first = await asyncio.wait_for(queue.get(), timeout=self.heartbeat_seconds)
            except TimeoutError:
                # The session this stream was opened with may have ended since.
                if not await services.still_signed_in():
                    return
                yield ": heartbeat\n\n"
                continue
            await asyncio.sleep(COALESCE_SECONDS)
            batch = [first]
            while not queue.empty():
                batch.append(queue.get_nowait())
            # After a RESYNC the changes cannot be trusted to be all there: redraw it all.
            resync = any(change.kind == LabChangeKind.RESYNC for change in batch)
            for event, html in await uninterrupted(watch.snapshot() if resync else watch.update(batch)):
                yield message(event, html)


async def _pump(changes: AsyncIterator[LabChange], queue: asyncio.Queue[LabChange]) -> None:
    """Move changes from the feed into the stream's queue, so that waiting for one can time
    out (for the heartbeat) without cancelling the feed's generator. A database fault (a
    resync's reload while the database is down) ends it as falling behind does: the browser
    reconnects and starts again from a snapshot."""
    try:
        with suppress(FeedOverflow, asyncio.QueueFull):
            async for change in changes:
                queue.put_nowait(change)
    except Exception as error:
        if unavailable(error) is None:
            raise
        quiet.fault("a live-update stream", error)
        return
    log.info("live update stream fell behind; the browser will reconnect and resynchronise")
