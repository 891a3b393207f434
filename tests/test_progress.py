"""current_handle() inside a task, and progress reported with set_progress()."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    Hook,
    QueueStateError,
    RetryPolicy,
    TaskEvent,
    TaskHandle,
    TaskState,
    current_handle,
    threaded,
)
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import Gate

NO_RETRY = RetryPolicy(max_retries=0)


class ProgressLog(Hook):
    """Records (event, progress) pairs, and the progress of each event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        # Set on the event loop by each on_progress call, for tests whose
        # reports come from a thread.
        self.progressed = asyncio.Event()

    def on_started(self, event: TaskEvent) -> None:
        self.events.append(("started", event.progress))

    def on_progress(self, event: TaskEvent) -> None:
        self.events.append(("progress", event.progress))
        self.progressed.set()

    def on_retry_scheduled(self, event: TaskEvent) -> None:
        self.events.append(("retry", event.progress))

    def on_succeeded(self, event: TaskEvent) -> None:
        self.events.append(("succeeded", event.progress))


async def own_handle() -> TaskHandle[Any]:
    return current_handle()


async def test_current_handle_is_submitted_handle() -> None:
    async def nested() -> TaskHandle[Any]:
        return await own_handle()  # a coroutine that the task awaits

    async with AsyncTaskQueue(2) as queue:
        first = await queue.submit(own_handle)
        second = await queue.submit(nested)

        assert await first is first
        assert await second is second


async def test_current_handle_counts_attempts() -> None:
    seen: list[int] = []

    async def flaky() -> str:
        seen.append(current_handle().attempts)
        if len(seen) < 3:
            raise ConnectionError("refused")
        return "done"

    retry = RetryPolicy(max_retries=2, base_delay=0)
    async with AsyncTaskQueue(1, retry=retry) as queue:
        assert await (await queue.submit(flaky)) == "done"

    assert seen == [1, 2, 3]


async def test_current_handle_outside_task() -> None:
    with pytest.raises(RuntimeError, match="only in a task that a queue runs"):
        current_handle()


async def test_current_handle_not_in_child_task() -> None:
    # A task that the queue task creates copies its context, and by the time
    # it runs, the worker may run another task.
    async def parent() -> None:
        await asyncio.create_task(own_handle())

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(parent)
        with pytest.raises(RuntimeError, match="pass the handle to tasks"):
            await handle

    assert handle.state is TaskState.FAILED


async def test_current_handle_not_in_to_thread() -> None:
    async def parent() -> TaskHandle[Any]:
        return await asyncio.to_thread(current_handle)

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(parent)
        with pytest.raises(RuntimeError, match="in a function that threaded"):
            await handle


async def test_current_handle_in_threaded_function() -> None:
    threads: list[int] = []

    def blocking() -> TaskHandle[Any]:
        threads.append(threading.get_ident())
        return current_handle()

    async with AsyncTaskQueue(1) as queue:
        handle = await queue.submit(threaded(blocking))
        assert await handle is handle

    assert threads != [threading.get_ident()]


class ProgressByTask(Hook):
    def __init__(self) -> None:
        self.seen: list[tuple[object, object]] = []

    def on_progress(self, event: TaskEvent) -> None:
        self.seen.append((event.task_id, event.progress))


async def test_current_handle_of_queue_in_thread() -> None:
    """current_handle() in a queue inside a threaded() function is the inner task's.

    Each asyncio task made in that thread copies the outer task's context,
    yet the inner task's set_progress() reaches only the inner handle and
    the inner queue's hooks.
    """
    outer_log = ProgressByTask()
    inner_log = ProgressByTask()

    def run_inner_queue() -> tuple[object, object]:
        async def inner_main() -> tuple[object, object]:
            async with AsyncTaskQueue(1, hooks=[inner_log]) as inner:

                async def job() -> object:
                    handle = current_handle()
                    handle.set_progress("inner")
                    return handle.id

                handle = await inner.submit(job, task_id="inner")
                return await handle, handle.progress

        return asyncio.run(inner_main())

    async with AsyncTaskQueue(1, hooks=[outer_log]) as outer:
        outer_handle = await outer.submit(threaded(run_inner_queue), task_id="outer")
        inner_id, inner_progress = await outer_handle

    assert inner_id == "inner"
    assert inner_progress == "inner"
    assert inner_log.seen == [("inner", "inner")]
    assert outer_log.seen == []
    assert outer_handle.progress is None


async def test_set_progress_reaches_handle_and_hooks() -> None:
    log = ProgressLog()
    gate = Gate()

    async def steps() -> str:
        handle = current_handle()
        handle.set_progress(0.25)
        handle.set_progress({"pages": 2})
        await gate()
        handle.set_progress(1.0)
        return "done"

    async with AsyncTaskQueue(1, hooks=[log]) as queue:
        handle = await queue.submit(steps)
        await gate.started.wait()

        assert handle.progress == {"pages": 2}
        gate.release.set()
        assert await handle == "done"

    assert handle.progress == 1.0
    assert log.events == [
        ("started", None),
        ("progress", 0.25),
        ("progress", {"pages": 2}),
        ("progress", 1.0),
        ("succeeded", 1.0),
    ]


