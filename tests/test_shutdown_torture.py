"""stop() against tasks that make shutdown hard, in every mode.

The tasks are backing off, overrunning their timeout, swallowing
``CancelledError``, raising from ``finally``, awaiting each other's handles,
or submitting new tasks. Every test runs on the virtual clock and calls
``stop()`` from several coroutines at once. Each checks that all calls return
the same report, that the stop took no longer than its deadline plus the
grace period on the loop clock, and that every handle ends in the expected
final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from async_queue import (
    AsyncTaskQueue,
    QueueClosedError,
    RetryAfter,
    RetryPolicy,
    ShutdownMode,
    ShutdownReport,
    TaskCancelledError,
    TaskHandle,
    TaskState,
)
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import until

CANCEL = ShutdownMode.CANCEL
DRAIN = ShutdownMode.DRAIN
FINISH_RUNNING = ShutdownMode.FINISH_RUNNING
SUCCEEDED = TaskState.SUCCEEDED
FAILED = TaskState.FAILED
CANCELLED = TaskState.CANCELLED

NO_RETRY = RetryPolicy(max_retries=0)
ONE_RETRY = RetryPolicy(max_retries=1, base_delay=0, jitter="none")

# The clock driver moves the virtual clock by CLOCK_STEP seconds whenever the
# loop has run IDLE_ITERATIONS iterations without the stop ending, so a stop
# may overshoot its limit by up to one step per wait it makes.
CLOCK_STEP = 0.05
# Virtual time starts at the real monotonic time, so a difference of two
# readings can come out short by the rounding of that large base (up to
# 7e-12 s after 9 hours of uptime). Lower bounds on elapsed time allow it.
ROUNDING = 1e-9
IDLE_ITERATIONS = 20
STOP_CALLERS = 3


@pytest.fixture(autouse=True)
def quiet_queue_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    # Abandoned tasks and failures log errors with tracebacks on purpose.
    monkeypatch.setattr(logging.getLogger("async_queue"), "disabled", True)


def library_tasks() -> list[asyncio.Task[Any]]:
    """Return the unfinished asyncio tasks that the library created."""
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("async_queue")
    ]


async def settle() -> None:
    for _ in range(IDLE_ITERATIONS):
        await asyncio.sleep(0)


async def run_for(loop: VirtualClockLoop, seconds: float) -> None:
    """Let ``seconds`` pass on the virtual clock, one step at a time."""
    end = loop.time() + seconds
    while loop.time() < end:
        await settle()
        loop.advance(min(CLOCK_STEP, end - loop.time()))

    await settle()


async def stop_concurrently(
    loop: VirtualClockLoop,
    queue: AsyncTaskQueue,
    mode: ShutdownMode,
    timeout: float | None = None,
    grace: float = 1.0,
) -> tuple[ShutdownReport, float]:
    """Call stop() from several coroutines, moving the clock until all return.

    Returns the report, checked to be the same object for every caller, and
    the virtual seconds from the first call to the last return.
    """
    started_at = loop.time()
    calls = [
        asyncio.ensure_future(queue.stop(mode, timeout=timeout, grace=grace))
        for _ in range(STOP_CALLERS)
    ]
    for _ in range(100_000):
        await settle()
        if all(call.done() for call in calls):
            break

        loop.advance(CLOCK_STEP)
    else:
        raise AssertionError(f"stop({mode.value!r}) did not return")

    elapsed = loop.time() - started_at
    report = calls[0].result()
    for call in calls[1:]:
        assert call.result() is report

    assert await queue.stop() is report
    assert queue.closed
    return report, elapsed


def assert_within_limit(
    elapsed: float, mode: ShutdownMode, timeout: float | None, grace: float
) -> None:
    """Check a stop's duration against its deadline plus the grace period."""
    if timeout is None and mode is not CANCEL:
        return  # a graceful stop without a deadline waits for the work

    limit = (timeout or 0.0) + grace + 2 * CLOCK_STEP
    assert elapsed <= limit, f"stop() took {elapsed:.2f} s, limit {limit:.2f} s"


