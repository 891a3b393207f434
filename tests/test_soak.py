"""A chaos soak: many tasks with random latency, failures, retries, timeouts
and outside cancels, with a stop while work is still queued and running.

The soak runs on the virtual clock, so latencies, backoffs and timeouts cost
no wall time. Each test submits 20,000 tasks by default; ``--soak-tasks``
sets another count, for example a million::

    pytest tests/test_soak.py --soak-tasks=1000000

That run took 3 min 55 s for the four tests (46 to 72 s each) on a shared
2-CPU Linux machine with Python 3.11. A slower machine may need
``--timeout=600``, because the suite limits each test to 120 s.

Every run draws its workload from a seeded ``random.Random``, and each
assertion message names the seed and the mode, so a failure can be replayed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from array import array
from dataclasses import dataclass, field
from typing import Any

import pytest

from async_queue import (
    AsyncTaskQueue,
    Jitter,
    RetryAfter,
    RetryPolicy,
    ShutdownMode,
    ShutdownReport,
    TaskHandle,
    TaskState,
)
from async_queue.testing import VirtualClockLoop, run_virtual

WORKERS = 64
MAX_PENDING = 2_000
MAX_RETRIES = 3
SLOW_TIMEOUT = 1.0
CLOCK_STEP = 0.01  # virtual seconds per turn of the clock driver


class Kind(enum.IntEnum):
    """What each attempt of a soak task does."""

    OK = 0  # sleep, then return the task's index
    FLAKY = 1  # fail the first `failures` attempts, then succeed
    FAIL = 2  # fail every attempt
    SLOW = 3  # sleep a latency per attempt, some past the task's timeout
    HANG = 4  # wait until cancelled, then clean up for a while
    RETRY_AFTER = 5  # ask for a retry after 0.3 s once, then succeed


KINDS = list(Kind)
KIND_WEIGHTS = [60, 14, 5, 9, 5, 7]


@dataclass
class Workload:
    """The plan of every task, and what each attempt recorded."""

    seed: int
    count: int
    kinds: bytearray = field(default_factory=bytearray)
    failures: bytearray = field(default_factory=bytearray)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    slow_latencies: dict[int, list[float]] = field(default_factory=dict)
    calls: array[int] = field(default_factory=lambda: array("l"))
    in_attempt: bytearray = field(default_factory=bytearray)
    overlaps: list[int] = field(default_factory=list)
    failed_after_close: set[int] = field(default_factory=set)
    started_after_close: list[int] = field(default_factory=list)

    @classmethod
    def draw(cls, seed: int, count: int) -> Workload:
        rng = random.Random(seed)
        workload = cls(seed, count)
        workload.kinds = bytearray(rng.choices(KINDS, KIND_WEIGHTS, k=count))
        workload.failures = bytearray(rng.randint(1, 4) for _ in range(count))
        workload.latencies = array("d", (rng.uniform(0, 0.1) for _ in range(count)))
        for index, kind in enumerate(workload.kinds):
            if kind == Kind.SLOW:
                # Clear of the timeout, so that the outcome does not depend on
                # which of two timers fires first.
                workload.slow_latencies[index] = [
                    rng.choice([rng.uniform(0.2, 0.8), rng.uniform(1.2, 3.0)])
                    for _ in range(MAX_RETRIES + 1)
                ]

        workload.calls = array("l", bytes(8 * count))
        workload.in_attempt = bytearray(count)
        return workload

    def expected(self, index: int) -> tuple[TaskState, int, type[BaseException]] | None:
        """Return the final state, attempts and error type of an undisturbed task.

        ``None`` for a hanging task, which only a cancel ends.
        """
        kind = self.kinds[index]
        last = MAX_RETRIES + 1
        if kind == Kind.OK:
            return TaskState.SUCCEEDED, 1, ValueError

        if kind == Kind.FLAKY:
            failures = self.failures[index]
            if failures < last:
                return TaskState.SUCCEEDED, failures + 1, ValueError

            return TaskState.FAILED, last, ValueError

        if kind == Kind.FAIL:
            return TaskState.FAILED, last, ValueError

        if kind == Kind.SLOW:
            for attempt, latency in enumerate(self.slow_latencies[index], 1):
                if latency < SLOW_TIMEOUT:
                    return TaskState.SUCCEEDED, attempt, TimeoutError

            return TaskState.FAILED, last, TimeoutError

        if kind == Kind.RETRY_AFTER:
            return TaskState.SUCCEEDED, 2, RetryAfter

        return None


def make_work(workload: Workload, queue: AsyncTaskQueue) -> Any:
    """Return the coroutine function that runs each attempt of a soak task."""
    kinds = workload.kinds
    calls = workload.calls
    in_attempt = workload.in_attempt

    async def work(index: int) -> int:
        if in_attempt[index]:
            workload.overlaps.append(index)

        in_attempt[index] = 1
        calls[index] += 1
        attempt = calls[index]
        if queue.closed:
            workload.started_after_close.append(index)

        try:
            kind = kinds[index]
            if kind == Kind.HANG:
                try:
                    await asyncio.get_running_loop().create_future()
                finally:
                    await asyncio.sleep(workload.latencies[index])

            if kind == Kind.SLOW:
                await asyncio.sleep(workload.slow_latencies[index][attempt - 1])
                return index

            await asyncio.sleep(workload.latencies[index])
            if kind == Kind.RETRY_AFTER and attempt == 1:
                raise RetryAfter(0.3)

            failing = kind == Kind.FAIL or (
                kind == Kind.FLAKY and attempt <= workload.failures[index]
            )
            if failing:
                if queue.closed:
                    workload.failed_after_close.add(index)

                raise ValueError(f"task {index} failed attempt {attempt}")

            return index
        finally:
            in_attempt[index] = 0

    return work


@dataclass
class SoakRun:
    """The outcome of one soak run, for the checks."""

    workload: Workload
    mode: ShutdownMode
    timeout: float | None
    grace: float
    handles: list[TaskHandle[int]]
    cancelled_outside: bytearray
    report: ShutdownReport
    stop_seconds: float
    queue: AsyncTaskQueue
    leftover_tasks: list[asyncio.Task[Any]]

    @property
    def context(self) -> str:
        return (
            f"seed={self.workload.seed} mode={self.mode.value} "
            f"timeout={self.timeout} grace={self.grace} tasks={self.workload.count}"
        )


async def soak(
    loop: VirtualClockLoop,
    seed: int,
    count: int,
    mode: ShutdownMode,
    timeout: float | None,
) -> SoakRun:
    """Run one soak on ``loop`` and return what the checks need."""
    # Asyncio debug mode records a stack trace for every callback and
    # coroutine, which makes a soak about eight times slower. The rest of the
    # suite runs the same code paths in debug mode.
    loop.set_debug(False)
    workload = Workload.draw(seed, count)
    rng = random.Random(seed + 1)
    policy = RetryPolicy(
        max_retries=MAX_RETRIES,
        base_delay=0.05,
        max_delay=1.0,
        jitter=Jitter.FULL,
        rng=random.Random(seed + 2),
    )
    queue = AsyncTaskQueue(WORKERS, retry=policy, max_pending=MAX_PENDING)
    await queue.start()
    work = make_work(workload, queue)
    handles: list[TaskHandle[int]] = []
    cancelled_outside = bytearray(count)
    timers: list[asyncio.TimerHandle] = []

    def cancel_from_outside(index: int) -> None:
        if handles[index].cancel("cancelled from outside"):
            cancelled_outside[index] = 1

    async def produce() -> None:
        for index in range(count):
            kind = workload.kinds[index]
            timeout = SLOW_TIMEOUT if kind == Kind.SLOW else None
            handle = await queue.submit(
                work, index, priority=rng.randint(0, 4), timeout=timeout
            )
            handles.append(handle)
            # Every hanging task gets a cancel, so that a drain can end.
            if kind == Kind.HANG or rng.random() < 0.03:
                delay = rng.uniform(0, 3.0)
                timers.append(loop.call_later(delay, cancel_from_outside, index))

    grace = rng.choice([0.1, 1.0])
    # Stop once all tasks are submitted and some more have finished, so that
    # up to MAX_PENDING tasks are still queued, running or backing off.
    extra = rng.randint(0, min(count, MAX_PENDING) // 2)
    producer = asyncio.ensure_future(produce())
    stopping: asyncio.Future[ShutdownReport] | None = None
    stop_started = 0.0
    target = 0
    for _ in range(200 * count + 10_000):
        if stopping is None and producer.done():
            stats = queue.stats()
            finished = stats.succeeded + stats.failed + stats.cancelled
            if not target:
                target = min(count, finished + extra)

            if finished >= target:
                stop_started = loop.time()
                stopping = asyncio.ensure_future(
                    queue.stop(mode, timeout=timeout, grace=grace)
                )

        if stopping is not None and stopping.done():
            break

        loop.advance(CLOCK_STEP)
        await asyncio.sleep(0)
    else:
        raise AssertionError(f"seed={seed} mode={mode.value}: the soak did not end")

    stop_seconds = loop.time() - stop_started
    await producer
    for timer in timers:
        timer.cancel()

    leftover = [
        task
        for task in asyncio.all_tasks(loop)
        if task.get_name().startswith("async_queue")
    ]
    return SoakRun(
        workload,
        mode,
        timeout,
        grace,
        handles,
        cancelled_outside,
        stopping.result(),
        stop_seconds,
        queue,
        leftover,
    )


def check_counts(run: SoakRun) -> None:
    """No task is lost, and each final state is counted once."""
    context = run.context
    counts = dict.fromkeys(TaskState, 0)
    for handle in run.handles:
        counts[handle.state] += 1

    stats = run.queue.stats()
    assert len(run.handles) == run.workload.count, context
    assert stats.submitted == run.workload.count, context
    final = counts[TaskState.SUCCEEDED] + counts[TaskState.FAILED]
    final += counts[TaskState.CANCELLED]
    assert final == run.workload.count, (context, counts)
    assert stats.succeeded == counts[TaskState.SUCCEEDED], context
    assert stats.failed == counts[TaskState.FAILED], context
    assert stats.cancelled == counts[TaskState.CANCELLED], context
    assert stats.pending == 0, context
    assert stats.running == 0, context
    assert stats.waiting_retry == 0, context
    assert stats.delayed == 0, context
    assert stats.workers == 0, context
    assert stats.dropped == len(run.report.dropped), context
    assert run.leftover_tasks == [], context


def check_attempts(run: SoakRun) -> None:
    """Each attempt ran once, one at a time, and the handle counted it.

    Only a drain starts attempts after the stop began.
    """
    context = run.context
    calls = run.workload.calls
    assert run.workload.overlaps == [], context
    if run.mode is not ShutdownMode.DRAIN:
        assert run.workload.started_after_close == [], context
    mismatched = [
        index
        for index, handle in enumerate(run.handles)
        if handle.attempts != calls[index]
    ]
    assert mismatched == [], (context, mismatched[:10])
    retries_run = sum(max(0, handle.attempts - 1) for handle in run.handles)
    assert run.queue.stats().retries >= retries_run, context


def check_report(run: SoakRun) -> None:
    """The report lists exactly the tasks that stop() ended."""
    context = run.context
    report = run.report
    assert report.mode is run.mode, context
    assert report.abandoned == (), context
    if run.timeout is None:
        assert report.escalated is False, context
        if run.mode is ShutdownMode.DRAIN:
            assert report.dropped == (), context
            assert report.interrupted == (), context
    else:
        limit = run.timeout + run.grace + 2 * CLOCK_STEP
        assert run.stop_seconds <= limit, (context, run.stop_seconds)

    listed = [*report.never_started, *report.retries_cancelled, *report.interrupted]
    assert len(listed) == len(set(listed)), context
    assert all(h.state is TaskState.CANCELLED for h in listed), context
    assert all(h.attempts > 0 for h in report.retries_cancelled), context
    never_started = {
        handle
        for index, handle in enumerate(run.handles)
        if handle.attempts == 0 and not run.cancelled_outside[index]
    }
    assert set(report.never_started) == never_started, context

    listed_set = set(listed)
    unaccounted = [
        index
        for index, handle in enumerate(run.handles)
        if handle.state is TaskState.CANCELLED
        and not run.cancelled_outside[index]
        and handle not in listed_set
    ]
    assert unaccounted == [], (context, unaccounted[:10])


def check_outcomes(run: SoakRun) -> None:
    """A task that nothing cancelled ends as its plan predicts."""
    context = run.context
    workload = run.workload
    early_failures_allowed = run.mode is not ShutdownMode.DRAIN or run.report.escalated
    for index, handle in enumerate(run.handles):
        state = handle.state
        if state is TaskState.CANCELLED:
            continue

        expected = workload.expected(index)
        assert expected is not None, (context, index, handle)
        expected_state, expected_attempts, error = expected
        if state is TaskState.SUCCEEDED:
            assert (state, handle.attempts) == (expected_state, expected_attempts), (
                context,
                index,
                handle,
            )
            assert handle.result() == index, (context, index)
            continue

        assert type(handle.exception()) is error, (context, index, handle)
        if handle.attempts != expected_attempts or expected_state is not state:
            # Only a stop that takes no retries may fail a task early.
            assert early_failures_allowed, (context, index, handle)
            assert handle.attempts < expected_attempts, (context, index, handle)
            if error is ValueError:
                assert index in workload.failed_after_close, (context, index)


@pytest.fixture
def quiet_queue_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each failure logs a traceback, which would dominate the run time.
    monkeypatch.setattr(logging.getLogger("async_queue"), "disabled", True)


@pytest.mark.soak
@pytest.mark.usefixtures("quiet_queue_logger")
@pytest.mark.parametrize(
    ("mode", "timeout", "seed"),
    [
        (ShutdownMode.CANCEL, None, 20240601),
        (ShutdownMode.FINISH_RUNNING, 0.5, 20240602),
        (ShutdownMode.DRAIN, None, 20240603),
        (ShutdownMode.DRAIN, 0.5, 20240604),
    ],
    ids=["cancel", "finish_running_deadline", "drain", "drain_deadline"],
)
def test_soak_loses_nothing(
    mode: ShutdownMode, timeout: float | None, seed: int, soak_tasks: int
) -> None:
    run = run_virtual(lambda loop: soak(loop, seed, soak_tasks, mode, timeout))

    check_counts(run)
    check_attempts(run)
    check_report(run)
    check_outcomes(run)
