"""Hostile inputs and races: every task must end in one final state, once.

Each test states the correct behaviour. Besides the common cases, it covers
callbacks that raise, exceptions that cannot be printed, tasks that turn the
queue's own API against it, other event loops (uvloop, debug mode), garbage
collection, and random programs, some with hooks that cancel tasks at any
event.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import math
import random
import warnings
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    DuplicateTaskIdError,
    Hook,
    Jitter,
    QueueClosedError,
    QueueFullError,
    RetryAfter,
    RetryPolicy,
    ShutdownMode,
    ShutdownReport,
    TaskCancelledError,
    TaskEvent,
    TaskHandle,
    TaskNotFoundError,
    TaskState,
    bind,
    containers,
)
from async_queue.hooks import EVENTS
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import assert_state_counts, settle, until

NO_RETRY = RetryPolicy(max_retries=0)
ONE_QUICK_RETRY = RetryPolicy(max_retries=1, base_delay=0, jitter="none")

# Loop iterations that any task not blocked on an event needs to end. A task
# still unfinished after them is deadlocked or lost.
SETTLE = 500


async def returns(value: object) -> object:
    return value


async def fails(message: str = "attempt failed") -> None:
    raise ValueError(message)


async def blocks_forever() -> None:
    await asyncio.Event().wait()


def accounted(queue: AsyncTaskQueue) -> int:
    """Return the number of tasks that the queue's counts place in a state."""
    stats = queue.stats()
    return (
        stats.pending
        + stats.waiting_retry
        + stats.delayed
        + stats.running
        + stats.succeeded
        + stats.failed
        + stats.cancelled
    )


def worker_tasks() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("async_queue-worker")
    ]


class BrokenRandom(random.Random):
    """A random source whose ``random()`` returns a fixed, possibly invalid value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


class FailingRandom(random.Random):
    def random(self) -> float:
        raise RuntimeError("random source failed")


class Unprintable(Exception):
    """An exception that raises from every method a logger or a test may call."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ failed")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ failed")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ failed")

    def __hash__(self) -> int:
        raise RuntimeError("__hash__ failed")


class NoTruthValue(Unprintable):
    """An exception whose truth test raises, as ``if exc:`` in logging does."""

    def __bool__(self) -> bool:
        raise RuntimeError("__bool__ failed")


