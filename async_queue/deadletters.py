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

    Each letter keeps the number of its arrival, so that one taken out by
    ``take()`` and put back by ``put_back()`` returns to its place. Used only
    on the event loop thread, so it needs no lock.
    """

    __slots__ = ("_arrivals", "_entries", "_max_count", "evicted")

    def __init__(self, max_count: int) -> None:
        # Oldest first: the number of each letter's arrival, and the letter.
        self._entries: OrderedDict[TaskId, tuple[int, DeadLetter]] = OrderedDict()
        self._max_count = max_count
        self._arrivals = 0
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
        self._arrivals += 1
        self._entries[letter.task_id] = (self._arrivals, letter)
        self._evict_past_bound()

    def get(self, task_id: TaskId) -> DeadLetter | None:
        """Return the dead letter of ``task_id``, or ``None``."""
        entry = self._entries.get(task_id)
        return None if entry is None else entry[1]

    def take(self, task_id: TaskId) -> tuple[int, DeadLetter] | None:
        """Remove the dead letter of ``task_id``; return it with its arrival."""
        return self._entries.pop(task_id, None)

    def put_back(self, arrival: int, letter: DeadLetter) -> None:
        """Return a letter that ``take()`` removed to its place among the others.

        Past the bound the oldest letter goes, which may be this one. A newer
        letter of the same task id, which failed meanwhile, stays instead.
        """
        if letter.task_id in self._entries:
            self.evicted += 1
            return

        entries = [*self._entries.items(), (letter.task_id, (arrival, letter))]
        entries.sort(key=lambda item: item[1][0])
        self._entries = OrderedDict(entries)
        self._evict_past_bound()

    def list(self) -> tuple[DeadLetter, ...]:
        """Return every dead letter, oldest first."""
        return tuple(letter for _, letter in self._entries.values())

    def _evict_past_bound(self) -> None:
        while len(self._entries) > self._max_count:
            self._entries.popitem(last=False)
            self.evicted += 1
