"""Regression tests for faults found by probing the scheduling features,
dedup keys, dead letters, hooks and the test tools as a hostile caller."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import multiprocessing
import threading

import pytest
from blockbuster import BlockBuster

from async_queue import (
    AsyncTaskQueue,
    Hook,
    RetryPolicy,
    TaskEvent,
    threaded,
)
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import counted_tasks

NO_RETRY = RetryPolicy(max_retries=0)


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


def test_virtual_clock_runs_process_pool_calls(blockbuster: BlockBuster) -> None:
    # A process pool pickles the function it runs, so the loop must pass it
    # on as it is. Its submit() writes to a pipe, by design, so the detector
    # of blocking calls is off here.
    blockbuster.deactivate()
    context = multiprocessing.get_context("spawn")
    executor = concurrent.futures.ProcessPoolExecutor(1, mp_context=context)

    async def main(loop: VirtualClockLoop) -> int:
        return await loop.run_in_executor(executor, abs, -3)

    try:
        assert run_virtual(main) == 3
    finally:
        executor.shutdown()


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


def test_stats_add_up_while_attempt_settles() -> None:
    # An attempt that timed out is settled while its task is still RUNNING:
    # on_timed_out hooks and the retry_on predicate see it so.
    seen: list[tuple[str, int, int, int]] = []
    queue: AsyncTaskQueue

    def record(where: str) -> None:
        stats = queue.stats()
        seen.append((where, counted_tasks(stats), stats.submitted, stats.running))

    class Record(Hook):
        def on_timed_out(self, event: TaskEvent) -> None:
            record("on_timed_out")

        def on_retry_scheduled(self, event: TaskEvent) -> None:
            record("on_retry_scheduled")

    def retry_on(exc: BaseException) -> bool:
        record("retry_on")
        return True

    policy = RetryPolicy(
        max_retries=1, base_delay=1.0, jitter="none", retry_on=retry_on
    )

    async def main(loop: VirtualClockLoop) -> None:
        nonlocal queue
        queue = AsyncTaskQueue(retry=policy, timeout=1.0, hooks=[Record()])
        async with queue:
            handle = await queue.submit(asyncio.sleep, 10)
            await asyncio.gather(handle, return_exceptions=True)

    run_virtual(main)
    assert seen[:3] == [
        ("on_timed_out", 1, 1, 1),
        ("retry_on", 1, 1, 1),
        ("on_retry_scheduled", 1, 1, 0),
    ]


class ChangingKey:
    """A dedup key whose hash its owner changes after submitting it."""

    def __init__(self) -> None:
        self.hash = 1

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return self is other


async def test_dedup_key_with_changed_hash_keeps_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def job() -> int:
        return 1

    queue = AsyncTaskQueue(max_workers=1)
    await queue.start()
    key = ChangingKey()
    first = await queue.submit(job, dedup_key=key)
    key.hash = 2

    assert await first == 1
    assert queue.stats().workers == 1
    second = await queue.submit(job, dedup_key=key)
    assert second is not first
    assert await second == 1

    cancelled = await queue.submit(job, dedup_key=key, delay=60)
    key.hash = 3
    assert cancelled.cancel() is True
    assert queue.stats().cancelled == 1

    report = await queue.stop("drain")
    assert report.never_started == ()
    assert queue.stats().succeeded == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "changed its hash or equality" in warnings[0].getMessage()


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


def test_run_virtual_rejects_sync_main() -> None:
    def main(loop: VirtualClockLoop) -> int:
        return 5

    with pytest.raises(TypeError, match=r"async def main\(loop\).*returned 5"):
        run_virtual(main)  # type: ignore[arg-type]


def test_run_virtual_rejects_coroutine_object() -> None:
    async def main(loop: VirtualClockLoop) -> int:
        return 5

    coroutine = main(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pass main itself, not main\(\.\.\.\)"):
        run_virtual(coroutine)  # type: ignore[arg-type]

    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


def test_virtual_clock_debug_rejects_coroutine_in_executor() -> None:
    # As asyncio's own loops do in debug mode.
    async def job() -> None:
        pass

    async def main(loop: VirtualClockLoop) -> None:
        loop.set_debug(True)
        with pytest.raises(TypeError, match="run_in_executor"):
            await loop.run_in_executor(None, job)  # type: ignore[arg-type]

    run_virtual(main)
