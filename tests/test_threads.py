"""Submission from other threads, handles awaited from another thread's loop,
done callbacks, and functions run in threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading

import pytest

from async_queue import (
    AsyncTaskQueue,
    QueueClosedError,
    QueueStateError,
    RetryPolicy,
    TaskCancelledError,
    TaskHandle,
    TaskState,
    thread_cancel_event,
    threaded,
)
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import Gate, until
from tests.helpers import one as _one

NO_RETRY = RetryPolicy(max_retries=0)


async def double(value: int) -> int:
    return value * 2


async def test_threads_submitting_lose_nothing() -> None:
    loop = asyncio.get_running_loop()
    threads_count, per_thread = 4, 250
    async with AsyncTaskQueue(8, retry=NO_RETRY) as queue:

        def produce(offset: int) -> list[int]:
            futures = [
                queue.submit_threadsafe(double, offset + i) for i in range(per_thread)
            ]
            return [future.result(timeout=30) for future in futures]

        results = await asyncio.gather(
            *(
                loop.run_in_executor(None, produce, t * per_thread)
                for t in range(threads_count)
            )
        )
        stats = queue.stats()

    flat = [value for chunk in results for value in chunk]
    assert flat == [2 * i for i in range(threads_count * per_thread)]
    assert stats.submitted == threads_count * per_thread
    assert stats.succeeded == threads_count * per_thread


async def test_threadsafe_future_gets_exception() -> None:
    async def broken() -> None:
        raise ValueError("broken in the loop")

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        future = queue.submit_threadsafe(broken)
        with pytest.raises(ValueError, match="broken in the loop"):
            await asyncio.wrap_future(future)


async def test_threadsafe_invalid_argument_sets_exception() -> None:
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        future = queue.submit_threadsafe(double, 1, priority="high")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="priority"):
            await asyncio.wrap_future(future)
        assert queue.stats().submitted == 0


async def test_cancelling_future_cancels_task() -> None:
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        future = queue.submit_threadsafe(hang)
        await started.wait()
        handle = queue.task(1)
        assert future.cancel()
        await until(handle.done)
        assert handle.state is TaskState.CANCELLED


async def test_threadsafe_before_start_raises() -> None:
    queue = AsyncTaskQueue(1)
    with pytest.raises(QueueStateError, match="start"):
        queue.submit_threadsafe(double, 1)


async def test_done_callback_runs_once_final() -> None:
    seen: list[tuple[object, TaskState]] = []
    release = asyncio.Event()

    async def job() -> str:
        await release.wait()
        return "done"

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(job)
        handle.add_done_callback(lambda h: seen.append((h.id, h.state)))
        handle.add_done_callback(seen.append)  # type: ignore[arg-type]
        assert handle.remove_done_callback(seen.append) == 1  # type: ignore[arg-type]
        assert seen == []

        release.set()
        await handle
        await until(lambda: len(seen) == 1)

        handle.add_done_callback(lambda h: seen.append(("late", h.state)))
        await until(lambda: len(seen) == 2)

    assert seen == [(1, TaskState.SUCCEEDED), ("late", TaskState.SUCCEEDED)]


async def test_threaded_runs_plain_function_in_thread() -> None:
    main_thread = threading.get_ident()

    def blocking_sum(a: int, b: int, *, scale: int) -> tuple[int, int]:
        return (a + b) * scale, threading.get_ident()

    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        value, thread_id = await (
            await queue.submit(threaded(blocking_sum, 1, 2, scale=10))
        )

    assert value == 30
    assert thread_id != main_thread


async def test_threaded_task_named_after_function() -> None:
    def resize_image(path: str, *, width: int) -> str:
        return f"{path}@{width}"

    call = threaded(resize_image, "a.png", width=64)
    assert call.name.endswith("resize_image")
    assert repr(call).startswith("threaded(")
    assert repr(call).endswith("resize_image, 'a.png', width=64)")

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(call)
        assert handle.name == call.name
        assert await handle == "a.png@64"


async def test_threaded_timeout_frees_the_worker() -> None:
    """A timed-out thread keeps running, but the task and worker move on."""
    gate = threading.Event()
    finished = threading.Event()

    def stuck() -> None:
        gate.wait(30)
        finished.set()

    async def after() -> str:
        return "next"

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(threaded(stuck), timeout=0.05)
        with pytest.raises(TimeoutError):
            await handle
        assert await (await queue.submit(after)) == "next"
        assert not finished.is_set()

        gate.set()
        await asyncio.get_running_loop().run_in_executor(None, finished.wait, 30)


def test_threaded_rejects_coroutine_function() -> None:
    with pytest.raises(TypeError, match="coroutine function"):
        threaded(double, 1)  # type: ignore[arg-type]


async def test_threadsafe_result_after_cancel_is_error() -> None:
    release = asyncio.Event()

    async def job() -> None:
        await release.wait()

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        future = queue.submit_threadsafe(job)
        await until(lambda: queue.stats().running == 1)
        queue.task(1).cancel()
        with pytest.raises(TaskCancelledError):
            await asyncio.wrap_future(future)


def test_concurrent_future_type() -> None:
    async def main() -> object:
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            future = queue.submit_threadsafe(double, 4)
            result = await asyncio.wrap_future(future)
            return future, result

    future, result = asyncio.run(main())  # type: ignore[misc]
    assert isinstance(future, concurrent.futures.Future)
    assert result == 8


def test_threadsafe_at_waits_for_its_time() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            due = loop.time() + 30
            future = queue.submit_threadsafe(double, 4, at=due)
            await until(lambda: queue.stats().delayed == 1)

            loop.advance(29.9)
            await until(lambda: queue.stats().delayed == 1)
            assert not future.done()

            loop.advance(0.1)
            assert await asyncio.wrap_future(future) == 8
            assert loop.time() == due

    run_virtual(main, autojump=None)


async def test_cancelled_future_closes_coroutine() -> None:
    """A coroutine object whose future is cancelled before it is queued is closed."""
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        coroutine = double(3)
        future = queue.submit_threadsafe(coroutine)

        assert future.cancel()
        await asyncio.sleep(0)  # the loop runs the submission, which finds it cancelled
        await asyncio.sleep(0)

        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
        assert queue.stats().submitted == 0


class Cooperative:
    """A threaded function that waits until its task's cancel event is set."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.finished = threading.Event()
        self.events: list[threading.Event] = []
        self.saw_cancel: list[bool] = []

    def __call__(self) -> str:
        event = thread_cancel_event()
        self.events.append(event)
        self.started.set()
        self.saw_cancel.append(event.wait(30))
        self.finished.set()
        return "done"


