"""Failing tests: each docstring's "Wrong:" paragraph describes what the queue
does instead of what the test expects.

They cover:

- the warning about workers that all await tasks of their own queue;
- current_handle() in a queue that runs inside a threaded() function;
- log calls that a raising logging filter breaks;
- stop() from another event loop, and from tasks that it cancels;
- workers that replace lost ones, under an eager task factory and for
  submissions from threads and schedules;
- resize() and gather() children under an eager task factory;
- max_pending beside idle workers;
- the virtual clock's offset setter.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import Awaitable, Callable

import pytest

from async_queue import (
    AsyncTaskQueue,
    Hook,
    QueueStateError,
    RetryPolicy,
    ShutdownReport,
    TaskCancelledError,
    TaskEvent,
    TaskHandle,
    TaskState,
    current_handle,
    threaded,
)
from async_queue.models import OverflowName
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import Gate, until

NO_RETRY = RetryPolicy(max_retries=0)
BLOCKED = "another task of the same queue while running"


def blocked_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if BLOCKED in r.getMessage()]


# The warning when every worker awaits another task of the same queue


async def test_finished_await_not_counted_blocked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A task whose awaited handle is final no longer blocks its worker.

    Wrong: the worker counts as blocked until the awaiting coroutine
    resumes. "child" ends on the second worker, which at once starts
    "second". When "second" awaits "last", the queue warns that no task
    can start until an await ends, although "parent" has its result and
    "last" starts right after.
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
    """A deadlock warns even after a gather() leftover outlived its task.

    Wrong: the first task fails through gather(), whose other child goes
    on awaiting a delayed task, so the warning stays marked as given. The
    next task then occupies the only worker awaiting that delayed task, which
    can never start, and the queue logs nothing.
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


# current_handle() and progress in a queue that runs inside threaded()


class ProgressByTask(Hook):
    def __init__(self) -> None:
        self.seen: list[tuple[object, object]] = []

    def on_progress(self, event: TaskEvent) -> None:
        self.seen.append((event.task_id, event.progress))


async def test_current_handle_of_queue_in_thread() -> None:
    """A queue run by a threaded() function's own event loop.

    Wrong: every asyncio task made in that thread copies the outer task's
    context, and current_handle() looks there first, so a task of the
    inner queue gets the outer task's handle. Its set_progress() then
    reports to the outer task, and the inner task has no progress.
    """
    outer_log = ProgressByTask()
    inner_log = ProgressByTask()

    def run_inner_queue() -> tuple[object, object]:
        async def inner_main() -> tuple[object, object]:
            async with AsyncTaskQueue(1, hooks=[inner_log]) as inner:

                async def job() -> object:
                    handle = current_handle()
                    handle.set_progress("inner")
                    return handle.id

                handle = await inner.submit(job, task_id="inner")
                return await handle, handle.progress

        return asyncio.run(inner_main())

    async with AsyncTaskQueue(1, hooks=[outer_log]) as outer:
        outer_handle = await outer.submit(threaded(run_inner_queue), task_id="outer")
        inner_id, inner_progress = await outer_handle

    assert inner_id == "inner"
    assert inner_progress == "inner"
    assert inner_log.seen == [("inner", "inner")]
    assert outer_log.seen == []
    assert outer_handle.progress is None


# stop() when logging fails


