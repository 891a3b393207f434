"""Type checks of the public API, run by ``mypy --strict`` in scripts/test.sh.

Lines marked ``type: ignore[...]`` must stay errors: mypy's strict mode reports
an unused ignore, so this file fails the check if one of them starts passing.
"""

from __future__ import annotations

from typing import assert_type

from async_queue import (
    AsyncTaskQueue,
    Hook,
    Overflow,
    RetryPolicy,
    Schedule,
    TaskEvent,
    TaskHandle,
    bind,
)


async def fetch(url: str, *, timeout: float = 1.0, priority: str = "") -> bytes:
    return url.encode()


async def add(a: int, b: int) -> int:
    return a + b


async def usage(queue: AsyncTaskQueue) -> None:
    handle = await queue.submit(add, 1, 2, priority=5)
    assert_type(handle, TaskHandle[int])
    assert_type(await handle, int)

    bound = await queue.submit(bind(fetch, "u", timeout=2.0, priority="x"), timeout=9)
    assert_type(bound, TaskHandle[bytes])

    single = await queue.submit(add(1, 2), retry=RetryPolicy(max_retries=0))
    assert_type(single, TaskHandle[int])

    nowait = queue.submit_nowait(fetch, "u")
    assert_type(nowait, TaskHandle[bytes])

    assert_type(handle.id, int | str)
    queue.cancel(("a", 1))  # type: ignore[arg-type]

    schedule = queue.every(60, add, 1, 2, priority=1)
    assert_type(schedule, Schedule[int])
    assert_type(schedule.last, TaskHandle[int] | None)
    queue.every(60, add, 1)  # type: ignore[arg-type]
    queue.every(60, add(1, 2))  # type: ignore[arg-type]

    await queue.submit(add, 1, "2")  # type: ignore[arg-type]
    await queue.submit(add, 1)  # type: ignore[arg-type]
    bind(fetch, "u", timeout="slow")  # type: ignore[arg-type]
    bind(fetch, "u", retries=3)  # type: ignore[call-arg]


class OnlyFailures:
    """A hook that is no Hook subclass and defines a single event."""

    def on_failed(self, event: TaskEvent) -> None:
        print(event.task_id)


class CountStarts(Hook):
    def on_started(self, event: TaskEvent) -> None:
        print(event.attempts)


def hooks_usage() -> None:
    AsyncTaskQueue(hooks=[OnlyFailures(), CountStarts()])
    AsyncTaskQueue(hooks=(CountStarts(),))
    AsyncTaskQueue(hooks=[object()])  # type: ignore[list-item]
    AsyncTaskQueue(max_pending=8, overflow="drop_lowest")
    AsyncTaskQueue(max_pending=8, overflow=Overflow.RAISE)
    AsyncTaskQueue(max_pending=8, overflow="drop_oldest")  # type: ignore[arg-type]
