"""Regression tests for faults found by probing the overflow policies of a
queue with max_pending."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    Hook,
    QueueFullError,
    RetryPolicy,
    TaskCancelledError,
    TaskEvent,
    TaskState,
)
from async_queue.containers import ReadyHeap
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.test_containers import cancel_in_heap, make_handle

NO_RETRY = RetryPolicy(max_retries=0)

HEAP_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(-2, 2)),
        st.tuples(st.just("push"), st.integers(-2, 2)),
        st.tuples(st.just("pop"), st.just(0)),
        st.tuples(st.just("drop"), st.just(0)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
    ),
    min_size=10,
    max_size=150,
)


async def noop() -> None:
    pass


async def test_drop_lowest_forgets_earlier_victims() -> None:
    # Each victim used to stay in the ready heap as a stale entry behind the
    # live tasks of its priority, so every later drop walked past all of the
    # earlier ones: n drops cost O(n**2).
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


@given(HEAP_OPERATIONS)
def test_ready_heap_drops_last_to_start(operations: list[tuple[str, int]]) -> None:
    """Pushes, pops, cancels and drops in any mix keep the heap's order and
    its counts of entries and stale entries."""
    heap = ReadyHeap()
    live: list[tuple[int, int]] = []  # (priority, seq) of the pending tasks
    handles = {}
    for seq, (operation, value) in enumerate(operations):
        if operation == "push":
            handles[seq] = make_handle(seq, value)
            heap.push(handles[seq])
            live.append((value, seq))
        elif operation == "pop":
            popped = heap.pop()
            if not live:
                assert popped is None
            else:
                expected = min(live, key=lambda e: (-e[0], e[1]))
                assert popped is not None
                assert popped.id == expected[1]
                live.remove(expected)
        elif operation == "drop":
            victim = heap.last_to_start()
            if not live:
                assert victim is None
            else:
                expected = min(live, key=lambda e: (e[0], -e[1]))
                assert victim is not None
                assert victim.id == expected[1]
                cancel_in_heap(heap, victim)
                live.remove(expected)
        elif live:
            _, chosen = live.pop(value % len(live))
            cancel_in_heap(heap, handles[chosen])

        assert len(heap) == len(live)
        assert heap._entries == sum(len(level) for level in heap._levels.values())
        assert heap._stale == sum(heap._stale_by_level.values())
        depth: dict[int, int] = {}
        for priority, _ in sorted(live, reverse=True):
            depth[priority] = depth.get(priority, 0) + 1
        assert heap.depth_by_priority() == depth

    remaining = [h.id for h in iter(heap.pop, None)]
    assert remaining == [seq for _, seq in sorted(live, key=lambda e: (-e[0], e[1]))]


async def test_thread_advice_fits_raise_policy() -> None:
    # Under "raise", queue.submit() raises at once too, so the advice to wait
    # for room with it from a thread was wrong.
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
    # The docs said that stats().dropped and on_dropped meant stop() alone;
    # they count the tasks that the overflow policy dropped as well.
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
    # The drop message formatted the new priority with str(), which raises
    # ValueError past 4300 digits. The victim was then CANCELLED but never
    # finished: not counted, its callbacks and join() never released.
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


async def fail() -> None:
    raise ValueError("fails once and for all")


async def test_requeued_task_can_be_dropped_later() -> None:
    # The requeue() docstring stated that the dropping policies never drop a
    # requeued task, which holds only on arrival: once queued, drop_lowest may
    # drop it, and its dead letter is gone by then.
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
    # heap last. A delayed task enters when it is due, so it can be the
    # victim although it was submitted first: the docs called the victim
    # "the newest of the lowest priority".
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
