"""A pure-asyncio, in-process task queue.

Priorities (higher first, FIFO among equals), a bounded worker pool, retries
with exponential backoff and jitter, per-task timeouts, cancellation and a
clean shutdown that reports every task it did not run.
"""

from __future__ import annotations

import logging

from ._context import current_handle
from .core import AsyncTaskQueue
from .deadletters import DeadLetter
from .errors import (
    AsyncQueueError,
    DuplicateTaskIdError,
    QueueClosedError,
    QueueFullError,
    QueueStateError,
    RetryAfter,
    TaskCancelledError,
    TaskNotFoundError,
)
from .hooks import Hook, LoggingHook, QueueHook, TaskEvent
from .models import (
    BoundCall,
    Overflow,
    QueueStats,
    ShutdownMode,
    ShutdownReport,
    TaskHandle,
    TaskId,
    TaskState,
    TimeSummary,
    bind,
    thread_cancel_event,
    threaded,
)
from .policies import Jitter, RetryPolicy
from .schedules import Schedule

__all__ = (
    "AsyncQueueError",
    "AsyncTaskQueue",
    "BoundCall",
    "DeadLetter",
    "DuplicateTaskIdError",
    "Hook",
    "Jitter",
    "LoggingHook",
    "Overflow",
    "QueueClosedError",
    "QueueFullError",
    "QueueHook",
    "QueueStateError",
    "QueueStats",
    "RetryAfter",
    "RetryPolicy",
    "Schedule",
    "ShutdownMode",
    "ShutdownReport",
    "TaskCancelledError",
    "TaskEvent",
    "TaskHandle",
    "TaskId",
    "TaskNotFoundError",
    "TaskState",
    "TimeSummary",
    "__version__",
    "bind",
    "current_handle",
    "thread_cancel_event",
    "threaded",
)

__version__ = "0.1.0"

# Libraries leave handler configuration to the application.
logging.getLogger("async_queue").addHandler(logging.NullHandler())

# Reprs, tracebacks and docs show the public path, not the private module.
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) and _value.__module__.startswith("async_queue."):
        _value.__module__ = "async_queue"
del _name, _value
