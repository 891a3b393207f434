"""Failing tests for faults found in the blocked-worker warning, the retry
rule for QueueClosedError and the virtual clock's jump to the next timer."""

from __future__ import annotations

import asyncio
import logging
import math
import selectors
from typing import Any

import pytest

from async_queue import AsyncTaskQueue, RetryPolicy, TaskCancelledError, TaskState
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import WrappedSelector, until

NO_RETRY = RetryPolicy(max_retries=0)
BLOCKED = "another task of the same queue while running"


def blocked_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if BLOCKED in r.getMessage()]


async def leaf() -> int:
    return 1


async def fail() -> None:
    raise ValueError("boom")


# The warning when every worker awaits another task of the same queue


async def test_gather_left_waiting_no_false_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gather() child that outlives its task keeps the worker counted.

    gather() without return_exceptions fails as soon as one handle fails,
    and leaves the other children awaiting their handles. Their worker then
    counts as blocked while it is idle or runs other tasks. A task that
    awaits its child on the other worker then logs that no task can start,
    though a worker is free and runs the child at once.
    """

    async def parent(queue: AsyncTaskQueue) -> None:
        failing = await queue.submit(fail)
        later = await queue.submit(fail, delay=3600)
        await asyncio.gather(failing, later)

    async def middle(queue: AsyncTaskQueue) -> int:
        return await (await queue.submit(leaf))

    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        first = await queue.submit(parent, queue)
        with pytest.raises(ValueError, match="boom"):
            await first

        # Both workers are idle now, and the delayed task waits for its time.
        assert await (await queue.submit(middle, queue)) == 1
        assert blocked_warnings(caplog) == []
        assert queue._blocked_workers() == 0
        await queue.stop("cancel")  # not an hour's drain for the delayed task


async def test_failing_log_filter_leaves_no_count() -> None:
    """A logging filter that raises on the warning breaks the await.

    The warning is logged after the handle's waiter is added and the
    worker is counted, but before the try block that undoes both. The
    filter's error fails the awaiting task, and the count and the waiter
    stay for good; the count then hides every later warning. The overflow
    drop warning guards against such filters, this one does not.
    """

    class FailingFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if BLOCKED in record.getMessage():
                raise RuntimeError("filter failed")
            return True

    log_filter = FailingFilter()
    logging.getLogger("async_queue").addFilter(log_filter)
    children: list[Any] = []
    try:
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:

            async def parent() -> int:
                child = await queue.submit(leaf)
                children.append(child)
                return await child

            # With one worker the parent waits for good, and is cancelled.
            handle = await queue.submit(parent)
            await until(lambda: len(children) == 1)

            assert handle.state is TaskState.RUNNING
            assert queue._blocked_workers() == 1
            handle.cancel()
            with pytest.raises(TaskCancelledError):
                await handle

            assert await children[0] == 1
            assert queue._blocked_workers() == 0
            assert children[0]._waiters in (None, [])
    finally:
        logging.getLogger("async_queue").removeFilter(log_filter)


async def test_new_deadlock_after_resize_up_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Growing the pool ends one deadlock but not the warned state.

    With one worker, ``top`` awaits ``middle``, which cannot start: the
    queue warns. resize(2) lets ``middle`` start, and ``middle`` awaits
    ``leaf``, which cannot start either. Both workers are blocked for good,
    and the queue stays silent, since the flag of the first warning is only
    cleared when an await ends.
    """

    async def middle(queue: AsyncTaskQueue) -> int:
        return await (await queue.submit(leaf))

    async def top(queue: AsyncTaskQueue) -> int:
        return await (await queue.submit(middle, queue))

    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    handle = await queue.submit(top, queue)
    await until(lambda: queue.stats().running == 1 and queue.stats().pending == 1)
    assert len(blocked_warnings(caplog)) == 1

    queue.resize(2)
    await until(lambda: queue.stats().running == 2 and queue.stats().pending == 1)
    for _ in range(10):
        await asyncio.sleep(0)

    warned = len(blocked_warnings(caplog))
    await queue.stop()
    with pytest.raises(TaskCancelledError):
        await handle

    assert warned == 2


