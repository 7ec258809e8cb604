"""`kubekvm.shared_reads`: identical reads asked together are made once, and never older than a
caller may be given (a read started before a caller's ticket is not joined, or the caller could
miss a change made between the two). Pure asyncio: the reads are coroutines the test releases,
and the clock is injected."""

from __future__ import annotations

import asyncio

import pytest

from kubekvm.shared_reads import SharedReads, offered


class Reader:
    """A read the test finishes when it wants; counts how often it ran."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.value: object = "state"
        self.error: Exception | None = None

    async def __call__(self) -> object:
        self.runs += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.value


async def test_callers_asking_together_after_their_tickets_share_one_read() -> None:
    reads, read = SharedReads(), Reader()
    tickets = [reads.ticket() for _ in range(100)]
    waiting = [asyncio.ensure_future(reads.read("lab", read, after=t)) for t in tickets]
    await asyncio.sleep(0)
    read.release.set()
    assert await asyncio.gather(*waiting) == ["state"] * 100
    assert read.runs == 1 and reads.started == 1


async def test_a_read_started_before_a_callers_ticket_is_not_joined() -> None:
    reads, read = SharedReads(), Reader()
    first = asyncio.ensure_future(reads.read("lab", read, after=reads.ticket()))
    await asyncio.sleep(0)
    late = reads.ticket()  # e.g. a subscriber that began to hear changes after that read began
    second = asyncio.ensure_future(reads.read("lab", read, after=late))
    await asyncio.sleep(0)
    read.release.set()
    await asyncio.gather(first, second)
    assert read.runs == 2
    # ... but a caller whose ticket is older than the second read joins it, even finished.
    assert await reads.read("lab", read, after=late) == "state" and read.runs == 2


async def test_different_questions_are_not_shared() -> None:
    reads, read = SharedReads(), Reader()
    read.release.set()
    ticket = reads.ticket()
    await reads.read(("state", "teacher-a"), read, after=ticket)
    await reads.read(("state", "teacher-b"), read, after=ticket)
    assert read.runs == 2


async def test_a_failed_read_reaches_every_caller_waiting_and_is_not_kept() -> None:
    reads, read = SharedReads(), Reader()
    read.error = ConnectionError("database gone")
    ticket = reads.ticket()
    waiting = [asyncio.ensure_future(reads.read("lab", read, after=ticket)) for _ in range(3)]
    await asyncio.sleep(0)
    read.release.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes) and read.runs == 1
    read.error = None
    assert await reads.read("lab", read, after=ticket) == "state" and read.runs == 2


async def test_a_caller_that_leaves_does_not_cancel_the_read_the_others_wait_on() -> None:
    reads, read = SharedReads(), Reader()
    ticket = reads.ticket()
    leaving = asyncio.ensure_future(reads.read("lab", read, after=ticket))
    staying = asyncio.ensure_future(reads.read("lab", read, after=ticket))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    read.release.set()
    assert await staying == "state" and leaving.cancelled() and read.runs == 1


async def test_max_age_joins_a_read_started_that_recently_in_flight_or_finished() -> None:
    now = [100.0]
    reads, read = SharedReads(clock=lambda: now[0], keep=60.0), Reader()
    read.release.set()
    assert await reads.read("account", read, max_age=1.0) == "state"
    now[0] += 0.9
    await reads.read("account", read, max_age=1.0)
    assert read.runs == 1
    now[0] += 0.2  # 1.1 s after the read started: too old
    await reads.read("account", read, max_age=1.0)
    assert read.runs == 2


async def test_a_finished_read_is_let_go_after_keep_seconds() -> None:
    reads, read = SharedReads(keep=0.0), Reader()
    read.release.set()
    ticket = reads.ticket()
    await reads.read("lab", read, after=ticket)
    assert len(reads) == 1
    while len(reads):  # let go on the loop's next turn (keep = 0)
        await asyncio.sleep(0)
    await reads.read("lab", read, after=ticket)
    assert read.runs == 2


async def test_offered_reads_are_shared_only_inside_a_joining_block() -> None:
    reads, read = SharedReads(), Reader()
    read.release.set()
    await offered("lab", read)
    await offered("lab", read)
    assert read.runs == 2  # outside: every caller reads for itself (its own writes, its own copy)
    with reads.joining():
        await offered("lab", read)
        await offered("lab", read)
    assert read.runs == 3


async def test_exactly_one_freshness_is_given() -> None:
    reads, read = SharedReads(), Reader()
    with pytest.raises(ValueError, match="exactly one"):
        await reads.read("lab", read)
    with pytest.raises(ValueError, match="exactly one"):
        await reads.read("lab", read, after=1, max_age=1.0)