@pytest.mark.parametrize("ending", ["timeout", "cancel"])
def test_thread_cancel_event_set_when_task_ends(ending: str) -> None:
    work = Cooperative()

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            handle = await queue.submit(threaded(work), timeout=1)
            assert await asyncio.to_thread(work.started.wait, 30)
            assert not work.events[0].is_set()

            if ending == "timeout":
                loop.advance(1)
                with pytest.raises(TimeoutError):
                    await handle
            else:
                handle.cancel()
                with pytest.raises(TaskCancelledError):
                    await handle

            # The function saw the event and returned early.
            assert await asyncio.to_thread(work.finished.wait, 30)
            assert work.saw_cancel == [True]

    run_virtual(main, autojump=None)


def test_thread_cancel_event_fresh_per_attempt() -> None:
    work = Cooperative()
    retry = RetryPolicy(max_retries=1, base_delay=0)

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            handle = await queue.submit(threaded(work), timeout=1, retry=retry)
            assert await asyncio.to_thread(work.started.wait, 30)
            work.started.clear()
            loop.advance(1)  # the first attempt times out, the retry starts

            assert await asyncio.to_thread(work.started.wait, 30)
            first, second = work.events
            assert first.is_set()
            assert not second.is_set()
            loop.advance(1)
            with pytest.raises(TimeoutError):
                await handle

            assert second.is_set()

    run_virtual(main, autojump=None)


async def test_thread_cancel_event_unset_after_success() -> None:
    events: list[threading.Event] = []

    def quick() -> int:
        events.append(thread_cancel_event())
        return 7

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        assert await (await queue.submit(threaded(quick))) == 7

    assert len(events) == 1
    assert not events[0].is_set()


async def test_thread_cancel_event_outside_threaded() -> None:
    def plain() -> threading.Event:
        return thread_cancel_event()

    with pytest.raises(RuntimeError, match="only inside a function that threaded"):
        thread_cancel_event()
    with pytest.raises(RuntimeError, match=r"pass a threading\.Event of your own"):
        await asyncio.to_thread(plain)


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


async def test_await_handle_from_other_thread_loop() -> None:
    # The handle raises QueueStateError that names the fix before it adds a
    # waiter, which the other thread would add racing with the queue's loop.
    # asyncio's own error for a future of another loop names no fix.
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
