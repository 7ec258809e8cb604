"""The reconciler against libvirt's test driver: no daemon, real libvirt semantics and events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt

from agent.accelerator import Accelerator, choose_accelerator
from agent.assignment import Assignment
from agent.domain_xml import NEVER_POWERED, MachineMetadata, domain_xml
from agent.hypervisor import Hypervisor
from agent.machine_state import ObservedState

TEST_URI = "test:///default"

Make = Callable[..., Any]


def libvirt_domains(prefix: str) -> dict[str, int]:
    connection = libvirt.open(TEST_URI)
    try:
        return {
            d.name(): d.state()[0]
            for d in connection.listAllDomains(0)
            if d.name().startswith(prefix)
        }
    finally:
        connection.close()


async def converge(rig: Any, assignments: list[Assignment],
                   expected: ObservedState | dict[str, ObservedState]) -> None:
    if isinstance(expected, str):
        expected = {a.machine_id: expected for a in assignments}
    await rig.reports.wait_states(expected)
    await rig.reconciler.wait_idle()


async def running_machines(make_rig: Make, make_assignment: Make, lab: str, count: int,
                           **rig_options: object) -> tuple[Any, list[Assignment]]:
    """A reconciler that has created and started ``count`` machines of the lab."""
    rig = await make_rig(**rig_options)
    machines = [make_assignment(lab, i) for i in range(count)]
    rig.reconciler.replace_desired(machines)
    await converge(rig, machines, "running")
    return rig, machines


async def test_creates_and_starts_n_machines(make_rig: Make, make_assignment: Make,
                                             lab: str) -> None:
    rig, _ = await running_machines(make_rig, make_assignment, lab, 5)
    assert libvirt_domains(f"kubekvm-{lab}") == {
        f"kubekvm-{lab}-{i}": libvirt.VIR_DOMAIN_RUNNING for i in range(5)
    }
    assert rig.reconciler.disks.domains() == {f"kubekvm-{lab}-{i}" for i in range(5)}
    status = await rig.hypervisor.status(f"kubekvm-{lab}-0")
    assert status.metadata == MachineMetadata(
        machine_id=f"m-{lab}-0", deployment=lab, index=0, reset_generation=0,
        power_generation=1, template="tiny",
    )
    states = [state for _, mid, state, _ in rig.reports.states if mid == f"m-{lab}-0"]
    assert states[0] == "pending" and states[-1] == "running"
    # Each step of making it is said while it runs, so a slow one shows as the step it is.
    steps = [message for _, mid, state, message in rig.reports.states if mid == f"m-{lab}-0" and state == "pending"]
    assert [s.split(" from ")[0] for s in steps] == ["creating: cloning the disk", "creating: defining the VM"]


def reported_generation(rig: Any, machine_id: str) -> int | None:
    """The power generation of the latest report sent for the machine."""
    return [report for report in rig.reports.sent if report.machine_id == machine_id][-1].power_generation


async def test_stop_start_and_a_guest_powering_itself_off(make_rig: Make, make_assignment: Make,
                                                          lab: str) -> None:
    rig = await make_rig(stop_grace=2.0)
    machine = make_assignment(lab, 0, power_generation=1)
    rig.reconciler.replace_desired([machine])
    await converge(rig, [machine], "running")
    # Each report says which start/stop request the machine is the result of: the server
    # tells "not started yet" from "powered off" by it.
    assert reported_generation(rig, machine.machine_id) == 1

    stopped = replace(machine, desired="stopped", power_generation=2)
    rig.reconciler.update_desired([stopped])
    await converge(rig, [machine], "shutoff")
    status = await rig.hypervisor.status(machine.domain_name)
    assert status.metadata.power_generation == 2
    assert reported_generation(rig, machine.machine_id) == 2
    # The test driver's guests obey ACPI at once: off within the stopping pass, which says
    # so (no "shutting down" for a machine that is off).
    assert [message for _, mid, state, message in rig.reports.states
            if mid == machine.machine_id and state == "shutoff"] == [None]

    started = replace(machine, desired="running", power_generation=3)
    rig.reconciler.update_desired([started])
    await converge(rig, [machine], "running")

    # The guest powers itself off: reported at once, and not started again, not even by a
    # resync or a reconciler that starts from scratch, until the server asks again.
    await rig.hypervisor.destroy(machine.domain_name)
    await converge(rig, [machine], "shutoff")
    assert reported_generation(rig, machine.machine_id) == 3  # off, after start request 3
    await rig.reconciler.resync()
    await rig.reconciler.wait_idle()
    assert rig.reports.state(machine.machine_id) == "shutoff"
    again = await make_rig()
    again.reconciler.replace_desired([started])
    await converge(again, [started], "shutoff")
    assert (await rig.hypervisor.status(machine.domain_name)).state == "shutoff"

    again.reconciler.update_desired([replace(started, power_generation=4)])
    await converge(again, [started], "running")


async def test_absent_removes_domain_overlay_and_log(make_rig: Make, make_assignment: Make,
                                                     lab: str) -> None:
    rig, machines = await running_machines(make_rig, make_assignment, lab, 2)
    log = rig.reconciler.logs / f"{machines[0].domain_name}.log"
    log.write_text("boot output")
    rig.reconciler.update_desired([replace(machines[0], desired="absent")])
    await converge(rig, machines, {machines[0].machine_id: "absent",
                                   machines[1].machine_id: "running"})
    assert list(libvirt_domains(f"kubekvm-{lab}")) == [machines[1].domain_name]
    assert rig.reconciler.disks.domains() == {machines[1].domain_name}
    assert not log.exists()
    # Absent again is a no-op, and a never-created absent machine is simply absent.
    rig.reconciler.update_desired([replace(machines[0], desired="absent"),
                                   make_assignment(lab, 7, desired="absent")])
    await rig.reconciler.wait_idle()
    assert rig.reports.state(f"m-{lab}-7") == "absent"


async def test_reset_recreates_the_overlay_and_starts_again(make_rig: Make,
                                                            make_assignment: Make,
                                                            lab: str) -> None:
    rig = await make_rig()
    machine = make_assignment(lab, 0)
    rig.reconciler.replace_desired([machine])
    await converge(rig, [machine], "running")
    overlay = rig.reconciler.disks.path(machine.domain_name)
    inode = overlay.stat().st_ino

    rig.reconciler.update_desired([replace(machine, reset_generation=1)])
    await rig.reports.wait(lambda: any(
        state == "pending" and message and "resetting" in message
        for _, _, state, message in rig.reports.states))
    await converge(rig, [machine], "running")
    assert overlay.stat().st_ino != inode
    status = await rig.hypervisor.status(machine.domain_name)
    assert status.metadata.reset_generation == 1
    assert status.metadata.power_generation == machine.power_generation

    # A reset of a stopped machine leaves it stopped.
    stopped = replace(machine, desired="stopped", reset_generation=2, power_generation=2)
    rig.reconciler.update_desired([stopped])
    await converge(rig, [machine], "shutoff")
    assert (await rig.hypervisor.status(machine.domain_name)).metadata.reset_generation == 2


async def test_missing_base_image_is_an_error_not_a_crash(make_rig: Make, make_assignment: Make,
                                                          lab: str) -> None:
    rig = await make_rig()
    machine = make_assignment(lab, 0, image="winxp.qcow2")
    rig.reconciler.replace_desired([machine])
    await converge(rig, [machine], "error")
    assert rig.reports.latest(machine.machine_id)[1] == (
        f"base image winxp.qcow2 not found in {rig.image_dir}"
    )
    assert libvirt_domains(f"kubekvm-{lab}") == {}


async def test_orphans_are_reported_and_left_alone_unless_collected(
    make_rig: Make, make_assignment: Make, lab: str
) -> None:
    rig, machines = await running_machines(make_rig, make_assignment, lab, 3)
    rig.reconciler.update_desired([], removed=[machines[2].machine_id])
    await rig.reports.wait(lambda: rig.reports.orphans[-1:] == [[machines[2].domain_name]])
    await rig.reconciler.wait_idle()
    assert machines[2].domain_name in libvirt_domains(f"kubekvm-{lab}")
    # The test driver's own domain carries no metadata: neither an orphan nor touched.
    assert "test" not in rig.reports.orphans[-1]

    collector = await make_rig(gc_orphans=True)
    collector.reconciler.replace_desired(machines[:2])
    await collector.reports.wait(lambda: machines[2].domain_name
                                 not in libvirt_domains(f"kubekvm-{lab}"))
    await collector.reconciler.wait_idle()
    assert sorted(libvirt_domains(f"kubekvm-{lab}")) == [m.domain_name for m in machines[:2]]
    assert collector.reconciler.disks.domains() == {m.domain_name for m in machines[:2]}


async def test_foreign_domain_with_our_name_is_not_touched(make_rig: Make, make_assignment: Make,
                                                           lab: str) -> None:
    rig = await make_rig()
    machine = make_assignment(lab, 0)
    connection = libvirt.open(TEST_URI)
    connection.defineXML(
        f"<domain type='test'><name>{machine.domain_name}</name><memory>65536</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    connection.close()
    rig.reconciler.replace_desired([machine])
    await converge(rig, [machine], "error")
    assert "not managed by KubeKVM" in rig.reports.latest(machine.machine_id)[1]
    assert libvirt_domains(machine.domain_name)[machine.domain_name] == libvirt.VIR_DOMAIN_SHUTOFF


async def test_a_name_held_by_an_orphan_waits_for_gc(make_rig: Make, make_assignment: Make,
                                                     lab: str) -> None:
    old = make_assignment(lab, 0, machine_id="old")
    rig = await make_rig()
    rig.reconciler.replace_desired([old])
    await converge(rig, [old], "running")
    new = make_assignment(lab, 0, machine_id="new")
    rig.reconciler.replace_desired([new])
    await converge(rig, [new], "error")
    assert "belongs to machine old" in rig.reports.latest("new")[1]

    collector = await make_rig(gc_orphans=True)
    collector.reconciler.replace_desired([new])
    await converge(collector, [new], "running")
    status = await collector.hypervisor.status(new.domain_name)
    assert status.metadata.machine_id == "new"


async def test_unusable_kvm_reports_an_error_instead_of_hanging(
    make_rig: Make, make_assignment: Make, lab: str, tmp_path: Path
) -> None:
    hypervisor = Hypervisor(TEST_URI)
    auto = await choose_accelerator(hypervisor, requested="auto", work_dir=tmp_path)
    assert (auto.domain_type, auto.usable) == ("qemu", True)
    forced = await choose_accelerator(hypervisor, requested="kvm", work_dir=tmp_path)
    assert (forced.domain_type, forced.usable) == ("kvm", False)
    assert "--domain-type kvm" in forced.reason
    rig = await make_rig(hypervisor=hypervisor, accelerator=forced)
    machine = make_assignment(lab, 0)
    rig.reconciler.replace_desired([machine])
    await converge(rig, [machine], "error")
    assert rig.reports.latest(machine.machine_id)[1] == forced.reason
    assert libvirt_domains(f"kubekvm-{lab}") == {}


class CountingHypervisor(Hypervisor):
    """The real adapter, slowed down and watched: how many steps run at once, in what order."""

    def __init__(self) -> None:
        super().__init__(TEST_URI)
        self.active = 0
        self.most_active = 0
        self.in_flight: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.overlaps: list[tuple[str, str, str]] = []

    async def _step(self, name: str, action: str, work: Any) -> None:
        if name in self.in_flight:
            self.overlaps.append((name, self.in_flight[name], action))
        self.in_flight[name] = action
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        self.calls.append((name, action))
        try:
            await asyncio.sleep(0.05)  # not synchronisation: a slow libvirt, so steps could overlap
            await work
        finally:
            self.active -= 1
            del self.in_flight[name]

    async def define(self, xml: str) -> None:
        name = xml.split("<name>", 1)[1].split("</name>", 1)[0]
        await self._step(name, "define", super().define(xml))

    async def start(self, name: str) -> None:
        await self._step(name, "start", super().start(name))

    async def shutdown(self, name: str) -> None:
        await self._step(name, "shutdown", super().shutdown(name))

    async def destroy(self, name: str) -> None:
        await self._step(name, "destroy", super().destroy(name))


async def test_parallel_bound_is_respected(make_rig: Make, make_assignment: Make,
                                           lab: str) -> None:
    hypervisor = CountingHypervisor()
    rig = await make_rig(hypervisor=hypervisor, parallel=2)
    machines = [make_assignment(lab, i) for i in range(6)]
    rig.reconciler.replace_desired(machines)
    await converge(rig, machines, "running")
    assert hypervisor.most_active == 2
    assert hypervisor.overlaps == []


async def test_one_machines_steps_run_in_order_and_end_at_the_latest_wish(
    make_rig: Make, make_assignment: Make, lab: str
) -> None:
    hypervisor = CountingHypervisor()
    rig = await make_rig(hypervisor=hypervisor, stop_grace=5.0)
    machine = make_assignment(lab, 0, power_generation=1)
    rig.reconciler.replace_desired([machine])
    # Change the wish repeatedly while the first pass is still working.
    for generation, desired in [(2, "stopped"), (3, "running"), (4, "stopped"), (5, "running")]:
        # Not synchronisation: the wishes land at moments spread over the first pass's steps;
        # what is asserted holds whichever step each lands on.
        await asyncio.sleep(0.03)
        rig.reconciler.update_desired(
            [replace(machine, desired=desired, power_generation=generation)]
        )
    await rig.reconciler.wait_idle()
    await converge(rig, [machine], "running")
    assert hypervisor.overlaps == []
    assert [action for _, action in hypervisor.calls][:2] == ["define", "start"]
    status = await hypervisor.status(machine.domain_name)
    assert status.metadata.power_generation == 5


async def test_restart_does_nothing_when_already_converged(make_rig: Make, make_assignment: Make,
                                                           lab: str) -> None:
    rig, machines = await running_machines(make_rig, make_assignment, lab, 3)
    await rig.reconciler.close()

    hypervisor = CountingHypervisor()
    again = await make_rig(hypervisor=hypervisor)
    again.reconciler.replace_desired(machines)
    await converge(again, machines, "running")
    assert hypervisor.calls == []


async def test_domains_defined_by_an_older_agent_keep_their_generations(
    make_rig: Make, make_assignment: Make, lab: str, image_dir: Path
) -> None:
    rig = await make_rig()
    machine = make_assignment(lab, 0, power_generation=7)
    # Simulates a crash right after define: overlay and domain exist, never started.
    await rig.reconciler.disks.create(machine.domain_name, base=image_dir / "tiny-linux.qcow2")
    await rig.hypervisor.define(domain_xml(
        machine, domain_type="qemu", overlay=rig.reconciler.disks.path(machine.domain_name),
        serial_log=rig.reconciler.logs / "x.log", boot=None,
        metadata=MachineMetadata.for_assignment(machine, power_generation=NEVER_POWERED),
    ))
    rig.reconciler.replace_desired([machine])
    await converge(rig, [machine], "running")


async def test_lifecycle_events_are_reported_at_once(make_rig: Make, make_assignment: Make,
                                                     lab: str) -> None:
    rig = await make_rig(resync_interval=3600.0)
    machine = make_assignment(lab, 0)
    rig.reconciler.replace_desired([machine])
    await converge(rig, [machine], "running")
    connection = libvirt.open(TEST_URI)
    started = asyncio.get_running_loop().time()
    connection.lookupByName(machine.domain_name).destroy()
    connection.close()
    await rig.reports.wait(lambda: rig.reports.state(machine.machine_id) == "shutoff",
                           timeout=1.0)
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_unused_accelerator_choice_is_explained(tmp_path: Path) -> None:
    accelerator = await choose_accelerator(Hypervisor(TEST_URI), requested="qemu",
                                           work_dir=tmp_path)
    assert accelerator == Accelerator("qemu", True, "--domain-type qemu: software emulation (TCG)")


async def test_nothing_is_an_orphan_before_the_first_snapshot(make_rig: Make,
                                                              make_assignment: Make,
                                                              lab: str) -> None:
    _, machines = await running_machines(make_rig, make_assignment, lab, 2)
    # A restarted agent that collects orphans, before the server has said anything.
    collector = await make_rig(gc_orphans=True)
    await collector.reconciler.resync()
    await collector.reconciler.wait_idle()
    assert collector.reports.orphans == []
    assert sorted(libvirt_domains(f"kubekvm-{lab}")) == [m.domain_name for m in machines]


async def test_a_machine_under_a_new_name_leaves_its_old_domain_an_orphan(
    make_rig: Make, make_assignment: Make, lab: str
) -> None:
    rig = await make_rig()
    machine = make_assignment(lab, 0)
    rig.reconciler.replace_desired([machine])
    await converge(rig, [machine], "running")
    moved = replace(machine, index=1)
    rig.reconciler.replace_desired([moved])
    await converge(rig, [moved], "running")
    await rig.reports.wait(lambda: rig.reports.orphans[-1:] == [[machine.domain_name]])


class SampledHypervisor(Hypervisor):
    """libvirt's test driver keeps no CPU statistics: this one says each running domain used
    `seconds` of CPU (everything else is the test driver's)."""

    seconds = 1.5

    async def cpu_times(self) -> dict[str, float]:
        return {name: self.seconds for name, status in (await self.list_domains()).items() if status.active}


async def test_cpu_samples_go_with_the_last_report_and_are_no_news_of_the_state(
        make_rig: Make, make_assignment: Make, lab: str) -> None:
    rig, machines = await running_machines(make_rig, make_assignment, lab, 2, hypervisor=SampledHypervisor(TEST_URI))
    await rig.reconciler.sample_cpu()
    sampled = {r.machine_id: r for r in rig.reports.sent[-2:]}
    assert {mid: (r.state, r.cpu_seconds, r.power_generation) for mid, r in sampled.items()} == {
        m.machine_id: ("running", 1.5, 1) for m in machines}
    sent = len(rig.reports.sent)
    await rig.reconciler.resync()
    await rig.reconciler.wait_idle()
    assert len(rig.reports.sent) == sent, "a pass finding the same state sends nothing after a sample"
