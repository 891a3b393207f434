"""A stateful test of the scheduling features used together.

Hypothesis drives one queue with delayed tasks, ``max_pending``, dedup keys,
aging, the rate limit, pause, resume, resize, cancellation, dead letters and
requeue, on a virtual clock that only the machine moves. Hooks re-enter the
queue, and the retry_on predicate reads its counts. After every step, and
inside every hook, the machine checks what the docs promise. The counts of
``stats()`` add up to the tasks submitted, and each task has one final state.
A dedup key maps only to the unfinished task of that key. Submitters wait
only while the queue is full, and are let in in order of arrival. Every start
picks the highest effective priority.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Hashable
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
    QueueClosedError,
    QueueFullError,
    RetryAfter,
    RetryPolicy,
    ShutdownMode,
    TaskEvent,
    TaskHandle,
    TaskNotFoundError,
    TaskState,
)
from async_queue.testing import VirtualClockLoop
from tests.helpers import assert_state_counts, counted_tasks

T = TypeVar("T")

FINAL = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)
FINAL_EVENTS = ("on_succeeded", "on_failed", "on_cancelled", "on_dropped")
DEDUP_KEYS: tuple[Hashable | None, ...] = (None, None, "a", "b")


class FixedClockLoop(VirtualClockLoop):
    """A virtual clock that starts at the same time on every run."""

    def __init__(self) -> None:
        super().__init__(autojump=None)

    def time(self) -> float:
        return 1000.0 + self.offset


@dataclass(eq=False)
class Task:
    """The machine's record of one task it submitted."""

    behaviour: str
    priority: int
    dedup_key: Hashable | None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    handle: TaskHandle[str] | None = None


class Checker(Hook):
    """Record every event and check each start against the waiting tasks."""

    def __init__(self, machine: SchedulingMachine) -> None:
        self.machine = machine
        self.events: dict[Any, list[str]] = {}
        self.errors: list[str] = []

    def _record(self, name: str, event: TaskEvent) -> None:
        self.events.setdefault(event.task_id, []).append(name)
        self.machine.check_counts(name)

    def on_submitted(self, event: TaskEvent) -> None:
        self._record("on_submitted", event)
        self.machine.hook_action("on_submitted", event)

    def on_started(self, event: TaskEvent) -> None:
        self._record("on_started", event)
        self.machine.check_start(event)
        self.machine.hook_action("on_started", event)

    def on_retry_scheduled(self, event: TaskEvent) -> None:
        self._record("on_retry_scheduled", event)

    def on_succeeded(self, event: TaskEvent) -> None:
        self._record("on_succeeded", event)
        self.machine.hook_action("on_succeeded", event)

    def on_failed(self, event: TaskEvent) -> None:
        self._record("on_failed", event)

    def on_cancelled(self, event: TaskEvent) -> None:
        self._record("on_cancelled", event)

    def on_dropped(self, event: TaskEvent) -> None:
        self._record("on_dropped", event)