def assert_all_final(queue: AsyncTaskQueue, handles: list[TaskHandle[Any]]) -> None:
    for handle in handles:
        assert handle.done(), handle

    stats = queue.stats()
    assert stats.pending == 0
    assert stats.running == 0
    assert stats.waiting_retry == 0
    assert stats.succeeded + stats.failed + stats.cancelled == stats.submitted


def run(main: Callable[[VirtualClockLoop], Awaitable[None]]) -> None:
    async def wrapper(loop: VirtualClockLoop) -> None:
        # Debug mode times callbacks with loop.time(), which the tests move.
        loop.slow_callback_duration = float("inf")
        await main(loop)

    run_virtual(wrapper)


class Flaky:
    """A coroutine function that fails its first ``failures`` calls."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error or ValueError(f"failure {self.calls}")

        return "recovered"


async def forever() -> None:
    await asyncio.get_running_loop().create_future()


# Tasks waiting out a backoff


@pytest.mark.parametrize(
    ("mode", "timeout"),
    [(CANCEL, None), (FINISH_RUNNING, None), (DRAIN, None), (DRAIN, 5.0)],
)
def test_stop_during_backoff(mode: ShutdownMode, timeout: float | None) -> None:
    """In a drain, retries due before the deadline run and the others are dropped.

    One task waits out a 2 s RetryAfter, one a 10 s backoff. A drain without
    a deadline runs both retries, and one with a 5 s deadline only the first.
    """

    async def main(loop: VirtualClockLoop) -> None:
        policy = RetryPolicy(max_retries=1, base_delay=10, jitter="none")
        queue = AsyncTaskQueue(2, retry=policy)
        await queue.start()
        short_task = Flaky(1, RetryAfter(2))
        long_task = Flaky(1)
        short = await queue.submit(short_task)
        long = await queue.submit(long_task)
        await until(lambda: queue.stats().waiting_retry == 2)

        report, elapsed = await stop_concurrently(loop, queue, mode, timeout)

        assert_within_limit(elapsed, mode, timeout, 1.0)
        assert_all_final(queue, [short, long])
        assert report.interrupted == ()
        assert report.never_started == ()
        if mode is DRAIN and timeout is None:
            assert (short.result(), long.result()) == ("recovered", "recovered")
            assert 10 - ROUNDING <= elapsed <= 10 + 2 * CLOCK_STEP
            assert report.retries_cancelled == ()
        elif mode is DRAIN:
            assert report.escalated is True
            assert short.result() == "recovered"
            assert long.state is CANCELLED
            assert report.retries_cancelled == (long,)
        else:
            assert (short.state, long.state) == (CANCELLED, CANCELLED)
            assert set(report.retries_cancelled) == {short, long}
            assert elapsed <= 2 * CLOCK_STEP

        assert short_task.calls == short.attempts
        assert long_task.calls == long.attempts

    run(main)


# Tasks that reach their timeout during the stop


@pytest.mark.parametrize(
    ("mode", "timeout", "expected", "attempts"),
    [
        (CANCEL, None, CANCELLED, 1),
        (FINISH_RUNNING, None, FAILED, 1),
        (DRAIN, None, FAILED, 2),
        (DRAIN, 0.5, CANCELLED, 1),
        (FINISH_RUNNING, 0.5, CANCELLED, 1),
    ],
)
def test_timeout_fires_during_stop(
    mode: ShutdownMode, timeout: float | None, expected: TaskState, attempts: int
) -> None:
    """A task whose 2 s timeout falls inside the stop ends as its mode requires.

    A graceful stop lets the timeout fail the attempt, and only a drain
    retries it. A stop that escalates first cancels the attempt instead.
    """

    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(1, retry=ONE_RETRY, timeout=2)
        await queue.start()
        handle = await queue.submit(forever)
        await run_for(loop, 1.0)
        assert handle.state is TaskState.RUNNING

        report, elapsed = await stop_concurrently(loop, queue, mode, timeout)

        assert_within_limit(elapsed, mode, timeout, 1.0)
        assert_all_final(queue, [handle])
        assert handle.state is expected
        assert handle.attempts == attempts
        if expected is FAILED:
            assert isinstance(handle.exception(), TimeoutError)
            assert report.interrupted == ()
        else:
            assert report.interrupted == (handle,)

    run(main)


@pytest.mark.parametrize(
    ("mode", "expected", "attempts"),
    [(CANCEL, CANCELLED, 1), (FINISH_RUNNING, FAILED, 1), (DRAIN, FAILED, 2)],
)
def test_stop_during_timeout_cleanup(
    mode: ShutdownMode, expected: TaskState, attempts: int
) -> None:
    """A stop that arrives while a timed-out attempt cleans up.

    The cleanup takes 3 s. A cancel stop interrupts it, while a graceful stop
    waits for it and the attempt then fails with TimeoutError.
    """

    async def main(loop: VirtualClockLoop) -> None:
        cleanups: list[str] = []

        async def slow_cleanup() -> None:
            try:
                await forever()
            except asyncio.CancelledError:
                try:
                    await asyncio.sleep(3)
                    cleanups.append("finished")
                except asyncio.CancelledError:
                    cleanups.append("interrupted")
                    raise

                raise

        queue = AsyncTaskQueue(1, retry=ONE_RETRY, timeout=2)
        await queue.start()
        handle = await queue.submit(slow_cleanup)
        await run_for(loop, 2.5)
        assert cleanups == []
        assert handle.state is TaskState.RUNNING

        report, elapsed = await stop_concurrently(loop, queue, mode, grace=5)

        assert_within_limit(elapsed, mode, None, 5)
        assert_all_final(queue, [handle])
        assert handle.state is expected
        assert handle.attempts == attempts
        if expected is CANCELLED:
            assert cleanups == ["interrupted"]
            assert report.interrupted == (handle,)
        else:
            assert cleanups == ["finished"] * attempts
            assert isinstance(handle.exception(), TimeoutError)

    run(main)


# Coroutines that swallow CancelledError


class Swallower:
    """A coroutine function that catches ``CancelledError`` and keeps going.

    It swallows every cancellation until ``release`` is set, or, with
    ``swallow`` set, only that many, finishing ``finish_after`` virtual
    seconds after the last.
    """

    def __init__(self, swallow: int | None = None, finish_after: float = 0) -> None:
        self.swallow = swallow
        self.finish_after = finish_after
        self.release = asyncio.Event()
        self.swallowed = 0
        self.finished = False

    async def __call__(self) -> str:
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.swallowed += 1
                if self.swallow is not None and self.swallowed >= self.swallow:
                    await asyncio.sleep(self.finish_after)
                    break

        self.finished = True
        return "finished late"


@pytest.mark.parametrize(
    ("mode", "timeout", "grace"),
    [
        (CANCEL, None, 0.0),
        (CANCEL, None, 2.0),
        (FINISH_RUNNING, 1.0, 2.0),
        (DRAIN, 1.0, 0.5),
        (DRAIN, 3.0, 0.0),
    ],
)
def test_swallower_is_abandoned(
    mode: ShutdownMode, timeout: float | None, grace: float
) -> None:
    """A task that swallows every cancel is abandoned after the grace period.

    The task behind it never starts. Once released, the abandoned coroutine
    ends without changing its state or the counts.
    """

    async def main(loop: VirtualClockLoop) -> None:
        swallower = Swallower()
        try:
            await check_abandoned(loop, swallower, mode, timeout, grace)
        finally:
            # Otherwise a failed check leaves behind a coroutine that no
            # cancel can end, and closing the loop would hang.
            swallower.release.set()

    run(main)


async def check_abandoned(
    loop: VirtualClockLoop,
    swallower: Swallower,
    mode: ShutdownMode,
    timeout: float | None,
    grace: float,
) -> None:
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    stuck = await queue.submit(swallower)
    behind = await queue.submit(forever)
    await until(lambda: queue.stats().running == 1)

    report, elapsed = await stop_concurrently(loop, queue, mode, timeout, grace)

    assert_within_limit(elapsed, mode, timeout, grace)
    if timeout is not None:
        assert elapsed >= timeout + grace - ROUNDING
        assert report.escalated is True

    assert report.abandoned == (stuck,)
    assert report.interrupted == (stuck,)
    assert report.never_started == (behind,)
    assert stuck.state is CANCELLED
    assert swallower.swallowed >= 1
    assert_all_final(queue, [stuck, behind])
    leftover = library_tasks()
    assert len(leftover) == 1

    swallower.release.set()
    await asyncio.gather(*leftover)

    assert swallower.finished
    assert stuck.state is CANCELLED
    assert library_tasks() == []
    stats = queue.stats()
    assert stats.cancelled == 2
    assert stats.succeeded == 0
    assert stats.running == 0


@pytest.mark.parametrize("mode", [CANCEL, FINISH_RUNNING, DRAIN])
def test_swallower_ending_in_grace(mode: ShutdownMode) -> None:
    """A task that swallows the cancel but returns within the grace period.

    It ends CANCELLED, not SUCCEEDED, and is not abandoned. A graceful stop
    reaches it through the escalation at its 1 s deadline.
    """

    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(1, retry=NO_RETRY)
        await queue.start()
        swallower = Swallower(swallow=1, finish_after=1.5)
        handle = await queue.submit(swallower)
        await until(lambda: queue.stats().running == 1)
        timeout = None if mode is CANCEL else 1.0

        report, elapsed = await stop_concurrently(loop, queue, mode, timeout, 3.0)

        assert_within_limit(elapsed, mode, timeout, 3.0)
        assert elapsed >= (timeout or 0.0) + 1.5 - ROUNDING
        assert report.abandoned == ()
        assert report.interrupted == (handle,)
        assert handle.state is CANCELLED
        assert swallower.finished
        assert_all_final(queue, [handle])
        assert library_tasks() == []

    run(main)


# Cleanup that raises


class CleanupError(Exception):
    pass


class CleanupBaseError(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


@pytest.mark.parametrize("error", [CleanupError, CleanupBaseError])
@pytest.mark.parametrize(
    ("mode", "timeout"), [(CANCEL, None), (FINISH_RUNNING, 1.0), (DRAIN, 1.0)]
)
def test_raise_in_finally_on_stop(
    mode: ShutdownMode, timeout: float | None, error: type[BaseException]
) -> None:
    """A cleanup that raises instead of CancelledError still ends CANCELLED."""

    async def main(loop: VirtualClockLoop) -> None:
        async def raises_in_finally() -> None:
            try:
                await forever()
            finally:
                raise error("cleanup failed")

        async def quick() -> str:
            return "quick"

        queue = AsyncTaskQueue(2, retry=NO_RETRY)
        await queue.start()
        raisers = [await queue.submit(raises_in_finally) for _ in range(2)]
        await until(lambda: queue.stats().running == 2)
        behind = await queue.submit(quick)

        report, elapsed = await stop_concurrently(loop, queue, mode, timeout)

        assert_within_limit(elapsed, mode, timeout, 1.0)
        assert_all_final(queue, [*raisers, behind])
        assert [h.state for h in raisers] == [CANCELLED, CANCELLED]
        assert set(report.interrupted) == set(raisers)
        assert report.abandoned == ()
        assert report.never_started == (behind,)
        assert library_tasks() == []

    run(main)


@pytest.mark.parametrize(("mode", "attempts"), [(FINISH_RUNNING, 1), (DRAIN, 2)])
def test_raise_in_finally_on_timeout(mode: ShutdownMode, attempts: int) -> None:
    """A timeout during a graceful stop whose cleanup raises fails the task.

    The task fails with TimeoutError caused by the cleanup's error, and only
    a drain retries it.
    """

    async def main(loop: VirtualClockLoop) -> None:
        async def raises_in_finally() -> None:
            try:
                await forever()
            finally:
                raise CleanupError("cleanup failed")

        queue = AsyncTaskQueue(1, retry=ONE_RETRY, timeout=2)
        await queue.start()
        handle = await queue.submit(raises_in_finally)
        await until(lambda: queue.stats().running == 1)

        report, _ = await stop_concurrently(loop, queue, mode)

        assert handle.state is FAILED
        assert handle.attempts == attempts
        error = handle.exception()
        assert isinstance(error, TimeoutError)
        assert isinstance(error.__cause__, CleanupError)
        assert report.interrupted == ()
        assert_all_final(queue, [handle])

    run(main)


# Tasks that await each other's handles


@pytest.mark.parametrize(
    ("mode", "timeout"),
    [(CANCEL, None), (FINISH_RUNNING, 2.0), (DRAIN, 2.0)],
)
def test_stop_breaks_await_cycle(mode: ShutdownMode, timeout: float | None) -> None:
    """Two running tasks that await each other's handles are both cancelled."""

    async def main(loop: VirtualClockLoop) -> None:
        holder: list[TaskHandle[Any]] = []
        ready = asyncio.Event()

        async def awaits_other(index: int) -> object:
            await ready.wait()
            return await holder[1 - index]

        queue = AsyncTaskQueue(2, retry=NO_RETRY)
        await queue.start()
        holder += [await queue.submit(awaits_other, i) for i in range(2)]
        ready.set()
        await until(lambda: queue.stats().running == 2)

        report, elapsed = await stop_concurrently(loop, queue, mode, timeout)

        assert_within_limit(elapsed, mode, timeout, 1.0)
        assert [h.state for h in holder] == [CANCELLED, CANCELLED]
        assert set(report.interrupted) == set(holder)
        assert report.escalated is (timeout is not None)
        assert_all_final(queue, holder)
        assert library_tasks() == []

    run(main)