class FailOnAbandon(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "abandoning it" in record.getMessage():
            raise RuntimeError("log filter failed")
        return True


def test_stop_abandons_despite_failing_log_filter() -> None:
    """stop() ends an abandoned task even when its log line fails.

    Wrong: the ERROR about the abandoned task is logged without a guard,
    unlike the queue's other warnings. A logging filter that raises makes
    stop() raise to every caller, leaves the queue stopping with its
    workers, and leaves the task RUNNING with no final state.
    """
    log_filter = FailOnAbandon()
    logger = logging.getLogger("async_queue")
    logger.addFilter(log_filter)
    cleanup = asyncio.Event()
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await cleanup.wait()  # outlasts the grace period

    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(1)
        await queue.start()
        handle = await queue.submit(stubborn, task_id="stubborn")
        await started.wait()
        try:
            report = await queue.stop("cancel", grace=1)

            assert handle.state is TaskState.CANCELLED
            assert report.abandoned == (handle,)
            assert queue.report is report
            assert queue.stats().running == 0
        finally:
            cleanup.set()
            await until(lambda: queue._running == 0)

    try:
        run_virtual(main)
    finally:
        logger.removeFilter(log_filter)


def test_cancel_stop_not_waiting_for_stop_callers() -> None:
    """stop("cancel") does not wait for a task that awaits the stop.

    Wrong: the grace period waits for every interrupted task, including
    one whose cleanup awaits stop(). Task and stop wait for each other
    until the grace period ends, and the task is then abandoned and
    logged as one that suppresses CancelledError, though it re-raises
    as soon as the stop returns.
    """
    reports: list[ShutdownReport] = []
    started = asyncio.Event()

    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(2)
        await queue.start()

        async def job() -> None:
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                reports.append(await queue.stop())  # a cleanup step
                raise

        handle = await queue.submit(job, task_id="job")
        await started.wait()
        stop_began = loop.time()
        report = await queue.stop("cancel", grace=5)
        stop_took = loop.time() - stop_began
        await until(lambda: len(reports) == 1)

        assert report.interrupted == (handle,)
        assert report.abandoned == ()
        assert stop_took < 5
        assert reports == [report]
        assert handle.state is TaskState.CANCELLED

    run_virtual(main)


class FailOnLostWorker(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "cancelled from outside the queue" in record.getMessage():
            raise RuntimeError("log filter failed")
        return True


async def test_lost_worker_log_failure_retrieved() -> None:
    """A worker whose task cancelled it exits without an unretrieved error.

    Wrong: the warning about the lost worker is logged without a guard.
    When a logging filter raises on it, the worker's asyncio task ends
    with the filter's error instead of its cancellation. The queue has
    already dropped the worker, so nothing retrieves that error, and
    asyncio reports "Task exception was never retrieved".
    """
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
    log_filter = FailOnLostWorker()
    logging.getLogger("async_queue").addFilter(log_filter)
    try:
        async with AsyncTaskQueue(1) as queue:
            await lose_only_worker(queue)

            async def job() -> str:
                return "ran"

            assert await (await queue.submit(job)) == "ran"

        gc.collect()
        await settle()

        assert reported == []
    finally:
        logging.getLogger("async_queue").removeFilter(log_filter)
        loop.set_exception_handler(None)


# stop() called from another event loop


async def test_second_stop_from_other_loop_rejected() -> None:
    """A second stop() from another thread's event loop is rejected.

    Wrong: the first stop() checks the loop and raises QueueStateError,
    but a later call skips that check. stop("cancel") from another loop
    then escalates the drain from that thread, cancelling the running
    task, and fails with asyncio's error about a future attached to a
    different loop.
    """
    gate = Gate()
    queue = AsyncTaskQueue(1)
    await queue.start()
    try:
        handle = await queue.submit(gate, task_id="running")
        await gate.started.wait()
        drain = asyncio.create_task(queue.stop("drain"))
        await until(lambda: bool(queue._watchers))  # the drain waits

        def stop_from_other_loop() -> Exception | None:
            try:
                asyncio.run(queue.stop("cancel"))
            except Exception as error:  # returned to the test
                return error
            return None

        error = await asyncio.to_thread(stop_from_other_loop)
        gate.release.set()
        report = await drain

        assert isinstance(error, QueueStateError)
        assert report.escalated is False
        assert handle.state is TaskState.SUCCEEDED
    finally:
        gate.release.set()
        await queue.stop("cancel")


# Lost workers replaced by a wait, under asyncio.eager_task_factory


async def lose_worker_behind(queue: AsyncTaskQueue) -> TaskHandle[str]:
    """Lose the queue's only worker, and return a task left pending."""
    go = asyncio.Event()

    async def cancel_own_worker() -> None:
        await go.wait()
        current = asyncio.current_task()
        assert current is not None
        current.cancel()  # what a task must not do: its worker exits
        await asyncio.sleep(0)

    async def quick() -> str:
        return "quick"

    await queue.submit(cancel_own_worker, task_id="lost")
    pending = await queue.submit(quick, task_id="pending")
    go.set()
    await until(lambda: queue._lost_workers == 1)
    assert pending.state is TaskState.PENDING
    return pending


async def settles_with_eager_workers(
    make_wait: Callable[[AsyncTaskQueue, TaskHandle[str]], Awaitable[object]],
    max_pending: int | None = None,
) -> None:
    """Check that a wait which starts the replacement workers ends."""
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    queue = AsyncTaskQueue(1, max_pending=max_pending)
    waiter: asyncio.Task[object] | None = None
    try:
        await queue.start()
        pending = await lose_worker_behind(queue)

        async def wait() -> object:
            return await make_wait(queue, pending)

        waiter = loop.create_task(wait())
        await until(pending.done)
        for _ in range(50):
            if waiter.done():
                break
            await asyncio.sleep(0)

        assert pending.state is TaskState.SUCCEEDED
        assert waiter.done()
        assert waiter.exception() is None
    finally:
        loop.set_task_factory(None)
        if waiter is not None:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        await queue.stop("cancel")


EAGER = pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks need 3.12")


@EAGER
async def test_await_replacing_workers_eager() -> None:
    """Awaiting a handle starts the lost worker's replacement.

    Wrong: under an eager task factory the new worker runs the awaited
    task to its end inside the await, before the await adds its waiter.
    The waiter is then added to a final task and never set: the await
    hangs although the task has succeeded.
    """

    async def await_pending(queue: AsyncTaskQueue, pending: TaskHandle[str]) -> str:
        return await pending

    await settles_with_eager_workers(await_pending)


@EAGER
async def test_join_replacing_workers_eager() -> None:
    """join() starts the lost worker's replacement.

    Wrong: join() counts the unfinished tasks, then starts the new worker,
    which under an eager task factory finishes the pending task at once.
    The join is registered after that and waits for a task that no longer
    counts down: it hangs with every task final.
    """

    async def join(queue: AsyncTaskQueue, pending: TaskHandle[str]) -> None:
        await queue.join()

    await settles_with_eager_workers(join)


@EAGER
async def test_submit_for_room_replacing_workers_eager() -> None:
    """await submit() on a full queue starts the lost worker's replacement.

    Wrong: under an eager task factory the new worker takes the pending
    task, and so frees the room, before the submitter joins the line of
    waiters. No later event wakes it: the submission waits for good on an
    empty queue.
    """

    async def submit(queue: AsyncTaskQueue, pending: TaskHandle[str]) -> str:
        async def more() -> str:
            return "more"

        return await (await queue.submit(more))

    await settles_with_eager_workers(submit, max_pending=1)


@EAGER
async def test_resize_inside_resize_keeps_bound_eager() -> None:
    """A task that resize() starts at once may resize the pool itself.

    Wrong: under an eager task factory, resize(3) starts its first new
    worker inside the call, and that worker runs a task that calls
    resize(1). The outer call then still starts the second worker it
    counted before, so two workers stay and run two tasks at once with
    max_workers=1.
    """
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    queue = AsyncTaskQueue(1)
    try:
        await queue.start()
        first = Gate()

        async def shrink() -> None:
            queue.resize(1)

        await queue.submit(first)
        await first.started.wait()
        await queue.submit(shrink, priority=1)
        queue.resize(3)
        first.release.set()
        await queue.join()

        gates = [Gate() for _ in range(3)]
        for gate in gates:
            await queue.submit(gate)
        await settle()

        assert queue.max_workers == 1
        assert queue.stats().running == 1
        assert sum(gate.calls for gate in gates) == 1
        for gate in gates:
            gate.release.set()
    finally:
        loop.set_task_factory(None)
        await queue.stop("cancel")


@EAGER
def test_stop_from_gather_child_eager() -> None:
    """stop("drain") from a gather() child is the parent task's call.

    Wrong: under an eager task factory gather() runs the child before the
    parent awaits it, so the queue finds no link from the parent's worker
    to the child when stop() is called. The drain then waits for the
    parent, which waits for the drain, until the stop's timeout cancels
    the parent.
    """

    async def main(loop: VirtualClockLoop) -> None:
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        queue = AsyncTaskQueue(1)
        await queue.start()

        async def child() -> ShutdownReport:
            return await queue.stop("drain", timeout=60)

        async def parent() -> ShutdownReport:
            (report,) = await asyncio.gather(child())
            return report

        handle = await queue.submit(parent, task_id="parent")
        with contextlib.suppress(TaskCancelledError):
            await handle

        assert handle.state is TaskState.SUCCEEDED
        assert handle.result().escalated is False
        assert handle.result().interrupted == ()

    run_virtual(main)


@EAGER
async def test_gather_of_handle_blocks_eager(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A task that awaits a handle through gather() counts as blocked.

    Wrong: under an eager task factory gather() starts the child that
    awaits the handle before the parent awaits the gather, so the await
    is not counted. The only worker then waits for a task that can never
    start, and the queue logs no warning.
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
        await settle()

        assert queue._blocked_workers() == 1
        assert len(blocked_warnings(caplog)) == 1
    finally:
        loop.set_task_factory(None)
        await queue.stop("cancel")


# Lost workers replaced by submissions from outside a task


async def lose_only_worker(queue: AsyncTaskQueue) -> None:
    """Make the only worker of ``queue`` exit, as a task that cancels it does."""

    async def cancel_own_worker() -> None:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        await asyncio.sleep(0)

    await queue.submit(cancel_own_worker, task_id="lost")
    await until(lambda: queue._lost_workers == 1)


async def settle(iterations: int = 50) -> None:
    for _ in range(iterations):
        await asyncio.sleep(0)


# max_pending and the workers that are idle


@pytest.mark.parametrize("overflow", ["wait", "raise", "drop_newest", "drop_lowest"])
async def test_idle_worker_takes_task_past_delayed(overflow: OverflowName) -> None:
    """A task for an idle worker fits beside delayed tasks at max_pending.

    Wrong: only workers already woken are taken off the count, so an idle
    worker that no submission has woken yet counts for nothing. With one
    delayed task at max_pending=1, a task that the idle worker would start
    at once raises QueueFullError, or is dropped, while the worker idles.
    """
    release = asyncio.Event()
    async with AsyncTaskQueue(1, max_pending=1, overflow=overflow) as queue:
        await until(lambda: len(queue._idle) == 1)  # the worker waits for work
        delayed = await queue.submit(release.wait, delay=3600, task_id="delayed")

        handle = queue.submit_nowait(release.wait, task_id="now")
        await until(lambda: handle.state is not TaskState.PENDING)

        assert handle.state is TaskState.RUNNING
        assert delayed.state is TaskState.DELAYED
        stats = queue.stats()
        assert stats.pending + stats.delayed == 1
        release.set()
        await handle
        await queue.stop("cancel")


# The virtual clock's offset setter


@pytest.mark.parametrize("offset", [float("nan"), float("inf"), 1.0, -1.0])
def test_offset_setter_rejects_bad_value(offset: float) -> None:
    """VirtualClockLoop.offset rejects a value that breaks the clock.

    Wrong: the public setter stores any value, while advance() rejects
    the same mistakes. A NaN offset makes a timer due in an hour fire at
    once, and a smaller offset moves time() backwards, which asyncio's
    timers and the queue's rate limit assume never happens.
    """
    loop = VirtualClockLoop(autojump=None)
    try:
        loop.advance(5)
        with pytest.raises(ValueError, match="offset"):
            loop.offset = offset

        assert loop.offset == 5
    finally:
        loop.close()


@EAGER
async def test_eager_child_awaits_parent_handle() -> None:
    """A child task that waits for its parent's end may await its handle.

    Under an eager task factory the child's first step runs inside the
    parent's step, so it must not count as the parent awaiting itself.
    """
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    children: list[asyncio.Task[str]] = []
    try:
        async with AsyncTaskQueue(1) as queue:

            async def watch(handle: TaskHandle[str]) -> str:
                return await handle

            async def parent() -> str:
                children.append(asyncio.create_task(watch(current_handle())))
                return "done"

            assert await (await queue.submit(parent)) == "done"
            assert await children[0] == "done"
    finally:
        loop.set_task_factory(None)
