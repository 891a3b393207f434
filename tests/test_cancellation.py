"""Cancellation: pending, waiting-to-retry and running tasks, awaiters, ids."""

from __future__ import annotations

import asyncio
import gc
import inspect
import warnings
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    RetryPolicy,
    TaskCancelledError,
    TaskHandle,
    TaskNotFoundError,
    TaskState,
)
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import Gate, until

# The async tests run on asyncio's event loop and on uvloop.
pytestmark = pytest.mark.every_loop

NO_RETRY = RetryPolicy(max_retries=0)


class Flaky:
    """A coroutine function that fails its first call and then succeeds."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls == 1:
            raise ValueError("first attempt fails")

        return "done"


class SlowCleanup:
    """A coroutine function whose cleanup after a cancel waits for the test."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cleanup_started = asyncio.Event()
        self.cleanup_release = asyncio.Event()
        self.seen: list[BaseException] = []
        self.cleaned_up = False

    async def __call__(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            self.seen.append(exc)
            self.cleanup_started.set()
            await self.cleanup_release.wait()
            self.cleaned_up = True
            raise


async def settle(iterations: int = 10) -> None:
    """Let the loop run callbacks that are already scheduled."""
    for _ in range(iterations):
        await asyncio.sleep(0)


async def outcome(handle: TaskHandle[Any]) -> object:
    """Await ``handle`` and return its result or the exception it raised."""
    try:
        return await handle
    except Exception as exc:
        return exc


async def ticker(count: int) -> int:
    """Await ``count`` times, so that a stray cancel request would hit it."""
    for _ in range(count):
        await asyncio.sleep(0)

    return count


# Pending tasks


async def test_cancel_pending_never_starts() -> None:
    blocker = Gate()
    target = Gate()
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        first = await queue.submit(blocker)
        await blocker.started.wait()
        handle = await queue.submit(target)
        awaiter = asyncio.create_task(outcome(handle))
        await settle()
        assert handle.state is TaskState.PENDING
        assert queue.stats().pending == 1

        assert handle.cancel("no longer needed") is True
        assert handle.state is TaskState.CANCELLED
        assert handle.done()
        assert handle.cancelled()
        assert handle.cancel() is False
        assert queue.stats().pending == 0
        assert queue.stats().cancelled == 1

        error = await awaiter
        assert isinstance(error, TaskCancelledError)
        assert "no longer needed" in str(error)

        blocker.release.set()
        assert await first == "done"

    assert target.calls == 0
    assert handle.attempts == 0
    assert handle.state is TaskState.CANCELLED
    assert queue.stats().succeeded == 1


async def test_await_cancelled_raises_task_error() -> None:
    blocker = Gate()
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        await queue.submit(blocker)
        await blocker.started.wait()
        handle = await queue.submit(Gate())
        handle.cancel()
        blocker.release.set()

    # pytest.raises(TaskCancelledError) lets asyncio.CancelledError through,
    # so the wrong exception type would error out of the test.
    with pytest.raises(TaskCancelledError, match="was cancelled") as caught:
        await handle

    assert not isinstance(caught.value, asyncio.CancelledError)
    assert isinstance(handle.exception(), TaskCancelledError)
    with pytest.raises(TaskCancelledError):
        handle.result()


# Tasks waiting out a backoff


def test_cancel_waiting_retry_never_reruns() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        flaky = Flaky()
        policy = RetryPolicy(max_retries=3, base_delay=60, jitter="none")
        async with AsyncTaskQueue(1, retry=policy) as queue:
            handle = await queue.submit(flaky)
            await until(lambda: handle.state is TaskState.WAITING_RETRY)
            assert queue.stats().waiting_retry == 1

            assert handle.cancel() is True
            assert handle.state is TaskState.CANCELLED
            assert queue.stats().waiting_retry == 0
            assert queue.stats().cancelled == 1
            assert handle.cancel() is False

            # Cross the backoff: the parked timer fires and must skip the task.
            loop.advance(120)
            await settle(20)
            assert flaky.calls == 1
            assert handle.attempts == 1
            assert queue.stats().pending == 0
            assert queue.stats().running == 0

        with pytest.raises(TaskCancelledError):
            await handle

        assert flaky.calls == 1
        assert handle.state is TaskState.CANCELLED

    run_virtual(main)


# Running tasks


async def test_cancel_running_waits_for_cleanup() -> None:
    task = SlowCleanup()
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        workers = queue.stats().workers
        handle = await queue.submit(task)
        await task.started.wait()
        awaiter = asyncio.create_task(outcome(handle))
        await settle()

        assert handle.cancel("stop it") is True
        await task.cleanup_started.wait()
        await settle()
        assert len(task.seen) == 1
        assert isinstance(task.seen[0], asyncio.CancelledError)
        assert task.seen[0].args == ("stop it",)
        assert handle.state is TaskState.RUNNING
        assert not handle.done()
        assert not awaiter.done()

        task.cleanup_release.set()
        error = await awaiter
        assert isinstance(error, TaskCancelledError)
        assert "stop it" in str(error)
        assert task.cleaned_up
        assert handle.state is TaskState.CANCELLED
        assert handle.cancel() is False
        assert len(task.seen) == 1

        stats = queue.stats()
        assert stats.workers == workers
        assert stats.running == 0
        assert stats.cancelled == 1

        later = await queue.submit(ticker, 5)
        assert await later == 5

    assert later.state is TaskState.SUCCEEDED


@pytest.mark.parametrize("ending", ["return", "raise"])
async def test_cancel_suppressed_still_cancelled(ending: str) -> None:
    started = asyncio.Event()
    swallowed: list[BaseException] = []

    async def suppressor() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            swallowed.append(exc)

        if ending == "raise":
            raise ValueError("raised after the cancel")

        return "ignored"

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        workers = queue.stats().workers
        handle = await queue.submit(suppressor)
        await started.wait()
        assert handle.cancel() is True

        with pytest.raises(TaskCancelledError):
            await handle

        assert len(swallowed) == 1
        assert handle.state is TaskState.CANCELLED
        assert queue.stats().failed == 0
        assert queue.stats().succeeded == 0
        assert queue.stats().workers == workers

        later = await queue.submit(ticker, 5)
        assert await later == 5


@pytest.mark.parametrize("ending", ["return", "raise", "await"])
async def test_cancel_own_handle(ending: str) -> None:
    holder: asyncio.Future[TaskHandle[Any]] = asyncio.get_running_loop().create_future()
    seen: list[BaseException] = []

    async def self_cancelling() -> str:
        own = await holder
        assert own.cancel("cancelled from inside") is True
        if ending == "raise":
            raise ValueError("raised after cancelling itself")

        if ending == "await":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError as exc:
                seen.append(exc)
                raise

        return "ignored"

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(self_cancelling)
        following = await queue.submit(ticker, 10)
        holder.set_result(handle)

        error = await outcome(handle)
        assert isinstance(error, TaskCancelledError)
        assert "cancelled from inside" in str(error)
        assert handle.state is TaskState.CANCELLED

        assert await following == 10
        assert following.state is TaskState.SUCCEEDED

        after_idle = await queue.submit(ticker, 10)
        assert await after_idle == 10

    expected_seen = 1 if ending == "await" else 0
    assert len(seen) == expected_seen
    assert queue.stats().cancelled == 1
    assert queue.stats().succeeded == 2


async def test_cancel_own_handle_then_idle() -> None:
    """A self-cancel on a worker that then goes idle must not hit its next task."""
    holder: asyncio.Future[TaskHandle[Any]] = asyncio.get_running_loop().create_future()

    async def self_cancelling() -> str:
        own = await holder
        own.cancel()
        return "ignored"

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(self_cancelling)
        holder.set_result(handle)
        with pytest.raises(TaskCancelledError):
            await handle

        await settle()
        assert queue.stats().running == 0

        later = await queue.submit(ticker, 10)
        assert await later == 10

    assert queue.stats().cancelled == 1


# Awaiters


async def test_awaiter_cancel_leaves_task_running() -> None:
    gate = Gate(result=42)
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(gate)
        await gate.started.wait()
        first_waiting = asyncio.Event()
        first_errors: list[BaseException] = []

        async def first_awaiter() -> object:
            first_waiting.set()
            try:
                return await handle
            except BaseException as exc:
                first_errors.append(exc)
                raise

        first = asyncio.create_task(first_awaiter())
        second = asyncio.create_task(outcome(handle))
        await first_waiting.wait()
        await settle()

        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first

        assert len(first_errors) == 1
        assert type(first_errors[0]) is asyncio.CancelledError
        assert handle.state is TaskState.RUNNING
        assert gate.cancelled == 0
        assert not second.done()

        gate.release.set()
        assert await second == 42
        assert await handle == 42

    assert handle.state is TaskState.SUCCEEDED
    assert gate.calls == 1


async def test_wait_for_timeouts_keep_waiters_bounded() -> None:
    gate = Gate(result=7)
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(gate)
        await gate.started.wait()
        steady = asyncio.create_task(outcome(handle))
        await settle()
        assert handle._waiters is not None
        assert len(handle._waiters) == 1

        for _ in range(25):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(handle, 0.001)

        for _ in range(25):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.001):
                    await handle

        assert len(handle._waiters) == 1
        assert handle.state is TaskState.RUNNING

        gate.release.set()
        assert await steady == 7

    assert handle._waiters is None


