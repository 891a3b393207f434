"""Edges of the handle, bind() and threaded(), hooks and input checks."""

from __future__ import annotations

import asyncio
import re

import pytest

from async_queue import (
    AsyncTaskQueue,
    RetryPolicy,
    TaskHandle,
    TaskState,
    bind,
    threaded,
)
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)


async def echo(value: object, *, suffix: str = "") -> str:
    return f"{value}{suffix}"


@pytest.mark.parametrize(
    ("state", "final"),
    [
        (TaskState.DELAYED, False),
        (TaskState.PENDING, False),
        (TaskState.WAITING_RETRY, False),
        (TaskState.RUNNING, False),
        (TaskState.SUCCEEDED, True),
        (TaskState.FAILED, True),
        (TaskState.CANCELLED, True),
    ],
)
def test_state_is_final(state: TaskState, final: bool) -> None:
    assert state.is_final is final


async def test_unfinished_handle_has_no_outcome() -> None:
    """result() and exception() of a task that is not final raise at once."""
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        queue.pause()
        handle = await queue.submit(echo, 1)

        with pytest.raises(asyncio.InvalidStateError, match="is pending, not final"):
            handle.result()
        with pytest.raises(asyncio.InvalidStateError, match="is pending, not final"):
            handle.exception()

        queue.resume()

        assert await handle == "1"
        assert handle.exception() is None


async def test_remove_done_callback_never_added() -> None:
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        queue.pause()
        handle: TaskHandle[str] = await queue.submit(echo, 1)
        seen: list[TaskHandle[str]] = []

        assert handle.remove_done_callback(seen.append) == 0

        handle.add_done_callback(seen.append)

        assert handle.remove_done_callback(print) == 0  # type: ignore[arg-type]

        queue.resume()
        await handle
        await asyncio.sleep(0)

    assert seen == [handle]


class AsyncCallable:
    async def __call__(self, handle: TaskHandle[str]) -> None:
        raise AssertionError("an async callable is never a done callback")


async def on_done(handle: TaskHandle[str]) -> None:
    raise AssertionError("a coroutine function is never a done callback")


@pytest.mark.parametrize(
    ("callback", "message"),
    [
        (42, "a done callback must be a function that takes the handle, got 42"),
        (None, "got None"),
        (on_done, "got the coroutine function <function on_done"),
        (AsyncCallable(), "got the coroutine function <"),
    ],
)
async def test_bad_done_callback_rejected(callback: object, message: str) -> None:
    """A bad callback raises at once, and the task still finishes cleanly."""
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        queue.pause()
        handle: TaskHandle[str] = await queue.submit(echo, 1)
        with pytest.raises(TypeError, match=re.escape(message)):
            handle.add_done_callback(callback)  # type: ignore[arg-type]

        assert handle._waiters is None
        queue.resume()
        assert await handle == "1"
        await queue.join()

        with pytest.raises(TypeError, match=re.escape(message)):
            handle.add_done_callback(callback)  # type: ignore[arg-type]

    assert queue.stats().succeeded == 1
    assert queue.stats().workers == 0


async def test_awaiter_timeout_leaves_others_waiting() -> None:
    """An awaiter that gives up leaves the other awaiters of the task waiting."""
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        queue.pause()
        handle = await queue.submit(echo, 2)
        patient = asyncio.ensure_future(handle)
        await asyncio.sleep(0)
        impatient = asyncio.ensure_future(handle)
        await asyncio.sleep(0)
        impatient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await impatient

        queue.resume()

        assert await patient == "2"
        assert handle.state is TaskState.SUCCEEDED


def test_bind_repr_shows_call() -> None:
    bound = bind(echo, 1, suffix="!")

    assert repr(bound) == "bind(echo, 1, suffix='!')"
    assert bound.name == "echo"


def test_bind_rejects_coroutine_object() -> None:
    coroutine = echo(1)
    try:
        with pytest.raises(TypeError, match="got the coroutine object"):
            bind(coroutine)  # type: ignore[arg-type]
    finally:
        coroutine.close()


