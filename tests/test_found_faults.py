"""Regression tests for faults found by probing the queue as a hostile caller."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import sys
import weakref
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    DeadLetter,
    DuplicateTaskIdError,
    Hook,
    QueueClosedError,
    QueueFullError,
    RetryAfter,
    RetryPolicy,
    TaskEvent,
    TaskState,
    containers,
)
from async_queue.hooks import EVENTS
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import assert_state_counts, until

NO_RETRY = RetryPolicy(max_retries=0)


async def settle(steps: int = 20) -> None:
    """Let the loop run callbacks and woken coroutines for a few iterations."""
    for _ in range(steps):
        await asyncio.sleep(0)


def test_rate_limit_fills_every_worker() -> None:
    """Blocked starts resume at the rate limit on every idle worker, not one."""

    async def main(loop: VirtualClockLoop) -> None:
        gate = asyncio.Event()

        async def hold() -> None:
            await gate.wait()

        queue = AsyncTaskQueue(10, retry=NO_RETRY, rate_limit=100.0)
        await queue.start()
        handles = [await queue.submit(hold) for _ in range(20)]

        # 100 starts per second: 0.3 s gives tokens for far more than 10 workers.
        for _ in range(30):
            loop.advance(0.01)
            await settle()

        assert queue.stats().running == 10
        assert queue.stats().pending == 10

        gate.set()
        # The drain starts the last ten tasks at the rate limit, in virtual time.
        stopping = asyncio.ensure_future(queue.stop("drain"))
        while not stopping.done():
            loop.advance(0.01)
            await settle()
        assert all(h.state is TaskState.SUCCEEDED for h in handles)

    run_virtual(main)


@settings(max_examples=40, deadline=None)
@given(
    workers=st.integers(1, 6),
    rate=st.sampled_from([5.0, 20.0, 50.0]),
    burst=st.integers(1, 4),
    tasks=st.integers(1, 15),
)
def test_rate_limit_bounds_and_progress(
    workers: int, rate: float, burst: int, tasks: int
) -> None:
    """Starts never exceed burst + rate * elapsed, and blocked starts resume."""

    async def main(loop: VirtualClockLoop) -> None:
        gate = asyncio.Event()
        starts: list[float] = []

        async def hold() -> None:
            starts.append(loop.time())
            await gate.wait()

        queue = AsyncTaskQueue(
            workers, retry=NO_RETRY, rate_limit=rate, rate_burst=burst
        )
        await queue.start()
        begin = loop.time()
        for _ in range(tasks):
            await queue.submit(hold)

        step = 0.25 / rate
        for _ in range(8 * (tasks + 1)):
            loop.advance(step)
            await settle(5)
            elapsed = loop.time() - begin
            # A small slack for the wall time that passes under the virtual clock.
            assert len(starts) <= burst + rate * elapsed + 1e-3

        # 2 * (tasks + 1) token intervals have passed: every worker is busy.
        assert len(starts) == min(workers, tasks)

        gate.set()
        await queue.stop("drain")
        assert len(starts) == tasks

    run_virtual(main)


class RaisingHook(Hook):
    """A hook whose chosen event raises ``CancelledError``, a BaseException."""

    def __init__(self, event: str) -> None:
        self.event = event

    def _maybe_raise(self, event: TaskEvent, name: str) -> None:
        if name == self.event:
            raise asyncio.CancelledError(f"{name} of task {event.task_id!r}")

    def on_submitted(self, event: TaskEvent) -> None:
        self._maybe_raise(event, "on_submitted")

    def on_started(self, event: TaskEvent) -> None:
        self._maybe_raise(event, "on_started")

    def on_succeeded(self, event: TaskEvent) -> None:
        self._maybe_raise(event, "on_succeeded")

    def on_failed(self, event: TaskEvent) -> None:
        self._maybe_raise(event, "on_failed")


async def _one() -> int:
    return 1


async def _fail() -> int:
    raise ValueError("boom")


@pytest.mark.parametrize(
    "event", ["on_submitted", "on_started", "on_succeeded", "on_failed"]
)
async def test_hook_cancelled_error_keeps_worker(event: str) -> None:
    """A hook that raises CancelledError is ignored like any other hook error."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, hooks=[RaisingHook(event)])
    await queue.start()
    failing = await queue.submit(_fail)
    first = await queue.submit(_one)
    second = await queue.submit(_one)
    await until(lambda: second.done())

    assert failing.state is TaskState.FAILED
    assert first.state is TaskState.SUCCEEDED
    assert second.state is TaskState.SUCCEEDED
    assert queue.stats().workers == 1
    assert queue.stats().running == 0

    report = await queue.stop()
    assert report.abandoned == ()


