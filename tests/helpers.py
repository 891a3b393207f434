"""Test helpers that wait on events or count loop iterations, never seconds."""

from __future__ import annotations

import asyncio
import selectors
import sys
import traceback
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import pytest

from async_queue import AsyncTaskQueue, QueueStats, TaskHandle, TaskState


async def until(condition: Callable[[], bool], max_iterations: int = 10_000) -> None:
    """Yield to the event loop until ``condition()`` holds.

    Fails after ``max_iterations`` loop iterations, so a broken condition ends
    the test instead of hanging it.
    """
    for _ in range(max_iterations):
        if condition():
            return

        await asyncio.sleep(0)

    raise AssertionError(f"condition not reached in {max_iterations} loop iterations")


# Marks a test that sets asyncio.eager_task_factory, which Python 3.12 added.
EAGER = pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks need 3.12")


async def settle(steps: int = 20) -> None:
    """Let the loop run callbacks and woken coroutines for a few iterations."""
    for _ in range(steps):
        await asyncio.sleep(0)


async def one() -> int:
    """Return 1 at once: a task that always succeeds."""
    return 1


async def fail() -> None:
    """Raise ``ValueError("boom")`` at once: a task that always fails."""
    raise ValueError("boom")


class Gate:
    """A coroutine function that waits for ``release`` and counts its calls."""

    def __init__(self, result: object = "done") -> None:
        self.result = result
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0
        self.cancelled = 0

    async def __call__(self) -> object:
        self.calls += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

        return self.result


def frame_names(tb: TracebackType | None) -> list[str]:
    """Return the function name of each entry of a traceback, outermost first."""
    return [frame.name for frame in traceback.extract_tb(tb)]


def counted_tasks(stats: QueueStats) -> int:
    """Return the tasks that ``stats`` counts in some state."""
    return (
        stats.pending
        + stats.delayed
        + stats.waiting_retry
        + stats.running
        + stats.succeeded
        + stats.failed
        + stats.cancelled
    )


def assert_state_counts(stats: QueueStats, states: Sequence[TaskState]) -> None:
    """Assert that each state count of ``stats`` matches ``states``, one per task."""
    assert stats.submitted == len(states)
    assert stats.pending == states.count(TaskState.PENDING)
    assert stats.delayed == states.count(TaskState.DELAYED)
    assert stats.waiting_retry == states.count(TaskState.WAITING_RETRY)
    assert stats.running == states.count(TaskState.RUNNING)
    assert stats.succeeded == states.count(TaskState.SUCCEEDED)
    assert stats.failed == states.count(TaskState.FAILED)
    assert stats.cancelled == states.count(TaskState.CANCELLED)


def assert_failed_unretried(
    queue: AsyncTaskQueue, handle: TaskHandle[Any], error: type[BaseException]
) -> None:
    """Check that ``handle`` failed with ``error`` on its one attempt."""
    assert handle.state is TaskState.FAILED
    assert handle.attempts == 1
    assert isinstance(handle.exception(), error)
    assert queue.stats().waiting_retry == 0
    assert queue.stats().retries == 0


class WrappedSelector(selectors.BaseSelector):
    """A selector that passes every call to ``inner``; subclasses add to ``select``."""

    def __init__(self, inner: selectors.BaseSelector) -> None:
        self.inner = inner

    def select(self, timeout: float | None = None) -> list[Any]:
        return self.inner.select(timeout)

    def register(self, fileobj: Any, events: int, data: Any = None) -> Any:
        return self.inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> Any:
        return self.inner.unregister(fileobj)

    def get_map(self) -> Any:
        return self.inner.get_map()

    def close(self) -> None:
        self.inner.close()
