"""`make run` on a fresh clone: serves /graphql and /healthz, logs the one-time link that makes
the first admin (no default password anywhere), and keeps data across a restart.

How long it takes to start is printed, not asserted (seconds on an idle machine; a loaded CI
machine is several times slower): the waits' deadlines are generous.

The clone shares this checkout's installed venv (a symlink), so the test measures start-up,
not package downloads; `scripts/setup` still runs its checks in the clone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import ROOT, free_port
from tests.support.waiting import wait_until


def start_make_run(clone: Path, port: int, *, agent: str = "none") -> subprocess.Popen[bytes]:
    # The shared venv's editable install points at this checkout: PYTHONPATH makes the clone's
    # own sources win, so what runs is what was cloned.
    env = {**os.environ, "KUBEKVM_AGENT": agent, "PYTHONPATH": str(clone / "src"),
           "KUBEKVM_HOST_NAME": f"local-{port}"}
    env.pop("MONGODB_URI", None)
    return subprocess.Popen(["make", "run", f"PORT={port}"], cwd=clone, env=env,
                            stdout=(clone / "run.log").open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def cli(clone: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`.venv/bin/kubekvm ARGS` typed in the clone, as the README says."""
    return subprocess.run([str(clone / ".venv" / "bin" / "kubekvm"), *args], cwd=clone, input=stdin,
                          env={**os.environ, "PYTHONPATH": str(clone / "src")} | {"MONGODB_URI": ""},
                          capture_output=True, text=True, timeout=60, check=False)


def wait_healthy(url: str, process: subprocess.Popen[bytes], *, timeout: float) -> float:
    started = time.monotonic()

    def healthy() -> bool:
        assert process.poll() is None, "make run exited early"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).text == "ok"
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout=timeout, interval=0.2, what=f"{url}/healthz to answer ok")
    took = time.monotonic() - started
    print(f"make run answered /healthz after {took:.1f} s")
    return took


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def create_first_admin(clone: Path, url: str, name: str, password: str) -> str:
    """Follow the one-time setup link `make run` logged; returns its code."""
    found = wait_until(lambda: re.search(r"open (http://\S+/setup\?code=(\S+)) to create the first one",
                                         (clone / "run.log").read_text()),
                       timeout=60, what="the setup link in the log")
    with httpx.Client(timeout=30) as setup:
        form = setup.get(found.group(1))
        assert form.status_code == 200
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert csrf
        made = setup.post(f"{url}/setup", data={"code": found.group(2), "name": name, "password": password,
                                                "again": password, "csrf_token": csrf.group(1)})
        assert made.status_code == 303
        assert setup.get(found.group(1)).status_code == 404  # once only
    return found.group(2)


def fresh_clone(tmp_path: Path) -> Path:
    clone = tmp_path / "kubekvm"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # Uncommitted files matter too when this runs on a developer's dirty checkout.
    for name in ("Makefile", "pyproject.toml", "scripts/setup", "scripts/run-local"):
        if (ROOT / name).exists():
            (clone / name).write_bytes((ROOT / name).read_bytes())
    (clone / ".venv").symlink_to(ROOT / ".venv")
    return clone


