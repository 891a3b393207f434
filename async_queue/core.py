"""The queue: submission, the worker pool, retries, timeouts and shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import functools
import inspect
import logging
import math
import sys
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from types import FunctionType, TracebackType
from typing import Any, Literal, NoReturn, SupportsIndex, TypeVar, TypeVarTuple, final

from . import _checks
from ._context import CURRENT_WORKER
from ._frames import strip_frames
from .containers import AgingHeap, ReadyHeap, TaskTable, TimerHeap
from .deadletters import DeadLetter, DeadLetterStore
from .errors import (
    DuplicateTaskIdError,
    QueueClosedError,
    QueueFullError,
    QueueStateError,
    RetryAfter,
    TaskNotFoundError,
)
from .hooks import (
    AnyHook,
    LoggingHook,
    TaskEvent,
    call_hooks,
    collect_callbacks,
    log_hook_failure,
    new_event,
)
from .models import (
    CANCELLED,
    DELAYED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    WAITING_RETRY,
    BoundCall,
    CancelReason,
    Overflow,
    OverflowName,
    QueueStats,
    ShutdownMode,
    ShutdownReport,
    TaskExtras,
    TaskHandle,
    TaskId,
    TaskSettings,
    TimeSummary,
    _format_int,
    extras_of,
    function_name,
    new_handle,
    seq_of,
)
from .policies import Jitter, RetryPolicy
from .schedules import Schedule
from .testing import _TestMode

__all__ = ("AsyncTaskQueue",)

logger = logging.getLogger("async_queue")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Task ids that the warning about workers that all await their own queue
# names at most.
_BLOCKED_IDS_SHOWN = 5

# Seconds of the loop's clock between two warnings about overflow drops. The
# drops in between are counted, and the next warning gives their number.
_DROP_LOG_INTERVAL = 10.0

# Distinct (timeout, retry policy) pairs whose task settings are kept for reuse.
# The cache empties when full: past this many pairs in turn, each misses.
_SETTINGS_CACHE_SIZE = 64

# asyncio's loops run a timer callback up to one clock tick early, so a
# deadline within one tick of "now" counts as reached; see _timer_slack().
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution
# uvloop 0.23 keeps time in whole milliseconds and ran timers up to 0.4 ms
# early by its own clock in the tests of this project.
_COARSE_TIMER_SLACK = 0.0005
# The part of a token that rounding can take from one that is exactly due:
# two readings near 33,000 s differ by up to 7e-12 s too little, which at
# 2,000 tokens per second is 1.5e-8 of a token.
_TOKEN_ROUNDING = 1e-6


class _Unset(enum.Enum):
    UNSET = "unset"


_UNSET = _Unset.UNSET
_FLOAT_MAX = sys.float_info.max
_YEAR = 365 * 24 * 3600.0
_CO_COROUTINE = inspect.CO_COROUTINE
_RESIZE_ADVICE = "the pool has a fixed size; call pause() to stop starting tasks"
_WORKERS_ADVICE = "the pool has a fixed size: pass the number of workers to run at once"


class _Lifecycle(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


_ACCEPTING = _Lifecycle.RUNNING


class _Worker:
    """One worker coroutine and the task it is running."""

    __slots__ = (
        "awaiting_attempt",
        "awaiting_for",
        "awaits",
        "cancels",
        "current",
        "deadline",
        "retire",
        "task",
        "waiter",
        "woken",
    )

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.current: TaskHandle[Any] | None = None
        self.deadline: float | None = None  # loop time at which `current` times out
        self.waiter: asyncio.Future[None] | None = None  # set while idle
        self.woken = False  # woken for a new task, and not yet running again
        self.awaits = 0  # handles of this queue that `awaiting_for` awaits
        self.awaiting_for: TaskHandle[Any] | None = None  # the task that awaits
        self.awaiting_attempt = 0  # and its attempt
        self.cancels = 0  # cancel requests this queue made on `task` for `current`
        self.retire = False  # exit before the next task: the pool shrank


class _Summary:
    """Total and maximum of a series of durations, in seconds.

    The queue counts the durations itself: it already counts the attempts
    that start and those that are running.
    """

    __slots__ = ("max", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def snapshot(self, count: int) -> TimeSummary:
        return TimeSummary(count, self.total, self.max)


# An event that a hook caused, with the callbacks still to see it.
_PendingEvent = tuple[list[Callable[[TaskEvent], object]], TaskEvent]


class _Join:
    __slots__ = ("exclude_seq", "future", "last_seq", "remaining")

    def __init__(
        self,
        remaining: int,
        last_seq: int,
        future: asyncio.Future[None],
        exclude_seq: int,
    ) -> None:
        self.remaining = remaining
        self.last_seq = last_seq
        self.future = future
        self.exclude_seq = exclude_seq  # the calling task's own, or 0


@final
class AsyncTaskQueue:
    """A priority queue of coroutine tasks run by a bounded pool of workers.

    Higher ``priority`` starts first; equal priorities start in submission
    order. A failed task is retried by its ``RetryPolicy``, waiting out its
    backoff on a timer without holding a worker. A task over its timeout is
    cancelled and fails with ``TimeoutError``.

    Use it as an async context manager, which starts the workers and, on exit,
    drains the queue (or cancels everything if the block raised)::

        async with AsyncTaskQueue(max_workers=8) as queue:
            handle = await queue.submit(fetch, url, priority=5)
            body = await handle

    All methods must be called from the event loop that ran ``start()``.

    Args:
        max_workers: number of tasks that run at once, at least 1.
        retry: the default retry policy; ``RetryPolicy()`` if omitted.
        timeout: the default per-attempt timeout in seconds, or ``None``.
        max_results: finished tasks kept for lookup by id, oldest evicted first.
        result_ttl: if set, finished tasks are also evicted after this many
            seconds.
        max_pending: if set, the most tasks that may wait to start (pending
            or delayed). ``await submit()`` then waits for room, in order of
            arrival, and ``submit_nowait()`` raises ``QueueFullError``.
        overflow: what a submission to a full queue does: ``"wait"`` as
            above, ``"raise"`` (``QueueFullError`` from every submit method),
            ``"drop_newest"`` (the new task comes back ``CANCELLED``) or
            ``"drop_lowest"`` (the pending task of lowest priority is
            dropped for a new task of higher priority). Needs ``max_pending``.
        max_dead_letters: failed tasks kept by ``dead_letters()``, oldest
            evicted first.
        on_dead_letter: called with the ``DeadLetter`` of each task that ends
            ``FAILED``; an exception it raises is logged and ignored.
        aging_rate: if set, a waiting task's priority rises by this much per
            second of waiting, so that a flood of higher priorities cannot
            starve lower ones forever.
        rate_limit: if set, the most task starts per second, as a token
            bucket on the loop clock holding up to ``rate_burst`` starts.
        rate_burst: the size of the token bucket, at least 1, which is how
            many tasks may start at once after an idle spell.
        hooks: lifecycle hooks (see ``Hook``), called after the built-in
            ``LoggingHook``.
        stop_timeout: the ``timeout`` of the ``stop("drain")`` that leaving
            ``async with`` normally calls: after this many seconds, what is
            left is cancelled. ``None`` waits for the whole backlog.
    """

    # Slots make every attribute access on the hot path a fixed-offset load:
    # with this many attributes, an instance dict would not be a shared-key
    # dict, and method lookups on it would not be specialized.
    __slots__ = (
        "__weakref__",
        "_abandoned_running",
        "_accept_retries",
        "_admitting",
        "_aging",
        "_blocked_warned",
        "_burst",
        "_cancelled",
        "_clock",
        "_dead_letters",
        "_dedup",
        "_dedup_keys",
        "_deduplicated",
        "_delayed",
        "_drop_logged_at",
        "_dropped",
        "_drops_unlogged",
        "_emitting",
        "_empty_report",
        "_ended",
        "_escalate",
        "_failed",
        "_fast_submit",
        "_finished",
        "_gated",
        "_hooks",
        "_idle",
        "_joins",
        "_later",
        "_lifecycle",
        "_loop",
        "_lost_workers",
        "_mass_cancelled",
        "_max_pending",
        "_max_workers",
        "_on_dead_letter",
        "_overflow",
        "_paused",
        "_rate",
        "_ready",
        "_recent_settings",
        "_reserved",
        "_retries",
        "_retry",
        "_run_time",
        "_schedules",
        "_seq",
        "_settings",
        "_settings_cache",
        "_settling",
        "_slack",
        "_space_waiters",
        "_started",
        "_stop_callers",
        "_stop_made",
        "_stop_mode",
        "_stop_task",
        "_stop_timeout",
        "_stuck",
        "_submitted_hooks",
        "_table",
        "_timeout",
        "_timer_at",
        "_timer_handle",
        "_timers",
        "_token_timer",
        "_tokens",
        "_tokens_at",
        "_wait_time",
        "_waiting",
        "_waking",
        "_watchdog",
        "_watchdog_at",
        "_watchers",
        "_worker_count",
        "_workers",
        "_workers_by_task",
        "_workers_exit",
    )

    def __init__(
        self,
        max_workers: int = 10,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        max_results: int = 10_000,
        result_ttl: float | None = None,
        max_pending: int | None = None,
        overflow: Overflow | OverflowName = Overflow.WAIT,
        max_dead_letters: int = 1000,
        on_dead_letter: Callable[[DeadLetter], object] | None = None,
        aging_rate: float | None = None,
        rate_limit: float | None = None,
        rate_burst: int = 1,
        hooks: Sequence[AnyHook] = (),
        stop_timeout: float | None = None,
    ) -> None:
        self._max_workers = _checks.check_count(
            "max_workers", max_workers, 1, _WORKERS_ADVICE
        )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")

        self._retry = retry if retry is not None else RetryPolicy()
        self._timeout = _checks.check_timeout("timeout", timeout)
        # The settings of tasks submitted with the defaults, and of those with
        # their own timeout or retry policy, by (timeout, id(policy)).
        self._settings = TaskSettings(self, self._timeout, self._retry)
        self._recent_settings = self._settings  # what _settings_for() returned last
        self._settings_cache: dict[tuple[float | None, int], TaskSettings] = {}
        _checks.check_count("max_results", max_results, 0)
        ttl = _checks.check_seconds("result_ttl", result_ttl, allow_none=True)
        if max_pending is not None:
            _checks.check_count(
                "max_pending", max_pending, 1, "pass max_pending=None for no bound"
            )

        self._stop_timeout = _checks.check_timeout("stop_timeout", stop_timeout)
        self._max_pending = max_pending
        self._overflow = _checks.check_overflow(
            overflow, max_pending, aging_rate is not None
        )
        self._hooks = collect_callbacks([LoggingHook(), *_checks.check_hooks(hooks)])
        self._submitted_hooks = self._hooks["on_submitted"]
        # Whether hooks are being called, and the events that they caused
        # meanwhile, which wait for their turn.
        self._emitting = False
        self._later: deque[_PendingEvent] = deque()
        _checks.check_count("max_dead_letters", max_dead_letters, 0)
        if on_dead_letter is not None and not callable(on_dead_letter):
            raise TypeError(
                f"on_dead_letter must be callable or None, got {on_dead_letter!r}"
            )
        if _checks.is_coroutine_function(on_dead_letter):
            raise TypeError(
                f"on_dead_letter {on_dead_letter!r} is a coroutine function, but "
                "the queue calls it without awaiting it; pass a plain function, "
                "and start any async work in it with asyncio.create_task()"
            )

        self._dead_letters = DeadLetterStore(max_dead_letters)
        self._on_dead_letter = on_dead_letter
        self._dedup: dict[Hashable, TaskHandle[Any]] = {}  # key -> unfinished task
        self._dedup_keys: dict[TaskHandle[Any], Hashable] = {}  # and back
        self._deduplicated = 0
        self._dropped = 0  # queued tasks cancelled by stop() or the overflow policy
        self._drop_logged_at: float | None = None  # loop time of the last drop warning
        self._drops_unlogged = 0  # overflow drops since that warning, not logged
        self._wait_time = _Summary()  # seconds from entering the heap to a start
        self._run_time = _Summary()  # seconds per attempt
        # Attempts started and ended; the difference is the number running.
        self._started = 0
        self._ended = 0
        # Tasks whose attempt has ended and is being settled. Hooks and the
        # retry_on predicate run meanwhile and see the task still RUNNING.
        self._settling: list[TaskHandle[Any]] = []
        # Backpressure: submitters waiting for room, and rooms promised to
        # woken submitters that have not resumed yet.
        self._space_waiters: deque[asyncio.Future[bool]] = deque()
        self._reserved = 0
        self._admitting = False  # the next submit_nowait() uses a reserved room

        self._lifecycle = _Lifecycle.NEW
        # Whether submit() and submit_nowait() may take their inline path:
        # the queue accepts tasks and has no admission rule (max_pending,
        # aging) or submit hook that the path skips.
        self._fast_submit = False
        # The number of workers cancelled from outside while the queue ran.
        # A later submission, join(), stop() or await of a handle replaces them.
        self._lost_workers = 0
        # Set once an idle worker was cancelled from outside. Only code that
        # cancels every task does that, such as the event loop as it closes,
        # so lost workers are no longer replaced. resize() still starts some.
        self._mass_cancelled = False
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._clock: Callable[[], float] = time.monotonic  # the loop's, from start()
        self._slack = _CLOCK_RESOLUTION  # how early the loop may run a timer

        # Task bookkeeping. Only the event loop thread reads or writes these,
        # so they need no lock; `_ready` has its own (see ReadyHeap).
        self._ready: ReadyHeap | AgingHeap
        self._aging = aging_rate is not None
        if aging_rate is None:
            self._ready = ReadyHeap()
        else:
            rate = _checks.check_rate(
                "aging_rate", aging_rate, "priority points per second", zero_ok=True
            )
            self._ready = AgingHeap(rate, time.monotonic)

        self._rate = None
        if rate_limit is not None:
            self._rate = _checks.check_rate(
                "rate_limit", rate_limit, "task starts per second", zero_ok=False
            )
        self._burst = _checks.check_count("rate_burst", rate_burst, 1)
        self._tokens = float(self._burst)
        self._tokens_at = 0.0  # loop time of the last refill
        self._token_timer: asyncio.TimerHandle | None = None
        self._timers = TimerHeap()
        # Unfinished and retained tasks. Its clock is the loop's from start().
        self._table = TaskTable(max_results, ttl, _no_time)
        self._finished = self._table.finished
        self._seq = 0
        # The active schedules, in the order every() made them; a dict
        # rather than a set, so that the schedules property keeps that order.
        self._schedules: dict[Schedule[Any], None] = {}

        self._workers: list[_Worker] = []
        self._workers_by_task: dict[asyncio.Task[None], _Worker] = {}
        self._worker_count = 0  # workers ever started, for their task names
        self._paused = False
        self._gated = self._rate is not None  # see _update_gate()
        self._idle: deque[_Worker] = deque()
        self._waking = 0  # workers woken for a new task that have not resumed
        self._blocked_warned = False  # warned that every worker awaits a task
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = math.inf  # when `_watchdog` fires; inf without one

        self._joins: list[_Join] = []
        self._watchers: list[asyncio.Future[None]] = []  # woken on every finished task
        self._stop_task: asyncio.Task[ShutdownReport] | None = None
        self._stop_made = asyncio.Event()  # set once _stop_task exists
        self._empty_report: ShutdownReport | None = None  # stop() before start()
        self._accept_retries = True
        self._escalate = False  # a later stop("cancel") cuts a graceful stop short
        self._stop_mode: ShutdownMode | None = None
        # Tasks of this queue awaiting stop(), each with its number of calls.
        self._stop_callers: dict[TaskHandle[Any], int] = {}
        self._workers_exit = False
        self._stuck: list[_Worker] = []  # workers running an abandoned task
        self._abandoned_running = 0  # abandoned attempts still in `_running`

        self._waiting = 0
        self._delayed = 0
        self._failed = 0
        self._cancelled = 0
        self._retries = 0

    @property
    def _running(self) -> int:
        """The attempts that workers are running, abandoned ones included."""
        return self._started - self._ended

    # Lifecycle

    async def start(self) -> None:
        """Start the workers on the running event loop.

        Raises:
            QueueStateError: the queue was already started, or stopped.
        """
        if self._lifecycle is _Lifecycle.RUNNING:
            raise QueueStateError(
                "cannot start a queue that is running: it was started "
                "already and accepts tasks; call start() once per queue"
            )

        if self._lifecycle is not _Lifecycle.NEW:
            raise QueueStateError(
                f"cannot start a queue that is {self._lifecycle.value}; "
                "a stopped queue cannot restart, create a new AsyncTaskQueue"
            )

        self._loop = asyncio.get_running_loop()
        self._clock = _fast_clock(self._loop)
        self._slack = _timer_slack(self._loop)
        self._lifecycle = _Lifecycle.RUNNING
        self._fast_submit = self._submits_inline()
        self._tokens_at = self._loop.time()
        self._table.clock = self._loop.time
        if isinstance(self._ready, AgingHeap):
            self._ready.clock = self._loop.time

        self._add_workers(self._max_workers)

    def _add_workers(self, count: int) -> None:
        for _ in range(count):
            self._worker_count += 1
            worker = _Worker()
            # A new worker looks for a task at its first step, as a woken one
            # does, so a burst submitted before that step may count on it.
            worker.woken = True
            self._waking += 1
            # In the pool before its task exists: an eager task factory runs
            # the worker, which registers its task, inside create_task().
            self._workers.append(worker)
            task = self._loop.create_task(
                self._run_worker(worker),
                name=f"async_queue-worker-{self._worker_count}",
            )
            # A task cancelled before its first step never runs its body. The
            # callback refers to the queue weakly, since it may run after stop().
            done = functools.partial(_worker_done, weakref.ref(self), worker)
            task.add_done_callback(done)
            worker.task = task
            self._workers_by_task[task] = worker

    # Pool control

    @property
    def max_workers(self) -> int:
        """The number of tasks that may run at once."""
        return self._max_workers

    @property
    def paused(self) -> bool:
        """Whether workers are kept from starting new tasks."""
        return self._paused

    def resize(self, max_workers: int) -> None:
        """Change the number of workers.

        Growing starts the new workers at once. Shrinking stops idle workers
        at once and lets busy ones finish their current task before they
        exit; no running task is cancelled, and no task starts until fewer
        than ``max_workers`` tasks run.

        Raises:
            QueueClosedError: ``stop()`` has begun.
            QueueStateError: the queue's event loop is closed.
        """
        count = _checks.check_count("max_workers", max_workers, 1, _RESIZE_ADVICE)
        if self.closed:
            self._raise_pool_closed("resize")
        if self._lifecycle is not _Lifecycle.NEW:
            self._check_loop()

        old = self._max_workers
        self._max_workers = count
        if self._lifecycle is _Lifecycle.NEW:
            return

        staying = [w for w in self._workers if not w.retire]
        if count > len(staying):
            # Keep the workers that an earlier shrink retired and that still
            # finish a task, before starting new ones: a worker that stays
            # and a new one beside it would run more tasks than max_workers.
            for worker in self._workers:
                if worker.retire and len(staying) < count:
                    worker.retire = False
                    staying.append(worker)

            self._update_gate()
            self._add_workers(count - len(staying))
            self._wake_workers()
            self._check_blocked()
            logger.debug("resized the pool from %d to %d workers", old, count)
            return

        # Retire idle workers first, so that running tasks are not delayed.
        excess = len(staying) - count
        for worker in sorted(staying, key=lambda w: w.current is not None)[:excess]:
            worker.retire = True
            self._gated = True
            if worker.waiter is not None and not worker.waiter.done():
                # Leave the idle list too: a wake-up from it would be lost.
                self._idle.remove(worker)
                worker.waiter.set_result(None)

        # A retired worker may have been woken for a pending task that it will
        # not start now: wake the idle workers that stay instead.
        self._wake_workers()
        self._check_blocked()
        logger.debug("resized the pool from %d to %d workers", old, count)

    def pause(self) -> None:
        """Stop starting new tasks; running tasks go on. Timers keep running.

        Raises:
            QueueClosedError: ``stop()`` has begun; a paused drain could
                never finish.
        """
        if self.closed:
            self._raise_pool_closed("pause")

        self._paused = True
        self._gated = True

    def resume(self) -> None:
        """Start tasks again after ``pause()``."""
        self._paused = False
        self._update_gate()
        self._wake_workers()

    def _wake_workers(self) -> None:
        for _ in range(min(len(self._idle), len(self._ready))):
            self._wake_worker()

    async def stop(
        self,
        mode: ShutdownMode | str = ShutdownMode.CANCEL,
        *,
        timeout: float | None = None,
        grace: float = 5.0,
    ) -> ShutdownReport:
        """Stop accepting tasks, end the work in ``mode``, and stop the workers.

        ``DRAIN`` runs everything pending, ``FINISH_RUNNING`` cancels what is
        pending and waits for what runs, ``CANCEL`` (the default) cancels
        everything. If ``timeout`` seconds pass first, the stop escalates to
        ``CANCEL``. A cancelled coroutine gets ``grace`` seconds to finish.
        One still running after that is abandoned: it is left running, marked
        ``CANCELLED`` and listed in the report.

        Idempotent and safe to call concurrently: every call returns the
        report of the first one, whose mode and limits win, with one
        exception: a later call in ``CANCEL`` mode escalates a ``DRAIN`` or
        ``FINISH_RUNNING`` stop that is still waiting. Calling it before
        ``start()`` closes the queue and returns an empty report.
        """
        mode = _checks.check_mode(mode)
        timeout = _checks.check_timeout("timeout", timeout)
        grace_seconds = _checks.check_seconds("grace", grace)
        assert grace_seconds is not None

        if self._lifecycle is _Lifecycle.NEW:
            self._lifecycle = _Lifecycle.STOPPED
            self._empty_report = ShutdownReport(mode, False, (), (), (), ())

        if self._stop_task is None and self._lifecycle is _Lifecycle.STOPPING:
            # A call from a hook that the first call's cancellations ran, before
            # that call made its stop task: with an eager task factory such a
            # call runs at once. It waits for the task and shares its report.
            await self._stop_made.wait()

        if self._stop_task is None:
            if self._empty_report is not None:
                return self._empty_report

            self._check_loop()
            self._lifecycle = _Lifecycle.STOPPING
            self._fast_submit = False
            self._log_unlogged_drops()  # a stopping queue drops no more tasks
            self._end_schedules()
            self._paused = False  # a paused queue could not drain
            self._update_gate()
            self._release_space_waiters()
            dropped = []
            interrupted = []
            if mode is not ShutdownMode.DRAIN:
                # Cancel queued tasks now, before any worker can pick one up.
                self._accept_retries = False
                dropped = self._cancel_queued()
            if mode is ShutdownMode.CANCEL:
                # In the same step, so that a running task that awaits one of
                # the queued tasks gets its own cancellation first, and ends
                # CANCELLED rather than FAILED with its child's error.
                interrupted = self._cancel_running()

            self._wake_workers()
            self._stop_mode = mode
            self._stop_task = self._loop.create_task(
                self._shut_down(mode, timeout, grace_seconds, dropped, interrupted),
                name="async_queue-stop",
            )
            self._stop_made.set()
        elif mode is ShutdownMode.CANCEL and self._stop_mode is not mode:
            self._stop_mode = mode
            self._escalate = True
            self._wake_watchers()

        # A task of this queue that awaits the stop must not be waited for.
        caller = self._calling_task(thorough=True)
        if caller is not None:
            self._stop_callers[caller] = self._stop_callers.get(caller, 0) + 1
            self._wake_watchers()  # the stop may wait for nothing more now

        try:
            # Shielded, so that cancelling one caller of stop() does not cut
            # the shutdown short for the others.
            return await asyncio.shield(self._stop_task)
        finally:
            if caller is not None:
                # A caller that stops waiting is waited for again.
                calls = self._stop_callers.pop(caller) - 1
                if calls:
                    self._stop_callers[caller] = calls

    def _running_stop_callers(self) -> int:
        # Only while they run: once its attempt has ended, say by its own
        # timeout, a caller waits for a retry like any other task.
        return sum(1 for caller in self._stop_callers if caller._state is RUNNING)

    async def __aenter__(self) -> AsyncTaskQueue:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.stop(ShutdownMode.DRAIN, timeout=self._stop_timeout)
        else:
            await self.stop(ShutdownMode.CANCEL)

    @property
    def report(self) -> ShutdownReport | None:
        """The report of the finished ``stop()``, or ``None`` before it ends.

        Useful after ``async with``, whose implicit stop returns nothing.
        """
        if self._stop_task is not None and self._stop_task.done():
            if not self._stop_task.cancelled():
                return self._stop_task.result()

            return None

        return self._empty_report

    @property
    def closed(self) -> bool:
        """Whether ``stop()`` has begun, so that ``submit()`` raises."""
        return self._lifecycle in (_Lifecycle.STOPPING, _Lifecycle.STOPPED)

    # Submission

    async def submit(
        self,
        fn: Callable[[*Ts], Awaitable[T]] | Coroutine[Any, Any, T],
        /,
        *args: *Ts,
        priority: int = 0,
        timeout: float | Literal[_Unset.UNSET] | None = _UNSET,
        retry: RetryPolicy | None = None,
        task_id: str | None = None,
        delay: float | None = None,
        at: float | None = None,
        dedup_key: Hashable | None = None,
    ) -> TaskHandle[T]:
        """Queue ``fn(*args)`` and return its handle.

        ``fn`` is a coroutine function; its positional arguments follow it.
        Every keyword belongs to the task, never to ``fn``: bind keyword
        arguments with ``bind(fn, *args, **kwargs)``. A coroutine object is
        accepted only with a retry policy of ``max_retries=0``, because it
        cannot be run twice. A call that raises leaves a coroutine object
        unstarted and open, for the caller to submit again or close.

        Args:
            priority: any int; higher starts first, FIFO among equals.
            timeout: seconds per attempt, ``None`` for none; omitted means the
                queue's default.
            retry: this task's retry policy; omitted means the queue's.
            task_id: a unique str id; omitted means a new int id.
            delay: seconds to wait before the task enters the ready heap.
            at: the time on the event loop clock (``loop.time()``) at which
                the task enters the ready heap; not together with ``delay``.
                Until then the task is ``DELAYED`` and occupies no worker.
            dedup_key: if an unfinished task was submitted with this key,
                return its handle and queue nothing. Once that task is final,
                the key is free again.

        Raises:
            QueueStateError: the queue has not been started.
            QueueClosedError: ``stop()`` has begun.
            DuplicateTaskIdError: ``task_id`` belongs to an active or retained task.
            TypeError, ValueError: an argument is invalid; nothing was queued.
        """
        if (
            self._fast_submit
            and timeout is _UNSET
            and (retry is None or type(retry) is RetryPolicy)
            and task_id is None
            and delay is None
            and at is None
            and dedup_key is None
            and type(priority) is int
            and type(fn) is FunctionType
            and fn.__code__.co_flags & _CO_COROUTINE
        ):
            # The fast path of submit_nowait(), repeated here because most
            # callers use this method, and a shared method would add a call
            # to both. A queue with max_pending never comes here.
            if retry is None or retry is self._retry:
                settings = self._settings
            else:
                settings = self._recent_settings
                if settings.retry is not retry or settings.timeout is not self._timeout:
                    settings = self._settings_for(self._timeout, retry)

            seq = self._seq = self._seq + 1
            handle = new_handle(settings, seq, fn, args, priority, self._clock())
            self._table.tasks[seq] = handle
            self._ready.push(handle)
            if self._idle:
                self._wake_worker()

            return handle

        if (
            self._max_pending is not None
            and self._overflow is Overflow.WAIT
            and self._must_wait_for_room()
        ):
            # Reject invalid arguments now, not after waiting for room. A
            # dedup_key of an unfinished task queues nothing, so it needs no
            # room.
            duplicate = self._check_options(
                fn, args, priority, timeout, retry, task_id, delay, at, dedup_key
            )
            if duplicate is None:
                if self._lost_workers:
                    self._replace_lost_workers()  # they free the room to wait for

                await self._wait_for_room()

        try:
            return self._submit_checked(
                fn, args, priority, timeout, retry, task_id, delay, at, dedup_key
            )
        finally:
            if self._admitting:
                # The submission was rejected: hand its room to the next one.
                self._admitting = False
                self._reserved -= 1
                self._wake_space_waiters()

    def submit_nowait(
        self,
        fn: Callable[[*Ts], Awaitable[T]] | Coroutine[Any, Any, T],
        /,
        *args: *Ts,
        priority: int = 0,
        timeout: float | Literal[_Unset.UNSET] | None = _UNSET,
        retry: RetryPolicy | None = None,
        task_id: str | None = None,
        delay: float | None = None,
        at: float | None = None,
        dedup_key: Hashable | None = None,
    ) -> TaskHandle[T]:
        """Queue a task without awaiting; otherwise the same as ``submit()``."""
        if (
            self._fast_submit
            and timeout is _UNSET
            and (retry is None or type(retry) is RetryPolicy)
            and task_id is None
            and delay is None
            and at is None
            and dedup_key is None
            and type(priority) is int
            and type(fn) is FunctionType
            and fn.__code__.co_flags & _CO_COROUTINE
        ):
            # The common case: a coroutine function, every option at its
            # default but the priority and the retry policy, and a queue with
            # no admission rules or submit hooks.
            if retry is None or retry is self._retry:
                settings = self._settings
            else:
                settings = self._recent_settings
                if settings.retry is not retry or settings.timeout is not self._timeout:
                    settings = self._settings_for(self._timeout, retry)

            seq = self._seq = self._seq + 1
            handle = new_handle(settings, seq, fn, args, priority, self._clock())
            self._table.tasks[seq] = handle
            self._ready.push(handle)
            if self._idle:
                self._wake_worker()

            return handle

        return self._submit_checked(
            fn, args, priority, timeout, retry, task_id, delay, at, dedup_key
        )

    def _submit_checked(
        self,
        fn: Callable[..., Awaitable[Any]] | Coroutine[Any, Any, Any],
        args: tuple[Any, ...],
        priority: int,
        timeout: float | Literal[_Unset.UNSET] | None,
        retry: RetryPolicy | None,
        task_id: str | None,
        delay: float | None,
        at: float | None,
        dedup_key: Hashable | None,
        overflow: Overflow | None = None,
    ) -> TaskHandle[Any]:
        """Check every option, then queue the task; see ``submit_nowait()``.

        ``overflow`` replaces the queue's policy for this submission.
        """
        if self._lifecycle is not _ACCEPTING:
            self._raise_not_running()

        if self._lost_workers:
            self._replace_lost_workers()

        if type(priority) is not int:
            priority = _checks.check_priority(priority)
        if self._aging and not -_FLOAT_MAX <= priority <= _FLOAT_MAX:
            self._reject_aging_priority(priority)

        if timeout is _UNSET:
            timeout = self._timeout
        elif timeout is not None:
            timeout = _checks.check_timeout("timeout", timeout)

        if retry is None:
            retry = self._retry
        elif not isinstance(retry, RetryPolicy):
            _checks.reject_retry(retry)

        call_args: tuple[Any, ...] | None = args
        if type(fn) is FunctionType and fn.__code__.co_flags & _CO_COROUTINE:
            pass  # the common case, checked inline on the hot path
        elif not _checks.is_coroutine_function(fn):
            _checks.check_coroutine_object(fn, args, retry)
            call_args = None

        start_at = None
        if delay is not None or at is not None:
            start_at = self._check_start_time(delay, at)

        if dedup_key is not None:
            existing = self._find_duplicate(dedup_key)
            if existing is not None:
                if task_id is not None:
                    _checks.check_task_id(task_id)  # invalid even when unused

                self._deduplicated += 1
                if call_args is None:
                    fn.close()  # type: ignore[union-attr]  # a coroutine never to run

                return existing

        seq = self._seq + 1
        if task_id is None:
            key: TaskId = seq
        else:
            key = self._check_task_id(task_id)

        victim = None
        drop_new = False
        if self._max_pending is not None and not self._take_room(
            self._overflow if overflow is None else overflow
        ):
            victim = self._lowest_below(priority) if overflow is None else None
            drop_new = victim is None

        self._seq = seq
        if retry is self._retry and timeout is self._timeout:
            settings = self._settings
        else:
            settings = self._settings_for(timeout, retry)
        handle = new_handle(settings, key, fn, call_args, priority)
        if task_id is not None:
            handle._extras = TaskExtras(seq)
        self._table.tasks[key] = handle
        if drop_new:
            self._drop(handle, self._drop_message("as the newest task"))
            self._emit("on_submitted", handle)
            self._emit("on_dropped", handle)
            return handle

        if dedup_key is not None:
            self._dedup[dedup_key] = handle
            self._dedup_keys[handle] = dedup_key

        if start_at is not None and start_at > self._loop.time():
            handle._state = DELAYED
            self._delayed += 1
            self._park_until(handle, start_at)
        else:
            handle._queued_at = self._clock()
            self._ready.push(handle)
            if self._idle:
                self._wake_worker()

        # Last, once the task is fully queued: a hook may cancel it.
        if self._submitted_hooks:
            self._emit("on_submitted", handle)
        if victim is not None:
            self._emit("on_dropped", victim)

        return handle

    def _check_options(
        self,
        fn: object,
        args: tuple[Any, ...],
        priority: object,
        timeout: object,
        retry: object,
        task_id: object,
        delay: object,
        at: object,
        dedup_key: object,
    ) -> TaskHandle[Any] | None:
        """Raise as ``submit_nowait()`` would for an invalid argument, in the
        same order, and return the unfinished task of ``dedup_key`` if any.

        Queues nothing; ``submit()`` calls it before it waits for room.
        """
        checked_priority = _checks.check_priority(priority)
        if self._aging and not -_FLOAT_MAX <= checked_priority <= _FLOAT_MAX:
            self._reject_aging_priority(checked_priority)

        if timeout is not _UNSET:
            _checks.check_timeout("timeout", timeout)

        if retry is not None and not isinstance(retry, RetryPolicy):
            _checks.reject_retry(retry)

        if not _checks.is_coroutine_function(fn):
            _checks.check_coroutine_object(fn, args, retry or self._retry)

        if delay is not None or at is not None:
            self._check_start_time(delay, at)

        duplicate = None
        if dedup_key is not None:
            duplicate = self._find_duplicate(dedup_key)

        if task_id is not None:
            if duplicate is None:
                self._check_task_id(task_id)  # also rejects an id in use
            else:
                _checks.check_task_id(task_id)  # invalid even when unused

        return duplicate

    def submit_threadsafe(
        self,
        fn: Callable[[*Ts], Awaitable[T]] | Coroutine[Any, Any, T],
        /,
        *args: *Ts,
        priority: int = 0,
        timeout: float | Literal[_Unset.UNSET] | None = _UNSET,
        retry: RetryPolicy | None = None,
        task_id: str | None = None,
        delay: float | None = None,
        at: float | None = None,
        dedup_key: Hashable | None = None,
    ) -> concurrent.futures.Future[T]:
        """Queue a task from any thread; return a future of its result.

        The task is queued by ``submit_nowait()`` on the queue's event loop, so
        an invalid argument, a closed queue or a full queue (``max_pending``)
        sets the future's exception instead of raising here. The future gets
        the task's result, its final exception, or ``TaskCancelledError``.
        Cancelling the future cancels the task.

        Raises:
            QueueStateError: the queue has not been started.
        """
        if self._lifecycle is _Lifecycle.NEW:
            self._raise_not_running()

        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._lifecycle is _Lifecycle.STOPPED:
            # The loop may never run another callback once stop() has
            # returned, so settle the future here. A stop that is still under
            # way is left to submit_nowait() on the loop.
            future.set_exception(self._closed_error())
            return future

        options = {
            "priority": priority,
            "timeout": timeout,
            "retry": retry,
            "task_id": task_id,
            "delay": delay,
            "at": at,
            "dedup_key": dedup_key,
        }
        self._loop.call_soon_threadsafe(
            self._submit_for_thread, future, fn, args, options
        )
        return future

    def _submit_for_thread(
        self,
        future: concurrent.futures.Future[Any],
        fn: Any,
        args: tuple[Any, ...],
        options: dict[str, Any],
    ) -> None:
        if future.cancelled():
            if inspect.iscoroutine(fn):
                fn.close()  # the caller gave it up before it was queued

            return

        try:
            handle = self.submit_nowait(fn, *args, **options)
        except QueueFullError as exc:
            if self._overflow is not Overflow.WAIT:
                # Its advice, to submit again later, fits a thread too.
                _settle_future(future, None, exc)
                return

            # The advice to await submit() on the loop does not fit a thread.
            error = self._full_error(
                "to wait for room from a thread, run 'queue.submit()' with "
                "asyncio.run_coroutine_threadsafe(), or raise max_pending"
            )
            _settle_future(future, None, error)
            return
        except Exception as exc:
            _settle_future(future, None, exc)
            return

        handle.add_done_callback(lambda done: _settle_from_handle(future, done))
        loop = self._loop

        def cancel_task(done: concurrent.futures.Future[Any]) -> None:
            if done.cancelled():
                loop.call_soon_threadsafe(handle.cancel, "the future was cancelled")

        future.add_done_callback(cancel_task)

    # Periodic tasks

    def every(
        self,
        interval: float,
        fn: Callable[[*Ts], Awaitable[T]],
        /,
        *args: *Ts,
        priority: int = 0,
        timeout: float | Literal[_Unset.UNSET] | None = _UNSET,
        retry: RetryPolicy | None = None,
        delay: float | None = None,
        max_runs: int | None = None,
    ) -> Schedule[T]:
        """Submit ``fn(*args)`` every ``interval`` seconds until cancelled.

        The first run is due after ``delay`` seconds (``interval`` if omitted;
        0 submits it on the loop's next iteration), and run ``k`` is due
        ``k * interval`` seconds after it. Each run is submitted with
        ``submit_nowait()`` and the given ``priority``, ``timeout`` and
        ``retry``. A run is skipped while the previous one is unfinished, or
        when a full queue rejects it. The schedule ends after ``max_runs``
        runs, on ``Schedule.cancel()``, or when ``stop()`` is called.

        Raises:
            QueueStateError: the queue has not been started, or its event
                loop is closed or runs in another thread.
            QueueClosedError: the queue is stopping or stopped.
        """
        interval = _checks.check_interval(interval)
        _checks.check_coroutine_function(fn)
        self._check_options(fn, args, priority, timeout, retry, *(None,) * 4)
        first_delay = _checks.check_seconds("delay", delay, allow_none=True)
        if max_runs is not None:
            _checks.check_count(
                "max_runs", max_runs, 1, "pass max_runs=None to run until cancelled"
            )
        if self._lifecycle is not _ACCEPTING:
            self._raise_not_running("call every()")
        self._check_loop()

        if first_delay is None:
            first_delay = interval
        options = (priority, timeout, retry, max_runs)
        first = self._loop.time() + first_delay
        schedule = Schedule(self, interval, first, fn, args, options)
        schedule._start(self._loop)  # first, so that a failure registers nothing
        self._schedules[schedule] = None
        return schedule

    @property
    def schedules(self) -> tuple[Schedule[Any], ...]:
        """The active schedules, in the order ``every()`` made them."""
        if self._schedules and self._loop.is_closed():
            return ()  # the loop dropped their timers

        return tuple(self._schedules)

    def _end_schedules(self) -> None:
        schedules, self._schedules = self._schedules, {}
        for schedule in schedules:
            schedule._end()

    # Backpressure

    def _waiting_count(self) -> int:
        """Return the number of tasks that count against ``max_pending``.

        Pending tasks that a woken or new worker is about to start do not
        count, so a burst submitted in one step fills the idle workers first.
        They do count while workers are held back: paused, rate-limited or
        retiring.
        """
        ready = len(self._ready)
        # NOTE: any rate_limit gates the workers, so a rate-limited queue
        # counts every pending task, even with tokens to spare.
        if not self._gated:
            ready = max(ready - self._waking, 0)
        return ready + self._delayed + self._reserved

    def _is_full(self) -> bool:
        assert self._max_pending is not None
        return self._waiting_count() >= self._max_pending

    def _must_wait_for_room(self) -> bool:
        if self._lifecycle is not _ACCEPTING:
            return False  # submit_nowait() raises the lifecycle error

        return bool(self._space_waiters) or self._is_full()

    def _take_room(self, overflow: Overflow) -> bool:
        """Take room for a new task; return ``False`` if the queue is full.

        A full queue raises ``QueueFullError`` unless ``overflow`` drops tasks.
        """
        if self._admitting:
            self._admitting = False
            self._reserved -= 1
            return True

        if not (self._space_waiters or self._is_full()):
            return True

        if overflow is Overflow.WAIT:
            advice = "use 'await queue.submit()' to wait for room, or raise max_pending"
        elif overflow is Overflow.RAISE:
            advice = "submit again later, or raise max_pending"
        else:
            return False

        raise self._full_error(advice)

    def _lowest_below(self, priority: int) -> TaskHandle[Any] | None:
        """Drop the pending task that would start last, if ``priority`` beats it.

        Only the ``"drop_lowest"`` policy drops one. Returns the dropped task,
        whose ``on_dropped`` event the caller emits once the new task is in.
        """
        if self._overflow is not Overflow.DROP_LOWEST:
            return None

        assert isinstance(self._ready, ReadyHeap)  # no aging with drop_lowest
        victim = self._ready.last_to_start()
        if victim is None or victim._priority >= priority:
            return None

        # Built first, so that nothing can fail once the victim's state changes.
        # str() raises for an int of more than 4300 digits.
        message = self._drop_message(f"for a task of priority {_format_int(priority)}")
        victim._state = CANCELLED  # before mark_stale(), which may compact
        self._ready.mark_stale(victim)
        self._drop(victim, message)
        return victim

    def _drop_message(self, cause: str) -> str:
        return (
            f"dropped {cause}: the queue was full "
            f"(max_pending={self._max_pending}, overflow={self._overflow.value!r})"
        )

    def _drop(self, handle: TaskHandle[Any], message: str) -> None:
        """End a task that the overflow policy dropped, without its hook."""
        handle._state = CANCELLED
        extras_of(handle).cancel_message = message
        self._dropped += 1
        self._set_cancelled(handle, emit=False)
        self._log_drop(handle, message)

    def _log_drop(self, handle: TaskHandle[Any], message: str) -> None:
        """Log an overflow drop at WARNING, at most once per _DROP_LOG_INTERVAL."""
        now = self._loop.time()
        last = self._drop_logged_at
        if last is not None and now - last < _DROP_LOG_INTERVAL:
            self._drops_unlogged += 1
            return

        more = self._drops_unlogged
        self._drop_logged_at = now
        self._drops_unlogged = 0
        since = f"; {more} more dropped since the last such warning" if more else ""
        # A logging filter that raises must not stop the submission that
        # caused the drop.
        with contextlib.suppress(Exception):
            logger.warning("task %r (%s) %s%s", handle._id, handle.name, message, since)

    def _log_unlogged_drops(self) -> None:
        """Log the overflow drops that no warning has counted yet."""
        count, self._drops_unlogged = self._drops_unlogged, 0
        if count:
            with contextlib.suppress(Exception):
                logger.warning(
                    "%d more dropped by the overflow policy since the last such "
                    "warning",
                    count,
                )

    def _full_error(self, advice: str) -> QueueFullError:
        # Retries come back without taking room, so the count can pass the limit.
        count = self._waiting_count()
        waiting = "1 task is" if count == 1 else f"{count} tasks are"
        return QueueFullError(
            f"the queue is full: {waiting} waiting to start "
            f"(max_pending={self._max_pending}); {advice}"
        )

    async def _wait_for_room(self) -> None:
        """Wait, behind earlier waiters, until a room is reserved for us."""
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._space_waiters.append(waiter)
        try:
            has_room = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                # Woken and cancelled in the same step: pass the room on.
                self._reserved -= 1
                self._wake_space_waiters()
            else:
                with contextlib.suppress(ValueError):
                    self._space_waiters.remove(waiter)

            raise

        if not has_room:
            self._raise_not_running()

        self._admitting = True

    def _wake_space_waiters(self) -> None:
        waiters = self._space_waiters
        while waiters and not self._is_full():
            waiter = waiters.popleft()
            if not waiter.done():
                self._reserved += 1
                waiter.set_result(True)

    def _release_space_waiters(self) -> None:
        """Wake every waiting submitter with the news that the queue closed."""
        waiters, self._space_waiters = self._space_waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(False)

    async def join(self) -> None:
        """Wait until every task submitted so far is final.

        Tasks submitted after the call do not delay it, and neither does the
        calling task when a task of this queue calls it. Cancelling the caller
        does not affect the tasks. On a paused queue it waits until
        ``resume()`` lets the pending tasks run.
        """
        caller = self._calling_task(thorough=True)
        remaining = self._table.unfinished - (caller is not None)
        if remaining <= 0:
            return

        if self._lost_workers:
            self._replace_lost_workers()  # or the tasks would never start

        exclude = seq_of(caller) if caller is not None else 0
        future = self._loop.create_future()
        join = _Join(remaining, self._seq, future, exclude)
        self._joins.append(join)
        try:
            await join.future
        finally:
            if join in self._joins:
                self._joins.remove(join)

    # Dead letters

    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """Return the kept records of failed tasks, oldest first."""
        return self._dead_letters.list()

    async def requeue(
        self, task_id: TaskId, *, priority: int | None = None
    ) -> TaskHandle[Any]:
        """Drop a dead letter and submit its task again, or return its duplicate.

        The new task gets a new int id, the same function, arguments, timeout,
        retry policy and ``dedup_key``, and the same priority unless
        ``priority`` is given. If an unfinished task has the same
        ``dedup_key``, the call returns its handle and queues nothing. A full
        queue makes it wait for room, or raise ``QueueFullError`` under the
        ``"raise"``, ``"drop_newest"`` and ``"drop_lowest"`` policies, so
        that the requeued task is not dropped on arrival; the letter then
        stays in the store. Once queued, the task waits like any other:
        ``"drop_lowest"`` may drop it later for a task of higher priority,
        and its letter is gone by then.

        Raises:
            QueueFullError: the queue is full, and its policy is not "wait".
            TaskNotFoundError: no dead letter has this id.
            ValueError: the task was a coroutine object, which cannot rerun.
            TypeError: ``task_id`` is neither an int nor a str.
        """
        # Check everything that can fail at once before taking the letter
        # out, so that a rejected call leaves the store and its order as they
        # were.
        _checks.check_task_key(task_id)
        letter = self._dead_letters.get(task_id)
        if letter is None:
            raise TaskNotFoundError(
                f"no dead letter for task {task_id!r}: it did not fail, was "
                "requeued already, or was evicted (raise max_dead_letters)"
            )

        if letter.args is None:
            raise ValueError(
                f"task {task_id!r} was a coroutine object, which cannot run "
                "twice; submit its coroutine function again instead"
            )

        if priority is not None:
            self._check_options(
                letter.fn, (), priority, _UNSET, None, None, None, None, None
            )

        if self._lifecycle is not _ACCEPTING:
            self._raise_not_running()

        # Taken out before any wait, so that a concurrent requeue of the same
        # letter raises TaskNotFoundError instead of running it twice.
        arrival_and_letter = self._dead_letters.take(task_id)
        assert arrival_and_letter is not None
        priority = letter.priority if priority is None else priority
        try:
            if self._overflow in (Overflow.WAIT, Overflow.RAISE):
                return await self.submit(
                    letter.fn,
                    *letter.args,
                    priority=priority,
                    timeout=letter.timeout,
                    retry=letter.retry,
                    dedup_key=letter.dedup_key,
                )

            # A dropping policy would lose the letter: a full queue raises.
            return self._submit_checked(
                letter.fn,
                letter.args,
                priority,
                letter.timeout,
                letter.retry,
                None,
                None,
                None,
                letter.dedup_key,
                overflow=Overflow.RAISE,
            )
        except BaseException:
            # Nothing was queued, so the letter goes back to its place.
            self._dead_letters.put_back(*arrival_and_letter)
            raise

    # Lookup and statistics

    def task(self, task_id: TaskId) -> TaskHandle[Any]:
        """Return the handle of an active task, or of a finished one still retained.

        Raises:
            TaskNotFoundError: no such task, or it was evicted.
            TypeError: ``task_id`` is neither an int nor a str.
        """
        _checks.check_task_key(task_id)
        handle = self._table.get(task_id)
        if handle is None:
            raise TaskNotFoundError(
                f"no task with id {task_id!r}: it was never submitted, or it "
                "finished and was evicted from the result store; raise "
                "max_results or result_ttl to keep finished tasks longer"
            )

        return handle

    def cancel(self, task_id: TaskId, msg: str | None = None) -> bool:
        """Cancel the task with this id; see ``TaskHandle.cancel()``.

        Raises:
            TaskNotFoundError: no such task, or it was evicted.
            TypeError: ``task_id`` is neither an int nor a str.
        """
        return self.task(task_id).cancel(msg)

    def stats(self) -> QueueStats:
        """Return a snapshot of the queue's counts."""
        self._table.expire()
        workers = sum(
            1 for w in self._workers if w.task is not None and not w.task.done()
        )
        return QueueStats(
            pending=len(self._ready),
            waiting_retry=self._waiting,
            delayed=self._delayed,
            running=self._reported_running(),
            # Every final task passes through the table once.
            succeeded=self._table.finished_count - self._failed - self._cancelled,
            failed=self._failed,
            cancelled=self._cancelled,
            retries=self._retries,
            workers=workers,
            submitted=self._seq,
            retained=self._table.retained,
            paused=self._paused,
            dead_letters=len(self._dead_letters),
            deduplicated=self._deduplicated,
            dropped=self._dropped,
            depth_by_priority=tuple(self._ready.depth_by_priority().items()),
            oldest_wait=self._oldest_wait(),
            wait_time=self._wait_time.snapshot(self._started),
            run_time=self._run_time.snapshot(self._ended),
            evicted=self._table.evicted,
            dead_letters_evicted=self._dead_letters.evicted,
        )

    def _reported_running(self) -> int:
        """Return the tasks in the RUNNING state, abandoned ones left out."""
        running = self._running - self._abandoned_running
        for handle in self._settling:
            if handle._state is RUNNING:
                running += 1  # its attempt has ended, its task not yet

        return running

    def _oldest_wait(self) -> float:
        oldest = self._ready.oldest_queued_at()
        if oldest is None:
            return 0.0

        return max(0.0, self._loop.time() - oldest)

    def __copy__(self) -> NoReturn:
        # A copy would share the heap, the workers and the task table with
        # this queue while keeping counters of its own.
        raise TypeError(
            "an AsyncTaskQueue cannot be copied: it owns its workers and "
            "tasks; pass the queue itself, or create another one"
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn:
        self.__copy__()

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError(
            "an AsyncTaskQueue cannot be pickled: it runs on one event loop "
            "of this process; pickle the tasks' functions and arguments instead"
        )

    def __repr__(self) -> str:
        return (
            f"<AsyncTaskQueue {self._lifecycle.value} workers={self._max_workers} "
            f"pending={len(self._ready)} "
            f"running={self._reported_running()} "
            f"closed={self.closed}>"
        )

    # Workers

    async def _run_worker(self, worker: _Worker) -> None:
        task = asyncio.current_task()
        assert task is not None
        worker.task = task
        self._workers_by_task[task] = worker
        CURRENT_WORKER.set(worker)
        del task
        _clear_woken(self, worker)  # it pops before it next yields
        pop = self._ready.pop
        clock = self._clock
        wait_time, run_time = self._wait_time, self._run_time
        started_hooks = self._hooks["on_started"]
        succeeded_hooks = self._hooks["on_succeeded"]
        try:
            # The clock read that ends one attempt also starts the next one, when
            # nothing runs in between: one read per task instead of two.
            now = clock()
            while True:
                handle = None if self._gated and self._held_back(worker) else pop()
                if handle is None:
                    # Drop the last task's arguments and result before idling.
                    args = result = None
                    if worker.retire:
                        self._workers.remove(worker)
                        del self._workers_by_task[worker.task]
                        self._update_gate()
                        # A worker that waited for this one to finish may
                        # start a task now.
                        self._wake_workers()
                        return

                    if self._workers_exit:
                        self._drop_idle_watchdog()  # kept for a stop caller
                        return

                    try:
                        await self._wait_for_work(worker)
                    except asyncio.CancelledError:
                        self._forget_worker(worker, None)
                        raise
                    now = clock()
                    continue

                if self._space_waiters:
                    self._wake_space_waiters()

                handle._state = RUNNING
                handle._attempts += 1
                worker.current = handle
                self._started += 1
                # The duration summaries, inlined because this runs for each task.
                started_at = now
                waited = started_at - handle._queued_at
                wait_time.total += waited
                if waited > wait_time.max:
                    wait_time.max = waited

                if started_hooks:
                    self._emit("on_started", handle)
                timeout = handle._settings.timeout
                if timeout is not None:
                    # Inlined: one comparison per task, and a new timer only when
                    # this deadline comes before every other running task's.
                    deadline = worker.deadline = started_at + timeout
                    if deadline < self._watchdog_at:
                        self._set_watchdog(deadline)

                try:
                    args = handle._args
                    if args is None:
                        result = await handle._fn  # type: ignore[misc]
                    else:
                        result = await handle._fn(*args)  # type: ignore[operator]
                except BaseException as exc:
                    if exc.__class__ is GeneratorExit and not self._loop.is_running():
                        # Not from the task: this coroutine is being closed,
                        # as the collector does with a worker left on a loop
                        # that no longer runs. End at once.
                        raise

                    worker.current = worker.deadline = None
                    self._ended += 1
                    ran = clock() - started_at
                    run_time.total += ran
                    if ran > run_time.max:
                        run_time.max = ran
                    if self._settle_error(worker, handle, exc):
                        self._forget_worker(worker, handle)
                        raise

                    now = clock()
                else:
                    now = clock()
                    worker.current = worker.deadline = None
                    self._ended += 1
                    ran = now - started_at
                    run_time.total += ran
                    if ran > run_time.max:
                        run_time.max = ran

                    extras = handle._extras
                    if extras is None or extras.cancel_reason is None:
                        handle._result = result
                        handle._state = SUCCEEDED
                        # _finish() for a success, inlined: the call cost
                        # about 3% of a task's instructions.
                        handle._settings = handle._settings.detached
                        handle._args = None
                        if handle._waiters is not None:
                            self._release_waiters(handle)
                        if self._dedup_keys:
                            self._release_dedup_key(handle)
                        finished = self._finished
                        finished.append(handle)
                        if len(finished) > self._table.trim_above:
                            self._table.trim()
                        if self._joins:
                            self._count_join(seq_of(handle))
                        if self._watchers:
                            self._wake_watchers()

                        if succeeded_hooks:
                            self._emit("on_succeeded", handle)
                            now = clock()  # the hooks may have taken a while
                    else:
                        # Interrupted, but the coroutine returned: hooks run here.
                        if self._settle_error(worker, handle, None):
                            self._forget_worker(worker, handle)
                            raise asyncio.CancelledError from None

                        now = clock()
        finally:
            # On Python 3.12 and later, a finished task coroutine's frame links
            # to this one, and a failed task's stored traceback keeps those
            # frames. Once this frame ends, its locals must not keep the queue
            # alive: neither the queue, nor its heap, nor hooks that name it.
            del self, pop, started_hooks, succeeded_hooks

    def _forget_worker(self, worker: _Worker, handle: TaskHandle[Any] | None) -> None:
        """Drop a worker that exits because it was cancelled from outside."""
        self._workers.remove(worker)
        del self._workers_by_task[worker.task]  # type: ignore[arg-type]
        self._update_gate()
        if self._lifecycle is not _ACCEPTING or self._workers_exit:
            return

        if handle is None:
            self._mass_cancelled = True

        # NOTE: a busy worker cancelled from outside may be a task cancelling
        # its own asyncio task, or the event loop closing. So the replacement
        # waits for a later call from a task that is not being cancelled,
        # because a worker started now could outlive the loop.
        self._lost_workers += 1
        self._fast_submit = False
        name = worker.task.get_name() if worker.task is not None else "?"
        if handle is None:
            # Mostly the event loop closing with the queue still running,
            # which needs no warning.
            logger.debug("idle worker %s was cancelled from outside the queue", name)
            return

        logger.warning(
            "worker %s was cancelled from outside the queue while it ran task "
            "%r, and has exited; the next submission, join(), stop() or await "
            "of a handle starts a new worker. A task runs inside its worker's "
            "asyncio task, so it must not cancel asyncio.current_task()",
            name,
            handle._id,
        )

    def _replace_lost_workers(self) -> None:
        """Start workers in place of those cancelled from outside.

        Only from a task that is not being cancelled, and not once an idle
        worker was cancelled: when the event loop closes, it cancels every
        task, and a worker started then would outlive it.
        """
        if self._lifecycle is _Lifecycle.STOPPED or self._workers_exit:
            return

        self._check_loop()
        current = asyncio.current_task(self._loop)
        if self._mass_cancelled or current is None or current.cancelling():
            return

        self._lost_workers = 0
        if self._lifecycle is _ACCEPTING:
            self._fast_submit = self._submits_inline()
        staying = sum(1 for worker in self._workers if not worker.retire)
        if staying < self._max_workers:
            self._add_workers(self._max_workers - staying)

    def _submits_inline(self) -> bool:
        """Return whether submissions may take the inline path."""
        return (
            not self._aging and self._max_pending is None and not self._submitted_hooks
        )

    def _held_back(self, worker: _Worker) -> bool:
        """Return whether ``worker`` must not start a task now."""
        if self._paused or worker.retire:
            return True

        if self._started - self._ended >= self._max_workers:
            # Workers that a shrink retired still finish their tasks.
            return True

        # Without a token, a timer wakes a worker when the next one is due.
        return self._rate is not None and not self._take_token()

    def _update_gate(self) -> None:
        # Workers ask _held_back() before each task only while this is set.
        self._gated = (
            self._paused
            or self._rate is not None
            or any(worker.retire for worker in self._workers)
        )

    def _drop_idle_watchdog(self) -> None:
        if self._running == 0 and self._watchdog is not None:
            # Nothing runs, so no deadline is left: an idle queue keeps no timer.
            self._watchdog.cancel()
            self._watchdog = None
            self._watchdog_at = math.inf

    async def _wait_for_work(self, worker: _Worker) -> None:
        self._drop_idle_watchdog()
        waiter = self._loop.create_future()
        worker.waiter = waiter
        self._idle.append(worker)
        try:
            await waiter
        finally:
            worker.waiter = None
            if worker.woken:  # _clear_woken() inlined, as it runs once per wake-up
                worker.woken = False
                self._waking -= 1
            if not waiter.done() or waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._idle.remove(worker)

    def _take_token(self) -> bool:
        """Return whether a task may start now, taking a rate-limit token."""
        assert self._rate is not None
        if not len(self._ready):
            return True  # nothing to start, so pop() takes no token

        now = self._loop.time()
        self._tokens = min(
            self._burst, self._tokens + (now - self._tokens_at) * self._rate
        )
        self._tokens_at = now
        # The token timer can fire up to the loop's timer slack early, with a
        # token short by that much. The token then counts as earned.
        if self._tokens >= 1 - self._slack * self._rate - _TOKEN_ROUNDING:
            # A token taken early is owed: the balance may go below 0, and
            # the next token is due that much later.
            self._tokens -= 1
            if self._idle and len(self._ready) > 1:
                # The token timer wakes one worker. Pass the wake-up on, so
                # that the next idle worker takes a token or sets the timer.
                self._wake_worker()

            return True

        if self._token_timer is None:
            due = now + (1 - self._tokens) / self._rate
            self._token_timer = self._loop.call_at(due, self._on_token)

        return False

    def _on_token(self) -> None:
        self._token_timer = None
        self._wake_worker()

    def _wake_worker(self) -> None:
        if self._paused:
            return

        idle = self._idle
        while idle:
            worker = idle.popleft()
            waiter = worker.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
                worker.woken = True
                self._waking += 1
                return

    def _settle_error(
        self, worker: _Worker, handle: TaskHandle[Any], exc: BaseException | None
    ) -> bool:
        """Settle a failed or interrupted attempt without letting the worker die.

        Returns whether the worker must re-raise and exit. An exception from
        the settling itself, such as a ``retry_on`` predicate that raises,
        fails the task with that exception instead.
        """
        self._settling.append(handle)
        try:
            return self._on_attempt_error(worker, handle, exc)
        except asyncio.CancelledError as error:
            assert worker.task is not None
            if worker.task.cancelling():
                raise  # the worker itself is being cancelled

            # Raised by a callback such as a retry_on predicate, not by a
            # cancellation: fail the task instead of ending the worker.
            wrapped = RuntimeError(
                f"settling an attempt of task {handle._id!r} raised "
                f"CancelledError({error}); a retry_on predicate or callback "
                "must not raise it"
            )
            wrapped.__cause__ = error
            self._fail_unsettled(handle, wrapped)
            return False
        except Exception as error:
            self._fail_unsettled(handle, error)
            return False
        finally:
            self._settling.remove(handle)

    def _fail_unsettled(self, handle: TaskHandle[Any], error: Exception) -> None:
        extras = extras_of(handle)
        if handle._state in (SUCCEEDED, FAILED, CANCELLED):
            outcome = "the task had already ended"  # the hooks or the log failed
        elif handle._state is RUNNING and extras.cancel_reason is CancelReason.CANCEL:
            outcome = "the task was cancelled first, so it ends cancelled"
        else:
            outcome = "the task fails with this error"
        with contextlib.suppress(Exception):
            logger.error(
                "settling an attempt of task %r failed; %s",
                handle._id,
                outcome,
                exc_info=error,
            )

        if handle._state in (SUCCEEDED, FAILED, CANCELLED):
            return

        if handle._state is RUNNING and extras.cancel_reason is CancelReason.CANCEL:
            # Cancelled while the attempt was settled, before the error: the
            # cancel took effect, so the task ends as cancel() promised.
            extras.cancel_reason = None
            self._set_cancelled(handle)
            return

        parked_in = handle._state
        handle._result = _strip_queue_frames(error)
        extras.traceback = error.__traceback__
        handle._state = FAILED
        if parked_in is WAITING_RETRY:
            self._waiting -= 1
            self._timers.mark_stale()
        elif parked_in is PENDING:
            self._ready.mark_stale(handle)  # requeued before the error

        self._failed += 1
        self._finish(handle)

        # Like any failed task: a hook and a dead letter, unless those are
        # what failed.
        with contextlib.suppress(Exception):
            self._emit("on_failed", handle, exception=error)
            self._add_dead_letter(handle, error)
        _strip_queue_frames(error)  # again, in case a callback raised it

    def _on_attempt_error(
        self, worker: _Worker, handle: TaskHandle[Any], exc: BaseException | None
    ) -> bool:
        """Settle an attempt that raised ``exc`` or was interrupted by the queue.

        Returns whether the worker must re-raise ``exc`` and exit.
        """
        reason = None if handle._extras is None else handle._extras.cancel_reason
        if reason is not None:
            return self._on_interrupted(worker, handle, reason, exc)

        assert exc is not None
        if isinstance(exc, asyncio.CancelledError):
            # Either the coroutine raised it on its own (say, it awaited a
            # future that someone cancelled), or someone other than this queue
            # cancelled the worker, for example the event loop shutting down.
            # Only the second leaves a cancel request on the worker.
            assert worker.task is not None
            outside = worker.task.cancelling() > 0
            if handle._state is RUNNING:
                if outside:
                    extras_of(handle).cancel_message = "the worker was cancelled"

                self._set_cancelled(handle)

            return outside

        if handle._state is RUNNING:
            self._retry_or_fail(handle, exc)

        return isinstance(exc, _FATAL)  # _is_fatal(), inlined for retries

    def _on_interrupted(
        self,
        worker: _Worker,
        handle: TaskHandle[Any],
        reason: CancelReason,
        exc: BaseException | None,
    ) -> bool:
        task = worker.task
        assert task is not None
        while worker.cancels:
            task.uncancel()
            worker.cancels -= 1

        extras_of(handle).cancel_reason = None
        if worker in self._stuck:
            # The abandoned coroutine has ended at last.
            self._stuck.remove(worker)
            self._abandoned_running -= 1

        if handle._state is RUNNING:
            if reason is CancelReason.TIMEOUT:
                error = TimeoutError(
                    f"task {handle._id!r} timed out after "
                    f"{handle._settings.timeout} s "
                    f"on attempt {handle._attempts}"
                )
                error.__cause__ = _strip_queue_frames(exc)
                self._emit("on_timed_out", handle, exception=error)
                # A fatal exception from the cleanup ends the worker and the
                # event loop, so a retry could never run: fail with it.
                failure: BaseException = error
                if exc is not None and _is_fatal(exc):
                    failure = exc
                self._retry_or_fail(handle, failure)
            else:
                self._set_cancelled(handle)

        # A cancel request that did not come from this queue is still pending
        # on the worker: let it end the worker.
        outside = task.cancelling() > 0
        if outside and exc is not None and not isinstance(exc, asyncio.CancelledError):
            raise asyncio.CancelledError()

        return outside or _is_fatal(exc)

    # Timeouts: one watchdog timer for all workers, set for the earliest
    # deadline. Starting a task only stores its deadline, unless that deadline
    # is earlier than the watchdog's, which is cheaper than a timer per task.

    def _set_watchdog(self, when: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

        self._watchdog_at = when
        self._watchdog = self._loop.call_at(when, self._on_watchdog)

    def _on_watchdog(self) -> None:
        self._watchdog = None
        self._watchdog_at = math.inf
        now = self._loop.time() + self._slack
        earliest: float | None = None
        for worker in self._workers:
            deadline = worker.deadline
            if deadline is None:
                continue

            if deadline <= now:
                worker.deadline = None
                handle = worker.current
                assert handle is not None
                self._interrupt(worker, handle, CancelReason.TIMEOUT, "task timed out")
            elif earliest is None or deadline < earliest:
                earliest = deadline

        if earliest is not None:
            self._set_watchdog(earliest)

    def _interrupt(
        self,
        worker: _Worker,
        handle: TaskHandle[Any],
        reason: CancelReason,
        msg: str | None,
    ) -> None:
        """Deliver ``CancelledError`` into the running task of ``worker``."""
        extras = extras_of(handle)
        if extras.cancel_reason is not None and reason is not CancelReason.CANCEL:
            return  # a timeout adds nothing to an interruption in progress

        # An explicit cancel overrides a timeout, and a repeated one is
        # delivered again to cut short a cleanup that still runs, as
        # Task.cancel() does.

        extras.cancel_reason = reason
        task = worker.task
        assert task is not None
        if asyncio.current_task(self._loop) is task:
            # The task cancels itself. Task.cancel() here would only take
            # effect at the worker's next await, which may belong to the next
            # task, so deliver it from a callback once the task is suspended.
            self._loop.call_soon(self._deliver_cancel, worker, handle, msg)
            return

        worker.cancels += 1
        task.cancel(msg)

    def _deliver_cancel(
        self, worker: _Worker, handle: TaskHandle[Any], msg: str | None
    ) -> None:
        if worker.current is handle and worker.task is not None:
            worker.cancels += 1
            worker.task.cancel(msg)

    # Retries: a task waiting out its backoff is parked in `_timers`, and one
    # loop timer is set for the earliest of them.

    def _retry_or_fail(self, handle: TaskHandle[Any], exc: BaseException) -> None:
        policy = handle._settings.retry
        retries_done = handle._attempts - 1
        if isinstance(exc, RetryAfter):
            # The task chose its delay; only the retry count still applies.
            retry = retries_done < policy.max_retries
        elif isinstance(exc, TypeError) and _is_call_error(exc):
            retry = False  # the arguments do not fit the function: retries cannot help
        elif _is_closed_queue_error(exc):
            retry = False  # a queue that closed never opens again
        else:
            retry = policy.should_retry(exc, retries_done)

        retry = retry and self._accept_retries
        delay = 0.0
        if retry and not _TestMode.enabled:
            if isinstance(exc, RetryAfter):
                delay = _checked_retry_after(exc)
            else:
                extras = handle._extras
                previous = None if extras is None else extras.last_delay
                delay = policy.delay(retries_done, previous)

        # Read again, since the policy's random source may have cancelled the
        # task. The extras are made only when needed: most retried tasks
        # never need them.
        extras = handle._extras
        if extras is not None and extras.cancel_reason is CancelReason.CANCEL:
            # Cancelled while this attempt was settled, by an on_timed_out
            # hook, the retry_on predicate or the policy's random source:
            # the task must not run again.
            extras.cancel_reason = None
            self._set_cancelled(handle)
            return

        if retry:
            if policy.jitter is Jitter.DECORRELATED:
                extras_of(handle).last_delay = delay  # the next delay grows from it
            self._retries += 1
            self._park(handle, delay)
            self._emit("on_retry_scheduled", handle, delay=delay, exception=exc)
            return

        handle._result = _strip_queue_frames(exc)
        extras_of(handle).traceback = exc.__traceback__
        handle._state = FAILED
        self._failed += 1
        self._finish(handle)
        self._emit("on_failed", handle, exception=exc)
        self._add_dead_letter(handle, exc)
        _strip_queue_frames(exc)  # again, in case a callback raised it

    def _emit(
        self,
        event: str,
        handle: TaskHandle[Any],
        delay: float | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Call the hooks that observe ``event``, if any.

        An event caused by a hook, such as ``on_cancelled`` when a hook
        cancels the task it is notified of, waits until every hook has seen the
        event in progress. Each hook thus sees a task's events in the order
        they happened.
        """
        callbacks = self._hooks[event]
        if not callbacks:
            return

        # The event is built and the hooks are called inline, because a hook
        # that observes on_started or on_succeeded brings every task here.
        fn = handle._fn
        extras = handle._extras
        record = new_event(
            TaskEvent,
            (
                handle._id,
                fn.__qualname__ if type(fn) is FunctionType else function_name(fn),
                handle._priority,
                handle._attempts,
                handle._state,
                self._clock(),
                delay,
                exception,
                None if extras is None else extras.progress,
            ),
        )
        if self._emitting:
            self._later.append((callbacks, record))
            return

        self._emitting = True
        try:
            for callback in callbacks:
                try:
                    callback(record)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException:
                    log_hook_failure(callback, record)

            later = self._later
            while later:
                call_hooks(*later.popleft())
        except BaseException:
            # Only KeyboardInterrupt or SystemExit gets here: drop the events
            # still waiting.
            self._later.clear()
            raise
        finally:
            self._emitting = False

    def _set_progress(self, handle: TaskHandle[Any], progress: Any) -> None:
        """Record the progress of ``handle``, a running task; see ``set_progress()``."""
        if asyncio._get_running_loop() is not self._loop:
            raise QueueStateError(
                f"set_progress() of task {handle._id!r} was called outside the "
                "queue's event loop; call it in the task or in the function "
                "that threaded() runs for it, or from another thread through "
                "loop.call_soon_threadsafe(handle.set_progress, value)"
            )

        extras_of(handle).progress = progress
        self._emit("on_progress", handle)

    def _set_progress_from_thread(
        self, handle: TaskHandle[Any], attempt: int, progress: Any
    ) -> None:
        """Record progress that attempt ``attempt`` reported from its thread."""
        if handle._state is RUNNING and handle._attempts == attempt:
            extras_of(handle).progress = progress
            self._emit("on_progress", handle)

    def _add_dead_letter(self, handle: TaskHandle[Any], exc: BaseException) -> None:
        letter = DeadLetter(
            task_id=handle._id,
            name=handle.name,
            fn=handle._fn,
            args=handle._args,
            priority=handle._priority,
            timeout=handle._settings.timeout,
            retry=handle._settings.retry,
            exception=exc,
            attempts=handle._attempts,
            dedup_key=None if handle._extras is None else handle._extras.dedup_key,
        )
        handle._args = None  # the letter keeps them for requeue()
        self._dead_letters.add(letter)
        if self._on_dead_letter is None:
            return

        try:
            self._on_dead_letter(letter)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # CancelledError too, as for hooks
            logger.exception(
                "on_dead_letter hook %r failed for task %r",
                self._on_dead_letter,
                handle._id,
            )

    def _park(self, handle: TaskHandle[Any], delay: float) -> None:
        if delay <= 0:
            handle._state = PENDING
            handle._queued_at = self._clock()
            self._ready.push(handle)
            if self._idle:
                self._wake_worker()

            return

        handle._state = WAITING_RETRY
        self._waiting += 1
        self._park_until(handle, self._loop.time() + delay)

    def _park_until(self, handle: TaskHandle[Any], when: float) -> None:
        self._timers.push(when, handle)
        if self._timer_handle is None or when < self._timer_at:
            self._set_timer(when)

    def _set_timer(self, when: float) -> None:
        if self._timer_handle is not None:
            self._timer_handle.cancel()

        self._timer_at = when
        self._timer_handle = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer_handle = None
        for handle in self._timers.pop_due(self._loop.time() + self._slack):
            state = handle._state
            if state is WAITING_RETRY or state is DELAYED:
                self._unpark(handle)
                handle._state = PENDING
                handle._queued_at = self._loop.time()
                self._ready.push(handle)
                if self._idle:
                    self._wake_worker()

        when = self._timers.next_time()
        if when is not None:
            self._set_timer(when)

    # Final states

    def _cancel_task(self, handle: TaskHandle[Any], msg: str | None) -> bool:
        # Called by TaskHandle.cancel() for a task that is not final.
        state = handle._state
        extras = extras_of(handle)
        extras.cancel_message = msg
        if state is RUNNING:
            worker = self._worker_running(handle)
            if worker is None:
                # The attempt has ended and is being settled, and this call
                # comes from a hook or predicate: the task must not run again.
                extras.cancel_reason = CancelReason.CANCEL
            else:
                self._interrupt(worker, handle, CancelReason.CANCEL, msg)
            return True

        if state is PENDING:
            handle._state = CANCELLED  # before mark_stale(), which may compact
            self._ready.mark_stale(handle)
        else:
            self._unpark(handle)
            handle._state = CANCELLED  # before mark_stale(), which may compact
            self._timers.mark_stale()

        self._set_cancelled(handle)
        if self._space_waiters:
            self._wake_space_waiters()

        return True

    def _unpark(self, handle: TaskHandle[Any]) -> None:
        """Count a task out of the timer heap; its stale entry stays there."""
        if handle._state is DELAYED:
            self._delayed -= 1
        else:
            self._waiting -= 1

    def _set_cancelled(self, handle: TaskHandle[Any], *, emit: bool = True) -> None:
        handle._state = CANCELLED
        self._cancelled += 1
        if handle._args is None and handle._attempts == 0:
            # A coroutine object that never ran: close it, so that Python does
            # not warn that it was never awaited.
            handle._fn.close()  # type: ignore[union-attr]

        self._finish(handle)
        if emit:
            self._emit("on_cancelled", handle)

    def _finish(self, handle: TaskHandle[Any]) -> None:
        """Record a task that has just reached its final state.

        The worker loop repeats these steps inline for a task that succeeded:
        a change here belongs there too.
        """
        handle._settings = handle._settings.detached
        if handle._state is not FAILED:
            # The arguments are freed now, not when the handle goes: the
            # result store and a stale heap entry keep handles for a while.
            # A failed task's go into its dead letter first.
            handle._args = None
        if handle._waiters is not None:
            self._release_waiters(handle)
        if self._dedup_keys:
            self._release_dedup_key(handle)

        # TaskTable.retain(), inlined: it runs once per task.
        finished = self._finished
        finished.append(handle)
        if len(finished) > self._table.trim_above:
            self._table.trim()

        if self._joins:
            self._count_join(seq_of(handle))

        if self._watchers:
            self._wake_watchers()

    def _release_dedup_key(self, handle: TaskHandle[Any]) -> None:
        """Free the dedup_key of a task that has just finished, if it had one."""
        key = self._dedup_keys.pop(handle, None)  # a dedup_key is never None
        if key is None:
            return

        try:
            owner = self._dedup.get(key)
        except Exception:
            owner = None  # its __hash__ or __eq__ raises now
        if owner is handle:
            del self._dedup[key]
        else:
            self._drop_changed_key(handle, key)

        if handle._state is FAILED:
            extras_of(handle).dedup_key = key  # for the dead letter

    def _drop_changed_key(self, handle: TaskHandle[Any], key: Hashable) -> None:
        """Free a dedup_key that no longer finds its task by hash and equality."""
        with contextlib.suppress(Exception):
            logger.warning(
                "dedup_key %r of task %r changed its hash or equality after "
                "submission; use an immutable key such as a str, an int or a "
                "tuple of them",
                key,
                handle._id,
            )

        # Rebuilt without the task's entry, since the key cannot find it.
        try:
            self._dedup = {k: h for k, h in self._dedup.items() if h is not handle}
        except Exception:
            # NOTE: another key raised as it was hashed again; the entry stays,
            # and that dedup_key stays taken.
            logger.exception("could not free the dedup_key of task %r", handle._id)

    def _release_waiters(self, handle: TaskHandle[Any]) -> None:
        waiters = handle._waiters
        assert waiters is not None
        handle._waiters = None
        for waiter in waiters:
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_result(None)
            else:
                self._loop.call_soon(waiter, handle)

    def _wake_watchers(self) -> None:
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)

    def _count_join(self, seq: int) -> None:
        for join in self._joins:
            if seq <= join.last_seq and seq != join.exclude_seq:
                join.remaining -= 1
                if join.remaining == 0 and not join.future.done():
                    join.future.set_result(None)

    # Shutdown

    async def _shut_down(
        self,
        mode: ShutdownMode,
        timeout: float | None,
        grace: float,
        dropped: list[TaskHandle[Any]],
        interrupted: list[TaskHandle[Any]],
    ) -> ShutdownReport:
        deadline = None if timeout is None else self._loop.time() + timeout
        escalated = False
        if self._lost_workers and mode is ShutdownMode.DRAIN:
            self._replace_lost_workers()  # for the tasks the drain waits for

        # A task of this queue that called stop() waits for the stop, so the
        # stop must not wait for it.
        def drained() -> bool:
            return self._table.unfinished <= self._running_stop_callers()

        def finished_running() -> bool:
            running = self._running - self._abandoned_running
            return running <= self._running_stop_callers()

        if mode is ShutdownMode.DRAIN:
            escalated = not await self._wait_until(drained, deadline)

        if mode is ShutdownMode.FINISH_RUNNING:
            escalated = not await self._wait_until(finished_running, deadline)

        abandoned: list[TaskHandle[Any]] = []
        if mode is ShutdownMode.CANCEL or escalated:
            self._accept_retries = False
            dropped += self._cancel_queued()
            if escalated:
                interrupted = self._cancel_running()
            grace_deadline = self._loop.time() + grace
            await self._wait_until(
                lambda: self._running <= self._abandoned_running,
                grace_deadline,
                escalate=False,
            )
            abandoned = self._abandon_running()

        await self._stop_workers()
        self._lifecycle = _Lifecycle.STOPPED
        self._fast_submit = False
        never_started = tuple(h for h in dropped if h._attempts == 0)
        retries_cancelled = tuple(h for h in dropped if h._attempts > 0)
        return ShutdownReport(
            mode,
            escalated,
            never_started,
            retries_cancelled,
            tuple(interrupted),
            tuple(abandoned),
        )

    async def _wait_until(
        self,
        condition: Callable[[], bool],
        deadline: float | None,
        *,
        escalate: bool = True,
    ) -> bool:
        """Wait until ``condition()`` holds, re-checked as each task finishes.

        Returns ``False`` if the deadline passes first or an escalation to
        ``CANCEL`` is requested while the condition does not hold.
        """
        while not condition():
            if escalate and self._escalate:
                return False

            watcher = self._loop.create_future()
            self._watchers.append(watcher)
            try:
                async with asyncio.timeout_at(deadline):
                    await watcher
            except TimeoutError:
                return condition()

        return True

    def _cancel_queued(self) -> list[TaskHandle[Any]]:
        """Cancel every pending, delayed and backing-off task."""
        if self._timer_handle is not None:
            self._timer_handle.cancel()
            self._timer_handle = None

        queued = self._ready.drain()
        queued += [
            h for h in self._timers.clear() if h._state in (WAITING_RETRY, DELAYED)
        ]
        self._dropped += len(queued)
        # Every task is final before any user code runs: a hook or a result's
        # finalizer that cancels a task further down the list then finds it
        # final, instead of counting out of the heap a task already drained.
        for handle in queued:
            if handle._state is not PENDING:
                self._unpark(handle)

            handle._state = CANCELLED
            extras_of(handle).cancel_message = "the queue was stopped"

        for handle in queued:
            self._set_cancelled(handle, emit=False)

        if self._hooks["on_dropped"]:
            for handle in queued:
                self._emit("on_dropped", handle)

        return queued

    def _cancel_running(self) -> list[TaskHandle[Any]]:
        running = []
        for worker in self._workers:
            handle = worker.current
            if handle is not None and handle._state is RUNNING:
                extras_of(handle).cancel_message = "the queue was stopped"
                self._interrupt(
                    worker, handle, CancelReason.CANCEL, "the queue was stopped"
                )
                running.append(handle)

        return running

    def _abandon_running(self) -> list[TaskHandle[Any]]:
        abandoned = []
        for worker in self._workers:
            handle = worker.current
            if handle is not None and handle._state is RUNNING:
                logger.error(
                    "task %r (%s) is still running %s after it was cancelled; "
                    "abandoning it: its coroutine suppresses CancelledError",
                    handle._id,
                    handle.name,
                    "past the grace period",
                )
                self._stuck.append(worker)
                self._abandoned_running += 1
                self._set_cancelled(handle)
                abandoned.append(handle)

        return abandoned

    async def _stop_workers(self) -> None:
        self._workers_exit = True
        # A task that called stop() may still run, and no worker is left for
        # its retry: if it fails, it fails for good.
        self._accept_retries = False
        if self._timer_handle is not None:
            # Only stale entries remain, of tasks cancelled while waiting.
            self._timer_handle.cancel()
            self._timer_handle = None

        caller_workers = [
            worker
            for caller in self._stop_callers
            if caller._state is RUNNING
            and (worker := self._worker_running(caller)) is not None
        ]
        if self._watchdog is not None and all(
            worker.deadline is None for worker in caller_workers
        ):
            # Otherwise the watchdog stays, for the callers' own timeouts.
            self._watchdog.cancel()
            self._watchdog = None
            self._watchdog_at = math.inf

        if self._token_timer is not None:
            self._token_timer.cancel()
            self._token_timer = None

        idle = [w for w in self._workers if w.waiter is not None]
        for worker in idle:
            if worker.waiter is not None and not worker.waiter.done():
                worker.waiter.set_result(None)

        skip = [*self._stuck, *caller_workers]  # these await this very stop

        tasks = [w.task for w in self._workers if w.task is not None and w not in skip]
        await asyncio.gather(*tasks, return_exceptions=True)

    # Helpers

    def _block_caller(self) -> Callable[[], None] | None:
        """Count the caller's worker as blocked while it awaits a handle.

        Returns the function that ends the count, or ``None`` if the caller
        is not a task of this queue. Once as many workers are blocked as may
        run at once, no task can start until one of their awaits ends, and
        the queue warns of it.
        """
        worker = self._calling_worker()
        if worker is None:
            return None

        caller = worker.current
        assert caller is not None
        attempt = caller._attempts
        if worker.awaiting_for is not caller or worker.awaiting_attempt != attempt:
            # Awaits left by the worker's earlier task or attempt, such as the
            # children of a gather() that failed, do not block this one.
            worker.awaiting_for = caller
            worker.awaiting_attempt = attempt
            worker.awaits = 0
        worker.awaits += 1
        self._check_blocked()
        return functools.partial(self._unblock_caller, worker, caller, attempt)

    def _unblock_caller(
        self, worker: _Worker, caller: TaskHandle[Any], attempt: int
    ) -> None:
        if worker.awaiting_for is caller and worker.awaiting_attempt == attempt:
            worker.awaits -= 1
            if worker.awaits == 0:
                worker.awaiting_for = None
        self._check_blocked()

    @staticmethod
    def _is_blocked(worker: _Worker) -> bool:
        """Return whether the current attempt of ``worker`` awaits a handle."""
        current = worker.current
        return (
            current is not None
            and worker.awaits > 0
            and worker.awaiting_for is current
            and worker.awaiting_attempt == current._attempts
        )

    def _blocked_tasks(self) -> list[TaskHandle[Any]]:
        """Return the running tasks whose current attempt awaits a handle."""
        return [
            w.current
            for w in self._workers
            if w.current is not None and self._is_blocked(w)
        ]

    def _blocked_workers(self) -> int:
        """Return the number of workers whose task awaits a handle of this queue."""
        return len(self._blocked_tasks())

    def _check_blocked(self) -> None:
        """Warn once when the blocked workers fill the pool.

        Called when an await begins or ends and when the pool is resized, so
        O(workers) there and never on the hot path.
        """
        waiting = self._blocked_tasks()
        blocked = len(waiting)
        if blocked < self._max_workers:
            self._blocked_warned = False
            return

        if self._blocked_warned:
            return

        self._blocked_warned = True
        task_ids = ", ".join(repr(h._id) for h in waiting[:_BLOCKED_IDS_SHOWN])
        if blocked > _BLOCKED_IDS_SHOWN:
            task_ids += ", ..."
        if blocked == 1:
            subject = f"task {task_ids} awaits"
        else:
            subject = f"tasks {task_ids} await"
        # A logging filter that raises must not break the await.
        with contextlib.suppress(Exception):
            logger.warning(
                "%s another task of the same queue while running, and with "
                "max_workers=%d no task can start until one of those awaits "
                "ends; await handles outside the queue's tasks, or raise "
                "max_workers",
                subject,
                self._max_workers,
            )

    def _calling_worker(self, *, thorough: bool = False) -> _Worker | None:
        """Return the busy worker of this queue that runs the current coroutine.

        That is the worker whose asyncio task is the current one, or started
        it and awaits it, directly or through ``gather()``. With
        ``thorough``, for the rare stop() and join(), it is also any busy
        worker that awaits the current task, even if another task made it.
        That check costs O(workers) instead of O(1).
        """
        if not thorough and CURRENT_WORKER.get() is None:
            return None  # no worker of any queue made the current task

        current = asyncio.current_task(self._loop)
        worker = self._workers_by_task.get(current)  # type: ignore[arg-type]
        if worker is None and current is not None:
            worker = self._worker_above(current)
            if worker is None and thorough:
                worker = next(
                    (
                        busy
                        for busy in self._workers
                        if busy.current is not None and _awaits(busy.task, current)
                    ),
                    None,
                )

        return None if worker is None or worker.current is None else worker

    def _calling_task(self, *, thorough: bool = False) -> TaskHandle[Any] | None:
        """Return the task that ``_calling_worker()`` runs, or ``None``."""
        worker = self._calling_worker(thorough=thorough)
        return None if worker is None else worker.current

    def _worker_above(self, task: asyncio.Task[Any]) -> _Worker | None:
        """Return this queue's worker that started ``task`` and awaits it."""
        # NOTE: the wait is found through attributes that asyncio's tasks and
        # gather() keep but do not document. A child awaited through
        # shield(), wait(), a TaskGroup, wait_for() before Python 3.12, or
        # only some steps after the call, leaves no such link, so a stop()
        # or join() made there waits for the task that made it.
        worker = CURRENT_WORKER.get()
        if worker is None or worker.task is None:
            return None

        if self._workers_by_task.get(worker.task) is not worker:
            return None  # a worker of another queue

        if worker.current is None or not _awaits(worker.task, task):
            return None

        return worker

    def _worker_running(self, handle: TaskHandle[Any]) -> _Worker | None:
        """Return the worker whose current task is ``handle``, or ``None``."""
        # NOTE: a scan, O(workers) per call, so that a handle needs no field
        # for its worker; cancelling each of 4,000 running tasks took 0.17 s.
        for worker in self._workers:
            if worker.current is handle:
                return worker

        return None

    def _settings_for(self, timeout: float | None, retry: RetryPolicy) -> TaskSettings:
        """Return settings for a task, shared with other tasks where they match."""
        recent = self._recent_settings
        if recent.retry is retry and recent.timeout is timeout:
            return recent  # the same options as the last call, the common case

        if retry is self._retry and timeout == self._timeout:
            settings = self._settings
        else:
            key = (timeout, id(retry))  # the settings keep `retry`, so its id too
            cached = self._settings_cache.get(key)
            if cached is None:
                if len(self._settings_cache) >= _SETTINGS_CACHE_SIZE:
                    self._settings_cache.clear()
                cached = self._settings_cache[key] = TaskSettings(self, timeout, retry)
            settings = cached

        self._recent_settings = settings
        return settings

    def _find_duplicate(self, dedup_key: object) -> TaskHandle[Any] | None:
        """Return the unfinished task submitted with ``dedup_key``, or ``None``."""
        try:
            return self._dedup.get(dedup_key)
        except TypeError:
            raise TypeError(
                f"dedup_key must be hashable, got {dedup_key!r} of type "
                f"{type(dedup_key).__name__}; use a str, an int or a tuple"
            ) from None

    def _check_task_id(self, task_id: object) -> str:
        task_id = _checks.check_task_id(task_id)
        self._table.expire()
        if task_id in self._table:
            raise DuplicateTaskIdError(
                f"task_id {task_id!r} is already used by a task that is "
                "unfinished, or finished and still retained (see max_results "
                "and result_ttl); choose another id, or pass dedup_key= to get "
                "the unfinished task's handle instead"
            )

        return task_id

    def _check_start_time(self, delay: object, at: object) -> float:
        if delay is not None and at is not None:
            raise TypeError(
                f"pass either delay ({delay!r}) or at ({at!r}), not both; "
                "at is a time on the loop clock, delay a number of seconds"
            )

        if delay is not None:
            seconds = _checks.check_seconds("delay", delay)
            assert seconds is not None
            return self._loop.time() + seconds

        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise TypeError(
                f"at must be a time on the event loop clock (loop.time()), "
                f"got {at!r} of type {type(at).__name__}"
            )

        if not _checks.is_finite(at):
            raise ValueError(f"at must be a finite loop time, got {at!r}")

        now = self._loop.time()
        if at - now > _YEAR and abs(at - time.time()) < at - now:
            # More than a year ahead on the loop clock and nearer the wall
            # clock: a time.time() value, which would not be due for decades.
            raise ValueError(
                f"at={at!r} is a wall-clock time (time.time()), not a time on "
                f"the event loop clock, which reads {now!r}; pass "
                "delay=at - time.time() instead"
            )

        return float(at)

    def _reject_aging_priority(self, priority: int) -> None:
        # The aging heap keys tasks by a float, which such an int overflows.
        raise ValueError(
            f"priority of {priority.bit_length()} bits is out of range for a "
            f"queue with aging_rate: it must be within +-{_FLOAT_MAX:g}, the "
            "float range; use a smaller priority"
        )

    def _raise_pool_closed(self, action: str) -> None:
        raise QueueClosedError(
            f"cannot {action} a queue that is {self._lifecycle.value}: stop() "
            "has begun and runs the workers until it returns; call "
            f"{action}() before stop()"
        )

    def _check_loop(self) -> None:
        """Raise unless the queue's event loop is open, no other loop runs, and
        the loop does not run in another thread.

        The queue's futures and worker tasks belong to the loop that ran
        ``start()``. Called where the queue starts workers or waits, and
        before every submission once workers were lost, which is what the
        closing of that loop does.
        """
        running = asyncio._get_running_loop()
        if running is self._loop:
            return

        if running is None and self._loop.is_running():
            raise QueueStateError(
                "the queue's event loop is running in another thread, and the "
                "queue is not thread-safe; use submit_threadsafe(), or run the "
                "call on the loop with loop.call_soon_threadsafe()"
            )

        if running is None and not self._loop.is_closed():
            return

        state = "is closed" if self._loop.is_closed() else "is not the running loop"
        raise QueueStateError(
            f"the queue belongs to the event loop that ran start(), which "
            f"{state}; create and start a queue inside each asyncio.run() or "
            "test that uses one, for example with 'async with AsyncTaskQueue()'"
        )

    def _raise_not_running(self, action: str = "submit") -> None:
        if self._lifecycle is _Lifecycle.NEW:
            raise QueueStateError(
                "the queue has not been started; call 'await queue.start()' "
                "first, or use 'async with AsyncTaskQueue() as queue'"
            )

        raise self._closed_error(action)

    def _closed_error(self, action: str = "submit") -> QueueClosedError:
        return QueueClosedError(
            f"the queue is {self._lifecycle.value} and accepts no new tasks; "
            f"{action} before calling stop(), or create a new queue"
        )


def _no_time() -> float:
    """Return 0.0: the clock of a queue that has not started."""
    return 0.0


def _timer_slack(loop: asyncio.AbstractEventLoop) -> float:
    """Return how long before its time ``loop`` may run a timer, by its clock.

    asyncio's loops run a timer once their clock is within its resolution of
    the timer's time. uvloop and other loops may count in whole milliseconds
    and run a timer a fraction of one early. A timer of the queue that finds
    its deadline this close counts it as reached, instead of setting itself
    again for the same time, which such a loop would run at once, over and
    over until its clock moved on.
    """
    if isinstance(loop, asyncio.BaseEventLoop):
        return _CLOCK_RESOLUTION

    return _COARSE_TIMER_SLACK


def _fast_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """Return the loop's clock, as ``time.monotonic`` itself where it is that.

    ``BaseEventLoop.time()`` only calls ``time.monotonic()``, so the C function
    gives the same times without a Python call per read. A loop that overrides
    ``time()``, such as a virtual clock, keeps its own.
    """
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic

    return loop.time


def _is_closed_queue_error(exc: BaseException) -> bool:
    """Return whether ``exc`` is, contains or was raised from a ``QueueClosedError``.

    A task that submits from an ``asyncio.TaskGroup`` gets it wrapped in an
    exception group, and a task may raise its own error ``from`` it.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # a cycle of causes ends
        seen.add(id(cause))
        if isinstance(cause, QueueClosedError):
            return True
        if (
            isinstance(cause, BaseExceptionGroup)
            and cause.subgroup(QueueClosedError) is not None
        ):
            return True
        cause = cause.__cause__

    return False


def _clear_woken(queue: AsyncTaskQueue | None, worker: _Worker) -> None:
    """Stop counting ``worker`` as one about to take a pending task."""
    if queue is not None and worker.woken:
        worker.woken = False
        queue._waking -= 1


def _worker_done(
    queue: weakref.ref[AsyncTaskQueue], worker: _Worker, task: asyncio.Task[None]
) -> None:
    _clear_woken(queue(), worker)


def _checked_retry_after(exc: RetryAfter) -> float:
    """Return the delay of ``exc``, checked again as the task raises it.

    ``RetryAfter()`` checks its delay, but the attribute can be changed later
    or set by a subclass. A NaN due time would stop the retry timer that
    every waiting task shares.
    """
    if not hasattr(exc, "delay"):
        raise TypeError(
            f"{type(exc).__name__} has no delay: a subclass of RetryAfter must "
            "call RetryAfter.__init__(self, seconds)"
        ) from exc

    try:
        seconds = _checks.check_seconds("RetryAfter.delay", exc.delay)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{error}; set it only through RetryAfter(seconds)") from exc

    assert seconds is not None
    return seconds


def _is_call_error(exc: BaseException) -> bool:
    """Return whether ``exc`` is a ``TypeError`` from calling the task's function.

    Binding the arguments to the parameters raises before the function's own
    frame exists, so the innermost frame of such an error is the worker's,
    or that of the ``BoundCall`` that made the call.
    """
    tb = exc.__traceback__
    if not isinstance(exc, TypeError) or tb is None:
        return False

    while tb.tb_next is not None:
        tb = tb.tb_next

    return tb.tb_frame.f_code in (_WORKER_CODE, _BOUND_CALL_CODE)


def _settle_from_handle(
    future: concurrent.futures.Future[Any], handle: TaskHandle[Any]
) -> None:
    exc = handle.exception()
    _settle_future(future, None if exc is not None else handle.result(), exc)


def _settle_future(
    future: concurrent.futures.Future[Any],
    result: object,
    exc: BaseException | None,
) -> None:
    # The future may be cancelled from its thread at any moment.
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


def _awaits(waiter: object, target: asyncio.Task[Any]) -> bool:
    """Return whether the asyncio task ``waiter`` waits for ``target``.

    Follows the future each task awaits and the children of each future
    that ``gather()`` returned, as long as they are not done: a task whose
    gather() has failed still names it until its next step.
    """
    pending = [waiter]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if item is target:
            return True

        if id(item) in seen or not isinstance(item, asyncio.Future) or item.done():
            continue

        seen.add(id(item))
        awaited = getattr(item, "_fut_waiter", None)
        if awaited is not None:
            pending.append(awaited)
        pending += getattr(item, "_children", ())

    return False


def _is_fatal(exc: BaseException | None) -> bool:
    """Return whether ``exc`` must end the worker and the event loop.

    As in ``asyncio.Task``, only ``KeyboardInterrupt`` and ``SystemExit`` do;
    any other ``BaseException`` fails its task like an ordinary exception.
    """
    return isinstance(exc, _FATAL)


_FATAL = (KeyboardInterrupt, SystemExit)


_WORKER_CODE = AsyncTaskQueue._run_worker.__code__
# The code of every method of the queue: a frame running one references it.
_QUEUE_CODES = frozenset(
    member.__code__
    for member in vars(AsyncTaskQueue).values()
    if isinstance(member, FunctionType)
)
_BOUND_CALL_CODE = BoundCall.__call__.__code__


def _strip_queue_frames(exc: BaseException | None) -> BaseException | None:
    """Drop the frames that lead to a queue from ``exc``'s traceback."""
    return strip_frames(exc, _QUEUE_CODES, _WORKER_CODE)
