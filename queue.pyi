"""Types of the root facade ``queue.py`` for type checkers.

A type checker that finds ``queue.py`` on its search path, as when it checks
code in the project root, reads this file in place of the standard library's
``queue`` stubs. Without it, the facade's module ``__getattr__`` would type
every name as ``Any``, the standard ones too. So it declares both halves of
the facade: the standard module's public API, and the ``async_queue`` names.
``tests/test_facade.py`` checks that it lists the same names as the facade.
"""

import sys

# Empty and SimpleQueue are the C module's own classes at run time, as in the
# standard module, so that both names type as the same class.
from _queue import Empty as Empty
from _queue import SimpleQueue as SimpleQueue
from threading import Condition, Lock
from types import GenericAlias
from typing import Any, Generic, TypeVar

from _typeshed import SupportsRichComparisonT

from async_queue import AsyncQueueError as AsyncQueueError
from async_queue import AsyncTaskQueue as AsyncTaskQueue
from async_queue import BoundCall as BoundCall
from async_queue import DeadLetter as DeadLetter
from async_queue import DuplicateTaskIdError as DuplicateTaskIdError
from async_queue import Hook as Hook
from async_queue import Jitter as Jitter
from async_queue import LoggingHook as LoggingHook
from async_queue import Overflow as Overflow
from async_queue import QueueClosedError as QueueClosedError
from async_queue import QueueFullError as QueueFullError
from async_queue import QueueHook as QueueHook
from async_queue import QueueStateError as QueueStateError
from async_queue import QueueStats as QueueStats
from async_queue import RetryAfter as RetryAfter
from async_queue import RetryPolicy as RetryPolicy
from async_queue import Schedule as Schedule
from async_queue import ShutdownMode as ShutdownMode
from async_queue import ShutdownReport as ShutdownReport
from async_queue import TaskCancelledError as TaskCancelledError
from async_queue import TaskEvent as TaskEvent
from async_queue import TaskHandle as TaskHandle
from async_queue import TaskId as TaskId
from async_queue import TaskNotFoundError as TaskNotFoundError
from async_queue import TaskState as TaskState
from async_queue import TimeSummary as TimeSummary
from async_queue import bind as bind
from async_queue import current_handle as current_handle
from async_queue import thread_cancel_event as thread_cancel_event
from async_queue import threaded as threaded

_T = TypeVar("_T")

# The public API of the standard library's queue module on Python 3.11 to 3.13.

class Full(Exception): ...

if sys.version_info >= (3, 13):
    class ShutDown(Exception): ...

class Queue(Generic[_T]):
    maxsize: int
    mutex: Lock
    not_empty: Condition
    not_full: Condition
    all_tasks_done: Condition
    unfinished_tasks: int
    queue: Any  # the container of the items, which each subclass chooses
    if sys.version_info >= (3, 13):
        is_shutdown: bool

    def __init__(self, maxsize: int = 0) -> None: ...
    def task_done(self) -> None: ...
    def join(self) -> None: ...
    def qsize(self) -> int: ...
    def empty(self) -> bool: ...
    def full(self) -> bool: ...
    def put(
        self, item: _T, block: bool = True, timeout: float | None = None
    ) -> None: ...
    def get(self, block: bool = True, timeout: float | None = None) -> _T: ...
    def put_nowait(self, item: _T) -> None: ...
    def get_nowait(self) -> _T: ...
    if sys.version_info >= (3, 13):
        def shutdown(self, immediate: bool = False) -> None: ...

    def _init(self, maxsize: int) -> None: ...
    def _qsize(self) -> int: ...
    def _put(self, item: _T) -> None: ...
    def _get(self) -> _T: ...
    def __class_getitem__(cls, item: Any, /) -> GenericAlias: ...

class PriorityQueue(Queue[SupportsRichComparisonT]):
    queue: list[SupportsRichComparisonT]

class LifoQueue(Queue[_T]):
    queue: list[_T]