async def test_dead_letter_callback_cancelled_error_keeps_worker() -> None:
    """on_dead_letter raising CancelledError must not end the worker."""

    def callback(letter: DeadLetter) -> None:
        raise asyncio.CancelledError(f"dead letter {letter.task_id!r}")

    queue = AsyncTaskQueue(1, retry=NO_RETRY, on_dead_letter=callback)
    await queue.start()
    failing = await queue.submit(_fail)
    after = await queue.submit(_one)
    await until(lambda: after.done())

    assert failing.state is TaskState.FAILED
    assert len(queue.dead_letters()) == 1
    assert after.state is TaskState.SUCCEEDED
    assert queue.stats().workers == 1

    report = await queue.stop()
    assert report.abandoned == ()


async def test_retry_predicate_cancelled_error_fails_task() -> None:
    """A retry_on predicate raising CancelledError fails its task, once."""

    def predicate(exc: BaseException) -> bool:
        raise asyncio.CancelledError("predicate")

    policy = RetryPolicy(max_retries=2, retry_on=predicate)
    queue = AsyncTaskQueue(1, retry=policy)
    await queue.start()
    failing = await queue.submit(_fail)
    after = await queue.submit(_one)
    await until(lambda: after.done())

    assert failing.state is TaskState.FAILED
    assert failing.attempts == 1
    error = failing.exception()
    assert isinstance(error, RuntimeError)
    assert "CancelledError" in str(error)
    assert isinstance(error.__cause__, asyncio.CancelledError)
    assert after.state is TaskState.SUCCEEDED
    assert queue.stats().workers == 1
    assert queue.stats().failed == 1

    report = await queue.stop()
    assert report.abandoned == ()


@pytest.mark.parametrize(
    "priority", [10**400, -(10**400), 2**1024], ids=["1e400", "-1e400", "2**1024"]
)
async def test_aging_huge_priority_changes_nothing(priority: int) -> None:
    """A priority beyond the float range is rejected before anything is queued."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, aging_rate=1.0)
    await queue.start()
    queue.pause()

    with pytest.raises(ValueError, match=r"priority of \d+ bits is out of range"):
        await queue.submit(_one, priority=priority, dedup_key="job", task_id="job")

    stats = queue.stats()
    assert stats.submitted == 0
    assert stats.pending == 0
    join = asyncio.create_task(queue.join())
    await until(join.done)

    # The id and the dedup key are still free.
    handle = await queue.submit(_one, task_id="job", dedup_key="job")
    queue.resume()
    assert await handle == 1
    assert (await queue.stop("drain")).never_started == ()


async def test_aging_float_max_priority_runs() -> None:
    """The largest priority the aging heap can key still runs first."""
    started: list[str] = []

    async def record(name: str) -> None:
        started.append(name)

    queue = AsyncTaskQueue(1, retry=NO_RETRY, aging_rate=1.0)
    await queue.start()
    queue.pause()
    low = await queue.submit(record, "low", priority=0)
    await queue.submit(record, "high", priority=int(sys.float_info.max))
    queue.resume()
    await until(lambda: low.done())

    assert started == ["high", "low"]
    await queue.stop()


async def test_pause_during_drain_raises() -> None:
    """pause() once stop() has begun raises, so a drain cannot hang paused."""
    gate = asyncio.Event()

    async def hold() -> str:
        await gate.wait()
        return "held"

    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    running = await queue.submit(hold)
    queued = await queue.submit(_one)
    await until(lambda: running.state is TaskState.RUNNING)
    stop = asyncio.create_task(queue.stop("drain"))
    await until(lambda: queue.closed)

    with pytest.raises(QueueClosedError, match="cannot pause a queue that is stopping"):
        queue.pause()

    assert not queue.paused
    gate.set()
    await until(stop.done)
    assert await running == "held"
    assert await queued == 1
    assert stop.result().never_started == ()

    with pytest.raises(QueueClosedError, match="cannot pause a queue that is stopped"):
        queue.pause()


async def test_resize_after_stop_message() -> None:
    """resize() after stop() names the call, not task submission."""
    queue = AsyncTaskQueue(2)
    await queue.start()
    await queue.stop()

    with pytest.raises(QueueClosedError, match=r"cannot resize .* call resize\(\)"):
        queue.resize(3)


async def test_resize_cycles_keep_idle_list_bounded() -> None:
    """Growing and shrinking an idle pool leaves no retired worker listed idle."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    await settle()
    for _ in range(200):
        queue.resize(10)
        await settle(3)
        queue.resize(1)
        await settle(3)

    assert queue.stats().workers == 1
    assert len(queue._idle) == 1  # the only live worker

    handle = await queue.submit(_one)
    assert await handle == 1
    await queue.stop()


