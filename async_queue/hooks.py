"""Lifecycle hooks: callbacks that observe each task's way through the queue."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ._checks import is_coroutine_function
from .models import TaskId, TaskState

__all__ = ("EVENTS", "Hook", "LoggingHook", "QueueHook", "TaskEvent")

logger = logging.getLogger("async_queue")

EVENTS = (
    "on_submitted",
    "on_started",
    "on_progress",
    "on_retry_scheduled",
    "on_succeeded",
    "on_failed",
    "on_timed_out",
    "on_cancelled",
    "on_dropped",
)
"""The hook methods, in the order a task can meet them."""


class TaskEvent(NamedTuple):
    """A snapshot of one task at one event, passed to each hook.

    A named tuple, because the queue builds one for every event that a hook
    observes, and a named tuple is cheap to build.
    """

    task_id: TaskId
    """The task's id."""
    name: str
    """The qualified name of its coroutine function."""
    priority: int
    """Its priority."""
    attempts: int
    """Attempts started so far."""
    state: TaskState
    """Its state right after the event."""
    time: float
    """The event loop's time of the event."""
    delay: float | None = None
    """For ``on_retry_scheduled``: seconds until the next attempt."""
    exception: BaseException | None = None
    """For ``on_retry_scheduled``, ``on_failed`` and ``on_timed_out``: the
    exception of the attempt."""
    progress: Any = None
    """The last value the task passed to ``set_progress()``, or ``None``."""


@runtime_checkable
class QueueHook(Protocol):
    """The methods a hook may define; each receives a ``TaskEvent``.

    A hook defines any subset of them. Subclass ``Hook`` to inherit no-op
    versions of the rest.
    """

    def on_submitted(self, event: TaskEvent) -> None: ...
    def on_started(self, event: TaskEvent) -> None: ...
    def on_progress(self, event: TaskEvent) -> None: ...
    def on_retry_scheduled(self, event: TaskEvent) -> None: ...
    def on_succeeded(self, event: TaskEvent) -> None: ...
    def on_failed(self, event: TaskEvent) -> None: ...
    def on_timed_out(self, event: TaskEvent) -> None: ...
    def on_cancelled(self, event: TaskEvent) -> None: ...
    def on_dropped(self, event: TaskEvent) -> None: ...


# One protocol per event, so that a class defining any one of the methods
# type-checks as a hook; QueueHook requires all of them.


class _OnSubmitted(Protocol):
    def on_submitted(self, event: TaskEvent, /) -> object: ...


class _OnStarted(Protocol):
    def on_started(self, event: TaskEvent, /) -> object: ...


class _OnProgress(Protocol):
    def on_progress(self, event: TaskEvent, /) -> object: ...


class _OnRetryScheduled(Protocol):
    def on_retry_scheduled(self, event: TaskEvent, /) -> object: ...


class _OnSucceeded(Protocol):
    def on_succeeded(self, event: TaskEvent, /) -> object: ...


class _OnFailed(Protocol):
    def on_failed(self, event: TaskEvent, /) -> object: ...


class _OnTimedOut(Protocol):
    def on_timed_out(self, event: TaskEvent, /) -> object: ...


class _OnCancelled(Protocol):
    def on_cancelled(self, event: TaskEvent, /) -> object: ...


class _OnDropped(Protocol):
    def on_dropped(self, event: TaskEvent, /) -> object: ...


AnyHook = (
    _OnSubmitted
    | _OnStarted
    | _OnProgress
    | _OnRetryScheduled
    | _OnSucceeded
    | _OnFailed
    | _OnTimedOut
    | _OnCancelled
    | _OnDropped
)
"""The type of each hook in ``AsyncTaskQueue(hooks=...)``: an object with at
least one hook method, such as a ``Hook`` subclass."""


