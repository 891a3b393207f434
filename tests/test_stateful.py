"""A stateful test: hypothesis drives a real queue beside a reference model.

The machine owns a ``VirtualClockLoop`` and runs each rule to completion on
it. A hook and the task bodies report every transition to the model, which
tracks each task's state, the queue's counts and the order in which workers
pick tasks. The only transition no hook reports is a retry timer moving a task
from ``WAITING_RETRY`` to ``PENDING``, so the model detects it by reading the
handle at each hook call and at each rule's end. Once ``stop()`` has run, the
machine only checks its report and that nothing changes any more.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import pytest
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
    Jitter,
    QueueClosedError,
    RetryPolicy,
    ShutdownMode,
    ShutdownReport,
    TaskCancelledError,
    TaskEvent,
    TaskHandle,
    TaskState,
)
from async_queue.testing import VirtualClockLoop

T = TypeVar("T")

PENDING = TaskState.PENDING
WAITING_RETRY = TaskState.WAITING_RETRY
RUNNING = TaskState.RUNNING
SUCCEEDED = TaskState.SUCCEEDED
FAILED = TaskState.FAILED
CANCELLED = TaskState.CANCELLED
QUEUED = (PENDING, WAITING_RETRY)

# Virtual seconds that the clock driver moves per step when the loop has
# nothing ready, and the loop iterations it first waits for ready work.
CLOCK_STEP = 0.25
IDLE_ITERATIONS = 10


class Behaviour(enum.Enum):
    """What each attempt of a task does."""

    SUCCEED = "succeed"
    """Sleep for the latency, then return the task's index."""
    FAIL = "fail"
    """Sleep for the latency, then raise ``ValueError``."""
    FLAKY = "flaky"
    """Raise ``ValueError`` on the first ``failures`` attempts, then succeed."""
    HANG = "hang"
    """Wait for the task's release event, then return the task's index."""
    OVERRUN = "overrun"
    """Wait forever, so that only the task's timeout ends an attempt."""


@dataclass(eq=False)
class ModelTask:
    """The model's record of one submitted task."""

    index: int
    behaviour: Behaviour
    priority: int
    max_retries: int
    failures: int
    latency: float
    timeout: float | None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    handle: TaskHandle[int] | None = None
    state: TaskState | None = None
    rank: int = 0
    """Order of the task's last entry into the ready heap, lowest first. Tasks
    that a retry timer moved in the same interval between two observations
    share a rank."""
    attempts: list[int] = field(default_factory=list)
    """``handle.attempts`` as each attempt read it when it started."""
    in_attempt: bool = False
    cancel_accepted: bool = False
    first_final: TaskState | None = None
    early_failure: bool = False
    """Whether the task failed with retries left, which only a stop allows."""

    @property
    def live_handle(self) -> TaskHandle[int]:
        assert self.handle is not None, f"task {self.index} has no handle yet"
        return self.handle

    def expected_final(self) -> tuple[TaskState, int] | None:
        """Return the final state and attempt count if nothing cancels the task.

        ``None`` for a hanging task, whose end depends on its release.
        """
        last_attempt = self.max_retries + 1
        if self.behaviour is Behaviour.SUCCEED:
            return SUCCEEDED, 1

        if self.behaviour is Behaviour.FLAKY and self.failures < last_attempt:
            return SUCCEEDED, self.failures + 1

        if self.behaviour is Behaviour.HANG:
            return None

        return FAILED, last_attempt

    def expected_error(self) -> type[BaseException]:
        """Return the exception type of a failed attempt."""
        if self.behaviour is Behaviour.OVERRUN:
            return TimeoutError

        return ValueError


# Transitions that each hook event may make, from the model's state.
ALLOWED_FROM: dict[str, tuple[TaskState | None, ...]] = {
    "on_submitted": (None,),
    "on_started": QUEUED,
    "on_retry_scheduled": (RUNNING,),
    "on_succeeded": (RUNNING,),
    "on_failed": (RUNNING,),
    "on_cancelled": (PENDING, WAITING_RETRY, RUNNING),
    "on_dropped": QUEUED,
}


