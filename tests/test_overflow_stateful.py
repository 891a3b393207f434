"""A stateful test of the overflow policies on the virtual clock.

Hypothesis picks a policy and a bound, then mixes submissions of random
priorities (some delayed, some with a dedup_key) with cancels, pause and
resume, resizes, clock moves and releases of running tasks, and ends with
one stop(). Some submissions come with an on_submitted hook that submits,
cancels or pauses from inside. Tasks never fail and have no retries, so
nothing may take the queue past max_pending. After every step the machine
checks the bound, the counts of ``stats()`` and each task's event sequence.
At each drop, until a hook first re-enters, it checks that the new task was
dropped under "drop_newest", and that no pending task had a lower priority
than the dropped one under "drop_lowest".
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from async_queue import (
    AsyncTaskQueue,
    Hook,
    Overflow,
    QueueClosedError,
    QueueFullError,
    RetryPolicy,
    ShutdownMode,
    TaskEvent,
    TaskHandle,
    TaskId,
    TaskState,
)
from async_queue.testing import VirtualClockLoop

T = TypeVar("T")

PENDING = TaskState.PENDING
DELAYED = TaskState.DELAYED
RUNNING = TaskState.RUNNING
SUCCEEDED = TaskState.SUCCEEDED
CANCELLED = TaskState.CANCELLED
FINAL_EVENTS = ("succeeded", "failed", "cancelled", "dropped")
SETTLE_ITERATIONS = 10


@dataclass
class Submission:
    """One call to a submit method and the gate its task waits on."""

    priority: int
    dedup_key: str | None
    gate: asyncio.Event = field(default_factory=asyncio.Event)


class EventRecorder(Hook):
    """Records each task's events and checks every drop as it happens."""

    def __init__(self, machine: OverflowMachine) -> None:
        self.machine = machine
        self.events: dict[TaskId, list[str]] = {}
        self.drops: list[TaskId] = []

    def _add(self, event: TaskEvent, name: str) -> None:
        self.events.setdefault(event.task_id, []).append(name)

    def on_submitted(self, event: TaskEvent) -> None:
        self._add(event, "submitted")
        self.machine.track(event.task_id)
        self.machine.reenter(event)

    def on_started(self, event: TaskEvent) -> None:
        self._add(event, "started")

    def on_succeeded(self, event: TaskEvent) -> None:
        self._add(event, "succeeded")

    def on_failed(self, event: TaskEvent) -> None:
        self._add(event, "failed")

    def on_cancelled(self, event: TaskEvent) -> None:
        self._add(event, "cancelled")

    def on_dropped(self, event: TaskEvent) -> None:
        self._add(event, "dropped")
        self.drops.append(event.task_id)
        if not (self.machine.stopping or self.machine.reentered):
            self.machine.check_drop(event)


async def hold(gate: asyncio.Event) -> str:
    await gate.wait()
    return "done"


