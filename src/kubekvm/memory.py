"""Giving memory back to the system once a crowd of subscribers has left.

Hundreds of subscriptions (a class following its labs, a dashboard per student) take memory
while they are open: their websockets, their tasks, the results on their way out. When they
leave, Python frees those objects, but the C allocator keeps the freed pages of its heap for
later. After many subscribers have left (`Release.departed`, called by the event feed), one full
garbage collection and glibc's `malloc_trim` run a moment later (once, however many leave in
that moment), handing the free pages back. Where there is no glibc, it only collects.

What stays is Python's own small-object arenas that still hold one live object each: measured
with 300 subscribers (issue 14), the objects alive after they left were as many as before
they came, and the next crowd reused that memory (a second one of 300 added 3 MiB, not 25).
"""


from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# Leaving subscribers counted before memory is given back, and how long after the last of a
# wave leaves (a class closing its laptops is one wave, not hundreds of trims).
LEFT_BEFORE_RELEASE = 50
RELEASE_DELAY_SECONDS = 2.0


def _trim_function() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    function: Callable[[int], int] = trim
    return function


_malloc_trim = _trim_function()


class Release:
    """Counts departures; after `LEFT_BEFORE_RELEASE` of them (or when the last subscriber has
    gone), gives freed memory back once things are quiet for `RELEASE_DELAY_SECONDS`."""

    def __init__(self) -> None:
        self.left = 0
        self.releases = 0
        self._pending: asyncio.TimerHandle | None = None

    def departed(self, *, remaining: int) -> None:
        self.left += 1
        if self.left < LEFT_BEFORE_RELEASE and remaining > 0:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._pending is not None:
            self._pending.cancel()
        self._pending = loop.call_later(RELEASE_DELAY_SECONDS, self._release)

    def _release(self) -> None:
        self._pending = None
        if self.left == 0:
            return
        left, self.left = self.left, 0
        gc.collect()
        returned = _malloc_trim(0) if _malloc_trim is not None else 0
        self.releases += 1
        log.debug("%d subscriber(s) left: memory given back to the system (%s)", left,
                  "trimmed" if returned else "nothing to trim")
