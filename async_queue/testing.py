"""Helpers for test suites: a test mode without backoff, and a virtual clock.

Test mode makes every retry delay zero, so a test suite that exercises
retries never sleeps through them::

    from async_queue import testing

    testing.set_testing(True)       # for the whole process, or:
    with testing.set_testing(True):
        await queue.submit(flaky)   # retried at once, as often as the policy says

``VirtualClockLoop`` is an event loop whose clock a test moves forward by hand.
The queue reads every time from its loop (backoff, delays, timeouts, the rate
limit and aging), so on this loop all of them run in virtual time::

    async def main(loop: testing.VirtualClockLoop) -> None:
        ...
        loop.advance(60)            # a 60 s backoff is over

    testing.run_virtual(main)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = (
    "VirtualClockLoop",
    "is_testing",
    "run_virtual",
    "set_testing",
)

T = TypeVar("T")


class _TestMode:
    # One flag for the process, read by the queue each time it schedules a
    # retry. It is not per event loop or per thread.
    enabled = False


class set_testing(contextlib.AbstractContextManager[None]):
    """Turn test mode on or off for the whole process.

    In test mode every retry waits zero seconds: backoff, jitter and
    ``RetryAfter`` delays are skipped, and the policy's random source is not
    used, so the number and order of retries stay deterministic. Retry counts
    and filters still apply.

    The call takes effect at once. Used as a context manager, it also restores
    the previous setting on exit. The class is named like a function because
    it is called like one.
    """

    def __init__(self, enabled: bool) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {enabled!r}")

        self._previous = _TestMode.enabled
        _TestMode.enabled = enabled

    def __exit__(self, *exc_info: object) -> None:
        _TestMode.enabled = self._previous


def is_testing() -> bool:
    """Return whether test mode is on."""
    return _TestMode.enabled


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock moves only when ``advance()`` is called.

    ``time()`` starts at the real monotonic time of the loop's creation and
    then stands still: however long a callback takes, virtual times stay
    exact. ``advance()`` makes every timer due within the jump fire on the
    next loop iteration. A coroutine that awaits a timer nobody advances to
    waits until the test advances the clock.

    asyncio's debug mode times callbacks with the loop's clock, so it would
    report each callback that calls ``advance()`` as slow; this loop turns
    that report off.
    """

    def __init__(self) -> None:
        super().__init__()
        self._start = time.monotonic()
        self.offset = 0.0
        """Virtual seconds advanced so far."""
        self.slow_callback_duration = math.inf

    def time(self) -> float:
        return self._start + self.offset

    def advance(self, seconds: float) -> None:
        """Move the loop clock forward by ``seconds``."""
        from ._checks import check_seconds

        checked = check_seconds("seconds", seconds)
        assert checked is not None
        self.offset += checked


def run_virtual(main: Callable[[VirtualClockLoop], Awaitable[T]]) -> T:
    """Run ``main(loop)`` to completion on a new ``VirtualClockLoop``."""

    async def wrapper() -> T:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        return await main(loop)

    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(wrapper())
