"""Periodic tasks: a coroutine function that the queue submits at a fixed rate."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, NoReturn, SupportsIndex, TypeVar

from ._log import log
from .errors import QueueFullError
from .models import Overflow, TaskHandle, function_name
from .policies import RetryPolicy

if TYPE_CHECKING:
    from .core import AsyncTaskQueue

__all__ = ("Schedule",)

T = TypeVar("T")


class Schedule(Generic[T]):
    """A coroutine function that the queue submits every ``interval`` seconds.

    Made by ``AsyncTaskQueue.every()``. Run ``k`` (from 0) is due at the time
    of the first run plus ``k * interval`` on the loop's clock, so the rate
    does not drift however long each run takes. Each run is an ordinary task
    with its own handle, hooks and statistics.

    At most one run is unfinished at a time. A run that is due while the
    previous one is still pending, running or waiting out a retry's backoff
    is skipped, and so is a run that a full queue rejects. Runs that fall
    due while the event loop is blocked are coalesced into one.
    """

    __slots__ = (
        "__weakref__",
        "_args",
        "_first",
        "_fn",
        "_full_skips",
        "_interval",
        "_last",
        "_max_runs",
        "_priority",
        "_queue",
        "_retry",
        "_runs",
        "_skipped",
        "_ticks",
        "_timeout",
        "_timer",
    )

    def __init__(
        self,
        queue: AsyncTaskQueue,
        interval: float,
        first: float,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        options: tuple[int, Any, RetryPolicy | None, int | None],
    ) -> None:
        self._queue: AsyncTaskQueue | None = queue
        self._interval = interval
        self._first = first
        self._fn = fn
        self._args = args
        self._priority, self._timeout, self._retry, self._max_runs = options
        self._ticks = 0  # due times passed so far, run or skipped
        self._runs = 0
        self._skipped = 0
        self._full_skips = 0  # due times skipped in a row for a full queue
        self._last: TaskHandle[T] | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        """The qualified name of the coroutine function."""
        return function_name(self._fn)

    @property
    def interval(self) -> float:
        """Seconds between the times at which runs are due."""
        return self._interval

    @property
    def active(self) -> bool:
        """Whether more runs will be submitted."""
        return self._open_queue() is not None

    @property
    def runs(self) -> int:
        """How many runs were submitted."""
        return self._runs

    @property
    def skipped(self) -> int:
        """How many due times passed without a run being submitted."""
        return self._skipped

    @property
    def next_run(self) -> float | None:
        """The loop time at which the next run is due, or ``None`` if inactive."""
        if self._open_queue() is None:
            return None

        return self._first + self._ticks * self._interval

    @property
    def last(self) -> TaskHandle[T] | None:
        """The handle of the latest run, or ``None`` before the first."""
        return self._last

    def cancel(self) -> bool:
        """Submit no more runs; return ``False`` if the schedule had ended.

        A schedule has ended once its event loop has closed. A run that is
        unfinished keeps going: cancel ``last`` to end it as well.
        """
        queue = self._queue
        if queue is None:
            return False

        queue._schedules.pop(self, None)
        self._end()
        return not queue._loop.is_closed()

    def __copy__(self) -> Schedule[T]:
        # A copy would share the timer of the next run, so that cancelling the
        # copy would stop this schedule while `active` still returned True.
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Schedule[T]:
        return self

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError(
            f"a Schedule cannot be pickled: schedule {self.name} runs on the "
            "event loop of its queue; pickle its interval and function instead"
        )

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        return (
            f"<Schedule {self.name} every {self._interval:g}s {state} "
            f"runs={self._runs} skipped={self._skipped}>"
        )

    def _open_queue(self) -> AsyncTaskQueue | None:
        """Return the queue, or ``None`` once ended or once the loop closed.

        A loop that closes without ``stop()`` drops the timer of the next run.
        """
        queue = self._queue
        if queue is None or queue._loop.is_closed():
            return None

        return queue

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_at(self._first, self._on_due)

    def _end(self) -> None:
        """Cancel the timer and drop the queue, which no longer lists this schedule."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

        self._queue = None

    def _on_due(self) -> None:
        self._timer = None
        queue = self._queue
        assert queue is not None
        loop = queue._loop

        # Due times that passed while the loop was busy are coalesced into the
        # run submitted now, and count as skipped.
        self._ticks += 1
        now = loop.time()
        behind = math.floor((now - self._first) / self._interval) + 1 - self._ticks
        if behind > 0:
            self._ticks += behind
            self._skipped += behind
        while self._first + self._ticks * self._interval <= now:  # float rounding
            self._ticks += 1
            self._skipped += 1

        try:
            self._submit(queue)
        finally:
            if self._max_runs is not None and self._runs >= self._max_runs:
                queue._schedules.pop(self, None)
                self._end()
            elif self._queue is not None:
                self._timer = loop.call_at(self.next_run, self._on_due)  # type: ignore[arg-type]

    def _submit(self, queue: AsyncTaskQueue) -> None:
        last = self._last
        if last is not None and not last.done():
            self._skipped += 1
            log(
                logging.DEBUG,
                "skipped a run of schedule %s: task %r is still %s",
                self.name,
                last.id,
                last.state.value,
            )
            return

        try:
            # As submit_nowait(), but a full queue raises whatever its
            # overflow policy: a run is skipped, and never drops another task.
            self._last = queue._submit_checked(
                self._fn,
                self._args,
                self._priority,
                self._timeout,
                self._retry,
                None,
                None,
                None,
                None,
                overflow=Overflow.RAISE,
            )
        except QueueFullError as exc:
            self._skipped += 1
            self._full_skips += 1
            if self._full_skips == 1:
                # Once per spell of a full queue, which may last many due times.
                log(
                    logging.WARNING,
                    "skipped a run of schedule %s, and will skip more until "
                    "the queue has room: %s",
                    self.name,
                    exc,
                )
            return

        self._runs += 1
        if self._full_skips:
            log(
                logging.INFO,
                "schedule %s submitted a run again, after %d skipped because "
                "the queue was full",
                self.name,
                self._full_skips,
            )
            self._full_skips = 0
