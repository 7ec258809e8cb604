"""Reads shared by the callers that ask the same question at about the same time.

Thousands of subscribers may arrive at once (a class opening its pages, a benchmark's ramp, every
client reconnecting after a replica restarts), and each one's start reads the same things: which
lab every id belongs to, the lab's current state as that kind of caller sees it. Every change
that reaches them re-checks, every few seconds, that their account is still what it was. Made
one per subscriber, those reads are thousands of identical queries in the same instant: the
database client's pool queues them, and a write waiting behind them times out (5,000
subscribers made the embedded database answer `UNAVAILABLE`).

`SharedReads.read(key, read, ...)` runs `read` once for every caller with the same `key` whose
freshness it satisfies, and hands each the same result:

- `after` (a `ticket()` taken by the caller): only a read that *started* after the ticket is
  joined. A subscriber takes its ticket once its feed subscription is in place, so the result
  it gets is at least as new as the moment it started to hear changes (what a read of its own
  would have given; nothing between the two is missed).
- `joining()`: a block in which the reads of a record that offer it (`offered`: a lab by
  name) are shared that way, after the ticket the block took (a subscription's checks of the
  lab it names, made by every subscriber of a class as it arrives).
- `max_age`: a read that started at most this many seconds ago is joined, in flight or
  finished (the re-checks of long-lived connections, which are only asked to be that fresh).

A read that fails is not kept (every caller waiting on it gets the error; the next one reads
afresh), one caller leaving (its task cancelled) does not cancel the read the others wait on,
and a finished read is kept `keep` seconds (at most the latest `size` keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# Set inside `SharedReads.joining()`: which reads a `offered` read may be shared through, and after which ticket.
_joining: ContextVar[tuple[SharedReads, int] | None] = ContextVar("kubekvm_shared_reads_joining", default=None)


async def offered(key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
    """`read()`, shared with the callers that ask the same inside a `SharedReads.joining()` block
    (each read started after the block began); run alone anywhere else (a read that must see the
    caller's own writes, or whose result the caller changes, is never inside such a block)."""
    current = _joining.get()
    if current is None:
        return await read()
    reads, ticket = current
    return await reads.read(key, read, after=ticket)


@dataclass(frozen=True)
class _Read:
    ticket: int
    started: float
    task: asyncio.Future[Any]


class SharedReads:
    """Identical reads made once for every caller that asks for them together (module docstring)."""

    def __init__(self, *, size: int = 1024, keep: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._keep = keep
        self._reads: OrderedDict[Hashable, _Read] = OrderedDict()
        self._tickets = itertools.count(1)
        self._last = 0
        self._size = size
        self._clock = clock
        self.started = 0  # reads actually run (for tests and the benchmark's account)

    def __len__(self) -> int:
        """How many reads are held (in flight or kept)."""
        return len(self._reads)

    def ticket(self) -> int:
        """A point in this process's order of reads: a read started after it has a larger one."""
        self._last = next(self._tickets)
        return self._last

    @contextlib.contextmanager
    def joining(self) -> Iterator[None]:
        """Within this block, the reads that offer to be shared (`offered`) join the same reads of
        other callers, started after the block began. What they return is shared: read only."""
        token = _joining.set((self, self.ticket()))
        try:
            yield
        finally:
            _joining.reset(token)

    async def read(self, key: Hashable, read: Callable[[], Awaitable[T]], *,
                   after: int | None = None, max_age: float | None = None) -> T:
        if (after is None) == (max_age is None):
            raise ValueError("give exactly one of `after` and `max_age`")
        found = self._reads.get(key)
        if found is not None and self._usable(found, after=after, max_age=max_age):
            self._reads.move_to_end(key)
            return await asyncio.shield(found.task)
        entry = _Read(ticket=self.ticket(), started=self._clock(), task=asyncio.ensure_future(read()))
        self.started += 1
        self._reads[key] = entry
        self._reads.move_to_end(key)
        while len(self._reads) > self._size:
            self._reads.popitem(last=False)
        entry.task.add_done_callback(lambda task: self._finished(key, entry))
        return await asyncio.shield(entry.task)

    def _usable(self, found: _Read, *, after: int | None, max_age: float | None) -> bool:
        if found.task.done() and (found.task.cancelled() or found.task.exception() is not None):
            return False
        if after is not None:
            return found.ticket > after
        assert max_age is not None
        return self._clock() - found.started <= max_age

    def _finished(self, key: Hashable, entry: _Read) -> None:
        task = entry.task
        if task.cancelled() or task.exception() is not None:
            # Not kept: the next caller reads afresh (and the error counts as retrieved: every
            # caller waiting on it got it through its own shield).
            if self._reads.get(key) is entry:
                del self._reads[key]
            return
        # Kept a little while for the callers that asked together with it (and then let go:
        # a result may be a lab's whole state).
        asyncio.get_running_loop().call_later(self._keep, self._forget, key, entry)

    def _forget(self, key: Hashable, entry: _Read) -> None:
        if self._reads.get(key) is entry:
            del self._reads[key]
