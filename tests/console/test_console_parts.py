"""The console's small parts on their own: what counts as input, the close codes, the address a
replica advertises, and how the agent reads a console request."""

from __future__ import annotations

import pytest

from agent.console import ConsoleRequest, ConsoleRequestError, socket_url
from kubekvm.cli import advertised_url
from kubekvm.console import Close, close_code, is_input
from kubekvm.errors import (
    Forbidden,
    HostUnreachable,
    MachineOff,
    NotFound,
    TooManyConsoles,
    Unauthenticated,
    ValidationFailed,
)

UPDATE_REQUEST = bytes([3, 1, 0, 0, 0, 0, 4, 0, 3, 0])


@pytest.mark.parametrize(("frame", "expected"), [
    (UPDATE_REQUEST, False),
    (UPDATE_REQUEST * 3, False),  # noVNC batching its refresh requests
    (b"", False),
    (bytes([5, 0, 0, 10, 0, 20]), True),  # PointerEvent
    (bytes([4, 1, 0, 0, 0, 0, 0, 0x61]), True),  # KeyEvent
    (UPDATE_REQUEST + bytes([5, 0, 0, 1, 0, 1]), True),  # a refresh and a mouse move together
    (bytes([6, 0, 0, 0, 0, 0, 0, 1, 0x61]), True),  # ClientCutText (a paste)
    (bytes([255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 30]), True),  # QEMU extended key event
    (b"RFB 003.008\n", True),  # the handshake starts a console: it counts
])
def test_what_counts_as_input(frame: bytes, expected: bool) -> None:
    assert is_input(frame) is expected


def test_close_codes_of_refusals() -> None:
    assert close_code(Unauthenticated("x")) == Close.TICKET == 4401
    assert close_code(Forbidden("x")) == 4403
    assert close_code(NotFound("x")) == 4404
    assert close_code(MachineOff("x")) == 4409
    assert close_code(TooManyConsoles("x")) == 4429
    assert close_code(HostUnreachable("x")) == 4503
    assert close_code(ValidationFailed("f", "x")) == Close.INTERNAL


def test_the_address_a_replica_advertises() -> None:
    assert advertised_url("10.1.2.3", 8000) == "http://10.1.2.3:8000"
    assert advertised_url("127.0.0.1", 9000) == "http://127.0.0.1:9000"
    assert advertised_url("fd00::5", 8000) == "http://[fd00::5]:8000"
    everywhere = advertised_url("0.0.0.0", 8000)
    assert everywhere.startswith("http://") and everywhere.endswith(":8000") and "0.0.0.0" not in everywhere


GOOD = {"session": "AbCdEfGhIjKlMnOpQrStUvWx", "machineId": "6566f0", "machine": "redes-3",
        "deployment": "redes", "index": 3, "url": "http://10.0.0.7:8000/consoles/agent/AbCdEfGhIjKlMnOpQrStUvWx"}


def test_a_console_request_as_the_agent_reads_it() -> None:
    request = ConsoleRequest.from_graphql(GOOD)
    assert request.domain == "kubekvm-redes-3"
    assert request.url == "ws://10.0.0.7:8000/consoles/agent/AbCdEfGhIjKlMnOpQrStUvWx"
    assert socket_url("https://kubekvm.example.edu/consoles/agent/x") == "wss://kubekvm.example.edu/consoles/agent/x"


@pytest.mark.parametrize("change", [
    {"deployment": "../etc"}, {"index": -1}, {"index": True}, {"session": "short"},
    {"session": "has/slash-AbCdEfGhIjKlMn"}, {"url": "file:///etc/passwd"}, {"url": "ftp://x/y"}, {"url": "http://"},
])
def test_a_console_request_the_agent_refuses(change: dict[str, object]) -> None:
    with pytest.raises(ConsoleRequestError):
        ConsoleRequest.from_graphql(GOOD | change)
