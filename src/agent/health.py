"""Health endpoint: a minimal HTTP `/healthz` for Kubernetes' liveness and readiness probes,
and `/metrics` for Prometheus (`agent.metrics`).

It answers from the agent's own event loop, so a blocked or dead loop fails the probe. It
says nothing about the server connection: a server outage must not make Kubernetes restart
agents (restarting cannot help, and the VMs are fine). Off unless a port is given; it binds
to loopback unless told otherwise, because a hypervisor should open no port to the network
(in a pod, the pod's own network namespace is not the host's).

The body is ``ok`` followed by one ``warning:`` line per condition an operator should fix
on the host (e.g. a ``/dev/kvm`` libvirtd cannot use, see ``agent.kvm_device``): still 200,
because restarting the agent would not fix them either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from agent import metrics

log = logging.getLogger("agent.health")
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

Warnings = Callable[[], list[str]]


def health_body(warnings: list[str]) -> bytes:
    return "".join(["ok\n", *(f"warning: {warning}\n" for warning in warnings)]).encode()


def _ok(body: bytes, *, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                  warnings: Warnings) -> None:
    try:
        async with asyncio.timeout(5):
            request_line = await reader.readline()
        parts = request_line.split()
        path = parts[1] if len(parts) >= 2 and parts[0] in (b"GET", b"HEAD") else b""
        if path in (b"/healthz", b"/readyz"):
            # The warnings read the file system (a stat of /dev/kvm): not on the loop.
            writer.write(_ok(health_body(await asyncio.to_thread(warnings))))
        elif path == b"/metrics":
            writer.write(_ok(metrics.exposition(), content_type=METRICS_TYPE))
        else:
            writer.write(_NOT_FOUND)
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve_health(*, address: str, port: int, warnings: Warnings = list) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer(reader, writer, warnings=warnings)

    server = await asyncio.start_server(answer, address, port)
    log.info("health endpoint on http://%s:%d/healthz", address, port)
    return server