@pytest.mark.parametrize(
    ("mode", "timeout", "waiter_state"),
    [
        (CANCEL, None, CANCELLED),
        (FINISH_RUNNING, None, FAILED),
        (DRAIN, 2.0, CANCELLED),
    ],
)
def test_stop_with_task_awaiting_queued_task(
    mode: ShutdownMode, timeout: float | None, waiter_state: TaskState
) -> None:
    """With one worker, the running task awaits the handle of the queued task.

    stop() cancels queued tasks at the call. In cancel mode it interrupts
    the running ones in the same step, so the waiting task gets its own
    cancellation first and ends CANCELLED. In finish-running mode it runs on,
    gets TaskCancelledError from the handle and fails. A drain can never
    finish, and its escalation cancels both tasks in one step, so there the
    waiting task ends CANCELLED.
    """

    async def main(loop: VirtualClockLoop) -> None:
        holder: list[TaskHandle[Any]] = []

        async def awaits_next() -> object:
            return await holder[0]

        async def never_runs() -> str:
            return "ran"

        queue = AsyncTaskQueue(1, retry=NO_RETRY)
        await queue.start()
        waiter = await queue.submit(awaits_next, priority=1)
        queued = await queue.submit(never_runs)
        holder.append(queued)
        await until(lambda: queue.stats().running == 1)

        report, elapsed = await stop_concurrently(loop, queue, mode, timeout)

        assert_within_limit(elapsed, mode, timeout, 1.0)
        assert waiter.state is waiter_state
        assert queued.state is CANCELLED
        assert queued.attempts == 0
        assert report.never_started == (queued,)
        if waiter_state is FAILED:
            assert isinstance(waiter.exception(), TaskCancelledError)
            assert report.interrupted == ()
        else:
            assert report.interrupted == (waiter,)

        assert_all_final(queue, [waiter, queued])

    run(main)


