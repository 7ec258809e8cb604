"""The console's two websockets, the browser's and the host agent's, piped together in memory.

  WS /consoles/socket               noVNC on the console page (its session cookie + a ticket)
  WS /consoles/agent/{session}      the agent of the machine's host, dialling back (host token)

The browser's socket redeems its one-time ticket and records a console session naming this
replica's advertised address (`Authorized.open_console`, `kubekvm.services.consoles`). The agent
hears of it through its `consoleRequests` subscription (`kubekvm.services.console_requests`) — on
whichever replica it is connected to — and dials *this* replica directly, so both sockets end
here and meet in a `Pairing`, whatever replica the load balancer gave either of them. Then
bytes are copied both ways, unparsed, until one side closes, the console has had no keyboard or
mouse input for `console_idle_seconds`, or the replica stops. The bytes are never logged: only
who opened which console, and how it ended (the audit log's `openConsole`/`closeConsole`).

Idle means no *input*: noVNC keeps asking for screen updates (FramebufferUpdateRequest, RFB
client message 3, ten bytes) whether anyone is there or not, so a browser frame made of those
alone does not count as input; a key, the mouse or a paste does.

Refusals and ends are websocket close codes in the application range (4000-4999) with a sentence
as the reason: the page shows the sentence and picks its buttons by the code. An agent that cannot
reach the machine's display dials in anyway and closes with such a code, which is passed on.

The two halves stay one module: the agent's (`ConsoleSockets.agent`) is only the other end of a
`Pairing` the browser's half made — a lookup in this replica's pairings and a handover of its
socket, while the browser's half pipes and closes both. Apart, they would share the pairings
table and split one handshake over two files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from enum import IntEnum

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketState

from kubekvm import metrics
from kubekvm.access.objects import may_serve_console
from kubekvm.authorized import SESSION_RECHECK_SECONDS, Authorized
from kubekvm.config import Settings
from kubekvm.errors import (
    Forbidden,
    HostUnreachable,
    KubeKVMError,
    MachineOff,
    NotFound,
    TooManyConsoles,
    Unauthenticated,
)
from kubekvm.models import ConsoleSession
from kubekvm.services.consoles import LEASE

log = logging.getLogger(__name__)

# How often an open console checks its person may still use it (`_pipe`'s watch).
ACCOUNT_RECHECK_SECONDS = 0.4
FRAMEBUFFER_UPDATE_REQUEST = 3
FRAMEBUFFER_UPDATE_REQUEST_SIZE = 10
REASON_LIMIT = 120  # a close frame's reason has at most 123 bytes
# The ticket travels as a websocket subprotocol, `kubekvm.ticket.<ticket>` (as Kubernetes passes
# bearer tokens to websockets): unlike the URL, that is in no access log.
TICKET_PROTOCOL = "kubekvm.ticket."


class Close(IntEnum):
    NORMAL = 1000
    TICKET = 4401  # no good ticket, or one of another account
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    IDLE = 4408
    MACHINE_OFF = 4409
    TOO_MANY = 4429
    INTERNAL = 4500
    HOST_LOST = 4502  # the agent's side went away mid-console
    HOST_UNREACHABLE = 4503  # no agent dialled in


_CODES: tuple[tuple[type[KubeKVMError], Close], ...] = (
    (Unauthenticated, Close.TICKET), (Forbidden, Close.FORBIDDEN), (NotFound, Close.NOT_FOUND),
    (MachineOff, Close.MACHINE_OFF), (TooManyConsoles, Close.TOO_MANY), (HostUnreachable, Close.HOST_UNREACHABLE))


def close_code(error: KubeKVMError) -> Close:
    return next((code for kind, code in _CODES if isinstance(error, kind)), Close.INTERNAL)


def is_input(frame: bytes) -> bool:
    """Whether a browser frame carries a person's input, rather than only noVNC's own requests
    for screen updates."""
    for offset in range(0, len(frame), FRAMEBUFFER_UPDATE_REQUEST_SIZE):
        if frame[offset] != FRAMEBUFFER_UPDATE_REQUEST:
            return True
    return False


@dataclass(frozen=True)
class Ending:
    code: int
    reason: str  # for the person at the browser
    note: str  # for the audit log


@dataclass(eq=False)
class Pairing:
    """A browser waiting for (then piped to) the agent of `session.host`."""

    session: ConsoleSession
    joined: asyncio.Future[WebSocket] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    finished: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Traffic:
    to_machine: int = 0
    from_machine: int = 0
    last_input: float = field(default_factory=time.monotonic)


class ConsoleSockets:
    def __init__(self, *, settings: Settings) -> None:
        self.settings = settings
        # This replica's consoles by session id: what an agent dialling in is matched with.
        self.pairings: dict[str, Pairing] = {}

    def routes(self) -> list[BaseRoute]:
        return [WebSocketRoute("/consoles/socket", self.browser),
                WebSocketRoute("/consoles/agent/{session}", self.agent)]

    async def browser(self, websocket: WebSocket) -> None:
        offered = [str(p) for p in websocket.scope.get("subprotocols") or []]
        ticket = next((p.removeprefix(TICKET_PROTOCOL) for p in offered if p.startswith(TICKET_PROTOCOL)), "")
        # Accept first: a refusal before accepting reaches the page as a bare failed handshake,
        # after it as a close code and a sentence the page can show. The chosen subprotocol is
        # never the ticket's (browsers insist on one they offered: the page offers "binary").
        await websocket.accept(subprotocol="binary" if "binary" in offered else None)
        services: Authorized = websocket.state.services
        try:
            session = await services.open_console(ticket)
        except KubeKVMError as error:
            await _close(websocket, close_code(error), error.message)
            return
        pairing = Pairing(session)
        self.pairings[session.session] = pairing
        started = time.monotonic()
        traffic = Traffic()
        ending = Ending(Close.INTERNAL, "The console failed on the server; reconnect.", "server error")
        agent: WebSocket | None = None
        counted = False
        try:
            await services.announce_console(session)
            agent, early, ending = await self._await_agent(websocket, pairing)
            if agent is not None:
                await services.console_opened(session)
                metrics.CONSOLE_SESSIONS.inc()
                counted = True
                log.info("console %s of %s open (host %s)", session.session[:8], session.machine, session.host)
                ending = await self._pipe(websocket, agent, session=session, early=early, traffic=traffic,
                                          services=services)
        finally:
            self.pairings.pop(session.session, None)
            await _close(websocket, ending.code, ending.reason)
            if agent is not None:
                await _close(agent, Close.NORMAL, "console closed")
            pairing.finished.set()
            if counted:
                metrics.CONSOLE_SESSIONS.dec()
            seconds = time.monotonic() - started
            log.info("console %s of %s closed after %.0f s: %s", session.session[:8], session.machine, seconds,
                     ending.note)
            with contextlib.suppress(Exception):  # the database may be gone with the replica
                await services.close_console(session, reason=(
                    f"{ending.note}; open {seconds:.0f} s; {traffic.to_machine} bytes to the machine, "
                    f"{traffic.from_machine} from it"))

    async def _await_agent(self, websocket: WebSocket,
                           pairing: Pairing) -> tuple[WebSocket | None, list[bytes], Ending]:
        """The agent's socket once it dials in, and whatever the browser sent meanwhile; or
        None and why not (the agent never came, or the browser left)."""
        early: list[bytes] = []
        deadline = time.monotonic() + self.settings.console_connect_seconds
        while True:
            reading = asyncio.ensure_future(websocket.receive())
            waited: set[asyncio.Future[object]] = {pairing.joined, reading}  # type: ignore[arg-type]
            done, _ = await asyncio.wait(waited, timeout=max(deadline - time.monotonic(), 0),
                                         return_when=asyncio.FIRST_COMPLETED)
            if reading in done:
                message = reading.result()
                if message["type"] == "websocket.disconnect":
                    return None, early, Ending(Close.NORMAL, "", "the browser left before the host answered")
                early.extend(_payload(message))
            else:
                early.extend(_payload(await _cancelled(reading)))
            if pairing.joined.done():
                return pairing.joined.result(), early, Ending(Close.NORMAL, "", "")
            if reading in done:
                continue
            return None, early, Ending(
                Close.HOST_UNREACHABLE,
                "The machine's host did not answer. It may be unreachable; try again in a minute.",
                "the host's agent did not dial in")

    async def _pipe(self, browser: WebSocket, agent: WebSocket, *, session: ConsoleSession, early: list[bytes],
                    traffic: Traffic, services: Authorized) -> Ending:
        for frame in early:
            traffic.to_machine += len(frame)
            await agent.send_bytes(frame)

        async def to_machine() -> Ending:
            while True:
                message = await browser.receive()
                if message["type"] == "websocket.disconnect":
                    return Ending(Close.NORMAL, "", "closed by the browser")
                for frame in _payload(message):
                    if is_input(frame):
                        traffic.last_input = time.monotonic()
                    traffic.to_machine += len(frame)
                    await agent.send_bytes(frame)

        async def from_machine() -> Ending:
            while True:
                message = await agent.receive()
                if message["type"] == "websocket.disconnect":
                    code = int(message.get("code") or 1006)
                    said = str(message.get("reason") or "")
                    if 4000 <= code < 5000:  # the agent's own verdict, e.g. the machine stopped
                        return Ending(code, said, f"the host closed it: {said}")
                    return Ending(Close.HOST_LOST, "Lost the connection to the machine's host; reconnect.",
                                  f"the host's side went away (code {code})")
                for frame in _payload(message):
                    traffic.from_machine += len(frame)
                    await browser.send_bytes(frame)

        async def watch() -> Ending:
            idle = self.settings.console_idle_seconds
            renew_every = LEASE.total_seconds() / 3
            renewed = checked = touched = time.monotonic()
            while True:
                now = time.monotonic()
                if now - traffic.last_input >= idle:
                    minutes = idle / 60
                    said = f"{minutes:.0f} minutes" if minutes >= 1 else f"{idle:.0f} seconds"
                    return Ending(Close.IDLE, f"Closed after {said} without keyboard or mouse input; reconnect "
                                              "to go on.", "idle")
                if now - checked >= ACCOUNT_RECHECK_SECONDS:
                    # A console opened through a session that has ended since (signed out, or
                    # ended by a password change or an admin), or by a person whose account was
                    # disabled or whose role changed, closes at its next check: two indexed reads
                    # twice a second, so an admin's disabling ends it within a second on whatever
                    # replica holds it. Keyboard or mouse input counts as use of the session
                    # (written at most every SESSION_RECHECK_SECONDS).
                    touch = traffic.last_input > touched and now - touched >= SESSION_RECHECK_SECONDS
                    if not await services.still_signed_in(touch=touch):
                        return Ending(Close.TICKET, "Your session has ended: sign in again.", "session ended")
                    checked = now
                    if touch:
                        touched = now
                if now - renewed >= renew_every:
                    await services.renew_console(session)
                    renewed = now
                await asyncio.sleep(min(traffic.last_input + idle, renewed + renew_every,
                                        checked + ACCOUNT_RECHECK_SECONDS) - now + 0.01)

        tasks = [asyncio.create_task(job()) for job in (to_machine, from_machine, watch)]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if any(task.exception() for task in done):
                # A send to a socket that had just closed: the other direction reads that close
                # (with the agent's code and reason) a moment later, and tells the real story.
                more, _ = await asyncio.wait(pending, timeout=1, return_when=asyncio.FIRST_COMPLETED)
                done |= more
            for task in done:
                if task.exception() is None:
                    return task.result()
            error = next(iter(done)).exception()
            log.debug("console %s broke: %r", session.session[:8], error)
            return Ending(Close.HOST_LOST, "The console connection broke; reconnect.",
                          f"broken ({type(error).__name__})")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def agent(self, websocket: WebSocket) -> None:
        services: Authorized = websocket.state.services
        pairing = self.pairings.get(str(websocket.path_params["session"]))
        if pairing is None or pairing.joined.done() or not may_serve_console(services.actor,
                                                                                pairing.session.host):
            # Refused before accepting: the agent sees a failed handshake. Nothing said about
            # whether the session exists: only its own host may know.
            await websocket.close(code=Close.NOT_FOUND)
            return
        await websocket.accept()
        pairing.joined.set_result(websocket)
        # The browser's handler pipes and closes; this connection lives until it is done.
        await pairing.finished.wait()


async def _cancelled(reading: asyncio.Future[Message]) -> Message | None:
    """Stop a pending read; what it had read if it finished meanwhile (so nothing is lost)."""
    reading.cancel()
    try:
        return await reading
    except asyncio.CancelledError:
        return None


def _payload(message: object) -> list[bytes]:
    """The bytes of a websocket message (noVNC and the agent send binary frames only)."""
    if isinstance(message, dict) and message.get("type") == "websocket.receive":
        data = message.get("bytes")
        if isinstance(data, bytes) and data:
            return [data]
    return []


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state == WebSocketState.DISCONNECTED:
        return
    encoded = reason.encode()[:REASON_LIMIT].decode(errors="ignore")
    with contextlib.suppress(Exception):  # already gone from the other side
        await websocket.close(code=code, reason=encoded)
