"""stats(): depth per priority, oldest wait, wait and run times, counts while an
attempt settles; repr."""

from __future__ import annotations

import asyncio

import pytest

from async_queue import AsyncTaskQueue, Hook, RetryPolicy, TaskEvent
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import counted_tasks, until

NO_RETRY = RetryPolicy(max_retries=0)


def test_depth_oldest_wait_and_times() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        release = asyncio.Event()

        async def blocker() -> None:
            await release.wait()

        async def job() -> None:
            pass

        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            block = await queue.submit(blocker)
            await until(lambda: queue.stats().running == 1)
            first = await queue.submit(job, priority=5)
            loop.advance(10)
            await queue.submit(job, priority=5)
            await queue.submit(job, priority=-1)
            cancelled = await queue.submit(job, priority=-1)
            cancelled.cancel()

            stats = queue.stats()
            assert stats.depth_by_priority == ((5, 2), (-1, 1))
            assert stats.oldest_wait == pytest.approx(10, abs=0.05)

            first.cancel()
            assert queue.stats().oldest_wait == pytest.approx(0, abs=0.05)

            loop.advance(4)
            release.set()
            await block
            await queue.join()
            stats = queue.stats()

        assert stats.depth_by_priority == ()
        assert stats.oldest_wait == 0
        assert stats.wait_time.count == 3
        assert stats.wait_time.max == pytest.approx(4, abs=0.05)
        assert stats.run_time.count == 3
        assert stats.run_time.max == pytest.approx(14, abs=0.05)
        assert stats.run_time.mean == pytest.approx(14 / 3, abs=0.05)

    run_virtual(main)


async def test_stats_is_frozen_snapshot() -> None:
    async with AsyncTaskQueue(2) as queue:
        stats = queue.stats()
        with pytest.raises(AttributeError):
            stats.pending = 3  # type: ignore[misc]


async def test_repr_shows_state() -> None:
    queue = AsyncTaskQueue(3)
    assert "workers=3" in repr(queue)
    assert "closed=False" in repr(queue)

    await queue.start()
    release = asyncio.Event()

    async def blocker() -> None:
        await release.wait()

    await queue.submit(blocker)
    await queue.submit(blocker)
    await until(lambda: queue.stats().running == 2)
    text = repr(queue)
    assert "running=2" in text
    assert "pending=0" in text

    release.set()
    await queue.stop("drain")
    assert "closed=True" in repr(queue)


def test_stats_add_up_while_attempt_settles() -> None:
    # An attempt that timed out is settled while its task is still RUNNING:
    # on_timed_out hooks and the retry_on predicate see it so.
    seen: list[tuple[str, int, int, int]] = []
    queue: AsyncTaskQueue

    def record(where: str) -> None:
        stats = queue.stats()
        seen.append((where, counted_tasks(stats), stats.submitted, stats.running))

    class Record(Hook):
        def on_timed_out(self, event: TaskEvent) -> None:
            record("on_timed_out")

        def on_retry_scheduled(self, event: TaskEvent) -> None:
            record("on_retry_scheduled")

    def retry_on(exc: BaseException) -> bool:
        record("retry_on")
        return True

    policy = RetryPolicy(
        max_retries=1, base_delay=1.0, jitter="none", retry_on=retry_on
    )

    async def main(loop: VirtualClockLoop) -> None:
        nonlocal queue
        queue = AsyncTaskQueue(retry=policy, timeout=1.0, hooks=[Record()])
        async with queue:
            handle = await queue.submit(asyncio.sleep, 10)
            await asyncio.gather(handle, return_exceptions=True)

    run_virtual(main)
    assert seen[:3] == [
        ("on_timed_out", 1, 1, 1),
        ("retry_on", 1, 1, 1),
        ("on_retry_scheduled", 1, 1, 0),
    ]
