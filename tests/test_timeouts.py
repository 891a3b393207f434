"""Per-task timeouts: cancelled coroutine, TimeoutError, retries, defaults, and
the watchdog on loops that run timers early."""

from __future__ import annotations

import asyncio

import pytest

from async_queue import AsyncTaskQueue, RetryPolicy, TaskCancelledError, TaskState
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import settle, until

NO_RETRY = RetryPolicy(max_retries=0)


class Hanger:
    """A coroutine function that waits forever and records its cancellation."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0

    async def __call__(self) -> None:
        self.calls += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def test_timeout_fails_with_timeout_error() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        hanger = Hanger()
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            handle = await queue.submit(hanger, timeout=30)
            await until(lambda: hanger.calls == 1)
            loop.advance(29)
            for _ in range(20):
                await asyncio.sleep(0)
            assert handle.state is TaskState.RUNNING

            loop.advance(1)
            with pytest.raises(TimeoutError, match="timed out after 30") as caught:
                await handle

        assert isinstance(caught.value.__cause__, asyncio.CancelledError)
        assert hanger.cancelled == 1
        assert handle.state is TaskState.FAILED

    run_virtual(main)


def test_timeout_is_retried_by_policy() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        hanger = Hanger()
        policy = RetryPolicy(max_retries=2, base_delay=0, jitter="none")
        async with AsyncTaskQueue(1, retry=policy) as queue:
            handle = await queue.submit(hanger, timeout=5)
            for attempt in (1, 2, 3):
                await until(lambda a=attempt: hanger.calls == a)
                loop.advance(5)

            with pytest.raises(TimeoutError):
                await handle

        assert handle.attempts == 3
        assert hanger.cancelled == 3
        assert queue.stats().retries == 2

    run_virtual(main)


def test_timeout_not_retried_when_filter_excludes_it() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        hanger = Hanger()
        policy = RetryPolicy(max_retries=3, base_delay=0, retry_on=ValueError)
        async with AsyncTaskQueue(1, retry=policy) as queue:
            handle = await queue.submit(hanger, timeout=1)
            await until(lambda: hanger.calls == 1)
            loop.advance(1)
            with pytest.raises(TimeoutError):
                await handle

        assert handle.attempts == 1

    run_virtual(main)


def test_cancel_is_told_apart_from_timeout() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        hanger = Hanger()
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            handle = await queue.submit(hanger, timeout=10)
            await until(lambda: hanger.calls == 1)
            assert handle.cancel()
            with pytest.raises(TaskCancelledError):
                await handle

        assert handle.state is TaskState.CANCELLED
        assert queue.stats().failed == 0

    run_virtual(main)


def test_queue_default_timeout_and_override() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        defaulted, disabled, longer = Hanger(), Hanger(), Hanger()
        async with AsyncTaskQueue(3, retry=NO_RETRY, timeout=2) as queue:
            first = await queue.submit(defaulted)
            second = await queue.submit(disabled, timeout=None)
            third = await queue.submit(longer, timeout=50)
            await until(lambda: queue.stats().running == 3)

            loop.advance(2)
            with pytest.raises(TimeoutError):
                await first
            assert second.state is TaskState.RUNNING
            assert third.state is TaskState.RUNNING

            loop.advance(48)
            with pytest.raises(TimeoutError):
                await third
            assert second.state is TaskState.RUNNING
            second.cancel()

    run_virtual(main)


def test_swallowed_timeout_still_times_out() -> None:
    """A coroutine that suppresses the timeout's CancelledError still fails."""

    async def main(loop: VirtualClockLoop) -> None:
        async def stubborn() -> str:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return "ignored the cancel"
            return "unreachable"

        async def after() -> str:
            return "next"

        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            handle = await queue.submit(stubborn, timeout=1)
            await until(lambda: queue.stats().running == 1)
            loop.advance(1)
            with pytest.raises(TimeoutError):
                await handle
            assert await (await queue.submit(after)) == "next"

    run_virtual(main)


async def test_many_timeouts_share_one_watchdog() -> None:
    """Tasks on every worker time out, each exactly once, with real timers."""
    hanger = Hanger()
    async with AsyncTaskQueue(8, retry=NO_RETRY) as queue:
        handles = [
            await queue.submit(hanger, timeout=0.01 * (i + 1)) for i in range(16)
        ]
        outcomes = await asyncio.gather(*handles, return_exceptions=True)

    assert all(isinstance(outcome, TimeoutError) for outcome in outcomes)
    assert hanger.calls == 16
    assert hanger.cancelled == 16


def test_timer_slack_by_loop() -> None:
    from async_queue._base import _CLOCK_RESOLUTION
    from async_queue.core import _timer_slack

    uvloop = pytest.importorskip("uvloop")
    asyncio_loop = asyncio.new_event_loop()
    uv_loop = uvloop.new_event_loop()
    try:
        assert _timer_slack(asyncio_loop) == _CLOCK_RESOLUTION
        assert _timer_slack(uv_loop) == 0.0005
    finally:
        asyncio_loop.close()
        uv_loop.close()


def test_watchdog_deadline_within_slack() -> None:
    """On a loop that runs timers a fraction of a millisecond early, the
    watchdog does not set itself again for a deadline that close: it times the
    task out."""

    async def main(loop: VirtualClockLoop) -> None:
        async def hang() -> None:
            await asyncio.Event().wait()

        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            queue._slack = 0.0005  # as on uvloop
            handle = queue.submit_nowait(hang, timeout=1.0)
            await settle()

            loop.advance(0.9996)  # the watchdog runs 0.4 ms early
            queue._on_watchdog()
            with pytest.raises(TimeoutError):
                await handle

    run_virtual(main, autojump=None)
