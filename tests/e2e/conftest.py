"""End-to-end fixtures: libvirtd with real QEMU (TCG) guests, the tiny-linux image, a server
and `kubekvm-agent` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import LOG_DIR, VENV_BIN, Server
from tests.support.qemu import (
    QEMU_URI,
    build_tiny_linux,
    ensure_libvirtd,
    remove_domains_under,
    scratch,
    traversable_dir,
)
from tests.support.waiting import wait_until


@pytest.fixture(scope="session")
def libvirtd() -> str:
    return ensure_libvirtd()


@pytest.fixture(scope="session")
def tiny_linux() -> Path:
    return build_tiny_linux()


@pytest.fixture
def site() -> Iterator[Path]:
    """A per-test directory QEMU can reach (pytest's tmp_path is 0700), removed afterwards with
    the domains whose disks are in it."""
    with scratch("e2e") as path:
        yield path


def image_dir_with(site: Path, source: Path, *, cmdline: str = "") -> Path:
    """An image directory of the test's own (so a `.cmdline` affects only this test)."""
    images = traversable_dir(site / "images")
    for suffix in ("kernel", "initrd", "qcow2"):
        os.symlink(source / f"tiny-linux.{suffix}", images / f"tiny-linux.{suffix}")
    if cmdline:
        (images / "tiny-linux.cmdline").write_text(cmdline)
    return images


@dataclass
class Agent:
    server_urls: list[str]
    host_name: str
    image_dir: Path
    state_dir: Path
    extra: list[str] = field(default_factory=list)
    token: str = ""
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self) -> Agent:
        self.log = LOG_DIR / f"agent-{self.host_name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(VENV_BIN / "kubekvm-agent"), "--server", ",".join(self.server_urls),
             "--host-name", self.host_name, "--libvirt-uri", QEMU_URI,
             "--image-dir", str(self.image_dir), "--state-dir", str(self.state_dir),
             "--domain-type", "qemu", *self.extra],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "KUBEKVM_HOST_TOKEN": self.token},  # not on the command line: ps shows that
        )
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def overlay(self, vm: str) -> Path:
        return self.state_dir / "disks" / f"kubekvm-{vm}.qcow2"

    def serial_log(self, vm: str) -> Path:
        return self.state_dir / "logs" / f"kubekvm-{vm}.log"


@pytest.fixture
def agents(libvirtd: str, site: Path) -> Iterator[Callable[..., Agent]]:
    """Starts `kubekvm-agent` processes; afterwards stops them and removes their domains (those
    whose disks are in their state folders; `site`, set up first, goes after them)."""
    made: list[Agent] = []

    def make(server: Server | list[Server], state_dir: Path, image_dir: Path, *extra: str,
             host_name: str | None = None) -> Agent:
        servers = server if isinstance(server, list) else [server]
        name = host_name or f"e2e-{uuid.uuid4().hex[:6]}"
        token = servers[0].host_token(name)
        agent = Agent([s.url for s in servers], name, image_dir, state_dir, list(extra), token=token)
        made.append(agent)
        return agent.start()

    try:
        yield make
    finally:
        for agent in made:
            agent.stop()
        for agent in made:
            remove_domains_under(agent.state_dir)


def unique_lab() -> str:
    return f"e2e{uuid.uuid4().hex[:6]}"


def gql(server: Server, query: str, **variables: Any) -> dict[str, Any]:
    body = server.graphql(query, variables)
    assert not body.get("errors"), body["errors"]
    result: dict[str, Any] = body["data"]
    return result


def lab_state(server: Server, name: str) -> dict[str, Any] | None:
    body = server.graphql("query($n: String!) { deployment(name: $n) { phase message running machineCount "
                          "machines { name host observed message desired publish { state message } } } }",
                          {"n": name})
    if body.get("errors"):
        assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND", body
        return None
    result: dict[str, Any] = body["data"]["deployment"]
    return result


def add_tiny_template(server: Server, *, name: str = "tiny-linux", image: str = "tiny-linux.qcow2") -> None:
    body = server.graphql("mutation($i: TemplateInput!) { createTemplate(input: $i) { name } }",
                          {"i": {"name": name, "title": "Tiny Linux", "os": "LINUX", "image": image,
                                 "vcpus": 1, "memoryMib": 128, "diskGib": 1}})
    if body.get("errors"):
        assert body["errors"][0]["extensions"]["code"] == "CONFLICT"


def domains(prefix: str) -> dict[str, bool]:
    """name -> active, for the domains on libvirtd whose names start with prefix."""
    import libvirt

    conn = libvirt.open(QEMU_URI)
    try:
        return {d.name(): bool(d.isActive()) for d in conn.listAllDomains() if d.name().startswith(prefix)}
    finally:
        conn.close()


def wait_host_ready(server: Server, host: str, timeout: float = 30) -> None:
    def ready() -> bool:
        hosts = gql(server, "{ hosts { name ready } }")["hosts"]
        return any(h["name"] == host and h["ready"] for h in hosts)
    wait_until(ready, timeout=timeout, what=f"host {host} ready")


