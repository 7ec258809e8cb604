"""Usage: a lab's limits on running (idle shutdown, maximum run, hours per student), each
student's hours, and teachers' grants of more hours.

- **Balances.** A student's hours in a lab are the running time hosts observed of their machines
  (`kubekvm.services.running_time`) outside the lab's scheduled slots, against the lab's hours
  per student and what the teacher granted (`kubekvm.usage`).
- **Starting** outside a slot with the hours spent is refused (`QuotaSpent`) until the lab's
  teacher grants more (`grant_hours`, audited).
- **Settings**: a lab's limits (`set_policy`), every bad limit refused at once.

What stops machines on these limits is `kubekvm.services.auto_stops`. The timetable (which
moments are inside a scheduled slot, `kubekvm.timetable`) is asked through `slot_overlap`; a
lab without one has no slots.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kubekvm import idle, usage, validation
from kubekvm.errors import Conflict, QuotaSpent, ValidationFailed
from kubekvm.models import (
    CpuSample,
    Deployment,
    Machine,
    Phase,
    StopReason,
    UsageGrant,
    UsageInterval,
    UsagePolicy,
    utcnow,
)
from kubekvm.services.context import Noun
from kubekvm.services.convergence import LabUpdate
from kubekvm.services.rulebook import LAB_MANAGED, LAB_SEEN
from kubekvm.services.rules import Operations, named, operation

if TYPE_CHECKING:
    pass

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
    """Limits, balances and grants, unchecked (callers use `UsageOperations`)."""

    async def slot_overlap(self, lab: Deployment) -> usage.SlotOverlap:
        """Seconds of a span inside the lab's scheduled slots (`kubekvm.usage.SlotOverlap`), from
        its timetable (`kubekvm.services.timetables`); a lab without one has no slots."""
        record = await self.core.timetables.stored(lab.name)
        return usage.no_slots if record is None else usage.slot_overlap(record.rule())

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
        self.core.running_time.forget_threshold(name)
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