class Model:
    """The expected state of every task, kept up to date by ``ModelHook``."""

    def __init__(self) -> None:
        self.tasks: list[ModelTask] = []
        self.by_id: dict[object, ModelTask] = {}
        self.submitting: ModelTask | None = None
        self.errors: list[str] = []
        self.retries = 0
        self.dropped = 0
        self.stop_mode: ShutdownMode | None = None
        self._rank = 0

    @property
    def stopping(self) -> bool:
        """Whether stop() has been called."""
        return self.stop_mode is not None

    @property
    def starts_nothing(self) -> bool:
        """Whether stop() was called in a mode that starts no new attempt."""
        return self.stop_mode not in (None, ShutdownMode.DRAIN)

    def error(self, message: str) -> None:
        # Hooks and task bodies cannot raise into the test, because the queue
        # logs a hook's exception and fails a task that raises.
        self.errors.append(message)

    def next_rank(self) -> int:
        self._rank += 1
        return self._rank

    def observe(self) -> int:
        """Detect tasks that a retry timer moved into the ready heap.

        Returns the rank given to them, which is higher than that of every
        entry observed so far.
        """
        rank = self.next_rank()
        for task in self.tasks:
            if task.state is WAITING_RETRY and task.live_handle.state is PENDING:
                task.state = PENDING
                task.rank = rank

        return rank

    def move(self, event: str, task: ModelTask, state: TaskState) -> None:
        if task.state not in ALLOWED_FROM[event]:
            self.error(f"task {task.index}: {event} in model state {task.state}")

        task.state = state

    def attempt_started(self, task: ModelTask) -> None:
        """Check the start of an attempt, from inside the task's coroutine.

        No task of higher priority, and none of equal priority that entered
        the ready heap earlier, may be waiting when a worker picks this one.
        """
        handle = task.live_handle
        if task.in_attempt:
            self.error(f"task {task.index}: two attempts run at once")

        task.in_attempt = True
        number = handle.attempts
        if number != len(task.attempts) + 1:
            self.error(f"task {task.index}: attempt {number} after {task.attempts}")

        task.attempts.append(number)
        if task.state is not RUNNING or handle.state is not RUNNING:
            self.error(f"task {task.index}: started in {task.state}/{handle.state}")

        for other in self.tasks:
            if other.state is not PENDING:
                continue

            if other.live_handle.state is not PENDING:
                self.error(f"task {other.index}: modelled pending, is {other.handle}")

            ahead = other.priority > task.priority or (
                other.priority == task.priority and other.rank < task.rank
            )
            if ahead:
                self.error(
                    f"task {task.index} (priority {task.priority}, rank "
                    f"{task.rank}) started while task {other.index} (priority "
                    f"{other.priority}, rank {other.rank}) was waiting"
                )


class ModelHook(Hook):
    """Report each task event to the model."""

    def __init__(self, model: Model, queue_closed: Any) -> None:
        self.model = model
        self.queue_closed = queue_closed

    def _task(self, event: TaskEvent) -> ModelTask:
        self.model.observe()
        return self.model.by_id[event.task_id]

    def on_submitted(self, event: TaskEvent) -> None:
        self.model.observe()
        task = self.model.submitting
        assert task is not None
        self.model.by_id[event.task_id] = task
        self.model.move("on_submitted", task, PENDING)
        task.rank = self.model.next_rank()

    def on_started(self, event: TaskEvent) -> None:
        model = self.model
        rank = model.observe()
        task = model.by_id[event.task_id]
        if task.state is WAITING_RETRY:
            # Moved by the retry timer and picked before any observation.
            task.rank = rank

        model.move("on_started", task, RUNNING)
        if model.starts_nothing:
            model.error(f"task {task.index} started after stop({model.stop_mode})")

    def on_retry_scheduled(self, event: TaskEvent) -> None:
        task = self._task(event)
        self.model.retries += 1
        if self.model.starts_nothing:
            self.model.error(f"task {task.index} retried after stop()")

        assert event.delay is not None
        if event.delay > 0:
            self.model.move("on_retry_scheduled", task, WAITING_RETRY)
        else:
            self.model.move("on_retry_scheduled", task, PENDING)
            task.rank = self.model.next_rank()

    def on_succeeded(self, event: TaskEvent) -> None:
        self.model.move("on_succeeded", self._task(event), SUCCEEDED)

    def on_failed(self, event: TaskEvent) -> None:
        task = self._task(event)
        self.model.move("on_failed", task, FAILED)
        if event.attempts <= task.max_retries:
            task.early_failure = True
            if not self.queue_closed():
                self.model.error(f"task {task.index} failed with retries left")

    def on_timed_out(self, event: TaskEvent) -> None:
        task = self._task(event)
        if task.behaviour is not Behaviour.OVERRUN or task.state is not RUNNING:
            self.model.error(f"task {task.index} timed out in {task.state}")

    def on_cancelled(self, event: TaskEvent) -> None:
        self.model.move("on_cancelled", self._task(event), CANCELLED)

    def on_dropped(self, event: TaskEvent) -> None:
        self.model.dropped += 1
        if not self.model.stopping:
            self.model.error(f"task {event.task_id!r} dropped before stop()")

        self.model.move("on_dropped", self._task(event), CANCELLED)


