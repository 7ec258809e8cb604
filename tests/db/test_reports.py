"""Batched host reports (`reportMachineStates`) through the service layer, on both real
MongoDB-compatible servers: each report is its own unit (a refused one has its own outcome and
spares the others), a malformed batch writes nothing, and the lab's phase follows the batch."""

from __future__ import annotations

import pytest

from kubekvm.errors import ValidationFailed
from kubekvm.models import Deployment, LabEvent, Machine, ObservedState, Phase
from kubekvm.services import Services
from kubekvm.services.reports import MAX_REPORTS_PER_BATCH, MachineReport

RUNNING = ObservedState.RUNNING


async def lab_on_a_host(services: Services, name: str, replicas: int) -> list[Machine]:
    await services.hosts.register_host(name="kvm1", vcpus=8, memory_mib=16384, images=["tiny-linux.qcow2"],
                                       domain_type="test")
    await services.labs.create_deployment(name=name, template="tiny-linux", replicas=replicas)
    return await services.machines.list_machines(deployment=name)


def running(machine: Machine) -> MachineReport:
    return MachineReport(machine_id=str(machine.id), state=RUNNING, power_generation=machine.power_generation)


async def test_a_batch_applies_each_report_on_its_own(services: Services) -> None:
    first, second, gone, elsewhere = await lab_on_a_host(services, "batch", 4)
    await services.labs.create_deployment(name="other", template="tiny-linux", replicas=1)
    await Machine.get_pymongo_collection().update_one({"_id": elsewhere.id}, {"$set": {"host": "kvm2"}})
    await Machine.get_pymongo_collection().delete_one({"_id": gone.id})  # removed meanwhile
    reports = [running(first), running(gone), MachineReport(machine_id="not-an-id", state=RUNNING),
               running(elsewhere), MachineReport(machine_id=str(second.id), state=RUNNING, power_generation=-1)]
    outcomes = await services.reports.report_machine_states(host="kvm1", reports=reports)
    assert [(o.machine_id, o.accepted, o.error.code if o.error else None) for o in outcomes] == [
        (str(first.id), True, None), (str(gone.id), False, "NOT_FOUND"), ("not-an-id", False, "NOT_FOUND"),
        (str(elsewhere.id), False, "CONFLICT"), (str(second.id), False, "VALIDATION_FAILED")]
    assert outcomes[0].machine is not None and outcomes[0].machine.observed == RUNNING
    stored = {m.name: m for m in await Machine.find(Machine.deployment == "batch").to_list()}
    assert stored[first.name].observed == RUNNING and stored[first.name].observed_at is not None
    assert stored[second.name].observed == ObservedState.PENDING  # its refused report wrote nothing
    assert stored[elsewhere.name].observed == ObservedState.PENDING
    assert await LabEvent.find(LabEvent.machine == first.name, LabEvent.message == f"{first.name} is running").count() == 1

    # The rest of the lab reports in one batch: its phase is recomputed once, from all of them.
    outcomes = await services.reports.report_machine_states(host="kvm1", reports=[running(second)])
    assert outcomes[0].accepted
    await Machine.get_pymongo_collection().update_one({"_id": elsewhere.id}, {"$set": {"host": "kvm1"}})
    assert (await services.labs.get_deployment("batch")).phase == Phase.PENDING
    await services.reports.report_machine_states(host="kvm1", reports=[running(elsewhere), running(first)])
    lab = await services.labs.get_deployment("batch")
    assert (lab.phase, lab.message) == (Phase.ACTIVE, "3/3 running")


async def test_a_malformed_batch_is_refused_whole_with_nothing_written(services: Services) -> None:
    machines = await lab_on_a_host(services, "malformed", 2)
    before = await Machine.find(Machine.deployment == "malformed").to_list()
    lab_before = await Deployment.find_one(Deployment.name == "malformed")
    twice = [running(machines[0]), running(machines[1]), running(machines[0])]
    with pytest.raises(ValidationFailed, match="reported twice") as error:
        await services.reports.report_machine_states(host="kvm1", reports=twice)
    assert error.value.field == "reports"
    too_many = [MachineReport(machine_id=f"{i:024x}", state=RUNNING) for i in range(MAX_REPORTS_PER_BATCH + 1)]
    with pytest.raises(ValidationFailed, match=f"at most {MAX_REPORTS_PER_BATCH}"):
        await services.reports.report_machine_states(host="kvm1", reports=too_many)
    assert await Machine.find(Machine.deployment == "malformed").to_list() == before
    assert await Deployment.find_one(Deployment.name == "malformed") == lab_before
