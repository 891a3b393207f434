"""Workers that await tasks of their own queue, and the warning about them."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from ._base import _awaits, _IdleWait, _QueueBase, _Worker
from ._context import CURRENT_WORKER
from ._log import log
from .models import _FINAL, TaskHandle, seq_of

# Task ids that the warning about workers that all await their own queue
# names at most.
_BLOCKED_IDS_SHOWN = 5

_NO_ATTRIBUTE = object()


class _Blocking(_QueueBase):
    """Tracks workers that wait for handles of the same queue, or for room in it."""

    __slots__ = ()

    def _block_caller(
        self, waiter: asyncio.Future[Any], *, room: bool = False
    ) -> Callable[[], None] | None:
        """Count the caller's worker as blocked while ``waiter`` is not done.

        ``waiter`` is the future of an await of a handle of this queue, or
        with ``room``, of a wait in ``submit()`` for room in it. Returns the
        function that ends the count, or ``None`` if the caller is not a task
        of this queue. Once as many workers are blocked as may run at once,
        no task can start until one of their waits ends, and the queue warns
        of it.
        """
        worker = self._calling_worker()
        if worker is None:
            return None

        caller = worker.current
        assert caller is not None
        attempt = caller._attempts
        if worker.awaiting_for is not caller or worker.awaiting_attempt != attempt:
            # Waits left by the worker's earlier task or attempt, such as the
            # children of a gather() that failed, do not block this one.
            worker.awaiting_for = caller
            worker.awaiting_attempt = attempt
            worker.waits = []
        task = asyncio.current_task(self._loop)
        assert task is not None  # a worker was found for it
        worker.waits.append((waiter, room, task))
        self._check_blocked()
        if task is not worker.task:
            # A child task, such as one that gather() runs, blocks the worker
            # only once the worker's task awaits it, which an eager child in
            # its first step comes before: check again after this step.
            self._loop.call_soon(self._check_blocked)
        return functools.partial(self._unblock_caller, worker, caller, attempt, waiter)

    def _unblock_caller(
        self,
        worker: _Worker,
        caller: TaskHandle[Any],
        attempt: int,
        waiter: asyncio.Future[Any],
    ) -> None:
        if worker.awaiting_for is caller and worker.awaiting_attempt == attempt:
            worker.waits = [wait for wait in worker.waits if wait[0] is not waiter]
            if not worker.waits:
                worker.awaiting_for = None
        self._check_blocked()

    @staticmethod
    def _live_waits(worker: _Worker) -> list[bool]:
        """Return, for each wait that blocks ``worker``, whether it is for room.

        A wait blocks while its future is not done, in the worker's current
        attempt, made in the worker's task or in a task that the worker's
        task awaits. A child task that the worker's task left behind, or
        never awaited, blocks nothing.
        """
        current = worker.current
        if (
            current is None
            or worker.awaiting_for is not current
            or worker.awaiting_attempt != current._attempts
        ):
            return []

        return [
            room
            for future, room, task in worker.waits
            if not future.done() and (task is worker.task or _awaits(worker.task, task))
        ]

    @classmethod
    def _is_blocked(cls, worker: _Worker, *, room: bool = False) -> bool:
        """Return whether the current attempt of ``worker`` waits on the queue.

        With ``room``, only waits for room count.
        """
        return any(is_room or not room for is_room in cls._live_waits(worker))

    def _blocked_tasks(self) -> list[TaskHandle[Any]]:
        """Return the running tasks whose current attempt waits on the queue."""
        return [
            w.current
            for w in self._workers
            if w.current is not None and self._is_blocked(w)
        ]

    def _blocked_workers(self) -> int:
        """Return the number of workers whose task waits on this queue."""
        return len(self._blocked_tasks())

    def _check_blocked(self) -> None:
        """Warn once for each set of blocked workers that fills the pool.

        Called when a wait begins or ends and when the pool is resized, so
        O(workers) there and never on the hot path.
        """
        waiting = self._blocked_tasks()
        blocked = len(waiting)
        if blocked < self._max_workers:
            self._blocked_warned = frozenset()
            return

        key = frozenset((seq_of(h), h._attempts) for h in waiting)
        if key == self._blocked_warned:
            return

        self._blocked_warned = key
        task_ids = ", ".join(repr(h._id) for h in waiting[:_BLOCKED_IDS_SHOWN])
        if blocked > _BLOCKED_IDS_SHOWN:
            task_ids += ", ..."
        single = blocked == 1
        subject = f"task {task_ids}" if single else f"tasks {task_ids}"
        room_waits = [w for w in self._workers if self._is_blocked(w, room=True)]
        if not room_waits:
            verb = "awaits" if single else "await"
            wait_phrase = f"{verb} another task of the same queue"
            wait = "awaits"
            advice = "await handles outside the queue's tasks, or raise max_workers"
        else:
            # Tasks that submit() into their own full queue: the room they
            # wait for comes only when a pending task starts.
            verb = "waits" if single else "wait"
            limit = self._max_pending
            wait_phrase = f"{verb} for room in the same queue (max_pending={limit})"
            if blocked > len(room_waits) or any(
                not is_room for w in room_waits for is_room in self._live_waits(w)
            ):
                wait_phrase += " or for another task of it"
            wait = "waits"
            advice = (
                "submit from tasks with submit_nowait() and handle "
                "QueueFullError, or raise max_pending or max_workers"
            )

        # A logging filter that raises must not break the await.
        log(
            logging.WARNING,
            "%s %s while running, and with max_workers=%d no task can start "
            "until one of those %s ends; %s",
            subject,
            wait_phrase,
            self._max_workers,
            wait,
            advice,
        )

    def _calling_worker(
        self, *, thorough: bool = False, eager: bool = True
    ) -> _Worker | None:
        """Return the busy worker of this queue that runs the current coroutine.

        That is the worker whose asyncio task is the current one, or started
        it and awaits it, directly or through ``gather()``. With ``eager``,
        it is also the worker in whose step the current task runs its first,
        eager step. With ``thorough``, for the rare stop() and join(), it is
        also any busy worker that awaits the current task, even if another
        task made it. That check costs O(workers) instead of O(1).
        """
        if not thorough and CURRENT_WORKER.get() is None:
            return None  # no worker of any queue made the current task

        current = asyncio.current_task(self._loop)
        worker = self._workers_by_task.get(current)  # type: ignore[arg-type]
        if worker is None and current is not None:
            worker = self._worker_above(current, eager=eager)
            if worker is None and thorough:
                worker = next(
                    (
                        busy
                        for busy in self._workers
                        if busy.current is not None and _awaits(busy.task, current)
                    ),
                    None,
                )

        return None if worker is None or worker.current is None else worker

    def _calling_task(
        self, *, thorough: bool = False, eager: bool = True
    ) -> TaskHandle[Any] | None:
        """Return the task that ``_calling_worker()`` runs, or ``None``."""
        worker = self._calling_worker(thorough=thorough, eager=eager)
        return None if worker is None else worker.current

    def _creating_worker(self) -> _Worker | None:
        """Return this queue's busy worker in whose context the current task began.

        A task started by a task of the queue inherits its worker in its
        context, whether or not the task awaits it.
        """
        worker = CURRENT_WORKER.get()
        if worker is None or worker.task is None or worker.current is None:
            return None

        if self._workers_by_task.get(worker.task) is not worker:
            return None  # a worker of another queue

        return worker

    def _watch_caller(self, wait: _IdleWait) -> None:
        """Check ``wait`` again after each step of its caller's asyncio task.

        Finished tasks trigger the other checks, but a caller that starts to
        await the waiting task, even steps after it started it, finishes
        nothing. So while ``wait`` is pending and its caller runs, this
        follows the future that the caller's task awaits, through the tasks
        it awaits, or the next iteration of the loop while one of those
        runs or is scheduled. ``_unwatch()`` removes what is left at the end.
        """
        wait.watch = None  # the callback that ran this is spent
        worker, caller = wait.worker, wait.caller
        if wait.future.done() or worker is None or worker.task is None:
            return

        if caller is None or caller._state in _FINAL or worker.current is not caller:
            return  # it ended: the check at its final state covered it

        if self._is_idle_for(wait):
            wait.future.set_result(None)
            return

        if worker.task.done():
            return  # a lost worker's task: it takes no more steps

        awaited = self._next_step_of(worker.task, wait.task)
        if awaited is None:
            # A task on the chain runs now or is scheduled: its step comes first.
            wait.watch = self._loop.call_soon(self._watch_caller, wait)
            return

        # NOTE: a task without _fut_waiter is followed only to its end, and
        # an awaited object without add_done_callback() not at all, so an
        # await that such a task makes later goes unseen.
        add_done_callback = getattr(awaited, "add_done_callback", None)
        if add_done_callback is not None:

            def watch_again(_: object) -> None:
                self._watch_caller(wait)

            # The wake-up of the task that awaits it came first, so it runs first.
            add_done_callback(watch_again)
            wait.watch = (awaited, watch_again)

    @staticmethod
    def _next_step_of(task: asyncio.Task[Any], target: object) -> object | None:
        """Return the future whose end lets ``task``'s await chain step again.

        Follows the tasks that ``task`` awaits, one inside the other, down
        to ``target`` or to a future that is not a task. Returns ``None``
        when a task on the chain runs or is scheduled, and ``target`` or an
        object without ``_fut_waiter`` if it reaches one.
        """
        item: object = task
        seen: set[int] = set()
        while id(item) not in seen:
            seen.add(id(item))
            awaited = getattr(item, "_fut_waiter", _NO_ATTRIBUTE)
            if awaited is _NO_ATTRIBUTE:
                return item

            if awaited is None:
                return None

            if awaited is target or not isinstance(awaited, asyncio.Task):
                return awaited

            if awaited.done():
                return None  # its waiter is about to step

            item = awaited

        return item

    @staticmethod
    def _unwatch(wait: _IdleWait) -> None:
        """Remove the callback that ``_watch_caller()`` left for ``wait``."""
        watch, wait.watch = wait.watch, None
        if isinstance(watch, asyncio.Handle):
            watch.cancel()
        elif watch is not None:
            future, callback = watch
            future.remove_done_callback(callback)

    def _worker_above(
        self, task: asyncio.Task[Any], *, eager: bool = True
    ) -> _Worker | None:
        """Return this queue's worker that started ``task`` and awaits it.

        With ``eager``, also the worker in whose step ``task`` runs its first
        step, as an eager task factory runs it: it may go on to await it.
        """
        # NOTE: the wait is found through attributes that asyncio's tasks and
        # gather() keep but do not document. A child awaited through
        # shield(), wait(), a TaskGroup, wait_for() before Python 3.12, or
        # only some steps after the call, leaves no such link, so a stop()
        # or join() made there waits for the task that made it.
        worker = CURRENT_WORKER.get()
        if worker is None or worker.task is None:
            return None

        if self._workers_by_task.get(worker.task) is not worker:
            return None  # a worker of another queue

        if worker.current is None:
            return None

        # An eager task factory runs a new task's first step inside the step
        # of the task that creates it, before that task can await it: while
        # the worker's coroutine is running, the current task is its child.
        # Its waits and stop() calls count for the task only once the task
        # awaits it. NOTE: a join() in such a child leaves the task out of
        # the count even if the task never awaits the child.
        if eager and getattr(worker.task.get_coro(), "cr_running", False):
            return worker

        return worker if _awaits(worker.task, task) else None
