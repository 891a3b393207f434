"""The queue: its public API, submission and the worker loop.

``AsyncTaskQueue`` inherits its other steps from private base classes, one
module each. ``_base`` contains its fields and the steps that all parts share,
``_admission`` the room in a bounded queue and the rate limit, ``_outcomes``
failures, retries, timeouts and cancellation, ``_shutdown`` the steps of
``stop()``, and ``_blocking`` the workers that await their own queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import functools
import inspect
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from types import FunctionType, TracebackType
from typing import Any, Literal, NoReturn, SupportsIndex, TypeVar, TypeVarTuple, final

from . import _checks
from ._admission import _Admission
from ._base import (
    _ACCEPTING,
    _CLOCK_RESOLUTION,
    _IdleWait,
    _Join,
    _Lifecycle,
    _Worker,
)
from ._context import CURRENT_WORKER
from ._log import log
from ._shutdown import _Shutdown
from .containers import AgingHeap
from .deadletters import DeadLetter
from .errors import (
    DuplicateTaskIdError,
    QueueFullError,
    QueueStateError,
    TaskNotFoundError,
)
from .models import (
    DELAYED,
    RUNNING,
    SUCCEEDED,
    Overflow,
    QueueStats,
    ShutdownMode,
    ShutdownReport,
    TaskExtras,
    TaskHandle,
    TaskId,
    TaskSettings,
    new_handle,
    seq_of,
)
from .policies import RetryPolicy
from .schedules import Schedule

__all__ = ("AsyncTaskQueue",)


T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# Distinct (timeout, retry policy) pairs whose task settings are kept for reuse.
# The cache empties when full: past this many pairs in turn, each misses.
_SETTINGS_CACHE_SIZE = 64

# uvloop 0.23 keeps time in whole milliseconds and ran timers up to 0.4 ms
# early by its own clock in the tests of this project.
_COARSE_TIMER_SLACK = 0.0005


class _Unset(enum.Enum):
    UNSET = "unset"


_UNSET = _Unset.UNSET
_YEAR = 365 * 24 * 3600.0
_CO_COROUTINE = inspect.CO_COROUTINE
_RESIZE_ADVICE = "the pool has a fixed size; call pause() to stop starting tasks"


@final
class AsyncTaskQueue(_Shutdown, _Admission):
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
        # NOTE: workers start eagerly and max_workers has no upper bound, so a
        # size far beyond memory exhausts it here instead of failing a check.
        limit = self._max_workers
        staying = sum(not w.retire for w in self._workers)
        for _ in range(count):
            if self._max_workers != limit:
                # A task that an eager task factory ran inside this call has
                # resized the pool: count again against the new size.
                limit = self._max_workers
                staying = sum(not w.retire for w in self._workers)
            if staying >= limit:
                return

            staying += 1
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
            log(logging.DEBUG, "resized the pool from %d to %d workers", old, count)
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
        log(logging.DEBUG, "resized the pool from %d to %d workers", old, count)

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

        if self._stop_task is not None and not self._stop_task.done():
            # A later call joins or escalates a stop in progress, on its loop.
            self._check_loop()

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
        current = asyncio.current_task()
        assert current is not None  # stop() is a coroutine
        if caller is not None:
            self._stop_callers.setdefault(caller, []).append(current)
            self._wake_watchers()  # the stop may wait for nothing more now
            # An eager child task calls before its task can await it, which
            # is what makes it the task's call: check again after this step.
            self._loop.call_soon(self._wake_watchers)

        try:
            # Shielded, so that cancelling one caller of stop() does not cut
            # the shutdown short for the others.
            return await asyncio.shield(self._stop_task)
        finally:
            if caller is not None:
                # A caller that stops waiting is waited for again.
                calls = self._stop_callers[caller]
                calls.remove(current)
                if not calls:
                    del self._stop_callers[caller]

    def _running_stop_callers(self) -> int:
        return len(self._awaiting_stop_callers())

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

        starts_now = delay is None and at is None
        if (
            self._max_pending is not None
            and self._overflow is Overflow.WAIT
            and self._must_wait_for_room(starts_now=starts_now)
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

                # Checked again: an eager task factory runs the new workers
                # inside the call, and they may have made room already.
                if self._must_wait_for_room(starts_now=starts_now):
                    await self._wait_for_room(starts_now=starts_now)

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

        lowest = None
        drop_new = False
        starts_now = start_at is None or start_at <= self._loop.time()
        if self._max_pending is not None and not self._take_room(
            self._overflow if overflow is None else overflow, starts_now=starts_now
        ):
            lowest = self._lowest_below(priority) if overflow is None else None
            drop_new = lowest is None

        self._seq = seq
        if retry is self._retry and timeout is self._timeout:
            settings = self._settings
        else:
            settings = self._settings_for(timeout, retry)
        handle = new_handle(settings, key, fn, call_args, priority)
        if task_id is not None:
            handle._extras = TaskExtras(seq)
        self._table.tasks[key] = handle
        victim = None
        if lowest is not None:
            victim = lowest[0]
            self._drop_lowest(*lowest)
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
        _checks.check_priority(priority)

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

    # Waiting for the backlog

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

        exclude = seq_of(caller) if caller is not None else 0
        future = self._loop.create_future()
        await self._wait_for_join(_Join(remaining, self._seq, future, exclude))

    async def wait_idle(self) -> None:
        """Wait until no task is pending, running, delayed or backing off.

        Unlike ``join()``, it also waits for the tasks submitted while it
        waits, such as those that running tasks submit. It returns at the
        first moment that no task is unfinished, as ``asyncio.Queue.join()``
        does, even if code that the last task's end wakes submits another
        task before the caller resumes. Between two runs of an ``every()``
        schedule the queue is idle.

        A task of this queue that calls it does not count while it waits,
        and neither does one that awaits a child task that calls it,
        directly, through ``gather()`` or through other tasks. On a paused
        queue it waits until ``resume()`` lets the pending tasks run. It
        waits forever when another task of the queue waits for its caller:
        when two tasks both call it, or when a task awaits the handle of a
        task that calls it.
        """
        if self._table.unfinished == 0:
            return  # also before start(), when there is no loop yet

        # The task of this queue that made the call, or made the asyncio task
        # that makes it: it counts only while it does not await the call.
        worker = self._calling_worker(thorough=True) or self._creating_worker()
        caller = task = None
        if worker is not None:
            caller = worker.current
            task = asyncio.current_task(self._loop)
        wait = _IdleWait(caller, worker, task, self._loop.create_future())
        if self._is_idle_for(wait):
            return

        if caller is not None:
            self._watch_caller(wait)
        await self._wait_for_join(wait)

    async def _wait_for_join(self, join: _Join | _IdleWait) -> None:
        """Wait until ``join`` is done, with its worker counted as blocked."""
        self._joins.append(join)
        unblock = None
        try:
            if self._lost_workers:
                # Or the tasks would never start. After the join is in place:
                # an eager task factory runs the new workers inside the call.
                # On a closed loop this raises, and the join leaves again.
                self._replace_lost_workers()

            # A task that joins waits for the others with its worker held.
            if CURRENT_WORKER.get() is not None:
                unblock = self._block_caller(join.future)
            await join.future
        finally:
            if join in self._joins:
                self._joins.remove(join)
            if isinstance(join, _IdleWait):
                self._unwatch(join)
            if unblock is not None:
                unblock()

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
                    if self._settle_error(worker, handle, exc, started_at):
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
                        if self._settle_error(worker, handle, None, started_at):
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
            log(
                logging.DEBUG,
                "idle worker %s was cancelled from outside the queue",
                name,
            )
            return

        log(
            logging.WARNING,
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
        # NOTE: a callback, such as a submission from a thread or a schedule,
        # cannot tell an open loop from one that closes and has cancelled
        # every task, so its task waits for a later call from a coroutine.
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
        if self._space_waiters:
            self._wake_space_waiters()  # a submitter may start its task here
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
            await self._wait_until(finished_running, grace_deadline, escalate=False)
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

    # Helpers

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


def _clear_woken(queue: AsyncTaskQueue | None, worker: _Worker) -> None:
    """Stop counting ``worker`` as one about to take a pending task."""
    if queue is not None and worker.woken:
        worker.woken = False
        queue._waking -= 1


def _worker_done(
    queue: weakref.ref[AsyncTaskQueue], worker: _Worker, task: asyncio.Task[None]
) -> None:
    _clear_woken(queue(), worker)


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


# The frames that lead into a queue, for the outcomes to drop from tracebacks.
AsyncTaskQueue._worker_code = AsyncTaskQueue._run_worker.__code__
AsyncTaskQueue._queue_codes = frozenset(
    member.__code__
    for base in AsyncTaskQueue.__mro__
    for member in vars(base).values()
    if isinstance(member, FunctionType)
)
