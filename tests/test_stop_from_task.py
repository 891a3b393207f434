"""A task that stops or joins its own queue, directly or through child tasks,
a task that cancels its own worker, a hook that calls stop() again while
stop() runs, and the waits, resize() and stop() calls that start workers or
child tasks under an eager task factory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from async_queue import (
    AsyncTaskQueue,
    RetryPolicy,
    ShutdownMode,
    ShutdownReport,
    TaskCancelledError,
    TaskEvent,
    TaskHandle,
    TaskState,
    current_handle,
)
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import EAGER, Gate, settle, until

NO_RETRY = RetryPolicy(max_retries=0)
RETRY_TWICE = RetryPolicy(max_retries=2, base_delay=0.0, jitter="none")

Call = Callable[[AsyncTaskQueue], Awaitable[Any]]

# How a task calls stop() or join() of its own queue: directly, or from a
# child asyncio task that it awaits.
CALLS: dict[str, Call] = {
    "stop": lambda queue: queue.stop("drain"),
    "stop in gather": lambda queue: asyncio.gather(queue.stop("drain")),
    "stop in create_task": lambda queue: asyncio.create_task(queue.stop("drain")),
    "join": lambda queue: queue.join(),
    "join in gather": lambda queue: asyncio.gather(queue.join()),
    "join in create_task": lambda queue: asyncio.create_task(queue.join()),
}


@pytest.mark.parametrize("route", list(CALLS))
async def test_own_stop_or_join_returns(route: str) -> None:
    """The call does not wait for the task that made it."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    other_started = asyncio.Event()
    release = asyncio.Event()

    async def other() -> str:
        other_started.set()
        await release.wait()
        return "other"

    async def caller() -> str:
        await other_started.wait()
        release.set()
        await CALLS[route](queue)
        return "returned"

    first = await queue.submit(other)
    handle = await queue.submit(caller)

    assert await handle == "returned"
    assert await first == "other"
    await queue.stop()
    assert queue.stats().succeeded == 2


