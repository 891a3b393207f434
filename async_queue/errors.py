"""Exceptions raised by async_queue.

The tree::

    AsyncQueueError
    ├── QueueStateError (also RuntimeError)
    │   └── QueueClosedError
    ├── QueueFullError
    ├── RetryAfter
    ├── TaskCancelledError
    ├── DuplicateTaskIdError (also ValueError)
    └── TaskNotFoundError (also KeyError)

Invalid arguments raise the builtin ``TypeError`` or ``ValueError``, and a task
that runs over its timeout fails with the builtin ``TimeoutError``.
"""

from __future__ import annotations

from typing import Any

__all__ = (
    "AsyncQueueError",
    "DuplicateTaskIdError",
    "QueueClosedError",
    "QueueFullError",
    "QueueStateError",
    "RetryAfter",
    "TaskCancelledError",
    "TaskNotFoundError",
)


class AsyncQueueError(Exception):
    """Base class of every exception that async_queue defines."""


class QueueStateError(AsyncQueueError, RuntimeError):
    """Raised when a call does not fit the queue's lifecycle.

    Examples: submitting before ``start()``, or calling ``start()`` twice.
    """


class QueueClosedError(QueueStateError):
    """Raised by ``submit()`` once ``stop()`` has begun."""


class QueueFullError(AsyncQueueError):
    """Raised when ``max_pending`` tasks wait to start and the submission may
    not wait: by ``submit_nowait()``, by every submit method under
    ``overflow="raise"``, and by ``requeue()`` under a dropping policy."""


class RetryAfter(AsyncQueueError):
    """Raised by a task to be retried after a delay of its own choosing.

    The delay replaces the retry policy's backoff for that attempt, and the
    retry still counts against ``max_retries``; the policy's ``retry_on``
    filter does not apply. For example, from an HTTP 503 response::

        raise RetryAfter(float(response.headers["Retry-After"]))

    If no retry is left, the task fails with this exception.
    """

    def __init__(self, delay: float, message: str | None = None) -> None:
        from ._checks import check_seconds

        seconds = check_seconds("delay", delay)
        assert seconds is not None
        super().__init__(message or f"retry requested after {seconds} s")
        self.delay = seconds

    def __reduce__(self) -> str | tuple[Any, ...]:
        # The default passes only the message back to __init__, which needs
        # the delay first: pickling (as a process pool does) and copying
        # would fail. A subclass with its own __init__ keeps the default.
        if type(self).__init__ is not RetryAfter.__init__:
            return super().__reduce__()

        return (type(self), (self.delay, *self.args[:1]), self.__dict__)


class TaskCancelledError(AsyncQueueError):
    """Raised when awaiting the handle of a task that was cancelled.

    It is not a subclass of ``asyncio.CancelledError``: a coroutine that awaits
    a handle gets ``TaskCancelledError`` when the *task* was cancelled, and
    ``asyncio.CancelledError`` only when the awaiting coroutine itself is.
    """


class DuplicateTaskIdError(AsyncQueueError, ValueError):
    """Raised when a submitted task id is already in use by a known task."""


class TaskNotFoundError(AsyncQueueError, KeyError):
    """Raised when no active or retained task has the requested id."""

    def __str__(self) -> str:
        # KeyError.__str__ shows the repr of the message; show the text itself.
        return str(self.args[0]) if self.args else ""
