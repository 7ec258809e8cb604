"""The lab lifecycle through the service layer, on a real MongoDB-compatible server
(SecantusDB and mongoeco), driven by host reports as an agent would send them."""

from __future__ import annotations

import pytest

from kubekvm.errors import Conflict, NotFound, ValidationFailed
from kubekvm.models import Deployment, DesiredState, Host, Machine, ObservedState, Phase, Template
from kubekvm.services import Services

RUNNING, SHUTOFF, ABSENT = ObservedState.RUNNING, ObservedState.SHUTOFF, ObservedState.ABSENT


async def report_all(services: Services, lab: str, state: ObservedState, *, host: str = "kvm1") -> None:
    for m in await services.machines.list_machines(deployment=lab):
        await services.machines.report_machine_state(machine_id=str(m.id), host=host, state=state,
                                            power_generation=m.power_generation)


async def a_host(services: Services, name: str = "kvm1", memory: int = 8192) -> None:
    await services.hosts.register_host(name=name, vcpus=4, memory_mib=memory,
                                 images=["tiny-linux.qcow2", "winxp.qcow2"], domain_type="test")


async def test_seed_templates_are_there(services: Services) -> None:
    names = {t.name for t in await services.templates.list_templates()}
    assert {"tecnologia-de-computadores", "redes-neuronales"} <= names
    xp = await services.templates.get_template("tecnologia-de-computadores")
    assert (xp.os, xp.image, xp.vcpus, xp.memory_mib, xp.disk_gib) == ("windows", "winxp.qcow2", 1, 512, 4)


async def test_full_lifecycle(services: Services) -> None:
    await a_host(services)
    lab = await services.labs.create_deployment(name="redes", template="tiny-linux", replicas=3)
    assert lab.phase == Phase.PENDING
    machines = await services.machines.list_machines(deployment="redes")
    assert [m.name for m in machines] == ["redes-1", "redes-2", "redes-3"]
    assert {m.host for m in machines} == {"kvm1"} and {m.desired for m in machines} == {DesiredState.RUNNING}

    await report_all(services, "redes", RUNNING)
    assert (await services.labs.get_deployment("redes")).phase == Phase.ACTIVE

    await report_all(services, "redes", SHUTOFF)  # students power off
    assert (await services.labs.get_deployment("redes")).phase == Phase.INACTIVE

    before = {m.name: m.id for m in await services.machines.list_machines(deployment="redes")}
    await services.labs.start_deployment("redes")
    after = await services.machines.list_machines(deployment="redes")
    assert {m.name: m.id for m in after} == before, "starting must reuse the machines, never re-create"
    assert all(m.power_generation == 2 and m.desired == DesiredState.RUNNING for m in after)
    assert (await services.labs.get_deployment("redes")).phase == Phase.PENDING

    await report_all(services, "redes", RUNNING)
    await services.labs.update_deployment("redes", replicas=1)
    kept = {m.name: m.desired for m in await services.machines.list_machines(deployment="redes")}
    assert kept == {"redes-1": DesiredState.RUNNING, "redes-2": DesiredState.ABSENT,
                    "redes-3": DesiredState.ABSENT}
    await report_all(services, "redes", ABSENT)  # the host removed 2 and 3 (and says 1 is gone?)
    # redes-1 is desired running, so an "absent" report does not remove it.
    assert [m.name for m in await services.machines.list_machines(deployment="redes")] == ["redes-1"]

    await services.labs.delete_deployment("redes")
    assert (await services.labs.get_deployment("redes")).phase == Phase.DELETING
    await report_all(services, "redes", ABSENT)
    with pytest.raises(NotFound):
        await services.labs.get_deployment("redes")
    assert await Machine.find(Machine.deployment == "redes").count() == 0
    host = await services.hosts.get_host("kvm1")
    assert (host.allocated_vcpus, host.allocated_memory_mib) == (0, 0)


async def test_stop_sets_every_machine_stopped(services: Services) -> None:
    await a_host(services)
    await services.labs.create_deployment(name="s", template="tiny-linux", replicas=2)
    await report_all(services, "s", RUNNING)
    await services.labs.stop_deployment("s")
    assert {m.desired for m in await services.machines.list_machines(deployment="s")} == {DesiredState.STOPPED}
    assert (await services.labs.get_deployment("s")).phase == Phase.PENDING
    await report_all(services, "s", SHUTOFF)
    assert (await services.labs.get_deployment("s")).phase == Phase.INACTIVE


