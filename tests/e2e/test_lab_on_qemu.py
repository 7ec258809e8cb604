"""A lab's whole life on real QEMU guests (domain type qemu): server + agent + libvirtd.

Each guest is the project's tiny-linux (kernel + busybox initramfs); it prints a marker line
on its serial console when up and, where a test asks, powers itself off after N seconds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Agent,
    add_tiny_template,
    domains,
    gql,
    image_dir_with,
    lab_state,
    unique_lab,
    wait_host_ready,
    wait_until,
)
from tests.support.processes import Server

pytestmark = pytest.mark.qemu
MARKER = "KUBEKVM-GUEST-UP"


def heard_from_since(server: Server, host: str, moment: datetime) -> bool:
    hosts = gql(server, "{ hosts { name lastHeartbeat } }")["hosts"]
    beats = [datetime.fromisoformat(h["lastHeartbeat"]) for h in hosts if h["name"] == host]
    return any((beat if beat.tzinfo else beat.replace(tzinfo=UTC)) > moment for beat in beats)


def phase(server: Server, lab: str) -> str | None:
    state = lab_state(server, lab)
    return None if state is None else str(state["phase"])


@pytest.mark.timeout(360)
def test_lab_lifecycle_on_real_guests(start_kubekvm: Callable[..., Server], agents: Callable[..., Agent],
                                      tiny_linux: Path, site: Path) -> None:
    server = start_kubekvm()
    add_tiny_template(server)
    images = image_dir_with(site, tiny_linux, cmdline="kubekvm.poweroff_after=20")
    # A long resync interval: what the test sees must come from libvirt's events.
    agent = agents(server, site / "state", images, "--resync-interval", "600", "--stop-grace", "5")
    wait_host_ready(server, agent.host_name)
    lab = unique_lab()
    vms = [f"{lab}-{i}" for i in (1, 2, 3)]

    gql(server, "mutation($n: String!) { createDeployment(input: {name: $n, template: \"tiny-linux\", replicas: 3}) { name } }", n=lab)
    wait_until(lambda: phase(server, lab) == "ACTIVE", timeout=90, what="lab Active")
    for vm in vms:
        wait_until(lambda vm=vm: agent.serial_log(vm).is_file() and MARKER in agent.serial_log(vm).read_text(errors="replace"),
                   timeout=180, what=f"{vm} boot marker")
    assert set(domains(f"kubekvm-{lab}-")) == {f"kubekvm-{vm}" for vm in vms}
    inodes = {vm: agent.overlay(vm).stat().st_ino for vm in vms}

    # The guests power themselves off (poweroff_after): seen through libvirt events.
    wait_until(lambda: phase(server, lab) == "INACTIVE", timeout=60, what="lab Inactive after guests powered off")
    assert not any(domains(f"kubekvm-{lab}-").values())

    # Start again: the same overlays boot (no re-clone).
    gql(server, "mutation($n: String!) { startDeployment(name: $n) { name } }", n=lab)
    wait_until(lambda: phase(server, lab) == "ACTIVE", timeout=90, what="lab Active again")
    assert {vm: agent.overlay(vm).stat().st_ino for vm in vms} == inodes

    # Scale to 1: two domains and their overlays go, and so do their machines.
    gql(server, "mutation($n: String!) { updateDeployment(name: $n, input: {replicas: 1}) { name } }", n=lab)
    wait_until(lambda: [m["name"] for m in (lab_state(server, lab) or {}).get("machines", [])] == [vms[0]],
               timeout=60, what="scaled to one machine")
    assert set(domains(f"kubekvm-{lab}-")) == {f"kubekvm-{vms[0]}"}
    assert not agent.overlay(vms[1]).exists() and not agent.overlay(vms[2]).exists()

    # Reset: a fresh overlay from the base, and the guest boots again.
    gql(server, "mutation($n: String!) { resetMachine(name: $n) { name } }", n=vms[0])
    wait_until(lambda: agent.overlay(vms[0]).exists() and agent.overlay(vms[0]).stat().st_ino != inodes[vms[0]],
               timeout=60, what="a new overlay")
    wait_until(lambda: MARKER in agent.serial_log(vms[0]).read_text(errors="replace"), timeout=60, what="reset guest boots")

    # Delete: no domain, no file, and the lab document gone.
    gql(server, "mutation($n: String!) { deleteDeployment(name: $n) { name } }", n=lab)
    wait_until(lambda: lab_state(server, lab) is None, timeout=60, what="lab document gone")
    assert domains(f"kubekvm-{lab}-") == {}
    assert not agent.overlay(vms[0]).exists()
    assert sorted(p.name for p in (agent.state_dir / "disks").iterdir()) == []


@pytest.mark.timeout(420)
def test_agent_killed_at_random_moments_converges(start_kubekvm: Callable[..., Server],
                                                  agents: Callable[..., Agent], tiny_linux: Path,
                                                  site: Path) -> None:
    server = start_kubekvm()
    add_tiny_template(server)
    images = image_dir_with(site, tiny_linux)
    state = site / "state"
    host = f"e2e-kill-{random.randrange(10**6)}"
    agent = agents(server, state, images, host_name=host)
    wait_host_ready(server, host)
    lab = unique_lab()
    gql(server, "mutation($n: String!) { createDeployment(input: {name: $n, template: \"tiny-linux\", replicas: 4}) { name } }", n=lab)
    rng = random.Random(7)
    for _ in range(10):
        time.sleep(rng.uniform(0.05, 1.5))  # not synchronisation: the kill lands at a random moment
        agent.kill()
        agent = agents(server, state, images, host_name=host)
    wait_until(lambda: phase(server, lab) == "ACTIVE", timeout=180, what="lab Active after the kills")
    expected = {f"kubekvm-{lab}-{i}" for i in range(1, 5)}
    assert set(domains(f"kubekvm-{lab}-")) == expected
    assert sorted(p.name for p in (state / "disks").iterdir()) == sorted(f"{d}.qcow2" for d in expected)
    gql(server, "mutation($n: String!) { deleteDeployment(name: $n) { name } }", n=lab)
    wait_until(lambda: lab_state(server, lab) is None, timeout=90, what="lab deleted")


@pytest.mark.timeout(240)
def test_server_restart_while_the_agent_runs(start_kubekvm: Callable[..., Server], agents: Callable[..., Agent],
                                             tiny_linux: Path, site: Path) -> None:
    from tests.support.processes import start_server

    first = start_kubekvm()
    add_tiny_template(first)
    agent = agents(first, site / "state", image_dir_with(site, tiny_linux))
    wait_host_ready(first, agent.host_name)
    lab = unique_lab()
    gql(first, "mutation($n: String!) { createDeployment(input: {name: $n, template: \"tiny-linux\", replicas: 1}) { name } }", n=lab)
    wait_until(lambda: phase(first, lab) == "ACTIVE", timeout=90, what="Active")
    import libvirt

    conn = libvirt.open("qemu:///system")
    ids_before = conn.lookupByName(f"kubekvm-{lab}-1").ID()
    port = int(first.url.rsplit(":", 1)[1])
    first.stop()  # returns once the process is gone, its port free
    stopped_at = datetime.now(UTC)
    second = start_server(database_uri=first.database_uri, database_name=first.database_name, port=port)
    try:
        # the agent reconnects by itself and keeps reporting: a stop request is carried out
        wait_host_ready(second, agent.host_name, timeout=60)
        # "ready" may still be the old server's heartbeat: the agent has reconnected once it
        # has registered (or beaten) since.
        wait_until(lambda: heard_from_since(second, agent.host_name, stopped_at), timeout=60,
                   what="the agent to reconnect to the new server")
        assert conn.lookupByName(f"kubekvm-{lab}-1").ID() == ids_before, "the VM was restarted"
        gql(second, "mutation($n: String!) { stopDeployment(name: $n) { name } }", n=lab)
        # The first press of the power button may come before the guest listens to it: the agent
        # presses again, so this is well within the 60 s grace after which it would force it off.
        wait_until(lambda: phase(second, lab) == "INACTIVE", timeout=60, what="stopped through the new server",
                   detail=lambda: lab_state(second, lab))
        gql(second, "mutation($n: String!) { deleteDeployment(name: $n) { name } }", n=lab)
        wait_until(lambda: lab_state(second, lab) is None, timeout=60, what="deleted")
    finally:
        second.stop()
        conn.close()


@pytest.mark.timeout(180)
def test_missing_base_image_is_a_clear_machine_error(start_kubekvm: Callable[..., Server],
                                                     agents: Callable[..., Agent], tiny_linux: Path,
                                                     site: Path) -> None:
    server = start_kubekvm()
    images = image_dir_with(site, tiny_linux)
    (images / "vanishing.qcow2").symlink_to(tiny_linux / "tiny-linux.qcow2")
    add_tiny_template(server, name="vanishing", image="vanishing.qcow2")
    agent = agents(server, site / "state", images, "--heartbeat-interval", "600")
    wait_host_ready(server, agent.host_name)
    (images / "vanishing.qcow2").unlink()  # gone after the host said it had it
    lab = unique_lab()
    gql(server, "mutation($n: String!) { createDeployment(input: {name: $n, template: \"vanishing\", replicas: 1}) { name } }", n=lab)
    wait_until(lambda: phase(server, lab) == "FAILED", timeout=60, what="lab Failed")
    state = lab_state(server, lab)
    assert state is not None and "vanishing.qcow2" in state["message"] and "not found" in state["message"]
    assert state["machines"][0]["observed"] == "ERROR"
    assert agent.process is not None and agent.process.poll() is None, "the agent must not crash"
    gql(server, "mutation($n: String!) { deleteDeployment(name: $n) { name } }", n=lab)
    wait_until(lambda: lab_state(server, lab) is None, timeout=60, what="deleted")


@pytest.mark.timeout(240)
def test_agent_fails_over_when_a_server_replica_dies(start_kubekvm: Callable[..., Server],
                                                    agents: Callable[..., Agent], tiny_linux: Path,
                                                    site: Path) -> None:
    """Two server replicas on one database and one agent given both URLs: killing the replica
    the agent uses, mid-provisioning, leaves the lab to converge through the other."""
    import signal

    first = start_kubekvm()
    second = start_kubekvm(database_name=first.database_name)
    add_tiny_template(first)
    agent = agents([first, second], site / "state", image_dir_with(site, tiny_linux))
    wait_host_ready(first, agent.host_name)
    lab = unique_lab()
    gql(first, "mutation($n: String!) { createDeployment(input: {name: $n, template: \"tiny-linux\", replicas: 4}) { name } }", n=lab)
    # The agent is at work on the assignments it got from the first replica.
    wait_until(lambda: domains(f"kubekvm-{lab}-"), timeout=60, what="the agent's first domains of the lab")
    first.stop(signal.SIGKILL)
    wait_until(lambda: phase(second, lab) == "ACTIVE", timeout=120, what="lab Active through the second replica")
    assert len(domains(f"kubekvm-{lab}-")) == 4
    gql(second, "mutation($n: String!) { deleteDeployment(name: $n) { name } }", n=lab)
    wait_until(lambda: lab_state(second, lab) is None, timeout=90, what="deleted through the second replica")
    assert domains(f"kubekvm-{lab}-") == {}