@contextmanager
def signed_in(url: str, name: str, password: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
        assert csrf
        assert client.post("/login", data={"name": name, "password": password,
                                            "csrf_token": csrf.group(1)}).status_code == 303
        yield client


@pytest.mark.timeout(420)
def test_make_run_on_a_fresh_clone_serves_and_keeps_data(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    first = start_make_run(clone, port)
    password = "first-admin-password"
    try:
        wait_healthy(url, first, timeout=120)
        anonymous = httpx.post(f"{url}/graphql", json={"query": "{ deployments { total } }"}).json()
        assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        code = create_first_admin(clone, url, "boss", password)
        with signed_in(url, "boss", password) as client:
            body = client.post("/graphql", json={"query": 'mutation { createDeployment(input: {name: "kept", '
                               'template: "redes-neuronales", replicas: 2}) { name owner } }'}).json()
        assert body["data"]["createDeployment"] == {"name": "kept", "owner": "boss"}
        # The admin commands work while the server runs, on its database, and it sees at once
        # what they made: an account, and an API token of it that GraphQL accepts.
        made = cli(clone, "user", "create", "ta", "--role", "teacher", stdin="ta-password-long\n")
        assert made.returncode == 0 and made.stdout.strip() == "user ta (teacher) created", made.stderr
        issued = cli(clone, "token", "create", "ta", "--label", "while running")
        assert issued.returncode == 0, issued.stderr
        me = httpx.post(f"{url}/graphql", json={"query": "{ me { name role } }"},
                        headers={"Authorization": f"Bearer {issued.stdout.strip()}"}).json()
        assert me["data"]["me"] == {"name": "ta", "role": "TEACHER"}, me
        refused = cli(clone, "token", "create", "nobody")
        assert refused.returncode == 1 and refused.stderr.strip() == "kubekvm: There is no user named 'nobody'."
    finally:
        stop(first)
    assert (clone / ".kubekvm" / "db").is_dir()

    second = start_make_run(clone, port)
    try:
        wait_healthy(url, second, timeout=120)
        with signed_in(url, "boss", password) as client:
            labs = client.post("/graphql", json={"query": "{ deployments { items { name machineCount } } }"}).json()
        assert labs["data"]["deployments"]["items"] == [{"name": "kept", "machineCount": 2}]
    finally:
        stop(second)
    log = (clone / "run.log").read_text()
    assert "KubeKVM is starting at http://127.0.0.1:" in log
    assert "the command-line tools are in .venv/bin/" in log and ".venv/bin/kubekvm token create NAME" in log
    assert "Traceback" not in log
    assert password not in log
    assert log.count("to create the first one") == 1  # the second start has an admin: no link
    assert log.count(code) == 1  # the code is in that line only, not in the access log


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MONGODB_URI": f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=500"}
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "kubekvm"), "serve", "--port", str(free_port())],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kubekvm: cannot reach MongoDB at mongodb://127.0.0.1:"), result.stderr


@pytest.mark.timeout(420)
def test_make_run_starts_a_local_agent_and_labs_become_active(tmp_path: Path) -> None:
    """The local agent (here on libvirt's test driver, so nothing boots) registers its host
    and the demo template; a lab of it goes Pending → Active."""
    clone = fresh_clone(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_make_run(clone, port, agent="test")
    try:
        wait_healthy(url, process, timeout=120)
        create_first_admin(clone, url, "boss", "local-agent-password")
        with signed_in(url, "boss", "local-agent-password") as client:
            def graphql(query: str) -> dict[str, Any]:
                body: dict[str, Any] = client.post("/graphql", json={"query": query}).json()
                assert not body.get("errors"), body
                return body["data"]  # type: ignore[no-any-return]

            wait_until(lambda: any(h["ready"] for h in graphql("{ hosts { name ready } }")["hosts"]),
                       timeout=120, interval=0.2, what="the local agent to register")
            graphql('mutation { createDeployment(input: {name: "demo", template: "tiny-linux", replicas: 3}) { name } }')
            wait_until(lambda: graphql('{ deployment(name: "demo") { phase } }')["deployment"]["phase"] == "ACTIVE",
                       timeout=120, interval=0.2, what="the demo lab to become Active")
            # The demo disk came through the image store: imported, published as v1, pulled by
            # the agent under its digest.
            template = graphql('{ template(name: "tiny-linux") { image versions { number digest } } }')["template"]
            (version,) = template["versions"]
            assert template["image"] == f"sha256-{version['digest'].removeprefix('sha256:')}.qcow2"
            wait_until(lambda: template["image"] in graphql("{ hosts { images } }")["hosts"][0]["images"],
                       timeout=120, interval=0.2, what="the agent to hold the pulled demo image")
    finally:
        stop(process)
    log = (clone / "run.log").read_text()
    assert "local agent for host local-" in log and "test driver" in log
    assert "Traceback" not in log
