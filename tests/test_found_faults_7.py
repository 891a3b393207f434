"""Regression tests for faults found by probing the virtual clock, dead
letters and the demo command line."""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from async_queue import (
    AsyncTaskQueue,
    DeadLetter,
    Hook,
    RetryPolicy,
    TaskEvent,
    TaskId,
)
from async_queue.__main__ import main as cli_main
from async_queue._demo_server import DemoClient, DemoServer, Outcome, decide
from async_queue.prometheus import PrometheusHook
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import WrappedSelector, until

NO_RETRY = RetryPolicy(max_retries=0)

# From 2**24 s (194 days) on, floats are more than 2e-9 apart, so asyncio's
# "due before time() + clock resolution" test (resolution 1e-9 s on Linux)
# treats a timer due exactly now as not yet due.
LONG_UPTIME = 2.0**24 + 1000


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


# The virtual clock at large loop times


def test_timer_fires_after_clock_passes_194_days() -> None:
    """A timer due exactly at the virtual time never fired.

    With the clock past 2**24 s the loop saw the timer as due in zero
    seconds but not yet due, so it spun in place: with autojump on, a plain
    ``await asyncio.sleep(1)`` hung at full CPU.
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
    """The testing guide's retry schedule ran late on a machine up 194 days.

    The clock starts at the machine's monotonic time. From 2**24 s of uptime
    on, a backoff timer due at exactly the advanced time stayed pending until
    the next advance, so attempts came one second late, and an ``await`` on
    a timer that only autojump could reach never returned.
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
    """A timer 30 days ahead took 30 idle waits of ``autojump`` to reach.

    asyncio caps the time it passes to the selector at 24 hours, and the
    clock jumped by that capped time, so reaching a timer d seconds ahead
    cost about ``d / 86400 * autojump`` real seconds (a year: 18 s).
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


# Dead letters


async def fail(label: str, gate: asyncio.Event | None = None) -> None:
    if gate is not None:
        await gate.wait()
    raise ValueError(label)


def test_cancelled_requeue_keeps_newer_letters() -> None:
    """A requeue that gave up evicted a newer dead letter than its own.

    ``requeue()`` takes the letter out before it waits for room, and puts it
    back as the newest if the wait ends without a task. A task that failed
    meanwhile filled the store, so the letter put back evicted a newer one,
    against "oldest evicted first".
    """

    async def main(loop: VirtualClockLoop) -> None:
        hold = asyncio.Event()
        gate = asyncio.Event()

        async def block() -> None:
            await hold.wait()

        queue = AsyncTaskQueue(2, retry=NO_RETRY, max_dead_letters=2, max_pending=1)
        await queue.start()
        first = await queue.submit(fail, "first")
        second = await queue.submit(fail, "second")
        await queue.join()

        await queue.submit(block)
        third = await queue.submit(fail, "third", gate)
        await settle()
        queue.pause()
        await queue.submit(block)  # pending, so the queue is full

        requeue = asyncio.create_task(queue.requeue(first.id))
        await settle()
        gate.set()
        with contextlib.suppress(ValueError):
            await third

        requeue.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await requeue

        letters = [letter.task_id for letter in queue.dead_letters()]
        hold.set()
        await queue.stop()
        # The first letter went back before the others, so it was evicted.
        assert letters == [second.id, third.id]

    run_virtual(main)


# Callbacks defined with async def


class AsyncFailedHook(Hook):
    def __init__(self) -> None:
        self.failed: list[TaskId] = []

    async def on_failed(self, event: TaskEvent) -> None:  # type: ignore[override]
        self.failed.append(event.task_id)


def test_async_callbacks_rejected_with_advice() -> None:
    async def notify(letter: DeadLetter) -> None:
        pass

    with pytest.raises(TypeError, match=r"on_dead_letter .* is a coroutine function"):
        AsyncTaskQueue(on_dead_letter=notify)
    with pytest.raises(TypeError, match=r"defines on_failed with 'async def'"):
        AsyncTaskQueue(hooks=[AsyncFailedHook()])


# Metrics hooks


def test_failed_prometheus_hook_registers_nothing() -> None:
    """A PrometheusHook that failed to register left six families behind.

    The hook registers its seven metric families one at a time. When the
    last name was taken, the first six stayed in the registry, and a second
    attempt then failed on the first name, which the hook itself had taken.
    """
    registry = CollectorRegistry()
    Histogram(
        "async_queue_task_run_seconds", "Taken by the application.", registry=registry
    )
    before = {family.name for family in registry.collect()}

    with pytest.raises(ValueError, match="async_queue_task_run_seconds"):
        PrometheusHook(registry)

    assert {family.name for family in registry.collect()} == before
    with pytest.raises(ValueError, match="async_queue_task_run_seconds"):
        PrometheusHook(registry)


# The root queue.py facade and its stub

ROOT = Path(__file__).resolve().parent.parent

# Code that the standard library's stubs accept: at run time queue.Empty is
# _queue.Empty and queue.SimpleQueue is _queue.SimpleQueue.
C_QUEUE_USAGE = """
import _queue
import queue


