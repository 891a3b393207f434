"""Start order: highest priority first, submission order among equals."""

from __future__ import annotations

import asyncio
import enum

from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import AsyncTaskQueue, RetryPolicy
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)


async def _start_order(priorities: list[int], workers: int = 1) -> list[int]:
    """Submit one task per priority behind a blocker; return their start order."""
    started: list[int] = []
    release = asyncio.Event()

    async def blocker() -> None:
        await release.wait()

    async def record(index: int) -> int:
        started.append(index)
        return index

    async with AsyncTaskQueue(workers, retry=NO_RETRY) as queue:
        blockers = [await queue.submit(blocker) for _ in range(workers)]
        await until(lambda: queue.stats().running == workers)

        handles = [
            await queue.submit(record, index, priority=priority)
            for index, priority in enumerate(priorities)
        ]
        release.set()
        results = [await handle for handle in handles]
        await asyncio.gather(*blockers)

    assert results == list(range(len(priorities)))
    return started


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=40))
def test_start_order_is_stable_sort(priorities: list[int]) -> None:
    """With one worker, start order equals a stable sort by priority, highest first."""
    order = asyncio.run(_start_order(priorities))

    expected = sorted(range(len(priorities)), key=lambda i: -priorities[i])
    assert order == expected


async def test_higher_priority_runs_first() -> None:
    order = await _start_order([0, 5, -3, 5, 10])

    assert order == [4, 1, 3, 0, 2]


async def test_equal_priorities_run_fifo() -> None:
    order = await _start_order([7] * 20)

    assert order == list(range(20))


async def test_incomparable_arguments_are_never_compared() -> None:
    class Opaque:
        def __lt__(self, other: object) -> bool:
            raise AssertionError("task arguments must never be compared")

        __gt__ = __le__ = __ge__ = __lt__

    seen: list[object] = []

    async def take(value: object) -> None:
        seen.append(value)

    payloads = [Opaque(), {"a": 1}, Opaque(), {"b": 2}]
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        for payload in payloads:
            await queue.submit(take, payload, priority=1)

    assert seen == payloads


async def test_int_enum_priority_orders_by_value() -> None:
    class Level(enum.IntEnum):
        LOW = -1
        HIGH = 3

    order = await _start_order([Level.LOW, Level.HIGH, 0])

    assert order == [1, 2, 0]
