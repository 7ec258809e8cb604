"""Golden images end to end, on real QEMU (TCG) guests, real files and a real agent: an image is
imported into the store, the agent pulls and verifies it, a 3-machine lab is made on v1; machine
1, prepared by the teacher, is published as v2 (its host flattens and uploads its disk) and the
existing machines' overlays still back onto v1 with their data intact (a marker written into a
disk is read back); the lab moves to v2 and a reset machine boots from v2 with the teacher's
changes in its base; once nothing uses v1 it is retired and gone from the host and the store."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Agent, domains, gql, lab_state, unique_lab, wait_host_ready, wait_until
from tests.support.processes import Server
from tests.support.qemu import traversable_dir

pytestmark = pytest.mark.qemu
GUEST_UP = "KUBEKVM-GUEST-UP"
PATTERN = "0x4b"
TEACHER = "0x54"


def file_of(digest: str) -> str:
    return f"sha256-{digest.removeprefix('sha256:')}.qcow2"


def backing(overlay: Path) -> str:
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(overlay)], check=True,
                          capture_output=True, text=True, timeout=60)
    return str(json.loads(info.stdout).get("backing-filename", ""))


def qemu_io(overlay: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(overlay)], capture_output=True,
                          text=True, timeout=60)


def machine(server: Server, lab: str, name: str) -> dict[str, object]:
    state = lab_state(server, lab)
    assert state is not None
    (found,) = [m for m in state["machines"] if m["name"] == name]
    return found  # type: ignore[no-any-return]


@pytest.mark.timeout(420)
def test_golden_image_lifecycle(start_kubekvm: Callable[..., Server], agents: Callable[..., Agent],
                                tiny_linux: Path, site: Path) -> None:
    store = traversable_dir(site / "store")
    server = start_kubekvm(env={"KUBEKVM_IMAGE_STORE": str(store)})
    # The host holds the guest's kernel (named after the template), not its disk: that is pulled.
    images = traversable_dir(site / "images")
    for suffix in ("kernel", "initrd"):
        os.symlink(tiny_linux / f"tiny-linux.{suffix}", images / f"tiny-linux.{suffix}")
    v1 = server.import_image(tiny_linux / "tiny-linux.qcow2")
    gql(server, 'mutation { createTemplate(input: {name: "tiny-linux", image: "none.qcow2", memoryMib: 128, '
                "diskGib: 1}) { name } }")
    gql(server, 'mutation($d: String!) { publishTemplateVersion(name: "tiny-linux", digest: $d, note: "v1") '
                "{ name } }", d=v1)
    agent = agents(server, site / "state", images, "--heartbeat-interval", "1", "--stop-grace", "5")
    wait_host_ready(server, agent.host_name)

    # A 3-machine lab on v1 (stopped: no guest needs to boot for its disks to be made).
    lab = unique_lab()
    vms = [f"{lab}-{i}" for i in (1, 2, 3)]
    gql(server, 'mutation($n: String!) { createDeployment(input: {name: $n, template: "tiny-linux", replicas: 3, '
                "power: STOPPED}) { name } }", n=lab)
    wait_until(lambda: all(agent.overlay(vm).is_file() for vm in vms), timeout=120,
               what="the agent to pull v1 and make the three overlays",
               detail=lambda: (lab_state(server, lab), sorted(p.name for p in images.iterdir())))
    pulled = images / file_of(v1)
    assert pulled.read_bytes() == (tiny_linux / "tiny-linux.qcow2").read_bytes()
    assert all(backing(agent.overlay(vm)) == str(pulled) for vm in vms)
    wait_until(lambda: file_of(v1) in gql(server, "{ hosts { images } }")["hosts"][0]["images"], timeout=120,
               what="the host to report the pulled image")
    # A student's work: a marker in machine 2's disk; the teacher's: another in machine 1's.
    assert qemu_io(agent.overlay(vms[1]), f"write -P {PATTERN} 0 64k").returncode == 0
    assert qemu_io(agent.overlay(vms[0]), f"write -P {TEACHER} 1M 64k").returncode == 0

    # Machine 1 published as v2: locked meanwhile, then v2 is its flattened disk.
    gql(server, 'mutation($n: String!) { publishMachine(name: $n, note: "prepared") { name } }', n=vms[0])
    locked = server.graphql('mutation($n: String!) { startMachine(name: $n) { name } }', {"n": vms[0]})
    assert locked["errors"][0]["extensions"]["code"] == "CONFLICT"  # type: ignore[index]

    def published() -> list[dict[str, object]]:
        state = gql(server, '{ template(name: "tiny-linux") { versions { number digest note } } }')
        versions: list[dict[str, object]] = state["template"]["versions"]
        return versions

    wait_until(lambda: len(published()) == 2, timeout=120, what="machine 1 to be published as v2",
               detail=lambda: gql(server, '{ machines { name publish { state message doneBytes } } }'))
    v2 = str(published()[1]["digest"])
    assert published()[1]["note"] == "prepared"
    stored_v2 = store / file_of(v2)
    assert backing(stored_v2) == ""  # standalone
    assert qemu_io(stored_v2, f"read -P {TEACHER} 1M 64k").returncode == 0
    wait_until(lambda: machine(server, lab, vms[0])["publish"]["state"] == "done",  # type: ignore[index]
               timeout=120, what="the publish job to end")
    assert not any((site / "state" / "publish").iterdir())
    # Publishing touched no machine.
    assert all(backing(agent.overlay(vm)) == str(pulled) for vm in vms)
    read = qemu_io(agent.overlay(vms[1]), f"read -P {PATTERN} 0 64k")
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, read.stdout

    # The lab moves to v2; machine 1 is reset, boots, and runs on v2 (pulled meanwhile).
    gql(server, 'mutation($n: String!) { moveDeploymentToVersion(name: $n, version: 2) { name } }', n=lab)
    gql(server, 'mutation($n: String!) { resetMachine(name: $n) { name } }', n=vms[0])
    wait_until(lambda: machine(server, lab, vms[0])["observed"] == "RUNNING", timeout=180,
               what="machine 1 running after its reset", detail=lambda: lab_state(server, lab))
    assert backing(agent.overlay(vms[0])) == str(images / file_of(v2))
    wait_until(lambda: agent.serial_log(vms[0]).is_file()
               and GUEST_UP in agent.serial_log(vms[0]).read_text(errors="replace"),
               timeout=180, what="machine 1's guest to boot from v2")
    assert backing(agent.overlay(vms[1])) == str(pulled)  # the others keep v1 and their data
    assert qemu_io(agent.overlay(vms[1]), f"read -P {PATTERN} 0 64k").returncode == 0

    # v1 is retired once nothing uses it: refused while machines 2 and 3 are on it.
    refused = server.graphql('mutation { retireTemplateVersion(name: "tiny-linux", version: 1) { name } }')
    assert refused["errors"][0]["extensions"]["code"] == "CONFLICT"  # type: ignore[index]
    gql(server, 'mutation($n: String!) { updateDeployment(name: $n, input: {replicas: 1}) { name } }', n=lab)
    wait_until(lambda: not server.graphql('mutation { retireTemplateVersion(name: "tiny-linux", version: 1) '
                                          "{ name } }").get("errors"),
               timeout=120, what="v1 to be retirable once machines 2 and 3 are gone")
    assert not (store / file_of(v1)).exists() and (store / file_of(v2)).is_file()
    wait_until(lambda: not pulled.exists(), timeout=60, what="the agent to delete the retired image")
    assert (images / file_of(v2)).is_file()
    assert set(domains(f"kubekvm-{lab}-")) == {f"kubekvm-{vms[0]}"}
