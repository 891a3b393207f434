"""A task that stops or joins its own queue, directly or through child tasks,
and a task that cancels its own worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from async_queue import AsyncTaskQueue, RetryPolicy, TaskState
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)
RETRY_TWICE = RetryPolicy(max_retries=2, base_delay=0.0, jitter="none")

Call = Callable[[AsyncTaskQueue], Awaitable[Any]]

# How a task calls stop() or join() of its own queue: directly, or from a
# child asyncio task that it awaits.
CALLS: dict[str, Call] = {
    "stop": lambda queue: queue.stop("drain"),
    "stop in gather": lambda queue: asyncio.gather(queue.stop("drain")),
    "stop in create_task": lambda queue: asyncio.create_task(queue.stop("drain")),
    "join": lambda queue: queue.join(),
    "join in gather": lambda queue: asyncio.gather(queue.join()),
    "join in create_task": lambda queue: asyncio.create_task(queue.join()),
}


@pytest.mark.parametrize("how", list(CALLS))
async def test_own_stop_or_join_returns(how: str) -> None:
    """The call does not wait for the task that made it."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    other_started = asyncio.Event()
    release = asyncio.Event()

    async def other() -> str:
        other_started.set()
        await release.wait()
        return "other"

    async def caller() -> str:
        await other_started.wait()
        release.set()
        await CALLS[how](queue)
        return "returned"

    first = await queue.submit(other)
    handle = await queue.submit(caller)

    assert await handle == "returned"
    assert await first == "other"
    await queue.stop()
    assert queue.stats().succeeded == 2


async def test_await_own_handle_in_gather_raises() -> None:
    """Awaiting its own handle through gather() fails the task at once."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    holder: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def awaits_itself() -> object:
        own = await holder
        return await asyncio.gather(own)

    handle = await queue.submit(awaits_itself)
    holder.set_result(handle)
    await until(handle.done)
    await queue.stop()

    error = handle.exception()
    assert isinstance(error, RuntimeError)
    assert (
        str(error)
        == "task 1 cannot await its own handle: it would wait for itself forever"
    )


async def fail_after_stop(queue: AsyncTaskQueue) -> None:
    await queue.stop("drain")
    raise ConnectionError("failed after the stop")


async def test_stop_caller_failing_later_fails() -> None:
    """A task that fails after its own stop() returned has no retry left."""
    queue = AsyncTaskQueue(2, retry=RETRY_TWICE)
    await queue.start()
    handle = await queue.submit(fail_after_stop, queue)

    with pytest.raises(ConnectionError, match="failed after the stop"):
        await handle

    stats = queue.stats()
    assert handle.state is TaskState.FAILED
    assert handle.attempts == 1
    assert (stats.pending, stats.waiting_retry, stats.failed) == (0, 0, 1)
    assert [letter.task_id for letter in queue.dead_letters()] == [1]


def test_stop_caller_timed_out_in_drain_retries() -> None:
    """A task whose own timeout ends its wait for the drain is retried first."""

    async def waits_for_stop(queue: AsyncTaskQueue) -> None:
        await queue.stop("drain")

    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(2, retry=RETRY_TWICE)
        await queue.start()
        blocker = await queue.submit(asyncio.sleep, 10.0)
        handle = await queue.submit(waits_for_stop, queue, timeout=1.0)
        await until(lambda: queue.stats().running == 2)

        report = await queue.stop("drain")

        assert blocker.state is TaskState.SUCCEEDED
        assert handle.state is TaskState.FAILED
        assert handle.attempts == 3
        assert isinstance(handle.exception(), TimeoutError)
        assert report.never_started == report.interrupted == ()
        assert queue.stats().waiting_retry == 0

    run_virtual(main)


def test_stop_caller_keeps_own_timeout() -> None:
    """The timeout of a task that called stop() still applies once it returns."""

    async def stops_then_hangs(queue: AsyncTaskQueue) -> None:
        await queue.stop("drain")
        await asyncio.sleep(3600)

    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(1, retry=RETRY_TWICE)
        await queue.start()
        started = loop.time()
        handle = await queue.submit(stops_then_hangs, queue, timeout=5.0)

        with pytest.raises(TimeoutError):
            await handle

        assert loop.time() - started == pytest.approx(5.0, abs=0.1)
        assert handle.attempts == 1
        assert queue._watchdog is None

    run_virtual(main)


async def cancels_own_worker() -> None:
    current = asyncio.current_task()
    assert current is not None
    current.cancel()
    await asyncio.sleep(0)


async def returns_done() -> str:
    return "done"


async def test_cancelled_worker_replaced_on_submit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A task that cancels its worker ends CANCELLED; the next submission
    starts a worker in its place."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    with caplog.at_level(logging.WARNING, logger="async_queue"):
        handles = [await queue.submit(cancels_own_worker) for _ in range(2)]
        await until(lambda: queue.stats().workers == 0)

    assert [h.state for h in handles] == [TaskState.CANCELLED] * 2
    assert len(caplog.records) == 2
    assert "was cancelled from outside the queue while it ran task 1" in (
        caplog.records[0].getMessage()
    )

    later = await queue.submit(returns_done)

    assert queue.stats().workers == 2
    assert await later == "done"
    await queue.stop()


async def lose_every_worker(queue: AsyncTaskQueue, count: int) -> list[Any]:
    """Queue ``count`` tasks behind tasks that cancel every worker."""
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    async def cancels_after_gate() -> None:
        await gate
        await cancels_own_worker()

    workers = queue.max_workers
    for _ in range(workers):
        queue.submit_nowait(cancels_after_gate)
    later = [queue.submit_nowait(returns_done) for _ in range(count)]
    await until(lambda: queue.stats().running == workers)
    gate.set_result(None)
    await until(lambda: queue.stats().workers == 0)
    return later


@pytest.mark.parametrize("how", ["join", "await", "drain"])
async def test_lost_workers_replaced_on_wait(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Waiting for queued tasks starts workers in place of the lost ones."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    with caplog.at_level(logging.ERROR, logger="async_queue"):
        later = await lose_every_worker(queue, 3)

    assert [h.state for h in later] == [TaskState.PENDING] * 3
    if how == "join":
        await queue.join()
    elif how == "await":
        assert await later[-1] == "done"
    else:
        await queue.stop("drain")

    assert queue.stats().succeeded == 3
    assert [await h for h in later] == ["done"] * 3
    await queue.stop()
