"""Usage: a lab's limits on running (idle shutdown, maximum run, hours per student), the running
time hosts observe, teachers' grants of more hours, and the machines stopped for them.

- **Observed running time.** Every state report passes through `observe`: the report that a
  machine runs opens a span (`Machine.running_since`, set only if unset: a repeated report
  changes nothing), the report that it no longer runs closes it into a `UsageInterval` (keyed by
  machine and start, so a retried close writes it once) and then clears the span (conditional on
  its start, so two replicas closing the same span record one interval). The guest CPU samples
  hosts send with their reports are folded into `Machine.cpu` (`kubekvm.idle`) when the lab's
  idle shutdown is on (off, a sample costs no write).
- **The check** (`check_lab`, run by `kubekvm.usage_check` on the one replica holding its
  lease) stops what the rules say must stop: idle or too long running (`kubekvm.idle`), or run by
  a student whose hours are spent outside a scheduled slot (`kubekvm.usage`). A stop is a
  conditional write (only a machine still meant to run), noted in the lab's events and audited
  under the platform's own actor; the reason stays on the machine (`stop_reason`) until it is
  started again, and pages turn it into words (`usage.describe_stop`).
- **Starting** outside a slot with the hours spent is refused (`QuotaSpent`) until the lab's
  teacher grants more (`grant_hours`, audited).

The timetable (which moments are inside a scheduled slot, `kubekvm.timetable`) is asked through
`slot_overlap`; a lab without one has no slots.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kubekvm import idle, usage, validation
from kubekvm.access.actors import system
from kubekvm.errors import Conflict, QuotaSpent, ValidationFailed
from kubekvm.models import (
    ConsoleSession,
    CpuSample,
    Deployment,
    DesiredState,
    Machine,
    ObservedState,
    Phase,
    StopReason,
    UsageGrant,
    UsageInterval,
    UsagePolicy,
    utcnow,
)
from kubekvm.services import audit
from kubekvm.services.context import Noun
from kubekvm.services.convergence import LabUpdate
from kubekvm.services.rulebook import LAB_MANAGED, LAB_SEEN
from kubekvm.services.rules import Operations, named, operation

if TYPE_CHECKING:
    from kubekvm.services import Services

# How long a replica believes a lab's idle threshold (`Usage.idle_threshold`).
THRESHOLD_CACHE_SECONDS = 10.0
# The audit log's name for the platform when it stops a machine on these rules.
ACTOR = system("usage")
# Labs with any limit on: the check reads only these.
LIMITED = {"$or": [{"policy.idle_minutes": {"$ne": None}}, {"policy.max_run_minutes": {"$ne": None}},
                   {"policy.quota_hours": {"$ne": None}}]}


@dataclass(frozen=True, kw_only=True)
class StudentUsage:
    """One student's hours in one lab."""

    student: str
    machine: str | None
    balance: usage.Balance


def idle_policy(policy: UsagePolicy) -> idle.IdlePolicy:
    return idle.IdlePolicy(
        idle_seconds=None if policy.idle_minutes is None else policy.idle_minutes * 60.0,
        cpu_percent=policy.idle_cpu_percent,
        max_run_seconds=None if policy.max_run_minutes is None else policy.max_run_minutes * 60.0)


def activity(sample: CpuSample | None) -> idle.CpuActivity | None:
    if sample is None:
        return None
    return idle.CpuActivity(cpu_seconds=sample.cpu_seconds, sampled_at=sample.sampled_at,
                            load_percent=sample.load_percent, quiet_since=sample.quiet_since)


def stop_text(machine: Machine, lab: Deployment | None) -> str:
    """Why the platform stopped `machine`, in words ("" if it did not)."""
    if machine.stop_reason is None:
        return ""
    return usage.describe_stop(machine.stop_reason, policy=idle_policy(lab.policy) if lab is not None else None)


