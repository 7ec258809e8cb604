"""Health endpoint: a minimal HTTP `/healthz` for Kubernetes' liveness and readiness probes.

It answers from the agent's own event loop, so a blocked or dead loop fails the probe. It
says nothing about the server connection: a server outage must not make Kubernetes restart
agents (restarting cannot help, and the VMs are fine). Off unless a port is given; it binds
to loopback unless told otherwise, because a hypervisor should open no port to the network
(in a pod, the pod's own network namespace is not the host's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("agent.health")

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request_line = await asyncio.wait_for(reader.readline(), timeout=5)
        parts = request_line.split()
        healthy = len(parts) >= 2 and parts[0] in (b"GET", b"HEAD") and parts[1] in (b"/healthz", b"/readyz")
        writer.write(_OK if healthy else _NOT_FOUND)
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve_health(*, address: str, port: int) -> asyncio.Server:
    server = await asyncio.start_server(_answer, address, port)
    log.info("health endpoint on http://%s:%d/healthz", address, port)
    return server
