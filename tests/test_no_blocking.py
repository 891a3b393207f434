"""Nothing blocks the event loop, and idle workers use no CPU."""

from __future__ import annotations

import asyncio
import time

import pytest
from blockbuster import BlockingError

from async_queue import AsyncTaskQueue, RetryPolicy
from tests.helpers import until


async def test_blocking_call_in_task_is_detected() -> None:
    """The detector is live: a task calling time.sleep fails."""

    async def blocks() -> None:
        time.sleep(0.001)  # noqa: ASYNC251 - the call under test

    async with AsyncTaskQueue(1, retry=RetryPolicy(max_retries=0)) as queue:
        handle = await queue.submit(blocks)
        with pytest.raises(BlockingError):
            await handle


async def test_idle_queue_schedules_nothing() -> None:
    """Idle workers wait on futures: no timer, no ready callback, no polling."""
    loop = asyncio.get_running_loop()
    policy = RetryPolicy(max_retries=1, base_delay=0)
    async with AsyncTaskQueue(4, retry=policy, timeout=30) as queue:
        calls = 0

        async def fails_once() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("first attempt fails")

        await (await queue.submit(fails_once))
        await until(lambda: queue.stats().running == 0)
        for _ in range(10):
            await asyncio.sleep(0)

        # The default loop keeps its callbacks in these two private fields.
        ready = list(loop._ready)  # type: ignore[attr-defined]
        scheduled = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        assert ready == []
        assert scheduled == []
        assert queue.stats().workers == 4
