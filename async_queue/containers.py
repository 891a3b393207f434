"""The ready heap, the timer heap and the table of tasks by id."""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .models import DELAYED, PENDING, WAITING_RETRY, TaskHandle, TaskId

__all__ = ("AgingHeap", "ReadyHeap", "TaskTable", "TimerHeap")

# Stale entries (tasks cancelled while pending) are dropped lazily by pop(),
# and all at once when no entry is pending any more. Past this many, and past
# half of all entries, the heap is rebuilt so that a queue whose pending tasks
# are cancelled in bulk does not keep their memory. A stale handle has
# already let go of its arguments (see AsyncTaskQueue._finish).
_COMPACT_MIN_STALE = 1024

# Emptied priority levels are kept, for reuse, while there are at most this
# many levels.
_KEPT_LEVELS = 32


class ReadyHeap:
    """A max-heap of pending tasks: highest priority first, FIFO among equals.

    The heap is a binary heap of priority levels, each a FIFO deque. A push or
    pop costs O(1) plus O(log L) for L distinct priorities present, and never
    compares tasks or their arguments.

    ``_lock`` guards ``_levels``, ``_order`` and the two counters. Every method
    takes it for its whole body, so each operation is atomic even when another
    thread pushes at the same moment as the event loop pops. Asyncio code on
    the loop thread gains nothing from it, since no method awaits.

    ``push`` and ``pop`` run once per task, so they call the lock's
    ``acquire`` and ``release`` in a ``try``/``finally``: that holds the lock
    for exactly the same span as a ``with`` block at half its cost.
    """

    __slots__ = (
        "_entries",
        "_levels",
        "_lock",
        "_order",
        "_stale",
        "_stale_by_level",
    )

    def __init__(self) -> None:
        self._levels: dict[int, deque[TaskHandle[Any]]] = {}
        self._order: list[int] = []  # negated priorities, one per level
        self._entries = 0  # live and stale entries together
        self._stale = 0  # entries whose task is no longer pending
        self._stale_by_level: dict[int, int] = {}  # the same, per priority
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Return the number of tasks that are still pending."""
        with self._lock:
            return self._entries - self._stale

    def push(self, handle: TaskHandle[Any]) -> None:
        """Add a pending task behind the tasks of its priority."""
        priority = handle._priority
        self._lock.acquire()
        try:
            level = self._levels.get(priority)
            if level is None:
                level = self._levels[priority] = deque()
            if not level:
                heapq.heappush(self._order, -priority)

            level.append(handle)
            self._entries += 1
        finally:
            self._lock.release()

    def pop(self) -> TaskHandle[Any] | None:
        """Remove and return the next pending task, or ``None`` if there is none."""
        self._lock.acquire()
        try:
            order = self._order
            while order:
                priority = -order[0]
                level = self._levels[priority]
                handle = level.popleft()
                if not level:
                    self._drop_empty(priority)

                if handle._state is PENDING:
                    self._entries -= 1
                    return handle

                self._forget_stale(priority)

            return None
        finally:
            self._lock.release()

    def _drop_empty(self, priority: int) -> None:
        # Called with the lock held, for the level on top that has just
        # emptied. Its deque stays for reuse while few levels exist, so that a
        # queue that keeps emptying and refilling one priority does not make
        # a new deque per task.
        heapq.heappop(self._order)
        if len(self._levels) > _KEPT_LEVELS:
            del self._levels[priority]

    def mark_stale(self, handle: TaskHandle[Any]) -> None:
        """Record that ``handle``, still in the heap, left the pending state.

        The caller changes the task's state first; ``pop()`` then skips it.
        """
        priority = handle._priority
        with self._lock:
            self._stale += 1
            stale = self._stale_by_level
            stale[priority] = stale.get(priority, 0) + 1
            if self._stale == self._entries:
                # Nothing is pending: an idle queue lets go of the tasks now.
                self._levels.clear()
                self._order.clear()
                stale.clear()
                self._entries = self._stale = 0
            elif self._stale >= _COMPACT_MIN_STALE and self._stale * 2 > self._entries:
                self._compact()

    def drain(self) -> list[TaskHandle[Any]]:
        """Remove every pending task and return them in start order."""
        drained = []
        while (handle := self.pop()) is not None:
            drained.append(handle)

        return drained

    def depth_by_priority(self) -> dict[int, int]:
        """Return the number of pending tasks at each priority, highest first.

        Costs O(L log L) for L priorities present, whatever the number of tasks.
        """
        with self._lock:
            depth = {}
            for priority in sorted(self._levels, reverse=True):
                count = len(self._levels[priority])
                count -= self._stale_by_level.get(priority, 0)
                if count:
                    depth[priority] = count

            return depth

    def last_to_start(self) -> TaskHandle[Any] | None:
        """Find the pending task that would start last; return it or ``None``.

        It is the task of the lowest priority present that entered the heap
        last. Stale entries at the back of a level, such as the tasks that
        earlier calls picked and the caller then dropped, are removed on the
        way, so each is walked past once. A call costs O(L log L) for L
        priorities, plus the stale entries it removes.
        """
        with self._lock:
            for priority in sorted(self._levels):
                level = self._levels[priority]
                # One entry stays, so that the level keeps its place in
                # _order, which only pop() and _compact() update.
                while len(level) > 1 and level[-1]._state is not PENDING:
                    level.pop()
                    self._forget_stale(priority)

                if level and level[-1]._state is PENDING:
                    return level[-1]

            return None

    def _forget_stale(self, priority: int) -> None:
        # Called with the lock held, for a stale entry just taken out.
        self._entries -= 1
        self._stale -= 1
        stale_here = self._stale_by_level[priority] - 1
        if stale_here:
            self._stale_by_level[priority] = stale_here
        else:
            del self._stale_by_level[priority]

    def oldest_queued_at(self) -> float | None:
        """Return the earliest ``_queued_at`` of the pending tasks, or ``None``.

        Each level is FIFO, so only the first live task of each is read.
        """
        with self._lock:
            oldest = None
            for level in self._levels.values():
                for handle in level:
                    if handle._state is PENDING:
                        if oldest is None or handle._queued_at < oldest:
                            oldest = handle._queued_at
                        break

            return oldest

    def _compact(self) -> None:
        # Called with the lock held.
        for priority in list(self._levels):
            live = deque(h for h in self._levels[priority] if h._state is PENDING)
            if live:
                self._levels[priority] = live
            else:
                del self._levels[priority]

        self._order = [-priority for priority in self._levels]
        heapq.heapify(self._order)
        self._entries -= self._stale
        self._stale = 0
        self._stale_by_level.clear()


class TimerHeap:
    """Tasks parked until a time on the event loop clock.

    Used only on the event loop thread, so it needs no lock. Entries of tasks
    cancelled while parked stay until their time comes and are then skipped.
    Past ``_COMPACT_MIN_STALE`` such entries, and past half of all entries,
    the heap is rebuilt without them. Delayed tasks cancelled in bulk then do
    not keep their arguments for the whole delay.
    """

    __slots__ = ("_counter", "_heap", "_stale")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TaskHandle[Any]]] = []
        self._counter = 0  # breaks ties between equal times without comparing tasks
        self._stale = 0  # entries of tasks cancelled while parked

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, handle: TaskHandle[Any]) -> None:
        """Park a task until ``when``."""
        self._counter += 1
        heapq.heappush(self._heap, (when, self._counter, handle))

    def next_time(self) -> float | None:
        """Return the earliest parked time, or ``None`` if nothing is parked."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[TaskHandle[Any]]:
        """Remove and return the tasks parked until ``now`` or earlier.

        The caller skips the tasks that are no longer parked.
        """
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            handle = heapq.heappop(heap)[2]
            if handle._state is not DELAYED and handle._state is not WAITING_RETRY:
                self._stale -= 1

            due.append(handle)

        return due

    def mark_stale(self) -> None:
        """Record that a parked task was cancelled; its entry is now stale."""
        self._stale += 1
        if self._stale >= _COMPACT_MIN_STALE and self._stale * 2 > len(self._heap):
            parked = (DELAYED, WAITING_RETRY)
            self._heap = [entry for entry in self._heap if entry[2]._state in parked]
            heapq.heapify(self._heap)
            self._stale = 0

    def clear(self) -> list[TaskHandle[Any]]:
        """Remove and return every parked task, earliest first."""
        handles = [entry[2] for entry in sorted(self._heap)]
        self._heap.clear()
        self._stale = 0
        return handles