class CustomBaseError(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


@pytest.fixture
def quiet_queue_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep log records, which hold tracebacks, from holding on to frames."""
    monkeypatch.setattr(logging.getLogger("async_queue"), "disabled", True)


# Callbacks of the retry policy that raise


def _broken_filter(exc: BaseException) -> bool:
    raise RuntimeError("retry_on predicate failed")


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(retry_on=_broken_filter, base_delay=0),
        RetryPolicy(rng=FailingRandom(), base_delay=0.001),
    ],
    ids=["retry_on", "rng"],
)
async def test_policy_error_fails_task(policy: RetryPolicy) -> None:
    """An exception from the policy must end the task FAILED, not orphan it."""
    queue = AsyncTaskQueue(1, retry=policy)
    await queue.start()
    try:
        handle = await queue.submit(fails)
        await until(handle.done, SETTLE)

        assert handle.state is TaskState.FAILED
        assert handle.attempts == 1
        assert queue.stats().workers == 1

        after = await queue.submit(returns, 5)
        await until(after.done, SETTLE)
        assert after.result() == 5
    finally:
        await queue.stop()


# Out-of-range random numbers


@pytest.mark.parametrize("jitter", [Jitter.FULL, Jitter.EQUAL, Jitter.DECORRELATED])
@pytest.mark.parametrize("value", [1.5, -0.5, math.nan, math.inf])
def test_jitter_delay_within_bounds(jitter: Jitter, value: float) -> None:
    """``max_delay`` caps every delay, whatever the random source returns."""
    policy = RetryPolicy(
        base_delay=1.0, max_delay=4.0, jitter=jitter, rng=BrokenRandom(value)
    )
    delay = policy.delay(5, previous=4.0)

    assert delay >= 0
    assert delay <= policy.max_delay


def test_nan_jitter_still_retries() -> None:
    """A NaN delay from the random source must not park a task forever."""

    async def main(loop: VirtualClockLoop) -> None:
        policy = RetryPolicy(max_retries=1, max_delay=10, rng=BrokenRandom(math.nan))
        calls = 0

        async def fails_once() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("first attempt fails")

            return "second attempt"

        async with AsyncTaskQueue(1, retry=policy) as queue:
            handle = await queue.submit(fails_once)
            await until(lambda: handle.attempts == 1 and not queue.stats().running)
            loop.advance(policy.max_delay + 1)
            await until(handle.done, SETTLE)

            assert handle.state is TaskState.SUCCEEDED
            assert calls == 2

    run_virtual(main)


# BaseException from a task


@pytest.mark.parametrize("error", [CustomBaseError, GeneratorExit])
async def test_base_exception_keeps_worker(error: type[BaseException]) -> None:
    """Only KeyboardInterrupt and SystemExit may end a worker, as in asyncio."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()

    async def raises() -> None:
        raise error("not an Exception")

    try:
        handle = await queue.submit(raises)
        await until(handle.done, SETTLE)

        assert handle.state is TaskState.FAILED
        assert isinstance(handle.exception(), error)

        after = await queue.submit(returns, "next")
        await until(after.done, SETTLE)
        assert after.state is TaskState.SUCCEEDED
        assert queue.stats().workers == 1
    finally:
        await queue.stop()


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_fatal_error_fails_task(error: type[BaseException]) -> None:
    """KeyboardInterrupt leaves the loop, but the task ends FAILED and nothing warns."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    handles: list[TaskHandle[Any]] = []
    contexts: list[dict[str, Any]] = []

    async def raises() -> None:
        raise error()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: contexts.append(context))
        await queue.start()
        handles.append(await queue.submit(raises))
        await asyncio.Event().wait()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with asyncio.Runner(debug=True) as runner:
            with pytest.raises(error):
                runner.run(main())

            report = runner.run(queue.stop())
            after_stop = queue.stats()

        gc.collect()

    handle = handles[0]
    assert handle.state is TaskState.FAILED
    assert isinstance(handle.exception(), error)
    assert report.interrupted == ()
    assert after_stop.workers == 0
    assert after_stop.failed == 1
    assert caught == []
    assert contexts == []


# Tasks that wait on themselves


async def test_await_own_handle_raises() -> None:
    """A task awaiting its own handle gets RuntimeError, like asyncio.Task."""
    holder: asyncio.Future[TaskHandle[Any]] = asyncio.get_running_loop().create_future()

    async def awaits_itself() -> object:
        own = await holder
        return await own

    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    try:
        handle = await queue.submit(awaits_itself)
        holder.set_result(handle)
        await until(handle.done, SETTLE)

        assert isinstance(handle.exception(), RuntimeError)
    finally:
        await queue.stop()


async def test_join_inside_task_returns() -> None:
    """join() from a task must not wait for that task itself."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()

    async def joins() -> str:
        await queue.join()
        return "joined"

    try:
        handle = await queue.submit(joins)
        await until(handle.done, SETTLE)

        assert handle.done()
    finally:
        await queue.stop()


@pytest.mark.parametrize("mode", ["drain", "finish_running"])
async def test_graceful_stop_inside_task(mode: str) -> None:
    """A graceful stop() called by a task must not wait for that task."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()

    async def stops() -> object:
        return await queue.stop(mode)

    handle = await queue.submit(stops)
    try:
        await until(handle.done, SETTLE)

        assert handle.done()
    finally:
        await queue.stop("cancel")


async def test_cancel_stop_inside_task() -> None:
    """stop("cancel") from a task cancels that task and still stops the queue."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    proceed = asyncio.Event()

    async def stops() -> object:
        await proceed.wait()
        return await queue.stop()

    handle = await queue.submit(stops)
    running = await queue.submit(blocks_forever)
    queued = await queue.submit(blocks_forever)
    await until(lambda: queue.stats().running == 2)
    proceed.set()
    await until(handle.done, SETTLE)
    report = await queue.stop()

    assert handle.state is TaskState.CANCELLED
    assert report.interrupted == (handle, running)
    assert report.never_started == (queued,)
    assert queue.stats().workers == 0
    assert accounted(queue) == 3


# Shutdown races


async def test_escalated_stop_keeps_grace(caplog: pytest.LogCaptureFixture) -> None:
    """A stop("cancel") during a drain still gives a cancelled task its grace."""
    started = asyncio.Event()
    cleaned_up = False

    async def slow_cleanup() -> None:
        nonlocal cleaned_up
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that needs one more loop iteration
            cleaned_up = True

    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    handle = await queue.submit(slow_cleanup)
    await started.wait()
    graceful = asyncio.create_task(queue.stop("drain"))
    await until(lambda: queue.closed)
    report = await queue.stop("cancel", grace=5)

    assert report.abandoned == ()
    assert report.interrupted == (handle,)
    assert cleaned_up
    assert handle.state is TaskState.CANCELLED
    assert await graceful is report
    assert [r for r in caplog.records if "abandoning" in r.getMessage()] == []


async def test_abandoned_task_counted_once() -> None:
    """An abandoned task counts as cancelled, not also as running."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    handle = await queue.submit(stubborn)
    await started.wait()
    leftover: list[asyncio.Task[Any]] = []
    try:
        report = await queue.stop(grace=0)
        stats = queue.stats()
        leftover = worker_tasks()

        assert report.abandoned == (handle,)
        assert stats.cancelled == 1
        assert stats.running == 0
        assert accounted(queue) == stats.submitted
    finally:
        release.set()
        await asyncio.gather(*leftover)

    assert accounted(queue) == 1


@pytest.mark.parametrize(
    ("mode", "final", "attempts"),
    [
        ("cancel", TaskState.CANCELLED, 1),
        ("finish_running", TaskState.CANCELLED, 1),
        ("drain", TaskState.SUCCEEDED, 2),
    ],
)
def test_stop_with_retry_due(mode: str, final: TaskState, attempts: int) -> None:
    """A stop in the same step as a due retry timer settles the task once."""

    async def main(loop: VirtualClockLoop) -> None:
        policy = RetryPolicy(max_retries=1, base_delay=10, jitter="none")
        calls = 0

        async def fails_once() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("first attempt fails")

            return "retried"

        queue = AsyncTaskQueue(1, retry=policy)
        await queue.start()
        handle = await queue.submit(fails_once)
        await until(lambda: handle.state is TaskState.WAITING_RETRY)
        loop.advance(10)  # the retry timer fires on the next iteration
        report = await queue.stop(mode)

        assert handle.state is final
        assert handle.attempts == attempts
        assert calls == attempts
        expected_dropped = (handle,) if final is TaskState.CANCELLED else ()
        assert report.retries_cancelled == expected_dropped
        assert accounted(queue) == 1

    run_virtual(main)


async def test_cancel_from_finally_during_stop() -> None:
    """A task's cleanup cancelling another task during stop() changes nothing."""
    started = [asyncio.Event(), asyncio.Event()]
    results: list[bool] = []
    handles: list[TaskHandle[Any]] = []

    async def cancels_neighbour(index: int) -> None:
        started[index].set()
        try:
            await asyncio.Event().wait()
        finally:
            results.append(handles[1 - index].cancel("from a neighbour's finally"))

    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    handles.append(await queue.submit(cancels_neighbour, 0))
    handles.append(await queue.submit(cancels_neighbour, 1))
    queued = await queue.submit(returns, "never")
    await started[0].wait()
    await started[1].wait()
    report = await queue.stop()

    assert [h.state for h in handles] == [TaskState.CANCELLED] * 2
    assert queued.state is TaskState.CANCELLED
    assert report.interrupted == tuple(handles)
    assert report.never_started == (queued,)
    assert len(results) == 2
    assert queue.stats().cancelled == 3
    assert accounted(queue) == 3


# Cancellation races


def test_cancel_during_timeout_wins() -> None:
    """A task cancelled while handling its timeout ends CANCELLED, not FAILED."""

    async def main(loop: VirtualClockLoop) -> None:
        holder: asyncio.Future[TaskHandle[Any]] = loop.create_future()
        accepted: list[bool] = []

        async def overstays() -> None:
            own = await holder
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                accepted.append(own.cancel("cancelled during the timeout"))
                raise

        async with AsyncTaskQueue(1, retry=ONE_QUICK_RETRY, timeout=5) as queue:
            handle = await queue.submit(overstays)
            holder.set_result(handle)
            await until(lambda: queue.stats().running == 1)
            loop.advance(6)
            await until(handle.done)

        assert accepted == [True]
        assert handle.state is TaskState.CANCELLED
        assert handle.attempts == 1
        assert "cancelled during the timeout" in str(handle.exception())
        assert queue.stats().retries == 0
        assert queue.stats().failed == 0

    run_virtual(main)


async def stop_on_virtual_clock(
    loop: VirtualClockLoop, queue: AsyncTaskQueue, mode: str = "cancel"
) -> ShutdownReport:
    """Stop ``queue``, moving the clock a second per iteration past any grace."""
    stop = asyncio.create_task(queue.stop(mode, grace=1))
    while not stop.done():
        loop.advance(1)
        await asyncio.sleep(0)

    return stop.result()


@pytest.mark.parametrize("second", ["cancel", "stop"])
def test_second_cancel_interrupts_cleanup(second: str) -> None:
    """A cancel after a timeout reaches a cleanup that hangs, as in asyncio."""

    async def main(loop: VirtualClockLoop) -> None:
        cleanup_started = asyncio.Event()
        interrupted: list[str] = []

        async def hangs_in_cleanup() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cleanup_started.set()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    interrupted.append("cleanup")
                    raise

        queue = AsyncTaskQueue(1, retry=NO_RETRY, timeout=5)
        await queue.start()
        handle = await queue.submit(hangs_in_cleanup)
        await until(lambda: queue.stats().running == 1)
        loop.advance(6)
        await cleanup_started.wait()
        try:
            if second == "cancel":
                assert handle.cancel("give up") is True
                await until(handle.done, SETTLE)
        finally:
            report = await stop_on_virtual_clock(loop, queue)

        assert interrupted == ["cleanup"]
        assert handle.state is TaskState.CANCELLED
        assert report.abandoned == ()

    run_virtual(main)


async def test_cancel_after_release_wins() -> None:
    """A cancel in the same step as the wake-up that would finish the task wins."""
    gate = asyncio.Event()
    seen: list[str] = []

    async def waits() -> str:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

        return "finished"

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(waits)
        await until(lambda: queue.stats().running == 1)
        gate.set()
        accepted = handle.cancel("too late to finish")
        await until(handle.done)

    assert accepted is True
    assert seen == ["cancelled"]
    assert handle.state is TaskState.CANCELLED
    assert queue.stats().succeeded == 0


async def test_second_cancel_keeps_first() -> None:
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        blocker = await queue.submit(blocks_forever)
        handle = await queue.submit(returns, "never")

        assert handle.cancel("first") is True
        assert handle.cancel("second") is False
        assert "first" in str(handle.exception())
        assert blocker.cancel() is True

    assert queue.stats().cancelled == 2
    assert accounted(queue) == 2


async def test_cancel_from_done_callback() -> None:
    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        first = await queue.submit(returns, 1)
        second = await queue.submit(blocks_forever)
        first.add_done_callback(lambda _: second.cancel("first finished"))
        await until(second.done)

    assert first.result() == 1
    assert second.state is TaskState.CANCELLED
    assert "first finished" in str(second.exception())
    assert accounted(queue) == 2


class CancelsOnEvent(Hook):
    """A hook that cancels the task it observes at one event."""

    def __init__(self, event: str) -> None:
        self.event = event
        self.queue: AsyncTaskQueue | None = None
        self.accepted: list[bool] = []

    def _cancel(self, event: TaskEvent) -> None:
        assert self.queue is not None
        self.accepted.append(self.queue.cancel(event.task_id, "cancelled by hook"))

    def on_submitted(self, event: TaskEvent) -> None:
        if self.event == "on_submitted":
            self._cancel(event)

    def on_started(self, event: TaskEvent) -> None:
        if self.event == "on_started":
            self._cancel(event)

    def on_retry_scheduled(self, event: TaskEvent) -> None:
        if self.event == "on_retry_scheduled":
            self._cancel(event)


@pytest.mark.parametrize("event", ["on_started", "on_retry_scheduled"])
async def test_hook_cancel_settles_once(event: str) -> None:
    hook = CancelsOnEvent(event)
    queue = AsyncTaskQueue(1, retry=ONE_QUICK_RETRY, hooks=[hook])
    hook.queue = queue
    async with queue:
        handle = await queue.submit(fails)
        await until(handle.done)

    assert hook.accepted == [True]
    assert handle.state is TaskState.CANCELLED
    assert handle.attempts == 1
    assert accounted(queue) == 1


def test_hook_cancel_on_submit_delayed() -> None:
    """A task cancelled by an on_submitted hook must never run."""

    async def main(loop: VirtualClockLoop) -> None:
        hook = CancelsOnEvent("on_submitted")
        queue = AsyncTaskQueue(1, retry=NO_RETRY, hooks=[hook])
        hook.queue = queue
        calls = 0

        async def counts() -> None:
            nonlocal calls
            calls += 1

        await queue.start()
        try:
            handle = await queue.submit(counts, delay=5)
            loop.advance(6)
            for _ in range(SETTLE // 5):
                await asyncio.sleep(0)

            assert hook.accepted == [True]
            assert calls == 0
            assert handle.state is TaskState.CANCELLED
            assert queue.stats().pending == 0
            assert accounted(queue) == 1
        finally:
            await queue.stop()

    run_virtual(main)


async def test_hook_cancel_on_submit_frees_key() -> None:
    """The dedup key of a task cancelled on submission is free again."""
    hook = CancelsOnEvent("on_submitted")
    queue = AsyncTaskQueue(1, retry=NO_RETRY, hooks=[hook])
    hook.queue = queue
    async with queue:
        first = await queue.submit(returns, 1, dedup_key="key")
        second = await queue.submit(returns, 2, dedup_key="key")

    assert first.state is TaskState.CANCELLED
    assert second is not first


# Hostile exceptions, ids and priorities


@pytest.mark.parametrize("error", [Unprintable, NoTruthValue])
async def test_unprintable_exception_fails_task(error: type[Exception]) -> None:
    """An exception whose dunder methods raise still ends the task FAILED."""
    calls = 0

    async def raises_unprintable() -> None:
        nonlocal calls
        calls += 1
        raise error()

    async with AsyncTaskQueue(1, retry=ONE_QUICK_RETRY) as queue:
        handle = await queue.submit(raises_unprintable)
        await until(handle.done, SETTLE)
        after = await queue.submit(returns, "next")
        await until(after.done, SETTLE)

    assert handle.state is TaskState.FAILED
    assert type(handle.exception()) is error
    assert handle.attempts == 2
    assert calls == 2
    assert after.result() == "next"
    assert queue.stats().retries == 1
    assert queue.stats().failed == 1


@pytest.mark.parametrize(
    "task_id",
    ["\x00", "\ud800", "é" * 10_000, " ", "1", "None", "'; DROP TABLE tasks;--"],
    ids=["nul", "lone_surrogate", "long", "space", "digit", "none_word", "quote"],
)
async def test_weird_task_ids(task_id: str) -> None:
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        blocker = await queue.submit(blocks_forever)
        handle = await queue.submit(fails, task_id=task_id)
        sibling = await queue.submit(returns, "int id")

        assert queue.task(task_id) is handle
        with pytest.raises(DuplicateTaskIdError):
            await queue.submit(returns, "twice", task_id=task_id)

        assert queue.cancel(task_id, "by weird id") is True
        assert blocker.cancel() is True
        await until(sibling.done)

    assert handle.state is TaskState.CANCELLED
    assert queue.task(task_id) is handle
    assert sibling.result() == "int id"


async def test_huge_priorities_order() -> None:
    priorities = [0, 10**5000, -(10**5000), 2**63, -(2**63) - 1, 10**5000 + 1]
    started: list[int] = []

    async def records(priority: int) -> None:
        started.append(priority)

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        queue.pause()
        for priority in priorities:
            await queue.submit(records, priority, priority=priority)

        queue.resume()

    assert started == sorted(priorities, reverse=True)


async def test_huge_priority_repr() -> None:
    """A handle's repr works for every int priority the queue accepts."""
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(returns, 1, priority=10**5000)

    assert "priority=" in repr(handle)


# Coroutine objects the queue does not run


@pytest.mark.parametrize("reason", ["closed", "dedup"])
async def test_rejected_coroutine_is_closed(reason: str) -> None:
    """A coroutine the queue swallows is closed; one it rejects stays the caller's."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    gate = asyncio.Event()

    async def waits() -> None:
        await gate.wait()

    coroutine = waits()
    try:
        if reason == "closed":
            await queue.stop()
            with pytest.raises(QueueClosedError):
                await queue.submit(coroutine)
        else:
            await queue.submit(waits, dedup_key="key")
            await queue.submit(coroutine, dedup_key="key")

        expected = inspect.CORO_CREATED if reason == "closed" else inspect.CORO_CLOSED
        assert inspect.getcoroutinestate(coroutine) == expected
    finally:
        coroutine.close()
        await queue.stop()


# Tasks that use the queue


async def test_task_submits_and_awaits_child() -> None:
    async def doubles(value: int) -> int:
        return value * 2

    async def parent(queue: AsyncTaskQueue) -> int:
        child = await queue.submit(doubles, 21)
        return await child

    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        handle = await queue.submit(parent, queue)

        assert await handle == 42

    assert queue.stats().succeeded == 2


async def test_task_awaits_cancelled_handle() -> None:
    """A task that awaits a cancelled handle gets TaskCancelledError."""
    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        target = await queue.submit(blocks_forever)

        async def awaits_target() -> None:
            await target

        waiter = await queue.submit(awaits_target)
        await until(lambda: queue.stats().running == 2)
        target.cancel()
        await until(waiter.done)

    assert isinstance(waiter.exception(), TaskCancelledError)
    assert waiter.state is TaskState.FAILED


async def test_returned_awaitable_not_awaited() -> None:
    """A task's result that is itself awaitable is returned as it is."""
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def gives_future() -> asyncio.Future[str]:
        return future

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(gives_future)

        assert await handle is future

    assert not future.done()


async def test_result_finalizer_reenters_queue() -> None:
    """A result whose __del__ cancels a task, run during eviction, stays consistent."""
    victims: list[TaskHandle[Any]] = []

    class CancelsOnDelete:
        def __del__(self) -> None:
            for victim in victims:
                victim.cancel("cancelled by a finalizer")

    async def makes_result() -> CancelsOnDelete:
        return CancelsOnDelete()

    gate = asyncio.Event()

    async def waits() -> None:
        await gate.wait()

    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_results=1)
    async with queue:
        first = await queue.submit(makes_result)
        await first
        del first
        blocker = await queue.submit(waits)
        victims.append(await queue.submit(returns, "never"))
        gate.set()  # finishing the blocker evicts the first result
        await until(victims[0].done)

    assert blocker.state is TaskState.SUCCEEDED
    assert victims[0].state is TaskState.CANCELLED
    assert accounted(queue) == 3


# Garbage collection


@pytest.mark.parametrize("outcome", ["succeeds", "fails", "times_out"])
@pytest.mark.usefixtures("quiet_queue_logger")
async def test_stopped_queue_collectable(outcome: str) -> None:
    """A caller holding a finished handle does not keep the stopped queue alive."""
    functions: dict[str, Callable[[], Awaitable[Any]]] = {
        "succeeds": bind(returns, 1),
        "fails": fails,
        "times_out": blocks_forever,
    }
    queue = AsyncTaskQueue(1, retry=NO_RETRY, timeout=0.001)
    await queue.start()
    handle = await queue.submit(functions[outcome])
    await until(handle.done, SETTLE * 20)
    await queue.stop()
    reference = weakref.ref(queue)
    del queue
    gc.collect()

    assert handle.done()
    assert reference() is None


async def test_evicted_handle_collectable() -> None:
    async with AsyncTaskQueue(1, retry=NO_RETRY, max_results=1) as queue:
        first = await queue.submit(returns, 1)
        await first
        second = await queue.submit(returns, 2)
        await second
        evicted_id = first.id
        reference = weakref.ref(first)
        del first
        gc.collect()

        assert reference() is None
        with pytest.raises(TaskNotFoundError):
            queue.task(evicted_id)
        assert queue.task(second.id) is second


# Other event loops


def test_await_from_other_loop_raises() -> None:
    """Awaiting a handle from a foreign loop fails at once, and harms nothing."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    gate: asyncio.Event | None = None

    async def waits() -> str:
        assert gate is not None
        await gate.wait()
        return "done"

    async def setup() -> TaskHandle[str]:
        nonlocal gate
        await queue.start()
        gate = asyncio.Event()
        handle = await queue.submit(waits)
        await until(lambda: queue.stats().running == 1)
        return handle

    async def await_handle(handle: TaskHandle[str]) -> str:
        return await handle

    with asyncio.Runner() as home:
        handle = home.run(setup())
        with (
            asyncio.Runner() as foreign,
            pytest.raises(RuntimeError, match="different loop"),
        ):
            foreign.run(await_handle(handle))

        assert handle.state is TaskState.RUNNING
        assert gate is not None
        gate.set()

        assert home.run(await_handle(handle)) == "done"
        home.run(queue.stop())


LOOP_FACTORIES = [
    pytest.param(None, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]


async def _shutdown_tour() -> None:
    """Run timeouts, retries, cancellation and both stop modes once each."""
    policy = RetryPolicy(max_retries=1, base_delay=0.001, jitter="none")
    queue = AsyncTaskQueue(2, retry=policy)
    await queue.start()

    timed_out = await queue.submit(blocks_forever, timeout=0.001, retry=NO_RETRY)
    with pytest.raises(TimeoutError):
        await timed_out

    retried = await queue.submit(fails)
    with pytest.raises(ValueError, match="attempt failed"):
        await retried

    assert retried.attempts == 2

    cleanup = asyncio.Event()

    async def cleans_up() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleanup.set()

    running = await queue.submit(cleans_up)
    await until(lambda: queue.stats().running == 1)
    assert running.cancel() is True
    with pytest.raises(TaskCancelledError):
        await running

    assert cleanup.is_set()

    coroutine_task = queue.submit_nowait(returns(1), retry=NO_RETRY)
    blocker = await queue.submit(blocks_forever)
    behind = await queue.submit(blocks_forever)
    queued = await queue.submit(returns, "dropped")
    coroutine_task.cancel()
    await until(lambda: queue.stats().running == 2)
    report = await queue.stop("cancel", grace=1)

    assert report.interrupted == (blocker, behind)
    assert report.never_started == (queued,)
    assert coroutine_task.state is TaskState.CANCELLED
    assert accounted(queue) == queue.stats().submitted
    assert queue.stats().workers == 0

    async with AsyncTaskQueue(1, retry=NO_RETRY) as draining:
        drained = [await draining.submit(returns, index) for index in range(5)]

    assert [h.result() for h in drained] == list(range(5))


@pytest.mark.parametrize("loop_factory", LOOP_FACTORIES)
@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
def test_tour_on_loops(loop_factory: Any, debug: bool) -> None:
    """The common paths work on uvloop and in debug mode, warning about nothing."""
    contexts: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: contexts.append(context))
        await _shutdown_tour()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with asyncio.Runner(debug=debug, loop_factory=loop_factory) as runner:
            runner.run(main())

        gc.collect()

    assert [str(w.message) for w in caught] == []
    assert [c.get("message") for c in contexts] == []


@pytest.mark.parametrize("loop_factory", LOOP_FACTORIES)
def test_abandon_on_loops(loop_factory: Any) -> None:
    """On either loop, an abandoned task is reported and left to finish later."""
    contexts: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: contexts.append(context)
        )
        release = asyncio.Event()
        swallowed = 0

        async def stubborn() -> str:
            nonlocal swallowed
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    swallowed += 1

            return "finished late"

        queue = AsyncTaskQueue(1, retry=NO_RETRY)
        await queue.start()
        handle = await queue.submit(stubborn)
        await until(lambda: queue.stats().running == 1)
        report = await queue.stop(grace=0.001)
        leftover = worker_tasks()
        release.set()
        await asyncio.gather(*leftover)

        assert report.abandoned == (handle,)
        assert handle.state is TaskState.CANCELLED
        assert swallowed == 1
        assert len(leftover) == 1

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())

    assert contexts == []


# Invariants under random programs

KIND = st.sampled_from(["ok", "fail_once", "fail", "hang", "gate"])
ACTION = st.one_of(
    st.tuples(st.just("submit"), KIND, st.sampled_from([None, 2.0, 5.0])),
    st.tuples(st.just("cancel"), st.integers(0, 30), st.none()),
    st.tuples(st.just("release"), st.integers(0, 30), st.none()),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 3.0]), st.none()),
    st.tuples(st.just("settle"), st.none(), st.none()),
)


class Program:
    """The tasks of one random program, with what each attempt did."""

    def __init__(self) -> None:
        self.handles: list[TaskHandle[Any]] = []
        self.calls: list[int] = []
        self.running: list[bool] = []
        self.gates: list[asyncio.Event] = []
        self.first_final: dict[int, TaskState] = {}

    def make(self, kind: str) -> Callable[[], Awaitable[int]]:
        index = len(self.calls)
        self.calls.append(0)
        self.running.append(False)
        self.gates.append(asyncio.Event())

        async def task() -> int:
            assert not self.running[index], "two attempts of one task at once"
            self.running[index] = True
            self.calls[index] += 1
            try:
                if kind == "fail" or (kind == "fail_once" and self.calls[index] == 1):
                    raise ValueError(f"task {index} failed")

                if kind == "hang":
                    await asyncio.Event().wait()

                if kind == "gate":
                    await self.gates[index].wait()

                return index
            finally:
                self.running[index] = False

        return task

    def check(self, queue: AsyncTaskQueue) -> None:
        states = [h.state for h in self.handles]
        stats = queue.stats()
        assert stats.submitted == len(self.handles)
        assert stats.pending == states.count(TaskState.PENDING)
        assert stats.waiting_retry == states.count(TaskState.WAITING_RETRY)
        assert stats.running == states.count(TaskState.RUNNING)
        assert stats.succeeded == states.count(TaskState.SUCCEEDED)
        assert stats.failed == states.count(TaskState.FAILED)
        assert stats.cancelled == states.count(TaskState.CANCELLED)
        assert accounted(queue) == stats.submitted
        for index, handle in enumerate(self.handles):
            assert handle.attempts == self.calls[index]
            assert handle.attempts <= 3
            if handle.done():
                first = self.first_final.setdefault(index, handle.state)
                assert handle.state is first


async def _run_program(
    loop: VirtualClockLoop,
    workers: int,
    actions: list[tuple[str, Any, Any]],
    mode: ShutdownMode,
) -> None:
    policy = RetryPolicy(max_retries=2, base_delay=1.0, jitter=Jitter.NONE)
    queue = AsyncTaskQueue(workers, retry=policy)
    await queue.start()
    program = Program()
    for name, value, timeout in actions:
        if name == "submit":
            handle = await queue.submit(program.make(value), timeout=timeout)
            program.handles.append(handle)
        elif name == "advance":
            loop.advance(value)
            await asyncio.sleep(0)
        elif name == "settle":
            for _ in range(3):
                await asyncio.sleep(0)
        elif program.handles:
            index = value % len(program.handles)
            if name == "cancel":
                was_final = program.handles[index].done()
                assert program.handles[index].cancel() is (not was_final)
            else:
                program.gates[index].set()

        program.check(queue)

    stop = asyncio.create_task(queue.stop(mode, timeout=100, grace=1))
    while not stop.done():
        loop.advance(1)
        await asyncio.sleep(0)
        program.check(queue)

    report = stop.result()
    program.check(queue)
    assert all(h.done() for h in program.handles)
    assert report.abandoned == ()
    assert queue.stats().workers == 0
    for index, handle in enumerate(program.handles):
        if handle.state is TaskState.SUCCEEDED:
            assert handle.result() == index


@settings(max_examples=120, deadline=None)
@given(
    st.integers(1, 3),
    st.lists(ACTION, max_size=30),
    st.sampled_from(list(ShutdownMode)),
)
def test_random_programs_consistent(
    workers: int, actions: list[tuple[str, Any, Any]], mode: ShutdownMode
) -> None:
    """Counts match handle states after every step, and no attempt repeats."""
    run_virtual(lambda loop: _run_program(loop, workers, actions, mode))


# Random programs over the features that the programs above leave out:
# delays, priorities with aging, the rate limit, max_pending, dedup keys,
# pause, resume and resize.
FEATURE_ACTION = st.one_of(
    st.tuples(
        st.just("submit"),
        st.sampled_from(["ok", "fail_once", "fail", "gate"]),
        st.integers(-2, 2),
        st.sampled_from([None, 0.5, 2.0]),
        st.sampled_from([None, "a", "b"]),
    ),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
    st.tuples(st.just("release"), st.integers(0, 40)),
    st.tuples(st.just("advance"), st.sampled_from([0.1, 0.5, 2.0])),
    st.tuples(st.just("pause")),
    st.tuples(st.just("resume")),
    st.tuples(st.just("resize"), st.integers(1, 4)),
)


class FeatureProgram:
    """Handles of one random program, with the attempts each task ran."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.calls: dict[int, int] = {}
        self.running: set[int] = set()
        self.gates: dict[int, asyncio.Event] = {}
        self.first_final: dict[int, TaskState] = {}
        self.began = asyncio.get_running_loop().time()

    def make(self, kind: str, index: int) -> Callable[[], Any]:
        self.calls[index] = 0
        self.gates[index] = asyncio.Event()

        async def task() -> int:
            assert index not in self.running, "two attempts of one task at once"
            self.running.add(index)
            self.calls[index] += 1
            try:
                if kind == "fail" or (kind == "fail_once" and self.calls[index] == 1):
                    raise ValueError(f"task {index} failed")

                if kind == "gate":
                    await self.gates[index].wait()

                return index
            finally:
                self.running.discard(index)

        return task

    def check(self, queue: AsyncTaskQueue, max_pending: int) -> None:
        unique = list({id(h): h for h in self.handles}.values())
        states = [h.state for h in unique]
        stats = queue.stats()
        assert_state_counts(stats, states)
        assert stats.running <= stats.workers
        # A retry may exceed max_pending, a first attempt never.
        waiting = (TaskState.PENDING, TaskState.DELAYED)
        fresh = [h for h in unique if h.state in waiting and h.attempts == 0]
        assert len(fresh) <= max_pending
        # The rate limit: 4 starts per second, in bursts of up to 2.
        elapsed = asyncio.get_running_loop().time() - self.began
        assert sum(self.calls.values()) <= 2 + 4.0 * elapsed + 1e-3
        for handle in unique:
            assert handle.attempts == self.calls[handle.id]
            assert handle.attempts <= 2
            if handle.done():
                first = self.first_final.setdefault(handle.id, handle.state)
                assert handle.state is first


async def _run_feature_program(
    loop: VirtualClockLoop,
    actions: list[tuple[Any, ...]],
    aging: bool,
    mode: str,
) -> None:
    policy = RetryPolicy(max_retries=1, base_delay=1.0, jitter="none")
    queue = AsyncTaskQueue(
        2,
        retry=policy,
        max_pending=4,
        aging_rate=0.5 if aging else None,
        rate_limit=4.0,
        rate_burst=2,
    )
    await queue.start()
    program = FeatureProgram()
    for action in actions:
        name = action[0]
        if name == "submit":
            _, kind, priority, delay, key = action
            index = queue.stats().submitted + 1
            task = program.make(kind, index)
            try:
                handle = queue.submit_nowait(
                    task, priority=priority, delay=delay, dedup_key=key
                )
            except QueueFullError:
                del program.calls[index]
            else:
                program.handles.append(handle)
        elif name == "advance":
            loop.advance(action[1])
            await settle(5)
        elif name == "pause":
            queue.pause()
        elif name == "resume":
            queue.resume()
        elif name == "resize":
            queue.resize(action[1])
        elif program.handles:
            handle = program.handles[action[1] % len(program.handles)]
            if name == "cancel":
                was_final = handle.done()
                assert handle.cancel() is (not was_final)
            else:
                program.gates[handle.id].set()

        await settle(3)
        program.check(queue, 4)

    stop = asyncio.create_task(queue.stop(mode, timeout=50, grace=1))
    while not stop.done():
        for gate in program.gates.values():
            gate.set()
        loop.advance(1)
        await settle(5)

    stop.result()
    program.check(queue, 4)
    assert all(h.done() for h in program.handles)
    assert queue.stats().workers == 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(FEATURE_ACTION, max_size=40),
    st.booleans(),
    st.sampled_from(["drain", "finish_running", "cancel"]),
)
def test_random_feature_programs_consistent(
    actions: list[tuple[Any, ...]], aging: bool, mode: str
) -> None:
    """Counts match handle states with every feature on, and no attempt repeats."""
    # A tiny threshold makes both heaps compact their stale entries often.
    with mock.patch.object(containers, "_COMPACT_MIN_STALE", 2):
        run_virtual(lambda loop: _run_feature_program(loop, actions, aging, mode))


