"""Retries through the queue: parking on a timer, the schedule, the final error,
and the errors that are never retried."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import pickle
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    Hook,
    QueueClosedError,
    RetryAfter,
    RetryPolicy,
    TaskEvent,
    TaskHandle,
    TaskState,
    bind,
)
from async_queue._outcomes import _is_closed_queue_error
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import assert_failed_unretried, until
from tests.helpers import fail as _fail
from tests.helpers import one as _one
from tests.helpers import one as leaf


class Flaky:
    """A coroutine function that fails its first ``failures`` calls."""

    def __init__(self, failures: int, exc_type: type[Exception] = ValueError) -> None:
        self.failures = failures
        self.exc_type = exc_type
        self.calls = 0
        self.errors: list[Exception] = []

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            error = self.exc_type(f"failure {self.calls}")
            self.errors.append(error)
            raise error

        return "done"


def test_waiting_retry_holds_no_worker() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        flaky = Flaky(failures=1)
        policy = RetryPolicy(max_retries=1, base_delay=60, jitter="none")
        async with AsyncTaskQueue(1, retry=policy) as queue:
            handle = await queue.submit(flaky)
            await until(lambda: handle.state is TaskState.WAITING_RETRY)

            stats = queue.stats()
            assert stats.waiting_retry == 1
            assert stats.running == 0

            async def other() -> int:
                return 7

            assert await (await queue.submit(other)) == 7
            assert flaky.calls == 1

            loop.advance(60)
            assert await handle == "done"
            assert handle.attempts == 2
            assert queue.stats().retries == 1

    run_virtual(main)


def test_backoff_schedule_is_exact() -> None:
    """Delays follow min(base * multiplier ** n, max_delay) on the loop clock."""

    async def main(loop: VirtualClockLoop) -> None:
        flaky = Flaky(failures=4)
        policy = RetryPolicy(
            max_retries=4, base_delay=1, multiplier=2, max_delay=5, jitter="none"
        )
        async with AsyncTaskQueue(1, retry=policy) as queue:
            handle = await queue.submit(flaky)
            for attempt, delay in enumerate([1.0, 2.0, 4.0, 5.0], start=1):
                await until(lambda: handle.state is TaskState.WAITING_RETRY)
                assert handle.attempts == attempt

                loop.advance(delay - 0.01)
                for _ in range(20):
                    await asyncio.sleep(0)
                assert handle.attempts == attempt

                loop.advance(0.01)
                await until(lambda a=attempt: handle.attempts == a + 1)

            assert await handle == "done"

    run_virtual(main)


def test_retry_reenters_at_its_priority() -> None:
    """Back from its backoff, a task queues behind pending tasks of its priority."""

    async def main(loop: VirtualClockLoop) -> None:
        started: list[str] = []
        release = asyncio.Event()
        failed = False

        async def flaky() -> None:
            nonlocal failed
            started.append("flaky")
            if not failed:
                failed = True
                raise ValueError("first attempt fails")

        async def blocker() -> None:
            await release.wait()

        async def record(name: str) -> None:
            started.append(name)

        policy = RetryPolicy(max_retries=1, base_delay=10, jitter="none")
        async with AsyncTaskQueue(1, retry=policy) as queue:
            retried = await queue.submit(flaky, priority=5)
            await until(lambda: retried.state is TaskState.WAITING_RETRY)

            block = await queue.submit(blocker, priority=100)
            await until(lambda: queue.stats().running == 1)
            await queue.submit(record, "low", priority=1)
            await queue.submit(record, "equal", priority=5)
            await queue.submit(record, "high", priority=9)

            loop.advance(10)
            await until(lambda: queue.stats().pending == 4)
            release.set()
            await block
            await retried

        assert started == ["flaky", "high", "equal", "flaky", "low"]

    run_virtual(main)


async def test_final_exception_is_the_tasks_own() -> None:
    flaky = Flaky(failures=10)
    policy = RetryPolicy(max_retries=2, base_delay=0, jitter="none")
    async with AsyncTaskQueue(2, retry=policy) as queue:
        handle = await queue.submit(flaky)
        with pytest.raises(ValueError, match="failure 3") as caught:
            await handle

    assert caught.value is flaky.errors[-1]
    assert handle.attempts == 3
    assert handle.state is TaskState.FAILED
    assert handle.exception() is flaky.errors[-1]
    assert queue.stats().retries == 2


@pytest.mark.parametrize(
    ("retry_on", "calls"),
    [
        (KeyError, 1),
        ((KeyError, ValueError), 3),
        (lambda exc: "failure 1" in str(exc), 2),
    ],
)
async def test_retry_filter_chooses_exceptions(retry_on: object, calls: int) -> None:
    flaky = Flaky(failures=10)
    policy = RetryPolicy(max_retries=2, base_delay=0, retry_on=retry_on)  # type: ignore[arg-type]
    async with AsyncTaskQueue(1, retry=policy) as queue:
        handle = await queue.submit(flaky)
        with pytest.raises(ValueError):
            await handle

    assert flaky.calls == calls
    assert handle.attempts == calls


async def test_cancelled_error_from_task_is_not_retried() -> None:
    """A coroutine that raises CancelledError itself ends CANCELLED, never retried."""
    calls = 0

    async def gives_up() -> None:
        nonlocal calls
        calls += 1
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    async def after() -> str:
        return "still working"

    policy = RetryPolicy(max_retries=5, base_delay=0, retry_on=BaseException)
    async with AsyncTaskQueue(1, retry=policy) as queue:
        handle = await queue.submit(gives_up)
        await until(handle.done)
        next_result = await (await queue.submit(after))
        workers = queue.stats().workers

    assert handle.state is TaskState.CANCELLED
    assert calls == 1
    assert next_result == "still working"
    assert workers == 1


async def test_per_task_policy_overrides_queue_policy() -> None:
    flaky = Flaky(failures=1)
    async with AsyncTaskQueue(1, retry=RetryPolicy(max_retries=0)) as queue:
        handle = await queue.submit(
            flaky, retry=RetryPolicy(max_retries=1, base_delay=0)
        )
        assert await handle == "done"

    assert handle.attempts == 2


async def test_decorrelated_jitter_runs_through_queue() -> None:
    import random

    flaky = Flaky(failures=3)
    policy = RetryPolicy(
        max_retries=3,
        base_delay=0.001,
        max_delay=0.002,
        jitter="decorrelated",
        rng=random.Random(3),
    )
    async with AsyncTaskQueue(1, retry=policy) as queue:
        handle = await queue.submit(flaky)
        assert await handle == "done"

    assert handle.attempts == 4


class DelayRecorder(Hook):
    """Records the delay of every scheduled retry."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def on_retry_scheduled(self, event: TaskEvent) -> None:
        assert event.delay is not None
        self.delays.append(event.delay)