async def test_retry_keeps_progress() -> None:
    log = ProgressLog()
    seen: list[object] = []

    async def half_then_fail() -> str:
        handle = current_handle()
        seen.append(handle.progress)
        if handle.attempts == 1:
            handle.set_progress(0.5)
            raise ConnectionError("refused")
        return "done"

    retry = RetryPolicy(max_retries=1, base_delay=0)
    async with AsyncTaskQueue(1, retry=retry, hooks=[log]) as queue:
        handle = await queue.submit(half_then_fail)
        assert await handle == "done"

    assert seen == [None, 0.5]
    assert log.events == [
        ("started", None),
        ("progress", 0.5),
        ("retry", 0.5),
        ("started", 0.5),
        ("succeeded", 0.5),
    ]


async def test_set_progress_of_task_not_running() -> None:
    log = ProgressLog()
    async with AsyncTaskQueue(1, hooks=[log]) as queue:
        queue.pause()
        handle = await queue.submit(own_handle)
        with pytest.raises(
            QueueStateError, match=r"not running \(its state is pending\)"
        ):
            handle.set_progress(0.5)

        assert handle.progress is None
        queue.resume()
        await handle
        with pytest.raises(
            QueueStateError, match=r"not running \(its state is succeeded\)"
        ):
            handle.set_progress(0.5)

    assert handle.progress is None
    assert ("progress", 0.5) not in log.events


async def test_set_progress_from_other_thread() -> None:
    gate = Gate()
    async with AsyncTaskQueue(1) as queue:
        handle = await queue.submit(gate)
        await gate.started.wait()
        with pytest.raises(QueueStateError, match="outside the queue's event loop"):
            await asyncio.to_thread(handle.set_progress, 0.5)

        assert handle.progress is None
        gate.release.set()
        await handle


def test_set_progress_from_threaded_function() -> None:
    log = ProgressLog()
    release = threading.Event()

    def blocking() -> str:
        handle = current_handle()
        handle.set_progress("downloaded")
        assert release.wait(30)
        handle.set_progress("parsed")
        return "done"

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, hooks=[log]) as queue:
            handle = await queue.submit(threaded(blocking))
            await log.progressed.wait()
            assert handle.progress == "downloaded"
            release.set()
            assert await handle == "done"

        assert handle.progress == "parsed"

    run_virtual(main, autojump=None)
    assert log.events == [
        ("started", None),
        ("progress", "downloaded"),
        ("progress", "parsed"),
        ("succeeded", "parsed"),
    ]


def test_progress_of_timed_out_thread_dropped() -> None:
    # The thread of a timed-out attempt runs on; what it reports after the
    # retry has started must not be taken for the retry's progress.
    log = ProgressLog()
    entered = [threading.Event(), threading.Event()]
    releases = [threading.Event(), threading.Event()]
    reported = threading.Event()
    calls = 0

    def blocking() -> str:
        nonlocal calls
        calls += 1
        attempt = calls
        entered[attempt - 1].set()
        assert releases[attempt - 1].wait(30)
        current_handle().set_progress(f"attempt {attempt}")
        reported.set()
        return "done"

    async def main(loop: VirtualClockLoop) -> None:
        retry = RetryPolicy(max_retries=1, base_delay=0)
        async with AsyncTaskQueue(1, hooks=[log]) as queue:
            handle = await queue.submit(threaded(blocking), timeout=1, retry=retry)
            assert await asyncio.to_thread(entered[0].wait, 30)
            loop.advance(1)  # the first attempt times out and the retry starts
            assert await asyncio.to_thread(entered[1].wait, 30)

            releases[0].set()
            assert await asyncio.to_thread(reported.wait, 30)
            # The report was queued on the loop before to_thread() returned.
            assert handle.progress is None
            assert handle.attempts == 2

            releases[1].set()
            assert await handle == "done"

        assert handle.progress == "attempt 2"

    run_virtual(main, autojump=None)
    assert ("progress", "attempt 1") not in log.events
    assert log.events[-2:] == [("progress", "attempt 2"), ("succeeded", "attempt 2")]


async def test_hook_with_only_on_progress() -> None:
    seen: list[object] = []

    class OnlyProgress:
        def on_progress(self, event: TaskEvent) -> None:
            seen.append(event.progress)

    async def report() -> None:
        current_handle().set_progress(3)

    async with AsyncTaskQueue(1, hooks=[OnlyProgress()]) as queue:
        await (await queue.submit(report))

    assert seen == [3]


progress_values = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5)
)


@given(st.lists(st.tuples(progress_values, st.booleans()), max_size=12))
def test_hooks_see_every_progress_in_order(steps: list[tuple[Any, bool]]) -> None:
    log = ProgressLog()

    async def report() -> None:
        handle = current_handle()
        for value, yields in steps:
            handle.set_progress(value)
            if yields:
                await asyncio.sleep(0)

    async def main(loop: VirtualClockLoop) -> TaskHandle[None]:
        async with AsyncTaskQueue(2, hooks=[log]) as queue:
            handle = await queue.submit(report)
            await handle
            return handle

    handle = run_virtual(main)

    values = [value for value, _ in steps]
    last = values[-1] if values else None
    assert [p for name, p in log.events if name == "progress"] == values
    assert log.events[-1] == ("succeeded", last)
    assert handle.progress == last
