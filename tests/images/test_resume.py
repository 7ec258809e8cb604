"""An interrupted pull resumes: a real agent (libvirt's test driver: no guest needed to pull) is
killed with SIGKILL in the middle of pulling a store image its machine needs; started again, it
asks the server only for the rest (Range) and ends with the whole, verified image.

The agent reaches the server through `Stall`, a loopback TCP relay that passes the first part of
an image download and then holds the rest back: the kill is sure to land half-way, however fast
or slow the machine (before, a 256 MiB image was to make the pull "take its time")."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import LOG_DIR, Server
from tests.support.waiting import wait_until

MIB = 1024 * 1024


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def server(start_kubekvm: Callable[..., Server], store_dir: Path) -> Server:
    return start_kubekvm(env={"KUBEKVM_IMAGE_STORE": str(store_dir), "KUBEKVM_SEED_TEMPLATES": "0"})


def big_image(path: Path, mib: int) -> Path:
    raw = path.with_suffix(".raw")
    with raw.open("wb") as out:
        for _ in range(mib):
            out.write(os.urandom(MIB))  # incompressible: the qcow2 is as big as the disk
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True,
                   timeout=300)
    raw.unlink()
    return path


class Stall:
    """A TCP relay to `port`: everything passes, except that the answer to an image download
    stops after `allow` bytes while `holding` is set (the connection stays open, silent)."""

    def __init__(self, port: int, *, allow: int) -> None:
        self.port, self.allow = port, allow
        self.holding = threading.Event()
        self.holding.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            self.sockets += [client, upstream]
            first = bytearray()
            threading.Thread(target=self._pump, args=(client, upstream, first, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None, first), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, record: bytearray | None,
              request: bytearray | None) -> None:
        sent = 0
        try:
            while block := source.recv(65536):
                if record is not None and len(record) < 64:
                    record += block[:64]
                if request is not None and request.startswith(b"GET /images/") and self.holding.is_set():
                    block = block[:max(0, self.allow - sent)]
                    if not block:  # held back: read on (so the server is not stuck), pass nothing
                        continue
                target.sendall(block)
                sent += len(block)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for each in self.sockets:
            with contextlib.suppress(OSError):
                each.close()


class Agent:
    def __init__(self, server: Server, *, host: str, image_dir: Path, state_dir: Path, via: str) -> None:
        self.log = LOG_DIR / f"agent-{host}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.arguments = [sys.executable, "-m", "agent.cli", "--server", via, "--host-name", host,
                          "--libvirt-uri", "test:///default", "--domain-type", "qemu", "--image-dir", str(image_dir),
                          "--state-dir", str(state_dir), "--heartbeat-interval", "1"]
        self.env = {**os.environ, "KUBEKVM_HOST_TOKEN": server.host_token(host)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.arguments, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    made: list[Agent] = []
    yield made
    for agent in made:
        agent.stop()


@pytest.fixture
def stall(server: Server) -> Iterator[Stall]:
    relay = Stall(int(server.url.rsplit(":", 1)[1]), allow=3 * MIB)
    yield relay
    relay.close()


@pytest.mark.timeout(300)
def test_a_pull_killed_half_way_resumes_where_it_stopped(server: Server, agents: list[Agent], stall: Stall,
                                                        tmp_path: Path) -> None:
    source = big_image(tmp_path / "big.qcow2", 8)
    with source.open("rb") as reading:
        answer = httpx.post(f"{server.url}/images", content=reading, timeout=300,
                            headers={**server.admin_headers, "X-Image-Name": source.name})
    assert answer.status_code == 200, answer.text
    digest = answer.json()["digest"]
    image = f"sha256-{digest.removeprefix('sha256:')}.qcow2"
    server.graphql('mutation { createTemplate(input: {name: "resume", image: "none.qcow2", memoryMib: 64, '
                   "diskGib: 1}) { name } }")
    assert not server.graphql('mutation($d: String!) { publishTemplateVersion(name: "resume", digest: $d) '
                              "{ name } }", {"d": digest}).get("errors")
    images = tmp_path / "images"
    host = f"resume-{tmp_path.name[-6:]}"
    agent = Agent(server, host=host, image_dir=images, state_dir=tmp_path / "state", via=stall.url)
    agents.append(agent)
    agent.start()
    assert not server.graphql('mutation { createDeployment(input: {name: "resume-lab", template: "resume", '
                              'replicas: 1, power: STOPPED}) { name } }').get("errors")
    partial = images / f".{image}.pull"
    # Killed once some of the image is here (the relay holds back all but its first 3 MiB).
    wait_until(lambda: partial.is_file() and partial.stat().st_size > 0, timeout=120,
               what="the pull to start writing")
    agent.kill()
    kept = partial.stat().st_size
    assert 0 < kept <= 3 * MIB < source.stat().st_size and not (images / image).exists()

    stall.holding.clear()
    agent.start()
    wait_until(lambda: (images / image).is_file(), timeout=120, what="the resumed pull to finish",
               detail=lambda: agent.log.read_text()[-2000:])
    assert hashlib.sha256((images / image).read_bytes()).hexdigest() == digest.removeprefix("sha256:")
    assert not partial.exists()
    log = agent.log.read_text()
    resumed = re.findall(rf"resuming the pull of {image} from byte (\d+)", log)
    assert resumed and int(resumed[-1]) >= kept