async def test_await_own_handle_in_gather_raises() -> None:
    """Awaiting its own handle through gather() fails the task at once."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    holder: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def awaits_itself() -> object:
        own = await holder
        return await asyncio.gather(own)

    handle = await queue.submit(awaits_itself)
    holder.set_result(handle)
    await until(handle.done)
    await queue.stop()

    error = handle.exception()
    assert isinstance(error, RuntimeError)
    assert (
        str(error)
        == "task 1 cannot await its own handle: it would wait for itself forever"
    )


async def fail_after_stop(queue: AsyncTaskQueue) -> None:
    await queue.stop("drain")
    raise ConnectionError("failed after the stop")


async def test_stop_caller_failing_later_fails() -> None:
    """A task that fails after its own stop() returned has no retry left."""
    queue = AsyncTaskQueue(2, retry=RETRY_TWICE)
    await queue.start()
    handle = await queue.submit(fail_after_stop, queue)

    with pytest.raises(ConnectionError, match="failed after the stop"):
        await handle

    stats = queue.stats()
    assert handle.state is TaskState.FAILED
    assert handle.attempts == 1
    assert (stats.pending, stats.waiting_retry, stats.failed) == (0, 0, 1)
    assert [letter.task_id for letter in queue.dead_letters()] == [1]


def test_stop_caller_timed_out_in_drain_retries() -> None:
    """A task whose own timeout ends its wait for the drain is retried first."""

    async def waits_for_stop(queue: AsyncTaskQueue) -> None:
        await queue.stop("drain")

    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(2, retry=RETRY_TWICE)
        await queue.start()
        blocker = await queue.submit(asyncio.sleep, 10.0)
        handle = await queue.submit(waits_for_stop, queue, timeout=1.0)
        await until(lambda: queue.stats().running == 2)

        report = await queue.stop("drain")

        assert blocker.state is TaskState.SUCCEEDED
        assert handle.state is TaskState.FAILED
        assert handle.attempts == 3
        assert isinstance(handle.exception(), TimeoutError)
        assert report.never_started == report.interrupted == ()
        assert queue.stats().waiting_retry == 0

    run_virtual(main)


def test_stop_caller_keeps_own_timeout() -> None:
    """The timeout of a task that called stop() still applies once it returns."""

    async def stops_then_hangs(queue: AsyncTaskQueue) -> None:
        await queue.stop("drain")
        await asyncio.sleep(3600)

    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(1, retry=RETRY_TWICE)
        await queue.start()
        started = loop.time()
        handle = await queue.submit(stops_then_hangs, queue, timeout=5.0)

        with pytest.raises(TimeoutError):
            await handle

        assert loop.time() - started == pytest.approx(5.0, abs=0.1)
        assert handle.attempts == 1
        assert queue._watchdog is None

    run_virtual(main)


async def cancels_own_worker() -> None:
    current = asyncio.current_task()
    assert current is not None
    current.cancel()
    await asyncio.sleep(0)


async def returns_done() -> str:
    return "done"


async def test_cancelled_worker_replaced_on_submit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A task that cancels its worker ends CANCELLED; the next submission
    starts a worker in its place."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    with caplog.at_level(logging.WARNING, logger="async_queue"):
        handles = [await queue.submit(cancels_own_worker) for _ in range(2)]
        await until(lambda: queue.stats().workers == 0)

    assert [h.state for h in handles] == [TaskState.CANCELLED] * 2
    assert len(caplog.records) == 2
    assert "was cancelled from outside the queue while it ran task 1" in (
        caplog.records[0].getMessage()
    )

    later = await queue.submit(returns_done)

    assert queue.stats().workers == 2
    assert await later == "done"
    await queue.stop()


async def lose_every_worker(queue: AsyncTaskQueue, count: int) -> list[Any]:
    """Queue ``count`` tasks behind tasks that cancel every worker."""
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    async def cancels_after_gate() -> None:
        await gate
        await cancels_own_worker()

    workers = queue.max_workers
    for _ in range(workers):
        await queue.submit(cancels_after_gate)
    later = [await queue.submit(returns_done) for _ in range(count)]
    await until(lambda: queue.stats().running == workers)
    gate.set_result(None)
    await until(lambda: queue.stats().workers == 0)
    return later


@pytest.mark.parametrize("wait", ["join", "await", "drain"])
async def test_lost_workers_replaced_on_wait(
    wait: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Waiting for queued tasks starts workers in place of the lost ones."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    with caplog.at_level(logging.ERROR, logger="async_queue"):
        later = await lose_every_worker(queue, 3)

    assert [h.state for h in later] == [TaskState.PENDING] * 3
    if wait == "join":
        await queue.join()
    elif wait == "await":
        assert await later[-1] == "done"
    else:
        await queue.stop("drain")

    assert queue.stats().succeeded == 3
    assert [await h for h in later] == ["done"] * 3
    await queue.stop()


async def test_idle_worker_cancelled_leaves_pool() -> None:
    """An idle worker cancelled from outside leaves the pool. Only code that
    cancels every task does that, the loop closing among them, so nothing
    replaces it but resize()."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    await until(lambda: len(queue._idle) == 1)
    worker_task = queue._workers[0].task
    assert worker_task is not None

    worker_task.cancel()
    await until(worker_task.done)
    handle = await queue.submit(returns_done)
    await asyncio.sleep(0)

    assert queue.stats().workers == 0
    assert handle.state is TaskState.PENDING

    queue.resize(1)

    assert await handle == "done"
    assert queue.stats().workers == 1
    await queue.stop()


def test_loop_end_starts_no_worker(caplog: pytest.LogCaptureFixture) -> None:
    """Tasks that submit while asyncio.run() cancels them start no worker
    that would outlive the loop."""
    follow_ups: list[Any] = []

    async def main() -> None:
        queue = AsyncTaskQueue(2, retry=NO_RETRY)
        await queue.start()
        both_started = asyncio.Barrier(3)

        async def job() -> None:
            try:
                await both_started.wait()
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                follow_ups.append(queue.submit_nowait(returns_done))
                raise

        queue.submit_nowait(job)
        queue.submit_nowait(job)
        await both_started.wait()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
        gc.collect()

    assert [h.state for h in follow_ups] == [TaskState.PENDING] * 2
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_closed_worker_coroutine_ends() -> None:
    """Closing a worker's coroutine, as the collector does once its loop is
    gone, ends the worker instead of starting the next task."""
    started: list[int] = []

    async def job(index: int) -> None:
        started.append(index)
        await asyncio.sleep(3600)

    async def main() -> AsyncTaskQueue:
        queue = AsyncTaskQueue(1, retry=NO_RETRY)
        await queue.start()
        queue.submit_nowait(job, 1)
        queue.submit_nowait(job, 2)
        await until(lambda: started == [1])
        return queue

    loop = asyncio.new_event_loop()
    queue = loop.run_until_complete(main())
    loop.close()
    worker_task = queue._workers[0].task
    assert worker_task is not None

    worker_task.get_coro().close()  # type: ignore[union-attr]

    assert started == [1]
    assert queue.task(2).state is TaskState.PENDING
    worker_task._log_destroy_pending = False  # type: ignore[attr-defined]


