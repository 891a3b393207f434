"""Small waiting helpers for tests: they count loop iterations, never seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


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
