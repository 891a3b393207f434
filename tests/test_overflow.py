"""The overflow policies of a queue with max_pending: wait, raise and drop."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    Hook,
    Overflow,
    QueueFullError,
    RetryPolicy,
    TaskCancelledError,
    TaskEvent,
    TaskHandle,
    TaskState,
)
from async_queue.models import OverflowName
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import settle, until

NO_RETRY = RetryPolicy(max_retries=0)


class EventLog(Hook):
    """Records each (event, task id) pair in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_submitted(self, event: TaskEvent) -> None:
        self.events.append(("submitted", event.task_id))

    def on_dropped(self, event: TaskEvent) -> None:
        self.events.append(("dropped", event.task_id))


async def record(order: list[str], name: str) -> str:
    order.append(name)
    return name


async def fail() -> None:
    raise ValueError("fails once and for all")


def paused_queue(
    overflow: str, max_pending: int = 2, **options: object
) -> AsyncTaskQueue:
    return AsyncTaskQueue(
        1,
        max_pending=max_pending,
        overflow=overflow,  # type: ignore[arg-type]
        retry=NO_RETRY,
        **options,  # type: ignore[arg-type]
    )


async def test_raise_policy_never_waits() -> None:
    order: list[str] = []
    async with paused_queue("raise") as queue:
        queue.pause()
        await queue.submit(record, order, "a")
        await queue.submit(record, order, "b")

        with pytest.raises(QueueFullError, match="submit again later"):
            await queue.submit(record, order, "c")
        with pytest.raises(QueueFullError, match="submit again later"):
            queue.submit_nowait(record, order, "d")

        stats = queue.stats()
        assert stats.submitted == 2
        assert stats.pending == 2
        queue.resume()

    assert order == ["a", "b"]


@pytest.mark.parametrize("nowait", [False, True], ids=["submit", "submit_nowait"])
async def test_drop_newest_cancels_new_task(nowait: bool) -> None:
    order: list[str] = []
    async with paused_queue("drop_newest") as queue:
        queue.pause()
        await queue.submit(record, order, "a")
        await queue.submit(record, order, "b")

        if nowait:
            dropped = queue.submit_nowait(record, order, "c")
        else:
            dropped = await queue.submit(record, order, "c")

        assert dropped.state is TaskState.CANCELLED
        with pytest.raises(
            TaskCancelledError, match="dropped as the newest task: the queue was full"
        ):
            await dropped

        stats = queue.stats()
        assert stats.submitted == 3
        assert stats.pending == 2
        assert stats.dropped == 1
        assert stats.cancelled == 1
        queue.resume()

    assert order == ["a", "b"]


async def test_drop_lowest_drops_newest_of_lowest() -> None:
    order: list[str] = []
    log = EventLog()
    async with paused_queue("drop_lowest", max_pending=3, hooks=[log]) as queue:
        queue.pause()
        first = await queue.submit(record, order, "low-1", priority=0)
        second = await queue.submit(record, order, "low-2", priority=0)
        middle = await queue.submit(record, order, "mid", priority=3)
        urgent = await queue.submit(record, order, "urgent", priority=5)

        assert second.state is TaskState.CANCELLED
        assert urgent.state is TaskState.PENDING
        with pytest.raises(TaskCancelledError, match="for a task of priority 5"):
            await second

        # No pending task has a lower priority than these: they are dropped.
        tied = await queue.submit(record, order, "tied", priority=0)
        lower = await queue.submit(record, order, "lower", priority=-1)
        assert tied.state is TaskState.CANCELLED
        assert lower.state is TaskState.CANCELLED
        assert queue.stats().dropped == 3
        queue.resume()

    assert order == ["urgent", "mid", "low-1"]
    assert first.state is middle.state is TaskState.SUCCEEDED
    # The new task is in before the dropped one's hook runs.
    assert log.events[3:7] == [
        ("submitted", urgent.id),
        ("dropped", second.id),
        ("submitted", tied.id),
        ("dropped", tied.id),
    ]


async def test_drop_lowest_skips_cancelled_tasks() -> None:
    order: list[str] = []
    async with paused_queue("drop_lowest", max_pending=2) as queue:
        queue.pause()
        keep = await queue.submit(record, order, "keep", priority=0)
        cancelled = await queue.submit(record, order, "cancelled", priority=0)
        cancelled.cancel()
        newer = await queue.submit(record, order, "newer", priority=0)

        # The stale entry of the cancelled task is not a candidate.
        urgent = await queue.submit(record, order, "urgent", priority=1)
        assert newer.state is TaskState.CANCELLED
        assert keep.state is TaskState.PENDING
        assert urgent.state is TaskState.PENDING
        queue.resume()

    assert order == ["urgent", "keep"]


