"""The steps of stop(): cancelling, abandoning and waiting for tasks."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from ._base import _awaits, _Worker
from ._log import log
from ._outcomes import _Outcomes
from .models import (
    CANCELLED,
    DELAYED,
    PENDING,
    RUNNING,
    WAITING_RETRY,
    CancelReason,
    TaskHandle,
    extras_of,
)


class _Shutdown(_Outcomes):
    """The parts of ``stop()`` that act on queued and running tasks."""

    __slots__ = ()

    async def _wait_until(
        self,
        condition: Callable[[], bool],
        deadline: float | None,
        *,
        escalate: bool = True,
    ) -> bool:
        """Wait until ``condition()`` holds, re-checked as each task finishes.

        Returns ``False`` if the deadline passes first or an escalation to
        ``CANCEL`` is requested while the condition does not hold.
        """
        while not condition():
            if escalate and self._escalate:
                return False

            watcher = self._loop.create_future()
            self._watchers.append(watcher)
            try:
                async with asyncio.timeout_at(deadline):
                    await watcher
            except TimeoutError:
                return condition()

        return True

    def _cancel_queued(self) -> list[TaskHandle[Any]]:
        """Cancel every pending, delayed and backing-off task."""
        if self._timer_handle is not None:
            self._timer_handle.cancel()
            self._timer_handle = None

        queued = self._ready.drain()
        queued += [
            h for h in self._timers.clear() if h._state in (WAITING_RETRY, DELAYED)
        ]
        self._dropped += len(queued)
        # Every task is final before any user code runs: a hook or a result's
        # finalizer that cancels a task further down the list then finds it
        # final, instead of counting out of the heap a task already drained.
        for handle in queued:
            if handle._state is not PENDING:
                self._unpark(handle)

            handle._state = CANCELLED
            extras_of(handle).cancel_message = "the queue was stopped"

        for handle in queued:
            self._set_cancelled(handle, emit=False)

        if self._hooks["on_dropped"]:
            for handle in queued:
                self._emit("on_dropped", handle)

        return queued

    def _cancel_running(self) -> list[TaskHandle[Any]]:
        running = []
        for worker in self._workers:
            handle = worker.current
            if handle is not None and handle._state is RUNNING:
                extras_of(handle).cancel_message = "the queue was stopped"
                self._interrupt(
                    worker, handle, CancelReason.CANCEL, "the queue was stopped"
                )
                running.append(handle)

        return running

    def _awaiting_stop_callers(self) -> list[tuple[TaskHandle[Any], _Worker]]:
        """Return the running tasks that await ``stop()``, each with its worker.

        A task awaits the stop if it was called in its worker's asyncio task,
        or in a task that the worker's task awaits, such as a ``gather()``
        child. One that only started a stop in a task of its own does not.
        Once its attempt has ended, say by its own timeout, a caller waits
        for a retry like any other task.
        """
        awaiting = []
        for caller, tasks in self._stop_callers.items():
            if caller._state is not RUNNING:
                continue

            worker = self._worker_running(caller)
            if worker is None or worker.task is None:
                continue

            if any(task is worker.task or _awaits(worker.task, task) for task in tasks):
                awaiting.append((caller, worker))

        return awaiting

    def _abandon_running(self) -> list[TaskHandle[Any]]:
        abandoned = []
        awaiting = {caller for caller, _ in self._awaiting_stop_callers()}
        for worker in self._workers:
            handle = worker.current
            if handle is None or handle._state is not RUNNING:
                continue

            if handle in awaiting:
                continue  # it awaits this stop, as from its cleanup, and ends after

            log(
                logging.ERROR,
                "task %r (%s) is still running %s after it was cancelled; "
                "abandoning it: its coroutine suppresses CancelledError",
                handle._id,
                handle.name,
                "past the grace period",
            )
            self._stuck.append(worker)
            self._abandoned_running += 1
            self._set_cancelled(handle)
            abandoned.append(handle)

        return abandoned

    async def _stop_workers(self) -> None:
        self._workers_exit = True
        # A task that called stop() may still run, and no worker is left for
        # its retry: if it fails, it fails for good.
        self._accept_retries = False
        if self._timer_handle is not None:
            # Only stale entries remain, of tasks cancelled while waiting.
            self._timer_handle.cancel()
            self._timer_handle = None

        caller_workers = [worker for _, worker in self._awaiting_stop_callers()]
        if self._watchdog is not None and all(
            worker.deadline is None for worker in caller_workers
        ):
            # Otherwise the watchdog stays, for the callers' own timeouts.
            self._watchdog.cancel()
            self._watchdog = None
            self._watchdog_at = math.inf

        if self._token_timer is not None:
            self._token_timer.cancel()
            self._token_timer = None

        idle = [w for w in self._workers if w.waiter is not None]
        for worker in idle:
            if worker.waiter is not None and not worker.waiter.done():
                worker.waiter.set_result(None)

        skip = [*self._stuck, *caller_workers]  # these await this very stop

        tasks = [w.task for w in self._workers if w.task is not None and w not in skip]
        await asyncio.gather(*tasks, return_exceptions=True)
