"""The agents' console requests: how a host's agent hears, on whichever replica it is connected
to, that a console of one of its machines waits for it to dial in (step 3 of `consoles`).

A replica turns a console session `requested` once it is ready to pair the agent's socket with
the browser's (`Consoles.announce`). The change stream carries that write to every replica; the
one holding the host's `consoleRequests` subscription hands it to the agent as a
`ConsoleRequest` — where to dial (`<replica>/consoles/agent/<session>`, with its host token;
`kubekvm.console` pipes the two websockets together there). A subscriber starts with the
sessions waiting now, and after a feed RESYNC hands over again every one still waiting; each
session reaches the agent once, however often it is read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from kubekvm.config import Settings
from kubekvm.database import uninterrupted
from kubekvm.events import EventFeed
from kubekvm.models import ConsoleSession, ConsoleState, readable, utcnow
from kubekvm.services.consoles import COLLECTION
from kubekvm.services.rulebook import HOST_ITSELF
from kubekvm.services.rules import Operations, stream
from kubekvm.streams import FeedOverflow

AGENT_PATH = "/consoles/agent/"
# Session ids an agent's subscription has handed out, so the same request read twice (an insert
# and an update of it, or the snapshot and then the feed) reaches the agent once.
REMEMBERED_REQUESTS = 512


@dataclass(frozen=True, kw_only=True)
class ConsoleRequest:
    """What a host's agent needs to serve one console."""

    session: str
    machine_id: str
    machine: str
    deployment: str
    index: int
    url: str  # the websocket the agent dials: the replica's address + /consoles/agent/<session>

    @classmethod
    def of(cls, session: ConsoleSession) -> ConsoleRequest:
        return cls(session=session.session, machine_id=session.machine_id, machine=session.machine,
                   deployment=session.deployment, index=session.index,
                   url=session.replica.rstrip("/") + AGENT_PATH + session.session)


class ConsoleRequests:
    """The console sessions waiting for a host's agent, as a feed."""

    def __init__(self, *, settings: Settings, feed: EventFeed) -> None:
        self.settings = settings
        self.feed = feed

    async def waiting(self, host: str) -> list[ConsoleSession]:
        """Sessions of `host` still waiting for its agent (the snapshot a subscriber starts with)."""
        since = utcnow() - timedelta(seconds=self.settings.console_connect_seconds)
        return await ConsoleSession.find(
            {"host": host, "state": ConsoleState.REQUESTED.value, "opened_at": {"$gt": since}}).to_list()

    async def requests(self, *, host: str) -> AsyncIterator[ConsoleRequest]:
        """The console requests for `host`'s agent: those waiting now, then each new one as
        the event feed brings it (from whichever replica wrote it)."""
        handed: OrderedDict[str, None] = OrderedDict()

        def first_time(session: str) -> bool:
            if session in handed:
                return False
            handed[session] = None
            if len(handed) > REMEMBERED_REQUESTS:
                handed.popitem(last=False)
            return True

        async with self.feed.subscribe() as subscription:
            for session in await uninterrupted(self.waiting(host)):
                if first_time(session.session):
                    yield ConsoleRequest.of(session)
            while True:
                change = await subscription.next()
                if subscription.overflowed:
                    raise FeedOverflow("the console request feed fell behind; resubscribe")
                if change.resync:  # requests may have been missed: hand over those still waiting
                    for session in await uninterrupted(self.waiting(host)):
                        if first_time(session.session):
                            yield ConsoleRequest.of(session)
                    continue
                document = change.document
                if (change.collection != COLLECTION or document is None or document.get("host") != host
                        or document.get("state") != ConsoleState.REQUESTED.value):
                    continue
                requested = readable(ConsoleSession, document)
                if requested is not None and first_time(requested.session):
                    yield ConsoleRequest.of(requested)


class ConsoleRequestOperations(Operations):
    """The console requests as a host's agent may follow them."""

    @stream(HOST_ITSELF, field="consoleRequests")
    async def console_requests(self, host: str) -> AsyncIterator[ConsoleRequest]:
        """The console requests for `host`'s agent (its own token only: not even an admin's)."""
        async for request in self.services.console_requests.requests(host=host):
            yield request
