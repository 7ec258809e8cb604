"""Outbox: what the agent still has to tell the server, kept while the server is away.

The reconciler reports into the outbox and never waits for the network; the client drains
it whenever it is connected, taking the reports out in batches (oldest first) that go to the
server as one ``reportMachineStates`` each. Only the latest report per machine is kept (the server wants
the current state, not the history) and likewise only the latest orphan list, so the outbox
stays as small as the host's machine count however long the server is unreachable.
"""

from __future__ import annotations

import asyncio

from agent import metrics
from agent.machine_state import ObservedState, StateReport

__all__ = ["Outbox", "StateReport"]


class Outbox:
    def __init__(self) -> None:
        self._states: dict[str, StateReport] = {}
        self._orphans: list[str] | None = None
        self._ready = asyncio.Event()
        # Read at each scrape (one outbox per agent process).
        metrics.OUTBOX_DEPTH.set_function(lambda: len(self))

    async def machine_state(self, report: StateReport) -> None:
        """The reconciler's ``report`` callback."""
        self.put(report)

    def put_state(self, machine_id: str, state: ObservedState, message: str | None) -> None:
        self.put(StateReport(machine_id, state, message))

    def put(self, report: StateReport) -> None:
        self._states.pop(report.machine_id, None)  # re-insert: oldest news goes out first
        self._states[report.machine_id] = report
        self._ready.set()

    async def orphans(self, names: list[str]) -> None:
        """The reconciler's ``report_orphans`` callback."""
        self._orphans = list(names)
        self._ready.set()

    def __len__(self) -> int:
        return len(self._states) + (self._orphans is not None)

    async def wait(self) -> None:
        """Returns once there is something to send."""
        while not len(self):
            self._ready.clear()
            await self._ready.wait()

    def take_states(self, limit: int) -> list[StateReport]:
        """The oldest ``limit`` reports (one per machine), taken out to be sent together."""
        taken = []
        for machine_id in list(self._states)[:limit]:
            taken.append(self._states.pop(machine_id))
        return taken

    def return_states(self, reports: list[StateReport]) -> None:
        """Puts back reports that could not be sent, ahead of the others and in their order,
        except those of machines with a newer report meanwhile."""
        back = {report.machine_id: report for report in reports if report.machine_id not in self._states}
        if back:
            self._states = {**back, **self._states}
            self._ready.set()

    def take_orphans(self) -> list[str] | None:
        orphans, self._orphans = self._orphans, None
        return orphans

    def return_orphans(self, names: list[str]) -> None:
        if self._orphans is None:
            self._orphans = names
            self._ready.set()