def test_stop_with_handle_chain() -> None:
    """A chain of tasks awaiting each other ends in order during a drain."""

    async def main(loop: VirtualClockLoop) -> None:
        chain: list[TaskHandle[Any]] = []

        async def link(index: int) -> int:
            await asyncio.sleep(0.5)
            if index == 0:
                return 0

            return await chain[index - 1] + 1

        queue = AsyncTaskQueue(4, retry=NO_RETRY)
        await queue.start()
        # The last link is submitted first, so that it waits longest.
        for index in range(4):
            chain.append(await queue.submit(link, index, priority=index))

        await until(lambda: queue.stats().running == 4)

        report, elapsed = await stop_concurrently(loop, queue, DRAIN)

        assert [h.result() for h in chain] == [0, 1, 2, 3]
        assert report.dropped == ()
        assert report.interrupted == ()
        assert 0.5 - ROUNDING <= elapsed <= 0.5 + 2 * CLOCK_STEP
        assert_all_final(queue, chain)

    run(main)


# Tasks that submit tasks


@pytest.mark.parametrize(
    ("mode", "timeout"),
    [(CANCEL, None), (FINISH_RUNNING, None), (DRAIN, None), (DRAIN, 1.0)],
)
def test_stop_while_tasks_spawn_children(
    mode: ShutdownMode, timeout: float | None
) -> None:
    """Spawners keep submitting children until the queue closes.

    Every child submitted before the stop ends final and counted, and each
    submission after it raises QueueClosedError inside the spawner.
    """

    async def main(loop: VirtualClockLoop) -> None:
        children: list[TaskHandle[Any]] = []
        roots: list[TaskHandle[Any]] = []
        rejected: list[QueueClosedError] = []

        async def child(depth: int) -> int:
            await asyncio.sleep(0.3)
            if depth < 2:
                with contextlib.suppress(QueueClosedError):
                    children.append(await queue.submit(child, depth + 1))

            return depth

        async def spawner() -> int:
            spawned = 0
            while True:
                try:
                    root = await queue.submit(child, 0)
                    roots.append(root)
                    children.append(root)
                except QueueClosedError as exc:
                    rejected.append(exc)
                    return spawned

                spawned += 1
                await asyncio.sleep(0.2)

        queue = AsyncTaskQueue(3, retry=NO_RETRY)
        await queue.start()
        spawners = [await queue.submit(spawner) for _ in range(2)]
        await run_for(loop, 1.0)
        assert queue.stats().pending > 0

        report, elapsed = await stop_concurrently(loop, queue, mode, timeout)

        assert_within_limit(elapsed, mode, timeout, 1.0)
        handles = [*spawners, *children]
        assert_all_final(queue, handles)
        assert queue.stats().submitted == len(handles)
        listed = [*report.never_started, *report.interrupted]
        assert len(listed) == len(set(listed))
        for handle in handles:
            if handle.state is CANCELLED:
                assert handle in listed, handle
            else:
                assert handle.state is SUCCEEDED, handle

        if mode is CANCEL:
            assert [h.state for h in spawners] == [CANCELLED, CANCELLED]
        else:
            # The next submission after the close ends each spawner at once.
            assert sum(h.result() for h in spawners) == len(roots)
            assert len(rejected) == 2

        if mode is DRAIN and not report.escalated:
            assert all(h.state is SUCCEEDED for h in handles)

        assert library_tasks() == []

    run(main)


