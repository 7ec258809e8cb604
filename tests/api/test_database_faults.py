"""The server while its database is gone: killed outright (SIGKILL), as a crashed pod or an
election would take it away.

Real `kubekvm serve` processes on a real SecantusDB: an external one this test owns (killed and
started again on the same port and files, as a MongoDB node comes back), and the embedded one
the server supervises itself. While the database is down every call is answered quickly and
cleanly (GraphQL UNAVAILABLE, a 503 page, /readyz 503), never a plain-text 500 after a long
wait; afterwards the same calls work again without restarting the server, on the same data.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from pymongo import MongoClient
from websockets.typing import Subprotocol

from tests.api.test_graphql import CREATE, data, ensure_tiny_template, register_host
from tests.support.graphql import Subscriber, websocket_session
from tests.support.processes import VENV_BIN, Child, Server, free_port, start_server, wait_for_mongo
from tests.support.waiting import wait_until

QUERY = "{ templates { name } }"
# The server's own bound on an answer without a database is its 2 s server-selection timeout;
# its other database deadlines are set far longer here (SLOW), so an answer that waited on one
# of them instead (the 10-30 s waits of before) takes longer than FAST. FAST is generous: a
# loaded machine may take many seconds to answer anything, which proves nothing either way.
SLOW = {"KUBEKVM_DB_TIMEOUT": "240", "KUBEKVM_DB_WRITE_TIMEOUT": "240"}
FAST = 60.0


def start_db(storage: Path, port: int) -> Child:
    log = storage.parent / f"secantus-{port}.log"
    process = subprocess.Popen(
        [str(VENV_BIN / "secantusd-py"), "--host", "127.0.0.1", "--port", str(port),
         "--storage-path", str(storage), "--sync-on-commit"],  # as the embedded one runs
        stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_for_mongo(f"mongodb://127.0.0.1:{port}/?directConnection=true", process=process)
    return Child(process, log)


def await_connect(server: Server) -> None:
    async def connect() -> None:
        async with websockets.connect(server.ws_url, subprotocols=[Subprotocol("graphql-transport-ws")],
                                      additional_headers=server.admin_headers, open_timeout=30):
            pass
    asyncio.run(connect())


def post(server: Server, query: str = QUERY) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(server.graphql_url, json={"query": query}, headers=server.admin_headers, timeout=300)
    return response, time.monotonic() - started


def until(condition: Callable[[], Any], *, timeout: float = 60.0, what: str = "") -> Any:
    return wait_until(condition, timeout=timeout, what=what or repr(condition))


def answers(server: Server) -> bool:
    response, _ = post(server)
    return response.status_code == 200 and not response.json().get("errors")


def ready(server: Server) -> bool:
    return httpx.get(f"{server.url}/readyz", timeout=300).status_code == 200


def assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert body["errors"][0]["extensions"]["code"] == "UNAVAILABLE", body
    assert "database" in body["errors"][0]["message"].lower()
    assert response.status_code in (200, 503)
    assert elapsed < FAST, f"UNAVAILABLE took {elapsed:.1f} s"


@pytest.fixture
def external(tmp_path: Path) -> Iterator[tuple[Server, Path, int, list[Child]]]:
    port = free_port()
    storage = tmp_path / "db"
    children = [start_db(storage, port)]
    server = start_server(database_uri=f"mongodb://127.0.0.1:{port}/?directConnection=true", env=SLOW)
    yield server, storage, port, children
    server.stop()
    for child in children:
        child.stop()


def test_a_killed_external_database_is_unavailable_quickly_then_recovers(
        external: tuple[Server, Path, int, list[Child]]) -> None:
    server, storage, port, children = external
    server.user("faulty-teacher", "teacher")
    browser = server.session("faulty-teacher")
    made = server.graphql('mutation { createTemplate(input: {name: "kept", image: "kept.qcow2"}) { name } }')
    assert not made.get("errors"), made

    children[0].stop(signal.SIGKILL)
    # Once the server has noticed (its database client's monitor does, within a heartbeat) ...
    started = time.monotonic()
    until(lambda: not ready(server), timeout=2 * FAST, what="/readyz to fail")
    assert time.monotonic() - started < FAST, "/readyz took long to notice"

    # ... every call is answered UNAVAILABLE at once: a GraphQL error in JSON, never a
    # plain-text 500 (the token lookup in front of the resolver included).
    response, elapsed = post(server)
    assert_unavailable(response, elapsed)
    # Anonymous callers skip the token lookup and reach the resolver: same answer.
    started = time.monotonic()
    anonymous = httpx.post(server.graphql_url, json={"query": QUERY}, timeout=300)
    assert_unavailable(anonymous, time.monotonic() - started)
    started = time.monotonic()
    probe = httpx.get(f"{server.url}/readyz", timeout=300)
    assert probe.status_code == 503 and time.monotonic() - started < FAST
    assert probe.json()["status"] == "database unreachable"
    # An agent (re)connecting its subscriptions is refused with a retryable 503, not a 403.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await_connect(server)
    assert refused.value.response.status_code == 503
    page = browser.get("/labs")
    assert page.status_code == 503, page.text[:300]
    assert page.headers["content-type"].startswith("text/html")
    assert "try again" in page.text.lower()
    assert server.child.process.poll() is None, "the server died with its database"

    children.append(start_db(storage, port))  # the same node comes back, on the same files

    until(lambda: answers(server), what="GraphQL to answer again")
    assert {"name": "kept"} in post(server)[0].json()["data"]["templates"]
    until(lambda: ready(server), what="/readyz to say ready again")
    assert browser.get("/labs").status_code == 200
    browser.close()
    # The refused handshake was an answer, not a failure: no ERROR line of uvicorn's for it
    # ("returned without completing handshake", logged after every denial response by its
    # websockets-sansio protocol) and no traceback anywhere in the outage.
    log = server.child.log.read_text(errors="replace")
    assert "without completing handshake" not in log
    assert "Traceback" not in log


def test_a_killed_embedded_database_is_restarted_on_the_same_data(tmp_path: Path) -> None:
    server = start_server(database_uri=None, env={"KUBEKVM_DATA_DIR": str(tmp_path)})
    try:
        created = server.graphql('mutation { createTemplate(input: {name: "kept", image: "kept.qcow2"}) { name } }')
        assert not created.get("errors"), created
        pid_file = tmp_path / "db.pid"
        old = int(pid_file.read_text())

        os.kill(old, signal.SIGKILL)

        def restarted() -> int | None:
            new = int(pid_file.read_text())
            return new if new != old and Path(f"/proc/{new}").exists() else None

        new = until(restarted, what="the server to start its database again")
        # The dead child was reaped: no zombie left behind.
        until(lambda: not Path(f"/proc/{old}").exists(), timeout=10, what="the old child to be reaped")
        assert Path(f"/proc/{new}/cmdline").read_bytes().find(b"secantusd") >= 0
        until(lambda: answers(server), what="GraphQL to answer again")
        names = {t["name"] for t in post(server)[0].json()["data"]["templates"]}
        assert "kept" in names, f"the data did not survive the restart: {names}"
        until(lambda: ready(server), what="/readyz to say ready again")
        assert server.child.process.poll() is None
    finally:
        server.stop()


# --------------------------------------------------- a collection dropped and restored


def restore_with_drop(server: Server, collection: str) -> None:
    """What `mongorestore --drop` does to one collection: drop it, insert its documents again."""
    client: MongoClient[dict[str, Any]]
    with MongoClient(server.database_uri) as client:
        documents: list[dict[str, Any]] = list(client[server.database_name][collection].find())
        client[server.database_name][collection].drop()
        if documents:
            client[server.database_name][collection].insert_many(documents)


@pytest.fixture(scope="module")
def restored(start_kubekvm: Callable[..., Server]) -> Server:
    """One server for both restore tests (each has its own lab). Heartbeats every half second:
    a live stream that has nothing more to say still gives lines, so waiting for an event can
    give up at its deadline."""
    return start_kubekvm(env={"KUBEKVM_LIVE_HEARTBEAT": "0.5"})


async def test_a_restored_collection_makes_every_subscriber_resync(restored: Server) -> None:
    server = restored
    ensure_tiny_template(server)
    register_host(server, "kvm-resync")
    data(server.graphql(CREATE, {"i": {"name": "restored", "template": "tiny-linux", "replicas": 1}}))
    async with websocket_session(server.ws_url, server.admin_token) as session:
        agent = Subscriber(session, "subscription { hostAssignments(host: \"kvm-resync\") "
                                    "{ kind assignments { vmName } } }")
        labs = Subscriber(session, "subscription { deploymentEvents { kind lab } }")
        first = await agent.wait_for(lambda r: True)
        assert first["hostAssignments"]["kind"] == "SNAPSHOT"
        # deploymentEvents says nothing until something happens: make it say something, so
        # the subscription is known to be registered before the fault.
        data(server.graphql("mutation { updateDeployment(name: \"restored\", input: {title: \"T\"}) { name } }"))
        await labs.wait_for(lambda r: r["deploymentEvents"]["kind"] == "LAB_CHANGED")

        await asyncio.to_thread(restore_with_drop, server, "machines")

        await labs.wait_for(lambda r: r["deploymentEvents"]["kind"] == "RESYNC", timeout=30)
        await agent.wait_for(lambda r: r is not first and r["hostAssignments"]["kind"] == "SNAPSHOT",
                             timeout=30)
        # ... and the feed goes on: the next change still arrives.
        data(server.graphql("mutation { stopMachine(name: \"restored-1\") { name } }"))
        await labs.wait_for(lambda r: r["deploymentEvents"]["kind"] == "MACHINE_CHANGED", timeout=30)
        await agent.close()
        await labs.close()
    assert ready(server)


def test_a_live_page_redraws_after_a_restored_collection(restored: Server) -> None:
    server = restored
    ensure_tiny_template(server)
    data(server.graphql(CREATE, {"i": {"name": "redrawn", "template": "tiny-linux", "replicas": 1}}))
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(30.0), headers=server.admin_headers) as client, \
            client.stream("GET", "/events?lab=redrawn") as response:
        assert response.status_code == 200
        lines = response.iter_lines()

        def next_event(name: str) -> str:
            event, payload = "", list[str]()
            deadline = time.monotonic() + 30
            for line in lines:
                assert time.monotonic() < deadline, f"no {name!r} event within 30 s"
                if line.startswith("event:"):
                    event, payload = line.partition(":")[2].strip(), list[str]()
                elif line.startswith("data:"):
                    payload.append(line.partition(":")[2])
                elif line == "" and event == name:
                    return "\n".join(payload)
            raise AssertionError(f"the stream ended before a {name!r} event")

        assert "machine-redrawn-1" in next_event("machines")  # the snapshot
        restore_with_drop(server, "machines")
        # Redrawn from the database once the feed resyncs (the old watcher died on the drop
        # event, and the page froze).
        assert "machine-redrawn-1" in next_event("machines")
    assert ready(server)
