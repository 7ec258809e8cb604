"""The usage check: every interval, on exactly one server replica (the holder of the
`usage-check` lease, `kubekvm.lease`), stop the machines their lab's limits say must stop —
idle, running too long, or run by a student whose hours outside scheduled slots are spent.

What to stop is decided by the plain rules (`kubekvm.idle`, `kubekvm.usage`), and the stop is
made by the service layer (`kubekvm.services.auto_stops.AutoStops.check_lab`), conditional on the
machine still being meant to run: a replica that lost the lease mid-turn and the new holder
acting on the same machine stop it once. Only labs with a limit on are read.
`KUBEKVM_USAGE_CHECK_INTERVAL` sets the interval (0 turns the check off); the lease lasts three
intervals, so a replica that dies hands the job over within that.
"""

from __future__ import annotations

import logging
from datetime import datetime

from kubekvm.domain import StopReason
from kubekvm.errors import KubeKVMError
from kubekvm.lease import Clock, Lease, Periodic
from kubekvm.models import utcnow
from kubekvm.services import Services

log = logging.getLogger(__name__)

LEASE_NAME = "usage-check"


class UsageCheck:
    def __init__(self, *, services: Services, lease: Lease, interval_seconds: float, clock: Clock = utcnow) -> None:
        self.services = services
        self.clock = clock
        self.periodic = Periodic(lease=lease, interval_seconds=interval_seconds, turn=self._turn)
        self._last: list[tuple[str, StopReason]] | None = None

    def start(self) -> None:
        self.periodic.start()

    async def stop(self) -> None:
        await self.periodic.stop()

    async def run_once(self) -> list[tuple[str, StopReason]] | None:
        """One turn: None if another replica holds the lease, else the machines stopped."""
        held = await self.periodic.run_once()
        return self._last if held else None

    async def _turn(self, held: bool) -> None:
        self._last = None
        if not held:
            return
        now: datetime = self.clock()
        stopped: list[tuple[str, StopReason]] = []
        for name in sorted(await self.services.auto_stops.limited_labs()):
            try:
                stopped += await self.services.auto_stops.check_lab(name, now=now)
            except KubeKVMError as error:  # gone meanwhile, or too busy now: next turn
                log.debug("usage check: lab %s skipped: %s", name, error.message)
        for machine, reason in stopped:
            log.info("usage check: stopped %s (%s)", machine, reason.value)
        self._last = stopped
