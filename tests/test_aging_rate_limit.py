"""Priority aging and the start rate limit."""

from __future__ import annotations

import asyncio
import sys
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import AsyncTaskQueue, RetryPolicy, TaskState
from async_queue.containers import AgingHeap
from async_queue.models import TaskHandle, TaskSettings, new_handle
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import settle, until

NO_RETRY = RetryPolicy(max_retries=0)
SETTINGS = TaskSettings(None, None, NO_RETRY)


def make_handle(priority: int, seq: int) -> TaskHandle[None]:
    return new_handle(SETTINGS, seq, print, (), priority)


def exact_key(
    rate: float, priority: int, pushed_at: float, seq: int
) -> tuple[Fraction, int]:
    """Return the sort key of a push in pop order: exact, with no rounding."""
    return (-(priority - Fraction(rate) * Fraction(pushed_at)), seq)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0, max_value=100),
    pushes=st.lists(
        st.tuples(st.integers(-50, 50), st.floats(min_value=0, max_value=10)),
        max_size=30,
    ),
    later=st.floats(min_value=0, max_value=100),
)
def test_aging_order_matches_definition(
    rate: float, pushes: list[tuple[int, float]], later: float
) -> None:
    """Pop order is by p + rate * (now - pushed_at), highest first, then FIFO."""
    now = 0.0
    heap = AgingHeap(rate, lambda: now)
    pushed: list[tuple[int, float, int]] = []
    for seq, (priority, step) in enumerate(pushes):
        now += step
        heap.push(make_handle(priority, seq))
        pushed.append((priority, now, seq))

    now += later
    expected = sorted(pushed, key=lambda e: exact_key(rate, *e))
    order = []
    while (handle := heap.pop()) is not None:
        order.append(handle.id)

    assert order == [seq for _, _, seq in expected]


@pytest.mark.parametrize(("aging_rate", "max_index"), [(2.0, 7), (None, None)])
def test_aging_bounds_starvation(
    aging_rate: float | None, max_index: int | None
) -> None:
    """Under a steady flood of priority 10, a priority 0 task starts in time."""

    async def main(loop: VirtualClockLoop) -> None:
        started: list[str] = []
        releases: list[asyncio.Future[None]] = []

        async def unit(name: str) -> None:
            started.append(name)
            release = loop.create_future()
            releases.append(release)
            await release

        async with AsyncTaskQueue(1, retry=NO_RETRY, aging_rate=aging_rate) as queue:
            await queue.submit(unit, "high", priority=10)
            await until(lambda: len(started) == 1)
            await queue.submit(unit, "low", priority=0)
            # Each task runs one second, and a new high task arrives each second.
            for _ in range(20):
                await queue.submit(unit, "high", priority=10)
                loop.advance(1)
                count = len(started)
                releases[-1].set_result(None)
                await until(lambda c=count: len(started) == c + 1)
                if started[-1] == "low":
                    break

            await queue.stop("cancel")

        if max_index is None:
            # Without aging the flood starves the low task for good.
            assert "low" not in started
            return

        # The low task gains 2 points per second, so it passes every high task
        # submitted 5 s or more after it and starts within 6 task durations.
        assert "low" in started
        assert started.index("low") <= max_index

    run_virtual(main)


def test_rate_limit_spaces_starts() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        starts: list[float] = []

        async def job() -> None:
            starts.append(loop.time())

        async with AsyncTaskQueue(
            4, retry=NO_RETRY, rate_limit=2.0, rate_burst=2
        ) as queue:
            base = loop.time()
            handles = [await queue.submit(job) for _ in range(6)]
            await until(lambda: len(starts) == 2)
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(starts) == 2

            for expected in (3, 4, 5, 6):
                loop.advance(0.5)
                await until(lambda e=expected: len(starts) == e)

            await asyncio.gather(*handles)

        offsets = [round(t - base, 6) for t in starts]
        # The virtual loop also moves with wall time, by microseconds here.
        assert offsets == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5, 2.0], abs=0.05)

    run_virtual(main)