# Cancel by id


async def test_cancel_by_id() -> None:
    running_gate = Gate()
    pending_gate = Gate()
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        running = await queue.submit(running_gate, task_id="running")
        await running_gate.started.wait()
        pending = await queue.submit(pending_gate, task_id="pending")
        numbered = await queue.submit(Gate())

        assert queue.cancel("pending") is True
        assert pending.state is TaskState.CANCELLED
        assert queue.cancel(numbered.id, "by number") is True
        assert numbered.state is TaskState.CANCELLED

        assert queue.cancel("running", "by id") is True
        with pytest.raises(TaskCancelledError, match="by id"):
            await running

        assert running_gate.cancelled == 1
        assert queue.cancel("running") is False
        assert queue.cancel("pending") is False

    assert pending_gate.calls == 0
    assert queue.stats().cancelled == 3


@pytest.mark.parametrize("missing", ["no-such-task", 12345])
async def test_cancel_unknown_id_raises(missing: object) -> None:
    async with AsyncTaskQueue(1) as queue:
        with pytest.raises(TaskNotFoundError) as caught:
            queue.cancel(missing)

    assert repr(missing) in str(caught.value)
    assert isinstance(caught.value, KeyError)


# Coroutine objects


async def test_cancelled_coroutine_object_is_closed() -> None:
    calls = 0

    async def work() -> None:
        nonlocal calls
        calls += 1

    blocker = Gate()
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        await queue.submit(blocker)
        await blocker.started.wait()
        coroutine = work()
        handle = await queue.submit(coroutine, retry=RetryPolicy(max_retries=0))
        assert handle.cancel() is True
        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
        blocker.release.set()

    assert calls == 0
    assert handle.state is TaskState.CANCELLED
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del coroutine, handle, queue
        gc.collect()

    assert [str(w.message) for w in caught] == []


