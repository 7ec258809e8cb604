"""A state change and its consequences are one unit, even over a connection that drops: an
agent reports a deleted lab's last machine ABSENT over its websocket and the socket is gone a
moment later (as when the agent is killed or the network blinks). The lab must still go, not
stay "Deleting, removing 1 machine(s) from their hosts" with no machine left.

The janitor is switched off here: what is proven is that the report's own follow-up survives
the drop (the janitor is the safety net, tested in tests/db/test_janitor.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import websockets

from tests.api.test_graphql import data, ensure_tiny_template, machines, register_host, report
from tests.support.processes import Server

REPORT = ("mutation($i: MachineReportInput!) { reportMachineState(input: $i) { name observed } }")


async def _report_and_drop(server: Server, machine: dict[str, object], *, after: float) -> None:
    async with websockets.connect(server.ws_url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")],
                                  additional_headers={"Authorization": f"Bearer {server.admin_token}"}) as socket:
        await socket.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await socket.recv())["type"] == "connection_ack"
        await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": REPORT, "variables": {"i": {"machineId": machine["id"], "host": "kvm-drop", "state": "ABSENT",
                                                 "powerGeneration": machine["powerGeneration"]}}}}))
        if after:
            await asyncio.sleep(after)  # the moment of the drop, not a wait for anything
        socket.transport.abort()  # no close handshake: the connection is simply gone


def _gone(server: Server, lab: str, *, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = server.graphql("query($n: String!) { deployment(name: $n) { phase message } }", {"n": lab})
        if body.get("errors") and body["errors"][0]["extensions"]["code"] == "NOT_FOUND":  # type: ignore[index]
            return True
        time.sleep(0.05)
    return False


async def test_the_last_absent_report_survives_a_dropped_websocket(start_kubekvm: Callable[..., Server]) -> None:
    server = start_kubekvm(env={"KUBEKVM_JANITOR_INTERVAL": "0"})
    ensure_tiny_template(server)
    register_host(server, "kvm-drop")
    drops = [0.0, 0.0, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06]
    labs = [f"drop{i}" for i in range(len(drops))]
    for lab in labs:
        data(server.graphql("mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }",
                            {"i": {"name": lab, "template": "tiny-linux", "replicas": 1}}))
        report(server, lab, "RUNNING", host="kvm-drop")
        data(server.graphql("mutation($n: String!) { deleteDeployment(name: $n) { name } }", {"n": lab}))
    for lab, after in zip(labs, drops, strict=True):
        await _report_and_drop(server, machines(server, lab)[0], after=after)
    # Generous: on a loaded machine the follow-up may take seconds; stuck labs never go.
    stuck = [lab for lab in labs if not _gone(server, lab)]
    assert not stuck, f"labs left in Deleting with no machine: {stuck}"
