"""The class-day run's loop probe: a cheap GraphQL query to each server replica every 100 ms.

Run by ``classday`` as ``python -m benchmarks.loop_probe --url URL [--url URL] --token-file F
--out FILE``, a process of its own so that the run's other clients (hundreds of requests,
websockets, event streams in the harness's loop) cannot delay a probe and pass their own
latency off as the server's. A probe is *sent on schedule*, every ``--interval`` seconds
whether or not the previous one has answered: a server loop that freezes for 2 s then shows
as 20 slow samples, not one. Each sample is a JSON line: the replica, when it was sent
(``time.monotonic()``, which on Linux is one clock for every process of the machine, so the
harness can line samples up with its own events), how long the answer took, and the error if
there was one. SIGTERM ends it after the probes in flight have answered or timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path
from typing import IO

import httpx

QUERY = "query Probe { me { kind name } }"


async def _probe(client: httpx.AsyncClient, url: str, token: str, out: IO[str]) -> None:
    sent = time.monotonic()
    error = None
    try:
        response = await client.post(f"{url}/graphql", json={"query": QUERY},
                                     headers={"Authorization": f"Bearer {token}"})
        if response.status_code != 200:
            error = f"HTTP {response.status_code}"
        elif response.json().get("errors"):
            error = f"GraphQL {response.json()['errors'][0].get('extensions', {}).get('code', 'error')}"
    except httpx.HTTPError as failure:
        error = f"{type(failure).__name__}: {failure}"[:200]
    out.write(json.dumps({"url": url, "sent": sent, "seconds": time.monotonic() - sent, "error": error}) + "\n")
    out.flush()


async def probe(urls: list[str], token: str, out: IO[str], *, interval: float, timeout: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pending: set[asyncio.Task[None]] = set()
    # One connection pool per replica, as a monitoring agent would keep.
    clients = {url: httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(keepalive_expiry=2.0)) for url in urls}
    try:
        began = time.monotonic()
        tick = 0
        while not stop.is_set():
            for url in urls:
                task = asyncio.create_task(_probe(clients[url], url, token, out))
                pending.add(task)
                task.add_done_callback(pending.discard)
            tick += 1
            # On schedule, not after the answer: see the module's docstring.
            delay = began + tick * interval - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
        if pending:
            await asyncio.wait(pending, timeout=timeout + 1)
    finally:
        for client in clients.values():
            await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loop_probe")
    parser.add_argument("--url", action="append", required=True, help="a server replica (repeatable)")
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    token = args.token_file.read_text().strip()
    with args.out.open("a") as out:
        asyncio.run(probe(args.url, token, out, interval=args.interval, timeout=args.timeout))


if __name__ == "__main__":
    main()