def test_submit_waiting_for_room_released_by_stop() -> None:
    """A task blocked in submit() on a full queue gets QueueClosedError."""

    async def main(loop: VirtualClockLoop) -> None:
        outcomes: list[str] = []

        async def submits_two() -> None:
            try:
                await queue.submit(forever)
                await queue.submit(forever)  # waits, because the queue is full
                outcomes.append("submitted")
            except QueueClosedError:
                outcomes.append("closed")

        queue = AsyncTaskQueue(1, retry=NO_RETRY, max_pending=1)
        await queue.start()
        handle = await queue.submit(submits_two)
        await settle()
        assert outcomes == []

        report, _ = await stop_concurrently(loop, queue, FINISH_RUNNING)

        assert outcomes == ["closed"]
        assert handle.state is SUCCEEDED
        assert len(report.never_started) == 1
        assert queue.stats().submitted == 2
        assert_all_final(queue, [handle, *report.never_started])

    run(main)


# Concurrent stops from inside and outside the queue


@pytest.mark.parametrize("mode", [FINISH_RUNNING, DRAIN])
def test_stop_inside_and_outside_share_report(mode: ShutdownMode) -> None:
    """A task and outside coroutines that stop the queue get one report."""

    async def main(loop: VirtualClockLoop) -> None:
        inside: list[ShutdownReport] = []

        async def stops_queue() -> str:
            inside.append(await queue.stop(mode, timeout=5))
            return "stopped"

        queue = AsyncTaskQueue(2, retry=NO_RETRY)
        await queue.start()
        worker = await queue.submit(asyncio.sleep, 1.0)
        stopper = await queue.submit(stops_queue)
        await until(lambda: queue.closed)

        report, elapsed = await stop_concurrently(loop, queue, mode, timeout=5)

        assert elapsed <= 1.0 + 2 * CLOCK_STEP
        await until(stopper.done)
        assert inside == [report]
        assert inside[0] is report
        assert stopper.result() == "stopped"
        assert worker.state is SUCCEEDED
        assert report.escalated is False
        assert_all_final(queue, [worker, stopper])

    run(main)
