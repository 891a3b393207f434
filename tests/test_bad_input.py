"""Misuse: each invalid call raises a clear error and leaves the queue unchanged."""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import math
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    DuplicateTaskIdError,
    QueueClosedError,
    QueueStateError,
    RetryPolicy,
    ShutdownMode,
    TaskHandle,
    TaskState,
    bind,
)
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import one as _one
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)


async def forty_two() -> int:
    return 42


async def echo(value: object) -> object:
    return value


def plain() -> int:
    return 42


async def count_up() -> AsyncIterator[int]:
    yield 1


class Widget:
    """A class: calling it makes an instance, not a coroutine."""


class SyncCallable:
    def __call__(self) -> int:
        return 42


class AsyncCallable:
    async def __call__(self, value: object) -> object:
        return value


class Service:
    def __init__(self, name: str) -> None:
        self.name = name

    async def fetch(self, suffix: str) -> str:
        return self.name + suffix

    def fetch_now(self) -> str:
        return self.name


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 5


@pytest.fixture
async def queue() -> AsyncIterator[AsyncTaskQueue]:
    running = AsyncTaskQueue(2)
    await running.start()
    yield running
    await running.stop()


async def check_next_id(queue: AsyncTaskQueue, expected: int) -> None:
    """Check that a valid submit still works and gets the int id ``expected``."""
    handle = await queue.submit(forty_two)
    assert handle.id == expected
    assert await handle == 42


# The function to run

BAD_FUNCTIONS: list[tuple[object, str]] = [
    (42, r"got 42 of type int, which is not callable"),
    ("x", r"got 'x' of type str, which is not callable"),
    (None, r"got None of type NoneType, which is not callable"),
    (plain, r"plain function plain; define it with 'async def'"),
    (lambda: forty_two(), r"plain function <lambda>; define it with 'async def'"),
    (count_up, r"async generator function count_up; wrap it in an 'async def'"),
    (Widget, r"Widget; define it with 'async def'"),
    (SyncCallable(), r"SyncCallable.*define it with 'async def'"),
    (Service("s").fetch_now, r"Service.fetch_now; define it with 'async def'"),
]


@pytest.mark.parametrize("nowait", [False, True], ids=["submit", "submit_nowait"])
@pytest.mark.parametrize(("fn", "message"), BAD_FUNCTIONS)
async def test_fn_not_coroutine_function(
    queue: AsyncTaskQueue, fn: Any, message: str, nowait: bool
) -> None:
    before = queue.stats()
    with pytest.raises(TypeError, match=message):
        if nowait:
            queue.submit_nowait(fn)
        else:
            await queue.submit(fn)

    assert queue.stats() == before
    await check_next_id(queue, 1)


async def test_coroutine_object_with_retries(queue: AsyncTaskQueue) -> None:
    """A coroutine runs once, so a policy that retries cannot take one."""
    coro = forty_two()
    before = queue.stats()
    with pytest.raises(ValueError, match=r"max_retries=0") as caught:
        await queue.submit(coro)

    assert "coroutine object" in str(caught.value)
    assert queue.stats() == before

    # The rejected coroutine is untouched: the caller can still submit it.
    handle = await queue.submit(coro, retry=NO_RETRY)
    assert handle.id == 1
    assert await handle == 42


async def test_coroutine_object_with_args(queue: AsyncTaskQueue) -> None:
    coro = forty_two()
    before = queue.stats()
    try:
        with pytest.raises(TypeError, match=r"positional arguments"):
            await queue.submit(coro, 1, retry=NO_RETRY)
    finally:
        coro.close()

    assert queue.stats() == before
    await check_next_id(queue, 1)


