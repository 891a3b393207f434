"""Edges of the queue: closed and unstarted queues, loop shutdown, odd tasks."""

from __future__ import annotations

import asyncio
import logging

import pytest

from async_queue import (
    AsyncTaskQueue,
    QueueClosedError,
    QueueStateError,
    RetryPolicy,
    ShutdownMode,
    TaskCancelledError,
    TaskHandle,
    TaskNotFoundError,
    TaskState,
)
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)


async def noop() -> None:
    return None


async def fails() -> None:
    raise ValueError("planned failure")


async def hangs() -> None:
    await asyncio.Event().wait()


def test_unstarted_queue_lookup_and_stats() -> None:
    queue = AsyncTaskQueue(2)

    with pytest.raises(TaskNotFoundError, match="no task with id 1"):
        queue.task(1)
    assert queue.stats().submitted == 0
    assert queue.stats().workers == 0


@pytest.mark.parametrize("started", [False, True], ids=["unstarted", "stopped"])
async def test_bounded_submit_on_closed_queue(started: bool) -> None:
    """With max_pending, submit() on a queue that does not run still raises."""
    queue = AsyncTaskQueue(1, max_pending=1)
    if started:
        await queue.start()
        await queue.stop()

    error = QueueClosedError if started else QueueStateError
    with pytest.raises(error):
        await queue.submit(noop)

    assert queue.stats().submitted == 0


async def test_threadsafe_submit_cancelled_before_queued() -> None:
    """A future cancelled before the loop queues its task queues nothing."""
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        future = queue.submit_threadsafe(noop)
        future.cancel()
        for _ in range(3):
            await asyncio.sleep(0)

        assert queue.stats().submitted == 0
        assert future.cancelled()


async def test_requeue_on_stopped_queue_keeps_letter() -> None:
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    handle = await queue.submit(fails)
    await queue.join()
    await queue.stop()

    with pytest.raises(QueueClosedError):
        await queue.requeue(handle.id)

    assert [letter.task_id for letter in queue.dead_letters()] == [handle.id]


def test_loop_shutdown_cancels_stop_and_task() -> None:
    """Closing the loop mid-drain cancels the running task and the stop itself."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)

    async def main() -> None:
        await queue.start()
        handle = await queue.submit(hangs)
        await until(lambda: handle.state is TaskState.RUNNING)
        asyncio.get_running_loop().create_task(queue.stop(ShutdownMode.DRAIN))
        await until(lambda: queue.closed)

    asyncio.run(main())
    handle = queue.task(1)

    assert handle.state is TaskState.CANCELLED
    with pytest.raises(TaskCancelledError, match="the worker was cancelled"):
        handle.result()
    assert queue.report is None
    assert queue.stats().workers == 0


class Nameless:
    """An async callable whose name cannot be read, and which always fails."""

    def __getattr__(self, name: str) -> object:
        if name == "__qualname__":
            raise RuntimeError("this task has no name")

        raise AttributeError(name)

    async def __call__(self) -> None:
        raise ValueError("planned failure")


@pytest.mark.parametrize("base_delay", [0, 60], ids=["pending", "waiting_retry"])
async def test_unreadable_name_fails_task(
    base_delay: float, caplog: pytest.LogCaptureFixture
) -> None:
    """A task whose retry cannot be announced fails with that error, once.

    The retry's log record needs the task's name. Reading it raises after the
    task was parked for its retry, so the queue must take it back out.
    """
    policy = RetryPolicy(max_retries=3, base_delay=base_delay, jitter="none")
    async with AsyncTaskQueue(1, retry=policy) as queue:
        handle = await queue.submit(Nameless())
        await queue.join()
        stats = queue.stats()

    assert handle.state is TaskState.FAILED
    assert handle.attempts == 1
    assert isinstance(handle.exception(), RuntimeError)
    assert (stats.failed, stats.pending, stats.waiting_retry) == (1, 0, 0)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert messages[0].startswith("settling an attempt of task 1 failed")


def test_queue_from_closed_loop_rejected() -> None:
    queue = AsyncTaskQueue(2)

    async def job() -> str:
        return "ran"

    async def first_loop() -> str:
        await queue.start()
        return await (await queue.submit(job))

    async def second_loop() -> list[str]:
        messages = []
        calls = [
            lambda: queue.submit_nowait(job),
            lambda: queue.submit_nowait(job, timeout=5),
            lambda: queue.every(1, job),
            lambda: queue.resize(4),
        ]
        for call in calls:
            with pytest.raises(QueueStateError) as info:
                call()
            messages.append(str(info.value))

        with pytest.raises(QueueStateError, match="is closed"):
            await queue.submit(job)
        with pytest.raises(QueueStateError, match="is closed"):
            await queue.stop()
        return messages

    assert asyncio.run(first_loop()) == "ran"
    stats = queue.stats()
    messages = asyncio.run(second_loop())

    assert len(messages) == 4
    for message in messages:
        assert "the event loop that ran start(), which is closed" in message
        assert "inside each asyncio.run()" in message
    assert queue.stats() == stats
    assert queue.max_workers == 2
    assert queue.schedules == ()


def test_await_after_loop_closed_says_closed() -> None:
    # The error reports that the queue's loop is closed. Advice to await the
    # handle on that loop, as for any other loop, would not help: a closed
    # loop never finishes the task.
    handles: list[TaskHandle[bool]] = []

    async def main() -> None:
        queue = AsyncTaskQueue(1)
        await queue.start()
        handles.append(queue.submit_nowait(asyncio.Event().wait))
        handles.append(queue.submit_nowait(asyncio.Event().wait))
        await asyncio.sleep(0)

    asyncio.run(main())
    handle = handles[1]
    assert handle.state is TaskState.PENDING

    async def await_later() -> None:
        await handle

    with pytest.raises(QueueStateError, match="which is closed") as caught:
        asyncio.run(await_later())

    assert "run_coroutine_threadsafe" not in str(caught.value)
