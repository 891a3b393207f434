"""Priority order under aging, a stall that the queue does not report, and a
README statement that the code contradicts."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from async_queue import AsyncTaskQueue, RetryPolicy, TaskState
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)
README = Path(__file__).resolve().parent.parent / "README.md"


# Aging keys tasks by a float


@pytest.mark.parametrize("base", [2**53, 2**61, 1_700_000_000_000_000_000])
def test_aging_orders_large_priorities(base: int) -> None:
    """With aging_rate set, priority base + 1 starts before priority base.

    The docs take any int as a priority, and with aging the queue accepts
    every int within the float range. A key of ``priority - aging_rate *
    time`` held as a float cannot tell apart ints above 2**53 that differ by
    less than the float spacing, such as priorities built from
    ``time.time_ns()``.
    """

    async def main(loop: VirtualClockLoop) -> list[str]:
        order: list[str] = []

        async def record(name: str) -> None:
            order.append(name)

        async with AsyncTaskQueue(1, aging_rate=1.0, retry=NO_RETRY) as queue:
            queue.pause()
            await queue.submit(record, "lower", priority=base)
            await queue.submit(record, "higher", priority=base + 1)
            await queue.submit(record, "highest", priority=base + 100)
            queue.resume()

        return order

    assert run_virtual(main) == ["highest", "higher", "lower"]


# A task that waits for room in its own full queue


async def test_room_wait_in_every_worker_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every worker's task waits in submit() for room that only they can free.

    No task can start, just as when every worker awaits a handle of its own
    queue, which the queue reports with a warning. A crawler whose page tasks
    submit the pages they link to with ``await queue.submit()`` on a queue
    with ``max_pending`` ends up here and hangs without a log line.
    """
    caplog.set_level(logging.WARNING, logger="async_queue")
    queue = AsyncTaskQueue(2, retry=NO_RETRY, max_pending=1)
    await queue.start()
    submitting: list[int] = []

    async def child() -> None:
        return None

    async def parent(index: int) -> None:
        submitting.append(index)
        await queue.submit(child)

    try:
        parents = [await queue.submit(parent, index, priority=1) for index in range(2)]
        filler = await queue.submit(child)
        await until(lambda: len(submitting) == 2)
        for _ in range(100):
            await asyncio.sleep(0)

        assert [handle.state for handle in parents] == [TaskState.RUNNING] * 2
        assert filler.state is TaskState.PENDING
        warnings = [
            record
            for record in caplog.records
            if record.name == "async_queue" and record.levelno == logging.WARNING
        ]
        assert len(warnings) == 1
        assert "max_pending" in warnings[0].getMessage()
    finally:
        await queue.stop()


# README


def test_readme_taken_id_checked_before_wait() -> None:
    """README.md describes when submit() rejects a task_id that is taken.

    ``await submit(..., task_id=...)`` on a full queue raises
    ``DuplicateTaskIdError`` before it waits for room, as
    ``test_full_queue_rejects_taken_id`` checks, but README.md states that
    the taken id is found only once the submission has room.
    """
    text = " ".join(README.read_text(encoding="utf-8").split())
    states_check_after_wait = "is found only once the submission has room" in text

    assert not states_check_after_wait
