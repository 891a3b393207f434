"""Faults found in periodic tasks, each pinned by the test named after it."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

from async_queue import (
    AsyncTaskQueue,
    QueueStateError,
    RetryPolicy,
    Schedule,
    bind,
    threaded,
)
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)


async def tick() -> None:
    pass


@pytest.mark.parametrize("interval", [1e-10, 1e-20, 1e-300, 5e-324])
def test_interval_below_clock_resolution_rejected(interval: float) -> None:
    """An interval far below the float spacing of loop times hung _on_due.

    Near a loop time of 10**4 s, adding 1e-20 to a due time does not change
    it, so the loop that looked for the next due time after ``now`` ran for
    hundreds of millions of steps. 5e-324 made ``(now - first) / interval``
    infinite, so ``math.floor()`` raised OverflowError.
    """

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            with pytest.raises(ValueError, match="interval") as info:
                queue.every(interval, tick, delay=10)  # never due in this test
            assert f"got {interval!r}" in str(info.value)
            assert ">= 1e-09" in str(info.value)
            assert queue.schedules == ()

    run_virtual(main, autojump=None)


def test_smallest_interval_keeps_coalescing() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            schedule = queue.every(1e-9, tick, delay=0)
            loop.advance(10)
            for _ in range(20):
                await asyncio.sleep(0)
            assert schedule.runs >= 1
            assert schedule.skipped >= 10**10 - schedule.runs
            schedule.cancel()

    run_virtual(main, autojump=None)


def test_every_from_other_thread_rejected() -> None:
    """every() from a thread left a schedule listed as active with no timer.

    In debug mode ``loop.call_at()`` raised RuntimeError after the schedule
    was added to ``queue.schedules``, and outside debug mode it added the
    timer without waking the loop.
    """

    async def main() -> None:
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            with pytest.raises(QueueStateError, match="another thread") as info:
                await asyncio.to_thread(queue.every, 1, tick)
            assert "call_soon_threadsafe" in str(info.value)
            assert queue.schedules == ()

    asyncio.run(main())


async def double(value: int, *, factor: int = 2) -> int:
    return value * factor


class Refresher:
    async def __call__(self) -> None:
        pass


@pytest.mark.parametrize(
    "fn",
    [bind(double, 1, factor=3), functools.partial(double, 1), Refresher()],
    ids=["bind", "partial", "callable-object"],
)
def test_schedule_name_matches_run_name(fn: Callable[[], Awaitable[object]]) -> None:
    """Schedule.name was the repr of a bind(), a partial or a callable object."""

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            schedule = queue.every(10, fn, delay=0)
            await asyncio.sleep(1)
            last = schedule.last
            assert last is not None
            assert schedule.name == last.name
            assert schedule.name in ("double", "Refresher")
            schedule.cancel()

    run_virtual(main)


def test_schedules_listed_in_creation_order() -> None:
    """queue.schedules came from a set, so its order followed object ids."""

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            created = [queue.every(1 + index, tick) for index in range(50)]
            assert queue.schedules == tuple(created)

            created[10].cancel()
            del created[10]
            assert queue.schedules == tuple(created)

    run_virtual(main)


@pytest.mark.xfail(
    strict=True,
    reason="a timed-out threaded() run is done while its thread still runs",
)
def test_timed_out_threaded_run_not_overlapped() -> None:
    """The next run started while the thread of a timed-out run still ran.

    The handle of a ``threaded()`` run ends ``FAILED`` at its timeout, but
    Python cannot stop the thread, so the schedule saw the run as finished.
    """
    started = threading.Event()
    release = threading.Event()

    def export() -> None:
        started.set()
        release.wait(timeout=30)

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
            schedule = queue.every(2, threaded(export), timeout=1, delay=0)
            await until(lambda: schedule.last is not None)
            assert await asyncio.to_thread(started.wait, 30)

            loop.advance(1)  # the first run times out; its thread goes on
            await until(lambda: schedule.last is not None and schedule.last.done())
            loop.advance(1)  # the second due time
            for _ in range(20):
                await asyncio.sleep(0)

            try:
                assert schedule.runs == 1
                assert schedule.skipped == 1
            finally:
                schedule.cancel()
                release.set()

    run_virtual(main, autojump=None)


def test_schedule_inactive_once_loop_closed() -> None:
    """A schedule stayed active, with a due time in the past, on a closed loop."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)

    async def main() -> Schedule[None]:
        await queue.start()
        return queue.every(10, tick)  # the loop closes without stop()

    schedule = asyncio.run(main())

    assert not schedule.active
    assert schedule.next_run is None
    assert queue.schedules == ()
    assert schedule.cancel() is False


def test_virtual_times_exact_at_any_uptime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole-second due times came out inexact after some machine uptimes.

    The virtual clock started at the fractional ``time.monotonic()``. Just
    below a power of two, 32753.3 + 20 rounds to the next float spacing, so
    a run due 20 s after the start ran 20.000000000003638 s after it.
    """
    with monkeypatch.context() as patch:
        patch.setattr(time, "monotonic", lambda: 2.0**15 - 14.7)
        loop = VirtualClockLoop()

    async def main() -> list[float]:
        start = loop.time()
        times: list[float] = []

        async def record() -> None:
            times.append(loop.time() - start)

        async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
            queue.every(10, record)
            await asyncio.sleep(35)

        return times

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        assert runner.run(main()) == [10.0, 20.0, 30.0]
