"""Observed running time: the spans hosts report their machines running, and the guest CPU samples
idle shutdown reads.

Every state report passes through `observe`: the report that a machine runs opens a span
(`Machine.running_since`, set only if unset: a repeated report changes nothing), the report that
it no longer runs closes it into a `UsageInterval` (keyed by machine and start, so a retried
close writes it once) and then clears the span (conditional on its start, so two replicas
closing the same span record one interval). The guest CPU samples hosts send with their reports
are folded into `Machine.cpu` (`kubekvm.idle`) when the lab's idle shutdown is on (off, a sample
costs no write). What the spans add up to is `kubekvm.services.usage`'s.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING

from kubekvm import idle
from kubekvm.errors import ValidationFailed
from kubekvm.models import CpuSample, Deployment, Machine, ObservedState, UsageInterval, UsagePolicy, utcnow
from kubekvm.services.context import Noun
from kubekvm.services.usage import activity

if TYPE_CHECKING:
    from kubekvm.services import Services

# How long a replica believes a lab's idle threshold (`RunningTime.idle_threshold`).
THRESHOLD_CACHE_SECONDS = 10.0


class RunningTime(Noun):
    """The running spans and CPU samples of machines, as their hosts report them."""

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

    def forget_threshold(self, lab: str) -> None:
        """The lab's limits changed here: this replica's next sample reads them anew."""
        self._thresholds.pop(lab, None)

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
