"""Tasks that await the handles of other tasks of the same queue."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from async_queue import AsyncTaskQueue, RetryPolicy, TaskCancelledError, TaskState
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)
BLOCKED = "another task of the same queue while running"


def blocked_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if BLOCKED in r.getMessage()]


async def child(n: int) -> int:
    return n


async def test_blocked_workers_warn_each_time(caplog: pytest.LogCaptureFixture) -> None:
    async def parent(queue: AsyncTaskQueue) -> int:
        return await (await queue.submit(child, 1))

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        first = await queue.submit(parent, queue)
        # The parent submits its child and awaits it in one step.
        await until(lambda: first.state is TaskState.RUNNING)

        assert queue.stats().pending == 1
        assert blocked_warnings(caplog) == [
            f"task {first.id!r} awaits another task of the same queue while "
            "running, and with max_workers=1 no task can start until one of "
            "those awaits ends; await handles outside the queue's tasks, or "
            "raise max_workers"
        ]

        first.cancel()
        with pytest.raises(TaskCancelledError):
            await first

        # The worker is free again; a second episode warns again.
        second = await queue.submit(parent, queue)
        await until(lambda: len(blocked_warnings(caplog)) == 2)
        second.cancel()
        with pytest.raises(TaskCancelledError):
            await second

    assert queue.stats().succeeded == 2  # the two children


async def test_enough_workers_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    async def parent(queue: AsyncTaskQueue) -> list[int]:
        children = [await queue.submit(child, n) for n in range(3)]
        # Two awaits at once by one task count its worker once.
        return list(await asyncio.gather(*children))

    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        handle = await queue.submit(parent, queue)
        assert await handle == [0, 1, 2]

    assert blocked_warnings(caplog) == []


async def test_await_other_queue_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    async with AsyncTaskQueue(1) as outer, AsyncTaskQueue(1) as inner:

        async def parent() -> int:
            return await (await inner.submit(child, 5))

        assert await (await outer.submit(parent)) == 5

    assert blocked_warnings(caplog) == []


async def test_blocked_count_returns_to_zero() -> None:
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "done"

    async def parent(queue: AsyncTaskQueue, n: int) -> Any:
        handles = [await queue.submit(slow) for _ in range(n)]
        return await asyncio.gather(*handles)

    async with AsyncTaskQueue(4, retry=NO_RETRY) as queue:
        parents = [await queue.submit(parent, queue, n) for n in (1, 2)]
        await until(lambda: queue._blocked_workers() == 2)
        release.set()
        for handle in parents:
            await handle

        assert queue._blocked_workers() == 0
        assert [w.awaits for w in queue._workers] == [0, 0, 0, 0]
        assert [w.awaiting_for for w in queue._workers] == [None] * 4


async def test_blocked_warning_names_tasks(caplog: pytest.LogCaptureFixture) -> None:
    async def parent(queue: AsyncTaskQueue) -> int:
        return await (await queue.submit(child, 1))

    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        parents = [await queue.submit(parent, queue) for _ in range(2)]
        await until(lambda: len(blocked_warnings(caplog)) == 1)

        assert blocked_warnings(caplog)[0].startswith(
            "tasks 1, 2 await another task of the same queue while running, and "
            "with max_workers=2"
        )
        for handle in parents:
            handle.cancel()