class Usage(Noun):
    """Limits, observed running time and grants, unchecked (callers use `UsageOperations`)."""

    def __init__(self, core: Services) -> None:
        super().__init__(core)
        # lab -> (its idle CPU threshold, None: idle shutdown off; until when this is believed).
        self._thresholds: dict[str, tuple[float | None, float]] = {}

    async def idle_threshold(self, lab: str) -> float | None:
        """The lab's idle CPU threshold, None when its idle shutdown is off. Every running
        machine's CPU sample asks this; each replica keeps the answer for
        `THRESHOLD_CACHE_SECONDS` (a changed setting reaches other replicas' samples that late)."""
        clock = time.monotonic()
        known = self._thresholds.get(lab)
        if known is not None and known[1] > clock:
            return known[0]
        found = await Deployment.get_pymongo_collection().find_one({"name": lab}, {"policy": 1})
        policy = UsagePolicy.model_validate((found or {}).get("policy") or {})
        threshold = policy.idle_cpu_percent if policy.idle_minutes is not None else None
        if len(self._thresholds) > 10_000:
            self._thresholds.clear()
        self._thresholds[lab] = (threshold, clock + THRESHOLD_CACHE_SECONDS)
        return threshold

    async def slot_overlap(self, lab: Deployment) -> usage.SlotOverlap:
        """Seconds of a span inside the lab's scheduled slots (`kubekvm.usage.SlotOverlap`), from
        its timetable (`kubekvm.services.timetables`); a lab without one has no slots."""
        record = await self.core.timetables.stored(lab.name)
        return usage.no_slots if record is None else usage.slot_overlap(record.rule())

    # ------------------------------------------------------------ observed running

    async def observe(self, machine: Machine, *, state: ObservedState, cpu_seconds: float | None,
                      now: datetime | None = None) -> None:
        """Account a host's report of `machine` (updates `machine` in place)."""
        now = now or utcnow()
        collection = Machine.get_pymongo_collection()
        if state != ObservedState.RUNNING:
            if machine.running_since is not None:
                await self.close_span(machine, end=now)
            return
        if machine.running_since is None:
            opened = await collection.update_one({"_id": machine.id, "running_since": None},
                                                 {"$set": {"running_since": now, "cpu": None}})
            if opened.modified_count:
                machine.running_since, machine.cpu = now, None
        if cpu_seconds is None:
            return
        if isinstance(cpu_seconds, bool) or not 0 <= cpu_seconds < 1e15:
            raise ValidationFailed("cpuSeconds", "The guest CPU time is a number of seconds, at least 0.")
        threshold = await self.idle_threshold(machine.deployment)
        if threshold is None:
            return  # idle shutdown is off: the sample costs no write (the count starts when it is on)
        folded = idle.next_activity(activity(machine.cpu), cpu_seconds=float(cpu_seconds), at=now,
                                    vcpus=machine.spec.vcpus, threshold_percent=threshold)
        sample = CpuSample(cpu_seconds=folded.cpu_seconds, sampled_at=folded.sampled_at,
                           load_percent=folded.load_percent, quiet_since=folded.quiet_since)
        await collection.update_one({"_id": machine.id, "running_since": {"$ne": None}},
                                    {"$set": {"cpu": sample.model_dump()}})
        machine.cpu = sample

    async def close_span(self, machine: Machine, *, end: datetime) -> None:
        start = machine.running_since
        assert start is not None
        await UsageInterval.get_pymongo_collection().update_one(
            {"machine": machine.name, "start": start},
            {"$set": {"end": end}, "$setOnInsert": {"deployment": machine.deployment, "student": machine.student}},
            upsert=True)
        await Machine.get_pymongo_collection().update_one(
            {"_id": machine.id, "running_since": start}, {"$set": {"running_since": None, "cpu": None}})
        machine.running_since, machine.cpu = None, None

    # ------------------------------------------------------------ balances

    async def balances(self, lab: Deployment, *, now: datetime | None = None,
                       students: Sequence[str] | None = None) -> list[StudentUsage]:
        """Each student's hours in `lab` (only `students`, when given), by name: those on its
        roster and those holding one of its machines."""
        now = now or utcnow()
        overlap = await self.slot_overlap(lab)
        machines = await Machine.find(Machine.deployment == lab.name, Machine.retired == False).to_list()  # noqa: E712
        holder = {m.student: m.name for m in machines if m.student}
        names = sorted(set(lab.roster) | set(holder))
        if students is not None:
            names = [name for name in names if name in students]
        spans: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
        query: dict[str, Any] = {"deployment": lab.name, "student": {"$in": names}}
        async for row in UsageInterval.get_pymongo_collection().find(query, {"student": 1, "start": 1, "end": 1}):
            spans[row["student"]].append((row["start"], row["end"]))
        for m in machines:
            if m.student and m.running_since is not None:
                spans[m.student].append((m.running_since, now))
        granted = {row["student"]: float(row.get("hours", 0.0))
                   async for row in UsageGrant.get_pymongo_collection().find(query, {"student": 1, "hours": 1})}
        return [StudentUsage(student=name, machine=holder.get(name), balance=usage.Balance(
            budget_hours=lab.policy.quota_hours, granted_hours=granted.get(name, 0.0),
            used_seconds=usage.counted_seconds(spans[name], overlap=overlap))) for name in names]

    async def check_start(self, machine: Machine) -> None:
        """QuotaSpent if `machine`'s student has spent their hours and no slot is on now."""
        if machine.student is None:
            return
        lab = await self.core.labs.get_deployment(machine.deployment)
        if lab.policy.quota_hours is None:
            return
        now = utcnow()
        found = await self.balances(lab, now=now, students=[machine.student])
        if not found:
            return
        refused = usage.start_refusal(found[0].balance, student=machine.student,
                                      inside_slot=usage.in_slot(await self.slot_overlap(lab), now))
        if refused:
            raise QuotaSpent(f"Cannot start {machine.name}: {refused}.")

    # ------------------------------------------------------------ settings and grants

    async def set_policy(self, name: str, *, idle_minutes: float | None, idle_cpu_percent: float | None,
                         max_run_minutes: float | None, quota_hours: float | None) -> Deployment:
        checks = validation.Checks()  # every bad limit refused at once
        idle_after = checks(lambda: usage.amount(idle_minutes, field="idleMinutes", label="The idle time",
                                                 maximum=usage.MAX_MINUTES))
        cpu = checks(lambda: usage.amount(idle_cpu_percent, field="idleCpuPercent", label="The CPU threshold",
                                          maximum=100.0))
        longest = checks(lambda: usage.amount(max_run_minutes, field="maxRunMinutes", label="The longest run",
                                              maximum=usage.MAX_MINUTES))
        hours = checks(lambda: usage.amount(quota_hours, field="quotaHours", label="The hours per student",
                                            maximum=usage.MAX_HOURS, exclusive_minimum=False))
        checks.done()
        policy = UsagePolicy(idle_minutes=idle_after, idle_cpu_percent=cpu or idle.DEFAULT_IDLE_CPU_PERCENT,
                             max_run_minutes=longest, quota_hours=hours)

        def change(lab: Deployment) -> LabUpdate | None:
            if lab.phase == Phase.DELETING:
                raise Conflict(f"Lab {name!r} is being deleted.")
            if lab.policy == policy:
                return None
            return {"$set": {"policy": policy.model_dump(), "updated_at": utcnow()}}

        _, written = await self.core.convergence.change_lab(name, change)
        self._thresholds.pop(name, None)
        if written:
            await self.ctx.note(name, f"usage limits: {describe_policy(policy)}")
        return await self.core.convergence.refresh_phase(name, always_publish=written)

    async def grant_hours(self, name: str, *, student: str, hours: float) -> StudentUsage:
        lab = await self.core.labs.get_deployment(name)
        amount = usage.amount(hours, field="hours", label="The hours granted", maximum=usage.MAX_HOURS)
        assert amount is not None
        if not [s for s in await self.balances(lab, students=[student])]:
            raise ValidationFailed("student", f"{student!r} is not a student of lab {name!r}.")
        await UsageGrant.get_pymongo_collection().update_one(
            {"deployment": name, "student": student},
            {"$inc": {"hours": amount}, "$set": {"updated_at": utcnow()}}, upsert=True)
        # The stop for spent hours no longer holds: its words must not stay on the machine.
        query = {"deployment": name, "student": student, "stop_reason": StopReason.QUOTA.value}
        if (await Machine.get_pymongo_collection().update_many(query, {"$set": {"stop_reason": None}})).modified_count:
            await self.ctx.publish_machines({"deployment": name, "student": student})
        await self.ctx.note(name, f"{amount:g} more hour(s) granted to {student}")
        return (await self.balances(lab, students=[student]))[0]

    # ------------------------------------------------------------ the check

    async def check_lab(self, name: str, *, now: datetime | None = None) -> list[tuple[str, StopReason]]:
        """Stop the lab's machines its limits say must stop now; what was stopped, and why."""
        now = now or utcnow()
        lab = await self.core.labs.get_deployment(name)
        policy = idle_policy(lab.policy)
        if lab.phase == Phase.DELETING or (not policy.active and lab.policy.quota_hours is None):
            return []
        running = await Machine.find({"deployment": name, "retired": False, "running_since": {"$ne": None},
                                      "desired": DesiredState.RUNNING.value}).to_list()
        if not running:
            return []
        # A console open now keeps its machine awake; one whose replica died without closing it
        # counts as closed when its lease ran out.
        open_consoles: set[str] = set()
        lapsed: dict[str, datetime] = {}
        async for row in ConsoleSession.get_pymongo_collection().find({"deployment": name},
                                                                      {"machine": 1, "lease_until": 1}):
            if row["lease_until"] > now:
                open_consoles.add(row["machine"])
            else:
                lapsed[row["machine"]] = max(row["lease_until"], lapsed.get(row["machine"], row["lease_until"]))
        spent: set[str] = set()
        if lab.policy.quota_hours is not None:
            overlap = await self.slot_overlap(lab)
            inside = usage.in_slot(overlap, now)
            # Only the students whose machines run now: a course's history is read for them alone.
            students = sorted({m.student for m in running if m.student})
            spent = {found.student for found in await self.balances(lab, now=now, students=students)
                     if usage.quota_stop(found.balance, running=True, inside_slot=inside)} if students else set()
        stopped: list[tuple[str, StopReason]] = []
        for machine in running:
            reason = idle.idle_stop(policy, now=now, running_since=machine.running_since,
                                    activity=activity(machine.cpu), console_open=machine.name in open_consoles,
                                    console_closed_at=_latest(machine.console_closed_at, lapsed.get(machine.name)))
            if reason is None and machine.student in spent:
                reason = StopReason.QUOTA
            if reason is not None and await self.stop_for(machine, reason, lab=lab):
                stopped.append((machine.name, reason))
        if stopped:
            await self.core.convergence.refresh_phase(name)
        return stopped

    async def stop_for(self, machine: Machine, reason: StopReason, *, lab: Deployment) -> bool:
        """Stop `machine` for `reason`, if it is still meant to run; whether it was stopped."""
        result = await Machine.get_pymongo_collection().update_one(
            {"_id": machine.id, "retired": False, "desired": DesiredState.RUNNING.value},
            {"$set": {"desired": DesiredState.STOPPED.value, "stop_reason": reason.value, "updated_at": utcnow(),
                      "since": utcnow()},
             "$inc": {"power_generation": 1}})
        if not result.modified_count:
            return False  # stopped, removed or started anew meanwhile: nothing to do
        machine.stop_reason = reason
        text = stop_text(machine, lab)
        await self.ctx.note(machine.deployment, f"{machine.name} stopped: {text}", machine=machine.name)
        await audit.record(ACTOR, action="autoStopMachine", target=f"machine:{machine.name}",
                           message=f"{reason.value}: {text}")
        await self.ctx.publish_machines({"_id": machine.id})
        return True

    async def limited_labs(self) -> list[str]:
        return [str(row["name"]) async for row in Deployment.get_pymongo_collection().find(LIMITED, {"name": 1})]


