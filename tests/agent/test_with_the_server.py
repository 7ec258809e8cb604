"""The real agent (its own process, on libvirt's test driver) against a real `kubekvm serve`:
what the server makes of the agent's reports.

No QEMU: the test driver runs inside the agent's process, so its domains vanish with it, and
the next agent makes them again, as it would after a host's reboot.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.processes import LOG_DIR, Server
from tests.support.waiting import wait_until

TEMPLATE = """mutation($i: TemplateInput!) { createTemplate(input: $i) { name } }"""
LAB = """query($n: String!) { deployment(name: $n) { phase message machines { name observed } } }"""


def data(body: dict[str, Any]) -> dict[str, Any]:
    assert not body.get("errors"), body["errors"]
    result: dict[str, Any] = body["data"]
    return result


class AgentProcess:
    def __init__(self, server: Server, *, host: str, image_dir: Path, state_dir: Path) -> None:
        self.server, self.host, self.image_dir, self.state_dir = server, host, image_dir, state_dir
        self.token = server.host_token(host)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = LOG_DIR / f"agent-{self.host}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--server", self.server.url, "--host-name", self.host,
             "--libvirt-uri", "test:///default", "--domain-type", "qemu",
             "--image-dir", str(self.image_dir), "--state-dir", str(self.state_dir),
             "--heartbeat-interval", "1"],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "KUBEKVM_HOST_TOKEN": self.token},
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(timeout=30) == 0


@pytest.fixture
def agent(server: Server, image_dir: Path, tmp_path: Path) -> Iterator[AgentProcess]:
    body = server.graphql(TEMPLATE, {"i": {"name": "tiny-linux", "title": "Tiny Linux", "os": "LINUX",
                                           "image": "tiny-linux.qcow2", "vcpus": 1, "memoryMib": 64,
                                           "diskGib": 1}})
    if body.get("errors"):
        assert body["errors"][0]["extensions"]["code"] == "CONFLICT", body  # type: ignore[index]
    process = AgentProcess(server, host=f"agent-{uuid.uuid4().hex[:6]}", image_dir=image_dir,
                           state_dir=tmp_path / "state")
    process.start()
    yield process
    process.stop()


def lab(server: Server, name: str) -> dict[str, Any]:
    result: dict[str, Any] = data(server.graphql(LAB, {"n": name}))["deployment"]  # type: ignore[arg-type]
    return result


def wait_phase(server: Server, name: str, phase: str) -> dict[str, Any]:
    return wait_until(lambda: (state := lab(server, name))["phase"] == phase and state,
                      timeout=60, what=f"lab {name} {phase}", detail=lambda: lab(server, name))


def test_a_started_lab_is_pending_until_the_agent_has_started_its_machines(
    server: Server, agent: AgentProcess
) -> None:
    """The agent's state reports carry the power generation recorded in each domain. Without
    it the server took a machine still off from the last stop for one a student powered off
    after this start: a started lab showed Inactive ("every machine is shut off") instead of
    Pending, and its machines never showed "starting"."""
    name = f"gen{uuid.uuid4().hex[:6]}"
    data(server.graphql("mutation($i: DeploymentInput!) { createDeployment(input: $i) { name } }",
                        {"i": {"name": name, "template": "tiny-linux", "replicas": 2}}))
    wait_phase(server, name, "ACTIVE")
    data(server.graphql("mutation($n: String!) { stopDeployment(name: $n) { name } }", {"n": name}))
    wait_phase(server, name, "INACTIVE")

    agent.stop()  # the host has not acted on the start below yet
    started = lab(server, name) | data(server.graphql(
        "mutation($n: String!) { startDeployment(name: $n) { phase message } }", {"n": name}
    ))["startDeployment"]
    assert {m["observed"] for m in started["machines"]} == {"SHUTOFF"}
    assert started["phase"] == "PENDING", started

    agent.start()
    wait_phase(server, name, "ACTIVE")
    data(server.graphql("mutation($n: String!) { deleteDeployment(name: $n) { name } }", {"n": name}))
    wait_until(lambda: server.graphql(LAB, {"n": name}).get("errors"), timeout=60,
               what=f"lab {name} removed by its host")
