"""The check: stopping what a lab's limits say must stop.

`check_lab`, run by `kubekvm.usage_check` on the one replica holding its lease, stops machines
that are idle or have run too long (`kubekvm.idle`), or are run by a student whose hours are
spent outside a scheduled slot (`kubekvm.usage`, balances from `kubekvm.services.usage`). A
stop is a conditional write (only a machine still meant to run), noted in the lab's events and
audited under the platform's own actor; the reason stays on the machine (`stop_reason`) until
it is started again, and pages turn it into words (`usage.describe_stop`).
"""

from __future__ import annotations

from datetime import datetime

from kubekvm import idle, usage
from kubekvm.access.actors import system
from kubekvm.models import ConsoleSession, Deployment, DesiredState, Machine, Phase, StopReason, utcnow
from kubekvm.services import audit
from kubekvm.services.context import Noun
from kubekvm.services.usage import activity, idle_policy, stop_text

# The audit log's name for the platform when it stops a machine on these rules.
ACTOR = system("usage")
# Labs with any limit on: the check reads only these.
LIMITED = {"$or": [{"policy.idle_minutes": {"$ne": None}}, {"policy.max_run_minutes": {"$ne": None}},
                   {"policy.quota_hours": {"$ne": None}}]}


class AutoStops(Noun):
    """The machines the platform stops on a lab's limits."""

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
            overlap = await self.core.usage.slot_overlap(lab)
            inside = usage.in_slot(overlap, now)
            # Only the students whose machines run now: a course's history is read for them alone.
            students = sorted({m.student for m in running if m.student})
            spent = {found.student for found in await self.core.usage.balances(lab, now=now, students=students)
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