async def test_rate_limited_idle_queue_keeps_no_timer() -> None:
    loop = asyncio.get_running_loop()

    async def job() -> int:
        return 1

    async with AsyncTaskQueue(2, retry=NO_RETRY, rate_limit=1000.0) as queue:
        for _ in range(5):
            assert await (await queue.submit(job)) == 1

        await until(lambda: queue._token_timer is None)
        scheduled = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        assert scheduled == []


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"aging_rate": -1}, "aging_rate"),
        ({"aging_rate": float("nan")}, "aging_rate"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"rate_limit": float("inf")}, "rate_limit"),
        ({"rate_limit": 1, "rate_burst": 0}, "rate_burst"),
        ({"rate_limit": 1, "rate_burst": 1.5}, "rate_burst"),
    ],
)
def test_invalid_aging_and_rate(options: dict[str, object], text: str) -> None:
    with pytest.raises((TypeError, ValueError), match=text):
        AsyncTaskQueue(**options)  # type: ignore[arg-type]


def test_rate_limit_token_timer_on_exact_clock() -> None:
    """A token timer that fires a clock tick early still starts the next task.

    On a clock that only advance() moves, a token computed a tick short used
    to reschedule its timer at the same instant, over and over.
    """

    async def main(loop: VirtualClockLoop) -> list[float]:
        begin = loop.time()
        starts: list[float] = []

        async def record() -> None:
            starts.append(round(loop.time() - begin, 6))

        async with AsyncTaskQueue(1, rate_limit=5, rate_burst=1) as queue:
            for _ in range(3):
                queue.submit_nowait(record)
            await until(lambda: len(starts) == 1)
            for count in (2, 3):
                loop.advance(0.2)
                await until(lambda count=count: len(starts) == count)

        return starts

    assert run_virtual(main, autojump=None) == [0.0, 0.2, 0.4]


def test_rate_limit_fills_every_worker() -> None:
    """Blocked starts resume at the rate limit on every idle worker, not one."""

    async def main(loop: VirtualClockLoop) -> None:
        gate = asyncio.Event()

        async def hold() -> None:
            await gate.wait()

        queue = AsyncTaskQueue(10, retry=NO_RETRY, rate_limit=100.0)
        await queue.start()
        handles = [await queue.submit(hold) for _ in range(20)]

        # 100 starts per second: 0.3 s gives tokens for far more than 10 workers.
        for _ in range(30):
            loop.advance(0.01)
            await settle()

        assert queue.stats().running == 10
        assert queue.stats().pending == 10

        gate.set()
        # The drain starts the last ten tasks at the rate limit, in virtual time.
        stopping = asyncio.ensure_future(queue.stop("drain"))
        while not stopping.done():
            loop.advance(0.01)
            await settle()
        assert all(h.state is TaskState.SUCCEEDED for h in handles)

    run_virtual(main)


@settings(max_examples=40, deadline=None)
@given(
    workers=st.integers(1, 6),
    rate=st.sampled_from([5.0, 20.0, 50.0]),
    burst=st.integers(1, 4),
    tasks=st.integers(1, 15),
)
def test_rate_limit_bounds_and_progress(
    workers: int, rate: float, burst: int, tasks: int
) -> None:
    """Starts never exceed burst + rate * elapsed, and blocked starts resume."""

    async def main(loop: VirtualClockLoop) -> None:
        gate = asyncio.Event()
        starts: list[float] = []

        async def hold() -> None:
            starts.append(loop.time())
            await gate.wait()

        queue = AsyncTaskQueue(
            workers, retry=NO_RETRY, rate_limit=rate, rate_burst=burst
        )
        await queue.start()
        begin = loop.time()
        for _ in range(tasks):
            await queue.submit(hold)

        step = 0.25 / rate
        for _ in range(8 * (tasks + 1)):
            loop.advance(step)
            await settle(5)
            elapsed = loop.time() - begin
            # A small slack for the wall time that passes under the virtual clock.
            assert len(starts) <= burst + rate * elapsed + 1e-3

        # 2 * (tasks + 1) token intervals have passed: every worker is busy.
        assert len(starts) == min(workers, tasks)

        gate.set()
        await queue.stop("drain")
        assert len(starts) == tasks

    run_virtual(main)


