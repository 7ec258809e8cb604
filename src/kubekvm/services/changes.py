"""Live changes as a caller may see them: `kubekvm.streams.lab_changes` (every change of labs,
machines and hosts, from the event feed), less what the caller may not see — the GraphQL
`deploymentEvents` subscription and the pages' live updates (`kubekvm.live`) both read it here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from kubekvm import access
from kubekvm.database import uninterrupted
from kubekvm.errors import NotFound, Unauthenticated
from kubekvm.services.rules import LAB_SEEN, SIGNED_IN, Operations, stream
from kubekvm.streams import LabChange, LabChangeKind, lab_changes

# How often an open stream re-checks that the session it was opened with still exists.
SESSION_RECHECK_SECONDS = 5.0


class ChangeOperations(Operations):
    # A lab that the caller may not see gives nothing, as one that does not exist; the GraphQL
    # subscription reads a named lab first (`get_deployment`), so its refusals are LAB_SEEN's.
    @stream(SIGNED_IN, field="deploymentEvents", outcomes=LAB_SEEN.outcomes)
    async def lab_changes(self, *, lab: str | None = None, include_hosts: bool = False,
                          subscribed: asyncio.Event | None = None) -> AsyncIterator[LabChange]:
        visible: dict[str, bool] = {}
        checked = time.monotonic()
        async for change in lab_changes(feed=self.services.feed, lab=lab, include_hosts=include_hosts,
                                        subscribed=subscribed):
            # A cookie's session may end while the stream is open: it is checked again before a
            # change is passed on, at most every few seconds (the stream ends when it is gone).
            if time.monotonic() - checked >= SESSION_RECHECK_SECONDS:
                if not await self.still_signed_in():
                    raise Unauthenticated("Your session has ended: sign in again.")
                checked = time.monotonic()
            if await self._sees(change, visible):
                yield change

    async def _sees(self, change: LabChange, visible: dict[str, bool]) -> bool:
        if change.kind == LabChangeKind.RESYNC:
            visible.clear()  # who sees what may have changed in the gap too
            return True
        if self.actor.is_admin:
            return True
        if change.kind == LabChangeKind.HOST_CHANGED:
            return self.actor.is_teacher
        if change.deployment is not None:
            visible[change.lab] = access.can_view_lab(self.actor, change.deployment)
        elif change.lab not in visible:
            try:
                lab = await uninterrupted(self.services.labs.get_deployment(change.lab))
                visible[change.lab] = access.can_view_lab(self.actor, lab)
            except NotFound:
                visible[change.lab] = False
        if not visible[change.lab]:
            return False
        if self.actor.is_student and change.kind in (LabChangeKind.MACHINE_CHANGED, LabChangeKind.MACHINE_REMOVED):
            return change.machine is not None and change.machine.student == self.actor.name
        return True