class TaskTable:
    """Every task the queue can find by id: the unfinished ones, and the
    finished ones it retains, bounded by count and optionally by age.

    ``tasks`` maps each id to its handle. The retained tasks also sit in
    ``finished``, a FIFO in the order they finished, so that the oldest is
    evicted first, in O(1). With a maximum age, a second FIFO stores their
    finish times. Evicting a task only drops the queue's reference: a caller
    holding the handle keeps its outcome. Used only on the event loop thread,
    so it needs no lock.

    ``retain()`` keeps a finished task. The queue inlines it, since it runs
    once per task: it appends to ``finished`` and calls ``trim()`` once the
    length passes ``trim_above``.
    """

    __slots__ = (
        "_finished_at",
        "_max_age",
        "_max_count",
        "clock",
        "evicted",
        "finished",
        "tasks",
        "trim_above",
    )

    def __init__(
        self, max_count: int, max_age: float | None, clock: Callable[[], float]
    ) -> None:
        self.tasks: dict[TaskId, TaskHandle[Any]] = {}
        self.finished: deque[TaskHandle[Any]] = deque()
        self._finished_at: deque[float] = deque()  # loop times, with a max age
        self._max_count = max_count
        self._max_age = max_age
        # With a maximum age, every retained task needs its finish time.
        self.trim_above = max_count if max_age is None else -1
        self.clock = clock  # the event loop's time(), set by the queue on start
        self.evicted = 0

    @property
    def unfinished(self) -> int:
        """The number of tasks that are not final yet."""
        return len(self.tasks) - len(self.finished)

    @property
    def retained(self) -> int:
        """The number of finished tasks kept for lookup."""
        return len(self.finished)

    @property
    def finished_count(self) -> int:
        """The number of tasks that have finished, retained or evicted."""
        return len(self.finished) + self.evicted

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.tasks

    def retain(self, handle: TaskHandle[Any]) -> None:
        """Keep a task that has just finished, evicting the oldest past the bounds."""
        self.finished.append(handle)
        if len(self.finished) > self.trim_above:
            self.trim()

    def trim(self) -> None:
        """Record the finish time of the newest task, then enforce the bounds."""
        if self._max_age is None:
            # One past max_count, since trim_above is max_count: a queue that
            # runs many tasks comes here for each, so evict inline.
            del self.tasks[self.finished.popleft()._id]
            self.evicted += 1
            return

        now = self.clock()
        self._finished_at.append(now)
        self.evict_expired(now)
        if len(self.finished) > self._max_count:  # max_count 0 evicts the newest
            self._evict_oldest()

    def get(self, task_id: TaskId) -> TaskHandle[Any] | None:
        """Return the task with this id, unfinished or retained, or ``None``."""
        self.expire()
        return self.tasks.get(task_id)

    def expire(self) -> None:
        """Evict the tasks past the maximum age, if one is set."""
        if self._max_age is not None:
            self.evict_expired(self.clock())

    def evict_expired(self, now: float) -> None:
        """Evict the tasks that finished ``max_age`` or more seconds ago."""
        assert self._max_age is not None
        cutoff = now - self._max_age
        finished_at = self._finished_at
        while finished_at and finished_at[0] <= cutoff:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        del self.tasks[self.finished.popleft()._id]
        if self._max_age is not None:
            self._finished_at.popleft()
        self.evicted += 1