@given(
    seed=st.integers(0, 2**32),
    jitter=st.sampled_from(["decorrelated", "full", "equal", "none"]),
    base_delay=st.sampled_from([0.0, 0.5]),
)
def test_retry_delays_follow_the_policy(
    seed: int, jitter: str, base_delay: float
) -> None:
    # Each delay is the policy's delay for that retry; decorrelated jitter
    # grows each one from the delay before it.
    import random

    def policy() -> RetryPolicy:
        return RetryPolicy(
            max_retries=4,
            base_delay=base_delay,
            max_delay=30.0,
            jitter=jitter,  # type: ignore[arg-type]
            rng=random.Random(seed),
        )

    twin = policy()
    expected: list[float] = []
    for retry in range(4):
        expected.append(twin.delay(retry, expected[-1] if expected else None))

    recorder = DelayRecorder()

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=policy(), hooks=[recorder]) as queue:
            handle = queue.submit_nowait(Flaky(failures=4))
            assert await handle == "done"

    run_virtual(main)
    assert recorder.delays == expected


async def takes_one(x: int) -> int:
    return x


async def raises_type_error() -> None:
    raise TypeError("raised by the task itself")


@pytest.mark.parametrize(
    "fn, args",
    [
        (takes_one, (1, 2)),
        (takes_one, ()),
        (bind(takes_one, y=1), ()),
        (functools.partial(takes_one, 1), (2,)),
    ],
    ids=["extra-arg", "missing-arg", "bind-bad-keyword", "partial-extra-arg"],
)
async def test_arguments_that_do_not_fit_fail_without_retry(
    fn: Callable[..., Awaitable[int]], args: tuple[int, ...]
) -> None:
    """A TypeError from binding the arguments fails the task on its first attempt."""
    policy = RetryPolicy(max_retries=3, base_delay=0)
    async with AsyncTaskQueue(1, retry=policy) as queue:
        handle = queue.submit_nowait(fn, *args)
        with pytest.raises(TypeError, match="argument"):
            await handle

    assert handle.state is TaskState.FAILED
    assert handle.attempts == 1
    assert queue.stats().retries == 0


async def test_type_error_inside_task_is_retried() -> None:
    """A TypeError that the task's own code raises follows the policy."""
    policy = RetryPolicy(max_retries=2, base_delay=0)
    async with AsyncTaskQueue(1, retry=policy) as queue:
        handle = queue.submit_nowait(raises_type_error)
        with pytest.raises(TypeError, match="raised by the task itself"):
            await handle

    assert handle.attempts == 3
    assert queue.stats().retries == 2


