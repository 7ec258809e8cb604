"""Unbounded per-user resources (issue 11, item 10): one student opens 300 live-update streams;
one client opens subscription after subscription. Past the documented caps each new one is
refused with a clear reason, other users are not affected, and a slot is given back when a
stream or subscription ends.

A subscription counts as held once it has delivered an event (a lab created for the purpose),
so the test never guesses with a delay whether the server has taken the slot yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.processes import Server

LIVE_CAP = 20  # KUBEKVM_LIVE_MAX_STREAMS_PER_USER's default
TEMPLATE = ('mutation { createTemplate(input: {name: "caps-linux", title: "T", os: LINUX, image: "x.qcow2", '
            'vcpus: 1, memoryMib: 128, diskGib: 1}) { name } }')


READERS: list[AsyncIterator[bytes]] = []  # an abandoned reader would close its stream


async def open_stream(client: httpx.AsyncClient, stack: contextlib.AsyncExitStack) -> httpx.Response:
    response = await stack.enter_async_context(client.stream("GET", "/events?mine=1"))
    if response.status_code == 200:
        # Held: the stream's first bytes (the retry hint) have come.
        reader = response.aiter_raw()
        READERS.append(reader)
        await reader.__anext__()
    else:
        await response.aread()
    return response


async def test_300_live_streams_of_one_student_are_refused_past_the_cap(server: Server) -> None:
    server.user("greedy-student", "student")
    server.user("other-student", "student")
    greedy = server.session("greedy-student")
    other = server.session("other-student")
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=0)
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(
            base_url=server.url, cookies=greedy.cookies, limits=limits, timeout=120))
        answers = await asyncio.gather(*(open_stream(client, stack) for _ in range(300)))
        statuses = [a.status_code for a in answers]
        assert statuses.count(200) == LIVE_CAP, statuses
        assert statuses.count(429) == 300 - LIVE_CAP, statuses
        refused = next(a for a in answers if a.status_code == 429)
        assert f"already have {LIVE_CAP} live-update streams" in refused.text

        # Another student is not affected.
        async with httpx.AsyncClient(base_url=server.url, cookies=other.cookies, timeout=30) as theirs, \
                contextlib.AsyncExitStack() as their_stack:
            assert (await open_stream(theirs, their_stack)).status_code == 200

        # Closing one stream gives its slot back (the server notices the client leaving).
        held = next(a for a in answers if a.status_code == 200)
        await held.aclose()
        async with contextlib.AsyncExitStack() as retry_stack:
            deadline = asyncio.get_running_loop().time() + 60  # generous: a loaded machine is slow
            while (await open_stream(client, retry_stack)).status_code != 200:
                assert asyncio.get_running_loop().time() < deadline, "the closed stream's slot never came back"
                await retry_stack.aclose()  # refused: close that answer and ask again
    greedy.close()
    other.close()


class Socket:
    """A raw graphql-transport-ws connection, to see the protocol's own error messages."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.arrived = asyncio.Condition()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            async with self.arrived:
                self.messages.setdefault(message.get("id", ""), []).append(message)
                self.arrived.notify_all()

    async def subscribe(self, op: str) -> None:
        await self.ws.send(json.dumps({"id": op, "type": "subscribe",
                                       "payload": {"query": "subscription { deploymentEvents { kind lab } }"}}))

    async def complete(self, op: str) -> None:
        await self.ws.send(json.dumps({"id": op, "type": "complete"}))

    async def first(self, op: str, *, timeout: float = 15) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            async with self.arrived:
                await self.arrived.wait_for(lambda: bool(self.messages.get(op)))
                return self.messages[op][0]
        return await asyncio.wait_for(wait(), timeout)


@contextlib.asynccontextmanager
async def socket(server: Server, token: str) -> AsyncIterator[Socket]:
    async with connect(server.ws_url, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                       additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        opened = Socket(ws)
        try:
            yield opened
        finally:
            opened.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opened.reader


def refused_code(message: dict[str, Any]) -> str:
    errors = message["payload"] if message["type"] == "error" else message["payload"].get("errors")
    assert errors, message
    code: str = errors[0]["extensions"]["code"]
    assert "try again" in errors[0]["message"], errors
    return code


@pytest.fixture(scope="module")
def small_caps(start_kubekvm: Callable[..., Server]) -> Server:
    server = start_kubekvm(env={"KUBEKVM_GRAPHQL_MAX_SUBSCRIPTIONS_PER_CONNECTION": "3",
                                "KUBEKVM_GRAPHQL_MAX_SUBSCRIPTIONS_PER_USER": "5"})
    assert not server.graphql(TEMPLATE).get("errors")
    return server


async def answered(server: Server, sockets: dict[str, Socket], prefix: str, *, token: str) -> dict[str, dict[str, Any]]:
    """The first message of each subscription in `sockets` (op id -> socket) of the user of
    `token`: a refusal comes by itself; an accepted subscription answers the next event, so labs
    of that user are made until all have answered (one may still be starting when one is made)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    made = 0
    while True:
        made += 1
        body = await asyncio.to_thread(
            server.graphql, "mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }",
            {"i": {"name": f"{prefix}-{made}", "template": "caps-linux", "replicas": 1}}, token=token)
        assert not body.get("errors"), body
        try:
            firsts = await asyncio.gather(*(sock.first(op, timeout=1) for op, sock in sockets.items()))
        except TimeoutError:
            assert loop.time() < deadline, "a subscription never answered"
            continue
        return dict(zip(sockets, firsts, strict=True))


async def held(server: Server, sockets: dict[str, Socket], prefix: str, *, token: str) -> None:
    for op, message in (await answered(server, sockets, prefix, token=token)).items():
        assert message["type"] == "next", (op, message)


async def test_subscriptions_are_capped_per_websocket_and_per_user(small_caps: Server) -> None:
    server = small_caps
    greedy = await asyncio.to_thread(server.token_for, "greedy-teacher")
    other = await asyncio.to_thread(server.token_for, "other-teacher")
    async with socket(server, greedy) as first, socket(server, greedy) as second:
        for op in ("a1", "a2", "a3"):
            await first.subscribe(op)
        await held(server, {"a1": first, "a2": first, "a3": first}, "caps-1", token=greedy)
        await first.subscribe("a4")
        assert refused_code(await first.first("a4")) == "TOO_MANY_SUBSCRIPTIONS"

        # The user's five: three on the first socket, two more on the second, then no more.
        for op in ("b1", "b2"):
            await second.subscribe(op)
        await held(server, {"b1": second, "b2": second}, "caps-2", token=greedy)
        await second.subscribe("b3")
        assert refused_code(await second.first("b3")) == "TOO_MANY_SUBSCRIPTIONS"

        # Someone else is not affected.
        async with socket(server, other) as theirs:
            await theirs.subscribe("c1")
            await held(server, {"c1": theirs}, "caps-3", token=other)

        # Completing one gives its slot back to the user (once the server has ended it).
        await first.complete("a1")
        deadline = asyncio.get_running_loop().time() + 15
        attempt = 0
        while True:
            attempt += 1
            op = f"b-retry-{attempt}"
            await second.subscribe(op)
            message = (await answered(server, {op: second}, f"caps-retry-{attempt}", token=greedy))[op]
            if message["type"] == "next":
                break
            assert refused_code(message) == "TOO_MANY_SUBSCRIPTIONS"
            assert asyncio.get_running_loop().time() < deadline, "a completed subscription's slot never came back"
