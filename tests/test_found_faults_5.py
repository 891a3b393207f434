"""Regression tests for faults found by probing retries, handles, stop()
reports and periodic tasks as a hostile caller."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import math
import pickle

import pytest

from async_queue import (
    AsyncTaskQueue,
    QueueStateError,
    RetryAfter,
    RetryPolicy,
    TaskHandle,
    TaskState,
)
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import Gate, assert_failed_unretried, until

NO_RETRY = RetryPolicy(max_retries=0)


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy])
async def test_copied_handle_is_the_handle(copier: object) -> None:
    # A copy that the queue never updates would stay PENDING forever, and
    # cancelling it would corrupt the queue's counts.
    gate = Gate(result=42)
    async with AsyncTaskQueue(max_workers=1, retry=NO_RETRY) as queue:
        handle = await queue.submit(gate)
        copied = copier(handle)  # type: ignore[operator]
        assert copied is handle

        gate.release.set()
        assert await asyncio.wait_for(copied, 10) == 42

    assert handle.state is TaskState.SUCCEEDED


async def test_report_converts_with_asdict() -> None:
    # dataclasses.asdict() deep-copies each field, the handles included.
    gate = Gate()
    queue = AsyncTaskQueue(max_workers=1, retry=NO_RETRY)
    await queue.start()
    running = await queue.submit(gate)
    pending = await queue.submit(gate)
    await gate.started.wait()

    report = await queue.stop()
    fields = dataclasses.asdict(report)

    assert fields["interrupted"] == (running,)
    assert fields["interrupted"][0] is running
    assert fields["never_started"][0] is pending


async def test_handle_pickle_raises_clear_error() -> None:
    async with AsyncTaskQueue(retry=NO_RETRY) as queue:
        handle = await queue.submit(Gate())
        with pytest.raises(TypeError, match=r"cannot be pickled.*handle\.id"):
            pickle.dumps(handle)

        handle.cancel()


class _AsyncPredicate:
    async def __call__(self, exc: BaseException) -> bool:
        return False


async def _async_predicate(exc: BaseException) -> bool:
    return False


@pytest.mark.parametrize("predicate", [_async_predicate, _AsyncPredicate()])
def test_async_retry_on_predicate_rejected(predicate: object) -> None:
    # The coroutine it returns is truthy, so every exception was retried
    # whatever the predicate meant, and the coroutine was never awaited.
    with pytest.raises(
        TypeError, match=r"retry_on must be a plain function.*coroutine function"
    ):
        RetryPolicy(retry_on=predicate)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "delay",
    [math.nan, math.inf, -1.0, "5", 10**400],
    ids=["nan", "inf", "negative", "str", "huge_int"],
)
def test_retry_after_delay_checked_when_raised(delay: object) -> None:
    # A delay changed after RetryAfter checked it: NaN as the due time of the
    # shared retry timer kept every other task's retry from ever firing.
    async def main(loop: VirtualClockLoop) -> None:
        async def odd_delay() -> None:
            error = RetryAfter(1)
            error.delay = delay  # type: ignore[assignment]
            raise error

        calls = 0

        async def retry_once() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RetryAfter(3)
            return "done"

        async with AsyncTaskQueue(retry=RetryPolicy(max_retries=1)) as queue:
            odd = await queue.submit(odd_delay)
            other = await queue.submit(retry_once)
            await until(lambda: odd.done() and other.state is TaskState.WAITING_RETRY)

            loop.advance(3)
            await until(other.done)

        assert other.result() == "done"
        assert odd.state is TaskState.FAILED
        assert odd.attempts == 1
        error = odd.exception()
        assert isinstance(error, (TypeError, ValueError))
        assert "RetryAfter" in str(error)
        assert repr(delay)[:10] in str(error)

    run_virtual(main, autojump=None)


def test_retry_after_subclass_without_delay() -> None:
    # A subclass that skipped RetryAfter.__init__ failed its task with a bare
    # AttributeError that did not say what to change.
    class Later(RetryAfter):
        def __init__(self) -> None:
            Exception.__init__(self, "later")

    async def later() -> None:
        raise Later()

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(retry=RetryPolicy(max_retries=1)) as queue:
            handle = await queue.submit(later)
            await until(handle.done)

        assert handle.state is TaskState.FAILED
        assert handle.attempts == 1
        error = handle.exception()
        assert isinstance(error, TypeError)
        assert "Later has no delay" in str(error)
        assert "RetryAfter.__init__(self, seconds)" in str(error)
        assert isinstance(error.__cause__, Later)

    run_virtual(main, autojump=None)


@pytest.mark.parametrize("retry", [math.nan, 2.5, True, "1", None])
@pytest.mark.parametrize("jitter", ["none", "decorrelated"])
def test_backoff_and_delay_reject_non_int_retry(retry: object, jitter: str) -> None:
    # backoff(nan) and delay(nan) returned NaN, and backoff(2.5) a delay
    # between two retries.
    policy = RetryPolicy(jitter=jitter)  # type: ignore[arg-type]
    for method in (policy.backoff, policy.delay):
        with pytest.raises(TypeError, match=r"retry must be an int .*got"):
            method(retry)  # type: ignore[arg-type]


async def test_await_handle_from_other_thread_loop() -> None:
    # The awaiting coroutine added its waiter to the handle from the other
    # thread, racing with the queue's loop, before asyncio rejected the
    # future of another loop with a message that named no fix.
    def await_elsewhere(handle: TaskHandle[object]) -> Exception | None:
        async def wait() -> object:
            return await handle

        try:
            asyncio.run(wait())
        except Exception as error:
            return error
        return None

    gate = Gate(result="done")
    async with AsyncTaskQueue(retry=NO_RETRY) as queue:
        handle = await queue.submit(gate)
        error = await asyncio.to_thread(await_elsewhere, handle)

        assert isinstance(error, QueueStateError)
        assert "a different loop awaits it" in str(error)
        assert "asyncio.run_coroutine_threadsafe()" in str(error)
        assert handle._waiters is None or handle._waiters == []

        gate.release.set()
        assert await handle == "done"


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("retry_on", [BaseException, lambda exc: True])
def test_fatal_exception_never_retried(
    fatal: type[BaseException], retry_on: object
) -> None:
    # The worker re-raises a fatal exception and the event loop stops, so a
    # retry could never run: the task was left WAITING_RETRY for good.
    policy = RetryPolicy(max_retries=2, base_delay=0, retry_on=retry_on)  # type: ignore[arg-type]
    assert policy.should_retry(fatal(), 0) is False

    queue = AsyncTaskQueue(retry=policy)
    handles: list[TaskHandle[None]] = []
    contexts: list[dict[str, object]] = []

    async def raise_fatal() -> None:
        raise fatal

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: contexts.append(context))
        await queue.start()
        handles.append(await queue.submit(raise_fatal))
        await asyncio.Event().wait()

    with asyncio.Runner() as runner:
        with pytest.raises(fatal):
            runner.run(main())

        runner.run(queue.stop())

    assert_failed_unretried(queue, handles[0], fatal)
    assert contexts == []


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy])
def test_copied_schedule_is_the_schedule(copier: object) -> None:
    # A copy shared the timer of the schedule: cancelling the copy stopped
    # the schedule while its `active` stayed True.
    async def tick() -> None:
        pass

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(retry=NO_RETRY) as queue:
            schedule = queue.every(1, tick)
            copied = copier(schedule)  # type: ignore[operator]
            assert copied is schedule

            await asyncio.sleep(3.5)
            assert schedule.runs == 3
            assert schedule.active

    run_virtual(main)


async def test_schedule_pickle_raises_clear_error() -> None:
    async def tick() -> None:
        pass

    async with AsyncTaskQueue(retry=NO_RETRY) as queue:
        schedule = queue.every(1, tick)
        with pytest.raises(TypeError, match=r"cannot be pickled"):
            pickle.dumps(schedule)


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy, pickle.dumps])
async def test_queue_copy_raises(copier: object) -> None:
    # A copy shared the heap and the workers but kept counters of its own,
    # and its stop() hung.
    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        with pytest.raises(TypeError, match="AsyncTaskQueue cannot be"):
            copier(queue)  # type: ignore[operator]

        handle = await queue.submit(asyncio.sleep, 0)
        assert await handle is None

    assert queue.stats().succeeded == 1


async def test_resize_to_zero_points_to_pause() -> None:
    async with AsyncTaskQueue(2) as queue:
        with pytest.raises(ValueError, match=r"got 0; the pool .* call pause\(\)"):
            queue.resize(0)

        assert queue.max_workers == 2
