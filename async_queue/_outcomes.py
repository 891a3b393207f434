"""The end of an attempt: errors, retries, timeouts, cancellation and progress."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

from . import _checks
from ._base import _QueueBase, _Worker
from ._frames import strip_frames
from ._log import log
from .deadletters import DeadLetter
from .errors import QueueClosedError, QueueStateError, RetryAfter
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
    TaskHandle,
    extras_of,
)
from .policies import Jitter
from .testing import _TestMode

_FATAL = (KeyboardInterrupt, SystemExit)
_BOUND_CALL_CODE = BoundCall.__call__.__code__


class _Outcomes(_QueueBase):
    """Settles attempts that fail, time out or are cancelled."""

    __slots__ = ()

    def _strip_frames(self, exc: BaseException | None) -> BaseException | None:
        """Drop the frames that lead to a queue from ``exc``'s traceback."""
        return strip_frames(exc, self._queue_codes, self._worker_code)

    def _is_call_error(self, exc: BaseException) -> bool:
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

        return tb.tb_frame.f_code in (self._worker_code, _BOUND_CALL_CODE)

    def _settle_error(
        self,
        worker: _Worker,
        handle: TaskHandle[Any],
        exc: BaseException | None,
        started_at: float,
    ) -> bool:
        """Settle a failed or interrupted attempt without letting the worker die.

        ``started_at`` is the loop time at which the attempt started. Returns
        whether the worker must re-raise and exit. An exception from the
        settling itself, such as a ``retry_on`` predicate that raises, fails
        the task with that exception instead.
        """
        self._settling.append(handle)
        try:
            return self._on_attempt_error(worker, handle, exc, started_at)
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
        log(
            logging.ERROR,
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
        handle._result = self._strip_frames(error)
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
        self._strip_frames(error)  # again, in case a callback raised it

    def _on_attempt_error(
        self,
        worker: _Worker,
        handle: TaskHandle[Any],
        exc: BaseException | None,
        started_at: float,
    ) -> bool:
        """Settle an attempt that raised ``exc`` or was interrupted by the queue.

        Returns whether the worker must re-raise ``exc`` and exit.
        """
        reason = None if handle._extras is None else handle._extras.cancel_reason
        if reason is not None:
            return self._on_interrupted(worker, handle, reason, exc, started_at)

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
            self._retry_or_fail(handle, exc, started_at)

        return isinstance(exc, _FATAL)  # _is_fatal(), inlined for retries

    def _on_interrupted(
        self,
        worker: _Worker,
        handle: TaskHandle[Any],
        reason: CancelReason,
        exc: BaseException | None,
        started_at: float,
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
                error.__cause__ = self._strip_frames(exc)
                self._emit("on_timed_out", handle, exception=error)
                # A fatal exception from the cleanup ends the worker and the
                # event loop, so a retry could never run: fail with it.
                failure: BaseException = error
                if exc is not None and _is_fatal(exc):
                    failure = exc
                self._retry_or_fail(handle, failure, started_at)
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

    def _retry_or_fail(
        self, handle: TaskHandle[Any], exc: BaseException, started_at: float
    ) -> None:
        policy = handle._settings.retry
        retries_done = handle._attempts - 1
        if isinstance(exc, RetryAfter):
            # The task chose its delay; only the retry count still applies.
            retry = retries_done < policy.max_retries
        elif isinstance(exc, TypeError) and self._is_call_error(exc):
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

        if retry and policy.max_elapsed is not None:
            retry = self._within_budget(handle, exc, started_at, delay)

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

        handle._result = self._strip_frames(exc)
        extras_of(handle).traceback = exc.__traceback__
        handle._state = FAILED
        self._failed += 1
        self._finish(handle)
        self._emit("on_failed", handle, exception=exc)
        self._add_dead_letter(handle, exc)
        self._strip_frames(exc)  # again, in case a callback raised it

    def _within_budget(
        self,
        handle: TaskHandle[Any],
        exc: BaseException,
        started_at: float,
        delay: float,
    ) -> bool:
        """Return whether a retry after ``delay`` starts within ``max_elapsed``.

        The budget counts from the start of the first attempt, which is
        recorded when that attempt fails. A retry past it is not made, and a
        note on ``exc`` explains why.
        """
        budget = handle._settings.retry.max_elapsed
        assert budget is not None
        extras = extras_of(handle)
        if handle._attempts == 1 or extras.first_started is None:
            extras.first_started = started_at

        elapsed = self._loop.time() + delay - extras.first_started
        if elapsed <= budget:
            return True

        # A note keeps the task's own exception as its outcome. An exception
        # whose __notes__ is not a list cannot take one.
        with contextlib.suppress(Exception):
            exc.add_note(
                f"not retried: retry {handle._attempts} would start {elapsed:.6g} s "
                f"after the first attempt started, past the retry policy's "
                f"max_elapsed={budget:g}"
            )
        return False

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
            log(
                logging.ERROR,
                "on_dead_letter hook %r failed for task %r",
                self._on_dead_letter,
                handle._id,
                exc_info=True,
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


def _is_fatal(exc: BaseException | None) -> bool:
    """Return whether ``exc`` must end the worker and the event loop.

    As in ``asyncio.Task``, only ``KeyboardInterrupt`` and ``SystemExit`` do;
    any other ``BaseException`` fails its task like an ordinary exception.
    """
    return isinstance(exc, _FATAL)