async def test_deadlock_after_resize_down_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Shrinking the pool below the blocked workers gives no warning.

    Two workers: ``top`` awaits ``leaf`` while the other worker runs a
    long task. resize(1) makes the blocked worker enough to fill the pool,
    so once the long task ends, ``leaf`` can never start. The queue checks
    for the warning only when an await begins, so it logs nothing.
    """

    async def top(queue: AsyncTaskQueue) -> int:
        return await (await queue.submit(leaf))

    gate = asyncio.Event()
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    long_task = await queue.submit(gate.wait)
    handle = await queue.submit(top, queue)
    await until(lambda: queue.stats().running == 2 and queue.stats().pending == 1)
    assert blocked_warnings(caplog) == []

    queue.resize(1)
    gate.set()
    await long_task
    for _ in range(10):
        await asyncio.sleep(0)

    pending = queue.stats().pending
    warned = len(blocked_warnings(caplog))
    await queue.stop()
    with pytest.raises(TaskCancelledError):
        await handle

    assert pending == 1  # leaf never started
    assert warned == 1


# QueueClosedError is never retried


def test_queue_closed_in_task_group_not_retried() -> None:
    """A QueueClosedError that reaches the task in an ExceptionGroup is retried.

    A task that submits its children in an asyncio.TaskGroup gets the
    error of a stopping queue wrapped in an ExceptionGroup. The retry rule
    only matches a bare QueueClosedError, so the task runs again three
    times, and stop("drain") waits 7 virtual seconds for retries that can
    only fail the same way.
    """

    async def main(loop: VirtualClockLoop) -> tuple[int, float]:
        policy = RetryPolicy(max_retries=3, base_delay=1, jitter="none")
        queue = AsyncTaskQueue(1, retry=policy)
        await queue.start()
        started = asyncio.Event()

        async def parent() -> None:
            started.set()
            await asyncio.sleep(1)  # stop() begins meanwhile
            async with asyncio.TaskGroup() as group:
                group.create_task(queue.submit(leaf))

        handle = await queue.submit(parent)
        await started.wait()
        stop_at = loop.time()
        await queue.stop("drain")
        return handle.attempts, loop.time() - stop_at

    attempts, stop_seconds = run_virtual(main, autojump=0)

    assert attempts == 1
    assert stop_seconds == pytest.approx(1)


# The virtual clock's jump to the next timer


class _WakeAfterJump(WrappedSelector):
    """Wraps the loop's selector and resolves a future after the first jump.

    It replaces I/O that arrives once the clock has jumped, such as a peer
    that replies later than ``autojump``.
    """

    def __init__(self, loop: VirtualClockLoop, inner: selectors.BaseSelector) -> None:
        super().__init__(inner)
        self.loop = loop
        self.woken: asyncio.Future[None] | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        before = self.loop.offset
        events = self.inner.select(timeout)
        woken = self.woken
        if self.loop.offset != before and woken is not None and not woken.done():
            self.loop.call_soon(woken.set_result, None)
        return events


def test_autojump_to_infinite_sleep_keeps_clock_finite() -> None:
    """An idle loop whose only timer is sleep(math.inf) jumps to infinity.

    The jump goes to the next timer past the 24-hour cap, and that timer
    is due at infinity. time() then returns inf for good: every later
    timer is due at inf, which asyncio never treats as due, so a plain
    ``await asyncio.sleep(1)`` after that hangs.
    """
    loop = VirtualClockLoop(autojump=0)
    selector = _WakeAfterJump(loop, loop._selector)  # type: ignore[attr-defined]
    loop._selector = selector  # type: ignore[attr-defined]

    async def main() -> float:
        forever = asyncio.create_task(asyncio.sleep(math.inf))
        selector.woken = loop.create_future()
        await selector.woken
        now = loop.time()
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        return now

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        now = runner.run(main())

    assert math.isfinite(now)