async def test_reset_is_recorded_for_the_host(services: Services) -> None:
    await a_host(services)
    await services.labs.create_deployment(name="r", template="tiny-linux", replicas=1)
    machine = await services.machines.reset_machine("r-1")
    assert machine.reset_generation == 1 and machine.observed == ObservedState.PENDING


async def test_error_fails_the_lab(services: Services) -> None:
    await a_host(services)
    await services.labs.create_deployment(name="f", template="tiny-linux", replicas=2)
    m = (await services.machines.list_machines(deployment="f"))[0]
    await services.machines.report_machine_state(machine_id=str(m.id), host="kvm1", state=ObservedState.ERROR,
                                        message="base image tiny-linux.qcow2 not found")
    lab = await services.labs.get_deployment("f")
    assert lab.phase == Phase.FAILED and "tiny-linux.qcow2 not found" in lab.message


async def test_no_host_leaves_machines_pending_with_why(services: Services) -> None:
    await services.labs.create_deployment(name="p", template="tecnologia-de-computadores", replicas=2)
    await services.hosts.register_host(name="small", vcpus=2, memory_mib=600, images=["winxp.qcow2"])
    machines = await services.machines.list_machines(deployment="p")
    assert [m.host for m in machines] == ["small", None]
    assert machines[1].message == "no ready host has image winxp.qcow2 with 512 MiB and 1 vCPU(s) free"
    # a bigger host arrives: the pending machine is placed there
    await services.hosts.register_host(name="big", vcpus=8, memory_mib=8192, images=["winxp.qcow2"])
    assert [m.host for m in await services.machines.list_machines(deployment="p")] == ["small", "big"]


async def test_template_rules(services: Services) -> None:
    await services.labs.create_deployment(name="uses", template="tiny-linux", replicas=1)
    with pytest.raises(ValidationFailed) as changed:
        await services.labs.update_deployment("uses", template="redes-neuronales")
    assert changed.value.field == "template"
    with pytest.raises(Conflict):
        await services.templates.delete_template("tiny-linux")
    assert await Template.find_one(Template.name == "tiny-linux") is not None


async def test_bad_input_writes_nothing(services: Services) -> None:
    for name in ["Bad Name", "a;b", "$(x)", "../x", "x" * 41, "", "ñ"]:
        with pytest.raises(ValidationFailed):
            await services.labs.create_deployment(name=name, template="tiny-linux", replicas=1)
    for replicas in [0, -1, 10**9]:
        with pytest.raises(ValidationFailed):
            await services.labs.create_deployment(name="ok", template="tiny-linux", replicas=replicas)
    with pytest.raises(ValidationFailed):
        await services.labs.create_deployment(name="ok", template="nope", replicas=1)
    assert await Deployment.find_all().count() == 0 and await Machine.find_all().count() == 0
    await services.labs.create_deployment(name="dup", template="tiny-linux", replicas=2)
    with pytest.raises(Conflict):
        await services.labs.create_deployment(name="dup", template="tiny-linux", replicas=5)
    assert await Machine.find_all().count() == 2
    with pytest.raises(NotFound):
        await services.labs.update_deployment("missing", replicas=2)


async def test_force_delete_only_when_hosts_are_gone(services: Services) -> None:
    await a_host(services)
    await services.labs.create_deployment(name="gone", template="tiny-linux", replicas=2)
    with pytest.raises(Conflict):
        await services.labs.delete_deployment("gone", force=True)
    await Host.find_one(Host.name == "kvm1").update({"$set": {"last_heartbeat": "2000-01-01"}})
    host = await services.hosts.get_host("kvm1")
    from datetime import UTC, datetime
    await host.set({"last_heartbeat": datetime(2000, 1, 1, tzinfo=UTC)})
    await services.labs.delete_deployment("gone", force=True)
    assert await Deployment.find_one(Deployment.name == "gone") is None
    assert await Machine.find(Machine.deployment == "gone").count() == 0


