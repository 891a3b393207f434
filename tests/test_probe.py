"""Admission, blocked-worker warnings and retry budgets at their edges."""

from __future__ import annotations

import asyncio
import logging

import pytest

from async_queue import (
    AsyncTaskQueue,
    RetryPolicy,
    ShutdownReport,
    TaskHandle,
    TaskState,
)
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import EAGER, settle, until


def test_room_waiter_admitted_when_worker_idles() -> None:
    """A submitter that waits for room is admitted once a worker is idle.

    With ``max_pending=1`` filled by a delayed task, a task to start now is
    admitted when an idle worker would start it at once. A submitter that
    began to wait while the only worker was busy gets the same treatment
    as soon as that worker finishes and goes idle: its task starts then.

    Now: the worker's finish wakes room waiters only when the count is below
    ``max_pending``, so the submitter waits until the delayed task is due,
    100 s later, while the worker stays idle the whole time.
    """

    async def main(loop: VirtualClockLoop) -> None:
        release = asyncio.Event()

        async def hold() -> None:
            await release.wait()

        async def stamp() -> float:
            return loop.time()

        async with AsyncTaskQueue(1, max_pending=1) as queue:
            await queue.submit(hold)
            await settle()
            await queue.submit(stamp, delay=100)
            waiting = asyncio.create_task(queue.submit(stamp))
            await settle()
            assert not waiting.done()

            released_at = loop.time()
            release.set()
            await settle()
            try:
                assert queue.stats().running == 0
                assert waiting.done()
                handle = await waiting
                assert await handle == released_at
            finally:
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)

    run_virtual(main, autojump=0)


@EAGER
def test_unawaited_eager_child_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A task that leaves a child to await a handle is not called blocked.

    Under an eager task factory, a task of a one-worker queue submits a
    second task, starts a background asyncio task that awaits its handle,
    and returns without awaiting that background task. The worker is then
    free to run the second task, so the queue logs no blocked-worker
    warning.

    Now: the background task's first, eager step runs inside the worker's
    step, so the queue counts the worker as blocked by that await. It warns
    that task 1 awaits another task of the same queue, though task 1 returns
    at once and task 2 then runs.
    """

    async def main(loop: VirtualClockLoop) -> None:
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        background: list[asyncio.Task[int]] = []

        async def child() -> int:
            return 7

        async def watch(handle: TaskHandle[int]) -> int:
            return await handle

        async def parent(queue: AsyncTaskQueue) -> str:
            handle = queue.submit_nowait(child)
            background.append(asyncio.create_task(watch(handle)))
            return "parent done"

        async with AsyncTaskQueue(1) as queue:
            handle = await queue.submit(parent, queue)
            assert await handle == "parent done"
            assert await background[0] == 7

    with caplog.at_level(logging.WARNING, logger="async_queue"):
        run_virtual(main, autojump=0)

    assert [r.getMessage() for r in caplog.records] == []


@EAGER
def test_drain_waits_for_task_beside_stop() -> None:
    """stop("drain") from a background asyncio task waits for the queue's task.

    Under an eager task factory, a running task starts a background
    asyncio task that calls stop("drain"), and goes on for 100 s without
    awaiting it. The task neither awaits the stop nor runs inside it, so the
    drain waits for it: when the stop returns, the task has succeeded.

    Now: the stop's first, eager step runs inside the worker's step, so
    stop() takes the running task for its caller and does not wait for it.
    The stop returns at once with the task still RUNNING, and its worker
    is left out of the workers that stop() waits for.
    """

    async def main(loop: VirtualClockLoop) -> None:
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        queue = AsyncTaskQueue(1)
        await queue.start()
        stops: list[asyncio.Task[ShutdownReport]] = []

        async def long() -> str:
            stops.append(asyncio.create_task(queue.stop("drain")))
            await asyncio.sleep(100)
            return "long done"

        handle = await queue.submit(long)
        try:
            await until(lambda: len(stops) == 1)
            report = await stops[0]
            assert handle.state is TaskState.SUCCEEDED
            assert report.abandoned == ()
        finally:
            await queue.stop("cancel")
            await asyncio.gather(*stops, return_exceptions=True)

    run_virtual(main, autojump=0)


def test_drop_lowest_keeps_delayed_bound() -> None:
    """drop_lowest never lets delayed tasks pass max_pending.

    With ``max_pending=1`` and one idle worker, a delayed task fills the
    bound, and a task to start now is admitted beside it because the idle
    worker starts it at once. That task takes no room, so dropping it frees
    none: a second delayed task of higher priority finds the queue full and
    is dropped itself, and the first task runs.

    Now: ``"drop_lowest"`` drops the task that the worker was about to
    start and admits the second delayed task, so two delayed tasks wait
    against ``max_pending=1`` for the whole 100 s of their delay.
    """

    async def main(loop: VirtualClockLoop) -> None:
        async def stamp() -> float:
            return loop.time()

        async with AsyncTaskQueue(1, max_pending=1, overflow="drop_lowest") as queue:
            queue.submit_nowait(stamp, delay=100)
            starts_now = queue.submit_nowait(stamp)
            later = queue.submit_nowait(stamp, delay=100, priority=5)
            await settle()

            assert queue.stats().delayed == 1
            assert starts_now.state is TaskState.SUCCEEDED
            assert later.state is TaskState.CANCELLED

    run_virtual(main, autojump=0)


def test_join_in_every_worker_warns(caplog: pytest.LogCaptureFixture) -> None:
    """A task that awaits join() in the only worker gets the blocked warning.

    The task submits a child and awaits ``queue.join()``, which waits for
    that child. The child needs the worker that the task holds, so nothing
    can start until the join's timeout of 10 s ends the wait, as when the
    task awaits the child's handle. The queue logs the blocked-worker
    warning for it.

    Now: join() does not count its caller as blocked, so the queue stays
    silent while the task and its child wait for each other.
    """

    async def main(loop: VirtualClockLoop) -> None:
        async def child() -> int:
            return 1

        async def parent(queue: AsyncTaskQueue) -> None:
            queue.submit_nowait(child)
            async with asyncio.timeout(10):  # wait_for() before 3.12 hides the wait
                await queue.join()

        async with AsyncTaskQueue(1, retry=RetryPolicy(max_retries=0)) as queue:
            handle = await queue.submit(parent, queue)
            with pytest.raises(TimeoutError):
                await handle

    with caplog.at_level(logging.WARNING, logger="async_queue"):
        run_virtual(main, autojump=0)

    blocked = [
        record.getMessage()
        for record in caplog.records
        if "no task can start" in record.getMessage()
    ]
    assert len(blocked) == 1


def test_max_elapsed_huge_int_named() -> None:
    """RetryPolicy(max_elapsed=10**5000) raises an error that names the field.

    The value is out of range, like ``10**400``, which raises ``ValueError``
    starting "max_elapsed must be a finite number of seconds".

    Now: the message is built with repr() of the int, which raises past
    4,300 digits, so the caller gets "Exceeds the limit (4300 digits) for
    integer string conversion". That names neither max_elapsed nor what to
    pass instead.
    """
    with pytest.raises(ValueError, match="max_elapsed must be a finite number"):
        RetryPolicy(max_elapsed=10**5000)
