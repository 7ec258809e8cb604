"""Waiting in tests: on a condition, with a deadline, never for a fixed time.

A test that sleeps "long enough" for something to happen races: on a loaded machine it is not
long enough, on an idle one it wastes time. These helpers poll a condition until it holds (and
return what it returned) or raise an AssertionError saying what was awaited, for how long, and
the last value seen. The poll interval here is the only sleep a synchronising test needs; a
test that sleeps for another reason says why beside the sleep (the passing of time is then
what it tests: a timeout, a random kill moment).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _timed_out(what: str, timeout: float, last: object, detail: Callable[[], object] | None) -> AssertionError:
    shown = f"; {detail()!r}" if detail is not None else ""
    return AssertionError(f"timed out after {timeout:g} s waiting for {what}: last={last!r}{shown}")


def wait_until(condition: Callable[[], T], *, timeout: float, what: str, interval: float = 0.1,
               detail: Callable[[], object] | None = None) -> T:
    """Calls `condition` until it returns something truthy, and returns that; AssertionError
    naming `what` once `timeout` seconds have passed. An exception from `condition` ends the
    wait at once (a condition may assert what must never happen meanwhile). `detail`, if
    given, is called on a timeout and its value shown: the state that explains the wait."""
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last, detail)
        time.sleep(interval)  # the poll interval


async def wait_until_async(condition: Callable[[], T | Awaitable[T]], *, timeout: float, what: str,
                           interval: float = 0.05, detail: Callable[[], object] | None = None) -> T:
    """`wait_until` for the event loop: `condition` may be a plain or an async callable (a
    blocking one belongs in `asyncio.to_thread` inside it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        last: T = await value if inspect.isawaitable(value) else value  # type: ignore[assignment]
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last, detail)
        await asyncio.sleep(interval)  # the poll interval