def make_body(model: Model, task: ModelTask) -> Any:
    """Return the coroutine function that runs each attempt of ``task``."""

    async def body() -> int:
        model.attempt_started(task)
        try:
            behaviour = task.behaviour
            if behaviour is Behaviour.HANG:
                await task.release.wait()
            elif behaviour is Behaviour.OVERRUN:
                await asyncio.Event().wait()
            elif task.latency:
                await asyncio.sleep(task.latency)

            failing = behaviour is Behaviour.FAIL or (
                behaviour is Behaviour.FLAKY and len(task.attempts) <= task.failures
            )
            if failing:
                raise ValueError(f"task {task.index} attempt {len(task.attempts)}")

            return task.index
        finally:
            task.in_attempt = False

    return body


def library_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    """Return the unfinished asyncio tasks that the library created on ``loop``."""
    return [
        task
        for task in asyncio.all_tasks(loop)
        if task.get_name().startswith("async_queue")
    ]


class TaskSpec(NamedTuple):
    """The parameters of one task that the machine submits."""

    behaviour: Behaviour
    priority: int
    max_retries: int
    failures: int
    latency: float
    timeout: float


TASK_SPEC = st.builds(
    TaskSpec,
    behaviour=st.sampled_from(Behaviour),
    priority=st.integers(0, 3),
    max_retries=st.integers(0, 2),
    failures=st.integers(1, 3),
    latency=st.sampled_from([0.0, 1.0, 3.0]),
    timeout=st.sampled_from([2.0, 5.0]),
)
TASK_INDEX = st.integers(0, 10_000)


class FrozenClockLoop(VirtualClockLoop):
    """A virtual clock that only ``advance()`` moves, not real time.

    Every run of a rule sequence then fires the same timers, which
    hypothesis needs to replay and shrink a failure. The machine never lets
    the loop idle on a timer, which on this clock would never come due.
    """

    def time(self) -> float:
        return self.offset


class StopArguments(NamedTuple):
    """The arguments of a stop() call, and whether to release hanging tasks."""

    mode: ShutdownMode
    timeout: float | None
    grace: float
    release: bool


STOP_ARGUMENTS = st.builds(
    StopArguments,
    mode=st.sampled_from(ShutdownMode),
    timeout=st.sampled_from([None, 0.5, 3.0, 20.0]),
    grace=st.sampled_from([0.0, 1.0, 5.0]),
    release=st.booleans(),
)