# Bases near and past the range where floats one apart round together, and
# below it, where a float key would round away fractions of a second.
HUGE_BASES = [
    0,
    2**40,
    2**48,
    2**51,
    2**52,
    2**53,
    2**61,
    10**400,
    -(2**51),
    -(10**400),
]


@settings(max_examples=300, deadline=None)
@given(
    rate=st.one_of(
        st.sampled_from([0.0, 0.1, 1 / 3, 1.0, 7.5, 1e-9, 100.0]),
        st.floats(min_value=0, max_value=100),
    ),
    start=st.sampled_from([0.0, 1000.0, 123456.789]),
    pushes=st.lists(
        st.tuples(
            st.builds(
                lambda base, offset: base + offset,
                st.sampled_from(HUGE_BASES),
                st.integers(-3, 3),
            ),
            st.one_of(
                st.integers(0, 10).map(float),
                st.floats(min_value=0, max_value=2),
                st.sampled_from([0.25, 0.9, 1e-9, 5e-324]),
            ),
        ),
        max_size=30,
    ),
)
def test_aging_orders_huge_priorities(
    rate: float, start: float, pushes: list[tuple[int, float]]
) -> None:
    """Any int priority pops by p + rate * (now - pushed_at), exactly.

    Fractional rates and push times are included: a float key near 2**51 is
    0.5 apart from the next, which would round away part of a second.
    """
    now = start
    heap = AgingHeap(rate, lambda: now)
    pushed: list[tuple[int, float, int]] = []
    for seq, (priority, step) in enumerate(pushes):
        now += step
        heap.push(make_handle(priority, seq))
        pushed.append((priority, now, seq))

    expected = sorted(pushed, key=lambda e: exact_key(rate, *e))
    order = []
    while (handle := heap.pop()) is not None:
        order.append(handle.id)

    assert order == [seq for _, _, seq in expected]


@settings(max_examples=200, deadline=None)
@given(
    base=st.sampled_from([2**40, 2**48, 2**51, -(2**51)]),
    rate=st.sampled_from([1.0, 0.1]),
    pushes=st.lists(
        st.tuples(st.integers(-3, 3), st.floats(min_value=0, max_value=2)),
        max_size=20,
    ),
)
def test_aging_orders_fractional_waits_exactly(
    base: int, rate: float, pushes: list[tuple[int, float]]
) -> None:
    """Below 2**52, fractions of a second of aging still order the tasks."""
    now = 1000.0
    heap = AgingHeap(rate, lambda: now)
    pushed: list[tuple[int, float, int]] = []
    for seq, (offset, step) in enumerate(pushes):
        now += step
        heap.push(make_handle(base + offset, seq))
        pushed.append((base + offset, now, seq))

    expected = sorted(pushed, key=lambda e: exact_key(rate, *e))
    order = []
    while (handle := heap.pop()) is not None:
        order.append(handle.id)

    assert order == [seq for _, _, seq in expected]


def test_aging_int_rate_is_exact() -> None:
    """An int aging_rate ages tasks by exactly that rate, like any int priority.

    With aging_rate=2**53 + 1, which a float cannot hold, a task of priority
    0 and a task of priority 2**53 + 1 submitted 1 s later have the same
    effective priority from then on, so they start in submission order.
    """
    rate = 2**53 + 1

    async def main(loop: VirtualClockLoop) -> None:
        started: list[str] = []
        release = asyncio.Event()

        async def block() -> None:
            await release.wait()

        async def record(name: str) -> None:
            started.append(name)

        async with AsyncTaskQueue(1, retry=NO_RETRY, aging_rate=rate) as queue:
            queue.submit_nowait(block)
            await asyncio.sleep(0)
            queue.submit_nowait(record, "older", priority=0)
            loop.advance(1)
            queue.submit_nowait(record, "newer", priority=rate)
            release.set()
            await queue.wait_idle()

        assert started == ["older", "newer"]

    run_virtual(main)


