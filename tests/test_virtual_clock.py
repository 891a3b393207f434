"""The virtual clock of async_queue.testing: advance() and the offset setter,
timers at large loop times, the jump to the next timer, and calls run in
threads and processes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import multiprocessing
import selectors
import threading
import time
from typing import Any

import pytest
from blockbuster import BlockBuster
from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import AsyncTaskQueue, RetryPolicy, threaded
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import WrappedSelector, settle

NO_RETRY = RetryPolicy(max_retries=0)

# From 2**24 s (194 days) on, floats are more than 2e-9 apart, so asyncio's
# "due before time() + clock resolution" test (resolution 1e-9 s on Linux)
# treats a timer due exactly now as not yet due.
LONG_UPTIME = 2.0**24 + 1000


# advance() and the offset setter


@pytest.mark.parametrize(
    ("seconds", "error"),
    [
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (-1, ValueError),
        ("1", TypeError),
        (None, TypeError),
    ],
)
def test_virtual_clock_rejects_bad_advance(
    seconds: object, error: type[Exception]
) -> None:
    """advance() rejects what would leave the clock NaN, infinite or broken."""
    loop = VirtualClockLoop()
    try:
        loop.advance(1.5)
        before = loop.offset
        with pytest.raises(error, match="seconds must be"):
            loop.advance(seconds)  # type: ignore[arg-type]

        assert loop.offset == before
        assert loop.offset == 1.5
    finally:
        loop.close()


@pytest.mark.parametrize("offset", [float("nan"), float("inf"), 1.0, -1.0])
def test_offset_setter_rejects_bad_value(offset: float) -> None:
    """VirtualClockLoop.offset rejects a value that breaks the clock.

    NaN, infinity and offsets below the current one raise ValueError, as
    advance() does, and the offset stays. A NaN offset would fire a timer
    due in an hour at once, and a smaller one would move time() backwards,
    which asyncio's timers and the queue's rate limit assume never happens.
    """
    loop = VirtualClockLoop(autojump=None)
    try:
        loop.advance(5)
        with pytest.raises(ValueError, match="offset"):
            loop.offset = offset

        assert loop.offset == 5
    finally:
        loop.close()


# Timers at large loop times


def test_timer_fires_after_clock_passes_194_days() -> None:
    """A timer due exactly at the virtual time fires with the clock past 2**24 s.

    There, time() plus a clock resolution of 1e-9 s is time() itself. Unless
    the loop widens its resolution, it treats the timer as due in zero seconds
    but not yet due and spins in place: with autojump on, a plain
    ``await asyncio.sleep(1)`` would hang at full CPU.
    """

    async def main(loop: VirtualClockLoop) -> list[float]:
        loop.advance(2.0**24)
        start = loop.time()
        fired: list[float] = []
        loop.call_later(1, lambda: fired.append(loop.time() - start))
        loop.advance(1)
        await settle()
        return fired

    assert run_virtual(main, autojump=None) == [1.0]


@settings(max_examples=60, deadline=None)
@given(
    offset=st.integers(min_value=0, max_value=2**45),
    delay=st.integers(min_value=1, max_value=10_000),
)
def test_timer_fires_at_any_virtual_time(offset: int, delay: int) -> None:
    """Whole-second timers fire once the clock reaches them, at any offset."""

    async def main(loop: VirtualClockLoop) -> bool:
        loop.advance(offset)
        fired = asyncio.Event()
        loop.call_later(delay, fired.set)
        loop.advance(delay)
        await settle()
        return fired.is_set()

    assert run_virtual(main, autojump=None)


def test_retry_schedule_on_long_uptime(monkeypatch: pytest.MonkeyPatch) -> None:
    """The testing guide's retry schedule keeps its times after 194 days of uptime.

    The clock starts at the machine's monotonic time. From 2**24 s of uptime
    on, a backoff timer due at exactly the advanced time must fire on that
    advance: left pending until the next one, the attempts would come one
    second late, and an ``await`` on a timer that only autojump can reach
    would never return.
    """
    with monkeypatch.context() as patch:
        patch.setattr(time, "monotonic", lambda: LONG_UPTIME)
        loop = VirtualClockLoop(autojump=None)

    async def main() -> list[float]:
        start = loop.time()
        attempts: list[float] = []

        async def flaky() -> str:
            attempts.append(loop.time() - start)
            if len(attempts) < 4:
                raise ConnectionError("refused")
            return "ok"

        policy = RetryPolicy(max_retries=3, base_delay=1, multiplier=2, jitter="none")
        queue = AsyncTaskQueue(retry=policy)
        await queue.start()
        handle = await queue.submit(flaky)
        for _ in range(8):
            await settle()
            loop.advance(1)
        await settle()
        handle.cancel()
        await queue.stop()
        return attempts

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        assert runner.run(main()) == [0.0, 1.0, 3.0, 7.0]


def test_virtual_times_exact_at_any_uptime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole-second due times stay exact after any machine uptime.

    The virtual clock starts at the whole seconds of ``time.monotonic()``.
    From a fractional start just below a power of two, 32753.3 + 20 would
    round to the next float spacing, so a run due 20 s after the start would
    run 20.000000000003638 s after it.
    """
    with monkeypatch.context() as patch:
        patch.setattr(time, "monotonic", lambda: 2.0**15 - 14.7)
        loop = VirtualClockLoop()

    async def main() -> list[float]:
        start = loop.time()
        times: list[float] = []

        async def record() -> None:
            times.append(loop.time() - start)

        async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
            queue.every(10, record)
            await asyncio.sleep(35)

        return times

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        assert runner.run(main()) == [10.0, 20.0, 30.0]