# Random cancels from hooks and callers


def _make_chaos_hook(rng: random.Random, record: Callable[[Any], None]) -> Hook:
    """Return a hook that, at any event, may cancel a random task via ``record``."""

    class Chaos(Hook):
        pass

    def observe(self: Hook, event: TaskEvent) -> None:
        if rng.random() < 0.3:
            record(None)

    for name in EVENTS:
        setattr(Chaos, name, observe)

    return Chaos()


async def _chaos_task(kind: str) -> int:
    if kind == "fail":
        raise ValueError("attempt failed")

    if kind == "retry_after":
        raise RetryAfter(0.3)

    if kind == "hang":
        await asyncio.sleep(5)

    if kind == "suppress":
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(5)

    return 1


async def _run_chaos(loop: VirtualClockLoop, rng: random.Random) -> None:
    handles: list[Any] = []
    attempts_at_cancel: dict[object, int] = {}

    def cancel_random(_: object) -> None:
        if handles:
            handle = rng.choice(handles)
            before = handle.attempts
            if handle.cancel("cancelled at random"):
                attempts_at_cancel.setdefault(handle.id, before)

    policy = RetryPolicy(max_retries=2, base_delay=0.5, jitter="none")
    queue = AsyncTaskQueue(
        rng.randint(1, 3),
        retry=policy,
        timeout=1.0,
        hooks=[_make_chaos_hook(rng, cancel_random)],
        max_pending=rng.choice([None, 3]),
        aging_rate=rng.choice([None, 1.0]),
        rate_limit=rng.choice([None, 5.0]),
    )
    await queue.start()
    for _ in range(40):
        roll = rng.random()
        if roll < 0.45:
            kind = rng.choice(["ok", "fail", "hang", "retry_after", "suppress"])
            with contextlib.suppress(QueueFullError):
                handles.append(
                    queue.submit_nowait(
                        _chaos_task,
                        kind,
                        priority=rng.randint(0, 2),
                        delay=rng.choice([None, 0.2, 1.5]),
                    )
                )
        elif roll < 0.6:
            cancel_random(None)
        else:
            loop.advance(rng.choice([0.1, 0.5, 1.2]))

        await settle(3)
        _check_chaos(queue, handles, attempts_at_cancel)

    mode = rng.choice(["drain", "cancel", "finish_running"])
    stop = asyncio.create_task(queue.stop(mode, timeout=20, grace=1))
    while not stop.done():
        loop.advance(1)
        await settle(5)

    stop.result()
    _check_chaos(queue, handles, attempts_at_cancel)
    assert all(h.done() for h in handles)
    assert queue.stats().workers == 0


