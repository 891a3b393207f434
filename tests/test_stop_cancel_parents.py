"""stop("cancel") while a running task awaits a queued task of the same queue."""

from __future__ import annotations

import asyncio

from async_queue import AsyncTaskQueue, RetryPolicy, TaskCancelledError, TaskState
from tests.helpers import until


async def sleeper() -> int:
    await asyncio.sleep(3600)
    return 1


async def test_cancel_stop_interrupts_awaiting_parent() -> None:
    letters: list[object] = []
    queue = AsyncTaskQueue(
        1, retry=RetryPolicy(max_retries=0), on_dead_letter=letters.append
    )
    await queue.start()

    async def parent() -> int:
        child = await queue.submit(sleeper)
        return await child

    handle = await queue.submit(parent)
    await until(
        lambda: handle.state is TaskState.RUNNING and queue.stats().pending == 1
    )

    report = await queue.stop("cancel")

    # Cancel mode cancels every running task, and the report lists each one
    # as interrupted, even when its child was cancelled first.
    assert handle.state is TaskState.CANCELLED
    assert isinstance(handle.exception(), TaskCancelledError)
    assert [h.id for h in report.interrupted] == [handle.id]
    assert queue.dead_letters() == ()
    assert letters == []
    assert queue.stats().failed == 0


async def test_cancel_stop_same_for_gather_parent() -> None:
    queue = AsyncTaskQueue(1, retry=RetryPolicy(max_retries=0))
    await queue.start()

    async def parent() -> int:
        children = [await queue.submit(sleeper) for _ in range(2)]
        return sum(await asyncio.gather(*children))

    handle = await queue.submit(parent)
    await until(
        lambda: handle.state is TaskState.RUNNING and queue.stats().pending == 2
    )

    report = await queue.stop("cancel")

    assert handle.state is TaskState.CANCELLED
    assert [h.id for h in report.interrupted] == [handle.id]
