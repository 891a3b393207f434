"""Shutdown: stop() modes, deadlines, abandonment, lifecycle errors and join()."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import weakref
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    QueueClosedError,
    QueueStateError,
    RetryPolicy,
    ShutdownMode,
    TaskCancelledError,
    TaskHandle,
    TaskState,
)
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import Gate, until

# The async tests run on asyncio's event loop and on uvloop.
pytestmark = pytest.mark.every_loop

NO_RETRY = RetryPolicy(max_retries=0)
PARKED = RetryPolicy(max_retries=3, base_delay=60, jitter="none")


class Flaky:
    """A coroutine function that fails its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ValueError(f"failure {self.calls}")

        return "done"


class Stubborn:
    """A coroutine function that swallows every ``CancelledError`` it gets."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.swallowed = 0
        self.finished = False

    async def __call__(self) -> str:
        self.started.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.swallowed += 1

        self.finished = True
        return "late"


async def noop() -> None:
    pass


async def double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


def library_tasks() -> list[asyncio.Task[Any]]:
    """Return the unfinished asyncio tasks that the library created."""
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("async_queue")
    ]


async def until_state(handle: TaskHandle[Any], state: TaskState) -> None:
    await until(lambda: handle.state is state)


def assert_stopped_clean(
    queue: AsyncTaskQueue, handles: Iterable[TaskHandle[Any]]
) -> None:
    for handle in handles:
        assert handle.done(), handle

    assert queue.closed
    assert queue.stats().workers == 0
    assert library_tasks() == []


async def started_queue(workers: int, retry: RetryPolicy = NO_RETRY) -> AsyncTaskQueue:
    queue = AsyncTaskQueue(workers, retry=retry)
    await queue.start()
    return queue


async def begin_stop(
    queue: AsyncTaskQueue, *args: Any, **kwargs: Any
) -> asyncio.Task[Any]:
    """Start ``queue.stop()`` in a task and return once the queue is closed."""
    stopping = asyncio.create_task(queue.stop(*args, **kwargs))
    await until(lambda: queue.closed)
    return stopping


# Mode CANCEL, the default


async def test_stop_default_cancels_everything() -> None:
    queue = await started_queue(1)
    running_gate = Gate()
    pending_gate = Gate()
    running = await queue.submit(running_gate)
    await running_gate.started.wait()
    pending = await queue.submit(pending_gate)

    report = await queue.stop()

    assert report.mode is ShutdownMode.CANCEL
    assert report.escalated is False
    assert report.interrupted == (running,)
    assert report.never_started == (pending,)
    assert report.retries_cancelled == ()
    assert report.abandoned == ()
    assert running.state is TaskState.CANCELLED
    assert pending.state is TaskState.CANCELLED
    assert running_gate.cancelled == 1
    assert pending_gate.calls == 0
    assert pending.attempts == 0
    with pytest.raises(TaskCancelledError, match="the queue was stopped"):
        await running

    with pytest.raises(TaskCancelledError, match="the queue was stopped"):
        await pending

    stats = queue.stats()
    assert stats.cancelled == 2
    assert stats.running == 0
    assert stats.pending == 0
    assert_stopped_clean(queue, [running, pending])


async def test_submit_after_stop_raises() -> None:
    queue = await started_queue(1)
    await queue.stop()

    with pytest.raises(QueueClosedError) as caught:
        await queue.submit(noop)

    message = str(caught.value)
    assert "accepts no new tasks" in message
    assert "create a new queue" in message
    with pytest.raises(QueueClosedError):
        queue.submit_nowait(noop)

    assert queue.stats().submitted == 0


async def test_stop_closes_pending_coroutine_object() -> None:
    queue = await started_queue(1)
    gate = Gate()
    await queue.submit(gate)
    await gate.started.wait()
    coroutine = noop()
    handle = await queue.submit(coroutine)

    report = await queue.stop()

    assert report.never_started == (handle,)
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


@pytest.mark.parametrize("mode", ["cancel", "finish_running"])
async def test_stop_cancels_pending_at_call(mode: str) -> None:
    """A task pending when stop() is called never starts, even if a worker frees up.

    The running task is released right before stop(). Under finish_running
    its worker finishes it in the next loop iteration; under cancel, stop()
    interrupts it at the call, as every task that runs then.
    """
    queue = await started_queue(1)
    running_gate = Gate()
    pending_gate = Gate()
    running = await queue.submit(running_gate)
    await running_gate.started.wait()
    pending = await queue.submit(pending_gate)
    assert pending.state is TaskState.PENDING

    running_gate.release.set()
    pending_gate.release.set()
    report = await queue.stop(mode)

    assert pending_gate.calls == 0
    assert pending.state is TaskState.CANCELLED
    assert report.never_started == (pending,)
    if mode == "cancel":
        assert report.interrupted == (running,)
        assert running.state is TaskState.CANCELLED
    else:
        assert report.interrupted == ()
        assert running.result() == "done"
    assert_stopped_clean(queue, [running, pending])


# Mode DRAIN


async def test_drain_runs_pending_and_retries() -> None:
    policy = RetryPolicy(max_retries=3, base_delay=0, jitter="none")
    queue = await started_queue(1, retry=policy)
    gate = Gate()
    first = await queue.submit(gate)
    await gate.started.wait()
    doubled = [await queue.submit(double, value) for value in range(5)]
    flaky = Flaky(failures=2)
    retried = await queue.submit(flaky)

    stopping = await begin_stop(queue, "drain")
    assert all(h.state is TaskState.PENDING for h in doubled)
    gate.release.set()
    report = await stopping

    assert report.mode is ShutdownMode.DRAIN
    assert report.escalated is False
    assert report.dropped == ()
    assert report.interrupted == ()
    assert report.abandoned == ()
    assert first.result() == "done"
    assert [h.result() for h in doubled] == [0, 2, 4, 6, 8]
    assert retried.result() == "done"
    assert retried.attempts == 3
    assert flaky.calls == 3
    assert queue.stats().retries == 2
    assert queue.stats().succeeded == 7
    assert_stopped_clean(queue, [first, *doubled, retried])


def test_drain_waits_out_backoff() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        queue = await started_queue(1, retry=PARKED)
        flaky = Flaky(failures=1)
        handle = await queue.submit(flaky)
        await until(lambda: handle.state is TaskState.WAITING_RETRY)

        stopping = await begin_stop(queue, "drain")
        for _ in range(20):
            await asyncio.sleep(0)

        assert not stopping.done()
        assert handle.state is TaskState.WAITING_RETRY

        loop.advance(60)
        report = await stopping

        assert report.retries_cancelled == ()
        assert handle.result() == "done"
        assert flaky.calls == 2
        assert_stopped_clean(queue, [handle])

    run_virtual(main)


# Mode FINISH_RUNNING


async def test_finish_running_lets_running_end() -> None:
    queue = await started_queue(1)
    running_gate = Gate(result="finished")
    pending_gate = Gate()
    running = await queue.submit(running_gate)
    await running_gate.started.wait()
    pending = await queue.submit(pending_gate)

    stopping = await begin_stop(queue, "finish_running")
    await until(pending.done)
    assert pending.state is TaskState.CANCELLED
    assert running.state is TaskState.RUNNING
    assert not stopping.done()

    running_gate.release.set()
    report = await stopping

    assert report.mode is ShutdownMode.FINISH_RUNNING
    assert report.escalated is False
    assert report.never_started == (pending,)
    assert report.interrupted == ()
    assert report.abandoned == ()
    assert await running == "finished"
    assert running_gate.cancelled == 0
    assert pending_gate.calls == 0
    assert_stopped_clean(queue, [running, pending])


async def test_finish_running_does_not_retry() -> None:
    queue = await started_queue(1, retry=RetryPolicy(max_retries=3, base_delay=0))
    started = asyncio.Event()
    release = asyncio.Event()

    async def fails_later() -> None:
        started.set()
        await release.wait()
        raise ValueError("failed during the stop")

    handle = await queue.submit(fails_later)
    await started.wait()
    stopping = await begin_stop(queue, "finish_running")
    release.set()
    report = await stopping

    assert handle.state is TaskState.FAILED
    assert handle.attempts == 1
    assert report.dropped == ()
    with pytest.raises(ValueError, match="failed during the stop"):
        await handle


@pytest.mark.parametrize("mode", ["finish_running", "cancel"])
async def test_stop_lists_cancelled_retries(mode: str) -> None:
    queue = await started_queue(1, retry=PARKED)
    flaky = Flaky(failures=1)
    waiting = await queue.submit(flaky)
    await until(lambda: waiting.state is TaskState.WAITING_RETRY)
    assert queue.stats().waiting_retry == 1

    report = await queue.stop(mode)

    assert report.retries_cancelled == (waiting,)
    assert report.never_started == ()
    assert waiting.state is TaskState.CANCELLED
    assert waiting.attempts == 1
    assert flaky.calls == 1
    assert queue.stats().waiting_retry == 0
    assert_stopped_clean(queue, [waiting])


# Deadline and grace


async def test_drain_deadline_escalates() -> None:
    queue = await started_queue(1)
    forever = Gate()
    blocked = await queue.submit(forever)
    await forever.started.wait()
    behind = await queue.submit(Gate())

    report = await queue.stop("drain", timeout=0.01)

    assert report.mode is ShutdownMode.DRAIN
    assert report.escalated is True
    assert report.interrupted == (blocked,)
    assert report.never_started == (behind,)
    assert report.abandoned == ()
    assert blocked.state is TaskState.CANCELLED
    assert forever.cancelled == 1
    assert_stopped_clean(queue, [blocked, behind])


async def test_finish_running_deadline_escalates() -> None:
    queue = await started_queue(1)
    forever = Gate()
    blocked = await queue.submit(forever)
    await forever.started.wait()

    report = await queue.stop("finish_running", timeout=0.01)

    assert report.escalated is True
    assert report.interrupted == (blocked,)
    assert blocked.state is TaskState.CANCELLED
    assert_stopped_clean(queue, [blocked])


async def test_stop_abandons_stubborn_task() -> None:
    queue = await started_queue(1)
    stubborn = Stubborn()
    handle = await queue.submit(stubborn)
    await stubborn.started.wait()
    behind = await queue.submit(noop)

    try:
        # The timeout only turns a hang into a failure. The stop itself must
        # return soon after the 0.05 s grace period.
        report = await asyncio.wait_for(queue.stop(grace=0.05), timeout=2)

        assert report.abandoned == (handle,)
        assert report.interrupted == (handle,)
        assert report.never_started == (behind,)
        assert handle.state is TaskState.CANCELLED
        assert handle.done()
        assert stubborn.swallowed == 1
        assert not stubborn.finished
        assert queue.stats().running == 0
        assert "running=0" in repr(queue)
        with pytest.raises(TaskCancelledError):
            await handle
    finally:
        stubborn.release.set()
        leftover = library_tasks()
        await asyncio.gather(*leftover)

    assert len(leftover) == 1
    assert stubborn.finished
    assert handle.state is TaskState.CANCELLED
    assert queue.stats().cancelled == 2
    assert queue.stats().running == 0
    assert_stopped_clean(queue, [handle, behind])


@pytest.mark.parametrize("base_delay", [0, 60])
async def test_drain_stop_releases_queue(
    base_delay: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After stop(), no timer or task on the loop keeps the queue alive.

    With a zero delay the retry runs and succeeds. With a 60 s delay the task
    is cancelled while it waits out its backoff, before the drain.
    """
    # A captured log record keeps the retried error, whose traceback refers to
    # the worker's frame and so to the queue.
    monkeypatch.setattr(logging.getLogger("async_queue"), "disabled", True)
    policy = RetryPolicy(max_retries=1, base_delay=base_delay, jitter="none")
    queue = await started_queue(1, retry=policy)
    handle = await queue.submit(Flaky(failures=1))
    if base_delay:
        await until_state(handle, TaskState.WAITING_RETRY)
        handle.cancel()

    await queue.stop("drain")
    assert handle.done()
    queue_ref = weakref.ref(queue)
    del queue, handle
    gc.collect()

    assert queue_ref() is None


