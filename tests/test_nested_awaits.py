"""Tasks that await the handles of other tasks of the same queue, and the
warning when every worker waits in such an await."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from async_queue import (
    AsyncTaskQueue,
    RetryPolicy,
    TaskCancelledError,
    TaskHandle,
    TaskState,
)
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import EAGER, fail, settle, until
from tests.helpers import one as leaf

NO_RETRY = RetryPolicy(max_retries=0)
BLOCKED = "another task of the same queue while running"


def blocked_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if BLOCKED in r.getMessage()]


async def child(n: int) -> int:
    return n


async def test_blocked_workers_warn_each_time(caplog: pytest.LogCaptureFixture) -> None:
    async def parent(queue: AsyncTaskQueue) -> int:
        return await (await queue.submit(child, 1))

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        first = await queue.submit(parent, queue)
        # The parent submits its child and awaits it in one step.
        await until(lambda: first.state is TaskState.RUNNING)

        assert queue.stats().pending == 1
        assert blocked_warnings(caplog) == [
            f"task {first.id!r} awaits another task of the same queue while "
            "running, and with max_workers=1 no task can start until one of "
            "those awaits ends; await handles outside the queue's tasks, or "
            "raise max_workers"
        ]

        first.cancel()
        with pytest.raises(TaskCancelledError):
            await first

        # The worker is free again; a second episode warns again.
        second = await queue.submit(parent, queue)
        await until(lambda: len(blocked_warnings(caplog)) == 2)
        second.cancel()
        with pytest.raises(TaskCancelledError):
            await second

    assert queue.stats().succeeded == 2  # the two children


async def test_enough_workers_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    async def parent(queue: AsyncTaskQueue) -> list[int]:
        children = [await queue.submit(child, n) for n in range(3)]
        # Two awaits at once by one task count its worker once.
        return list(await asyncio.gather(*children))

    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        handle = await queue.submit(parent, queue)
        assert await handle == [0, 1, 2]

    assert blocked_warnings(caplog) == []


async def test_await_other_queue_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    async with AsyncTaskQueue(1) as outer, AsyncTaskQueue(1) as inner:

        async def parent() -> int:
            return await (await inner.submit(child, 5))

        assert await (await outer.submit(parent)) == 5

    assert blocked_warnings(caplog) == []


async def test_blocked_count_returns_to_zero() -> None:
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "done"

    async def parent(queue: AsyncTaskQueue, n: int) -> Any:
        handles = [await queue.submit(slow) for _ in range(n)]
        return await asyncio.gather(*handles)

    async with AsyncTaskQueue(4, retry=NO_RETRY) as queue:
        parents = [await queue.submit(parent, queue, n) for n in (1, 2)]
        await until(lambda: queue._blocked_workers() == 2)
        release.set()
        for handle in parents:
            await handle

        assert queue._blocked_workers() == 0
        assert [w.waits for w in queue._workers] == [[], [], [], []]
        assert [w.awaiting_for for w in queue._workers] == [None] * 4


async def test_blocked_warning_names_tasks(caplog: pytest.LogCaptureFixture) -> None:
    async def parent(queue: AsyncTaskQueue) -> int:
        return await (await queue.submit(child, 1))

    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        parents = [await queue.submit(parent, queue) for _ in range(2)]
        await until(lambda: len(blocked_warnings(caplog)) == 1)

        assert blocked_warnings(caplog)[0].startswith(
            "tasks 1, 2 await another task of the same queue while running, and "
            "with max_workers=2"
        )
        for handle in parents:
            handle.cancel()


async def test_gather_left_waiting_no_false_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A gather() child that outlives its task does not count as blocking.

    gather() without return_exceptions fails as soon as one handle fails,
    and leaves the other children awaiting their handles. The queue counts
    awaits per task and attempt, so the worker is not blocked once the task
    ends. When a task then awaits its child, the queue logs no warning,
    since a worker is free and runs the child at once.
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
    """A logging filter that raises on the warning leaves the await intact.

    The warning is logged after the handle's waiter is added and the worker
    is counted. The queue suppresses the filter's error, so the task goes on
    waiting, and once the wait ends, neither the count nor the waiter stays
    behind to hide later warnings.
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
    """A deadlock after resize() grows the pool gets a warning of its own.

    With one worker, ``top`` awaits ``middle``, which cannot start: the
    queue warns. resize(2) lets ``middle`` start, and ``middle`` awaits
    ``leaf``, which cannot start either. resize() clears the flag of the
    first warning, so the queue warns again when both workers block.
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
    """Shrinking the pool to the number of blocked workers logs the warning.

    Two workers: ``top`` awaits ``leaf`` while the other worker runs a
    long task. resize(1) makes the blocked worker enough to fill the pool,
    so once the long task ends, ``leaf`` can never start. resize() checks
    for the warning as the start of an await does.
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