class QueueMachine(RuleBasedStateMachine):
    """Random submits, cancels, releases, clock moves, awaits and one stop."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = FrozenClockLoop()
        # Debug mode times callbacks with loop.time(), which the clock driver
        # moves on purpose, so it would report every clock step as slow.
        self.loop.slow_callback_duration = float("inf")
        self.model = Model()
        self.report: ShutdownReport | None = None
        self.workers = 0
        self.base_delay = 0.0
        self.stop_after = 0
        self.final_stop = StopArguments(ShutdownMode.CANCEL, None, 5.0, True)
        self.rng = random.Random(7)
        self.queue: AsyncTaskQueue | None = None

    # Running the loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def _settle(self, iterations: int = IDLE_ITERATIONS) -> None:
        for _ in range(iterations):
            await asyncio.sleep(0)

    async def _advance(self, seconds: float) -> None:
        self.loop.advance(seconds)
        await self._settle()

    @property
    def live_queue(self) -> AsyncTaskQueue:
        assert self.queue is not None
        return self.queue

    @property
    def stopped(self) -> bool:
        return self.report is not None

    def _pick(self, index: int) -> ModelTask:
        return self.model.tasks[index % len(self.model.tasks)]

    # Rules before stop()

    @initialize(
        workers=st.integers(1, 3),
        quick_retries=st.booleans(),
        stop_after=st.integers(0, 12),
        specs=st.lists(TASK_SPEC, max_size=8),
        final_stop=STOP_ARGUMENTS,
    )
    def start(
        self,
        workers: int,
        quick_retries: bool,
        stop_after: int,
        specs: list[TaskSpec],
        final_stop: StopArguments,
    ) -> None:
        """Start the queue and submit a first batch of tasks.

        Also draw how many tasks to submit before a stop may run, so that
        most stops find work queued and running, and the arguments of the
        stop that ends a run in which the stop rule never ran.
        """
        self.stop_after = stop_after
        self.final_stop = final_stop
        self.base_delay = 0.0 if quick_retries else 4.0
        hook = ModelHook(self.model, lambda: self.live_queue.closed)
        self.queue = AsyncTaskQueue(workers, hooks=[hook])
        self.workers = workers
        self.run(self.live_queue.start())
        self.submit(specs)

    @precondition(lambda self: self.queue is not None and not self.stopped)
    @rule(specs=st.lists(TASK_SPEC, min_size=1, max_size=5))
    def submit(self, specs: list[TaskSpec]) -> None:
        """Submit tasks back to back, in one step of the loop."""
        model = self.model
        queue = self.live_queue

        async def submit() -> None:
            for spec in specs:
                task = ModelTask(
                    index=len(model.tasks),
                    behaviour=spec.behaviour,
                    priority=spec.priority,
                    max_retries=spec.max_retries,
                    failures=spec.failures,
                    latency=spec.latency,
                    timeout=timeout_for(spec.behaviour, spec.timeout),
                )
                policy = RetryPolicy(
                    max_retries=spec.max_retries,
                    base_delay=self.base_delay,
                    jitter=Jitter.FULL,
                    rng=self.rng,
                )
                model.submitting = task
                task.handle = queue.submit_nowait(
                    make_body(model, task),
                    priority=spec.priority,
                    timeout=task.timeout,
                    retry=policy,
                )
                model.submitting = None
                model.tasks.append(task)

        self.run(submit())

    @precondition(lambda self: self.model.tasks and not self.stopped)
    @rule(index=TASK_INDEX)
    def cancel(self, index: int) -> None:
        task = self._pick(index)

        async def cancel() -> None:
            was_final = task.live_handle.done()
            accepted = task.live_handle.cancel("cancelled by the test")
            assert accepted is not was_final, (task.index, was_final)
            task.cancel_accepted = task.cancel_accepted or accepted

        self.run(cancel())

    @precondition(lambda self: self.model.tasks and not self.stopped)
    @rule(index=TASK_INDEX)
    def release(self, index: int) -> None:
        self._pick(index).release.set()

    @precondition(lambda self: self.queue is not None and not self.stopped)
    @rule(iterations=st.integers(1, 5))
    def step(self, iterations: int) -> None:
        self.run(self._settle(iterations))

    @precondition(lambda self: self.queue is not None and not self.stopped)
    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 6.0]))
    def advance(self, seconds: float) -> None:
        self.run(self._advance(seconds))

    @precondition(lambda self: self.queue is not None and not self.stopped)
    @rule()
    def run_until_idle(self) -> None:
        """Move the clock until only hanging tasks are left unfinished."""

        def idle() -> bool:
            for task in self.model.tasks:
                state = task.live_handle.state
                if state is WAITING_RETRY:
                    return False

                if state is RUNNING and task.behaviour is not Behaviour.HANG:
                    return False

            return self.live_queue.stats().pending == 0 or all(
                t.behaviour is Behaviour.HANG
                for t in self.model.tasks
                if t.live_handle.state is RUNNING
            )

        async def drive() -> None:
            for _ in range(400):
                await self._settle()
                if idle():
                    return

                self.loop.advance(1.0)

            raise AssertionError("the queue did not become idle in 400 s")

        self.run(drive())

    @precondition(lambda self: self.model.tasks and not self.stopped)
    @rule(index=TASK_INDEX)
    def await_handle(self, index: int) -> None:
        """Await a handle for up to 20 virtual seconds, then give up waiting."""
        task = self._pick(index)
        handle = task.live_handle

        async def await_it() -> None:
            awaiter = asyncio.ensure_future(_outcome(handle))
            for _ in range(20):
                await self._settle()
                if awaiter.done():
                    break

                self.loop.advance(1.0)

            if not awaiter.done():
                # Giving up on the wait must leave the task alone, which the
                # invariants check.
                awaiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await awaiter

                return

            check_outcome(task, awaiter.result())

        self.run(await_it())

    @precondition(
        lambda self: not self.stopped and len(self.model.tasks) >= self.stop_after
    )
    @rule(arguments=STOP_ARGUMENTS)
    def stop(self, arguments: StopArguments) -> None:
        mode, timeout, grace, release = arguments
        if mode is not ShutdownMode.CANCEL and timeout is None:
            release = True  # otherwise a hanging task keeps the stop waiting

        stop = self._stop_with_clock(mode, timeout, grace, release)
        report, at_stop, elapsed = self.run(stop)
        self.report = report

        assert library_tasks(self.loop) == []
        if timeout is not None or mode is ShutdownMode.CANCEL:
            limit = (timeout or 0.0) + grace + 2 * CLOCK_STEP
            assert elapsed <= limit, f"stop() took {elapsed} s, over {limit} s"

        # No task here suppresses a cancel, so a cancel stop, and a graceful
        # one once its deadline passes, ends within a few loop iterations.
        if report.escalated:
            assert timeout is not None
            assert timeout - 0.01 <= elapsed <= timeout + 2 * CLOCK_STEP, elapsed
        elif mode is ShutdownMode.CANCEL:
            assert elapsed <= 2 * CLOCK_STEP, elapsed

        check_report(self.model, report, mode, timeout, at_stop)

    async def _stop_with_clock(
        self, mode: ShutdownMode, timeout: float | None, grace: float, release: bool
    ) -> tuple[ShutdownReport, dict[ModelTask, TaskState], float]:
        """Call stop() while a driver moves the clock whenever the loop idles.

        Returns the report, each task's state at the call and the virtual
        seconds the call took.
        """
        queue = self.live_queue
        model = self.model
        done = asyncio.Event()

        async def drive_clock() -> None:
            if release:
                for task in model.tasks:
                    task.release.set()

            while not done.is_set():
                await self._settle()
                self.loop.advance(CLOCK_STEP)

        driver = asyncio.ensure_future(drive_clock())
        # The snapshot and the call run in one step of the loop, so that the
        # snapshot is the state that stop() finds.
        model.observe()
        at_stop = {t: t.live_handle.state for t in model.tasks}
        model.stop_mode = mode
        started_at = self.loop.time()
        try:
            async with asyncio.timeout(10_000):
                report = await queue.stop(mode, timeout=timeout, grace=grace)
        finally:
            elapsed = self.loop.time() - started_at
            done.set()
            await driver

        assert await queue.stop() is report
        return report, at_stop, elapsed

    # Rules after stop()

    @precondition(lambda self: self.stopped)
    @rule(seconds=st.sampled_from([0.0, 10.0]))
    def wait_after_stop(self, seconds: float) -> None:
        """Nothing changes on a stopped queue, and stop() returns its report."""
        queue = self.live_queue

        async def wait() -> None:
            await self._advance(seconds)
            assert await queue.stop("drain") is self.report

        self.run(wait())
        assert library_tasks(self.loop) == []

    @precondition(lambda self: self.stopped)
    @rule(spec=TASK_SPEC)
    def submit_after_stop(self, spec: TaskSpec) -> None:
        """A stopped queue rejects a task and counts nothing."""
        queue = self.live_queue
        task = ModelTask(-1, *spec)

        async def submit() -> None:
            with pytest.raises(QueueClosedError):
                queue.submit_nowait(make_body(self.model, task), priority=spec.priority)

        self.run(submit())

    @precondition(lambda self: self.stopped and self.model.tasks)
    @rule(index=TASK_INDEX)
    def cancel_after_stop(self, index: int) -> None:
        """Cancelling a task of a stopped queue changes nothing."""
        handle = self._pick(index).live_handle

        async def cancel() -> None:
            assert handle.cancel("after the stop") is False

        self.run(cancel())

    @precondition(lambda self: self.stopped and self.model.tasks)
    @rule(index=TASK_INDEX)
    def await_after_stop(self, index: int) -> None:
        """Awaiting a handle of a stopped queue returns its outcome at once."""
        task = self._pick(index)
        awaiting = asyncio.ensure_future(_outcome(task.live_handle), loop=self.loop)
        self.run(self._settle(3))
        assert awaiting.done(), task
        check_outcome(task, awaiting.result())

    # Invariants

    @invariant()
    def model_matches_queue(self) -> None:
        if self.queue is None:
            return

        model = self.model
        model.observe()
        assert model.errors == []
        states = []
        for task in model.tasks:
            handle = task.live_handle
            states.append(handle.state)
            assert handle.state is task.state, (task, handle)
            if handle.state is CANCELLED and not model.stopping:
                assert task.cancel_accepted, task
            assert handle.attempts == len(task.attempts), task
            if handle.done():
                if task.first_final is None:
                    task.first_final = handle.state
                assert handle.state is task.first_final, task

        stats = self.live_queue.stats()
        assert stats.submitted == len(model.tasks)
        assert stats.pending == states.count(PENDING)
        assert stats.waiting_retry == states.count(WAITING_RETRY)
        assert stats.delayed == 0
        assert stats.running == states.count(RUNNING)
        assert stats.running <= self.workers
        assert stats.succeeded == states.count(SUCCEEDED)
        assert stats.failed == states.count(FAILED)
        assert stats.cancelled == states.count(CANCELLED)
        assert stats.retries == model.retries
        assert stats.dropped == model.dropped
        assert stats.workers == (0 if self.stopped else self.workers)

    @invariant()
    def final_outcomes_match_behaviour(self) -> None:
        for task in self.model.tasks:
            handle = task.live_handle
            if handle.done():
                check_outcome(task, _settled(handle))

    def teardown(self) -> None:
        try:
            if self.queue is not None and not self.queue.closed:
                self.stop(self.final_stop)
        finally:
            self.loop.close()


def timeout_for(behaviour: Behaviour, timeout: float) -> float | None:
    """Return the timeout of a task, which only an overrunning task reaches.

    A hanging task gets none, because it may wait longer than any timeout
    for its release. The others get one they cannot reach, which still arms
    the queue's deadline timer.
    """
    if behaviour is Behaviour.OVERRUN:
        return timeout

    if behaviour is Behaviour.HANG:
        return None

    return 60.0


async def _outcome(handle: TaskHandle[int]) -> tuple[str, object]:
    try:
        return "result", await handle
    except TaskCancelledError as exc:
        return "cancelled", exc
    except Exception as exc:
        return "error", exc


def _settled(handle: TaskHandle[int]) -> tuple[str, object]:
    if handle.state is SUCCEEDED:
        return "result", handle.result()

    if handle.state is CANCELLED:
        return "cancelled", handle.exception()

    return "error", handle.exception()


def check_outcome(task: ModelTask, outcome: tuple[str, object]) -> None:
    """Check a final task's outcome against its behaviour."""
    kind, value = outcome
    handle = task.live_handle
    if kind == "cancelled":
        assert handle.state is CANCELLED, task
        assert isinstance(value, TaskCancelledError), task
        return

    expected = task.expected_final()
    if kind == "result":
        assert handle.state is SUCCEEDED, task
        assert value == task.index, task
        assert expected is None or expected == (SUCCEEDED, handle.attempts), task
        return

    assert handle.state is FAILED, task
    assert type(value) is task.expected_error(), (task, value)
    if expected is not None and not task.early_failure:
        assert expected == (FAILED, handle.attempts), task


