"""Console tunnels: the agent's half of a machine's console.

A domain's VNC display listens on the host's loopback only (``agent.domain_xml``), and the agent
listens on nothing: a hypervisor opens no port to the network. When someone opens a console,
the server tells the agent through the ``consoleRequests`` subscription on the agent's GraphQL
websocket, naming the session and the URL of the server replica that holds the browser. For
each request the agent

1. finds the machine's domain, checks it is the machine the server means (its KubeKVM metadata)
   and that it runs, and asks libvirtd for a new client connection to its display
   (``Hypervisor.open_display``: QEMU's VNC server adds a client on a socket libvirtd hands
   over). So the agent needs no route to the host's loopback: in a Kubernetes pod with its own
   network namespace it reaches the display just the same;
2. dials the replica's ``/consoles/agent/<session>`` websocket with its host token;
3. copies bytes both ways, unread and unlogged, until either end closes.

When step 1 fails the agent still dials, and closes at once with a code and a sentence (the
machine is off, not here), so the person at the browser learns why at once instead of after a
timeout. When the display closes mid-console, the code says whether the machine stopped. Codes
are the server's (`kubekvm.console.Close`), in the websocket application range, which the server
passes on to the browser.

Tunnels are independent of the GraphQL connection: a console stays open while the agent
reconnects to the server, and stopping the agent closes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from agent.hypervisor import Hypervisor, HypervisorError
from agent.names import InvalidName, check_index, check_lab_name, domain_name

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
READ_SIZE = 64 * 1024
# A sanity bound: the server limits consoles per person, this limits them per host.
MAX_TUNNELS = 256
# After the display closes, how long (checks x interval) to wait for libvirt to see the domain off.
STOP_CHECKS = 25
STOP_CHECK_INTERVAL = 0.2
_SESSION = re.compile(r"[A-Za-z0-9_-]{16,128}")

# The server's close codes (kubekvm.console.Close).
NORMAL = 1000
NOT_FOUND = 4404
MACHINE_OFF = 4409
HOST_LOST = 4502
UNAVAILABLE = 4503


class ConsoleRequestError(ValueError):
    """A console request the agent will not act on."""


class Refusal(Exception):
    """Why a console cannot be served, as the close code and sentence the browser gets."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ConsoleRequest:
    session: str
    machine_id: str
    machine: str
    deployment: str
    index: int
    url: str  # ws:// or wss:// (http(s) from the server is turned into its websocket form)

    @classmethod
    def from_graphql(cls, payload: Mapping[str, Any]) -> ConsoleRequest:
        try:
            session = str(payload["session"])
            deployment = check_lab_name(str(payload["deployment"]))
            index = check_index(payload["index"])
            url = socket_url(str(payload["url"]))
            machine_id = str(payload["machineId"])
            machine = str(payload.get("machine") or f"{deployment}-{index}")
        except (KeyError, TypeError, InvalidName, ValueError) as error:
            raise ConsoleRequestError(f"bad console request: {error}") from None
        if _SESSION.fullmatch(session) is None:
            raise ConsoleRequestError("bad console request: malformed session id")
        return cls(session=session, machine_id=machine_id, machine=machine, deployment=deployment,
                   index=index, url=url)

    @property
    def domain(self) -> str:
        return domain_name(self.deployment, self.index)


