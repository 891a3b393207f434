"""Cancelled tasks in the ready heap, the aging heap and the timer heap.

A task cancelled while pending or delayed stays in its heap as a stale entry.
These tests check, through the queue, that stale entries never start, never
show in ``stats()``, and are dropped in bulk once enough of them pile up.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from async_queue import AsyncTaskQueue, RetryPolicy, TaskHandle, TaskState
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)

# The heaps drop their stale entries once at least this many pile up and they
# outnumber the live ones (containers._COMPACT_MIN_STALE).
COMPACT_MIN_STALE = 1024


class Payload:
    """A task argument that supports weak references."""


def test_aging_stats_skip_cancelled() -> None:
    """With aging, stats() and the start order leave cancelled tasks out."""

    async def main(loop: VirtualClockLoop) -> None:
        release = asyncio.Event()
        started: list[str] = []

        async def blocker() -> None:
            await release.wait()

        async def job(name: str) -> None:
            started.append(name)

        async with AsyncTaskQueue(1, retry=NO_RETRY, aging_rate=0.1) as queue:
            block = await queue.submit(blocker)
            await until(lambda: queue.stats().running == 1)
            first = await queue.submit(job, "first", priority=5)
            loop.advance(10)
            await queue.submit(job, "second", priority=5)
            await queue.submit(job, "low", priority=-1)
            cancelled = await queue.submit(job, "cancelled", priority=-1)
            cancelled.cancel()
            stats = queue.stats()

            assert stats.pending == 3
            assert stats.depth_by_priority == ((5, 2), (-1, 1))
            assert stats.oldest_wait == pytest.approx(10)

            first.cancel()

            assert queue.stats().oldest_wait == pytest.approx(0)
            assert queue.stats().depth_by_priority == ((5, 1), (-1, 1))

            release.set()
            await block
            await queue.join()

        assert started == ["second", "low"]
        assert first.state is TaskState.CANCELLED
        assert cancelled.state is TaskState.CANCELLED

    run_virtual(main)


async def test_aging_stats_empty() -> None:
    async with AsyncTaskQueue(1, retry=NO_RETRY, aging_rate=1.0) as queue:
        stats = queue.stats()

    assert stats.depth_by_priority == ()
    assert stats.oldest_wait == 0


@pytest.mark.parametrize("aging_rate", [None, 0.5], ids=["ready", "aging"])
async def test_mass_cancel_drops_stale(aging_rate: float | None) -> None:
    """Cancelling many pending tasks frees them before any worker runs again.

    The whole lowest level and part of the next are cancelled, so that the
    heap drops one priority level entirely and keeps the live part of another.
    """
    low_count = COMPACT_MIN_STALE // 2
    middle_count = COMPACT_MIN_STALE
    ran: list[tuple[int, int]] = []

    async def job(priority: int, index: int, payload: Payload) -> None:
        ran.append((priority, index))

    # With no result store, only the heap could keep a cancelled task alive.
    options = {"retry": NO_RETRY, "aging_rate": aging_rate, "max_results": 0}
    async with AsyncTaskQueue(2, **options) as queue:
        queue.pause()
        payloads = [Payload() for _ in range(low_count)]
        references = [weakref.ref(payload) for payload in payloads]
        low = [
            queue.submit_nowait(job, 1, index, payload, priority=1)
            for index, payload in enumerate(payloads)
        ]
        middle = [
            queue.submit_nowait(job, 2, index, Payload(), priority=2)
            for index in range(middle_count)
        ]
        high = [
            queue.submit_nowait(job, 3, index, Payload(), priority=3)
            for index in range(10)
        ]
        for handle in low:
            handle.cancel()

        live_middle = middle_count - (COMPACT_MIN_STALE - low_count)
        for handle in middle[live_middle:]:
            handle.cancel()

        del payloads, low
        gc.collect()
        stats = queue.stats()

        # The heap dropped the cancelled tasks at once, with their arguments.
        assert [ref for ref in references if ref() is not None] == []
        assert stats.pending == live_middle + len(high)
        assert stats.depth_by_priority == ((3, len(high)), (2, live_middle))
        assert stats.cancelled == COMPACT_MIN_STALE

        queue.resume()
        await queue.join()

    expected = [(3, i) for i in range(len(high))] + [(2, i) for i in range(live_middle)]
    assert ran == expected
    assert all(h.state is TaskState.SUCCEEDED for h in [*high, *middle[:live_middle]])


async def test_cancelled_pending_skipped_on_aging_heap() -> None:
    """A worker that meets a cancelled task on the aging heap starts the next."""
    ran: list[str] = []

    async def job(name: str) -> None:
        ran.append(name)

    async with AsyncTaskQueue(1, retry=NO_RETRY, aging_rate=1.0) as queue:
        queue.pause()
        handles: list[TaskHandle[None]] = [
            await queue.submit(job, name, priority=priority)
            for name, priority in [("a", 3), ("b", 2), ("c", 1)]
        ]
        handles[0].cancel()
        handles[1].cancel()
        queue.resume()
        await queue.join()

    assert ran == ["c"]
    assert [h.state for h in handles] == [
        TaskState.CANCELLED,
        TaskState.CANCELLED,
        TaskState.SUCCEEDED,
    ]


async def _echo(value: object) -> object:
    return value


async def test_cancelled_delayed_tasks_are_released() -> None:
    """Delayed tasks cancelled in bulk do not keep their arguments alive."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_results=0)
    await queue.start()
    refs = []
    for _ in range(3000):
        handle = await queue.submit(_echo, bytearray(100), delay=3600)
        assert handle.cancel()
        refs.append(weakref.ref(handle))
    del handle
    gc.collect()

    alive = sum(ref() is not None for ref in refs)
    # Stale entries are dropped in batches of at least 1024.
    assert alive < 1024
    stats = queue.stats()
    assert stats.delayed == 0
    assert stats.cancelled == 3000
    await queue.stop()


def test_compaction_keeps_live_delayed_tasks() -> None:
    """Compacting the timer heap keeps every delayed task that is not cancelled."""

    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(1, retry=NO_RETRY, max_results=0)
        await queue.start()
        kept_tasks: list[tuple[int, Any]] = []
        for index in range(2100):
            handle = await queue.submit(_echo, index, delay=10 + index % 7)
            if index % 3 == 0:
                kept_tasks.append((index, handle))
            else:
                assert handle.cancel()

        assert queue.stats().delayed == len(kept_tasks)
        loop.advance(20)
        await until(lambda: all(h.done() for _, h in kept_tasks))

        assert [await h for _, h in kept_tasks] == [index for index, _ in kept_tasks]
        assert queue.stats().succeeded == len(kept_tasks)
        assert queue.stats().delayed == 0
        await queue.stop()

    run_virtual(main)
