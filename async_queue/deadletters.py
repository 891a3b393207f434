"""Dead letters: the tasks that ended FAILED, kept for inspection and requeue."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any

from .models import TaskId
from .policies import RetryPolicy

__all__ = ("DeadLetter",)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task that ended ``FAILED``, with what it takes to run it again."""

    task_id: TaskId
    """The id of the failed task."""
    name: str
    """The qualified name of its coroutine function."""
    fn: Callable[..., Any] | Coroutine[Any, Any, Any]
    """Its coroutine function, or the coroutine object it was submitted as."""
    args: tuple[Any, ...] | None
    """Its positional arguments; ``None`` for a coroutine object. For a task
    made with ``bind()`` or ``threaded()`` it is ``()``, and ``fn`` is the
    ``BoundCall`` that contains the arguments."""
    priority: int
    """Its priority."""
    timeout: float | None
    """Its per-attempt timeout in seconds."""
    retry: RetryPolicy
    """Its retry policy."""
    exception: BaseException
    """The exception that ended it."""
    attempts: int
    """How many attempts ran."""
    dedup_key: Hashable | None = None
    """The ``dedup_key`` it was submitted with, which ``requeue()`` reuses."""

    @property
    def requeueable(self) -> bool:
        """Whether it can run again; a coroutine object cannot."""
        return self.args is not None


class DeadLetterStore:
    """The newest ``max_count`` dead letters, oldest evicted first.

    Used only on the event loop thread, so it needs no lock.
    """

    __slots__ = ("_entries", "_max_count", "evicted")

    def __init__(self, max_count: int) -> None:
        self._entries: OrderedDict[TaskId, DeadLetter] = OrderedDict()
        self._max_count = max_count
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, letter: DeadLetter) -> None:
        """Keep a dead letter, evicting the oldest past the bound."""
        if self._max_count == 0:
            self.evicted += 1
            return

        # A str task id can fail again once its first task was evicted from
        # the result store. The new letter replaces the old one, which counts
        # as evicted, and moves to the end as the newest.
        if self._entries.pop(letter.task_id, None) is not None:
            self.evicted += 1
        self._entries[letter.task_id] = letter
        if len(self._entries) > self._max_count:
            self._entries.popitem(last=False)
            self.evicted += 1

    def get(self, task_id: TaskId) -> DeadLetter | None:
        """Return the dead letter of ``task_id``, or ``None``."""
        return self._entries.get(task_id)

    def pop(self, task_id: TaskId) -> DeadLetter | None:
        """Remove and return the dead letter of ``task_id``, or ``None``."""
        return self._entries.pop(task_id, None)

    def list(self) -> tuple[DeadLetter, ...]:
        """Return every dead letter, oldest first."""
        return tuple(self._entries.values())
