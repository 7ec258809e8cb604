"""Holds many ``deploymentEvents`` subscriptions open and stamps every delivery (P3's ramp).

Run as its own process by ``api_throughput``, so its work is not the measuring process's:

    python -m benchmarks.subscribers --url ws://127.0.0.1:PORT/graphql --token-file F
        --lab NAME --count N --marks M --timeout S
    python -m benchmarks.subscribers --url ... --token-file F --count N --hold

With ``--hold`` (the watchers of P5) it only holds N subscriptions to every lab's events, counting
what arrives, until its standard input closes, then prints ``{"received": ..., ...}``.

It opens N websockets (graphql-transport-ws, token in ``connection_init`` as the agent sends
it), one subscription each, and prints ``CONNECTED n``. The parent changes the lab's title to
``mark-0`` (a warm-up: once every subscription has delivered it, each is known to be live),
then ``mark-1`` .. ``mark-M``. This process prints ``GOT k`` when every subscription has
delivered mark k, so the parent fires the next one only then; it stamps every arrival with
``time.monotonic()`` (one clock for all processes on the machine) and, once every
subscription has seen every mark or the timeout passes, prints one JSON line:
``{"marks": {"1": [stamps...], ...}, "connect_s": ..., "failed": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

QUERY = "subscription($n: String) { deploymentEvents(name: $n) { kind deployment { title running machineCount } } }"
CONNECT_AT_ONCE = 50


class Counter:
    """mark -> subscription -> when it first delivered that mark."""

    def __init__(self, count: int, marks: int) -> None:
        self.stamps: dict[int, dict[int, float]] = {k: {} for k in range(marks + 1)}
        self.expected = count
        self.changed = asyncio.Event()
        self.received = 0  # every result, of every subscription

    def add(self, mark: int, subscriber: int, stamp: float) -> None:
        if mark in self.stamps:
            self.stamps[mark].setdefault(subscriber, stamp)
            if self.complete(mark):
                print(f"GOT {mark}", flush=True)
            self.changed.set()

    def complete(self, mark: int) -> bool:
        return len(self.stamps[mark]) >= self.expected

    async def wait(self, marks: range, deadline: float) -> None:
        while not all(self.complete(k) for k in marks):
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


async def _subscribe(url: str, token: str, lab: str) -> ClientConnection:
    socket = await connect(url, subprotocols=["graphql-transport-ws"], open_timeout=60, max_queue=None,
                           ping_interval=None)
    await socket.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
    ack = json.loads(await asyncio.wait_for(socket.recv(), 60))
    if ack.get("type") != "connection_ack":
        raise RuntimeError(f"no connection_ack: {ack}")
    await socket.send(json.dumps({"id": "1", "type": "subscribe",
                                  "payload": {"query": QUERY, "variables": {"n": lab}}}))
    return socket


async def _listen(socket: ClientConnection, subscriber: int, counter: Counter) -> None:
    async for raw in socket:
        stamp = time.monotonic()
        message: dict[str, Any] = json.loads(raw)
        kind = message.get("type")
        if kind == "ping":
            await socket.send(json.dumps({"type": "pong"}))
        elif kind == "next":
            counter.received += 1
            event = ((message.get("payload") or {}).get("data") or {}).get("deploymentEvents") or {}
            title = (event.get("deployment") or {}).get("title") or ""
            # Only changes: the current state sent first (SNAPSHOT) holds an earlier level's mark.
            if event.get("kind") == "LAB_CHANGED" and title.startswith("mark-") and title[5:].isdigit():
                counter.add(int(title[5:]), subscriber, stamp)
        elif kind in ("error", "complete"):
            raise RuntimeError(f"subscription ended: {message}")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    token = Path(args.token_file).read_text().strip()
    counter = Counter(args.count, args.marks)
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    sockets: list[ClientConnection] = []
    failed = 0

    async def open_one() -> None:
        nonlocal failed
        async with gate:
            try:
                sockets.append(await _subscribe(args.url, token, args.lab))
            except Exception as error:
                failed += 1
                print(f"subscriber failed: {error!r}", file=sys.stderr)

    began = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(args.count)))
    connect_s = time.monotonic() - began
    listeners = [asyncio.create_task(_listen(s, i, counter)) for i, s in enumerate(sockets)]
    counter.expected = len(sockets)
    print(f"CONNECTED {len(sockets)}", flush=True)
    if args.hold:
        # Watchers only: held open until the parent closes this process's standard input.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        received = counter.received
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
        return {"subscribed": len(sockets), "failed": failed, "received": received, "connect_s": round(connect_s, 3)}
    # The parent fires mark-0 now and repeats it until every subscription has delivered one.
    await counter.wait(range(0, 1), time.monotonic() + args.timeout)
    await counter.wait(range(1, args.marks + 1), time.monotonic() + args.timeout)
    for task in listeners:
        task.cancel()
    await asyncio.gather(*listeners, return_exceptions=True)
    await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
    return {"marks": {str(k): list(v.values()) for k, v in counter.stamps.items() if k},
            "connect_s": round(connect_s, 3),
            "subscribed": len(sockets), "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.subscribers")
    parser.add_argument("--url", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--lab", default=None, help="one lab's events (default: every lab's)")
    parser.add_argument("--hold", action="store_true",
                        help="only hold the subscriptions (counting results) until standard input closes")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--marks", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if not args.url.startswith("ws://127.0.0.1:"):
        parser.error("benchmarks send traffic to 127.0.0.1 only")
    print(json.dumps(asyncio.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