class Hook:
    """A base class for hooks, with a no-op method for every event.

    The queue calls only the methods a subclass overrides, so an event that no
    hook observes costs nothing on the hot path. Hook methods run on the event
    loop thread and must not block. An exception from one is logged and
    ignored: it never stops a worker or changes a task.

    ``on_dropped`` replaces ``on_cancelled`` for tasks that the ``overflow``
    policy of a full queue drops, and for queued tasks that ``stop()``
    cancelled. ``on_timed_out`` comes before the ``on_retry_scheduled`` or
    ``on_failed`` of the same attempt.
    """

    def on_submitted(self, event: TaskEvent) -> None:
        """Called when a task is accepted."""

    def on_started(self, event: TaskEvent) -> None:
        """Called when an attempt starts."""

    def on_progress(self, event: TaskEvent) -> None:
        """Called when the running task calls ``set_progress()``."""

    def on_retry_scheduled(self, event: TaskEvent) -> None:
        """Called when a failed attempt will be retried after ``event.delay``."""

    def on_succeeded(self, event: TaskEvent) -> None:
        """Called when a task returns its result."""

    def on_failed(self, event: TaskEvent) -> None:
        """Called when a task ends ``FAILED``."""

    def on_timed_out(self, event: TaskEvent) -> None:
        """Called when an attempt runs over its timeout."""

    def on_cancelled(self, event: TaskEvent) -> None:
        """Called when a task ends ``CANCELLED``, unless it was dropped."""

    def on_dropped(self, event: TaskEvent) -> None:
        """Called when a full queue's ``overflow`` policy drops a task, or when
        ``stop()`` cancels a task that waited for an attempt."""


class LoggingHook(Hook):
    """The built-in hook that logs to the ``async_queue`` logger.

    Each scheduled retry at WARNING, each final failure at ERROR with its
    traceback. Successful tasks log nothing.
    """

    def on_retry_scheduled(self, event: TaskEvent) -> None:
        if not logger.isEnabledFor(logging.WARNING):
            return  # checked first: a retry on the hot path logs nothing

        logger.warning(
            "task %r (%s) failed on attempt %d, retrying in %.3f s: %r",
            event.task_id,
            event.name,
            event.attempts,
            event.delay,
            _SafeRepr(event.exception),
        )

    def on_failed(self, event: TaskEvent) -> None:
        logger.error(
            "task %r (%s) failed after %d attempt(s): %r",
            event.task_id,
            event.name,
            event.attempts,
            _SafeRepr(event.exception),
            exc_info=event.exception,
        )


class _SafeRepr:
    """An exception in a log line: if its ``repr()`` raises, the line stays.

    Logging formats its arguments when a handler emits the record, and an
    error there replaces the whole line with a "Logging error" report.
    """

    __slots__ = ("_exc",)

    def __init__(self, exc: BaseException | None) -> None:
        self._exc = exc

    def __repr__(self) -> str:
        try:
            return repr(self._exc)
        except Exception as error:
            name = type(self._exc).__qualname__
            return f"<{name} whose repr() raised {type(error).__qualname__}>"


HookCallbacks = dict[str, list[Callable[[TaskEvent], object]]]


def collect_callbacks(hooks: Sequence[object]) -> HookCallbacks:
    """Return, for each event, the bound methods that the hooks define.

    A method inherited unchanged from ``Hook`` is left out.
    """
    callbacks: HookCallbacks = {name: [] for name in EVENTS}
    for hook in hooks:
        found = False
        for name in EVENTS:
            method = getattr(hook, name, None)
            if method is None:
                continue

            found = True
            if getattr(method, "__func__", None) is getattr(Hook, name):
                continue  # the no-op of Hook, not set on the instance either

            if not callable(method):
                raise TypeError(f"hook {hook!r} has a non-callable {name}")

            if is_coroutine_function(method):
                raise TypeError(
                    f"hook {hook!r} defines {name} with 'async def', but the "
                    "queue calls hooks without awaiting them; define it with "
                    "'def', and start any async work in it with "
                    "asyncio.create_task()"
                )

            callbacks[name].append(method)

        if not found:
            raise TypeError(
                f"{hook!r} is not a hook: it defines none of {', '.join(EVENTS)}; "
                "subclass async_queue.Hook"
            )

    return callbacks


def call_hooks(
    callbacks: list[Callable[[TaskEvent], object]], event: TaskEvent
) -> None:
    """Call each callback with ``event``, logging and ignoring failures.

    Only ``KeyboardInterrupt`` and ``SystemExit`` propagate. A plain function
    cannot be cancelled, so a ``CancelledError`` from one is its own bug and is
    ignored too: raised into a worker, it would end the worker.
    """
    for callback in callbacks:
        try:
            callback(event)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            log_hook_failure(callback, event)


def log_hook_failure(callback: Callable[[TaskEvent], object], event: TaskEvent) -> None:
    """Log the exception that ``callback`` raised for ``event``."""
    # The logging itself can fail, for an exception that cannot be formatted;
    # the task must not suffer for it either.
    with contextlib.suppress(Exception):
        logger.exception(
            "hook %r failed on task %r; the task is not affected",
            callback,
            event.task_id,
        )


# new_event(TaskEvent, fields) makes an event from a tuple of its fields. It
# skips the __new__ that NamedTuple generates in Python, about two thirds of
# the time it takes to build an event.
new_event = tuple.__new__