async def test_two_tasks_calling_stop_return() -> None:
    """Every task that calls stop("drain") gets its report."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    both = asyncio.Barrier(2)

    async def stops() -> str:
        await both.wait()
        report = await queue.stop("drain")
        return report.mode.value

    handles = [await queue.submit(stops) for _ in range(2)]

    assert [await h for h in handles] == ["drain", "drain"]


async def test_finished_gather_is_no_self_await() -> None:
    """Once a task's gather() has failed, its child waits for it normally,
    even before the task has taken its next step."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[object] = loop.create_future()
    failing = asyncio.Event()

    async def child(own: Any) -> None:
        await failing.wait()
        await asyncio.sleep(0)  # gather() fails in between, before its task steps
        try:
            outcome.set_result(await own)
        except Exception as error:
            outcome.set_result(error)

    async def fails_after_signal() -> None:
        failing.set()
        raise ValueError("gather fails")

    async def parent() -> str:
        waiter = asyncio.create_task(child(queue.task(1)))
        with pytest.raises(ValueError):
            await asyncio.gather(waiter, fails_after_signal())
        return "parent finished"

    handle = await queue.submit(parent)

    assert await handle == "parent finished"
    assert await outcome == "parent finished"
    await queue.stop()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks need 3.12")
async def test_eager_worker_registers_first() -> None:
    """With eager tasks, a worker that resize() starts runs a task before
    create_task() returns; the task's join() still excludes itself."""
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    try:
        queue = AsyncTaskQueue(1, retry=NO_RETRY)
        await queue.start()
        gate = asyncio.Event()

        async def joins() -> str:
            await queue.join()
            return "joined"

        queue.submit_nowait(gate.wait)
        handle = queue.submit_nowait(joins)
        await asyncio.sleep(0)
        queue.resize(2)
        gate.set()
        await until(handle.done)

        assert await handle == "joined"
        await queue.stop()
    finally:
        loop.set_task_factory(None)


async def test_full_queue_submit_replaces_lost_workers() -> None:
    """await submit() on a full queue whose workers are lost starts new
    ones, which free the room it waits for."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_pending=1)
    await queue.start()
    later = await lose_every_worker(queue, 1)

    handle = await queue.submit(returns_done)

    assert await handle == "done"
    assert [await h for h in later] == ["done"]
    await queue.stop()


@pytest.mark.parametrize("call", ["join", "stop"])
async def test_child_made_outside_counts(call: str) -> None:
    """A child task made outside the queue, which a queue task awaits, is
    that task's for stop() and join()."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    awaited = asyncio.Event()

    async def child() -> str:
        await awaited.wait()
        await CALLS[call](queue)
        return f"{call} returned"

    outside = asyncio.create_task(child())

    async def job() -> str:
        awaited.set()
        return await outside

    handle = await queue.submit(job)

    assert await handle == f"{call} returned"
    await queue.stop()


def test_retried_stop_caller_ends_drain() -> None:
    """A stop caller whose attempt timed out is retried, calls stop() again,
    and the drain then ends."""

    async def main(loop: VirtualClockLoop) -> None:
        # The other task ends while the caller waits out its backoff.
        policy = RetryPolicy(max_retries=1, base_delay=0.5, jitter="none")
        queue = AsyncTaskQueue(2, retry=policy)
        await queue.start()
        attempts: list[int] = []

        async def stops() -> str:
            attempts.append(len(attempts) + 1)
            if len(attempts) == 1:
                async with asyncio.timeout(0.05):
                    await queue.stop("drain")
            else:
                await queue.stop("drain")
            return "stopped"

        other = await queue.submit(asyncio.sleep, 0.1)
        handle = await queue.submit(stops)

        assert await handle == "stopped"
        assert attempts == [1, 2]
        assert other.state is TaskState.SUCCEEDED
        assert (await queue.stop()).escalated is False

    run_virtual(main)