@given(
    delay=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    message=st.none() | st.text(max_size=20),
)
def test_retry_after_pickles_and_copies(delay: float, message: str | None) -> None:
    """A process pool sends a task's RetryAfter back by pickling it."""
    error = RetryAfter(delay, message)
    error.note = "kept"  # type: ignore[attr-defined]

    for twin in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(twin) is RetryAfter
        assert twin.delay == error.delay
        assert str(twin) == str(error)
        assert twin.note == "kept"  # type: ignore[attr-defined]


class RateLimited(RetryAfter):
    """A subclass with its own constructor, which pickles by its message."""

    def __init__(self, url: str) -> None:
        super().__init__(30.0, url)
        self.url = url


def test_retry_after_subclass_pickles() -> None:
    error = RateLimited("http://127.0.0.1/x")

    for twin in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(twin) is RateLimited
        assert twin.delay == 30.0
        assert twin.url == "http://127.0.0.1/x"


class FollowUpError(Exception):
    """A task's own error, raised from the QueueClosedError of a submission."""


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "raised_from"])
def test_queue_closed_error_not_retried(wrapped: bool) -> None:
    # A task that submits to its stopping queue gets QueueClosedError. The
    # queue never reopens, so a retry would only hold up the drain.
    async def follow_up() -> None:
        pass

    async def main(loop: VirtualClockLoop) -> None:
        release = asyncio.Event()

        async def parent(queue: AsyncTaskQueue) -> None:
            await release.wait()
            try:
                await queue.submit(follow_up)
            except QueueClosedError as error:
                if wrapped:
                    raise FollowUpError("no follow-up") from error
                raise

        retry = RetryPolicy(max_retries=3, base_delay=10, jitter="none")
        queue = AsyncTaskQueue(1, retry=retry)
        await queue.start()
        handle = await queue.submit(parent, queue)
        await until(lambda: handle.state is TaskState.RUNNING)
        started = loop.time()
        stopping = asyncio.create_task(queue.stop("drain"))
        await until(lambda: queue.closed)
        release.set()
        await stopping

        assert handle.state is TaskState.FAILED
        assert handle.attempts == 1
        error = handle.exception()
        assert isinstance(error, FollowUpError if wrapped else QueueClosedError)
        assert loop.time() == started
        assert queue.stats().retries == 0

    run_virtual(main)


def test_closed_error_found_through_causes() -> None:
    first, second = ValueError("first"), ValueError("second")
    first.__cause__, second.__cause__ = second, first  # a cycle ends the search

    assert not _is_closed_queue_error(first)
    second.__cause__ = ExceptionGroup("children", [QueueClosedError("closed")])
    assert _is_closed_queue_error(first)


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


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("retry_on", [BaseException, lambda exc: True])
def test_fatal_exception_never_retried(
    fatal: type[BaseException], retry_on: object
) -> None:
    # The worker re-raises a fatal exception and the event loop stops, so a
    # retry could never run: the task fails at once instead of staying
    # WAITING_RETRY for good.
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


def test_queue_closed_in_task_group_not_retried() -> None:
    """A QueueClosedError that reaches the task in an ExceptionGroup is not retried.

    A task that submits its children in an asyncio.TaskGroup gets the
    error of a stopping queue wrapped in an ExceptionGroup. The queue finds
    the QueueClosedError inside the group, so stop("drain") does not wait
    out three backoffs for retries that could only fail the same way.
    """

    async def main(loop: VirtualClockLoop) -> tuple[int, float]:
        policy = RetryPolicy(max_retries=3, base_delay=1, jitter="none")
        queue = AsyncTaskQueue(1, retry=policy)
        await queue.start()
        started = asyncio.Event()

        async def parent() -> None:
            started.set()
            await asyncio.sleep(1)  # stop() begins meanwhile
            async with asyncio.TaskGroup() as group:
                group.create_task(queue.submit(leaf))

        handle = await queue.submit(parent)
        await started.wait()
        stop_at = loop.time()
        await queue.stop("drain")
        return handle.attempts, loop.time() - stop_at

    attempts, stop_seconds = run_virtual(main, autojump=0)

    assert attempts == 1
    assert stop_seconds == pytest.approx(1)


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
def test_fatal_cleanup_after_timeout_not_retried(
    fatal: type[BaseException],
) -> None:
    # The worker re-raises the fatal exception and the event loop stops, so
    # a retry could never run: the task fails at once instead of staying
    # WAITING_RETRY for good.
    queue = AsyncTaskQueue(1, retry=RetryPolicy(max_retries=3), timeout=1)
    handles: list[TaskHandle[None]] = []

    async def cleanup_raises() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise fatal from None

    async def main() -> None:
        await queue.start()
        handles.append(queue.submit_nowait(cleanup_raises))
        await asyncio.Event().wait()

    loop = VirtualClockLoop()
    loop.set_exception_handler(lambda _, context: None)
    try:
        with pytest.raises(fatal):
            loop.run_until_complete(main())

        loop.run_until_complete(queue.stop())
    finally:
        loop.close()

    assert_failed_unretried(queue, handles[0], fatal)