async def test_retry_not_blocked_by_stale_await(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A retry is not blocked by a gather() child of its failed attempt.

    The first attempt fails through gather(), whose other child goes on
    awaiting a delayed task. The worker's count of awaits belongs to the
    attempt, so the retry, which awaits only an event, does not count as
    blocked. When the task on the other worker awaits a handle, one worker
    of two is blocked, and the queue logs no warning.
    """
    retry_once = RetryPolicy(max_retries=1, base_delay=0, jitter="none")
    queue = AsyncTaskQueue(2, retry=retry_once)
    await queue.start()
    later = await queue.submit(asyncio.sleep, 0, delay=3600, task_id="later")
    release = asyncio.Event()
    attempts: list[int] = []

    async def await_later() -> None:
        await later

    async def fail() -> None:
        raise ValueError("boom")

    async def flaky() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            await asyncio.gather(await_later(), fail())
        await release.wait()

    async def waiter() -> None:
        await later

    try:
        flaky_handle = await queue.submit(flaky, task_id="flaky")
        await until(lambda: len(attempts) == 2)
        waiter_handle = await queue.submit(waiter, task_id="waiter")
        await until(lambda: waiter_handle.state is TaskState.RUNNING)
        await asyncio.sleep(0)

        assert blocked_warnings(caplog) == []
        assert queue._blocked_workers() == 1

        release.set()
        await flaky_handle
    finally:
        await queue.stop("cancel")


async def test_warning_after_shrink_counts_workers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The warning after resize(1) does not call the blocked worker the only one.

    After the shrink the pool still has two busy workers: the worker that
    resize() retired still runs another task.
    """
    queue = AsyncTaskQueue(2)
    await queue.start()
    later = await queue.submit(asyncio.sleep, 0, delay=3600, task_id="later")
    release = asyncio.Event()

    async def awaits_later() -> None:
        await later

    try:
        awaiting = await queue.submit(awaits_later, task_id="awaiting")
        other = await queue.submit(release.wait, task_id="other")
        await until(lambda: queue._blocked_workers() == 1)
        await until(lambda: other.state is TaskState.RUNNING)

        queue.resize(1)

        warnings = blocked_warnings(caplog)
        assert len(warnings) == 1
        assert "only worker" not in warnings[0]
        assert awaiting.state is TaskState.RUNNING
    finally:
        await queue.stop("cancel")


async def test_finished_await_not_counted_blocked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker whose awaited handle is final no longer counts as blocked.

    "child" ends on the second worker, which starts "second" in the same
    step. When "second" awaits "last", "parent" has its result but has not
    resumed yet, and the queue logs no warning about blocked workers.
    """
    release = asyncio.Event()
    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:

        async def child() -> str:
            await release.wait()
            return "child"

        async def last() -> str:
            return "last"

        handles: dict[str, TaskHandle[str]] = {}

        async def parent() -> str:
            return await handles["child"]

        async def second() -> str:
            return await handles["last"]

        handles["child"] = await queue.submit(child, task_id="child")
        parent_handle = await queue.submit(parent, task_id="parent")
        await until(lambda: queue._blocked_workers() == 1)
        # Queued behind the running pair: the worker that finishes "child"
        # starts "second" in the same step.
        second_handle = await queue.submit(second, priority=1, task_id="second")
        handles["last"] = await queue.submit(last, task_id="last")
        release.set()

        assert await parent_handle == "child"
        assert await second_handle == "last"
        assert blocked_warnings(caplog) == []


async def test_deadlock_after_gather_leftover_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A deadlock warns even after a gather() child outlives its task.

    The first task fails through gather() while its other child still awaits
    a delayed task. The next task then occupies the only worker awaiting that
    delayed task, which can never start, and the queue warns again.
    """
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        later = await queue.submit(asyncio.sleep, 0, delay=3600, task_id="later")

        async def await_later() -> None:
            await later

        async def fail() -> None:
            await asyncio.sleep(0)
            raise ValueError("boom")

        async def first() -> None:
            await asyncio.gather(await_later(), fail())

        first_handle = await queue.submit(first, task_id="first")
        with pytest.raises(ValueError, match="boom"):
            await first_handle
        assert len(blocked_warnings(caplog)) == 1

        second_handle = await queue.submit(await_later, task_id="second")
        await until(lambda: second_handle.state is TaskState.RUNNING)
        await until(lambda: queue._blocked_workers() == 1)

        warnings = blocked_warnings(caplog)
        assert len(warnings) == 2
        assert "'second'" in warnings[1]
        await queue.stop("cancel")


@EAGER
async def test_gather_of_handle_blocks_eager(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A task that awaits a handle through gather() counts as blocked.

    Under an eager task factory gather() starts the child that awaits the
    handle before the parent awaits the gather. The only worker then waits
    for a task that can never start, and the queue warns once.
    """
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    queue = AsyncTaskQueue(1)
    try:
        await queue.start()
        later = await queue.submit(asyncio.sleep, 0, delay=3600, task_id="later")

        async def parent() -> None:
            await asyncio.gather(later)

        handle = await queue.submit(parent, task_id="parent")
        await until(lambda: handle.state is TaskState.RUNNING)
        await settle(50)

        assert queue._blocked_workers() == 1
        assert len(blocked_warnings(caplog)) == 1
    finally:
        loop.set_task_factory(None)
        await queue.stop("cancel")


@EAGER
def test_unawaited_eager_child_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A task that leaves a child to await a handle is not called blocked.

    Under an eager task factory, a task of a one-worker queue submits a
    second task, starts a background asyncio task that awaits its handle,
    and returns without awaiting that background task. The worker is then
    free to run the second task, so the queue logs no blocked-worker
    warning.
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


def test_join_in_every_worker_warns(caplog: pytest.LogCaptureFixture) -> None:
    """A task that awaits join() in the only worker gets the blocked warning.

    The task submits a child and awaits ``queue.join()``, which waits for
    that child. The child needs the worker that the task holds, so nothing
    can start until the join's timeout of 10 s ends the wait, as when the
    task awaits the child's handle. The queue logs the blocked-worker
    warning for it.
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


# Tasks that wait in submit() for room in their own full queue


def queue_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "async_queue" and record.levelno == logging.WARNING
    ]


async def test_room_waits_in_every_worker_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = AsyncTaskQueue(2, retry=NO_RETRY, max_pending=1)
    await queue.start()
    submitting: list[int] = []

    async def parent(index: int) -> None:
        submitting.append(index)
        await queue.submit(leaf)

    try:
        parents = [await queue.submit(parent, index, priority=1) for index in range(2)]
        filler = await queue.submit(leaf)
        await until(lambda: len(submitting) == 2)
        await settle()

        assert [handle.state for handle in parents] == [TaskState.RUNNING] * 2
        assert filler.state is TaskState.PENDING
        assert queue_warnings(caplog) == [
            "tasks 1, 2 wait for room in the same queue (max_pending=1) while "
            "running, and with max_workers=2 no task can start until one of "
            "those waits ends; submit from tasks with submit_nowait() and "
            "handle QueueFullError, or raise max_pending or max_workers"
        ]
    finally:
        await queue.stop("drain")

    # stop() lets the waiting submitters go with QueueClosedError.
    assert [handle.state for handle in parents] == [TaskState.FAILED] * 2
    assert filler.state is TaskState.SUCCEEDED


async def test_room_and_handle_waits_warn_together(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = AsyncTaskQueue(2, retry=NO_RETRY, max_pending=1)
    await queue.start()
    filler_made: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    go = asyncio.Event()

    async def awaits_filler() -> int:
        return await (await filler_made)  # type: ignore[no-any-return]

    async def submits_child() -> None:
        await go.wait()
        await queue.submit(leaf)

    try:
        first = await queue.submit(awaits_filler, priority=1)
        second = await queue.submit(submits_child, priority=1)
        await until(lambda: second.state is TaskState.RUNNING)
        # Both workers are busy, so the filler stays pending and fills the
        # queue before the second task submits.
        filler = await queue.submit(leaf)
        go.set()
        filler_made.set_result(filler)
        await settle()

        assert first.state is TaskState.RUNNING
        assert filler.state is TaskState.PENDING
        assert queue_warnings(caplog) == [
            "tasks 1, 2 wait for room in the same queue (max_pending=1) or for "
            "another task of it while running, and with max_workers=2 no task "
            "can start until one of those waits ends; submit from tasks with "
            "submit_nowait() and handle QueueFullError, or raise max_pending "
            "or max_workers"
        ]

        # The child waiting for room is let go: the filler starts, and the
        # first task gets its result.
        second.cancel()
        assert await first == 1
    finally:
        await queue.stop()