def check_report(
    model: Model,
    report: ShutdownReport,
    mode: ShutdownMode,
    timeout: float | None,
    at_stop: dict[ModelTask, TaskState],
) -> None:
    """Check that the report accounts for every task that stop() ended."""
    assert report.mode is mode
    assert report.abandoned == ()
    if timeout is None:
        assert report.escalated is False

    lists = [report.never_started, report.retries_cancelled, report.interrupted]
    listed = [h for handles in lists for h in handles]
    assert len(listed) == len(set(listed)), "a task is listed twice"
    for handle in listed:
        assert handle.state is CANCELLED, handle

    for handle in report.never_started:
        assert handle.attempts == 0, handle

    for handle in report.retries_cancelled:
        assert handle.attempts > 0, handle

    for task in model.tasks:
        handle = task.live_handle
        assert handle.done(), task
        if handle.attempts == 0 and not task.cancel_accepted:
            assert handle in report.never_started, task

        if handle.state is CANCELLED and not task.cancel_accepted:
            assert handle in listed, task

        if task.early_failure:
            assert mode is not ShutdownMode.DRAIN or report.escalated, task

    if mode is ShutdownMode.DRAIN and not report.escalated:
        assert listed == []
        return

    if mode is ShutdownMode.DRAIN:
        return  # the tasks still unfinished at the deadline are not known here

    if mode is ShutdownMode.FINISH_RUNNING and not report.escalated:
        assert report.interrupted == ()

    running = {t.live_handle for t, state in at_stop.items() if state is RUNNING}
    assert set(report.interrupted) <= running

    # Queued tasks are cancelled at the call, before any worker moves on.
    queued = {t.live_handle for t, state in at_stop.items() if state in QUEUED}
    assert set(report.dropped) == queued


QueueMachine.TestCase.settings = settings(
    max_examples=75,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueMachine = QueueMachine.TestCase
