"""Following one click through the logs, and the agent's metrics, on a real guest.

A lab is created with an `X-Request-ID` of the test's own; the server's JSON log and the
agent's JSON log (`KUBEKVM_LOG_FORMAT=json`) must both carry that id: the agent's lines for
the lab's machine get it through the machine's assignment. Then the agent's `/metrics` (its
health port), parsed with Prometheus' parser, must show what that lifecycle did, with bounded
labels only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Agent, add_tiny_template, gql, image_dir_with, lab_state, unique_lab, wait_host_ready
from tests.support.processes import Server, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.qemu


def json_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    text = httpx.get(url, timeout=10).text
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def value(found: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, got, v in found if n == name and all(got.get(k) == w for k, w in labels.items()))


@pytest.mark.timeout(300)
def test_one_request_id_from_click_to_boot(start_kubekvm: Callable[..., Server], agents: Callable[..., Agent],
                                           tiny_linux: Path, site: Path) -> None:
    server = start_kubekvm(env={"KUBEKVM_LOG_FORMAT": "json"}, log_level="info")
    add_tiny_template(server)
    port = free_port()
    agent = agents(server, site / "state", image_dir_with(site, tiny_linux), "--health-port", str(port),
                   "--log-format", "json", "--stop-grace", "5")
    wait_host_ready(server, agent.host_name)
    lab = unique_lab()
    request_id = f"click-{uuid.uuid4().hex[:10]}"
    answer = httpx.post(server.graphql_url, headers={**server.admin_headers, "X-Request-ID": request_id}, json={
        "query": "mutation($n: String!) { createDeployment(input: {name: $n, template: \"tiny-linux\", "
                 "replicas: 1}) { name } }", "variables": {"n": lab}}, timeout=30)
    assert answer.json()["data"]["createDeployment"]["name"] == lab
    wait_until(lambda: (lab_state(server, lab) or {}).get("phase") == "ACTIVE", timeout=120, what="lab Active")

    # The agent's lines for the machine carry the click's id, its lab and machine.
    assert agent.log is not None
    machine = f"{lab}-1"

    def agent_lines() -> list[dict[str, Any]]:
        return [line for line in json_lines(agent.log) if line.get("request_id") == request_id]  # type: ignore[arg-type]

    traced = wait_until(agent_lines, timeout=120, what="the agent's log lines under the request id")
    assert all(line["machine"] == machine and line["lab"] == lab for line in traced)
    assert any("running" in str(line["event"]) for line in traced), traced
    assert {"ts", "level", "logger", "event"} <= set(traced[0])
    # ... and so do the server's lines for the request.
    server_lines = [line for line in json_lines(server.child.log) if line.get("request_id") == request_id]
    assert server_lines and server_lines[0]["actor"] == "user:admin"

    # The agent's metrics, after that lifecycle.
    found = samples(f"http://127.0.0.1:{port}/metrics")
    assert value(found, "kubekvm_agent_server_connected") == 1
    assert value(found, "kubekvm_agent_libvirt_connected") == 1
    assert value(found, "kubekvm_agent_reconcile_passes_total", outcome="ok") >= 1
    assert value(found, "kubekvm_agent_reconcile_duration_seconds_count") >= 1
    assert value(found, "kubekvm_agent_libvirt_calls_total", call="defineXML", outcome="ok") >= 1
    assert value(found, "kubekvm_agent_libvirt_call_duration_seconds_count", call="create") >= 1
    assert value(found, "kubekvm_agent_domains", state="running") >= 1
    assert "kubekvm_agent_outbox_depth" in {n for n, _, _ in found}
    for name, labels, _ in found:
        assert not any(lab in v or request_id in v for v in labels.values()), (name, labels)

    gql(server, "mutation($n: String!) { deleteDeployment(name: $n) { name } }", n=lab)
    wait_until(lambda: lab_state(server, lab) is None, timeout=90, what="lab deleted")