# Idempotence and lifecycle


async def test_concurrent_stops_share_report() -> None:
    queue = await started_queue(1)
    gate = Gate()
    await queue.submit(gate)
    await gate.started.wait()

    reports = await asyncio.gather(
        queue.stop(), queue.stop("drain"), queue.stop("finish_running")
    )

    assert reports[0] is reports[1]
    assert reports[0] is reports[2]
    assert reports[0].mode is ShutdownMode.CANCEL
    assert await queue.stop("drain") is reports[0]
    assert gate.cancelled == 1


async def test_cancelled_stop_caller_keeps_shutdown() -> None:
    queue = await started_queue(1)
    started = asyncio.Event()
    cleanup_started = asyncio.Event()
    cleanup_release = asyncio.Event()

    async def slow_cleanup() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleanup_started.set()
            await cleanup_release.wait()

    handle = await queue.submit(slow_cleanup)
    await started.wait()
    first = await begin_stop(queue)
    second = asyncio.create_task(queue.stop())
    await cleanup_started.wait()

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first

    cleanup_release.set()
    report = await second

    assert report.interrupted == (handle,)
    assert handle.state is TaskState.CANCELLED
    assert await queue.stop() is report
    assert_stopped_clean(queue, [handle])


async def test_stop_before_start() -> None:
    queue = AsyncTaskQueue(2)
    report = await queue.stop()

    assert report.mode is ShutdownMode.CANCEL
    assert report.escalated is False
    assert report.never_started == ()
    assert report.retries_cancelled == ()
    assert report.interrupted == ()
    assert report.abandoned == ()
    assert queue.closed
    assert await queue.stop() is report
    with pytest.raises(QueueStateError, match="create a new AsyncTaskQueue"):
        await queue.start()

    with pytest.raises(QueueClosedError):
        await queue.submit(noop)

    assert queue.stats().workers == 0
    assert library_tasks() == []