# The jump to the next timer


class _CountingSelector(WrappedSelector):
    """A selector that counts the selects that wait for I/O or a timer."""

    def __init__(self, inner: selectors.BaseSelector) -> None:
        super().__init__(inner)
        self.waits = 0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is not None and timeout > 0:
            self.waits += 1
        return self.inner.select(timeout)


def test_autojump_reaches_distant_timer_at_once() -> None:
    """autojump reaches a timer 30 days ahead in one idle wait.

    asyncio caps the time it passes to the selector at 24 hours. A jump by
    that capped time would make reaching a timer d seconds ahead cost about
    ``d / 86400 * autojump`` real seconds (a year: 18 s).
    """
    loop = VirtualClockLoop(autojump=0)
    # Each select with a timeout ends in one jump of the clock.
    counter = _CountingSelector(loop._selector)  # type: ignore[attr-defined]
    loop._selector = counter  # type: ignore[attr-defined]

    async def main() -> float:
        start = loop.time()
        await asyncio.sleep(30 * 86_400)
        return loop.time() - start

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        assert runner.run(main()) == 30 * 86_400

    assert counter.waits == 1


class _WakeAfterJump(WrappedSelector):
    """Wraps the loop's selector and resolves a future after the first jump.

    It replaces I/O that arrives once the clock has jumped, such as a peer
    that replies later than ``autojump``.
    """

    def __init__(self, loop: VirtualClockLoop, inner: selectors.BaseSelector) -> None:
        super().__init__(inner)
        self.loop = loop
        self.woken: asyncio.Future[None] | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        before = self.loop.offset
        events = self.inner.select(timeout)
        woken = self.woken
        if self.loop.offset != before and woken is not None and not woken.done():
            self.loop.call_soon(woken.set_result, None)
        return events


def test_autojump_to_infinite_sleep_keeps_clock_finite() -> None:
    """An idle loop whose only timer is sleep(math.inf) keeps its clock finite.

    The jump goes to the next timer past the 24-hour cap, except a timer due
    at infinity. A jump to that one would make time() return inf for good:
    every later timer would be due at inf, which asyncio never treats as
    due, so a plain ``await asyncio.sleep(1)`` after it would hang.
    """
    loop = VirtualClockLoop(autojump=0)
    selector = _WakeAfterJump(loop, loop._selector)  # type: ignore[attr-defined]
    loop._selector = selector  # type: ignore[attr-defined]

    async def main() -> float:
        forever = asyncio.create_task(asyncio.sleep(math.inf))
        selector.woken = loop.create_future()
        await selector.woken
        now = loop.time()
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        return now

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        now = runner.run(main())

    assert math.isfinite(now)


# Calls run in threads and processes


def test_virtual_clock_waits_for_threads() -> None:
    # The thread is busy for 100 times the autojump, so a loop that counts
    # an executor thread as idleness jumps the clock to the task's deadline.
    def blocking() -> str:
        threading.Event().wait(0.1)
        return "done"

    async def main(loop: VirtualClockLoop) -> tuple[str, float]:
        start = loop.time()
        async with AsyncTaskQueue(retry=NO_RETRY, timeout=5.0) as queue:
            handle = await queue.submit(threaded(blocking))
            result = await handle

        return result, loop.time() - start

    result, elapsed = run_virtual(main, autojump=0.001)
    assert result == "done"
    assert elapsed == 0.0


def test_virtual_loop_closes_with_thread_running() -> None:
    # On Python 3.13, asyncio.Runner waits up to 300 s on the loop clock for
    # the default executor's threads as it closes. A jump of the clock ends
    # that wait at once, with a warning that the threads did not finish.
    release = threading.Event()

    async def main(loop: VirtualClockLoop) -> None:
        loop.run_in_executor(None, release.wait, 0.1)

    run_virtual(main, autojump=0.001)
    assert release.is_set() is False


def test_virtual_clock_runs_process_pool_calls(blockbuster: BlockBuster) -> None:
    # A process pool pickles the function it runs, so the loop must pass it
    # on as it is. Its submit() writes to a pipe, by design, so the detector
    # of blocking calls is off here.
    blockbuster.deactivate()
    context = multiprocessing.get_context("spawn")
    executor = concurrent.futures.ProcessPoolExecutor(1, mp_context=context)

    async def main(loop: VirtualClockLoop) -> int:
        return await loop.run_in_executor(executor, abs, -3)

    try:
        assert run_virtual(main) == 3
    finally:
        executor.shutdown()


def test_virtual_clock_jumps_after_cancelled_thread_call() -> None:
    # A call that the executor never starts does not keep the clock still.
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    async def main(loop: VirtualClockLoop) -> float:
        busy = threading.Event()
        first = loop.run_in_executor(executor, busy.wait, 0.1)
        second = loop.run_in_executor(executor, busy.wait, 0.1)
        second.cancel()
        busy.set()
        await first

        start = loop.time()
        await asyncio.sleep(30)
        return loop.time() - start

    try:
        assert run_virtual(main, autojump=0.001) == 30.0
    finally:
        executor.shutdown()


def test_virtual_clock_debug_rejects_coroutine_in_executor() -> None:
    # As asyncio's own loops do in debug mode.
    async def job() -> None:
        pass

    async def main(loop: VirtualClockLoop) -> None:
        loop.set_debug(True)
        with pytest.raises(TypeError, match="run_in_executor"):
            await loop.run_in_executor(None, job)  # type: ignore[arg-type]

    run_virtual(main)
