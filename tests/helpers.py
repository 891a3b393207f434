"""Test helpers that wait on events or count loop iterations, never seconds."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from types import TracebackType


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