def socket_url(url: str) -> str:
    """The server's http(s) URL of a console as the websocket URL to dial."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) or ws(s) URL: {url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


class ConsoleTunnels:
    def __init__(self, *, hypervisor: Hypervisor, token_source: Callable[[], str | None],
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.hypervisor = hypervisor
        self.token_source = token_source
        self.connect_timeout = connect_timeout
        self._tunnels: dict[str, asyncio.Task[None]] = {}

    @property
    def active(self) -> int:
        return len(self._tunnels)

    def open(self, request: ConsoleRequest) -> None:
        """Serve `request` in the background (a request already being served is ignored)."""
        if request.session in self._tunnels:
            return
        task = asyncio.create_task(self._serve(request), name=f"console-{request.session[:8]}")
        self._tunnels[request.session] = task
        task.add_done_callback(lambda _: self._tunnels.pop(request.session, None))

    async def close(self) -> None:
        tasks = list(self._tunnels.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, request: ConsoleRequest) -> None:
        display: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        refusal: Refusal | None = None
        try:
            if len(self._tunnels) > MAX_TUNNELS:
                raise Refusal(UNAVAILABLE, "The machine's host has too many consoles open; try again later.")
            async with asyncio.timeout(self.connect_timeout):  # not wait_for: it may swallow a cancel
                display = await self._display(request)
        except Refusal as error:
            refusal = error
        except (OSError, TimeoutError, HypervisorError) as error:
            refusal = Refusal(UNAVAILABLE, "The machine's display does not answer; try again.")
            log.warning("console %s of %s: display unreachable: %s", request.session[:8], request.machine, error)
        token = self.token_source()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with connect(request.url, additional_headers=headers, open_timeout=self.connect_timeout,
                               compression=None, max_size=None) as server:
                if refusal is not None or display is None:
                    refusal = refusal or Refusal(UNAVAILABLE, "The machine's display is unavailable.")
                    log.info("console %s of %s refused: %s", request.session[:8], request.machine, refusal.reason)
                    await server.close(refusal.code, refusal.reason)
                    return
                log.info("console %s of %s: connected", request.session[:8], request.machine)
                ending = await self._pipe(request, server, *display)
                log.info("console %s of %s: closed (%s)", request.session[:8], request.machine, ending)
        except (OSError, TimeoutError, WebSocketException) as error:
            log.warning("console %s of %s: cannot reach the server at %s: %s", request.session[:8],
                        request.machine, request.url.split("/consoles/")[0], error)
        finally:
            if display is not None:
                display[1].close()
                with contextlib.suppress(OSError):
                    await display[1].wait_closed()

    async def _display(self, request: ConsoleRequest) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            found = await self.hypervisor.status(request.domain)
        except HypervisorError as error:
            log.warning("console %s: libvirt: %s", request.session[:8], error)
            raise Refusal(UNAVAILABLE, "The machine's host cannot read the machine right now; try again.") from None
        if found is None or found.metadata is None or found.metadata.machine_id != request.machine_id:
            raise Refusal(NOT_FOUND, f"{request.machine} is not on its host (yet).")
        if not found.active:
            raise Refusal(MACHINE_OFF, f"{request.machine} is off. Start it to use its console.")
        try:
            connection = await self.hypervisor.open_display(request.domain)
        except HypervisorError as error:  # e.g. libvirtd did not answer in time
            log.warning("console %s: libvirt: %s", request.session[:8], error)
            raise Refusal(UNAVAILABLE, "The machine's host cannot open its display right now; try again.") from None
        connection.setblocking(False)
        return await asyncio.open_connection(sock=connection)

    async def _pipe(self, request: ConsoleRequest, server: ClientConnection, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> str:
        async def to_server() -> str:
            while data := await reader.read(READ_SIZE):
                await server.send(data)
            # The display closed: say whether the machine stopped (the browser then offers to
            # start it). QEMU closes its display a moment before libvirt sees it gone.
            for _ in range(STOP_CHECKS):
                found = await self.hypervisor.status(request.domain)
                if found is None or not found.active:
                    await server.close(MACHINE_OFF, f"{request.machine} stopped. Start it to use its console.")
                    return "the machine stopped"
                await asyncio.sleep(STOP_CHECK_INTERVAL)
            await server.close(HOST_LOST, f"{request.machine}'s display closed the connection; reconnect.")
            return "the display closed"

        async def to_display() -> str:
            async for message in server:
                writer.write(message if isinstance(message, bytes) else message.encode())
                await writer.drain()
            return f"the server closed it ({server.close_code})"

        tasks = [asyncio.create_task(to_server()), asyncio.create_task(to_display())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            first = next(iter(done))
            error = first.exception()
            return first.result() if error is None else f"broken ({type(error).__name__})"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
