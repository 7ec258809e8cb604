"""The janitor and its lease, on a real MongoDB-compatible server: drift injected the way a
crash between two steps leaves it, repaired and logged; one janitor at a time, taken over when
the holder stops renewing (time moved by an injected clock, never waited for)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from kubekvm.errors import NotFound
from kubekvm.janitor import LEASE_NAME, Janitor
from kubekvm.lease import Lease
from kubekvm.models import Deployment, Host, Machine, ObservedState, Phase
from kubekvm.services import Services
from tests.db.test_consistency import replica
from tests.db.test_services import a_host, report_all


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def lease(holder: str, clock: Clock, *, ttl: float = 30.0) -> Lease:
    return Lease(collection=Deployment.get_pymongo_collection().database["leases"], name=LEASE_NAME,
                 ttl_seconds=ttl, holder=holder, clock=clock)


def janitor(services: Services, holder: str, clock: Clock) -> Janitor:
    return Janitor(services=services, lease=lease(holder, clock), interval_seconds=10)


async def test_one_holder_at_a_time_and_takeover_after_expiry(services: Services) -> None:
    clock = Clock()
    first, second = lease("replica-a", clock), lease("replica-b", clock)
    assert await first.acquire() is True
    assert await second.acquire() is False
    clock.advance(20)
    assert await first.acquire() is True, "the holder renews its own lease"
    clock.advance(20)  # 40 s after taking it, 20 s after renewing: still held
    assert await second.acquire() is False
    assert await second.current_holder() == "replica-a"
    clock.advance(11)  # the holder stopped renewing 31 s ago: expired
    assert await second.acquire() is True
    assert await first.acquire() is False and not first.held
    await second.release()
    assert await second.current_holder() is None
    assert await first.acquire() is True, "a released lease is free at once"


async def test_two_janitors_on_one_database_only_one_works(services: Services) -> None:
    clock = Clock()
    a, b = janitor(services, "replica-a", clock), janitor(replica(services), "replica-b", clock)
    turns = [await a.run_once(), await b.run_once(), await a.run_once(), await b.run_once()]
    assert [t is not None for t in turns] == [True, False, True, False]
    clock.advance(31)  # a died without releasing; b's next turn takes over
    assert await b.run_once() is not None
    assert await a.run_once() is None


async def test_leaked_capacity_is_recounted_and_logged(services: Services, caplog: pytest.LogCaptureFixture) -> None:
    await a_host(services)
    await services.labs.create_deployment(name="cap", template="tiny-linux", replicas=3)
    # A crash between reserving capacity and claiming the machines leaves this behind.
    await Host.get_pymongo_collection().update_one(
        {"name": "kvm1"}, {"$inc": {"allocated_vcpus": 5, "allocated_memory_mib": 640}})
    worker = janitor(services, "replica-a", Clock())
    caplog.set_level(logging.WARNING, logger="kubekvm.janitor")
    first = await worker.run_once()
    assert first is not None and first.hosts == [], "a drift seen once may be a placement in flight"
    second = await worker.run_once()
    assert second is not None and second.hosts == ["kvm1"]
    host = await services.hosts.get_host("kvm1")
    assert (host.allocated_vcpus, host.allocated_memory_mib) == (3, 3 * 128)
    assert "host kvm1 had 8 vCPUs and 1024 MiB allocated, its machines use 3 vCPUs and 384 MiB" in caplog.text
    assert not await worker.run_once(), "nothing left to repair"


async def test_a_deleting_lab_whose_machines_are_gone_is_removed(services: Services,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    await a_host(services)
    await services.labs.create_deployment(name="stuck", template="tiny-linux", replicas=1)
    await report_all(services, "stuck", ObservedState.RUNNING)
    await services.labs.delete_deployment("stuck")
    # The machine document was removed, then the process died before recomputing the lab.
    await Machine.get_pymongo_collection().delete_many({"deployment": "stuck"})
    assert (await services.labs.get_deployment("stuck")).message == "removing 1 machine(s) from their hosts"
    caplog.set_level(logging.WARNING, logger="kubekvm.janitor")
    repairs = await janitor(services, "replica-a", Clock()).run_once()
    assert repairs is not None and repairs.labs == ["stuck"]
    with pytest.raises(NotFound):
        await services.labs.get_deployment("stuck")
    assert "lab stuck was Deleting (removing 1 machine(s) from their hosts) with no machine left: removed" in caplog.text


async def test_a_stale_phase_and_a_half_removed_machine_are_finished(services: Services) -> None:
    await a_host(services)
    await services.labs.create_deployment(name="half", template="tiny-linux", replicas=2)
    await report_all(services, "half", ObservedState.RUNNING)
    await services.labs.update_deployment("half", replicas=1)
    await Deployment.get_pymongo_collection().update_one(
        {"name": "half"}, {"$set": {"phase": Phase.FAILED.value, "message": "left over"}})
    # A machine retired (its removal begun) by a process that died before deleting it.
    await Machine.get_pymongo_collection().update_one({"name": "half-2"}, {"$set": {"retired": True}})
    worker = janitor(services, "replica-a", Clock())
    first = await worker.run_once()
    assert first is not None and first.labs == ["half"] and first.machines == []
    second = await worker.run_once()
    assert second is not None and second.machines == ["half-2"] and second.hosts == ["kvm1"]
    assert await Machine.find(Machine.name == "half-2").count() == 0
    lab = await services.labs.get_deployment("half")
    assert lab.phase == Phase.ACTIVE
    host = await services.hosts.get_host("kvm1")
    assert host.allocated_vcpus == 1


async def test_lab_counts_left_wrong_by_a_crash_are_recounted(services: Services,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    await a_host(services)
    await services.labs.create_deployment(name="miscounted", template="tiny-linux", replicas=2)
    await report_all(services, "miscounted", ObservedState.RUNNING)
    # A report written, then the process died before the lab was recounted.
    await Deployment.get_pymongo_collection().update_one({"name": "miscounted"}, {"$set": {"running": 1}})
    caplog.set_level(logging.WARNING, logger="kubekvm.janitor")
    repairs = await janitor(services, "replica-a", Clock()).run_once()
    assert repairs is not None and repairs.labs == ["miscounted"]
    lab = await services.labs.get_deployment("miscounted")
    assert (lab.running, lab.kept) == (2, 2)
    assert "lab miscounted counted 1/2 running, its machines say 2/2: recounted" in caplog.text


async def test_a_lab_whose_machines_were_never_made_gets_them(services: Services) -> None:
    await a_host(services)
    await services.labs.create_deployment(name="short", template="tiny-linux", replicas=1)
    await services.rosters.set_roster("short", students=["ana", "bob", "cat"])
    # The lab's new size was written, then the process died before making the machines.
    await Deployment.get_pymongo_collection().update_one(
        {"name": "short"}, {"$set": {"replicas": 3}, "$inc": {"version": 1, "generation": 1}})
    await janitor(services, "replica-a", Clock()).run_once()
    machines = await services.machines.list_machines(deployment="short")
    assert [(m.name, m.host, m.student) for m in machines] == [
        ("short-1", "kvm1", "ana"), ("short-2", "kvm1", "bob"), ("short-3", "kvm1", "cat")]


async def test_a_periodic_job_outlives_a_failed_turn_and_hands_its_lease_over(services: Services) -> None:
    import asyncio

    from kubekvm.lease import Periodic

    turns: list[bool] = []

    async def turn(held: bool) -> None:
        turns.append(held)
        if len(turns) == 1:
            raise RuntimeError("a bug in the first turn")

    job = Periodic(lease=lease("replica-a", Clock()), interval_seconds=0.01, turn=turn)
    job.start()
    deadline = asyncio.get_running_loop().time() + 10
    while len(turns) < 3:
        assert asyncio.get_running_loop().time() < deadline, "the job stopped after its failed turn"
        await asyncio.sleep(0.01)
    assert all(turns)
    assert await lease("replica-b", Clock()).current_holder() == "replica-a"
    await job.stop()
    assert await lease("replica-b", Clock()).current_holder() is None
    assert await lease("replica-b", Clock()).acquire() is True
