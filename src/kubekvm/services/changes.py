"""Live changes as a caller may see them: `kubekvm.streams.lab_changes` (every change of labs and
machines, from the event feed), less what the caller may not see — the GraphQL
`deploymentEvents` subscription and the pages' live updates (`kubekvm.live`) both read it here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from kubekvm.access.objects import can_view_lab
from kubekvm.database import uninterrupted
from kubekvm.errors import NotFound, Unauthenticated
from kubekvm.models import Machine
from kubekvm.services.labs import lab_filter
from kubekvm.services.machines import machine_scope
from kubekvm.services.rulebook import LAB_SEEN, SIGNED_IN
from kubekvm.services.rules import Operations, stream
from kubekvm.streams import LabChange, LabChangeKind, lab_changes

# How often an open stream re-checks that the session it was opened with still exists.
SESSION_RECHECK_SECONDS = 5.0
# Labs read at once for a subscriber's current state.
SNAPSHOT_PAGE = 200


class ChangeOperations(Operations):
    # A lab that the caller may not see gives nothing, as one that does not exist; the GraphQL
    # subscription reads a named lab first (`get_deployment`), so its refusals are LAB_SEEN's.
    # `current`: start with the current state (SNAPSHOT events and SYNCED), or resume after
    # `cursor` (`kubekvm.streams.lab_changes`).
    @stream(SIGNED_IN, field="deploymentEvents", outcomes=LAB_SEEN.outcomes)
    async def lab_changes(self, *, lab: str | None = None,
                          subscribed: asyncio.Event | None = None, current: bool = False,
                          cursor: str | None = None) -> AsyncIterator[LabChange]:
        visible: dict[str, bool] = {}
        checked = time.monotonic()

        reads = self.services.shared_reads
        # Callers who see the same labs and machines share one read of them.
        seeing = json.dumps([lab_filter(self.actor), machine_scope(self.actor)], sort_keys=True, default=str)

        async def now(ticket: int) -> list[LabChange]:
            return await reads.read(("current_state", lab, seeing), lambda: self._current_state(lab),
                                    after=ticket)

        async for change in lab_changes(feed=self.services.feed, lab=lab,
                                        subscribed=subscribed, current=now if current else None,
                                        cursor=cursor, reads=reads):
            # A cookie's session may end while the stream is open: it is checked again before a
            # change is passed on, at most every few seconds (the stream ends when it is gone).
            if time.monotonic() - checked >= SESSION_RECHECK_SECONDS:
                if not await self.still_signed_in():
                    raise Unauthenticated("Your session has ended: sign in again.")
                checked = time.monotonic()
            if await self._sees(change, visible):
                yield change

    async def _current_state(self, lab: str | None) -> list[LabChange]:
        """Each lab the caller sees (or the one named, if they see it) with its machines as they
        may see them: one SNAPSHOT event per lab, read a page of labs at a time."""
        scope = lab_filter(self.actor)
        only: dict[str, Any] = {"name": lab} if lab is not None else {}
        events: list[LabChange] = []
        offset = 0
        while True:
            page = await self.services.labs.list_deployments(
                only={"$and": [only, scope]} if scope else only, offset=offset, limit=SNAPSHOT_PAGE)
            machines: dict[str, list[Machine]] = {d.name: [] for d in page.items}
            if page.items:
                for machine in await self.services.machines.list_machines(
                        deployment=list(machines), **machine_scope(self.actor)):
                    machines[machine.deployment].append(machine)
            events += [LabChange(LabChangeKind.SNAPSHOT, d.name, deployment=d, machines=machines[d.name])
                       for d in page.items]
            offset += len(page.items)
            if len(page.items) < SNAPSHOT_PAGE:
                return events

    async def _sees(self, change: LabChange, visible: dict[str, bool]) -> bool:
        if change.kind == LabChangeKind.RESYNC:
            visible.clear()  # who sees what may have changed in the gap too
            return True
        if change.kind in (LabChangeKind.SNAPSHOT, LabChangeKind.SYNCED):
            return True  # read as the caller sees it (`_current_state`)
        if self.actor.is_admin:
            return True
        if change.deployment is not None:
            visible[change.lab] = can_view_lab(self.actor, change.deployment)
        elif change.lab not in visible:
            try:
                lab = await uninterrupted(self.services.labs.get_deployment(change.lab))
                visible[change.lab] = can_view_lab(self.actor, lab)
            except NotFound:
                visible[change.lab] = False
        if not visible[change.lab]:
            return False
        if self.actor.is_student and change.kind in (LabChangeKind.MACHINE_CHANGED, LabChangeKind.MACHINE_REMOVED):
            return change.machine is not None and change.machine.student == self.actor.name
        return True