async def test_dedup_hit_while_full_returns_at_once() -> None:
    """submit() of a queued dedup key needs no room, like submit_nowait()."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_pending=1)
    await queue.start()
    queue.pause()
    first = await queue.submit(_one, dedup_key="job")

    again = asyncio.create_task(queue.submit(_one, dedup_key="job"))
    await until(again.done)

    assert again.result() is first
    assert queue.submit_nowait(_one, dedup_key="job") is first
    assert queue.stats().deduplicated == 2
    assert queue.stats().pending == 1

    queue.resume()
    assert await first == 1
    await queue.stop()


@pytest.mark.parametrize("key", [["a"], {"a": 1}, {1}])
async def test_unhashable_dedup_key_message(key: object) -> None:
    """An unhashable dedup_key raises a TypeError that names the option."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_pending=1)
    await queue.start()
    queue.pause()
    await queue.submit(_one)

    # The queue is full, so submit() looks the key up before it waits.
    with pytest.raises(TypeError, match="dedup_key must be hashable"):
        await queue.submit(_one, dedup_key=key)

    with pytest.raises(TypeError, match="dedup_key must be hashable"):
        queue.submit_nowait(_one, dedup_key=key)

    assert queue.stats().submitted == 1
    await queue.stop()


async def test_dedup_hit_still_checks_task_id() -> None:
    """An invalid task_id raises even when the dedup key matches a task."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    queue.pause()
    first = await queue.submit(_one, dedup_key="job", task_id="job")

    with pytest.raises(TypeError, match="task_id must be a non-empty str"):
        await queue.submit(_one, dedup_key="job", task_id=7)  # type: ignore[arg-type]

    # The same valid id with the same key is the idempotent resubmission.
    assert await queue.submit(_one, dedup_key="job", task_id="job") is first
    assert queue.stats().deduplicated == 1
    await queue.stop()


def _plain() -> int:
    return 1


@pytest.mark.parametrize(
    ("fn", "options", "error"),
    [
        (_plain, {}, TypeError),
        (_one, {"priority": "high"}, TypeError),
        (_one, {"timeout": -1}, ValueError),
        (_one, {"retry": 3}, TypeError),
        (_one, {"delay": float("nan")}, ValueError),
        (_one, {"delay": 1, "at": 2}, TypeError),
        (_one, {"task_id": ""}, ValueError),
    ],
    ids=["plain", "priority", "timeout", "retry", "delay", "delay-and-at", "task-id"],
)
async def test_full_queue_rejects_bad_input_at_once(
    fn: Callable[[], Any], options: dict[str, Any], error: type[Exception]
) -> None:
    """On a full queue, await submit() raises for bad input instead of waiting."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_pending=1)
    await queue.start()
    queue.pause()
    queued = await queue.submit(_one)

    attempt = asyncio.create_task(queue.submit(fn, **options))
    await until(attempt.done)

    with pytest.raises(error):
        attempt.result()

    assert queue.stats().submitted == 1
    queue.resume()
    assert await queued == 1
    # No room stayed reserved for the rejected call.
    assert await queue.submit_nowait(_one) == 1
    await queue.stop()