# A time budget for retries: RetryPolicy(max_elapsed=...)


class TimedFailures:
    """Fails every call after ``run_for`` seconds, recording each start time."""

    def __init__(self, run_for: float = 0.0, error: Exception | None = None) -> None:
        self.run_for = run_for
        self.error = error
        self.starts: list[float] = []

    async def __call__(self) -> None:
        self.starts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.run_for)
        raise self.error if self.error is not None else ValueError("still failing")


def budget_policy(max_elapsed: float, max_retries: int = 10) -> RetryPolicy:
    return RetryPolicy(
        max_retries=max_retries,
        base_delay=1,
        multiplier=2,
        max_delay=100,
        jitter="none",
        max_elapsed=max_elapsed,
    )


def run_until_final(
    task: Callable[[], Awaitable[None]], policy: RetryPolicy, timeout: float | None
) -> TaskHandle[None]:
    async def main(loop: VirtualClockLoop) -> TaskHandle[None]:
        async with AsyncTaskQueue(1, retry=policy, timeout=timeout) as queue:
            handle = await queue.submit(task)
            with contextlib.suppress(Exception):
                await handle
            return handle

    return run_virtual(main, autojump=0)


def relative(starts: list[float]) -> list[float]:
    return [start - starts[0] for start in starts]


@pytest.mark.parametrize(
    ("run_for", "expected_starts"),
    [(0.0, [0.0, 1.0, 3.0]), (2.0, [0.0, 3.0])],
    ids=["instant", "two-second-attempts"],
)
def test_max_elapsed_stops_retries(
    run_for: float, expected_starts: list[float]
) -> None:
    """A retry starts only if its delay ends within max_elapsed of the first start."""
    task = TimedFailures(run_for)
    handle = run_until_final(task, budget_policy(5), timeout=None)

    assert relative(task.starts) == expected_starts
    assert handle.state is TaskState.FAILED
    assert handle.attempts == len(expected_starts)
    error = handle.exception()
    assert isinstance(error, ValueError)
    assert error.__notes__[-1].startswith(
        f"not retried: retry {len(expected_starts)} would start "
    )
    assert error.__notes__[-1].endswith("past the retry policy's max_elapsed=5")


def test_max_elapsed_bounds_timed_out_attempts() -> None:
    """Attempts that time out count their full run time against the budget."""
    task = TimedFailures(run_for=60)
    handle = run_until_final(task, budget_policy(5), timeout=1)

    # Each attempt ends at its timeout, 1 s after it starts: the third one,
    # ending at 6 s, would retry 4 s later, at 10 s.
    assert relative(task.starts) == [0.0, 2.0, 5.0]
    assert handle.state is TaskState.FAILED
    assert isinstance(handle.exception(), TimeoutError)


def test_max_elapsed_bounds_retry_after() -> None:
    """A delay that the task requests with RetryAfter is held to the budget too."""
    task = TimedFailures(error=RetryAfter(10))
    handle = run_until_final(task, budget_policy(5), timeout=None)

    assert len(task.starts) == 1
    assert handle.state is TaskState.FAILED
    assert handle.attempts == 1


@given(
    run_times=st.lists(st.integers(0, 3), min_size=1, max_size=8),
    budget=st.integers(0, 20),
    max_retries=st.integers(0, 6),
)
def test_max_elapsed_matches_model(
    run_times: list[int], budget: int, max_retries: int
) -> None:
    """Start times follow the budget rule, attempt by attempt."""
    durations = iter(run_times * 8)
    starts: list[float] = []

    async def task() -> None:
        starts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(next(durations))
        raise ValueError("still failing")

    handle = run_until_final(task, budget_policy(budget, max_retries), timeout=None)

    # The model: whole-second run times and delays keep every time exact.
    expected = [0.0]
    end = float(run_times[0])
    for retry in range(max_retries):
        retry_at = end + min(2.0**retry, 100.0)
        if retry_at > budget:
            break
        expected.append(retry_at)
        end = retry_at + (run_times * 8)[retry + 1]

    assert relative(starts) == expected
    assert handle.state is TaskState.FAILED
    assert handle.attempts == len(expected)
