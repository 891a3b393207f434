"""The bookkeeping shared by the metrics hooks: wait and run times per attempt.

``MetricsHook`` turns the stream of task events into counts and durations, and
passes them to the ``Recorders`` that ``PrometheusHook`` and
``OpenTelemetryHook`` bind to their instruments. It keeps one entry per
unfinished task and removes it at the task's final event, on
every path: success, failure, cancellation while queued, backing off or
running, and tasks dropped by ``stop()``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .hooks import Hook, TaskEvent
from .models import TaskId, TaskState

__all__ = (
    "DEFAULT_BUCKETS",
    "OUTCOMES",
    "MetricsHook",
    "Recorders",
    "check_buckets",
    "check_queue_name",
)

OUTCOMES = ("succeeded", "failed", "cancelled", "dropped")
"""The final outcomes a task can have, as metric label values."""

# The default buckets of prometheus_client (0.005 s to 10 s), then three
# longer ones, because a background task can run for minutes.
DEFAULT_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75),
    *(1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0, 300.0),
)
"""Upper bounds in seconds of the wait and run time histogram buckets."""


def check_queue_name(queue_name: object) -> str:
    """Return ``queue_name`` if it is a non-empty ``str``, else raise."""
    if not isinstance(queue_name, str):
        raise TypeError(f"queue_name must be a str, got {queue_name!r}")

    if not queue_name:
        raise ValueError(
            "queue_name must not be empty; name the queue, for example 'emails'"
        )

    return queue_name


def check_buckets(buckets: object) -> tuple[float, ...]:
    """Return ``buckets`` as a tuple of finite, increasing upper bounds."""
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence):
        raise TypeError(
            f"buckets must be a sequence of upper bounds in seconds, got {buckets!r}"
        )

    bounds: list[float] = []
    for bound in buckets:
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise TypeError(f"bucket bounds must be numbers, got {bound!r}")

        if not math.isfinite(bound) or bound <= 0:
            raise ValueError(
                f"bucket bounds must be finite and > 0, got {bound!r}; the "
                "histogram adds the +Inf bucket itself"
            )

        bounds.append(float(bound))

    if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
        raise ValueError(
            "buckets must be a non-empty, strictly increasing sequence, "
            f"got {buckets!r}"
        )

    return tuple(bounds)


@dataclass(frozen=True, slots=True)
class Recorders:
    """The instruments of one queue's metrics, as functions bound to its labels.

    Each counter function adds 1. ``finished`` has one counter function per
    outcome of ``OUTCOMES``. ``wait`` and ``run`` record a duration in seconds.
    """

    submitted: Callable[[], object]
    started: Callable[[], object]
    retry_scheduled: Callable[[], object]
    timed_out: Callable[[], object]
    finished: Mapping[str, Callable[[], object]]
    wait: Callable[[float], object]
    run: Callable[[float], object]


class MetricsHook(Hook):
    """A hook that measures wait and run times and passes them on to record.

    The wait time of an attempt runs from the moment the task could start (its
    submission, or the end of its retry backoff) to the start of the attempt.
    The hook does not see when the delay of a task submitted with ``delay`` or
    ``at`` ends, so the first attempt of such a task records no wait time.
    The run time of an attempt runs from its start to its end: the next retry
    being scheduled, or the task's final event.

    One instance observes one queue: task ids from different queues can be
    equal. ``queue_name`` is the label value of that queue's metrics, checked
    by ``check_queue_name``.
    """

    def __init__(self, queue_name: str, recorders: Recorders) -> None:
        self.queue_name = queue_name
        self._recorders = recorders

        # Unfinished tasks that are not running: the loop time from which the
        # task could start, or None for a delayed task not yet due.
        self._ready_since: dict[TaskId, float | None] = {}
        # Running tasks: the loop time the current attempt started.
        self._running_since: dict[TaskId, float] = {}

    @property
    def in_flight(self) -> int:
        """The number of tasks the hook keeps an entry for.

        It is the number of unfinished tasks of the queue, and 0 once the
        queue has stopped.
        """
        return len(self._ready_since) + len(self._running_since)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(queue_name={self.queue_name!r})"

    # Events. Each updates the bookkeeping before it records, so that a
    # failing metrics backend cannot leave an entry behind. The queue delivers
    # a task's events in order even when a hook cancels the task inside its
    # own ``on_submitted``, so a final event never comes before that task's
    # ``on_submitted``.

    def on_submitted(self, event: TaskEvent) -> None:
        if event.state is TaskState.DELAYED:
            self._ready_since[event.task_id] = None
        else:
            self._ready_since[event.task_id] = event.time

        self._recorders.submitted()

    def on_started(self, event: TaskEvent) -> None:
        ready_since = self._ready_since.pop(event.task_id, None)
        self._running_since[event.task_id] = event.time
        self._recorders.started()
        if ready_since is not None:
            self._recorders.wait(_elapsed(ready_since, event.time))

    def on_retry_scheduled(self, event: TaskEvent) -> None:
        started = self._running_since.pop(event.task_id, None)
        self._ready_since[event.task_id] = event.time + (event.delay or 0.0)
        self._recorders.retry_scheduled()
        if started is not None:
            self._recorders.run(_elapsed(started, event.time))

    def on_timed_out(self, event: TaskEvent) -> None:
        # The on_retry_scheduled or on_failed of the same attempt follows and
        # ends the attempt.
        self._recorders.timed_out()

    def on_succeeded(self, event: TaskEvent) -> None:
        self._finish(event, "succeeded")

    def on_failed(self, event: TaskEvent) -> None:
        self._finish(event, "failed")

    def on_cancelled(self, event: TaskEvent) -> None:
        self._finish(event, "cancelled")

    def on_dropped(self, event: TaskEvent) -> None:
        self._finish(event, "dropped")

    def _finish(self, event: TaskEvent, outcome: str) -> None:
        task_id = event.task_id
        started = self._running_since.pop(task_id, None)
        self._ready_since.pop(task_id, None)
        self._recorders.finished[outcome]()
        if started is not None:
            self._recorders.run(_elapsed(started, event.time))


def _elapsed(since: float, now: float) -> float:
    # The asyncio event loop runs a timer up to one clock resolution before
    # its time, so a retry can start slightly before its backoff ends.
    return max(0.0, now - since)