def takes_empty(error: _queue.Empty) -> None: ...


def takes_simple(items: _queue.SimpleQueue[int]) -> None: ...


takes_empty(queue.Empty())
takes_simple(queue.SimpleQueue[int]())
simple: queue.SimpleQueue[int] = _queue.SimpleQueue()
"""


def test_stub_types_empty_as_c_queue_type() -> None:
    """queue.pyi declared Empty and SimpleQueue as classes of its own.

    So mypy, run in the project root, rejected code that mixes them with
    the _queue types they are at run time, which it accepts elsewhere.
    """
    completed = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "-c", C_QUEUE_USAGE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout


# The demo command line


def test_demo_rejects_huge_count(capsys: pytest.CaptureFixture[str]) -> None:
    """--count 2**63 ended in an OverflowError traceback and exit status 1.

    Status 1 is also the demo's "a task was lost" status.
    """
    with pytest.raises(SystemExit) as exited:
        cli_main(["demo", "--count", str(2**63), "--progress-interval", "0"])

    assert exited.value.code == 2
    assert "--count" in capsys.readouterr().err


def test_demo_server_close_ends_slow_responses() -> None:
    """Closing the demo server waited for every response delay to end.

    The connection tasks sleeping out a latency do not notice that their
    connection closed, so with ``--latency 20`` the demo printed its summary
    and then took half a minute more to exit, and with ``--latency 1e308``
    it never exited.
    """
    latency = 1_000_000.0
    decision = decide(
        1,
        1,
        1,
        failure_rate=0,
        hang_rate=0,
        mean_latency=latency,
        retry_after_share=0,
        reject_share=0,
    )
    assert decision.outcome is Outcome.OK
    assert decision.latency > 3600

    async def main(loop: VirtualClockLoop) -> bool:
        server = DemoServer(seed=1, failure_rate=0, hang_rate=0, mean_latency=latency)
        await server.start()
        client = DemoClient(server.port, max_idle=1)
        request = asyncio.create_task(client.request(1, 1))
        await until(lambda: server.requests == 1)

        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
        client.close()

        closing = asyncio.create_task(server.close())
        done, _ = await asyncio.wait({closing}, timeout=60)
        if not done:
            loop.advance(decision.latency)  # let the response delay end
            await closing
        return bool(done)

    assert run_virtual(main)


def test_demo_server_close_reports_no_error() -> None:
    """Ending a slow response by cancelling its task made asyncio's server
    (Python 3.11) report "Exception in callback" with a CancelledError for
    each connection, on every demo run."""
    errors: list[dict[str, Any]] = []

    async def main(loop: VirtualClockLoop) -> None:
        loop.set_exception_handler(lambda _, context: errors.append(context))
        server = DemoServer(seed=1, failure_rate=0, hang_rate=0, mean_latency=1e6)
        await server.start()
        client = DemoClient(server.port, max_idle=1)
        request = asyncio.create_task(client.request(1, 1))
        await until(lambda: server.requests == 1)

        await server.close()
        with contextlib.suppress(ConnectionError):
            await request
        client.close()
        await settle()

    run_virtual(main, autojump=None)

    assert errors == []