async def test_full_queue_rejects_coroutine_with_retries_at_once() -> None:
    """A coroutine object with retries is rejected before waiting, and not closed."""
    queue = AsyncTaskQueue(1, retry=RetryPolicy(max_retries=1), max_pending=1)
    await queue.start()
    queue.pause()
    await queue.submit(_one)
    coroutine = _one()

    attempt = asyncio.create_task(queue.submit(coroutine))
    await until(attempt.done)

    with pytest.raises(ValueError, match="cannot be retried"):
        attempt.result()

    assert await coroutine == 1  # still the caller's to run
    await queue.stop()


@pytest.mark.parametrize(
    ("seconds", "error"),
    [
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (-1, ValueError),
        ("1", TypeError),
        (None, TypeError),
    ],
)
def test_virtual_clock_rejects_bad_advance(
    seconds: object, error: type[Exception]
) -> None:
    """advance() rejects what would leave the clock NaN, infinite or broken."""
    loop = VirtualClockLoop()
    try:
        loop.advance(1.5)
        before = loop.offset
        with pytest.raises(error, match="seconds must be"):
            loop.advance(seconds)  # type: ignore[arg-type]

        assert loop.offset == before
        assert loop.offset == 1.5
    finally:
        loop.close()


def test_threadsafe_after_stop_settles_future() -> None:
    """submit_threadsafe() after stop() fails its future even if the loop idles."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)

    async def start_and_stop() -> None:
        await queue.start()
        await queue.stop()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(start_and_stop())
        # The loop is not running now, so a callback sent to it would wait.
        future = queue.submit_threadsafe(_one)

        assert future.done()
        with pytest.raises(QueueClosedError, match="stopped"):
            future.result()
    finally:
        loop.close()


async def test_failed_requeue_keeps_letter_order() -> None:
    """A requeue rejected for its arguments leaves the dead letters as they were."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_dead_letters=3)
    await queue.start()
    for _ in range(3):
        await queue.submit(_fail)
    await queue.join()
    before = [letter.task_id for letter in queue.dead_letters()]
    assert before == [1, 2, 3]

    with pytest.raises(TypeError, match="priority must be an int"):
        await queue.requeue(1, priority="urgent")  # type: ignore[arg-type]

    assert [letter.task_id for letter in queue.dead_letters()] == before

    # The oldest letter is still the first evicted.
    await queue.submit(_fail)
    await queue.join()
    assert [letter.task_id for letter in queue.dead_letters()] == [2, 3, 4]
    await queue.stop()


async def test_coroutine_letter_requeue_keeps_order() -> None:
    """Requeueing a coroutine object's letter raises and moves no letter."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    coroutine_task = await queue.submit(_fail())
    await queue.submit(_fail)
    await queue.join()

    with pytest.raises(ValueError, match="coroutine object"):
        await queue.requeue(coroutine_task.id)

    assert [letter.task_id for letter in queue.dead_letters()] == [1, 2]
    await queue.stop()


async def test_requeue_after_stop_keeps_letter() -> None:
    """requeue() on a stopped queue raises and keeps the letter in place."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    await queue.submit(_fail)
    await queue.submit(_fail)
    await queue.join()
    await queue.stop()

    with pytest.raises(QueueClosedError):
        await queue.requeue(1)

    assert [letter.task_id for letter in queue.dead_letters()] == [1, 2]


