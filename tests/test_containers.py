"""ReadyHeap, TimerHeap and TaskTable, driven directly with real task handles."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_queue import RetryPolicy, TaskHandle, TaskState, containers
from async_queue.containers import ReadyHeap, TaskTable, TimerHeap
from async_queue.models import TaskSettings, new_handle

POLICY = RetryPolicy(max_retries=0)
SETTINGS = TaskSettings(None, None, POLICY)


async def _noop(*args: Any) -> None:
    return None


def make_handle(
    task_id: Any, priority: int = 0, args: tuple[Any, ...] = ()
) -> TaskHandle[Any]:
    """Build a pending handle that belongs to no queue."""
    return new_handle(SETTINGS, task_id, _noop, args, priority)


def cancel_in_heap(heap: ReadyHeap, handle: TaskHandle[Any]) -> None:
    """Cancel a pending handle the way the queue does: state first, then mark."""
    handle._state = TaskState.CANCELLED
    heap.mark_stale(handle)


def pop_all(heap: ReadyHeap) -> list[Any]:
    ids = []
    while (handle := heap.pop()) is not None:
        ids.append(handle.id)

    return ids


def stable_order(priorities: list[int]) -> list[int]:
    """Return indices sorted by priority descending, ties kept in index order."""
    return sorted(range(len(priorities)), key=lambda i: -priorities[i])


# ReadyHeap: order


@given(st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=200))
def test_ready_pop_is_stable_sort(priorities: list[int]) -> None:
    heap = ReadyHeap()
    for index, priority in enumerate(priorities):
        heap.push(make_handle(index, priority))

    assert len(heap) == len(priorities)
    assert pop_all(heap) == stable_order(priorities)
    assert len(heap) == 0


@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=-3, max_value=3)),
        max_size=120,
    )
)
def test_ready_interleaved_push_pop(operations: list[tuple[bool, int]]) -> None:
    """Pushes and pops in any mix pop the highest priority, oldest first."""
    check_interleaved(operations)


@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=0, max_value=80)),
        max_size=300,
    )
)
def test_ready_interleaved_many_levels(operations: list[tuple[bool, int]]) -> None:
    """The same with more priorities than the heap keeps emptied levels for."""
    heap = check_interleaved(operations)

    live = sum(1 for level in heap._levels.values() if level)
    assert len(heap._levels) <= max(live, containers._KEPT_LEVELS)


def check_interleaved(operations: list[tuple[bool, int]]) -> ReadyHeap:
    heap = ReadyHeap()
    model: list[tuple[int, int]] = []  # (priority, seq) of pending tasks
    for seq, (is_pop, priority) in enumerate(operations):
        if is_pop:
            handle = heap.pop()
            if not model:
                assert handle is None
                continue

            best = min(model, key=lambda entry: (-entry[0], entry[1]))
            model.remove(best)
            assert handle is not None
            assert handle.id == best[1]
        else:
            heap.push(make_handle(seq, priority))
            model.append((priority, seq))

        assert len(heap) == len(model)
        assert heap.depth_by_priority() == count_by_priority(model)

    return heap


def count_by_priority(model: list[tuple[int, int]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for priority, _ in sorted(model, reverse=True):
        counts[priority] = counts.get(priority, 0) + 1

    return counts


def test_ready_reuses_emptied_level() -> None:
    """A priority that empties and fills again keeps its deque."""
    heap = ReadyHeap()
    heap.push(make_handle(1, priority=3))
    level = heap._levels[3]
    assert heap.pop() is not None

    heap.push(make_handle(2, priority=3))

    assert heap._levels[3] is level
    assert heap.depth_by_priority() == {3: 1}
    assert pop_all(heap) == [2]
    assert heap._order == []


def test_ready_drops_levels_past_the_kept_number() -> None:
    heap = ReadyHeap()
    count = containers._KEPT_LEVELS + 10
    for priority in range(count):
        heap.push(make_handle(priority, priority))

    assert pop_all(heap) == list(reversed(range(count)))
    assert len(heap._levels) == containers._KEPT_LEVELS
    assert heap.depth_by_priority() == {}
    assert heap.oldest_queued_at() is None


def test_ready_pop_empty() -> None:
    heap = ReadyHeap()

    assert heap.pop() is None
    assert len(heap) == 0


def test_ready_incomparable_args() -> None:
    """Handles and their arguments are never compared, whatever they contain."""
    heap = ReadyHeap()
    unorderable = [({"a": 1},), (object(),), ({1, 2},), (None,), (1j,)]
    for index, args in enumerate(unorderable * 3):
        heap.push(make_handle(index, priority=index % 2, args=args))

    ids = pop_all(heap)

    assert ids == [*range(1, 15, 2), *range(0, 15, 2)]


def test_ready_returns_same_handle() -> None:
    heap = ReadyHeap()
    handle = make_handle("only", priority=4)
    heap.push(handle)

    assert heap.pop() is handle


# ReadyHeap: lazy deletion


def test_ready_skips_stale() -> None:
    heap = ReadyHeap()
    handles = [make_handle(i, priority=i % 2) for i in range(6)]
    for handle in handles:
        heap.push(handle)

    cancel_in_heap(heap, handles[1])
    cancel_in_heap(heap, handles[2])

    assert len(heap) == 4
    assert pop_all(heap) == [3, 5, 0, 4]
    assert len(heap) == 0


def test_ready_all_stale() -> None:
    heap = ReadyHeap()
    handles = [make_handle(i, priority=7) for i in range(3)]
    for handle in handles:
        heap.push(handle)

    for handle in handles:
        cancel_in_heap(heap, handle)

    assert len(heap) == 0
    assert heap.depth_by_priority() == {}
    assert heap.pop() is None
    assert heap.depth_by_priority() == {}


def test_ready_compaction() -> None:
    """Cancelling most of a large heap rebuilds it and keeps order and length."""
    heap = ReadyHeap()
    priorities = [(i * 7) % 11 - 5 for i in range(3000)]
    handles = [make_handle(i, p) for i, p in enumerate(priorities)]
    for handle in handles:
        heap.push(handle)

    cancelled = {i for i in range(3000) if i % 3 != 0}
    for i in sorted(cancelled):
        cancel_in_heap(heap, handles[i])

    live = [i for i in stable_order(priorities) if i not in cancelled]

    assert len(cancelled) == 2000
    assert len(heap) == 1000
    assert heap._entries < 3000  # the rebuild dropped stale entries
    assert pop_all(heap) == live
    assert len(heap) == 0


def test_ready_compaction_empties_levels() -> None:
    """A priority emptied by cancellation takes new tasks again after compaction."""
    heap = ReadyHeap()
    doomed = [make_handle(i, priority=9) for i in range(2000)]
    kept = [make_handle(2000 + i, priority=1) for i in range(10)]
    for handle in doomed + kept:
        heap.push(handle)

    for handle in doomed:
        cancel_in_heap(heap, handle)

    heap.push(make_handle("late", priority=9))

    assert len(heap) == 11
    assert heap.depth_by_priority() == {9: 1, 1: 10}
    assert pop_all(heap) == ["late", *range(2000, 2010)]


@st.composite
def heap_operations(draw: st.DrawFn) -> list[tuple[str, int]]:
    """Draw pushes (with a priority), pops and cancels (of a pushed task)."""
    kinds = st.sampled_from(["push", "push", "pop", "cancel", "cancel"])
    return draw(
        st.lists(st.tuples(kinds, st.integers(min_value=-3, max_value=3)), max_size=150)
    )


@given(heap_operations(), st.randoms(use_true_random=False))
def test_ready_cancel_model(
    operations: list[tuple[str, int]], rng: random.Random
) -> None:
    """Pops, cancels and compactions in any mix agree with a simple model."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(containers, "_COMPACT_MIN_STALE", 4)
        heap = ReadyHeap()
        pending: dict[int, TaskHandle[Any]] = {}
        for seq, (kind, priority) in enumerate(operations):
            if kind == "push":
                pending[seq] = make_handle(seq, priority)
                heap.push(pending[seq])
            elif kind == "cancel" and pending:
                victim = rng.choice(sorted(pending))
                cancel_in_heap(heap, pending.pop(victim))
            elif kind == "pop":
                handle = heap.pop()
                if not pending:
                    assert handle is None
                else:
                    best = min(pending, key=lambda i: (-pending[i].priority, i))
                    assert handle is pending.pop(best)

            assert len(heap) == len(pending)

        expected = sorted(pending, key=lambda i: (-pending[i].priority, i))

        assert pop_all(heap) == expected
        assert heap._entries == 0
        assert heap._stale == 0


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