async def test_start_twice_raises() -> None:
    queue = await started_queue(2)
    try:
        with pytest.raises(QueueStateError, match="running") as caught:
            await queue.start()

        assert not isinstance(caught.value, QueueClosedError)
        assert queue.stats().workers == 2
    finally:
        await queue.stop()


async def test_start_after_stop_raises() -> None:
    queue = await started_queue(1)
    await queue.stop()

    with pytest.raises(QueueStateError, match="stopped"):
        await queue.start()

    assert queue.stats().workers == 0


async def test_submit_before_start_raises() -> None:
    queue = AsyncTaskQueue(1)

    with pytest.raises(QueueStateError) as caught:
        await queue.submit(noop)

    assert not isinstance(caught.value, QueueClosedError)
    assert "start()" in str(caught.value)
    assert "async with" in str(caught.value)
    with pytest.raises(QueueStateError, match="has not been started"):
        queue.submit_nowait(noop)

    assert queue.stats().submitted == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"mode": "bogus"}, "mode must be"),
        ({"timeout": -1}, "timeout"),
        ({"grace": -1}, "grace"),
    ],
)
async def test_stop_invalid_argument_keeps_queue(
    arguments: dict[str, Any], message: str
) -> None:
    queue = await started_queue(1)
    with pytest.raises(ValueError, match=message):
        await queue.stop(**arguments)

    assert not queue.closed
    handle = await queue.submit(double, 3)
    assert await handle == 6
    await queue.stop()