async def test_reused_task_id_letter_is_newest() -> None:
    """A str id that fails again replaces its letter as the newest one."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_results=0, max_dead_letters=2)
    await queue.start()
    for task_id in ("job", "other", "job"):
        await queue.submit(_fail, task_id=task_id)
        await queue.join()

    assert [letter.task_id for letter in queue.dead_letters()] == ["other", "job"]
    assert queue.stats().dead_letters_evicted == 1  # the first letter of "job"

    await queue.submit(_fail, task_id="third")
    await queue.join()
    # "other" is now the oldest, so it is the one evicted.
    assert [letter.task_id for letter in queue.dead_letters()] == ["job", "third"]
    assert queue.stats().dead_letters_evicted == 2
    assert queue.stats().evicted == 4  # max_results=0 evicts every task at once
    await queue.stop()


# Random programs over the features that the adversarial programs leave out:
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


async def test_lambda_of_coroutine_message_suggests_bind() -> None:
    """A lambda that calls a coroutine function gets pointed to bind()."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()

    with pytest.raises(TypeError, match=r"submit bind\(coroutine_function, \.\.\.\)"):
        await queue.submit(lambda: _one())

    assert queue.stats().submitted == 0
    await queue.stop()


class CancelEveryTask(Hook):
    """A hook that cancels every task in ``handles`` whenever one is dropped."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.dropped: list[object] = []

    def on_dropped(self, event: TaskEvent) -> None:
        self.dropped.append(event.task_id)
        for handle in self.handles:
            handle.cancel()


@pytest.mark.parametrize("mode", ["cancel", "finish_running"])
async def test_hook_cancel_during_stop_drop_settles_once(mode: str) -> None:
    """A hook cancelling queued tasks while stop() drops them changes nothing."""
    hook = CancelEveryTask()
    queue = AsyncTaskQueue(1, retry=NO_RETRY, hooks=[hook])
    await queue.start()
    queue.pause()
    hook.handles = [await queue.submit(_one) for _ in range(3)]
    hook.handles.append(await queue.submit(_one, delay=10))

    report = await queue.stop(mode)

    assert report.never_started == tuple(hook.handles)
    assert hook.dropped == [1, 2, 3, 4]
    assert all(h.state is TaskState.CANCELLED for h in hook.handles)
    stats = queue.stats()
    assert stats.pending == 0
    assert stats.delayed == 0
    assert stats.waiting_retry == 0
    assert stats.cancelled == 4
    assert stats.dropped == 4
    assert stats.workers == 0
    assert queue.closed


class CancelOnTimeout(Hook):
    """A hook that cancels each task whose attempt timed out."""

    def __init__(self) -> None:
        self.queue: AsyncTaskQueue | None = None
        self.accepted: list[bool] = []

    def on_timed_out(self, event: TaskEvent) -> None:
        assert self.queue is not None
        self.accepted.append(self.queue.cancel(event.task_id, "cancelled on timeout"))


def test_cancel_from_timeout_hook_stops_retry() -> None:
    """A task cancelled by its on_timed_out hook never runs another attempt."""

    async def main(loop: VirtualClockLoop) -> None:
        calls: list[float] = []

        async def slow_then_fast() -> str:
            calls.append(loop.time())
            if len(calls) == 1:
                await asyncio.sleep(100)

            return "ok"

        hook = CancelOnTimeout()
        policy = RetryPolicy(max_retries=1, base_delay=1.0, jitter="none")
        queue = AsyncTaskQueue(1, retry=policy, timeout=5, hooks=[hook])
        hook.queue = queue
        await queue.start()
        handle = await queue.submit(slow_then_fast)
        await until(lambda: handle.state is TaskState.RUNNING)
        loop.advance(6)
        await until(handle.done)
        loop.advance(2)  # past the backoff the retry would have waited
        await settle()

        assert hook.accepted == [True]
        assert handle.state is TaskState.CANCELLED
        assert handle.attempts == 1
        assert len(calls) == 1
        assert "cancelled on timeout" in str(handle.exception())
        stats = queue.stats()
        assert stats.retries == 0
        assert stats.cancelled == 1
        assert stats.waiting_retry == 0
        await queue.stop()

    run_virtual(main)


async def test_cancel_from_retry_predicate_stops_retry() -> None:
    """A retry_on predicate that cancels its task ends it CANCELLED at once."""
    handles: list[Any] = []
    calls = 0

    def cancel_and_retry(exc: BaseException) -> bool:
        handles[0].cancel("cancelled by the predicate")
        return True

    async def fails_once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first attempt")

        return "ok"

    policy = RetryPolicy(max_retries=1, base_delay=0, retry_on=cancel_and_retry)
    queue = AsyncTaskQueue(1, retry=policy)
    await queue.start()
    handles.append(await queue.submit(fails_once))
    await until(handles[0].done)
    await settle()

    assert handles[0].state is TaskState.CANCELLED
    assert handles[0].attempts == 1
    assert calls == 1
    assert queue.stats().retries == 0
    await queue.stop()


async def test_cancelled_delayed_tasks_are_released() -> None:
    """Delayed tasks cancelled in bulk do not keep their arguments alive."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_results=0)
    await queue.start()
    refs = []
    for _ in range(3000):
        handle = await queue.submit(_echo, bytearray(100), delay=3600)
        assert handle.cancel()
        refs.append(weakref.ref(handle))
    del handle
    gc.collect()

    alive = sum(ref() is not None for ref in refs)
    # Stale entries are dropped in batches of at least 1024.
    assert alive < 1024
    stats = queue.stats()
    assert stats.delayed == 0
    assert stats.cancelled == 3000
    await queue.stop()