class OverflowMachine(RuleBasedStateMachine):
    """Random submissions to a bounded queue under a random overflow policy."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualClockLoop()
        self.recorder = EventRecorder(self)
        self.queue: AsyncTaskQueue | None = None
        self.overflow = Overflow.WAIT
        self.max_pending = 1
        self.handles: dict[TaskId, TaskHandle[str]] = {}
        self.first_final: dict[TaskId, TaskState] = {}
        self.gates: list[asyncio.Event] = []
        self.dedup_owner: dict[str, TaskHandle[str]] = {}
        self.waiting: list[asyncio.Task[TaskHandle[str]]] = []
        self.stopping = False
        # The order in which tasks entered the ready heap. The delayed tasks
        # that one clock move makes due share a number.
        self.entries = 0
        self.entered: dict[TaskId, int] = {}
        # What the next on_submitted does to the queue from inside the hook.
        self.reentry: str | None = None
        # Whether a hook has re-entered, which delays on_dropped events past
        # later submissions, so that they no longer show the queue as it was.
        self.reentered = False
        # Whether resize() shrank the pool since the queue was last within
        # max_pending, and the size before it.
        self.shrunk = False
        self.workers_before_shrink = 0

    # Running the loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def _settle(self) -> None:
        for _ in range(SETTLE_ITERATIONS):
            await asyncio.sleep(0)

    @property
    def live_queue(self) -> AsyncTaskQueue:
        assert self.queue is not None
        return self.queue

    def track(self, task_id: TaskId) -> None:
        """Record the handle of a task that the queue has just accepted."""
        handle = self.handles[task_id] = self.live_queue.task(task_id)
        if handle.state is PENDING:
            self.entries += 1
            self.entered[task_id] = self.entries

    # Setup

    @initialize(
        overflow=st.sampled_from(Overflow),
        max_pending=st.integers(1, 4),
        workers=st.integers(1, 2),
    )
    def start(self, overflow: Overflow, max_pending: int, workers: int) -> None:
        self.overflow = overflow
        self.max_pending = max_pending
        self.queue = AsyncTaskQueue(
            workers,
            max_pending=max_pending,
            overflow=overflow,
            retry=RetryPolicy(max_retries=0),
            hooks=[self.recorder],
        )
        self.run(self.live_queue.start())

    # Submissions

    def _is_full(self, starts_now: bool) -> bool:
        """Return whether a new task finds no room.

        One that starts now needs none while a worker is free to start it:
        idle, or woken and not yet running, beyond the pending tasks and the
        rooms promised to woken submitters. Not while the workers are held
        back by pause() or a shrink.
        """
        stats = self.live_queue.stats()
        if stats.pending + stats.delayed < self.max_pending:
            return False

        queue = self.live_queue
        if not starts_now or queue._gated:
            return True

        idle = queue._waking + len(queue._idle)
        return idle - stats.pending - queue._reserved <= 0

    def _unfinished_duplicate(self, key: str | None) -> TaskHandle[str] | None:
        if key is None:
            return None

        owner = self.dedup_owner.get(key)
        if owner is None or owner.done():
            return None

        return owner

    def _expected_victims(self, priority: int) -> set[TaskId]:
        """Return the pending tasks one of which "drop_lowest" must drop.

        It is the task of the lowest priority that entered the ready heap
        last. Delayed tasks that became due in the same clock move entered
        in an order the machine does not track, so any of them may be it.
        """
        pending = [h for h in self.handles.values() if h.state is PENDING]
        if not pending:
            return set()

        lowest = min(h.priority for h in pending)
        if lowest >= priority:
            return set()

        candidates = [h.id for h in pending if h.priority == lowest]
        last = max(self.entered[task_id] for task_id in candidates)
        return {task_id for task_id in candidates if self.entered[task_id] == last}

    async def _submit_at_once(
        self, submission: Submission, delay: float | None, nowait: bool
    ) -> None:
        """Submit without waiting and check the outcome against the policy."""
        queue = self.live_queue
        full = self._is_full(starts_now=delay is None) or bool(self.waiting)
        duplicate = self._unfinished_duplicate(submission.dedup_key)
        victims: set[TaskId] = set()
        if full and self.overflow is Overflow.DROP_LOWEST:
            victims = self._expected_victims(submission.priority)
        before = {task_id: h.state for task_id, h in self.handles.items()}
        rejects = self.overflow is Overflow.RAISE or (
            self.overflow is Overflow.WAIT and nowait
        )

        try:
            if nowait:
                handle = queue.submit_nowait(
                    hold,
                    submission.gate,
                    priority=submission.priority,
                    delay=delay,
                    dedup_key=submission.dedup_key,
                )
            else:
                handle = await queue.submit(
                    hold,
                    submission.gate,
                    priority=submission.priority,
                    delay=delay,
                    dedup_key=submission.dedup_key,
                )
        except QueueFullError:
            assert full, "QueueFullError from a queue with room"
            assert duplicate is None, "a duplicate needs no room"
            assert rejects, f"QueueFullError under {self.overflow}"
            return

        if duplicate is not None:
            assert handle is duplicate
            return

        if full:
            assert not rejects, "a full queue accepted a task"
        if submission.dedup_key is not None and not handle.done():
            self.dedup_owner[submission.dedup_key] = handle

        drops_new = full and self.overflow in (
            Overflow.DROP_NEWEST,
            Overflow.DROP_LOWEST,
        )
        if drops_new and not victims:
            assert handle.state is CANCELLED, "the new task should be dropped"
        else:
            assert handle.state in (PENDING, DELAYED)

        changed = {
            task_id
            for task_id, state in before.items()
            if self.handles[task_id].state is not state
        }
        if victims:
            assert len(changed) == 1, f"tasks {changed} changed, not one"
            assert changed <= victims, f"task {changed} dropped, not of {victims}"
        else:
            assert changed == set(), f"tasks {changed} changed"

    @rule(
        priority=st.integers(-2, 2),
        delay=st.sampled_from([None, None, None, 1.0, 2.0]),
        dedup_key=st.sampled_from([None, None, None, "report"]),
        nowait=st.booleans(),
    )
    @precondition(lambda self: not self.stopping)
    def submit(
        self, priority: int, delay: float | None, dedup_key: str | None, nowait: bool
    ) -> None:
        submission = Submission(priority, dedup_key)
        self.gates.append(submission.gate)
        if self.overflow is Overflow.WAIT and not nowait:
            # The submitter may wait for room: it runs as a task of its own.
            waiter = self.loop.create_task(
                self.live_queue.submit(
                    hold, submission.gate, priority=priority, delay=delay
                )
            )
            self.waiting.append(waiter)
            self.run(self._settle())
            return

        self.run(self._submit_at_once(submission, delay, nowait))
        self.run(self._settle())

    @rule(
        priorities=st.lists(st.integers(-2, 2), min_size=2, max_size=6),
        dedup_key=st.sampled_from([None, "report"]),
    )
    @precondition(lambda self: not self.stopping)
    def submit_burst(self, priorities: list[int], dedup_key: str | None) -> None:
        for priority in priorities:
            submission = Submission(priority, dedup_key)
            self.gates.append(submission.gate)
            self.run(self._submit_at_once(submission, None, nowait=True))

        self.run(self._settle())

    @rule(
        action=st.sampled_from(["submit", "cancel new", "cancel oldest", "pause"]),
        priority=st.integers(-2, 2),
    )
    @precondition(lambda self: not self.stopping)
    def submit_reentering(self, action: str, priority: int) -> None:
        """Submit a task whose on_submitted hook acts on the queue."""
        self.reentry = action
        submission = Submission(priority, None)
        self.gates.append(submission.gate)
        try:
            self.live_queue.submit_nowait(hold, submission.gate, priority=priority)
        except QueueFullError:
            assert self.overflow in (Overflow.WAIT, Overflow.RAISE)
        finally:
            self.reentry = None

        self.run(self._settle())

    def reenter(self, event: TaskEvent) -> None:
        """Act on the queue from inside on_submitted, once per armed rule."""
        action, self.reentry = self.reentry, None
        if action is None:
            return

        self.reentered = True
        queue = self.live_queue
        if action == "submit":
            gate = asyncio.Event()
            self.gates.append(gate)
            try:
                queue.submit_nowait(hold, gate, priority=event.priority + 1)
            except QueueFullError:
                assert self.overflow in (Overflow.WAIT, Overflow.RAISE)
        elif action == "cancel new":
            queue.cancel(event.task_id)
        elif action == "cancel oldest":
            pending = [h for h in self.handles.values() if h.state is PENDING]
            if pending:
                pending[0].cancel()
        else:
            queue.pause()

    # Other operations

    @rule(data=st.data())
    @precondition(lambda self: bool(self.handles))
    def cancel(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.handles, key=str)))
        handle = self.handles[task_id]
        was_live = not handle.done()
        accepted = handle.cancel()
        assert accepted is was_live
        self.run(self._settle())

        if accepted:
            assert handle.state is CANCELLED

    @rule(data=st.data())
    @precondition(lambda self: bool(self.gates))
    def release(self, data: st.DataObject) -> None:
        gate = data.draw(st.sampled_from(self.gates))
        gate.set()
        self.run(self._settle())

    @rule()
    @precondition(lambda self: not self.stopping)
    def pause(self) -> None:
        self.live_queue.pause()
        self.run(self._settle())

    @rule()
    def resume(self) -> None:
        self.live_queue.resume()
        self.run(self._settle())

    @rule(workers=st.integers(1, 3))
    @precondition(lambda self: not self.stopping)
    def resize(self, workers: int) -> None:
        if workers < self.live_queue.max_workers:
            self.shrunk = True
            self.workers_before_shrink = self.live_queue.max_workers
        self.live_queue.resize(workers)
        self.run(self._settle())

    @rule()
    def advance_clock(self) -> None:
        delayed = [h for h in self.handles.values() if h.state is DELAYED]
        self.loop.advance(1.0)
        self.run(self._settle())

        self.entries += 1
        for handle in delayed:
            if handle.state is not DELAYED:
                self.entered[handle.id] = self.entries

    @rule(mode=st.sampled_from(ShutdownMode))
    @precondition(lambda self: not self.stopping and len(self.handles) >= 8)
    def stop(self, mode: ShutdownMode) -> None:
        self.stopping = True
        for gate in self.gates:
            gate.set()  # or a drain would wait for them forever

        self.run(self.live_queue.stop(mode))
        self.run(self._settle())
        self._collect_waiters()
        assert self.waiting == []
        assert all(h.done() for h in self.handles.values())

    # Checks

    def _collect_waiters(self) -> None:
        still_waiting = []
        for waiter in self.waiting:
            if not waiter.done():
                still_waiting.append(waiter)
            elif waiter.exception() is not None:
                assert isinstance(waiter.exception(), QueueClosedError)

        self.waiting = still_waiting

    @invariant()
    def bound_holds(self) -> None:
        if self.queue is None:
            return

        self._collect_waiters()
        stats = self.live_queue.stats()
        waiting = stats.pending + stats.delayed
        if waiting <= self.max_pending:
            self.shrunk = False  # nothing admitted for a retired worker is left

        limit = self.max_pending
        if stats.paused or self.shrunk:
            # A task admitted for a free worker stays pending when pause()
            # comes before the worker starts it, or resize() retires that
            # worker: at most one per worker, until the backlog drains.
            limit += max(stats.workers, self.workers_before_shrink)
        assert waiting <= limit

    @invariant()
    def counts_add_up(self) -> None:
        if self.queue is None:
            return

        stats = self.live_queue.stats()
        accounted = (
            stats.pending
            + stats.running
            + stats.delayed
            + stats.waiting_retry
            + stats.succeeded
            + stats.failed
            + stats.cancelled
        )
        assert stats.submitted == accounted
        assert stats.submitted == len(self.handles)
        assert stats.dropped == len(self.recorder.drops)
        assert stats.failed == 0

        states = [h.state for h in self.handles.values()]
        assert stats.pending == states.count(PENDING)
        assert stats.delayed == states.count(DELAYED)
        assert stats.running == states.count(RUNNING)
        assert stats.succeeded == states.count(SUCCEEDED)
        assert stats.cancelled == states.count(CANCELLED)

    @invariant()
    def each_task_ends_once(self) -> None:
        for task_id, handle in self.handles.items():
            events = self.recorder.events[task_id]
            assert events[0] == "submitted"
            finals = [e for e in events if e in FINAL_EVENTS]
            if handle.done():
                assert len(finals) == 1, f"task {task_id}: {events}"
                assert events[-1] == finals[0], f"task {task_id}: {events}"
                first = self.first_final.setdefault(task_id, handle.state)
                assert handle.state is first
            else:
                assert finals == [], f"live task {task_id}: {events}"

    def check_drop(self, event: TaskEvent) -> None:
        """Check, as a task is dropped, that the policy chose it."""
        assert self.overflow in (Overflow.DROP_NEWEST, Overflow.DROP_LOWEST)
        if self.overflow is Overflow.DROP_NEWEST:
            # The hook tracked the new task just before.
            assert event.task_id == list(self.handles)[-1]
        else:
            pending = [h for h in self.handles.values() if h.state is PENDING]
            for handle in pending:
                assert handle.priority >= event.priority, (
                    f"dropped task {event.task_id} (priority {event.priority}) "
                    f"while task {handle.id} (priority {handle.priority}) waits"
                )

    def teardown(self) -> None:
        try:
            if self.queue is not None and not self.stopping:
                self.stop(ShutdownMode.CANCEL)
        finally:
            self.loop.close()


OverflowMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOverflowMachine = OverflowMachine.TestCase