class AgingHeap:
    """A max-heap of pending tasks whose priority rises while they wait.

    A task pushed at time ``t`` with priority ``p`` has the effective priority
    ``p + rate * (now - t)``. The rate is the same for every task, so the
    order of two waiting tasks never changes over time, and the static key
    ``p - rate * t`` orders them: a push or pop costs O(log n). Equal keys
    pop in push order.

    The key is exact, so any int is a priority and no rounding makes two
    different keys equal. A float rate or time is a binary fraction, so every
    key is an int numerator over the common denominator
    ``rate_denominator * 2**_shift``. ``_shift`` is the most fraction bits of
    any push time so far. A time with more bits scales every stored key up
    first, at O(n), which happens at most once per extra bit.
    ``_lock`` guards every field, as in ``ReadyHeap``.
    """

    __slots__ = (
        "_counter",
        "_entries",
        "_heap",
        "_lock",
        "_rate",
        "_rate_denominator",
        "_rate_numerator",
        "_shift",
        "_stale",
        "clock",
    )

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._rate_numerator, self._rate_denominator = rate.as_integer_ratio()
        self._shift = 0
        self.clock = clock  # the event loop's time(), set by the queue on start
        self._heap: list[tuple[int, int, TaskHandle[Any]]] = []
        self._counter = 0
        self._entries = 0
        self._stale = 0
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        """The priority points per second that a waiting task gains."""
        return self._rate

    def __len__(self) -> int:
        with self._lock:
            return self._entries - self._stale

    def push(self, handle: TaskHandle[Any]) -> None:
        """Add a pending task, aging from now."""
        now = self.clock()
        self._lock.acquire()  # not `with`: see ReadyHeap
        try:
            key = self._key(handle._priority, now)
            self._counter += 1
            heapq.heappush(self._heap, (-key, self._counter, handle))
            self._entries += 1
        finally:
            self._lock.release()

    def _key(self, priority: int, now: float) -> int:
        """Return the numerator of ``priority - rate * now`` (see the class).

        Called with the lock held, since it may scale the stored keys.
        """
        time_numerator, time_denominator = now.as_integer_ratio()
        shift = time_denominator.bit_length() - 1  # the denominator is 2**shift
        if shift > self._shift:
            self._scale_keys(shift)

        whole = (priority * self._rate_denominator) << self._shift
        aged = (self._rate_numerator * time_numerator) << (self._shift - shift)
        return whole - aged

    def _scale_keys(self, shift: int) -> None:
        # Multiplying every key by the same power of two keeps their order,
        # so the list stays a valid heap.
        extra = shift - self._shift
        self._heap = [(key << extra, count, task) for key, count, task in self._heap]
        self._shift = shift

    def pop(self) -> TaskHandle[Any] | None:
        """Remove and return the task of highest effective priority, or ``None``."""
        self._lock.acquire()
        try:
            heap = self._heap
            while heap:
                handle = heapq.heappop(heap)[2]
                self._entries -= 1
                if handle._state is PENDING:
                    return handle

                self._stale -= 1

            return None
        finally:
            self._lock.release()

    def mark_stale(self, handle: TaskHandle[Any]) -> None:
        """Record that ``handle``, still in the heap, left the pending state."""
        with self._lock:
            self._stale += 1
            if self._stale == self._entries:
                self._heap.clear()  # nothing is pending, as in ReadyHeap
                self._entries = self._stale = 0
            elif self._stale >= _COMPACT_MIN_STALE and self._stale * 2 > self._entries:
                self._heap = [e for e in self._heap if e[2]._state is PENDING]
                heapq.heapify(self._heap)
                self._entries = len(self._heap)
                self._stale = 0

    def drain(self) -> list[TaskHandle[Any]]:
        """Remove every pending task and return them in start order."""
        drained = []
        while (handle := self.pop()) is not None:
            drained.append(handle)

        return drained

    def depth_by_priority(self) -> dict[int, int]:
        """Return the number of pending tasks at each base priority, highest first."""
        with self._lock:
            depth: dict[int, int] = {}
            for _, _, handle in self._heap:
                if handle._state is PENDING:
                    depth[handle._priority] = depth.get(handle._priority, 0) + 1

            return dict(sorted(depth.items(), reverse=True))

    def oldest_queued_at(self) -> float | None:
        """Return the earliest ``_queued_at`` of the pending tasks, or ``None``."""
        with self._lock:
            times = [e[2]._queued_at for e in self._heap if e[2]._state is PENDING]
            return min(times, default=None)