def test_compaction_keeps_live_delayed_tasks() -> None:
    """Compacting the timer heap keeps every delayed task that is not cancelled."""

    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(1, retry=NO_RETRY, max_results=0)
        await queue.start()
        kept_tasks: list[tuple[int, Any]] = []
        for index in range(2100):
            handle = await queue.submit(_echo, index, delay=10 + index % 7)
            if index % 3 == 0:
                kept_tasks.append((index, handle))
            else:
                assert handle.cancel()

        assert queue.stats().delayed == len(kept_tasks)
        loop.advance(20)
        await until(lambda: all(h.done() for _, h in kept_tasks))

        assert [await h for _, h in kept_tasks] == [index for index, _ in kept_tasks]
        assert queue.stats().succeeded == len(kept_tasks)
        assert queue.stats().delayed == 0
        await queue.stop()

    run_virtual(main)


async def _echo(value: object) -> object:
    return value


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


# Faults of the inline per-task path and of uvloop's coarse timers.


@pytest.mark.parametrize("how", ["swallows the timeout", "cancels itself, returns"])
def test_interruption_hooks_delay_next_start(how: str) -> None:
    """A task that was interrupted but returned runs its hooks before the next
    task starts: the next task's timeout and wait time count from after them."""

    async def main(loop: VirtualClockLoop) -> None:
        class SlowHook(Hook):
            def on_timed_out(self, event: TaskEvent) -> None:
                loop.advance(5)

            def on_cancelled(self, event: TaskEvent) -> None:
                loop.advance(5)

        queue = AsyncTaskQueue(1, retry=NO_RETRY, hooks=[SlowHook()])

        async def first() -> str:
            if how == "cancels itself, returns":
                await asyncio.sleep(1)
                queue.task(1).cancel()
                return "returned"

            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(100)
            return "returned"

        async def second() -> str:
            await asyncio.sleep(7)
            return "ran 7 s"

        async with queue:
            timeout = 1 if how == "swallows the timeout" else None
            interrupted = queue.submit_nowait(first, timeout=timeout)
            following = queue.submit_nowait(second, timeout=10)
            assert await following == "ran 7 s"
            stats = queue.stats()

        assert interrupted.state in (TaskState.FAILED, TaskState.CANCELLED)
        # The second task waited 1 s for the first, then 5 s for its hook.
        assert stats.wait_time.total == 6.0
        assert stats.wait_time.count == 2

    run_virtual(main)


async def test_shrink_keeps_wakeup() -> None:
    """resize() may retire the idle worker that a submission has just woken;
    an idle worker that stays then takes the task."""

    async def job() -> str:
        return "ran"

    async with AsyncTaskQueue(2) as queue:
        await settle()  # both workers idle
        handle = queue.submit_nowait(job)
        queue.resize(1)

        await until(handle.done)
        stats = queue.stats()

    assert handle.result() == "ran"
    assert stats.workers == 1


