"""Backpressure: max_pending bounds the tasks waiting to start."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from async_queue import (
    AsyncTaskQueue,
    DuplicateTaskIdError,
    QueueClosedError,
    QueueFullError,
    RetryPolicy,
    TaskState,
)
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)


class Gate:
    """Tasks that wait until the test opens the gate, recording their order."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.started: list[int] = []

    async def __call__(self, index: int) -> int:
        self.started.append(index)
        await self.event.wait()
        return index


async def full_queue(gate: Gate, max_pending: int) -> AsyncTaskQueue:
    """Return a started one-worker queue whose worker is busy and heap full."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_pending=max_pending)
    await queue.start()
    await queue.submit(gate, -1)
    await until(lambda: queue.stats().running == 1)
    for index in range(max_pending):
        queue.submit_nowait(gate, index)

    return queue


async def test_submit_nowait_raises_when_full() -> None:
    gate = Gate()
    queue = await full_queue(gate, 2)
    before = queue.stats()

    with pytest.raises(QueueFullError) as caught:
        queue.submit_nowait(gate, 99)

    assert str(caught.value) == (
        "the queue is full: 2 tasks are waiting to start (max_pending=2); use "
        "'await queue.submit()' to wait for room, or raise max_pending"
    )
    assert queue.stats() == before
    gate.event.set()
    await queue.stop("drain")


async def test_full_message_for_one_task() -> None:
    gate = Gate()
    queue = await full_queue(gate, 1)

    with pytest.raises(QueueFullError, match=r"^the queue is full: 1 task is waiting"):
        queue.submit_nowait(gate, 99)

    gate.event.set()
    await queue.stop("drain")


async def test_thread_told_how_to_wait_for_room() -> None:
    """A full queue fails submit_threadsafe(); the advice it gives then works."""
    gate = Gate()
    queue = await full_queue(gate, 1)
    loop = asyncio.get_running_loop()

    def from_thread() -> tuple[BaseException | None, object]:
        rejected = queue.submit_threadsafe(gate, 98).exception()
        waiting = asyncio.run_coroutine_threadsafe(queue.submit(gate, 99), loop)
        return rejected, waiting

    rejected, waiting = await asyncio.to_thread(from_thread)

    assert isinstance(rejected, QueueFullError)
    assert "asyncio.run_coroutine_threadsafe()" in str(rejected)
    assert "await queue.submit()" not in str(rejected)
    assert isinstance(waiting, concurrent.futures.Future)
    await until(lambda: len(queue._space_waiters) == 1)
    assert not waiting.done()

    gate.event.set()
    handle = await asyncio.wrap_future(waiting)
    assert await handle == 99
    assert gate.started == [-1, 0, 99]
    await queue.stop("drain")


async def test_submit_waits_for_room() -> None:
    gate = Gate()
    queue = await full_queue(gate, 2)
    waiting = asyncio.create_task(queue.submit(gate, 2))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiting.done()
    assert queue.stats().pending == 2

    gate.event.set()
    handle = await waiting
    assert await handle == 2
    await queue.stop("drain")
    assert gate.started == [-1, 0, 1, 2]


async def test_waiting_submitters_served_in_order() -> None:
    gate = Gate()
    queue = await full_queue(gate, 1)
    submitters = [asyncio.create_task(queue.submit(gate, 10 + i)) for i in range(5)]
    await until(lambda: len(queue._space_waiters) == 5)

    gate.event.set()
    handles = await asyncio.gather(*submitters)
    await queue.stop("drain")

    assert [h.id for h in handles] == sorted(h.id for h in handles)
    assert gate.started == [-1, 0, 10, 11, 12, 13, 14]


async def test_nowait_does_not_jump_waiters() -> None:
    gate = Gate()
    queue = await full_queue(gate, 1)
    waiting = asyncio.create_task(queue.submit(gate, 5))
    await until(lambda: len(queue._space_waiters) == 1)

    with pytest.raises(QueueFullError):
        queue.submit_nowait(gate, 6)

    gate.event.set()
    await waiting
    await queue.stop("drain")


async def test_stop_releases_waiting_submitters() -> None:
    gate = Gate()
    queue = await full_queue(gate, 1)
    waiting = [asyncio.create_task(queue.submit(gate, 7)) for _ in range(3)]
    await until(lambda: len(queue._space_waiters) == 3)

    report = await queue.stop()

    for task in waiting:
        with pytest.raises(QueueClosedError):
            await task
    assert len(report.never_started) == 1
    assert queue.stats().submitted == 2


async def test_cancelled_waiter_passes_room_on() -> None:
    gate = Gate()
    queue = await full_queue(gate, 1)
    first = asyncio.create_task(queue.submit(gate, 1))
    second = asyncio.create_task(queue.submit(gate, 2))
    await until(lambda: len(queue._space_waiters) == 2)

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first

    gate.event.set()
    handle = await second
    assert await handle == 2
    await queue.stop("drain")
    assert queue._reserved == 0


async def test_woken_then_cancelled_passes_room_on() -> None:
    gate = Gate()
    queue = await full_queue(gate, 1)
    first = asyncio.create_task(queue.submit(gate, 1))
    second = asyncio.create_task(queue.submit(gate, 2))
    await until(lambda: len(queue._space_waiters) == 2)

    pending = queue.task(2)
    assert pending.cancel()  # frees a room: the first waiter is woken
    first.cancel()  # ...and cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first

    gate.event.set()
    assert await (await second) == 2
    await queue.stop("drain")
    assert queue._reserved == 0


async def test_rejected_submission_frees_its_room() -> None:
    gate = Gate()
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_pending=1)
    await queue.start()
    await queue.submit(gate, -1, task_id="busy")
    await until(lambda: queue.stats().running == 1)
    queue.submit_nowait(gate, 0)
    # The id is free when both submissions check it before they wait. The
    # first takes it once it has its room, so the second is rejected then.
    first = asyncio.create_task(queue.submit(gate, 1, task_id="later"))
    bad = asyncio.create_task(queue.submit(gate, 2, task_id="later"))
    good = asyncio.create_task(queue.submit(gate, 3))
    await until(lambda: len(queue._space_waiters) == 3)

    gate.event.set()
    assert await (await first) == 1
    with pytest.raises(DuplicateTaskIdError, match="later"):
        await bad
    assert await (await good) == 3
    await queue.stop("drain")
    assert queue._reserved == 0


async def test_retries_may_exceed_max_pending() -> None:
    """An accepted task that comes back to retry is never rejected."""
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first attempt fails")
        return "ok"

    policy = RetryPolicy(max_retries=1, base_delay=0)
    async with AsyncTaskQueue(1, retry=policy, max_pending=1) as queue:
        handle = await queue.submit(flaky)
        assert await handle == "ok"

    assert handle.state is TaskState.SUCCEEDED


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_invalid_max_pending(value: object) -> None:
    with pytest.raises((TypeError, ValueError), match="max_pending"):
        AsyncTaskQueue(max_pending=value)  # type: ignore[arg-type]


async def test_full_error_counts_returned_retries() -> None:
    # A retry re-enters the heap without taking room, so the message gives
    # the real count next to the limit.
    queue = AsyncTaskQueue(1, max_pending=1)
    await queue.start()

    async def pause_then_fail() -> None:
        queue.submit_nowait(asyncio.sleep, 0)  # fills the only room
        queue.pause()
        raise ValueError("first attempt")

    retried = queue.submit_nowait(
        pause_then_fail, retry=RetryPolicy(max_retries=1, base_delay=0)
    )
    await until(lambda: retried.attempts == 1 and retried.state is TaskState.PENDING)

    with pytest.raises(QueueFullError, match=r"full: 2 tasks .* \(max_pending=1\)"):
        queue.submit_nowait(asyncio.sleep, 0)

    await queue.stop()
