"""Idle shutdown and usage quotas through the service layer, on a real MongoDB-compatible
server: running time from observed reports, the check stopping what the rules say (once, on one
replica), the reason kept and audited, a spent student refused until granted more. Time is
passed in; nothing waits."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kubekvm.errors import QuotaSpent, ValidationFailed
from kubekvm.lease import Lease
from kubekvm.models import (
    AuditEntry,
    ConsoleSession,
    DesiredState,
    LabEvent,
    Machine,
    ObservedState,
    StopReason,
    UsageInterval,
    utcnow,
)
from kubekvm.services import Services
from kubekvm.usage_check import LEASE_NAME, UsageCheck
from tests.db.test_consistency import replica
from tests.db.test_services import a_host

RUNNING, SHUTOFF = ObservedState.RUNNING, ObservedState.SHUTOFF


async def a_lab(services: Services, name: str = "usage") -> list[Machine]:
    await a_host(services)
    await services.labs.create_deployment(name=name, template="tiny-linux", replicas=2)
    await services.rosters.set_roster(name, students=["ana", "ben"], match_replicas=False)
    return await services.machines.list_machines(deployment=name)


async def fresh(name: str) -> Machine:
    machine = await Machine.find_one(Machine.name == name)
    assert machine is not None
    return machine


async def test_running_time_comes_from_observed_reports_and_is_recorded_once(services: Services) -> None:
    ana, _ = await a_lab(services)
    t0 = utcnow() - timedelta(hours=3)
    await services.running_time.observe(ana, state=RUNNING, cpu_seconds=None, now=t0)
    await services.running_time.observe(await fresh(ana.name), state=RUNNING, cpu_seconds=None, now=t0 + timedelta(hours=1))
    assert (await fresh(ana.name)).running_since == t0, "a repeated report does not restart the span"
    stale = await fresh(ana.name)
    await services.running_time.observe(stale, state=SHUTOFF, cpu_seconds=None, now=t0 + timedelta(hours=2))
    # The same close again (a retried report, another replica with the same read): one interval.
    await services.running_time.close_span(_with_start(stale, t0), end=t0 + timedelta(hours=2))
    intervals = await UsageInterval.find(UsageInterval.machine == ana.name).to_list()
    assert [(i.start, i.end, i.student) for i in intervals] == [(t0, t0 + timedelta(hours=2), "ana")]
    assert (await fresh(ana.name)).running_since is None
    lab = await services.labs.get_deployment("usage")
    used = {u.student: u.balance.used_hours for u in await services.usage.balances(lab)}
    assert used == {"ana": pytest.approx(2.0), "ben": 0.0}


def _with_start(machine: Machine, start: object) -> Machine:
    machine.running_since = start  # type: ignore[assignment]
    return machine


async def test_cpu_samples_from_reports_make_a_quiet_span(services: Services) -> None:
    ana, ben = await a_lab(services)
    await services.machines.report_machine_state(machine_id=str(ben.id), host="kvm1", state=RUNNING,
                                                 power_generation=ben.power_generation, cpu_seconds=1.0)
    assert (await fresh(ben.name)).cpu is None, "idle shutdown off: a sample writes nothing"
    await services.usage.set_policy("usage", idle_minutes=10, idle_cpu_percent=None, max_run_minutes=None,
                                    quota_hours=None)
    for cpu in (10.0, 10.0):  # no CPU used between the two reports
        await services.machines.report_machine_state(machine_id=str(ana.id), host="kvm1", state=RUNNING,
                                                     power_generation=ana.power_generation, cpu_seconds=cpu)
    machine = await fresh(ana.name)
    assert machine.running_since is not None and machine.cpu is not None
    assert machine.cpu.load_percent == 0 and machine.cpu.quiet_since is not None
    with pytest.raises(ValidationFailed):
        await services.machines.report_machine_state(machine_id=str(ana.id), host="kvm1", state=RUNNING,
                                                     cpu_seconds=-1.0)


async def test_the_check_stops_an_idle_machine_once_and_says_why(services: Services) -> None:
    ana, ben = await a_lab(services)
    await services.usage.set_policy("usage", idle_minutes=10, idle_cpu_percent=None, max_run_minutes=None,
                                    quota_hours=None)
    t0 = utcnow() - timedelta(hours=1)
    for machine in (ana, ben):
        for minute in range(0, 12):
            await services.running_time.observe(await fresh(machine.name), state=RUNNING, cpu_seconds=0.1 * minute,
                                         now=t0 + timedelta(minutes=minute))
    # Ben's console is open: his machine stays.
    await ConsoleSession(session="s-ben", machine=ben.name, machine_id=str(ben.id), deployment="usage", index=2,
                         host="kvm1", user="ben", replica="http://r", lease_until=utcnow() + timedelta(minutes=1)
                         ).insert()
    now = t0 + timedelta(minutes=12)
    assert await services.auto_stops.check_lab("usage", now=now) == [(ana.name, StopReason.IDLE)]
    assert await services.auto_stops.check_lab("usage", now=now) == [], "a stopped machine is not stopped again"
    stopped = await fresh(ana.name)
    assert (stopped.desired, stopped.stop_reason) == (DesiredState.STOPPED, StopReason.IDLE)
    assert stopped.power_generation == ana.power_generation + 1, "a new request the host acts on"
    assert (await fresh(ben.name)).desired == DesiredState.RUNNING
    events = [e.message for e in await LabEvent.find(LabEvent.machine == ana.name).to_list()]
    assert any("stopped: Stopped because it was idle for 10 minutes" in e for e in events), events
    entry = await AuditEntry.find_one(AuditEntry.action == "autoStopMachine")
    assert entry is not None and (entry.actor, entry.actor_kind, entry.target) == (
        "kubekvm:usage", "system", f"machine:{ana.name}")
    # Started again by its student: the reason goes.
    await services.machines.start_machine(ana.name)
    assert (await fresh(ana.name)).stop_reason is None


async def test_a_spent_student_is_stopped_refused_and_granted_more(services: Services) -> None:
    ana, ben = await a_lab(services)
    await services.usage.set_policy("usage", idle_minutes=None, idle_cpu_percent=None, max_run_minutes=None,
                                    quota_hours=1)
    t0 = utcnow() - timedelta(minutes=61)
    await services.running_time.observe(ana, state=RUNNING, cpu_seconds=None, now=t0)
    await services.running_time.observe(ben, state=RUNNING, cpu_seconds=None, now=t0 + timedelta(minutes=30))
    assert await services.auto_stops.check_lab("usage") == [(ana.name, StopReason.QUOTA)]
    await services.running_time.observe(await fresh(ana.name), state=SHUTOFF, cpu_seconds=None)
    with pytest.raises(QuotaSpent) as refused:
        await services.machines.start_machine(ana.name)
    assert "ana's 1 hour of use outside the lab's scheduled hours are spent" in refused.value.message
    assert (await fresh(ana.name)).desired == DesiredState.STOPPED, "a refused start writes nothing"
    granted = await services.usage.grant_hours("usage", student="ana", hours=0.5)
    assert granted.balance.remaining_hours == pytest.approx(0.5 - 1 / 60, abs=0.01)
    assert (await fresh(ana.name)).stop_reason is None, "the reason no longer holds once more is granted"
    await services.machines.start_machine(ana.name)
    with pytest.raises(ValidationFailed) as unknown:
        await services.usage.grant_hours("usage", student="nobody", hours=1)
    assert unknown.value.field == "student"


async def test_two_replicas_check_but_one_acts(services: Services) -> None:
    ana, _ = await a_lab(services)
    await services.usage.set_policy("usage", idle_minutes=None, idle_cpu_percent=None, max_run_minutes=30,
                                    quota_hours=None)
    await services.running_time.observe(ana, state=RUNNING, cpu_seconds=None, now=utcnow() - timedelta(hours=1))
    other = replica(services)
    collection = Machine.get_pymongo_collection().database["leases"]
    checks = [UsageCheck(services=s, interval_seconds=10,
                         lease=Lease(collection=collection, name=LEASE_NAME, ttl_seconds=30, holder=holder))
              for s, holder in ((services, "replica-a"), (other, "replica-b"))]
    first, second = [await check.run_once() for check in checks]
    assert first == [(ana.name, StopReason.MAX_RUNTIME)] and second is None
    assert await AuditEntry.find(AuditEntry.action == "autoStopMachine").count() == 1


async def test_a_machine_removed_while_running_keeps_its_students_time(services: Services) -> None:
    _, ben = await a_lab(services)
    start = utcnow() - timedelta(minutes=30)
    await services.running_time.observe(ben, state=RUNNING, cpu_seconds=None, now=start)
    await services.convergence.forget_machine(await fresh(ben.name))
    [interval] = await UsageInterval.find(UsageInterval.machine == ben.name).to_list()
    assert (interval.student, interval.start) == ("ben", start) and interval.end > start