class SchedulingMachine(RuleBasedStateMachine):
    """Random submissions, cancels, clock moves and pool changes on one queue."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = FixedClockLoop()
        self.loop.slow_callback_duration = float("inf")
        self.queue: AsyncTaskQueue | None = None
        self.tasks: list[Task] = []
        self.by_handle: dict[int, Task] = {}
        self.submitters: list[asyncio.Task[TaskHandle[str] | None]] = []
        self.admitted_order: list[int] = []
        self.checker = Checker(self)
        self.errors: list[str] = []
        self.max_pending: int | None = None
        self.aging_rate: float | None = None
        self.action = "none"
        self.hook_calls = 0
        self.hook_submits = 0
        self.stopped = False

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def settle(self) -> None:
        async def steps() -> None:
            for _ in range(30):
                await asyncio.sleep(0)

        self.run(steps())

    @property
    def live(self) -> AsyncTaskQueue:
        assert self.queue is not None
        return self.queue

    def handles(self) -> list[TaskHandle[str]]:
        return [task.handle for task in self.tasks if task.handle is not None]

    # Checks made from the hook

    def check_start(self, event: TaskEvent) -> None:
        """Check that no waiting task outranks the one that just started."""
        queue = self.live
        started = queue.task(event.task_id)
        now = self.loop.time()
        rate = self.aging_rate or 0.0
        mine = started._priority + rate * (now - started._queued_at)
        for handle in self.handles():
            if handle is started or handle.state is not TaskState.PENDING:
                continue

            theirs = handle._priority + rate * (now - handle._queued_at)
            if theirs > mine + 1e-9:
                self.errors.append(
                    f"task {event.task_id} (effective {mine}) started before "
                    f"task {handle.id} (effective {theirs})"
                )

        stats = queue.stats()
        if stats.running > queue.max_workers:
            self.errors.append(f"{stats.running} run with {queue.max_workers} workers")

    def hook_action(self, name: str, event: TaskEvent) -> None:
        """Re-enter the queue from a hook, with the action drawn at the start."""
        self.hook_calls += 1
        if self.hook_calls % 3 or self.stopped:
            return

        queue = self.live
        action = self.action
        if action == "cancel" and name == "on_submitted":
            queue.cancel(event.task_id)
        elif action == "resize" and name == "on_started":
            queue.resize(1 + self.hook_calls % 3)
        elif action == "pause" and name == "on_started":
            queue.pause()
            queue.resume()
        elif action == "submit" and name == "on_succeeded" and not queue.closed:
            # A few only: an endless chain of them would starve lower
            # priorities, as strict priorities allow, and join() would wait.
            if self.hook_submits >= 5:
                return
            self.hook_submits += 1
            task = Task("quick", event.priority, None)
            try:
                handle = queue.submit_nowait(self._function(task), priority=0)
            except QueueFullError:
                return
            self._admit(task, handle)

    def check_counts(self, where: str) -> None:
        """Check that the counts of stats() add up to the tasks submitted."""
        stats = self.live.stats()
        counted = counted_tasks(stats)
        if counted != stats.submitted:
            self.errors.append(f"in {where}: {counted} counted, {stats}")

    def retry_on(self, exc: BaseException) -> bool:
        self.check_counts("retry_on")
        return True

    # Setup

    @initialize(
        workers=st.integers(1, 3),
        max_pending=st.sampled_from([None, 1, 2, 4]),
        aging_rate=st.sampled_from([None, 0.5]),
        rate_limit=st.sampled_from([None, 2.0]),
        max_retries=st.integers(0, 2),
        max_dead_letters=st.integers(0, 3),
        max_results=st.integers(0, 4),
        action=st.sampled_from(["none", "cancel", "resize", "pause", "submit"]),
    )
    def start(
        self,
        workers: int,
        max_pending: int | None,
        aging_rate: float | None,
        rate_limit: float | None,
        max_retries: int,
        max_dead_letters: int,
        max_results: int,
        action: str,
    ) -> None:
        self.action = action
        self.max_pending = max_pending
        self.aging_rate = aging_rate
        policy = RetryPolicy(
            max_retries=max_retries,
            base_delay=1.0,
            jitter="none",
            retry_on=self.retry_on,
        )
        self.queue = AsyncTaskQueue(
            workers,
            retry=policy,
            max_pending=max_pending,
            aging_rate=aging_rate,
            rate_limit=rate_limit,
            max_dead_letters=max_dead_letters,
            max_results=max_results,
            hooks=[self.checker],
        )
        self.run(self.live.start())

    # Rules

    def _function(self, task: Task) -> Any:
        async def body() -> str:
            if task.behaviour == "fail":
                raise ValueError("planned failure")

            if task.behaviour == "retry_after":
                raise RetryAfter(0.75)

            if task.behaviour == "overrun":
                await asyncio.Event().wait()

            if task.behaviour == "hang":
                await task.release.wait()
            else:
                await asyncio.sleep(0.5)

            return "done"

        return body

    def _admit(self, task: Task, handle: TaskHandle[str]) -> None:
        known = self.by_handle.get(id(handle))
        if known is None:
            task.handle = handle
            self.by_handle[id(handle)] = task
            self.tasks.append(task)
        elif task.dedup_key is None or known.dedup_key != task.dedup_key:
            self.errors.append(f"dedup returned task {handle.id} for {task}")

    @precondition(lambda self: not self.stopped)
    @rule(
        behaviour=st.sampled_from(["quick", "fail", "hang", "retry_after", "overrun"]),
        priority=st.integers(-2, 2),
        delay=st.sampled_from([None, None, 0.0, 1.0, 3.0]),
        dedup_key=st.sampled_from(DEDUP_KEYS),
        wait=st.booleans(),
    )
    def submit(
        self,
        behaviour: str,
        priority: int,
        delay: float | None,
        dedup_key: Hashable | None,
        wait: bool,
    ) -> None:
        task = Task(behaviour, priority, dedup_key)
        fn = self._function(task)
        if not wait:
            try:
                handle = self.live.submit_nowait(
                    fn,
                    priority=priority,
                    delay=delay,
                    dedup_key=dedup_key,
                    timeout=1.5 if behaviour == "overrun" else None,
                )
            except QueueFullError:
                self._check_full_is_true()
                return

            self._admit(task, handle)
            return

        arrival = len(self.submitters)

        async def submit() -> TaskHandle[str]:
            handle = await self.live.submit(
                fn,
                priority=priority,
                delay=delay,
                dedup_key=dedup_key,
                timeout=1.5 if behaviour == "overrun" else None,
            )
            self._admit(task, handle)
            if dedup_key is None:
                self.admitted_order.append(arrival)
            return handle

        self.submitters.append(self.loop.create_task(submit()))
        self.settle()

    def _check_full_is_true(self) -> None:
        queue = self.live
        stats = queue.stats()
        waiting = stats.pending + stats.delayed
        assert self.max_pending is not None
        if waiting < self.max_pending and not queue._space_waiters:
            self.errors.append(
                f"QueueFullError with {waiting} waiting of {self.max_pending}"
            )

    @precondition(lambda self: not self.stopped and bool(self.tasks))
    @rule(index=st.integers(0, 100))
    def cancel(self, index: int) -> None:
        handle = self.tasks[index % len(self.tasks)].handle
        assert handle is not None

        async def cancel() -> tuple[bool, bool]:
            return handle.done(), handle.cancel()

        was_done, accepted = self.run(cancel())
        assert accepted is not was_done
        self.settle()

    @precondition(lambda self: not self.stopped and bool(self.submitters))
    @rule(index=st.integers(0, 100))
    def cancel_submitter(self, index: int) -> None:
        """Give up a submission, which passes any room it got to the next."""
        self.submitters[index % len(self.submitters)].cancel()
        self.settle()

    @precondition(lambda self: not self.stopped and bool(self.tasks))
    @rule(index=st.integers(0, 100))
    def release(self, index: int) -> None:
        self.tasks[index % len(self.tasks)].release.set()
        self.settle()

    @precondition(lambda self: not self.stopped)
    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.0]))
    def advance(self, seconds: float) -> None:
        self.loop.advance(seconds)
        self.settle()

    @precondition(lambda self: not self.stopped)
    @rule()
    def join_quiet(self) -> None:
        """join() returns once every earlier task is final, with time moving."""
        for task in self.tasks:
            task.release.set()
        self.live.resume()
        earlier = self.handles()
        joining = self.loop.create_task(self.live.join())
        for _ in range(100):
            # Release the tasks that submitters waiting for room add too:
            # one may hang in the only worker, ahead of a retry join() awaits.
            for task in self.tasks:
                task.release.set()
            self.loop.advance(1.0)
            self.settle()
            if joining.done():
                break
        assert joining.done(), "join() did not return"
        for handle in earlier:
            assert handle.done(), handle

    @precondition(lambda self: not self.stopped)
    @rule(paused=st.booleans())
    def pause_or_resume(self, paused: bool) -> None:
        if paused:
            self.live.pause()
        else:
            self.live.resume()
        self.settle()

    @precondition(lambda self: not self.stopped)
    @rule(workers=st.integers(1, 3))
    def resize(self, workers: int) -> None:
        self.live.resize(workers)
        self.settle()

    @precondition(lambda self: not self.stopped and bool(self.live.dead_letters()))
    @rule(index=st.integers(0, 100))
    def requeue(self, index: int) -> None:
        letters = self.live.dead_letters()
        letter = letters[index % len(letters)]
        task = Task("quick", letter.priority, letter.dedup_key)

        async def requeue() -> TaskHandle[str] | None:
            try:
                handle = await self.live.requeue(letter.task_id)
            except TaskNotFoundError:
                # A newer letter evicted it (max_dead_letters) before this
                # task ran; the letter must be gone, not lost.
                ids = [kept.task_id for kept in self.live.dead_letters()]
                assert letter.task_id not in ids
                return None

            self._admit(task, handle)
            return handle

        self.submitters.append(self.loop.create_task(requeue()))
        self.settle()

    @precondition(lambda self: not self.stopped)
    @rule(mode=st.sampled_from(ShutdownMode))
    def stop(self, mode: ShutdownMode) -> None:
        self.live.resume()
        if mode is ShutdownMode.DRAIN:
            for task in self.tasks:
                task.release.set()

        stop = self.live.stop(mode, timeout=5.0, grace=1.0)
        stopping = self.loop.create_task(stop)
        for _ in range(200):
            self.loop.advance(1.0)
            self.settle()
            if stopping.done():
                break

        assert stopping.done(), "stop() did not return"
        stopping.result()
        self.stopped = True
        for submitter in self.submitters:
            assert submitter.done(), "a submitter still waits after stop()"
            if submitter.cancelled():
                continue
            error = submitter.exception()
            assert error is None or isinstance(error, QueueClosedError), error

    @precondition(lambda self: self.stopped)
    @rule()
    def after_stop(self) -> None:
        """Every task of a stopped queue is final."""
        for handle in self.handles():
            assert handle.done(), handle

    # Invariants

    @invariant()
    def no_errors(self) -> None:
        assert self.errors == []
        assert self.checker.errors == []

    @invariant()
    def counts_add_up(self) -> None:
        if self.queue is None:
            return

        stats = self.live.stats()
        assert_state_counts(stats, [handle.state for handle in self.handles()])
        depth: dict[int, int] = {}
        for handle in self.handles():
            if handle.state is TaskState.PENDING:
                depth[handle.priority] = depth.get(handle.priority, 0) + 1
        assert stats.depth_by_priority == tuple(sorted(depth.items(), reverse=True))
        now = self.loop.time()
        waits = [
            now - handle._queued_at
            for handle in self.handles()
            if handle.state is TaskState.PENDING
        ]
        assert stats.oldest_wait == max(waits, default=0.0)
        assert stats.retained <= self.live._table._max_count
        assert stats.dead_letters <= self.live._dead_letters._max_count

    @invariant()
    def one_final_event_each(self) -> None:
        for handle in self.handles():
            events = self.checker.events.get(handle.id, [])
            finals = [name for name in events if name in FINAL_EVENTS]
            if handle.state in FINAL:
                assert len(finals) == 1, (handle, events)
            else:
                assert finals == [], (handle, events)

    @invariant()
    def dedup_keys_map_unfinished_tasks(self) -> None:
        if self.queue is None:
            return

        for key in ("a", "b"):
            unfinished = [
                task.handle
                for task in self.tasks
                if task.dedup_key == key
                and task.handle is not None
                and not task.handle.done()
            ]
            assert len(unfinished) <= 1, (key, unfinished)
            mapped = self.live._dedup.get(key)
            assert mapped is (unfinished[0] if unfinished else None), key

        assert len(self.live._dedup) == len(self.live._dedup_keys)

    @invariant()
    def submitters_wait_only_when_full(self) -> None:
        if self.queue is None or self.stopped:
            return

        waiting = [s for s in self.submitters if not s.done()]
        queue = self.live
        assert queue._reserved == 0
        if waiting:
            assert self.max_pending is not None
            stats = queue.stats()
            assert stats.pending + stats.delayed >= self.max_pending, stats

    @invariant()
    def submitters_admitted_in_order(self) -> None:
        assert self.admitted_order == sorted(self.admitted_order)

    def teardown(self) -> None:
        try:
            if self.queue is not None and not self.stopped:
                self.stop(ShutdownMode.CANCEL)
        finally:
            self.loop.close()


SchedulingMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_scheduling_machine = SchedulingMachine.TestCase