async def test_second_stop_from_other_loop_rejected() -> None:
    """A second stop() from another thread's event loop raises QueueStateError.

    The drain that the first stop() started goes on without escalating, and
    the running task succeeds.
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


# async with


async def test_context_exit_drains() -> None:
    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        handles = [await queue.submit(double, value) for value in range(10)]
        assert all(h.state is TaskState.PENDING for h in handles)

    assert [h.result() for h in handles] == [2 * value for value in range(10)]
    assert queue.stats().succeeded == 10
    assert_stopped_clean(queue, handles)


async def test_context_error_cancels() -> None:
    running_gate = Gate()
    pending_gate = Gate()
    with pytest.raises(LookupError, match="the block failed"):
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            running = await queue.submit(running_gate)
            await running_gate.started.wait()
            pending = await queue.submit(pending_gate)
            raise LookupError("the block failed")

    assert running.state is TaskState.CANCELLED
    assert pending.state is TaskState.CANCELLED
    assert running_gate.cancelled == 1
    assert pending_gate.calls == 0
    assert_stopped_clean(queue, [running, pending])


def test_context_exit_stop_timeout() -> None:
    # Without stop_timeout, the exit would wait the whole hour of this task.
    async def hang() -> None:
        await asyncio.sleep(3600)

    async def main(loop: VirtualClockLoop) -> None:
        begin = loop.time()
        async with AsyncTaskQueue(2, retry=NO_RETRY, stop_timeout=10) as queue:
            hung = await queue.submit(hang)
            quick = await queue.submit(double, 4)

        assert loop.time() - begin == 10
        assert await quick == 8
        assert hung.state is TaskState.CANCELLED
        report = queue.report
        assert report is not None
        assert report.escalated
        assert report.interrupted == (hung,)

    run_virtual(main)


@pytest.mark.parametrize("value", [0, -1, float("nan"), "10"])
def test_stop_timeout_rejected(value: object) -> None:
    with pytest.raises((TypeError, ValueError), match="stop_timeout must be"):
        AsyncTaskQueue(stop_timeout=value)  # type: ignore[arg-type]


# join()


async def test_join_ignores_later_tasks() -> None:
    queue = await started_queue(2)
    early_gate = Gate()
    blocker = Gate()
    early = await queue.submit(early_gate)
    join_registered = asyncio.Event()

    async def join() -> None:
        join_registered.set()
        await queue.join()

    joiner = asyncio.create_task(join())
    await join_registered.wait()
    late = await queue.submit(blocker)
    await blocker.started.wait()
    await early_gate.started.wait()
    assert not joiner.done()

    early_gate.release.set()
    await early
    # until() fails after a bounded number of loop iterations, so a join that
    # also waits for the late task fails the test instead of hanging it.
    await until(joiner.done, 100)
    await joiner

    assert early.state is TaskState.SUCCEEDED
    assert late.state is TaskState.RUNNING

    blocker.release.set()
    await queue.join()
    assert late.state is TaskState.SUCCEEDED
    await queue.stop()
    assert_stopped_clean(queue, [early, late])


async def test_join_when_idle_returns() -> None:
    async with AsyncTaskQueue(1) as queue:
        await queue.join()
        handle = await queue.submit(double, 4)
        await queue.join()
        assert handle.result() == 8


@pytest.mark.parametrize("method", ["join", "wait_idle"])
async def test_cancelled_join_leaves_tasks(method: str) -> None:
    queue = await started_queue(1)
    gate = Gate()
    handle = await queue.submit(gate)
    await gate.started.wait()
    joiner = asyncio.create_task(getattr(queue, method)())
    await until(lambda: len(queue._joins) == 1)

    joiner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await joiner

    assert queue._joins == []
    assert handle.state is TaskState.RUNNING
    assert gate.cancelled == 0

    gate.release.set()
    await queue.join()
    assert handle.result() == "done"
    await queue.stop()


# Submitting while the queue stops


async def test_submit_from_task_during_drain() -> None:
    queue = await started_queue(1)
    started = asyncio.Event()
    release = asyncio.Event()
    errors: list[QueueClosedError] = []

    async def spawner() -> str:
        started.set()
        await release.wait()
        try:
            await queue.submit(noop)
        except QueueClosedError as exc:
            errors.append(exc)
            return "closed"

        return "submitted"

    handle = await queue.submit(spawner)
    await started.wait()
    stopping = await begin_stop(queue, "drain")
    release.set()
    report = await stopping

    assert handle.result() == "closed"
    assert len(errors) == 1
    assert report.dropped == ()
    assert queue.stats().submitted == 1
    assert_stopped_clean(queue, [handle])


async def test_submit_from_cleanup_during_cancel() -> None:
    queue = await started_queue(1)
    started = asyncio.Event()
    errors: list[QueueClosedError] = []

    async def spawner() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            try:
                queue.submit_nowait(noop)
            except QueueClosedError as exc:
                errors.append(exc)

            raise

    handle = await queue.submit(spawner)
    await started.wait()
    report = await queue.stop()

    assert report.interrupted == (handle,)
    assert len(errors) == 1
    assert queue.stats().submitted == 1
    assert_stopped_clean(queue, [handle])


# Every mode leaves nothing behind


@pytest.mark.parametrize("mode", list(ShutdownMode))
async def test_stop_leaves_nothing_behind(mode: ShutdownMode) -> None:
    queue = await started_queue(2)
    gates = [Gate(result=index) for index in range(2)]
    handles = [await queue.submit(gate) for gate in gates]
    for gate in gates:
        await gate.started.wait()

    handles += [await queue.submit(double, value) for value in range(4)]

    async def failing() -> None:
        raise ValueError("fails on purpose")

    handles.append(await queue.submit(failing))
    stopping = await begin_stop(queue, mode)
    for gate in gates:
        gate.release.set()

    report = await stopping

    assert report.mode is mode
    assert report.abandoned == ()
    assert_stopped_clean(queue, handles)
    stats = queue.stats()
    assert stats.pending == 0
    assert stats.running == 0
    assert stats.waiting_retry == 0
    final = stats.succeeded + stats.failed + stats.cancelled
    assert final == len(handles)


# Property: the report accounts for every task exactly


async def _stop_scenario(
    mode: ShutdownMode,
    workers: int,
    settle_steps: int,
    released_before: list[bool],
) -> None:
    queue = await started_queue(workers)
    gates = [Gate(result=index) for index in range(len(released_before))]
    handles = [await queue.submit(gate) for gate in gates]
    for _ in range(settle_steps):
        await asyncio.sleep(0)

    pending_at_stop = {h for h in handles if h.state is TaskState.PENDING}
    running_at_stop = {h for h in handles if h.state is TaskState.RUNNING}
    released = set()
    for handle, gate, release in zip(handles, gates, released_before, strict=True):
        if release:
            gate.release.set()
            released.add(handle)

    async def release_all_when_closed() -> None:
        await until(lambda: queue.closed)
        for gate in gates:
            gate.release.set()

    # stop() is called right here, not in a new task, so that the snapshot
    # above is the state at the call. The tasks released just before it may
    # finish, but their workers must not start a pending task.
    releaser = asyncio.create_task(release_all_when_closed())
    report = await queue.stop(mode)
    await releaser

    assert report.mode is mode
    assert report.escalated is False
    assert report.abandoned == ()
    assert report.retries_cancelled == ()
    assert_stopped_clean(queue, handles)
    for handle, gate in zip(handles, gates, strict=True):
        assert gate.calls == handle.attempts

    if mode is ShutdownMode.DRAIN:
        assert report.dropped == ()
        assert report.interrupted == ()
        assert all(h.result() == i for i, h in enumerate(handles))
        return

    assert set(report.never_started) == pending_at_stop
    for handle in report.never_started:
        assert handle.attempts == 0
        assert handle.state is TaskState.CANCELLED

    if mode is ShutdownMode.FINISH_RUNNING:
        expected_interrupted: set[TaskHandle[Any]] = set()
    else:
        # Cancel mode interrupts every task that runs at the call, even one
        # released just before it.
        expected_interrupted = running_at_stop

    assert set(report.interrupted) == expected_interrupted
    for handle in running_at_stop - expected_interrupted:
        assert handle.state is TaskState.SUCCEEDED

    for handle in expected_interrupted:
        assert handle.state is TaskState.CANCELLED

    stats = queue.stats()
    assert stats.cancelled == len(pending_at_stop) + len(expected_interrupted)
    assert stats.succeeded == len(running_at_stop - expected_interrupted)


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from(list(ShutdownMode)),
    st.integers(1, 3),
    st.integers(0, 3),
    st.lists(st.booleans(), max_size=8),
)
def test_stop_report_accounts_for_tasks(
    mode: ShutdownMode, workers: int, settle_steps: int, released_before: list[bool]
) -> None:
    asyncio.run(_stop_scenario(mode, workers, settle_steps, released_before))


@pytest.mark.parametrize("first_mode", ["drain", "finish_running"])
async def test_later_cancel_escalates_stop(first_mode: str) -> None:
    """A stop("cancel") during a graceful stop cancels what still runs."""
    queue = await started_queue(1)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    handle = await queue.submit(hang)
    await started.wait()
    graceful = await begin_stop(queue, first_mode)
    report = await queue.stop("cancel")

    assert await graceful is report
    assert report.mode is ShutdownMode(first_mode)
    assert report.escalated is True
    assert report.interrupted == (handle,)
    assert handle.state is TaskState.CANCELLED
    assert_stopped_clean(queue, [handle])


async def test_later_graceful_stop_does_not_escalate() -> None:
    queue = await started_queue(1)
    release = asyncio.Event()

    async def finishes() -> str:
        await release.wait()
        return "finished"

    handle = await queue.submit(finishes)
    await until(lambda: queue.stats().running == 1)
    first = await begin_stop(queue, "finish_running")
    second = asyncio.create_task(queue.stop("drain"))
    release.set()
    report = await first

    assert await second is report
    assert report.escalated is False
    assert await handle == "finished"


async def test_report_after_async_with() -> None:
    async def job() -> int:
        return 1

    async with AsyncTaskQueue(1) as queue:
        assert queue.report is None
        await queue.submit(job)

    report = queue.report
    assert report is not None
    assert report.mode is ShutdownMode.DRAIN
    assert await queue.stop() is report


@pytest.mark.parametrize("name", ["DRAIN", "Drain", "drain"])
async def test_mode_name_any_case(name: str) -> None:
    queue = await started_queue(1)
    report = await queue.stop(name)

    assert report.mode is ShutdownMode.DRAIN
