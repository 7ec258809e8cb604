"""The fleet at a glance, for admins: the Operations page, the `operationsOverview` query, and
the shared gauges of `/metrics` (`kubekvm.fleet_metrics`) read the same figures.

Two kinds of figure, and the page says which is which:
- the fleet's (every replica sees the same): hosts ready and unreachable, labs by phase,
  machines by state, and from the audit log of the last hour, sign-ins refused and operations
  that failed on the server's side (INTERNAL, UNAVAILABLE) on any replica;
- this replica's own: its event feed (mode, following or not, lag, restarts) and the failures
  it answered in the last hour (`kubekvm.metrics.recent_errors`).

Each fleet figure is one aggregation grouped by a bounded field, whatever the fleet's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from kubekvm import metrics
from kubekvm.models import AuditEntry, Deployment, Machine, utcnow
from kubekvm.services.hosts import HostStatus
from kubekvm.services.rulebook import ADMIN
from kubekvm.services.rules import Operations, operation

HOUR = timedelta(hours=1)
SERVER_FAULTS = ("INTERNAL", "UNAVAILABLE")


@dataclass(frozen=True, kw_only=True)
class Fleet:
    """What every replica reads alike from the database."""

    labs_by_phase: dict[str, int] = field(default_factory=dict)
    # (desired, observed) -> machines; machines on their way out included (desired "absent").
    machines_by_state: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Overview:
    replica: str
    hosts: list[HostStatus]
    fleet: Fleet
    feed_mode: str
    feed_healthy: bool
    feed_lag_seconds: float | None
    feed_restarts: int
    errors_last_hour_here: int
    failed_sign_ins_last_hour: int
    server_faults_last_hour: int

    @property
    def hosts_ready(self) -> int:
        return sum(1 for h in self.hosts if h.ready)

    @property
    def hosts_unreachable(self) -> int:
        return len(self.hosts) - self.hosts_ready

    @property
    def machines_by_observed(self) -> dict[str, int]:
        """Machines meant to exist, by what their hosts report."""
        counts: dict[str, int] = {}
        for (desired, observed), n in self.fleet.machines_by_state.items():
            if desired != "absent":
                counts[observed] = counts.get(observed, 0) + n
        return dict(sorted(counts.items()))


async def read_fleet() -> Fleet:
    labs: dict[str, int] = {}
    async for row in await Deployment.get_pymongo_collection().aggregate(
            [{"$group": {"_id": "$phase", "n": {"$sum": 1}}}]):
        labs[str(row["_id"])] = int(row["n"])
    machines: dict[tuple[str, str], int] = {}
    async for row in await Machine.get_pymongo_collection().aggregate([
            {"$match": {"retired": False}},
            {"$group": {"_id": {"desired": "$desired", "observed": "$observed"}, "n": {"$sum": 1}}}]):
        machines[(str(row["_id"].get("desired")), str(row["_id"].get("observed")))] = int(row["n"])
    return Fleet(labs_by_phase=dict(sorted(labs.items())), machines_by_state=machines)


class OverviewOperations(Operations):
    @operation(ADMIN, field="operationsOverview")
    async def overview(self) -> Overview:
        since = utcnow() - HOUR
        audit = AuditEntry.get_pymongo_collection()
        failed_sign_ins = await audit.count_documents({"at": {"$gte": since}, "action": "login",
                                                       "outcome": {"$ne": "ok"}})
        faults = await audit.count_documents({"at": {"$gte": since}, "outcome": {"$in": list(SERVER_FAULTS)}})
        feed = self.services.feed
        return Overview(
            replica=self.services.ctx.server_info().hostname, hosts=await self.services.hosts.list_hosts(),
            fleet=await read_fleet(), feed_mode=feed.mode, feed_healthy=feed.healthy,
            feed_lag_seconds=metrics.feed_lag(), feed_restarts=metrics.feed_restarts(),
            errors_last_hour_here=metrics.recent_errors(within=HOUR.total_seconds()),
            failed_sign_ins_last_hour=failed_sign_ins, server_faults_last_hour=faults)
