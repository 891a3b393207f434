"""Admission: room in a bounded queue, overflow policies and the rate limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from ._base import _ACCEPTING
from ._blocking import _Blocking
from ._context import CURRENT_WORKER
from ._log import log
from .containers import ReadyHeap
from .errors import QueueFullError
from .models import CANCELLED, Overflow, TaskHandle, _format_int, extras_of

# Seconds of the loop's clock between two warnings about overflow drops. The
# drops in between are counted, and the next warning gives their number.
_DROP_LOG_INTERVAL = 10.0

# The part of a token that rounding can take from one that is exactly due:
# two readings near 33,000 s differ by up to 7e-12 s too little, which at
# 2,000 tokens per second is 1.5e-8 of a token.
_TOKEN_ROUNDING = 1e-6


class _Admission(_Blocking):
    """Decides whether a task may enter the queue, and when one may start."""

    __slots__ = ()

    def _must_wait_for_room(self, *, starts_now: bool) -> bool:
        if self._lifecycle is not _ACCEPTING:
            return False  # submit_nowait() raises the lifecycle error

        return bool(self._space_waiters) or self._is_full(starts_now=starts_now)

    def _take_room(self, overflow: Overflow, *, starts_now: bool) -> bool:
        """Take room for a new task; return ``False`` if the queue is full.

        ``starts_now`` is true for a task that is not delayed. A full queue
        raises ``QueueFullError`` unless ``overflow`` drops tasks.
        """
        if self._admitting:
            self._admitting = False
            self._reserved -= 1
            return True

        if not (self._space_waiters or self._is_full(starts_now=starts_now)):
            return True

        if overflow is Overflow.WAIT:
            advice = "use 'await queue.submit()' to wait for room, or raise max_pending"
        elif overflow is Overflow.RAISE:
            advice = "submit again later, or raise max_pending"
        else:
            return False

        raise self._full_error(advice)

    def _lowest_below(self, priority: int) -> tuple[TaskHandle[Any], str] | None:
        """Pick the pending task that would start last, if ``priority`` beats it.

        Only the ``"drop_lowest"`` policy picks one. Returns it with the
        message to drop it with, and changes nothing: the caller drops it
        with ``_drop_lowest()`` once the new task is in the task table, so
        that no moment in between looks idle to ``wait_idle()``.
        """
        if self._overflow is not Overflow.DROP_LOWEST:
            return None

        if self._waiting_count() <= self._delayed + self._reserved:
            # Every pending task is one that a woken worker is about to
            # start: it takes no room, so dropping it would make none.
            return None

        assert isinstance(self._ready, ReadyHeap)  # no aging with drop_lowest
        victim = self._ready.last_to_start()
        if victim is None or victim._priority >= priority:
            return None

        # Built first, so that nothing can fail once the victim's state changes.
        # str() raises for an int of more than 4300 digits.
        message = self._drop_message(f"for a task of priority {_format_int(priority)}")
        return victim, message

    def _drop_lowest(self, victim: TaskHandle[Any], message: str) -> None:
        """Drop the task that ``_lowest_below()`` picked; its caller emits the event."""
        victim._state = CANCELLED  # before mark_stale(), which may compact
        self._ready.mark_stale(victim)
        self._drop(victim, message)

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
        log(
            logging.WARNING,
            "task %r (%s) %s%s",
            handle._id,
            handle.name,
            message,
            since,
        )

    def _log_unlogged_drops(self) -> None:
        """Log the overflow drops that no warning has counted yet."""
        count, self._drops_unlogged = self._drops_unlogged, 0
        if count:
            log(
                logging.WARNING,
                "%d more dropped by the overflow policy since the last such warning",
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

    async def _wait_for_room(self, *, starts_now: bool) -> None:
        """Wait, behind earlier waiters, until a room is reserved for us.

        ``starts_now`` is true for a task that is not delayed, so that a worker
        free to start it at once lets it in, as in ``_is_full()``.
        """
        waiter: asyncio.Future[bool] = self._loop.create_future()
        entry = (waiter, starts_now)
        self._space_waiters.append(entry)
        # A task that waits for room in its own queue keeps a worker that
        # would start a pending task and make that room.
        unblock = None
        if CURRENT_WORKER.get() is not None:
            unblock = self._block_caller(waiter, room=True)
        try:
            has_room = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                # Woken and cancelled in the same step: pass the room on.
                self._reserved -= 1
                self._wake_space_waiters()
            else:
                with contextlib.suppress(ValueError):
                    self._space_waiters.remove(entry)

            raise
        finally:
            if unblock is not None:
                unblock()

        if not has_room:
            self._raise_not_running()

        self._admitting = True

    def _release_space_waiters(self) -> None:
        """Wake every waiting submitter with the news that the queue closed."""
        waiters, self._space_waiters = self._space_waiters, deque()
        for waiter, _ in waiters:
            if not waiter.done():
                waiter.set_result(False)

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