async def test_lambda_of_coroutine_message_suggests_bind() -> None:
    """A lambda that calls a coroutine function gets pointed to bind()."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()

    with pytest.raises(TypeError, match=r"submit bind\(coroutine_function, \.\.\.\)"):
        await queue.submit(lambda: _one())

    assert queue.stats().submitted == 0
    await queue.stop()


# Queue options

BAD_QUEUE_OPTIONS: list[tuple[str, object, type[Exception]]] = [
    ("max_workers", 0, ValueError),
    ("max_workers", -1, ValueError),
    ("max_workers", True, TypeError),
    ("max_workers", 1.5, TypeError),
    ("max_workers", "2", TypeError),
    ("timeout", -1, ValueError),
    ("timeout", 0, ValueError),
    ("timeout", math.nan, ValueError),
    ("timeout", math.inf, ValueError),
    ("timeout", "1", TypeError),
    ("timeout", True, TypeError),
    ("max_results", -1, ValueError),
    ("max_results", 1.5, TypeError),
    ("max_results", None, TypeError),
    ("result_ttl", -1, ValueError),
    ("result_ttl", math.nan, ValueError),
    ("result_ttl", math.inf, ValueError),
    ("result_ttl", "60", TypeError),
    ("retry", object(), TypeError),
    ("retry", {"max_retries": 1}, TypeError),
]


@pytest.mark.parametrize(("name", "value", "error"), BAD_QUEUE_OPTIONS)
def test_queue_option_rejected(
    name: str, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        AsyncTaskQueue(**{name: value})  # type: ignore[arg-type]

    message = str(caught.value)
    assert message.startswith(f"{name} must be")
    assert repr(value) in message


@pytest.mark.parametrize(
    ("name", "value", "advice"),
    [
        ("max_workers", None, "pass the number of workers"),
        ("max_workers", 0, "pass the number of workers"),
        ("max_pending", 0, "pass max_pending=None for no bound"),
    ],
)
def test_queue_option_advice(name: str, value: object, advice: str) -> None:
    # Values that mean "no limit" elsewhere, such as in aiojobs.
    with pytest.raises((TypeError, ValueError)) as caught:
        AsyncTaskQueue(**{name: value})  # type: ignore[arg-type]

    message = str(caught.value)
    assert message.startswith(f"{name} must be")
    assert advice in message


@pytest.mark.parametrize(
    ("name", "value", "advice"),
    [
        ("max_pending", "10", "max_pending=None"),
        ("max_pending", 2.5, "max_pending=None"),
        ("max_workers", 4.0, "the pool has a fixed size"),
    ],
)
def test_type_error_omits_limit_advice(name: str, value: object, advice: str) -> None:
    # The advice is for values that mean "no limit" elsewhere. A str or a
    # float is a wrong type for a real bound, which the advice does not fix.
    with pytest.raises(TypeError) as caught:
        AsyncTaskQueue(**{name: value})  # type: ignore[arg-type]

    message = str(caught.value)
    assert message.startswith(f"{name} must be an int, got {value!r}")
    assert advice not in message


@settings(max_examples=60)
@given(st.floats())
def test_queue_timeout_validated(value: float) -> None:
    """A timeout is accepted if and only if it is finite and positive."""
    if math.isfinite(value) and value > 0:
        AsyncTaskQueue(timeout=value)
    else:
        with pytest.raises(ValueError, match="timeout must be a finite number"):
            AsyncTaskQueue(timeout=value)


# Task options

BAD_TASK_OPTIONS: list[tuple[str, object, type[Exception], str]] = [
    ("timeout", -1, ValueError, r"timeout must be a finite number.*got -1"),
    ("timeout", 0, ValueError, r"timeout must be a finite number.*got 0"),
    ("timeout", math.nan, ValueError, r"timeout must be a finite number.*got nan"),
    ("timeout", math.inf, ValueError, r"timeout must be a finite number.*got inf"),
    ("timeout", "1", TypeError, r"timeout must be a number.*got '1'"),
    ("retry", 3, TypeError, r"retry must be a RetryPolicy or None, got 3"),
    ("priority", 1.5, TypeError, r"priority must be an int.*got 1.5"),
    ("priority", "1", TypeError, r"priority must be an int.*got '1'"),
    ("priority", None, TypeError, r"priority must be an int.*got None"),
    ("priority", True, TypeError, r"priority must be an int.*got True"),
    ("priority", False, TypeError, r"priority must be an int.*got False"),
    ("task_id", 5, TypeError, r"task_id must be a non-empty str, got 5"),
    ("task_id", "", ValueError, r"task_id must be a non-empty str, got ''"),
    ("task_id", b"x", TypeError, r"task_id must be a non-empty str, got b'x'"),
]


@pytest.mark.parametrize("nowait", [False, True], ids=["submit", "submit_nowait"])
@pytest.mark.parametrize(("name", "value", "error", "message"), BAD_TASK_OPTIONS)
async def test_task_option_rejected(
    queue: AsyncTaskQueue,
    name: str,
    value: object,
    error: type[Exception],
    message: str,
    nowait: bool,
) -> None:
    before = queue.stats()
    options: dict[str, Any] = {name: value}
    with pytest.raises(error, match=message):
        if nowait:
            queue.submit_nowait(forty_two, **options)
        else:
            await queue.submit(forty_two, **options)

    assert queue.stats() == before
    await check_next_id(queue, 1)


async def test_int_enum_priority(queue: AsyncTaskQueue) -> None:
    handle = await queue.submit(forty_two, priority=Level.HIGH)
    assert handle.priority == 5
    assert type(handle.priority) is int
    assert await handle == 42


# Task ids


async def test_duplicate_active_id(queue: AsyncTaskQueue) -> None:
    release = asyncio.Event()

    async def wait() -> str:
        await release.wait()
        return "released"

    active = await queue.submit(wait, task_id="job")
    before = queue.stats()
    with pytest.raises(DuplicateTaskIdError, match=r"task_id 'job' is already used"):
        await queue.submit(forty_two, task_id="job")

    assert queue.stats() == before
    assert queue.task("job") is active
    await check_next_id(queue, 2)

    release.set()
    assert await active == "released"


async def test_duplicate_retained_id(queue: AsyncTaskQueue) -> None:
    finished = await queue.submit(forty_two, task_id="job")
    await finished
    before = queue.stats()
    with pytest.raises(DuplicateTaskIdError, match=r"'job'") as caught:
        queue.submit_nowait(forty_two, task_id="job")

    assert isinstance(caught.value, ValueError)
    assert queue.stats() == before
    assert queue.task("job") is finished
    await check_next_id(queue, 2)


async def test_evicted_id_reusable() -> None:
    async with AsyncTaskQueue(1, max_results=1) as queue:
        first = await queue.submit(echo, "first", task_id="job")
        await first
        await (await queue.submit(forty_two))

        second = await queue.submit(echo, "second", task_id="job")
        assert await second == "second"
        assert queue.task("job") is second
        assert first.result() == "first"
        stats = queue.stats()

    assert stats.evicted == 2
    assert stats.retained == 1


def test_expired_id_reusable() -> None:
    """An id whose task outlived result_ttl is free, as task() reports."""

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, result_ttl=10) as queue:
            first = await queue.submit(echo, "first", task_id="job")
            await first
            loop.advance(11)

            second = await queue.submit(echo, "second", task_id="job")
            assert await second == "second"
            assert queue.task("job") is second

    run_virtual(main)


# Lifecycle


async def test_submit_before_start() -> None:
    queue = AsyncTaskQueue(1)
    before = queue.stats()
    with pytest.raises(QueueStateError, match=r"has not been started.*start\(\)"):
        await queue.submit(forty_two)
    with pytest.raises(QueueStateError, match=r"has not been started"):
        queue.submit_nowait(forty_two)

    assert queue.stats() == before
    await queue.start()
    await check_next_id(queue, 1)
    await queue.stop()


async def test_submit_after_stop(queue: AsyncTaskQueue) -> None:
    await check_next_id(queue, 1)
    await queue.stop()
    before = queue.stats()
    with pytest.raises(QueueClosedError, match=r"accepts no new tasks"):
        await queue.submit(forty_two)
    with pytest.raises(QueueClosedError, match=r"accepts no new tasks"):
        queue.submit_nowait(forty_two)

    assert queue.stats() == before
    assert before.submitted == 1


async def test_coroutine_after_stop_not_consumed(queue: AsyncTaskQueue) -> None:
    await queue.stop()
    coro = forty_two()
    with pytest.raises(QueueClosedError):
        await queue.submit(coro, retry=NO_RETRY)

    assert inspect.getcoroutinestate(coro) == inspect.CORO_CREATED
    assert await coro == 42


async def test_start_twice(queue: AsyncTaskQueue) -> None:
    before = queue.stats()
    with pytest.raises(QueueStateError, match=r"cannot start a queue that is running"):
        await queue.start()

    assert queue.stats() == before
    assert before.workers == 2
    await check_next_id(queue, 1)


async def test_start_after_stop(queue: AsyncTaskQueue) -> None:
    await queue.stop()
    with pytest.raises(QueueStateError, match=r"cannot start a queue that is stopped"):
        await queue.start()

    assert queue.stats().workers == 0
    assert queue.closed


async def test_stop_unknown_mode(queue: AsyncTaskQueue) -> None:
    before = queue.stats()
    with pytest.raises(ValueError, match=r"got 'halt'") as caught:
        await queue.stop("halt")

    for mode in ShutdownMode:
        assert repr(mode.value) in str(caught.value)

    assert not queue.closed
    assert queue.stats() == before
    await check_next_id(queue, 1)


@pytest.mark.parametrize("mode", [3, None, b"drain"])
async def test_stop_mode_of_wrong_type(queue: AsyncTaskQueue, mode: object) -> None:
    before = queue.stats()
    with pytest.raises(
        TypeError, match=r"mode must be a ShutdownMode or one of"
    ) as caught:
        await queue.stop(mode)  # type: ignore[arg-type]

    advice = "leave mode out for the default, 'cancel'"
    assert (advice in str(caught.value)) == (mode is None)
    assert not queue.closed
    assert queue.stats() == before


async def test_stop_unknown_mode_before_start() -> None:
    queue = AsyncTaskQueue(1)
    with pytest.raises(ValueError, match=r"mode must be a ShutdownMode"):
        await queue.stop("halt")

    assert not queue.closed
    await queue.start()
    await check_next_id(queue, 1)
    await queue.stop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"grace": -1}, r"grace must be a finite number of seconds >= 0, got -1"),
        ({"grace": math.nan}, r"grace must be a finite number.*got nan"),
        ({"grace": "5"}, r"grace must be a number of seconds, got '5'"),
        ({"timeout": -1}, r"timeout must be a finite number.*got -1"),
        ({"timeout": 0}, r"timeout must be a finite number.*got 0"),
    ],
)
async def test_stop_bad_limit(
    queue: AsyncTaskQueue, options: dict[str, Any], message: str
) -> None:
    before = queue.stats()
    with pytest.raises((TypeError, ValueError), match=message):
        await queue.stop(**options)

    assert not queue.closed
    assert queue.stats() == before
    await check_next_id(queue, 1)


# bind() and the callables submit() accepts


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (plain, r"plain function plain"),
        (42, r"got 42 of type int"),
        (count_up, r"async generator function count_up"),
    ],
)
def test_bind_rejects_non_coroutine(fn: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        bind(fn, 1)


async def options_named(*, timeout: float, priority: str) -> tuple[float, str]:
    return timeout, priority


async def test_bind_keeps_callee_kwargs(queue: AsyncTaskQueue) -> None:
    """bind() keywords go to the callee, and submit() keywords set the task options."""
    handle = await queue.submit(
        bind(options_named, timeout=7, priority="x"), priority=3, timeout=5
    )
    assert await handle == (7, "x")
    assert handle.priority == 3


def test_bind_timeout_not_task_timeout() -> None:
    """A bound ``timeout`` keyword does not become the task's timeout."""

    async def wait(*, timeout: float) -> None:
        await asyncio.Event().wait()

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            handle = await queue.submit(bind(wait, timeout=100), timeout=5)
            await until(lambda: handle.attempts == 1)

            loop.advance(5)
            with pytest.raises(TimeoutError, match=r"timed out after 5.0 s"):
                await handle

    run_virtual(main)


