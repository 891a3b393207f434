"""The state of a queue, and the steps that all its parts share."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from types import CodeType, FunctionType
from typing import TYPE_CHECKING, Any, ClassVar, cast

from . import _checks
from ._log import log
from .containers import AgingHeap, ReadyHeap, TaskTable, TimerHeap
from .deadletters import DeadLetter, DeadLetterStore
from .errors import QueueClosedError, QueueStateError
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
    _FINAL,
    CANCELLED,
    FAILED,
    Overflow,
    OverflowName,
    ShutdownMode,
    ShutdownReport,
    TaskHandle,
    TaskSettings,
    TimeSummary,
    extras_of,
    function_name,
    seq_of,
)
from .policies import RetryPolicy
from .schedules import Schedule

if TYPE_CHECKING:
    from .core import AsyncTaskQueue


# asyncio's loops run a timer callback up to one clock tick early, so a
# deadline within one tick of "now" counts as reached; see _timer_slack().
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution
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
        "cancels",
        "current",
        "deadline",
        "retire",
        "task",
        "waiter",
        "waits",
        "woken",
    )

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.current: TaskHandle[Any] | None = None
        self.deadline: float | None = None  # loop time at which `current` times out
        self.waiter: asyncio.Future[None] | None = None  # set while idle
        self.woken = False  # woken for a new task, and not yet running again
        self.awaiting_for: TaskHandle[Any] | None = None  # the task that waits
        self.awaiting_attempt = 0  # and its attempt
        # The waits of that attempt on this queue: the future of a handle's
        # await, or with True, of submit()'s wait for room, and the asyncio
        # task that waits.
        self.waits: list[tuple[asyncio.Future[Any], bool, asyncio.Task[Any]]] = []
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


class _IdleWait:
    """A ``wait_idle()`` call, done once no task but its caller's is unfinished.

    ``caller`` is the task of this queue that made the call or started the
    asyncio task that made it, ``None`` for other code, and ``worker`` runs
    it. The caller counts as unfinished unless the asyncio task of
    ``worker`` is ``task``, the one that awaits the call, or awaits it.
    """

    __slots__ = ("caller", "future", "task", "watch", "worker")

    def __init__(
        self,
        caller: TaskHandle[Any] | None,
        worker: _Worker | None,
        task: asyncio.Task[Any] | None,
        future: asyncio.Future[None],
    ) -> None:
        self.caller = caller
        self.worker = worker
        self.task = task
        self.future = future
        # The pending callback that looks at the caller's next step: a
        # call_soon() handle, or a future and the callback added to it.
        self.watch: asyncio.Handle | tuple[Any, Callable[[Any], None]] | None = None


class _QueueBase:
    """The fields of ``AsyncTaskQueue`` and the steps every part of it takes."""

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

    # Set by core once the class exists: the code of every method of the
    # queue, which a frame running one references, and of its worker loop.
    _queue_codes: ClassVar[frozenset[CodeType]]
    _worker_code: ClassVar[CodeType]

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
        queue = cast("AsyncTaskQueue", self)  # the only subclass
        self._settings = TaskSettings(queue, self._timeout, self._retry)
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
        # Each with whether its task starts now rather than after a delay.
        self._space_waiters: deque[tuple[asyncio.Future[bool], bool]] = deque()
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
            if isinstance(aging_rate, int):
                rate = aging_rate  # exact: the heap keys take an int as it is
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
        # The blocked attempts, as (seq, attempt), of the last warning that
        # every worker waits on the queue: each such set is warned of once.
        self._blocked_warned: frozenset[tuple[int, int]] = frozenset()
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = math.inf  # when `_watchdog` fires; inf without one

        self._joins: list[_Join | _IdleWait] = []
        self._watchers: list[asyncio.Future[None]] = []  # woken on every finished task
        self._stop_task: asyncio.Task[ShutdownReport] | None = None
        self._stop_made = asyncio.Event()  # set once _stop_task exists
        self._empty_report: ShutdownReport | None = None  # stop() before start()
        self._accept_retries = True
        self._escalate = False  # a later stop("cancel") cuts a graceful stop short
        self._stop_mode: ShutdownMode | None = None
        # Tasks of this queue awaiting stop(), each with its number of calls.
        self._stop_callers: dict[TaskHandle[Any], list[asyncio.Task[Any]]] = {}
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

    # Hook events

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

    # Final states

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
        log(
            logging.WARNING,
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
            log(
                logging.ERROR,
                "could not free the dedup_key of task %r",
                handle._id,
                exc_info=True,
            )

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
        idle_waits = False
        for join in self._joins:
            if isinstance(join, _IdleWait):
                idle_waits = True
            elif seq <= join.last_seq and seq != join.exclude_seq:
                join.remaining -= 1
                if join.remaining == 0 and not join.future.done():
                    join.future.set_result(None)

        if idle_waits:
            self._check_idle_waits()

    def _is_idle_for(self, wait: _IdleWait) -> bool:
        """Return whether no task but the waiting caller's is unfinished."""
        unfinished = self._table.unfinished
        if unfinished > 1:
            return False  # even without the caller's task, one is left

        if self._caller_waits(wait):
            unfinished -= 1  # it cannot finish before the wait does

        return unfinished <= 0

    def _caller_waits(self, wait: _IdleWait) -> bool:
        """Return whether the task that made ``wait`` is unfinished and awaits it."""
        caller, worker, task = wait.caller, wait.worker, wait.task
        if caller is None or worker is None or task is None:
            return False

        if caller._state in _FINAL or worker.current is not caller:
            return False

        return worker.task is task or _awaits(worker.task, task)

    def _check_idle_waits(self) -> None:
        """Finish the ``wait_idle()`` calls that nothing unfinished holds up."""
        for join in self._joins:
            if not isinstance(join, _IdleWait) or join.future.done():
                continue

            if self._is_idle_for(join):
                join.future.set_result(None)

    # Workers

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

    def _wake_workers(self) -> None:
        for _ in range(min(len(self._idle), len(self._ready))):
            self._wake_worker()

    def _update_gate(self) -> None:
        # Workers ask _held_back() before each task only while this is set.
        self._gated = (
            self._paused
            or self._rate is not None
            or any(worker.retire for worker in self._workers)
        )

    def _worker_running(self, handle: TaskHandle[Any]) -> _Worker | None:
        """Return the worker whose current task is ``handle``, or ``None``."""
        # NOTE: a scan, O(workers) per call, so that a handle needs no field
        # for its worker; cancelling each of 4,000 running tasks took 0.17 s.
        for worker in self._workers:
            if worker.current is handle:
                return worker

        return None

    # Checks and errors

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

    def _raise_pool_closed(self, action: str) -> None:
        raise QueueClosedError(
            f"cannot {action} a queue that is {self._lifecycle.value}: stop() "
            "has begun and runs the workers until it returns; call "
            f"{action}() before stop()"
        )

    # Room in a bounded queue

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

    def _is_full(self, *, starts_now: bool = False) -> bool:
        """Return whether a new task would find no room under ``max_pending``.

        With ``starts_now``, the new task is one to start now, not delayed:
        if a woken or idle worker is free to start it at once, it needs no
        room, even beside delayed tasks that fill the bound. Not while the
        workers are held back, as in ``_waiting_count()``.
        """
        assert self._max_pending is not None
        if self._waiting_count() < self._max_pending:
            return False

        if not starts_now or self._gated:
            return True

        # Workers left free once the pending tasks and promised rooms are taken.
        free = self._waking + len(self._idle) - len(self._ready) - self._reserved
        return free <= 0

    def _wake_space_waiters(self) -> None:
        """Promise room to waiting submitters, first come first served."""
        waiters = self._space_waiters
        while waiters and not self._is_full(starts_now=waiters[0][1]):
            waiter, _ = waiters.popleft()
            if not waiter.done():
                self._reserved += 1
                waiter.set_result(True)


def _no_time() -> float:
    """Return 0.0: the clock of a queue that has not started."""
    return 0.0


# Argument errors of the constructor name the class that callers see.
_QueueBase.__init__.__qualname__ = "AsyncTaskQueue.__init__"


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
