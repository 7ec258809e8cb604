"""A console on a real guest, through two server replicas and the real agent.

The tiny-linux guest runs under QEMU (domain type qemu); its VNC display listens on the host's
loopback. Its console answers: a command typed through the console (as keystrokes, the way
noVNC sends them) runs in the guest's shell on its screen, which writes the result to the serial
port, whose log the test reads. The browser's side (this test, an RFB client over the console websocket) reaches
replica A; the agent is connected to replica B only. The console request goes A → MongoDB →
B's change stream → the agent's `consoleRequests` subscription; the agent dials A directly
with its host token, and A pipes the two websockets together. The test does the RFB client
handshake through the tunnel and reads a framebuffer update of the guest's screen.

While the console is open, the hypervisor side's TCP sockets are read from /proc: the agent
listens on nothing, QEMU only on the loopback (its VNC display), and the agent's tunnel is an
outgoing connection to replica A.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from kubekvm_demo.tiny_linux import BANNER
from tests.e2e.conftest import (
    Agent,
    add_tiny_template,
    gql,
    image_dir_with,
    lab_state,
    unique_lab,
    wait_host_ready,
    wait_until,
)
from tests.support.processes import Server
from tests.support.rfb import first_frame, type_text
from tests.support.sockets import tcp_sockets
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.qemu


def qemu_pid(domain: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())


def console_socket(server: Server, ticket: str, token: str) -> Any:
    return connect(server.url.replace("http://", "ws://") + "/consoles/socket",
                   subprotocols=["binary", f"kubekvm.ticket.{ticket}"],  # type: ignore[list-item]
                   additional_headers={"Authorization": f"Bearer {token}"}, max_size=None)


@pytest.mark.timeout(300)
def test_console_of_a_real_guest_through_two_replicas(start_kubekvm: Callable[..., Server],
                                                      agents: Callable[..., Agent], tiny_linux: Path,
                                                      site: Path) -> None:
    browser_side = start_kubekvm()
    agent_side = start_kubekvm(database_name=browser_side.database_name)
    add_tiny_template(browser_side)
    agent = agents(agent_side, site / "state", image_dir_with(site, tiny_linux))  # knows replica B only
    wait_host_ready(browser_side, agent.host_name)
    lab = unique_lab()
    vm = f"{lab}-1"
    student = browser_side.token_for(f"{lab}-s", "student")
    gql(browser_side, "mutation($n: String!) { createDeployment(input: {name: $n, template: \"tiny-linux\", "
                      "replicas: 1}) { name } }", n=lab)
    gql(browser_side, "mutation($n: String!, $s: [String!]!) { setRoster(name: $n, students: $s) { unbound } }",
        n=lab, s=[f"{lab}-s"])
    wait_until(lambda: (lab_state(browser_side, lab) or {}).get("phase") == "ACTIVE", timeout=120, what="lab Active")

    answer = httpx.post(f"{browser_side.url}/machines/{vm}/console/ticket",
                        headers={"Authorization": f"Bearer {student}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    ticket = answer.json()["ticket"]

    serial = agent.serial_log(vm)

    def said(text: str) -> bool:
        return serial.is_file() and text in serial.read_text(errors="replace")

    async def console() -> dict[str, Any]:
        started = time.monotonic()
        async with console_socket(browser_side, ticket, student) as socket:
            frame = await first_frame(socket)
            took = time.monotonic() - started
            sockets = {"agent": tcp_sockets(agent.process.pid),  # type: ignore[union-attr]
                       "qemu": tcp_sockets(qemu_pid(f"kubekvm-{vm}"))}
            # The guest's shells say what they are once started (the serial port's shows in its log).
            await wait_until_async(lambda: said(BANNER), timeout=120, what="the guest's shell banner")
            # Typed on the screen's shell; only a shell that ran it prints 42 on the serial port.
            # Typed again while unanswered: keys that arrive while getty is still setting up
            # the screen's terminal are dropped by it.
            for attempt in range(6):
                await type_text(socket, "echo $((6*7)) answered >/dev/ttyS0\n")
                try:
                    await wait_until_async(lambda: said("42 answered"), timeout=20, what="the typed command's output")
                    break
                except AssertionError:
                    if attempt == 5:
                        raise
        return {"frame": frame, "seconds": took, "sockets": sockets}

    seen = asyncio.run(console())
    frame = seen["frame"]
    assert frame.version in (b"RFB 003.008\n", b"RFB 003.007\n", b"RFB 003.003\n")
    assert frame.name == f"QEMU (kubekvm-{vm})".encode()
    assert frame.width > 0 and frame.height > 0 and frame.rectangles >= 1
    assert frame.colours >= 2, "the guest's screen is blank"
    print(f"console handshake and first frame through two replicas in {seen['seconds']:.2f} s")

    # The hypervisor side: the agent listens on nothing, QEMU on the loopback only (VNC), and
    # the tunnel is the agent's own outgoing connection to replica A.
    agent_sockets, qemu_sockets = seen["sockets"]["agent"], seen["sockets"]["qemu"]
    assert [s for s in agent_sockets if s.listening] == []
    qemu_listening = [s for s in qemu_sockets if s.listening]
    assert qemu_listening and all(s.loopback for s in qemu_listening), qemu_listening
    port_a = int(browser_side.url.rsplit(":", 1)[1])
    assert any(s.remote_port == port_a and not s.listening for s in agent_sockets), agent_sockets

    # The ticket is spent.
    async def again() -> tuple[int | None, str | None]:
        async with console_socket(browser_side, ticket, student) as socket:
            try:
                while True:
                    await socket.recv()
            except ConnectionClosed:
                return socket.close_code, socket.close_reason
    assert asyncio.run(again())[0] == 4401

    entries = gql(browser_side, "query($a: String) { auditLog(actor: $a) { items { action target outcome } } }",
                  a=f"{lab}-s")["auditLog"]["items"]
    actions = [(e["action"], e["target"], e["outcome"]) for e in entries]
    assert ("openConsole", f"machine:{vm}", "ok") in actions
    assert ("openConsole", "", "UNAUTHENTICATED") in actions  # a spent ticket names no machine
    wait_until(lambda: any(e["action"] == "closeConsole" for e in gql(
        browser_side, "query($t: String) { auditLog(target: $t, action: \"closeConsole\") { items { action } } }",
        t=f"machine:{vm}")["auditLog"]["items"]), timeout=60, what="closeConsole audited")
