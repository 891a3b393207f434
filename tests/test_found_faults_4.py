"""Regression tests for faults found by probing the scheduling features,
dedup keys, dead letters, hooks and the test tools as a hostile caller."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from async_queue import AsyncTaskQueue, RetryPolicy, threaded
from async_queue.testing import VirtualClockLoop, run_virtual

NO_RETRY = RetryPolicy(max_retries=0)


async def settle(steps: int = 20) -> None:
    """Let the loop run callbacks and woken coroutines for a few iterations."""
    for _ in range(steps):
        await asyncio.sleep(0)


def test_virtual_clock_waits_for_threads() -> None:
    # The thread is busy for 100 times the autojump, so a loop that counts
    # an executor thread as idleness jumps the clock to the task's deadline.
    def blocking() -> str:
        threading.Event().wait(0.1)
        return "done"

    async def main(loop: VirtualClockLoop) -> tuple[str, float]:
        start = loop.time()
        async with AsyncTaskQueue(retry=NO_RETRY, timeout=5.0) as queue:
            handle = await queue.submit(threaded(blocking))
            result = await handle

        return result, loop.time() - start

    result, elapsed = run_virtual(main, autojump=0.001)
    assert result == "done"
    assert elapsed == 0.0


def test_virtual_loop_closes_with_thread_running() -> None:
    # On Python 3.13, asyncio.Runner waits up to 300 s on the loop clock for
    # the default executor's threads as it closes. A jump of the clock ends
    # that wait at once, with a warning that the threads did not finish.
    release = threading.Event()

    async def main(loop: VirtualClockLoop) -> None:
        loop.run_in_executor(None, release.wait, 0.1)

    run_virtual(main, autojump=0.001)
    assert release.is_set() is False


def test_virtual_clock_jumps_after_cancelled_thread_call() -> None:
    # A call that the executor never starts must not keep the clock still.
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    async def main(loop: VirtualClockLoop) -> float:
        busy = threading.Event()
        first = loop.run_in_executor(executor, busy.wait, 0.1)
        second = loop.run_in_executor(executor, busy.wait, 0.1)
        second.cancel()
        busy.set()
        await first

        start = loop.time()
        await asyncio.sleep(30)
        return loop.time() - start

    try:
        assert run_virtual(main, autojump=0.001) == 30.0
    finally:
        executor.shutdown()
