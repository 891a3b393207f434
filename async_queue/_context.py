"""The task that runs the calling code, found by ``current_handle()``."""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._base import _Worker
    from .models import TaskHandle

__all__ = ("CURRENT_WORKER", "THREAD_TASK", "current_handle", "running_handle")

# The worker whose asyncio task runs the current code, or started the task
# that runs it: asyncio copies the context into each task it creates.
CURRENT_WORKER: contextvars.ContextVar[_Worker | None] = contextvars.ContextVar(
    "async_queue_worker", default=None
)

# The task, and its attempt, whose threaded() function runs in this context.
# asyncio.to_thread() runs the function in a copy of the caller's context, so
# the thread reads it too, even after the attempt has ended.
THREAD_TASK: contextvars.ContextVar[tuple[TaskHandle[Any], int] | None] = (
    contextvars.ContextVar("async_queue_thread_task", default=None)
)


def running_handle() -> TaskHandle[Any] | None:
    """Return the handle of the task that runs the calling code, or ``None``."""
    # A worker first: a queue that a threaded() function runs on its own
    # event loop makes tasks that copy the thread's context, THREAD_TASK
    # included, but run tasks of their own queue.
    worker = CURRENT_WORKER.get()
    if (
        worker is not None
        and worker.current is not None
        and asyncio._get_running_loop() is not None
        and asyncio.current_task() is worker.task
    ):
        return worker.current

    # Tasks that the running task creates, and threads that it starts with
    # asyncio.to_thread(), copy its context and see the worker as well, but
    # are not its task: by the time they call, the worker may run another.
    thread_task = THREAD_TASK.get()
    return None if thread_task is None else thread_task[0]


def current_handle() -> TaskHandle[Any]:
    """Return the handle of the queue task that runs the calling code.

    Call it in a task's coroutine, in a coroutine that the task awaits, or in
    a function that ``threaded()`` runs. The handle gives the task's ``id``,
    its ``attempts`` so far (1 on the first attempt) and ``set_progress()``.

    Raises:
        RuntimeError: the caller is not a task of a queue. This includes
            asyncio tasks that a queue task creates (``asyncio.create_task()``,
            ``gather()``, a ``TaskGroup``, and ``wait_for()`` before Python
            3.12) and threads of ``asyncio.to_thread()``: pass the handle to
            those.
    """
    handle = running_handle()
    if handle is None:
        raise RuntimeError(
            "current_handle() works only in a task that a queue runs: in its "
            "coroutine, or in a function that threaded() runs; pass the "
            "handle to tasks and threads that the task starts itself"
        )

    return handle