def test_threaded_rejects_non_callable() -> None:
    with pytest.raises(TypeError, match="expected a callable, got 5 of type int"):
        threaded(5)  # type: ignore[arg-type]


def test_hook_with_non_callable_event_rejected() -> None:
    class NotAHook:
        on_failed = "log it"

    with pytest.raises(TypeError, match="has a non-callable on_failed"):
        AsyncTaskQueue(hooks=[NotAHook()])  # type: ignore[list-item]


def test_on_dead_letter_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_dead_letter must be callable or None"):
        AsyncTaskQueue(on_dead_letter="print")  # type: ignore[arg-type]


@pytest.mark.parametrize("option", ["timeout", "at"])
async def test_huge_int_time_rejected(option: str) -> None:
    """An int too large for a float is an invalid time, not an OverflowError."""
    huge = 10**400
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        with pytest.raises(ValueError, match="finite"):
            await queue.submit(echo, 1, **{option: huge})

        assert queue.stats().submitted == 0


def test_handle_cannot_be_created_directly() -> None:
    with pytest.raises(TypeError, match="submit_nowait"):
        TaskHandle()
    with pytest.raises(TypeError, match="submit_nowait"):
        TaskHandle(None, 1, 1, none_result, (), 0, None, NO_RETRY)


async def none_result() -> None:
    return None


async def test_finished_none_handle_awaits_again_and_again() -> None:
    """A handle that returned None can be awaited any number of ways and times."""
    async with AsyncTaskQueue(2) as queue:
        handle = queue.submit_nowait(none_result)
        first = await handle
        again = [await handle for _ in range(3)]
        gathered = await asyncio.gather(handle, handle)
        wrapped = await asyncio.ensure_future(handle)
        waited = await asyncio.wait_for(handle, timeout=None)

    assert handle.state is TaskState.SUCCEEDED
    assert first is None
    assert again == [None, None, None]
    assert gathered == [None, None]
    assert wrapped is None
    assert waited is None
    assert handle.result() is None


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


async def test_finished_value_handle_awaits_its_value() -> None:
    async with AsyncTaskQueue(2) as queue:
        handle = queue.submit_nowait(echo, 0)
        values = [await handle, await handle, *(await asyncio.gather(handle))]

    assert values == ["0", "0", "0"]


def test_handle_calls_outside_running_loop() -> None:
    """cancel() and add_done_callback() from plain code between loop runs."""
    loop = asyncio.new_event_loop()
    called: list[object] = []
    never = asyncio.Event()

    async def quick() -> str:
        return "done"

    async def blocked() -> None:
        await never.wait()

    async def start() -> tuple[AsyncTaskQueue, TaskHandle[str], TaskHandle[None]]:
        queue = AsyncTaskQueue(2)
        await queue.start()
        finished = await queue.submit(quick)
        assert await finished == "done"
        running = await queue.submit(blocked)
        await until(lambda: running.state is TaskState.RUNNING)
        return queue, finished, running

    try:
        queue, finished, running = loop.run_until_complete(start())

        with pytest.raises(RuntimeError, match=r"call add_done_callback\(\) on"):
            finished.add_done_callback(called.append)
        running.add_done_callback(called.append)
        assert running.cancel("from outside the loop") is True

        loop.run_until_complete(until(lambda: called == [running]))
        assert running.state is TaskState.CANCELLED
        loop.run_until_complete(queue.stop())
    finally:
        loop.close()


class ChangingId(str):
    """A str subclass whose hash the test changes after submission."""

    hash = 1

    def __hash__(self) -> int:
        return self.hash


async def test_task_id_subclass_stored_as_str() -> None:
    async def job() -> int:
        return 1

    queue = AsyncTaskQueue(max_workers=1, max_results=1)
    await queue.start()
    task_id = ChangingId("report")
    first = await queue.submit(job, task_id=task_id)
    ChangingId.hash = 2

    assert await first == 1
    assert type(first.id) is str
    assert first.id == "report"
    assert queue.task("report") is first

    second = await queue.submit(job)  # evicts the first from the results
    assert await second == 1
    assert queue.stats().workers == 1

    report = await queue.stop("drain")
    assert report.never_started == ()
    assert queue.stats().succeeded == 2
