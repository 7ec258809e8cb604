"""Real guests: libvirtd + QEMU (TCG) booting the tiny-linux guest.

These tests check what the test driver cannot: guests really boot from their overlays,
power themselves off and answer the ACPI button, lifecycle events arrive fast, and a
reconciler killed at random moments converges to exactly the desired set.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt
import pytest
from tests.support.waiting import wait_until_async

from agent.domain_xml import parse_machine_metadata
from kubekvm_demo.tiny_linux import MARKER

pytestmark = pytest.mark.qemu

QEMU_URI = "qemu:///system"
Make = Callable[..., Any]


def our_domains(prefix: str) -> dict[str, int]:
    connection = libvirt.open(QEMU_URI)
    try:
        return {d.name(): d.state()[0] for d in connection.listAllDomains(0)
                if d.name().startswith(prefix)}
    finally:
        connection.close()


async def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    await wait_until_async(predicate, timeout=timeout, what=what)


def booted(site: Any, domain: str, hostname: str) -> bool:
    log = site.serial_log(domain)
    return log.exists() and f"{MARKER} {hostname}" in log.read_text(errors="replace")


async def test_machines_boot_answer_the_power_button_or_are_forced_off_and_are_removed(
    make_qemu_rig: Make, make_assignment: Make, qemu_site: Any, lab: str
) -> None:
    """Three guests boot from their overlays at once; asked to stop, the two that listen to the
    ACPI button shut down cleanly, the deaf one is forced off once the grace is over; asked to
    go, every domain, overlay and serial log goes. (One set of boots for all of it: under TCG a
    boot is the expensive part.)"""
    deaf = qemu_site.add_image("tiny-deaf", cmdline="acpi=off")
    rig = await make_qemu_rig(stop_grace=4.0)
    polite = [make_assignment(lab, i, memory_mib=96) for i in range(2)]
    stubborn = make_assignment(lab, 2, image=deaf, memory_mib=96)
    machines = [*polite, stubborn]
    rig.reconciler.replace_desired(machines)
    await rig.reports.wait_states({m.machine_id: "running" for m in machines}, timeout=60)
    for machine in machines:
        await wait_for(lambda m=machine: booted(qemu_site, m.domain_name, f"{lab}-{m.index}"),
                       timeout=180, what=f"{machine.domain_name} to boot")
    assert set(our_domains(f"kubekvm-{lab}").values()) == {libvirt.VIR_DOMAIN_RUNNING}

    started = time.monotonic()
    rig.reconciler.update_desired([replace(m, desired="stopped", power_generation=2) for m in machines])
    await rig.reports.wait_states({m.machine_id: "shutoff" for m in machines}, timeout=120)
    # A clean ACPI shutdown reports no message; a forced one says so, and only after the grace.
    # (How long the clean one took is not asserted: on a loaded machine it may outlast the grace,
    # and its message still tells the two apart.)
    for machine in polite:
        assert rig.reports.latest(machine.machine_id) == ("shutoff", None), "forced off, not shut down"
    assert "forced off" in (rig.reports.latest(stubborn.machine_id)[1] or "")
    forced_at = next(at for at, mid, state, _ in reversed(rig.reports.states)
                     if mid == stubborn.machine_id and state == "shutoff")
    assert forced_at - started >= 4.0, "forced off before the grace was over"
    assert set(our_domains(f"kubekvm-{lab}").values()) == {libvirt.VIR_DOMAIN_SHUTOFF}

    rig.reconciler.update_desired([replace(m, desired="absent", power_generation=2) for m in machines])
    await rig.reports.wait_states({m.machine_id: "absent" for m in machines}, timeout=60)
    await rig.reconciler.wait_idle()
    assert our_domains(f"kubekvm-{lab}") == {}
    assert rig.reconciler.disks.domains() == set()
    assert list((qemu_site.state_dir / "logs").iterdir()) == []


def qemu_pid(domain: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())


async def wait_for_exit(pid: int) -> float:
    """Returns the monotonic time the process exited (pidfd: no polling delay)."""
    descriptor = os.pidfd_open(pid)
    exited = asyncio.get_running_loop().create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(time.monotonic())

    loop = asyncio.get_running_loop()
    loop.add_reader(descriptor, on_exit)
    try:
        return await asyncio.wait_for(exited, timeout=180)  # a boot under TCG on a loaded machine
    finally:
        loop.remove_reader(descriptor)
        os.close(descriptor)


async def test_a_guest_powering_itself_off_is_reported_from_the_lifecycle_event(
    make_qemu_rig: Make, make_assignment: Make, qemu_site: Any, lab: str
) -> None:
    """With resyncs an hour apart, nothing polls: the shutoff report can only come from libvirt's
    lifecycle event. (On an idle machine it comes within tens of milliseconds of QEMU's exit;
    the bound below is far under the resync interval, which is what tells an event from a
    poll, and generous enough that a loaded machine's scheduling cannot fail it.)"""
    image = qemu_site.add_image("tiny-off", cmdline="kubekvm.poweroff_after=2")
    rig = await make_qemu_rig(resync_interval=3600.0)
    machine = make_assignment(lab, 0, image=image, memory_mib=96)
    rig.reconciler.replace_desired([machine])
    await rig.reports.wait_states({machine.machine_id: "running"}, timeout=60)
    await rig.reconciler.wait_idle()
    exited_at = await wait_for_exit(qemu_pid(machine.domain_name))
    await rig.reports.wait(lambda: rig.reports.state(machine.machine_id) == "shutoff",
                           timeout=60)
    reported_at = next(at for at, mid, state, _ in reversed(rig.reports.states)
                       if mid == machine.machine_id and state == "shutoff")
    print(f"shutoff reported {reported_at - exited_at:.3f} s after QEMU exited")
    assert reported_at - exited_at < 60, f"reported {reported_at - exited_at:.3f} s late: polled, not an event"
    assert booted(qemu_site, machine.domain_name, f"{lab}-0")
    # Desired is still running, but the server did not ask again: the guest stays off.
    await rig.reconciler.resync()
    await rig.reconciler.wait_idle()  # the resync's passes are over: a start would have happened
    assert our_domains(machine.domain_name)[machine.domain_name] == libvirt.VIR_DOMAIN_SHUTOFF


async def test_a_stop_asked_while_the_guest_boots_is_a_clean_acpi_shutdown(
    make_qemu_rig: Make, make_assignment: Make, qemu_site: Any, lab: str
) -> None:
    """The first press of the power button comes before the booting guest listens to it (the
    stop follows the start at once): the button is pressed again, and the guest shuts down
    cleanly long before the grace would force it off."""
    # A grace far beyond any boot: a forced stop would say so in its message (asserted below).
    rig = await make_qemu_rig(stop_grace=300.0)
    machine = make_assignment(lab, 0, memory_mib=96)
    rig.reconciler.replace_desired([machine])
    await rig.reports.wait_states({machine.machine_id: "running"}, timeout=60)
    assert not booted(qemu_site, machine.domain_name, f"{lab}-0"), "booted before the stop: no race to test"
    rig.reconciler.update_desired([replace(machine, desired="stopped", power_generation=2)])
    await rig.reports.wait(lambda: rig.reports.state(machine.machine_id) == "shutoff", timeout=240)
    assert rig.reports.latest(machine.machine_id) == ("shutoff", None), "forced off, not shut down"
    assert booted(qemu_site, machine.domain_name, f"{lab}-0"), "it shut down only once it listened"


def graphql_payload(assignment: Any) -> dict[str, object]:
    template = assignment.template
    return {
        "machineId": assignment.machine_id, "vmName": assignment.vm_name,
        "deployment": assignment.deployment, "index": assignment.index,
        "desired": assignment.desired.upper(), "resetGeneration": assignment.reset_generation,
        "powerGeneration": assignment.power_generation,
        "template": {"name": template.name, "image": template.image, "os": template.os,
                     "vcpus": template.vcpus, "memoryMib": template.memory_mib,
                     "diskGib": template.disk_gib},
    }


async def test_sigkill_at_random_moments_then_restart_converges(
    make_assignment: Make, qemu_site: Any, lab: str
) -> None:
    # Four machines, three reconciled at once: every kill lands amid several machines' work.
    machines = [make_assignment(lab, i, memory_mib=64) for i in range(4)]
    spec = qemu_site.root / "spec.json"

    def write_spec(generation: int) -> None:
        # Each round asks for a reset and a new start, so every run has real work
        # (overlay replacement, redefinition, start) for the kill to interrupt.
        wanted = [replace(m, reset_generation=generation, power_generation=generation + 1)
                  for m in machines]
        spec.write_text(json.dumps({
            "uri": QEMU_URI, "image_dir": str(qemu_site.image_dir),
            "state_dir": str(qemu_site.state_dir), "parallel": 3,
            "assignments": [graphql_payload(m) for m in wanted],
        }))

    harness = [sys.executable, str(Path(__file__).with_name("reconcile_harness.py")), str(spec)]
    chance = random.Random(lab)
    kills = 0
    for generation in range(10):
        write_spec(generation)
        process = subprocess.Popen(harness, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(chance.uniform(0.3, 1.5))  # not synchronisation: a random moment to kill
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    write_spec(10)
    final = subprocess.run(harness, capture_output=True, text=True, timeout=120)
    assert "CONVERGED" in final.stdout, final.stdout + final.stderr

    states = our_domains(f"kubekvm-{lab}")
    assert sorted(states) == sorted(m.domain_name for m in machines)
    assert set(states.values()) == {libvirt.VIR_DOMAIN_RUNNING}
    disks = qemu_site.state_dir / "disks"
    assert sorted(p.name for p in disks.iterdir()) == sorted(
        f"{m.domain_name}.qcow2" for m in machines
    )
    connection = libvirt.open(QEMU_URI)
    try:
        for machine in machines:
            xml = connection.lookupByName(machine.domain_name).XMLDesc(0)
            metadata = parse_machine_metadata(xml)
            assert (metadata.reset_generation, metadata.power_generation) == (10, 11)
    finally:
        connection.close()
    print(f"killed {kills} of 10 runs")
    assert kills >= 5, f"only {kills} of 10 runs were still working when killed"


async def test_the_kvm_probe_rom_reaches_long_mode_and_auto_picks_a_working_type(
    qemu_site: Any,
) -> None:
    from agent.accelerator import choose_accelerator, probe_kvm
    from agent.hypervisor import Hypervisor

    hypervisor = Hypervisor(QEMU_URI)
    try:
        # Under TCG the ROM must always work: this checks the probe itself.
        works, detail = await probe_kvm(hypervisor, work_dir=qemu_site.root / "probe",
                                        domain_type="qemu", timeout=20)
        assert works, detail
        chosen = await choose_accelerator(hypervisor, requested="auto",
                                          work_dir=qemu_site.root / "probe")
        assert chosen.usable, chosen.reason
        assert chosen.domain_type in ("kvm", "qemu")
        if chosen.domain_type == "qemu" and await hypervisor.offers_domain_type("kvm"):
            # This sandbox's /dev/kvm cannot run a stock kernel: the probe says so.
            assert "unusable" in chosen.reason
        assert "kubekvm--probe" not in our_domains("kubekvm--probe")
    finally:
        await hypervisor.close()
