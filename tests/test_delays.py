"""Delayed tasks: submitted now, entering the ready heap at a later time."""

from __future__ import annotations

import asyncio
import time

import pytest

from async_queue import AsyncTaskQueue, RetryPolicy, TaskCancelledError, TaskState
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_delayed_task_starts_when_due() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        calls = 0

        async def job() -> str:
            nonlocal calls
            calls += 1
            return "ran"

        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            handle = await queue.submit(job, delay=30)
            await settle()
            assert handle.state is TaskState.DELAYED
            assert queue.stats().delayed == 1
            assert queue.stats().pending == 0

            loop.advance(29.9)
            await settle()
            assert calls == 0

            loop.advance(0.1)
            assert await handle == "ran"
            assert queue.stats().delayed == 0

    run_virtual(main)


def test_delayed_tasks_order_by_priority_once_due() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        started: list[str] = []
        release = asyncio.Event()

        async def blocker() -> None:
            await release.wait()

        async def record(name: str) -> None:
            started.append(name)

        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            block = await queue.submit(blocker)
            await until(lambda: queue.stats().running == 1)
            await queue.submit(record, "late-low", priority=0, delay=5)
            await queue.submit(record, "early-low", priority=0, delay=1)
            await queue.submit(record, "high", priority=9, at=loop.time() + 3)
            await queue.submit(record, "now", priority=1)

            loop.advance(10)
            await until(lambda: queue.stats().pending == 4)
            release.set()
            await block
            await queue.join()

        assert started == ["high", "now", "early-low", "late-low"]

    run_virtual(main)


def test_cancel_delayed_task_never_runs() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        calls = 0

        async def job() -> None:
            nonlocal calls
            calls += 1

        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            handle = await queue.submit(job, delay=5)
            assert handle.cancel()
            assert queue.stats().delayed == 0
            loop.advance(10)
            await settle()
            with pytest.raises(TaskCancelledError):
                await handle

        assert calls == 0
        assert handle.state is TaskState.CANCELLED

    run_virtual(main)


@pytest.mark.parametrize("mode", ["cancel", "finish_running"])
def test_stop_cancels_delayed_tasks(mode: str) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        async def job() -> None:
            raise AssertionError("a delayed task ran after stop()")

        queue = AsyncTaskQueue(1, retry=NO_RETRY)
        await queue.start()
        handle = await queue.submit(job, delay=60)
        report = await queue.stop(mode)

        assert report.never_started == (handle,)
        assert handle.state is TaskState.CANCELLED
        assert queue.stats().delayed == 0

    run_virtual(main)


def test_drain_waits_for_delayed_task() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        async def job() -> str:
            return "ran"

        queue = AsyncTaskQueue(1, retry=NO_RETRY)
        await queue.start()
        handle = await queue.submit(job, delay=60)
        stopping = asyncio.create_task(queue.stop("drain"))
        await settle()
        assert not stopping.done()

        loop.advance(60)
        report = await stopping
        assert report.never_started == ()
        assert await handle == "ran"

    run_virtual(main)


async def test_past_or_zero_delay_runs_at_once() -> None:
    async def job() -> int:
        return 1

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        loop = asyncio.get_running_loop()
        zero = await queue.submit(job, delay=0)
        past = await queue.submit(job, at=loop.time() - 100)
        assert zero.state is TaskState.PENDING
        assert past.state is TaskState.PENDING
        assert await zero == 1
        assert await past == 1


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"delay": -1}, ValueError, "-1"),
        ({"delay": float("nan")}, ValueError, "nan"),
        ({"delay": float("inf")}, ValueError, "inf"),
        ({"delay": "5"}, TypeError, "'5'"),
        ({"at": float("inf")}, ValueError, "inf"),
        ({"at": None, "delay": True}, TypeError, "True"),
        ({"at": "now"}, TypeError, "'now'"),
        ({"at": 1.0, "delay": 1.0}, TypeError, "not both"),
    ],
)
async def test_invalid_delay_leaves_queue_unchanged(
    options: dict[str, object], error: type[Exception], text: str
) -> None:
    async def job() -> None:
        pass

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        before = queue.stats()
        with pytest.raises(error, match=text):
            await queue.submit(job, **options)  # type: ignore[arg-type]

        assert queue.stats() == before
        handle = await queue.submit(job)
        assert handle.id == 1


async def test_wall_clock_at_rejected() -> None:
    async def job() -> None:
        pass

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        before = queue.stats()
        with pytest.raises(ValueError, match="wall-clock time") as info:
            queue.submit_nowait(job, at=time.time() + 30)
        assert "delay=at - time.time()" in str(info.value)
        assert queue.stats() == before

        loop_time = asyncio.get_running_loop().time()
        far = await queue.submit(job, at=loop_time + 2 * 365 * 24 * 3600)
        assert far.state is TaskState.DELAYED
        assert far.cancel() is True