async def test_none_result_iterator_send() -> None:
    async def nothing() -> None:
        return None

    async with AsyncTaskQueue(1) as queue:
        handle = queue.submit_nowait(nothing)
        await handle

    for _ in range(2):
        iterator = handle.__await__()
        with pytest.raises(StopIteration) as stop:
            iterator.send(None)
        assert stop.value.value is None


def test_timer_slack_by_loop() -> None:
    from async_queue._base import _CLOCK_RESOLUTION
    from async_queue.core import _timer_slack

    uvloop = pytest.importorskip("uvloop")
    asyncio_loop = asyncio.new_event_loop()
    uv_loop = uvloop.new_event_loop()
    try:
        assert _timer_slack(asyncio_loop) == _CLOCK_RESOLUTION
        assert _timer_slack(uv_loop) == 0.0005
    finally:
        asyncio_loop.close()
        uv_loop.close()


def test_watchdog_deadline_within_slack() -> None:
    """On a loop that runs timers a fraction of a millisecond early, the
    watchdog does not set itself again for a deadline that close: it times the
    task out."""

    async def main(loop: VirtualClockLoop) -> None:
        async def hang() -> None:
            await asyncio.Event().wait()

        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            queue._slack = 0.0005  # as on uvloop
            handle = queue.submit_nowait(hang, timeout=1.0)
            await settle()

            loop.advance(0.9996)  # the watchdog runs 0.4 ms early
            queue._on_watchdog()
            with pytest.raises(TimeoutError):
                await handle

    run_virtual(main, autojump=None)


def test_rate_limit_owes_early_token() -> None:
    """Where a token counts as earned before it is whole, the rest is owed.
    With a slack worth a whole token, as uvloop's at 2,000 starts per second,
    forgiving it let every queued task start at once."""

    async def main(loop: VirtualClockLoop) -> None:
        gate = asyncio.Event()
        started = 0

        async def hold() -> None:
            nonlocal started
            started += 1
            await gate.wait()

        queue = AsyncTaskQueue(50, retry=NO_RETRY, rate_limit=2000.0)
        await queue.start()
        queue._slack = 0.0005  # as on uvloop: half a millisecond is one token
        for _ in range(50):
            queue.submit_nowait(hold)
        await settle()

        # The burst of one, and one token taken early.
        assert started == 2

        for _ in range(10):
            loop.advance(0.001)
            await settle()

        # 10 ms at 2,000 per second is 20 more, give or take the debt.
        assert 21 <= started <= 23
        gate.set()
        await queue.stop()

    run_virtual(main, autojump=None)


async def test_full_queue_rejects_taken_id() -> None:
    async def job() -> None:
        return None

    queue = AsyncTaskQueue(1, max_pending=1)
    await queue.start()
    queue.pause()  # room never frees
    queue.submit_nowait(job, task_id="taken")

    submission = asyncio.ensure_future(queue.submit(job, task_id="taken"))
    await until(submission.done)

    with pytest.raises(DuplicateTaskIdError, match="'taken'"):
        submission.result()
    assert queue.stats().submitted == 1
    await queue.stop()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"priority": "high", "dedup_key": []}, TypeError, "priority"),
        ({"dedup_key": [], "task_id": 5}, TypeError, "dedup_key"),
        ({"dedup_key": "k", "task_id": 5}, TypeError, "task_id"),
    ],
)
async def test_full_queue_check_order(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """On a full queue, await submit() reports the same invalid argument as
    submit_nowait(), not the first one it happened to check."""

    async def job() -> None:
        return None

    queue = AsyncTaskQueue(1, max_pending=1)
    await queue.start()
    queue.pause()
    queue.submit_nowait(job)

    with pytest.raises(error, match=match):
        queue.submit_nowait(job, **options)
    with pytest.raises(error, match=match):
        await queue.submit(job, **options)
    assert queue.stats().submitted == 1
    await queue.stop()
