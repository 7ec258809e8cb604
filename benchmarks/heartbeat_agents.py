"""Plays many host agents' heartbeats over their websockets (P4's heartbeat figure).

Run as its own process by ``heartbeats``, so its work is not the measured server's:

    python -m benchmarks.heartbeat_agents --url ws://127.0.0.1:PORT/graphql --tokens-file F
        --interval S --rounds R

``F`` holds ``{"host name": "host token", ...}``. Each agent opens a websocket
(graphql-transport-ws, its token in ``connection_init`` as the agent sends it), registers its
host, opens its ``hostAssignments`` and ``consoleRequests`` subscriptions as the agent does (so
what a heartbeat would make every subscriber do counts, as with real agents) and, once its
assignments' snapshot has come, sends a heartbeat every ``interval`` seconds, the agents spread evenly over the
interval, with the agent's own documents (``agent.documents``). It prints ``CONNECTED n`` once
every agent is registered, ``IDLE START`` and ``IDLE END`` around one interval without
heartbeats, ``MEASURE START`` after a first (warm-up) round of them, ``MEASURE END`` after
``rounds`` more, and then one JSON line: every measured heartbeat's round trip and the failures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from agent import documents

CONNECT_AT_ONCE = 50
CONNECT_ATTEMPTS = 5


class Agent:
    def __init__(self, url: str, host: str, token: str) -> None:
        self.url, self.host, self.token = url, host, token
        self.ids = itertools.count(1)
        self.socket: ClientConnection | None = None

    async def connect(self) -> None:
        self.socket = await connect(self.url, subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                                    open_timeout=60, max_size=None)
        await self.socket.send(json.dumps({"type": "connection_init",
                                           "payload": {"authorization": f"Bearer {self.token}"}}))
        acknowledged = json.loads(await self.socket.recv())
        if acknowledged.get("type") != "connection_ack":
            raise RuntimeError(f"{self.host}: not acknowledged: {acknowledged}")
        await self.execute(documents.REGISTER_HOST, documents.register_host(
            name=self.host, vcpus=8, memory_mib=32768, images=["bench-tiny.qcow2"], domain_type="kvm",
            agent_version="bench"))
        # The agent's own subscriptions, held open for good (`execute` passes over their messages).
        await self.socket.send(json.dumps({"id": "consoles", "type": "subscribe", "payload": {
            "query": documents.CONSOLE_REQUESTS, "variables": documents.console_requests(host=self.host)}}))
        for attempt in itertools.count(1):  # as the agent, again after a while when refused
            ident = f"assignments-{attempt}"
            await self.socket.send(json.dumps({"id": ident, "type": "subscribe", "payload": {
                "query": documents.HOST_ASSIGNMENTS,
                "variables": documents.host_assignments(host=self.host, cursor=None)}}))
            message = await self.first(ident)
            if message.get("type") == "next" and not message["payload"].get("errors"):
                return  # live: its snapshot has come
            if attempt == 5:
                raise RuntimeError(f"{self.host}: no assignments: {message}")
            await asyncio.sleep(attempt)

    async def first(self, ident: str) -> dict[str, Any]:
        """The first message for one operation (others are passed over)."""
        assert self.socket is not None
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(self.socket.recv(), 120))
            if message.get("id") == ident:
                return message

    async def execute(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        assert self.socket is not None
        ident = str(next(self.ids))
        await self.socket.send(json.dumps({"id": ident, "type": "subscribe",
                                           "payload": {"query": query, "variables": variables}}))
        result: dict[str, Any] = {}
        while True:
            message = json.loads(await asyncio.wait_for(self.socket.recv(), 60))
            if message.get("id") != ident:
                continue
            if message["type"] == "next":
                result = message["payload"]
            elif message["type"] == "error":
                raise RuntimeError(f"{self.host}: {message['payload']}")
            elif message["type"] == "complete":
                if result.get("errors"):
                    raise RuntimeError(f"{self.host}: {result['errors']}")
                return result

    async def beat(self) -> float:
        began = time.monotonic()
        await self.execute(documents.HEARTBEAT, documents.heartbeat(name=self.host, images=None))
        return time.monotonic() - began


async def run(url: str, tokens: dict[str, str], interval: float, rounds: int) -> dict[str, Any]:
    agents = [Agent(url, host, token) for host, token in tokens.items()]
    limit = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def connect_one(agent: Agent) -> None:
        async with limit:
            for attempt in itertools.count(1):
                try:
                    return await agent.connect()
                except Exception:  # refused or closed while the database was slow: as the agent, again
                    if agent.socket is not None:
                        await agent.socket.close()
                    if attempt == CONNECT_ATTEMPTS:
                        raise
                await asyncio.sleep(attempt)

    await asyncio.gather(*(connect_one(agent) for agent in agents))
    print(f"CONNECTED {len(agents)}", flush=True)
    # What the server spends with every agent connected and none beating (its own periodic work,
    # the websockets' keep-alives): the heartbeats' cost is what the beating rounds add to it.
    print("IDLE START", flush=True)
    await asyncio.sleep(interval)
    print("IDLE END", flush=True)
    times: list[float] = []
    failures: list[str] = []
    began = time.monotonic()
    start_at = began + interval  # after one warm-up round
    end_at = start_at + rounds * interval

    async def keep_beating(position: int, agent: Agent) -> None:
        beat_at = began + interval * position / len(agents)
        while beat_at < end_at:
            await asyncio.sleep(max(0.0, beat_at - time.monotonic()))  # on schedule, as the agent's loop
            measured = start_at <= beat_at
            try:
                took = await agent.beat()
            except Exception as error:  # counted, and the run goes on
                if measured:
                    failures.append(f"{type(error).__name__}: {error}"[:200])
            else:
                if measured:
                    times.append(took)
            beat_at += interval

    async def marks() -> None:
        await asyncio.sleep(start_at - time.monotonic())
        print("MEASURE START", flush=True)
        await asyncio.sleep(end_at - time.monotonic())
        print("MEASURE END", flush=True)

    await asyncio.gather(marks(), *(keep_beating(i, agent) for i, agent in enumerate(agents)))
    for agent in agents:
        if agent.socket is not None:
            await agent.socket.close()
    return {"agents": len(agents), "heartbeats": len(times), "times": times, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.heartbeat_agents")
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens-file", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tokens = json.loads(args.tokens_file.read_text())
    print(json.dumps(asyncio.run(run(args.url, tokens, args.interval, args.rounds))), flush=True)


if __name__ == "__main__":
    main()