def test_aging_heap_scales_keys_for_finer_times() -> None:
    """A push time with more fraction bits keeps the stored keys exact.

    Near 2**51 the three keys round to the same float, so only exact keys
    put B, whose key is 2**-40 higher, before A and C, which tie.
    """
    base = 2**51
    now = 1.0
    heap = AgingHeap(1.0, lambda: now)
    heap.push(make_handle(base + 7, 1))  # A: key base + 6
    now = 2.0 - 2.0**-40
    heap.push(make_handle(base + 8, 2))  # B: key base + 6 + 2**-40
    now = 2.0
    heap.push(make_handle(base + 8, 3))  # C: key base + 6

    order = []
    while (handle := heap.pop()) is not None:
        order.append(handle.id)

    assert order == [2, 1, 3]


def start_order(submissions: list[tuple[float, str, int]]) -> list[str]:
    """Return the start order of tasks submitted to a paused aging queue.

    Each submission is (seconds to advance the virtual clock first, name,
    priority). The queue has one worker and aging_rate=1.0.
    """

    async def main(loop: VirtualClockLoop) -> list[str]:
        order: list[str] = []

        async def record(name: str) -> None:
            order.append(name)

        async with AsyncTaskQueue(1, aging_rate=1.0, retry=NO_RETRY) as queue:
            queue.pause()
            for advance, name, priority in submissions:
                loop.advance(advance)
                await queue.submit(record, name, priority=priority)
            queue.resume()

        return order

    return run_virtual(main, autojump=None)


def test_aging_queue_fractional_wait_large_priority() -> None:
    """A task one point higher, submitted 0.9 s later, starts first near 2**51.

    With aging_rate=1.0 its effective priority stays 0.1 above the older
    task's, a difference that a float key of that size would round away.
    """
    order = start_order([(0, "older", 2**51), (0.9, "newer, one higher", 2**51 + 1)])

    assert order == ["newer, one higher", "older"]


@pytest.mark.parametrize(
    "base",
    [2**53, 2**61, 1_700_000_000_000_000_000, 10**400],
    ids=["2**53", "2**61", "time_ns", "1e400"],
)
def test_aging_queue_orders_large_priorities(base: int) -> None:
    """With aging_rate set, priority base + 1 starts before priority base."""
    order = start_order(
        [
            (0, "lower", base),
            (0, "higher", base + 1),
            (0, "highest", base + 100),
            (0, "negative", -base),
        ]
    )

    assert order == ["highest", "higher", "lower", "negative"]


async def test_aging_float_max_priority_runs() -> None:
    """With aging_rate set, priority int(sys.float_info.max) starts first."""
    started: list[str] = []

    async def record(name: str) -> None:
        started.append(name)

    queue = AsyncTaskQueue(1, retry=NO_RETRY, aging_rate=1.0)
    await queue.start()
    queue.pause()
    low = await queue.submit(record, "low", priority=0)
    await queue.submit(record, "high", priority=int(sys.float_info.max))
    queue.resume()
    await until(lambda: low.done())

    assert started == ["high", "low"]
    await queue.stop()


def test_rate_limit_owes_early_token() -> None:
    """A token taken up to the timer slack early is owed by the next one.

    With a slack worth a whole token, as uvloop's is at 2,000 starts per
    second, forgiving that debt would let every queued task start at once.
    """

    async def main(loop: VirtualClockLoop) -> None:
        gate = asyncio.Event()
        started = 0

        async def hold() -> None:
            nonlocal started
            started += 1
            await gate.wait()

        queue = AsyncTaskQueue(50, retry=NO_RETRY, rate_limit=2000.0)
        await queue.start()
        queue._slack = 0.0005  # as on uvloop: half a millisecond is one token
        for _ in range(50):
            queue.submit_nowait(hold)
        await settle()

        # The burst of one, and one token taken early.
        assert started == 2

        for _ in range(10):
            loop.advance(0.001)
            await settle()

        # 10 ms at 2,000 per second is 20 more, give or take the debt.
        assert 21 <= started <= 23
        gate.set()
        await queue.stop()

    run_virtual(main, autojump=None)
