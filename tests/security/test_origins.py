"""Cross-site websocket hijacking (issue 11, item 8): a page on another origin opens a websocket
to this server; the browser attaches the victim's session cookie. Every websocket route of the
application must refuse the handshake, the console's included, while the server's own pages
(and, behind a proxy, its public URL) still connect. The pages' live streams likewise.

The routes are read from the application itself, so a websocket added later is attacked too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route, WebSocketRoute
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from kubekvm.app import GraphQLApp, create_app
from kubekvm.config import Settings
from tests.support.processes import Server

FOREIGN = ("https://evil.example", "http://127.0.0.1.evil.example", "null")
PUBLIC = "https://kubekvm.example.edu"


def websocket_paths() -> list[str]:
    """Every path of the application that takes a websocket, with any parameter filled in."""
    app = create_app(settings=Settings(), connection=None)  # type: ignore[arg-type]
    paths = []
    for route in app.routes:
        takes_websockets = isinstance(route, WebSocketRoute) or (
            isinstance(route, Route) and isinstance(route.endpoint, GraphQLApp))
        if takes_websockets:
            paths.append(re.sub(r"\{[^}]+\}", "x", route.path))  # type: ignore[attr-defined]
    assert {"/graphql", "/consoles/socket"} <= set(paths), paths
    return sorted(set(paths))


@pytest.fixture(scope="module")
def cookie(server: Server) -> Iterator[str]:
    server.user("origin-student", "student")
    client = server.session("origin-student")
    value = client.cookies["kubekvm_session"]
    yield f"kubekvm_session={value}"
    client.close()


def handshake(server: Server, path: str, *, cookie: str, origin: str | None, host: str | None = None) -> int:
    """The HTTP status of a websocket handshake: 101 when accepted."""
    url = server.url.replace("http://", "ws://") + path
    headers = {"Cookie": cookie}
    if host is not None:
        headers["Host"] = host
    protocols = ["graphql-transport-ws"] if path == "/graphql" else ["binary", "kubekvm.ticket.none"]
    try:
        with connect(url, origin=origin, additional_headers=headers, subprotocols=protocols,  # type: ignore[arg-type]
                     open_timeout=10):
            return 101
    except InvalidStatus as refused:
        return int(refused.response.status_code)


@pytest.mark.parametrize("path", websocket_paths())
def test_a_foreign_page_cannot_open_any_websocket_with_the_cookie(server: Server, cookie: str, path: str) -> None:
    for origin in FOREIGN:
        assert handshake(server, path, cookie=cookie, origin=origin) == 403, (path, origin)


@pytest.mark.parametrize("path", ["/graphql", "/consoles/socket"])
def test_the_servers_own_pages_still_connect(server: Server, cookie: str, path: str) -> None:
    # A browser on the page sends the page's origin; a program sends none.
    assert handshake(server, path, cookie=cookie, origin=server.url) == 101
    assert handshake(server, path, cookie=cookie, origin=None) == 101


def test_behind_a_proxy_the_public_url_is_the_servers_origin(start_kubekvm: Callable[..., Server]) -> None:
    """The proxy reaches the server under its own name (the Host it sends is not the one the
    browser saw): the public URL's origin is accepted, other names still refused."""
    behind = start_kubekvm(env={"KUBEKVM_PUBLIC_URL": PUBLIC + "/"})
    behind.user("proxied-student", "student")
    client = behind.session("proxied-student")
    cookie = f"kubekvm_session={client.cookies['kubekvm_session']}"
    internal = "kubekvm.kubekvm.svc:8000"
    for path in ("/graphql", "/consoles/socket"):
        assert handshake(behind, path, cookie=cookie, origin=PUBLIC, host=internal) == 101, path
        assert handshake(behind, path, cookie=cookie, origin="https://other.example.edu", host=internal) == 403
        assert handshake(behind, path, cookie=cookie, origin="http://kubekvm.example.edu:8443", host=internal) == 403
    client.close()


def test_allowed_origins_are_trusted_and_a_bad_one_stops_the_server(start_kubekvm: Callable[..., Server]) -> None:
    trusting = start_kubekvm(env={"KUBEKVM_ALLOWED_ORIGINS": "https://teach.example.edu, http://lab.example.edu:8080"})
    trusting.user("trusted-student", "student")
    client = trusting.session("trusted-student")
    cookie = f"kubekvm_session={client.cookies['kubekvm_session']}"
    for origin in ("https://teach.example.edu", "http://lab.example.edu:8080"):
        assert handshake(trusting, "/consoles/socket", cookie=cookie, origin=origin) == 101, origin
    assert handshake(trusting, "/consoles/socket", cookie=cookie, origin="https://lab.example.edu") == 403
    client.close()
    for wrong in ("*", "teach.example.edu/path"):
        with pytest.raises(RuntimeError, match="exited") as failed:
            start_kubekvm(env={"KUBEKVM_ALLOWED_ORIGINS": wrong})
        log = Path(str(failed.value).rsplit("see ", 1)[1]).read_text()
        assert "KUBEKVM_ALLOWED_ORIGINS" in log and "Traceback" not in log, log


def test_a_foreign_page_cannot_hold_live_streams(server: Server, cookie: str) -> None:
    client = httpx.Client(base_url=server.url, timeout=30, headers={"Cookie": cookie})
    for origin in FOREIGN:
        refused = client.get("/events?mine=1", headers={"Origin": origin})
        assert refused.status_code == 403, (origin, refused.text)
    with client.stream("GET", "/events?mine=1", headers={"Origin": server.url}) as own:
        assert own.status_code == 200
        assert own.headers["content-type"].startswith("text/event-stream")
    client.close()