def test_cancel_stop_not_waiting_for_stop_callers() -> None:
    """stop("cancel") does not wait for a task that awaits the stop.

    The task's cleanup awaits stop(), so the grace period does not wait for
    it. The stop returns before the grace period ends without abandoning the
    task, and the task then re-raises CancelledError.
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


@EAGER
async def test_await_replacing_workers_eager() -> None:
    """Awaiting a handle starts the lost worker's replacement, and ends.

    Under an eager task factory the new worker runs the awaited task to its
    end inside the await, before the await registers its waiter.
    """

    async def await_pending(queue: AsyncTaskQueue, pending: TaskHandle[str]) -> str:
        return await pending

    await settles_with_eager_workers(await_pending)


@EAGER
async def test_join_replacing_workers_eager() -> None:
    """join() starts the lost worker's replacement, and returns.

    Under an eager task factory the new worker finishes the pending task
    inside join(), before join() registers its wait.
    """

    async def join(queue: AsyncTaskQueue, pending: TaskHandle[str]) -> None:
        await queue.join()

    await settles_with_eager_workers(join)


@EAGER
async def test_submit_for_room_replacing_workers_eager() -> None:
    """await submit() on a full queue starts the lost worker's replacement, and ends.

    Under an eager task factory the new worker takes the pending task, and
    so frees the room, before the submitter joins the waiters for room.
    """

    async def submit(queue: AsyncTaskQueue, pending: TaskHandle[str]) -> str:
        async def more() -> str:
            return "more"

        return await (await queue.submit(more))

    await settles_with_eager_workers(submit, max_pending=1)


# resize(), stop() and handles from tasks under asyncio.eager_task_factory


@EAGER
async def test_resize_inside_resize_keeps_bound_eager() -> None:
    """resize(1) from a task that resize(3) starts leaves one worker running.

    Under an eager task factory resize(3) starts its first new worker inside
    the call, and that worker runs the task that calls resize(1) before the
    outer call starts its second worker.
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
        await settle(50)

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

    Under an eager task factory gather() runs the child before the parent
    awaits it, so no await links the parent's worker to the child yet. The
    drain still returns without waiting for the parent.
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


@EAGER
def test_drain_waits_for_task_beside_stop() -> None:
    """stop("drain") from a background asyncio task waits for the queue's task.

    Under an eager task factory, a running task starts a background
    asyncio task that calls stop("drain"), and goes on for 100 s without
    awaiting it. The task neither awaits the stop nor runs inside it, so the
    drain waits for it: when the stop returns, the task has succeeded.
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


# stop() entered again from a hook


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks need 3.12")
@pytest.mark.parametrize("first_mode", ["finish_running", "cancel"])
async def test_stop_from_on_dropped_eager(first_mode: str) -> None:
    """stop("cancel") started as an eager task from on_dropped joins the first stop.

    stop() emits on_dropped for the queued tasks before it stores its stop
    task, so under asyncio.eager_task_factory the hook's stop() runs inside
    that emission. It waits for the first call's stop task instead of
    starting a second shutdown, and both callers get one report, which lists
    the running task as interrupted.
    """
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    try:
        hook_stops: list[asyncio.Task[ShutdownReport]] = []

        class StopOnDrop:
            def on_dropped(self, event: TaskEvent) -> None:
                if not hook_stops:
                    hook_stops.append(loop.create_task(queue.stop("cancel")))

        queue = AsyncTaskQueue(1, hooks=[StopOnDrop()])
        await queue.start()
        started = asyncio.Event()

        async def job() -> None:
            started.set()
            await asyncio.sleep(3600)

        running = await queue.submit(job, task_id="running")
        pending = await queue.submit(job, task_id="pending")
        await started.wait()

        report = await queue.stop(first_mode)
        hook_report = await hook_stops[0]

        assert running.state is TaskState.CANCELLED
        assert pending.state is TaskState.CANCELLED
        assert report.mode is ShutdownMode(first_mode)
        assert report.never_started == (pending,)
        assert report.interrupted == (running,)
        assert hook_report is report
    finally:
        loop.set_task_factory(None)
