"""Attacks on GraphQL's transport (issue 11, item 3): every answer of /graphql is GraphQL-shaped
JSON with `extensions.code`, a body over the limit is refused before it is read, and a bad
websocket message closes its socket cleanly.

Against a real `kubekvm serve` on SecantusDB; the oversized bodies go through raw sockets, so
the test controls exactly how much was sent when the refusal came.
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support.processes import Server

LIMIT = 1024 * 1024  # the documented default of KUBEKVM_MAX_BODY_BYTES
CREATE = ('mutation { createTemplate(input: {name: "%s", title: "T", os: LINUX, image: "x.qcow2", '
          'vcpus: 1, memoryMib: 128, diskGib: 1}) { name } }')


def refusal(answer: httpx.Response, status: int, code: str) -> str:
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    body = answer.json()
    assert set(body) == {"errors"}, body
    error: dict[str, Any] = body["errors"][0]
    assert error["extensions"]["code"] == code, body
    assert error["message"], body
    message: str = error["message"]
    return message


def template_names(server: Server) -> set[str]:
    body = server.graphql("{ templates { name } }")
    return {t["name"] for t in body["data"]["templates"]}  # type: ignore[index]


def post(server: Server, content: bytes, *, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(server.graphql_url, content=content, timeout=30,
                      headers={**server.admin_headers, "Content-Type": content_type})


def test_a_batch_is_refused_as_json_and_runs_nothing(server: Server) -> None:
    batch = json.dumps([{"query": CREATE % "batched-1"}, {"query": CREATE % "batched-2"}]).encode()
    message = refusal(post(server, batch), 400, "BAD_REQUEST")
    assert "batch" in message.lower()
    assert not {"batched-1", "batched-2"} & template_names(server)


@pytest.mark.parametrize("body", [b'{"query": ', b"not json at all", b'"a string"', b"42", b"null", b"\xff\xfe{}",
                                  b'{"query": 5}', b'{"query": "{ me { name } }", "variables": [1]}', b"{}"])
def test_malformed_bodies_get_a_code(server: Server, body: bytes) -> None:
    refusal(post(server, body), 400, "BAD_REQUEST")


def test_a_wrong_content_type_gets_a_code_and_writes_nothing(server: Server) -> None:
    query = json.dumps({"query": CREATE % "form-typed"}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        refusal(post(server, query, content_type=content_type), 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "form-typed" not in template_names(server)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_get_a_code(server: Server, method: str) -> None:
    answer = httpx.request(method, server.graphql_url, json={"query": "{ me { name } }"},
                           headers=server.admin_headers, timeout=30)
    refusal(answer, 405, "METHOD_NOT_ALLOWED")
    assert answer.headers["allow"] == "GET, POST"


def test_a_mutation_over_get_gets_a_code(server: Server) -> None:
    answer = httpx.get(server.graphql_url, params={"query": CREATE % "got"}, headers=server.admin_headers, timeout=30)
    refusal(answer, 400, "BAD_REQUEST")
    assert "got" not in template_names(server)


def test_a_body_under_the_limit_still_works(server: Server) -> None:
    padding = " " * (LIMIT - 200)
    answer = post(server, json.dumps({"query": "{ me { name } }" + padding}).encode())
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["me"]["name"] == "admin"


def _raw(server: Server) -> socket.socket:
    parts = urlsplit(server.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed without answering: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(rest) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


def _head(server: Server, extra: str) -> bytes:
    host = urlsplit(server.url).netloc
    return (f"POST /graphql HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {server.admin_token}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


def _assert_too_large(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 413, (status, body)
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["errors"][0]
    assert error["extensions"]["code"] == "PAYLOAD_TOO_LARGE", error
    assert str(LIMIT) in error["message"]


def test_a_declared_10_mb_body_is_refused_before_it_is_sent(server: Server) -> None:
    with _raw(server) as sock:
        sock.sendall(_head(server, f"Content-Length: {10 * 1024 * 1024}\r\n"))
        # Not one byte of the body sent: the answer comes from the headers alone.
        _assert_too_large(*_read_response(sock))


def test_a_chunked_10_mb_body_is_refused_once_past_the_limit(server: Server) -> None:
    """No Content-Length: the server counts what streams in and answers as soon as the count
    passes the limit, while the client still has most of its 10 MB to send."""
    chunk = b" " * 65536
    sent = 0
    with _raw(server) as sock:
        sock.sendall(_head(server, "Transfer-Encoding: chunked\r\n"))
        sock.sendall(b'5\r\n{"a":\r\n')
        while sent <= LIMIT:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        # The rest of the 10 MB is never sent: the answer must come now.
        status, headers, body = _read_response(sock)
    _assert_too_large(status, headers, body)
    assert sent < 2 * LIMIT < 10 * 1024 * 1024


def test_a_too_large_page_form_is_refused_too(server: Server) -> None:
    with _raw(server) as sock:
        host = urlsplit(server.url).netloc
        sock.sendall((f"POST /login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                      f"Content-Length: {10 * 1024 * 1024}\r\n\r\n").encode())
        status, _, body = _read_response(sock)
    assert status == 413, body
    assert b"larger than this server accepts" in body


def _ws(server: Server) -> Any:
    ws = connect(server.ws_url, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                 additional_headers=server.admin_headers, max_size=None, open_timeout=10, legacy=True)
    ws.send(json.dumps({"type": "connection_init", "payload": {}}))
    assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
    return ws


def _closed_with(ws: Any) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=10)
    frame = closed.value.rcvd
    assert frame is not None, "closed without a close frame"
    return frame.code, frame.reason


@pytest.mark.parametrize(("message", "code"), [
    ("{ not json", 4400),
    (b"\x00\x01binary", 4400),
    ('{"type": "subscribe"}', 4400),
    ('{"type": "subscribe", "id": "1", "payload": {"query": 7}}', 4400),
    ('{"type": "subscribe", "id": "1", "payload": {"query": "{ me { name } }", "variables": [1]}}', 4400),
    ('{"type": "subscribe", "id": {"a": 1}, "payload": {"query": "{ me { name } }"}}', 4400),
    ('{"type": "complete", "id": ["x"]}', 4400),
    ('[1, 2]', 4400),
    ('"subscribe"', 4400),
    ('{"type": 5}', 4400),
])
def test_malformed_websocket_messages_close_cleanly(server: Server, message: Any, code: int) -> None:
    ws = _ws(server)
    ws.send(message)
    assert _closed_with(ws)[0] == code


def test_an_oversized_websocket_message_closes_the_socket(server: Server) -> None:
    ws = _ws(server)
    query = "subscription { deploymentEvents { kind } }" + " " * (LIMIT + 1)
    ws.send(json.dumps({"type": "subscribe", "id": "big", "payload": {"query": query}}))
    assert _closed_with(ws)[0] == 1009
    # The server is fine, and logged no traceback for any of this module's attacks.
    assert server.graphql("{ me { name } }")["data"] == {"me": {"name": "admin"}}
    assert "Traceback" not in server.child.log.read_text(errors="replace")


async def test_an_unexpected_failure_is_still_graphql_shaped_and_has_the_headers() -> None:
    """A failure nothing else catches cannot be provoked in a working server (each one found is
    fixed); an application that was never started (no services: every request fails in the
    auth middleware) stands in for one, in process."""
    from kubekvm.app import create_app
    from kubekvm.config import Settings

    app = create_app(settings=Settings(), connection=None)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # no lifespan: not started
    async with httpx.AsyncClient(transport=transport, base_url="http://kubekvm.test") as client:
        answer = await client.post("/graphql", json={"query": "{ me { name } }"})
        page = await client.get("/login")
    assert refusal(answer, 500, "INTERNAL") == "Internal error; the server log has the details."
    assert page.status_code == 500 and page.headers["content-type"].startswith("text/plain")
    for response in (answer, page):
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