async def test_reports_from_the_wrong_host_are_refused(services: Services) -> None:
    await a_host(services)
    await services.labs.create_deployment(name="w", template="tiny-linux", replicas=1)
    m = (await services.machines.list_machines(deployment="w"))[0]
    with pytest.raises(Conflict):
        await services.machines.report_machine_state(machine_id=str(m.id), host="other", state=RUNNING)
    with pytest.raises(NotFound):
        await services.machines.report_machine_state(machine_id="nope", host="kvm1", state=RUNNING)


async def test_subscribers_of_one_lab_change_share_one_count(services: Services) -> None:
    import asyncio

    await a_host(services)
    lab = await services.labs.create_deployment(name="shared", template="tiny-linux", replicas=3)
    await report_all(services, "shared", RUNNING)
    lab = await services.labs.get_deployment("shared")
    calls = 0
    count = services.labs.running_counts

    async def counted(names: list[str]) -> dict[str, tuple[int, int]]:
        nonlocal calls
        calls += 1
        return await count(names)

    services.labs.running_counts = counted  # type: ignore[method-assign]
    # Counted with each change: the lab carries its counts, nothing is aggregated.
    assert (lab.running, lab.kept) == (3, 3)
    assert await services.labs.lab_counts(lab) == (3, 3) and calls == 0
    # A lab stored before counts were kept: one aggregation shared by every subscriber.
    lab.running = lab.kept = None
    results = await asyncio.gather(*(services.labs.lab_counts(lab) for _ in range(50)))
    assert set(results) == {(3, 3)} and calls == 1
    lab.version += 1  # a new version of the lab: counted afresh
    assert await services.labs.lab_counts(lab) == (3, 3) and calls == 2


async def test_lab_counts_follow_every_machine_change_and_lists_read_them(services: Services) -> None:
    await a_host(services)
    await services.labs.create_deployment(name="counted", template="tiny-linux", replicas=3)
    lab = await services.labs.get_deployment("counted")
    assert (lab.running, lab.kept) == (0, 3)
    first, *_ = await services.machines.list_machines(deployment="counted")
    await services.machines.report_machine_state(machine_id=str(first.id), host="kvm1", state=RUNNING,
                                                 power_generation=first.power_generation)
    assert (await services.labs.counts_of([await services.labs.get_deployment("counted")])) == {"counted": (1, 3)}
    await report_all(services, "counted", RUNNING)
    await services.labs.update_deployment("counted", replicas=2)  # one on its way out: not kept
    lab = await services.labs.get_deployment("counted")
    assert (lab.running, lab.kept) == (2, 2)

    async def refused(names: object) -> dict[str, tuple[int, int]]:
        raise AssertionError("a list of counted labs must not count machines")

    original = services.labs.running_counts
    services.labs.running_counts = refused  # type: ignore[method-assign]
    page = await services.labs.list_deployments()
    assert await services.labs.counts_of(page.items) == {"counted": (2, 2)}
    services.labs.running_counts = original  # type: ignore[method-assign]
    # A lab stored by an older version (no counts) is counted when read, then stored by a recount.
    await Deployment.get_pymongo_collection().update_one({"name": "counted"}, {"$unset": {"running": "", "kept": ""}})
    legacy = await services.labs.get_deployment("counted")
    assert legacy.kept is None and await services.labs.counts_of([legacy]) == {"counted": (2, 2)}
    await services.convergence.converge_lab("counted")
    lab = await services.labs.get_deployment("counted")
    assert (lab.running, lab.kept) == (2, 2)


async def test_a_total_counts_only_labs_a_read_can_show(services: Services) -> None:
    await services.labs.create_deployment(name="good", template="tiny-linux", replicas=1)
    # The 2019 application's lab, and one whose phase this version does not know.
    await Deployment.get_pymongo_collection().insert_many([
        {"name": "D2", "type": "TecnologiaDeComputadores", "replicas": 2, "estado": "Pendiente"},
        {"name": "odd", "title": "odd", "template": "tiny-linux", "replicas": 1, "phase": "Pendiente"}])
    page = await services.labs.list_deployments()
    assert [lab.name for lab in page.items] == ["good"] and page.total == 1
    # Skipping counts the same documents: the second page is empty, not a repeat.
    assert (await services.labs.list_deployments(offset=1)).items == []