async def test_drop_lowest_never_drops_delayed_task() -> None:
    # Delayed tasks count against max_pending but are not in the ready heap.
    order: list[str] = []
    async with paused_queue("drop_lowest", max_pending=1) as queue:
        queue.pause()
        later = await queue.submit(record, order, "later", delay=30, priority=-5)
        urgent = await queue.submit(record, order, "urgent", priority=5)

        assert later.state is TaskState.DELAYED
        assert urgent.state is TaskState.CANCELLED
        later.cancel()


def test_drop_lowest_keeps_delayed_bound() -> None:
    """drop_lowest never lets delayed tasks pass max_pending.

    With ``max_pending=1`` and one idle worker, a delayed task fills the
    bound, and a task to start now is admitted beside it because the idle
    worker starts it at once. That task takes no room, so dropping it frees
    none: a second delayed task of higher priority finds the queue full and
    is dropped itself, and the first task runs.
    """

    async def main(loop: VirtualClockLoop) -> None:
        async def stamp() -> float:
            return loop.time()

        async with AsyncTaskQueue(1, max_pending=1, overflow="drop_lowest") as queue:
            queue.submit_nowait(stamp, delay=100)
            starts_now = queue.submit_nowait(stamp)
            later = queue.submit_nowait(stamp, delay=100, priority=5)
            await settle()

            assert queue.stats().delayed == 1
            assert starts_now.state is TaskState.SUCCEEDED
            assert later.state is TaskState.CANCELLED

    run_virtual(main, autojump=0)


async def noop() -> None:
    pass


@settings(max_examples=60, deadline=None)
@given(
    workers=st.integers(1, 4),
    max_pending=st.integers(1, 4),
    burst=st.integers(0, 12),
    overflow=st.sampled_from(["wait", "raise", "drop_newest", "drop_lowest"]),
    idle_first=st.booleans(),
)
def test_burst_fills_idle_workers_first(
    workers: int, max_pending: int, burst: int, overflow: str, idle_first: bool
) -> None:
    # Tasks that idle or new workers are about to start do not count against
    # max_pending, whether the workers have run yet or not.
    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(
            workers,
            max_pending=max_pending,
            overflow=overflow,  # type: ignore[arg-type]
            retry=NO_RETRY,
        )
        async with queue:
            if idle_first:
                await asyncio.sleep(0)  # the workers go idle

            handles: list[TaskHandle[None]] = []
            rejected = 0
            for _ in range(burst):
                try:
                    handles.append(queue.submit_nowait(noop))
                except QueueFullError:
                    rejected += 1

            admitted = [h for h in handles if h.state is TaskState.PENDING]
            expected = min(burst, max_pending + workers)
            assert len(admitted) == expected
            assert rejected + len(handles) == burst
            for handle in admitted:
                await handle

            assert all(h.state is TaskState.SUCCEEDED for h in admitted)
            assert queue.stats().dropped == len(handles) - expected

    run_virtual(main)


@pytest.mark.parametrize("held", ["paused", "rate_limit"])
def test_burst_held_back_counts_every_task(held: str) -> None:
    # On the virtual clock, because the rate limit of one task a second
    # spaces out the tasks that the queue drains on exit.
    rate_limit = 1.0 if held == "rate_limit" else None

    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(
            4, max_pending=2, overflow="raise", rate_limit=rate_limit
        )
        async with queue:
            await asyncio.sleep(0)  # the workers go idle
            if held == "paused":
                queue.pause()

            await queue.submit(noop)
            await queue.submit(noop)
            with pytest.raises(QueueFullError, match="2 tasks are waiting"):
                await queue.submit(noop)

            assert queue.stats().pending == 2
            queue.resume()

    run_virtual(main)