ACCEPTED: list[tuple[str, Callable[[], tuple[Any, tuple[Any, ...]]], object]] = [
    (
        "partial",
        lambda: (functools.partial(options_named, timeout=1, priority="p"), ()),
        (1, "p"),
    ),
    ("bound method", lambda: (Service("svc").fetch, ("-1",)), "svc-1"),
    ("async __call__", lambda: (AsyncCallable(), ("called",)), "called"),
    ("bind of partial", lambda: (bind(functools.partial(echo, "b")), ()), "b"),
]


@pytest.mark.parametrize(
    ("make", "expected"),
    [(make, expected) for _, make, expected in ACCEPTED],
    ids=[name for name, _, _ in ACCEPTED],
)
async def test_async_callable_accepted(
    queue: AsyncTaskQueue,
    make: Callable[[], tuple[Any, tuple[Any, ...]]],
    expected: object,
) -> None:
    fn, args = make()
    handle: TaskHandle[Any] = await queue.submit(fn, *args)
    assert await handle == expected
    assert handle.state is TaskState.SUCCEEDED
    assert handle.id == 1


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"rate_limit": 0}, ValueError, "task starts per second > 0, got 0"),
        ({"rate_limit": -2.5}, ValueError, "task starts per second > 0, got -2.5"),
        ({"rate_limit": math.inf}, ValueError, "use None for no rate limit"),
        ({"rate_limit": "10/s"}, TypeError, "number of task starts per second"),
        ({"aging_rate": -1}, ValueError, "priority points per second >= 0, got -1"),
        ({"aging_rate": math.nan}, ValueError, "use None for no aging rate"),
        ({"aging_rate": True}, TypeError, "number of priority points per second"),
    ],
)
def test_rates_rejected_in_their_units(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    """A bad rate limit or aging rate is named with its unit and the way out."""
    with pytest.raises(error, match=re.escape(message)):
        AsyncTaskQueue(**options)  # type: ignore[arg-type]


async def test_rejected_coroutine_object_stays_usable() -> None:
    """A rejected coroutine object is left open, so it can be submitted again."""

    async def answer() -> int:
        return 42

    coro = answer()
    async with AsyncTaskQueue(1, retry=RetryPolicy(max_retries=2)) as queue:
        with pytest.raises(ValueError, match="max_retries=0"):
            await queue.submit(coro)

        assert inspect.getcoroutinestate(coro) == inspect.CORO_CREATED
        assert queue.stats().submitted == 0

        handle = await queue.submit(coro, retry=NO_RETRY)
        assert await handle == 42


@pytest.mark.parametrize("task_id", [["a"], {"id": 1}, 1.0, True, None, b"1"])
async def test_lookup_rejects_id_type(queue: AsyncTaskQueue, task_id: object) -> None:
    """task(), cancel() and requeue() name an id of the wrong type."""
    before = queue.stats()
    message = (
        "task_id must be the int id the queue gave or the str id given to "
        f"submit(), got {task_id!r}"
    )

    with pytest.raises(TypeError) as by_task:
        queue.task(task_id)  # type: ignore[arg-type]
    with pytest.raises(TypeError) as by_cancel:
        queue.cancel(task_id)  # type: ignore[arg-type]
    with pytest.raises(TypeError) as by_requeue:
        await queue.requeue(task_id)  # type: ignore[arg-type]

    assert str(by_task.value) == message
    assert str(by_cancel.value) == message
    assert str(by_requeue.value) == message
    assert queue.stats() == before


# A full queue: await submit() checks its input before it waits for room


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


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {"workers": 4}, "got an unexpected keyword argument 'workers'"),
        ((4, 5), {}, "takes from 1 to 2 positional arguments but 3 were given"),
    ],
)
def test_constructor_errors_name_the_class(
    args: tuple[int, ...], kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(TypeError) as info:
        AsyncTaskQueue(*args, **kwargs)

    assert str(info.value) == f"AsyncTaskQueue.__init__() {message}"
