"""Regression tests for faults found by probing the queue as a hostile caller."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import AsyncTaskQueue, RetryPolicy, TaskState
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)


async def settle(steps: int = 20) -> None:
    """Let the loop run callbacks and woken coroutines for a few iterations."""
    for _ in range(steps):
        await asyncio.sleep(0)


def test_rate_limit_fills_every_worker() -> None:
    """Blocked starts resume at the rate limit on every idle worker, not one."""

    async def main(loop: VirtualClockLoop) -> None:
        gate = asyncio.Event()

        async def hold() -> None:
            await gate.wait()

        queue = AsyncTaskQueue(10, retry=NO_RETRY, rate_limit=100.0)
        await queue.start()
        handles = [await queue.submit(hold) for _ in range(20)]

        # 100 starts per second: 0.3 s gives tokens for far more than 10 workers.
        for _ in range(30):
            loop.advance(0.01)
            await settle()

        assert queue.stats().running == 10
        assert queue.stats().pending == 10

        gate.set()
        await queue.stop("drain")
        assert all(h.state is TaskState.SUCCEEDED for h in handles)

    run_virtual(main)


@settings(max_examples=40, deadline=None)
@given(
    workers=st.integers(1, 6),
    rate=st.sampled_from([5.0, 20.0, 50.0]),
    burst=st.integers(1, 4),
    tasks=st.integers(1, 15),
)
def test_rate_limit_bounds_and_progress(
    workers: int, rate: float, burst: int, tasks: int
) -> None:
    """Starts never exceed burst + rate * elapsed, and blocked starts resume."""

    async def main(loop: VirtualClockLoop) -> None:
        gate = asyncio.Event()
        starts: list[float] = []

        async def hold() -> None:
            starts.append(loop.time())
            await gate.wait()

        queue = AsyncTaskQueue(
            workers, retry=NO_RETRY, rate_limit=rate, rate_burst=burst
        )
        await queue.start()
        begin = loop.time()
        for _ in range(tasks):
            await queue.submit(hold)

        step = 0.25 / rate
        for _ in range(8 * (tasks + 1)):
            loop.advance(step)
            await settle(5)
            elapsed = loop.time() - begin
            # A small slack for the wall time that passes under the virtual clock.
            assert len(starts) <= burst + rate * elapsed + 1e-3

        # 2 * (tasks + 1) token intervals have passed: every worker is busy.
        assert len(starts) == min(workers, tasks)

        gate.set()
        await queue.stop("drain")
        assert len(starts) == tasks

    run_virtual(main)
