"""Failing tests for faults found in stop() under eager tasks and in the
warning about workers that all await their own queue."""

from __future__ import annotations

import asyncio
import sys

import pytest

from async_queue import (
    AsyncTaskQueue,
    RetryPolicy,
    ShutdownMode,
    ShutdownReport,
    TaskEvent,
    TaskState,
)
from tests.helpers import until

BLOCKED = "another task of the same queue while running"


def blocked_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if BLOCKED in r.getMessage()]


# stop() entered again from a hook


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks need 3.12")
@pytest.mark.parametrize("first_mode", ["finish_running", "cancel"])
async def test_stop_from_on_dropped_eager(first_mode: str) -> None:
    """An on_dropped hook that starts stop("cancel") as an eager task.

    stop() emits on_dropped for the queued tasks before it stores its stop
    task. Under asyncio.eager_task_factory the hook's stop() runs inside
    that emission, finds no stop task and starts a second shutdown. The two
    callers get different reports: the first call's report, which
    queue.report also returns, does not list the running task that the
    second call interrupted.
    """
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
    try:
        hook_stops: list[asyncio.Task[ShutdownReport]] = []

        class StopOnDrop:
            def on_dropped(self, event: TaskEvent) -> None:
                if not hook_stops:
                    hook_stops.append(loop.create_task(queue.stop("cancel")))

        queue = AsyncTaskQueue(1, hooks=[StopOnDrop()])
        await queue.start()
        started = asyncio.Event()

        async def job() -> None:
            started.set()
            await asyncio.sleep(3600)

        running = await queue.submit(job, task_id="running")
        pending = await queue.submit(job, task_id="pending")
        await started.wait()

        report = await queue.stop(first_mode)
        hook_report = await hook_stops[0]

        assert running.state is TaskState.CANCELLED
        assert pending.state is TaskState.CANCELLED
        assert report.mode is ShutdownMode(first_mode)
        assert report.never_started == (pending,)
        assert report.interrupted == (running,)
        assert hook_report is report
    finally:
        loop.set_task_factory(None)


# The warning when every worker awaits another task of the same queue


async def test_retry_not_blocked_by_stale_await(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A retry is not blocked by a gather() child of its failed attempt.

    The first attempt fails through gather(), whose other child goes on
    awaiting a delayed task. The worker's count of awaits belongs to the
    task, not to the attempt, so when the retry runs on the same worker, it
    counts as blocked although it awaits only an event. Once the task on
    the other worker awaits a handle, the queue warns that no task can
    start until one of the awaits ends, and names the retry.
    """
    retry_once = RetryPolicy(max_retries=1, base_delay=0, jitter="none")
    queue = AsyncTaskQueue(2, retry=retry_once)
    await queue.start()
    later = await queue.submit(asyncio.sleep, 0, delay=3600, task_id="later")
    release = asyncio.Event()
    attempts: list[int] = []

    async def await_later() -> None:
        await later

    async def fail() -> None:
        raise ValueError("boom")

    async def flaky() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            await asyncio.gather(await_later(), fail())
        await release.wait()

    async def waiter() -> None:
        await later

    try:
        flaky_handle = await queue.submit(flaky, task_id="flaky")
        await until(lambda: len(attempts) == 2)
        waiter_handle = await queue.submit(waiter, task_id="waiter")
        await until(lambda: waiter_handle.state is TaskState.RUNNING)
        await asyncio.sleep(0)

        assert blocked_warnings(caplog) == []
        assert queue._blocked_workers() == 1

        release.set()
        await flaky_handle
    finally:
        await queue.stop("cancel")


async def test_warning_after_shrink_counts_workers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After resize(1) the pool still has two busy workers.

    The warning then names the awaiting task's worker "the queue's only
    worker", while a second worker, which the shrink retired, still runs
    another task.
    """
    queue = AsyncTaskQueue(2)
    await queue.start()
    later = await queue.submit(asyncio.sleep, 0, delay=3600, task_id="later")
    release = asyncio.Event()

    async def awaits_later() -> None:
        await later

    try:
        awaiting = await queue.submit(awaits_later, task_id="awaiting")
        other = await queue.submit(release.wait, task_id="other")
        await until(lambda: queue._blocked_workers() == 1)
        await until(lambda: other.state is TaskState.RUNNING)

        queue.resize(1)

        warnings = blocked_warnings(caplog)
        assert len(warnings) == 1
        assert "only worker" not in warnings[0]
        assert awaiting.state is TaskState.RUNNING
    finally:
        await queue.stop("cancel")