# Interleavings

OPERATION = st.one_of(
    st.just(("submit", 0)),
    st.tuples(st.just("cancel"), st.integers(0, 7)),
    st.tuples(st.just("release"), st.integers(0, 7)),
    st.just(("settle", 0)),
)


async def _interleave(workers: int, operations: list[tuple[str, int]]) -> None:
    queue = AsyncTaskQueue(workers, retry=NO_RETRY)
    await queue.start()
    gates: list[Gate] = []
    handles: list[TaskHandle[Any]] = []
    cancel_requested: set[int] = set()
    first_final: dict[int, TaskState] = {}

    def check() -> None:
        states = [h.state for h in handles]
        for index, handle in enumerate(handles):
            assert gates[index].calls == handle.attempts
            assert handle.attempts <= 1
            if handle.done():
                first = first_final.setdefault(index, handle.state)
                assert handle.state is first

        stats = queue.stats()
        assert stats.pending == states.count(TaskState.PENDING)
        assert stats.running == states.count(TaskState.RUNNING)
        assert stats.running <= workers
        assert stats.succeeded == states.count(TaskState.SUCCEEDED)
        assert stats.cancelled == states.count(TaskState.CANCELLED)
        assert stats.failed == 0
        assert stats.waiting_retry == 0
        assert stats.submitted == len(handles)

    for name, index in operations:
        if name == "submit":
            gate = Gate(result=len(gates))
            gates.append(gate)
            handles.append(await queue.submit(gate))
        elif name == "settle":
            await settle(3)
        elif handles:
            index %= len(handles)
            if name == "release":
                gates[index].release.set()
            else:
                was_final = handles[index].done()
                assert handles[index].cancel() is (not was_final)
                if not was_final:
                    cancel_requested.add(index)

        check()

    for gate in gates:
        gate.release.set()

    await queue.join()
    check()
    report = await queue.stop()
    assert report.interrupted == ()
    assert report.dropped == ()
    assert queue.stats().workers == 0

    for index, handle in enumerate(handles):
        assert handle.done()
        if index in cancel_requested:
            assert handle.state is TaskState.CANCELLED
            assert isinstance(handle.exception(), TaskCancelledError)
        else:
            assert handle.state is TaskState.SUCCEEDED
            assert handle.result() == index

        if handle.attempts == 0:
            assert gates[index].calls == 0

    check()


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 2), st.lists(OPERATION, max_size=40))
def test_interleavings_end_consistent(
    workers: int, operations: list[tuple[str, int]]
) -> None:
    asyncio.run(_interleave(workers, operations))
