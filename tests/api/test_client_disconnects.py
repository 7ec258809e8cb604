"""A client that goes away mid-request is ordinary (a load run's end, a closed laptop): the
server notes it on a debug line, not as an ERROR with a traceback."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable

from tests.support.processes import Server


def hang_up(server: Server, request: bytes) -> None:
    """Send `request` and reset the connection at once (SO_LINGER 0: a RST, as a killed client)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(request)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_a_client_leaving_mid_request_is_no_error(start_kubekvm: Callable[..., Server]) -> None:
    server = start_kubekvm(log_level="debug")
    body = json.dumps({"query": "{ deployments { total } }"}).encode()
    head = (f"POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {server.admin_token}\r\n").encode()
    # The body announced but never all sent: the server is reading it when the client goes.
    for _ in range(5):
        hang_up(server, head + b"Content-Length: 500\r\n\r\n" + body[:10])

    deadline = time.monotonic() + 30
    while server.child.log.read_text().count("the client went away") < 5:
        assert time.monotonic() < deadline, "the server never noticed the clients leaving"
        time.sleep(0.1)
    log = server.child.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
