"""GraphQL of usage limits: a lab's limits (idle shutdown, longest run, hours per student),
every student's hours, and teachers' grants of more. Thin adapters over
`kubekvm.services.usage.UsageOperations`; `Query` and `Mutation` (`kubekvm.graphql.schema`)
take these fields in by inheriting the classes below."""

from __future__ import annotations

import strawberry

from kubekvm import models
from kubekvm.authorized import Authorized
from kubekvm.services.usage import StudentUsage

StopReason = strawberry.enum(models.StopReason, description=(
    "Why the platform stopped a machine: IDLE (no console, CPU under the lab's threshold), "
    "MAX_RUNTIME (ran the longest the lab allows), QUOTA (its student's hours are spent)."))


@strawberry.type(description="A lab's limits on its machines' running; null: off.")
class UsagePolicy:
    idle_minutes: float | None = strawberry.field(description=(
        "Stop a machine with no console open whose guest CPU stayed under `idleCpuPercent` this long."))
    idle_cpu_percent: float = strawberry.field(description="Load (% of its vCPUs) under which a guest is idle.")
    max_run_minutes: float | None = strawberry.field(description="Stop a machine that has run this long in one go.")
    quota_hours: float | None = strawberry.field(description=(
        "Hours each student may run their machine outside the lab's scheduled slots (plus grants)."))

    @classmethod
    def of(cls, p: models.UsagePolicy) -> UsagePolicy:
        return cls(idle_minutes=p.idle_minutes, idle_cpu_percent=p.idle_cpu_percent,
                   max_run_minutes=p.max_run_minutes, quota_hours=p.quota_hours)


@strawberry.input(description="A lab's limits; a field left out or null turns that limit off.")
class UsagePolicyInput:
    idle_minutes: float | None = None
    idle_cpu_percent: float | None = strawberry.field(default=None, description="Default 5.")
    max_run_minutes: float | None = None
    quota_hours: float | None = None


@strawberry.type(description="One student's hours of use in one lab (outside scheduled slots).")
class StudentUsageView:
    student: str
    machine: str | None
    used_hours: float
    granted_hours: float
    budget_hours: float | None = strawberry.field(description="The lab's quota; null: no quota.")
    remaining_hours: float | None = strawberry.field(description="Budget + granted - used; null: no quota.")

    @classmethod
    def of(cls, u: StudentUsage) -> StudentUsageView:
        b = u.balance
        return cls(student=u.student, machine=u.machine, used_hours=round(b.used_hours, 4),
                   granted_hours=b.granted_hours, budget_hours=b.budget_hours,
                   remaining_hours=None if b.remaining_hours is None else round(b.remaining_hours, 4))


def _services(info: strawberry.Info) -> Authorized:
    services: Authorized = info.context["services"]
    return services


@strawberry.type
class UsageQuery:
    @strawberry.field(description="The students' hours in a lab: every student's for its teacher, "
                                  "one's own for a student.")
    async def lab_usage(self, info: strawberry.Info, name: str) -> list[StudentUsageView]:
        return [StudentUsageView.of(u) for u in await _services(info).student_hours(name)]


@strawberry.type
class UsageMutation:
    @strawberry.mutation(description="Set a lab's limits on running (all of them: one left out is off).")
    async def set_usage_policy(self, info: strawberry.Info, name: str, input: UsagePolicyInput) -> UsagePolicy:
        lab = await _services(info).set_usage_policy(
            name, idle_minutes=input.idle_minutes, idle_cpu_percent=input.idle_cpu_percent,
            max_run_minutes=input.max_run_minutes, quota_hours=input.quota_hours)
        return UsagePolicy.of(lab.policy)

    @strawberry.mutation(description="Give a student of the lab more hours beyond its quota.")
    async def grant_usage_hours(self, info: strawberry.Info, name: str, student: str,
                                hours: float) -> StudentUsageView:
        return StudentUsageView.of(await _services(info).grant_usage_hours(name, student=student, hours=hours))