def _check_chaos(
    queue: AsyncTaskQueue, handles: list[Any], attempts_at_cancel: dict[object, int]
) -> None:
    states = [h.state for h in handles]
    stats = queue.stats()
    assert stats.pending == states.count(TaskState.PENDING)
    assert stats.delayed == states.count(TaskState.DELAYED)
    assert stats.waiting_retry == states.count(TaskState.WAITING_RETRY)
    assert stats.running == states.count(TaskState.RUNNING)
    assert stats.succeeded == states.count(TaskState.SUCCEEDED)
    assert stats.failed == states.count(TaskState.FAILED)
    assert stats.cancelled == states.count(TaskState.CANCELLED)
    for handle in handles:
        if handle.id not in attempts_at_cancel:
            continue

        # An accepted cancel lets at most the attempt running then go on.
        assert handle.attempts <= max(attempts_at_cancel[handle.id], 1)
        if handle.done():
            assert handle.state is TaskState.CANCELLED


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_cancels_from_hooks_hold(seed: int) -> None:
    """Tasks cancelled at any event, by hooks or callers, end CANCELLED once."""
    # A seeded generator, because hypothesis's own random draws read files,
    # which the blocking-call detector rejects inside the event loop.
    rng = random.Random(seed)
    with mock.patch.object(containers, "_COMPACT_MIN_STALE", 2):
        run_virtual(lambda loop: _run_chaos(loop, rng))