def test_drop_warnings_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="async_queue")
    logged: list[TaskHandle[str]] = []

    async def main(loop: VirtualClockLoop) -> None:
        async with paused_queue("drop_newest", max_pending=1) as queue:
            queue.pause()
            queue.submit_nowait(record, [], "kept")
            burst = [queue.submit_nowait(record, [], "dropped") for _ in range(3)]
            loop.advance(9.5)
            queue.submit_nowait(record, [], "dropped")
            loop.advance(0.5)
            later = queue.submit_nowait(record, [], "dropped")
            logged.extend([burst[0], later])

            assert queue.stats().dropped == 5
            queue.resume()

    run_virtual(main, autojump=None)

    cause = (
        "dropped as the newest task: the queue was full "
        "(max_pending=1, overflow='drop_newest')"
    )
    warnings = [r.getMessage() for r in caplog.records if r.name == "async_queue"]
    assert warnings == [
        f"task {logged[0].id!r} (record) {cause}",
        f"task {logged[1].id!r} (record) {cause}; "
        "3 more dropped since the last such warning",
    ]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}


def test_stop_logs_unlogged_drops(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="async_queue")

    async def main(loop: VirtualClockLoop) -> None:
        async with paused_queue("drop_newest", max_pending=1) as queue:
            queue.pause()
            queue.submit_nowait(record, [], "kept")
            for _ in range(3):
                queue.submit_nowait(record, [], "dropped")
            queue.resume()

    run_virtual(main, autojump=None)

    warnings = [r.getMessage() for r in caplog.records if r.name == "async_queue"]
    assert len(warnings) == 2
    assert "dropped as the newest task" in warnings[0]
    assert warnings[1] == (
        "2 more dropped by the overflow policy since the last such warning"
    )


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"overflow": "drop_newest"}, ValueError, "pass max_pending as well"),
        ({"overflow": "drop", "max_pending": 1}, ValueError, "one of 'wait'"),
        ({"overflow": 2, "max_pending": 1}, TypeError, "got 2$"),
        (
            {"overflow": None, "max_pending": 1},
            TypeError,
            "got None; leave overflow out for the default, 'wait'",
        ),
        (
            {"overflow": "drop_lowest", "max_pending": 1, "aging_rate": 1.0},
            ValueError,
            "cannot be used with aging_rate",
        ),
    ],
)
def test_overflow_rejected(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        AsyncTaskQueue(**options)  # type: ignore[arg-type]


def test_overflow_accepts_enum_and_name() -> None:
    assert AsyncTaskQueue(max_pending=1, overflow=Overflow.RAISE)
    assert AsyncTaskQueue(max_pending=1, overflow="drop_lowest", aging_rate=None)
    assert AsyncTaskQueue(overflow="wait")


@pytest.mark.parametrize("overflow", ["drop_newest", "drop_lowest"])
def test_schedule_skips_instead_of_dropping(overflow: str) -> None:
    async def tick() -> None:
        pass

    async def main(loop: VirtualClockLoop) -> None:
        order: list[str] = []
        async with paused_queue(overflow, max_pending=1) as queue:
            queue.pause()
            blocker = await queue.submit(record, order, "blocker", priority=-1)
            schedule = queue.every(1, tick, priority=9)
            await asyncio.sleep(2.5)

            assert schedule.runs == 0
            assert schedule.skipped == 2
            assert blocker.state is TaskState.PENDING
            assert queue.stats().dropped == 0
            schedule.cancel()
            queue.resume()

    run_virtual(main)


@pytest.mark.parametrize("overflow", ["raise", "drop_newest", "drop_lowest"])
async def test_requeue_to_full_queue_keeps_letter(overflow: str) -> None:
    order: list[str] = []
    async with paused_queue(overflow, max_pending=1) as queue:
        failed = await queue.submit(fail)
        with pytest.raises(ValueError, match="fails once"):
            await failed

        queue.pause()
        await queue.submit(record, order, "filler", priority=-1)
        with pytest.raises(QueueFullError):
            await queue.requeue(failed.id, priority=5)

        assert [letter.task_id for letter in queue.dead_letters()] == [failed.id]
        queue.resume()


@settings(max_examples=60, deadline=None)
@given(
    priorities=st.lists(st.integers(-3, 3), min_size=1, max_size=25),
    max_pending=st.integers(1, 5),
)
def test_drop_lowest_keeps_best_tasks(priorities: list[int], max_pending: int) -> None:
    # A model: a list of (priority, index) that drops the newest of the lowest
    # priority for a higher one, or else the new task.
    model_pending: list[tuple[int, int]] = []
    for index, priority in enumerate(priorities):
        if len(model_pending) < max_pending:
            model_pending.append((priority, index))
            continue

        lowest = min(p for p, _ in model_pending)
        if lowest < priority:
            victim = max(i for p, i in model_pending if p == lowest)
            model_pending.remove((lowest, victim))
            model_pending.append((priority, index))

    expected_order = [
        i for _, i in sorted(model_pending, key=lambda item: (-item[0], item[1]))
    ]

    async def main(loop: VirtualClockLoop) -> None:
        order: list[str] = []
        handles: list[TaskHandle[str]] = []
        async with paused_queue("drop_lowest", max_pending=max_pending) as queue:
            queue.pause()
            for index, priority in enumerate(priorities):
                handles.append(
                    queue.submit_nowait(record, order, str(index), priority=priority)
                )
                assert queue.stats().pending <= max_pending

            queue.resume()

        assert order == [str(i) for i in expected_order]
        for index, handle in enumerate(handles):
            kept_here = index in expected_order
            state = TaskState.SUCCEEDED if kept_here else TaskState.CANCELLED
            assert handle.state is state

        stats = queue.stats()
        assert stats.dropped == len(priorities) - len(expected_order)
        assert stats.succeeded + stats.cancelled == stats.submitted == len(priorities)

    run_virtual(main)


async def test_drop_lowest_forgets_earlier_victims() -> None:
    # The heap keeps at most the last victim as a stale entry. Victims left
    # behind the live tasks of their priority would make every later drop
    # walk past all of the earlier ones, so that n drops cost O(n**2).
    limit = 300
    async with AsyncTaskQueue(
        1, max_pending=limit, overflow="drop_lowest", retry=NO_RETRY
    ) as queue:
        queue.pause()
        low = [queue.submit_nowait(noop, priority=0) for _ in range(limit)]
        high = [queue.submit_nowait(noop, priority=1) for _ in range(limit - 1)]

        assert [h.state for h in low[1:]] == [TaskState.CANCELLED] * (limit - 1)
        assert low[0].state is TaskState.PENDING
        assert all(h.state is TaskState.PENDING for h in high)
        assert queue.stats().pending == limit

        heap = queue._ready
        assert heap._entries - len(heap) <= 1  # at most the last victim
        queue.resume()

    stats = queue.stats()
    assert stats.succeeded == limit
    assert stats.dropped == limit - 1


async def test_thread_advice_fits_raise_policy() -> None:
    # Under "raise", queue.submit() raises at once too, so the QueueFullError
    # does not advise waiting for room with it through run_coroutine_threadsafe().
    async with AsyncTaskQueue(
        1, max_pending=1, overflow="raise", retry=NO_RETRY
    ) as queue:
        queue.pause()
        await queue.submit(noop)

        future = await asyncio.to_thread(queue.submit_threadsafe, noop)
        with pytest.raises(QueueFullError) as caught:
            await asyncio.wrap_future(future)

        message = str(caught.value)
        assert "run_coroutine_threadsafe" not in message
        assert "submit again later, or raise max_pending" in message
        queue.resume()


async def test_thread_advice_under_wait_policy() -> None:
    # The default policy keeps the advice to wait from the thread.
    async with AsyncTaskQueue(1, max_pending=1, retry=NO_RETRY) as queue:
        queue.pause()
        await queue.submit(noop)

        future = await asyncio.to_thread(queue.submit_threadsafe, noop)
        with pytest.raises(QueueFullError, match="run_coroutine_threadsafe"):
            await asyncio.wrap_future(future)

        queue.resume()


async def test_stats_dropped_counts_both_kinds() -> None:
    # stats().dropped and on_dropped count the tasks that the overflow policy
    # drops as well as those that stop() drops.
    dropped: list[object] = []

    class DropLog(Hook):
        def on_dropped(self, event: TaskEvent) -> None:
            dropped.append(event.task_id)

    queue = AsyncTaskQueue(
        1, max_pending=1, overflow="drop_newest", retry=NO_RETRY, hooks=[DropLog()]
    )
    await queue.start()
    queue.pause()
    queued = await queue.submit(noop)
    overflowed = await queue.submit(noop)

    report = await queue.stop()

    assert report.dropped == (queued,)
    assert overflowed.state is TaskState.CANCELLED
    assert dropped == [overflowed.id, queued.id]
    stats = queue.stats()
    assert stats.dropped == 2
    assert stats.cancelled == 2


async def test_drop_for_huge_priority_ends_victim() -> None:
    # str() raises ValueError for an int past 4300 digits, so the drop message
    # shows such a priority by its bit length. The victim still finishes: it
    # is counted, its done callbacks run, and join() returns.
    huge = 10**5000
    async with AsyncTaskQueue(
        1, max_pending=1, overflow="drop_lowest", retry=NO_RETRY
    ) as queue:
        queue.pause()
        low = await queue.submit(noop, priority=0)
        released: list[object] = []
        low.add_done_callback(released.append)

        urgent = await queue.submit(noop, priority=huge)

        assert low.state is TaskState.CANCELLED
        assert urgent.state is TaskState.PENDING
        with pytest.raises(TaskCancelledError, match="priority <16610-bit int>"):
            await low

        stats = queue.stats()
        assert stats.dropped == 1
        assert stats.cancelled == 1
        assert stats.pending == 1
        queue.resume()
        await queue.join()
        assert released == [low]

    assert urgent.state is TaskState.SUCCEEDED


async def test_requeued_task_can_be_dropped_later() -> None:
    # The dropping policies never drop a requeued task on arrival, but once it
    # is queued, drop_lowest may drop it, and its dead letter is gone by then.
    async with AsyncTaskQueue(
        1, max_pending=1, overflow="drop_lowest", retry=NO_RETRY
    ) as queue:
        failed = await queue.submit(fail)
        with pytest.raises(ValueError, match="fails once"):
            await failed

        queue.pause()
        requeued = await queue.requeue(failed.id)
        urgent = await queue.submit(noop, priority=5)

        assert requeued.state is TaskState.CANCELLED
        assert urgent.state is TaskState.PENDING
        assert queue.dead_letters() == ()
        queue.resume()


def test_drop_lowest_drops_last_to_enter() -> None:
    # The victim is the task of the lowest priority that entered the ready
    # heap last, not the newest one. A delayed task enters when it is due,
    # so it can be the victim although it was submitted first.
    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(
            1, max_pending=2, overflow="drop_lowest", retry=NO_RETRY
        ) as queue:
            queue.pause()
            first = await queue.submit(noop, delay=1)
            second = await queue.submit(noop)
            await asyncio.sleep(2)
            assert first.state is TaskState.PENDING

            urgent = await queue.submit(noop, priority=5)

            assert first.state is TaskState.CANCELLED
            assert second.state is TaskState.PENDING
            assert urgent.state is TaskState.PENDING
            queue.resume()

    run_virtual(main)


@pytest.mark.parametrize("overflow", ["wait", "raise", "drop_newest", "drop_lowest"])
async def test_idle_worker_takes_task_past_delayed(overflow: OverflowName) -> None:
    """A task that an idle worker starts at once fits beside a delayed task.

    The worker idles before any submission wakes it. With max_pending=1 and
    one delayed task, the new task runs under every overflow policy.
    """
    release = asyncio.Event()
    async with AsyncTaskQueue(1, max_pending=1, overflow=overflow) as queue:
        await until(lambda: len(queue._idle) == 1)  # the worker waits for work
        delayed = await queue.submit(release.wait, delay=3600, task_id="delayed")

        handle = queue.submit_nowait(release.wait, task_id="now")
        await until(lambda: handle.state is not TaskState.PENDING)

        assert handle.state is TaskState.RUNNING
        assert delayed.state is TaskState.DELAYED
        stats = queue.stats()
        assert stats.pending + stats.delayed == 1
        release.set()
        await handle
        await queue.stop("cancel")


def test_room_waiter_admitted_when_worker_idles() -> None:
    """A submitter that waits for room is admitted once a worker is idle.

    With ``max_pending=1`` filled by a delayed task, a task to start now is
    admitted when an idle worker would start it at once. A submitter that
    began to wait while the only worker was busy gets the same treatment
    as soon as that worker finishes and goes idle: its task starts then.
    """

    async def main(loop: VirtualClockLoop) -> None:
        release = asyncio.Event()

        async def hold() -> None:
            await release.wait()

        async def stamp() -> float:
            return loop.time()

        async with AsyncTaskQueue(1, max_pending=1) as queue:
            await queue.submit(hold)
            await settle()
            await queue.submit(stamp, delay=100)
            waiting = asyncio.create_task(queue.submit(stamp))
            await settle()
            assert not waiting.done()

            released_at = loop.time()
            release.set()
            await settle()
            try:
                assert queue.stats().running == 0
                assert waiting.done()
                handle = await waiting
                assert await handle == released_at
            finally:
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)

    run_virtual(main, autojump=0)