# ReadyHeap: drain and depth


def test_ready_drain() -> None:
    heap = ReadyHeap()
    priorities = [0, 3, -1, 3, 0, 2]
    handles = [make_handle(i, p) for i, p in enumerate(priorities)]
    for handle in handles:
        heap.push(handle)

    cancel_in_heap(heap, handles[3])
    drained = heap.drain()

    assert [h.id for h in drained] == [1, 5, 0, 4, 2]
    assert len(heap) == 0
    assert heap.pop() is None
    assert heap.drain() == []


def test_ready_depth_by_priority() -> None:
    heap = ReadyHeap()
    handles = [make_handle(i, p) for i, p in enumerate([0, 5, 0, -2, 5, 5, 0])]
    for handle in handles:
        heap.push(handle)

    cancel_in_heap(heap, handles[4])
    depth = heap.depth_by_priority()

    assert depth == {5: 2, 0: 3, -2: 1}
    assert list(depth) == [5, 0, -2]
    assert len(heap) == 6


# ReadyHeap: threads


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    """Switch threads far more often than the default, to provoke races."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


PUSHERS = 4
PER_THREAD = 500
THREAD_PRIORITIES = 2


def push_while_pop(heap: ReadyHeap) -> list[Any]:
    """Push from several threads while one thread pops, and return the popped ids.

    Two priorities that the popper keeps emptying make levels disappear and
    reappear under the pushers, the most race-prone path.
    """
    start = threading.Barrier(PUSHERS + 1)
    pushers_done = threading.Event()
    popped: list[TaskHandle[Any]] = []

    def push(thread_index: int) -> None:
        start.wait()
        for n in range(PER_THREAD):
            heap.push(make_handle((thread_index, n), priority=n % THREAD_PRIORITIES))

    def pop() -> None:
        start.wait()
        while True:
            handle = heap.pop()
            if handle is not None:
                popped.append(handle)
            elif pushers_done.is_set():
                popped.extend(heap.drain())
                return

    pushers = [threading.Thread(target=push, args=(i,)) for i in range(PUSHERS)]
    popper = threading.Thread(target=pop)
    for thread in [*pushers, popper]:
        thread.start()

    for thread in pushers:
        thread.join()

    pushers_done.set()
    popper.join()
    return [handle.id for handle in popped]


@pytest.mark.usefixtures("fast_thread_switching")
@pytest.mark.parametrize("round_index", range(30))
def test_ready_threads_push_while_pop(round_index: int) -> None:
    heap = ReadyHeap()
    ids = push_while_pop(heap)
    pushed = {(t, n) for t in range(PUSHERS) for n in range(PER_THREAD)}

    assert len(ids) == len(pushed)
    assert set(ids) == pushed
    assert len(heap) == 0
    for thread_index in range(PUSHERS):
        for priority in range(THREAD_PRIORITIES):
            sequence = [
                n
                for t, n in ids
                if t == thread_index and n % THREAD_PRIORITIES == priority
            ]
            assert sequence == sorted(sequence)


# TimerHeap


def test_timer_pop_due_order() -> None:
    timers = TimerHeap()
    for task_id, when in [("c", 3.0), ("a", 1.0), ("b1", 2.0), ("b2", 2.0), ("d", 9.0)]:
        timers.push(when, make_handle(task_id))

    due = [h.id for h in timers.pop_due(2.0)]

    assert due == ["a", "b1", "b2"]
    assert len(timers) == 2
    assert timers.next_time() == 3.0


def test_timer_ties_push_order() -> None:
    timers = TimerHeap()
    for index in range(50):
        timers.push(5.0, make_handle(index, args=({"x": index},)))

    assert [h.id for h in timers.pop_due(5.0)] == list(range(50))


def test_timer_nothing_due() -> None:
    timers = TimerHeap()
    timers.push(10.0, make_handle("late"))

    assert timers.pop_due(9.999) == []
    assert len(timers) == 1
    assert timers.next_time() == 10.0


def test_timer_next_time_empty() -> None:
    timers = TimerHeap()

    assert timers.next_time() is None
    assert timers.pop_due(1e9) == []


def test_timer_clear() -> None:
    timers = TimerHeap()
    for task_id, when in [("b", 2.0), ("a", 1.0), ("c1", 3.0), ("c2", 3.0)]:
        timers.push(when, make_handle(task_id))

    cleared = [h.id for h in timers.clear()]

    assert cleared == ["a", "b", "c1", "c2"]
    assert len(timers) == 0
    assert timers.next_time() is None


@given(
    st.lists(st.integers(min_value=0, max_value=20), max_size=60), st.integers(0, 20)
)
def test_timer_pop_due_property(times: list[int], now: int) -> None:
    timers = TimerHeap()
    for index, when in enumerate(times):
        timers.push(float(when), make_handle(index))

    due = [h.id for h in timers.pop_due(float(now))]
    expected = sorted(
        (i for i, t in enumerate(times) if t <= now), key=times.__getitem__
    )
    rest = [h.id for h in timers.clear()]

    assert due == expected
    assert sorted(due + rest) == list(range(len(times)))


# TaskTable


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_table(
    max_count: int, max_age: float | None = None
) -> tuple[TaskTable, FakeClock]:
    clock = FakeClock()
    return TaskTable(max_count, max_age, clock), clock


def finish(table: TaskTable, task_id: Any) -> TaskHandle[Any]:
    """Add a task to the table, mark it final and retain it."""
    handle = make_handle(task_id)
    table.tasks[task_id] = handle
    handle._state = TaskState.SUCCEEDED
    table.retain(handle)
    return handle


def test_table_count_bound() -> None:
    table, _ = make_table(max_count=3)
    handles = [finish(table, i) for i in range(5)]

    assert table.retained == 3
    assert table.unfinished == 0
    assert table.evicted == 2
    assert table.get(0) is None
    assert table.get(1) is None
    assert table.get(2) is handles[2]
    assert table.get(4) is handles[4]
    assert 1 not in table
    assert 4 in table


def test_table_zero_count() -> None:
    table, _ = make_table(max_count=0)
    finish(table, "a")
    finish(table, "b")

    assert table.retained == 0
    assert table.evicted == 2
    assert table.get("a") is None
    assert "a" not in table
    assert table.tasks == {}


def test_table_keeps_unfinished_tasks() -> None:
    table, _ = make_table(max_count=1)
    pending = make_handle("pending")
    table.tasks["pending"] = pending
    finish(table, "a")
    finish(table, "b")

    assert table.unfinished == 1
    assert table.retained == 1
    assert table.get("pending") is pending
    assert table.get("a") is None
    assert "b" in table


def test_table_unknown_id() -> None:
    table, _ = make_table(max_count=10)
    finish(table, "known")

    assert table.get("unknown") is None
    assert table.get(12345) is None
    assert table.evicted == 0


def test_table_age_on_retain() -> None:
    table, clock = make_table(max_count=100, max_age=10.0)
    for index in range(5):
        clock.now = float(index)
        finish(table, index)

    clock.now = 12.5
    finish(table, "new")

    assert table._finished_at[-1] == 12.5
    assert table.retained == 3
    assert table.evicted == 3
    assert 2 not in table
    assert 3 in table
    assert "new" in table


def test_table_age_on_get() -> None:
    table, clock = make_table(max_count=100, max_age=10.0)
    old = finish(table, "old")
    clock.now = 5.0
    young = finish(table, "young")

    clock.now = 9.0
    assert table.get("old") is old
    clock.now = 12.0
    assert table.get("young") is young
    assert table.evicted == 1
    assert "old" not in table
    clock.now = 16.0
    assert table.get("young") is None
    assert table.evicted == 2
    assert table.retained == 0


def test_table_age_and_count() -> None:
    table, clock = make_table(max_count=2, max_age=10.0)
    for when, task_id in ((0.0, "a"), (1.0, "b"), (2.0, "c"), (12.5, "d")):
        clock.now = when
        finish(table, task_id)

    assert table.retained == 1
    assert table.evicted == 3
    assert "d" in table


@given(
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=0, max_value=80),
)
def test_table_keeps_last_retained(max_count: int, added: int) -> None:
    table, _ = make_table(max_count)
    for index in range(added):
        finish(table, index)
        assert table.retained <= max_count

    retained_ids = [i for i in range(added) if i in table]

    assert retained_ids == list(range(max(0, added - max_count), added))
    assert table.retained == min(added, max_count)
    assert table.evicted == added - table.retained
    assert table.finished_count == added
    assert table.unfinished == 0


@given(
    st.integers(min_value=0, max_value=6),
    st.lists(st.integers(min_value=0, max_value=4), max_size=60),
)
def test_table_age_and_count_model(max_count: int, steps: list[int]) -> None:
    """Each step advances the clock, then retains one task; both bounds hold."""
    max_age = 5.0
    table, clock = make_table(max_count, max_age)
    model: list[tuple[int, float]] = []  # (task id, finish time), oldest first
    for task_id, step in enumerate(steps):
        clock.now += step
        finish(table, task_id)
        model.append((task_id, clock.now))
        model = [(i, t) for i, t in model if t > clock.now - max_age]
        model = model[len(model) - min(len(model), max_count) :]

        assert sorted(table.tasks) == [i for i, _ in model]
        assert list(table._finished_at) == [t for _, t in model]
        assert table.evicted == task_id + 1 - len(model)