def _latest(*moments: datetime | None) -> datetime | None:
    return max((m for m in moments if m is not None), default=None)


def describe_policy(policy: UsagePolicy) -> str:
    parts = []
    if policy.idle_minutes is not None:
        parts.append(f"stop after {policy.idle_minutes:g} min idle (CPU under {policy.idle_cpu_percent:g} %)")
    if policy.max_run_minutes is not None:
        parts.append(f"stop after {policy.max_run_minutes:g} min running")
    if policy.quota_hours is not None:
        parts.append(f"{policy.quota_hours:g} h per student outside scheduled hours")
    return "; ".join(parts) or "none"


class UsageOperations(Operations):
    """Usage as a caller may see and change it: the lab's owner and admins set its limits, see
    every student's hours and grant more; a student sees their own."""

    @operation(LAB_SEEN, field="labUsage")
    async def student_hours(self, name: str) -> list[StudentUsage]:
        lab = await self.services.labs.get_deployment(name)
        only = [self.actor.name] if self.actor.is_student else None
        return await self.services.usage.balances(lab, students=only)

    @operation(LAB_MANAGED, audit="setUsagePolicy", target=named("lab"))
    async def set_usage_policy(self, name: str, *, idle_minutes: float | None = None,
                               idle_cpu_percent: float | None = None, max_run_minutes: float | None = None,
                               quota_hours: float | None = None) -> Deployment:
        return await self.services.usage.set_policy(name, idle_minutes=idle_minutes, idle_cpu_percent=idle_cpu_percent,
                                                    max_run_minutes=max_run_minutes, quota_hours=quota_hours)

    @operation(LAB_MANAGED, audit="grantUsageHours", target=named("lab"),
               message=lambda args, actor: f"{args['hours']} h to {args['student']}")
    async def grant_usage_hours(self, name: str, *, student: str, hours: float) -> StudentUsage:
        return await self.services.usage.grant_hours(name, student=student, hours=hours)
