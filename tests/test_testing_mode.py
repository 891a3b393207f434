"""Test mode: retries without backoff, deterministic and restorable."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from async_queue import AsyncTaskQueue, RetryAfter, RetryPolicy, testing


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ValueError(f"failure {self.calls}")
        return "ok"


async def test_test_mode_skips_backoff() -> None:
    """An hour of backoff passes at once: the test would time out otherwise."""
    flaky = Flaky(failures=3)
    rng = random.Random(5)
    state = rng.getstate()
    policy = RetryPolicy(max_retries=3, base_delay=3600, max_delay=3600, rng=rng)

    with testing.set_testing(True):
        assert testing.is_testing()
        async with AsyncTaskQueue(1, retry=policy) as queue:
            assert await (await queue.submit(flaky)) == "ok"

    assert not testing.is_testing()
    assert flaky.calls == 4
    assert rng.getstate() == state


async def test_test_mode_skips_retry_after() -> None:
    calls = 0

    async def throttled() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RetryAfter(3600)
        return "ok"

    with testing.set_testing(True):
        async with AsyncTaskQueue(1, retry=RetryPolicy(max_retries=1)) as queue:
            assert await (await queue.submit(throttled)) == "ok"


async def test_test_mode_keeps_retry_limits() -> None:
    flaky = Flaky(failures=10)
    with testing.set_testing(True):
        async with AsyncTaskQueue(1, retry=RetryPolicy(max_retries=2)) as queue:
            with pytest.raises(ValueError, match="failure 3"):
                await (await queue.submit(flaky))

    assert flaky.calls == 3


def test_set_testing_call_and_restore() -> None:
    assert not testing.is_testing()
    testing.set_testing(True)
    try:
        assert testing.is_testing()
        with testing.set_testing(False):
            assert not testing.is_testing()
        assert testing.is_testing()
    finally:
        testing.set_testing(False)

    assert not testing.is_testing()


def test_set_testing_rejects_non_bool() -> None:
    with pytest.raises(TypeError, match="'yes'"):
        testing.set_testing("yes")  # type: ignore[arg-type]


def test_virtual_clock_stands_still_between_advances() -> None:
    """Only advance() moves the clock, however long the loop's work takes."""

    async def main(loop: testing.VirtualClockLoop) -> list[float]:
        start = loop.time()
        readings = []
        for _ in range(3):
            # Real time passes here: a thread runs and the loop waits for it.
            await asyncio.to_thread(sum, range(100_000))
            readings.append(loop.time() - start)

        loop.advance(1.5)
        readings.append(loop.time() - start)
        return readings

    assert testing.run_virtual(main) == [0.0, 0.0, 0.0, 1.5]


def test_virtual_clock_fires_timers_only_when_due() -> None:
    """A timer fires on the first iteration after the clock reaches it."""

    async def main(loop: testing.VirtualClockLoop) -> list[str]:
        fired: list[str] = []
        loop.call_later(2, fired.append, "two")
        loop.advance(1.999)
        for _ in range(5):
            await asyncio.sleep(0)
        fired.append("checked")
        loop.advance(0.001)
        for _ in range(5):
            await asyncio.sleep(0)
        return fired

    assert testing.run_virtual(main) == ["checked", "two"]


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf])
def test_virtual_clock_rejects_bad_advance(seconds: float) -> None:
    """advance() rejects a negative, NaN or infinite step and keeps the clock."""
    loop = testing.VirtualClockLoop()
    try:
        before = loop.time()
        with pytest.raises(ValueError, match="finite number of seconds >= 0"):
            loop.advance(seconds)
        assert loop.time() == before
        assert loop.slow_callback_duration == math.inf
    finally:
        loop.close()


def test_virtual_clock_jumps_to_next_timer_when_idle() -> None:
    """An idle loop jumps straight to its next timer, at the exact virtual time."""

    async def main(loop: testing.VirtualClockLoop) -> float:
        start = loop.time()
        await asyncio.sleep(3600)
        return round(loop.time() - start, 6)

    assert testing.run_virtual(main) == 3600.0


@pytest.mark.parametrize("autojump", [-0.1, math.nan])
def test_virtual_clock_rejects_bad_autojump(autojump: float) -> None:
    """A negative or NaN autojump is rejected before any loop is made."""
    with pytest.raises(ValueError, match="autojump must be"):
        testing.VirtualClockLoop(autojump=autojump)
