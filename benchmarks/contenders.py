"""The pools that run coroutine tasks: async_queue and the baselines.

Each pool runs tasks on ``WORKERS`` concurrent workers and returns one
awaitable handle per task. The baselines are what an engineer would write by
hand, or use from a library, for the same job.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from async_queue import AsyncTaskQueue, RetryPolicy

from .harness import optional_module

WORKERS = 16

TaskFn = Callable[..., Awaitable[Any]]


class Pool:
    """A pool of ``WORKERS`` workers, whose subclasses define submission.

    ``submit`` is synchronous. A pool whose API can only submit with ``await``
    sets ``async_submit`` and defines ``asubmit`` instead.
    """

    async_submit = False

    async def open(self) -> None:
        """Start the workers on the running loop."""

    def submit(self, fn: TaskFn, /, *args: Any, priority: int = 0) -> Any:
        """Queue ``fn(*args)`` and return its handle."""
        raise NotImplementedError

    async def asubmit(self, fn: TaskFn, /, *args: Any, priority: int = 0) -> Any:
        """Queue ``fn(*args)`` and return its handle, for pools that must await."""
        return self.submit(fn, *args, priority=priority)

    async def wait_all(self, handles: Sequence[Any]) -> None:
        """Await every handle in turn."""
        for handle in handles:
            await handle

    # Whether a handle is awaited by ``wait()`` instead of by ``await handle``.
    wait_needed = False

    async def wait(self, handle: Any) -> Any:
        """Await one handle, for pools whose handles are not awaitable."""
        return await handle

    async def close(self) -> None:
        """Stop the workers, once every task has finished."""


class HandPool(Pool):
    """The hand-written pool: heapq, an ``asyncio.Event`` and a Future per task.

    Heap entries are ``(-priority, counter, fn, args, future, attempts)``: the
    counter keeps FIFO order among equal priorities and means the heap never
    compares functions. With ``max_retries`` a failed task goes back on the
    heap at once (zero backoff); with ``timeout`` each task runs under
    ``asyncio.timeout``.
    """

    def __init__(self, max_retries: int = 0, timeout: float | None = None) -> None:
        self._heap: list[tuple[int, int, TaskFn, tuple[Any, ...], Any, int]] = []
        self._counter = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._max_retries = max_retries
        self._timeout = timeout
        self._workers: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._workers = [self._loop.create_task(self._work()) for _ in range(WORKERS)]

    def submit(
        self, fn: TaskFn, /, *args: Any, priority: int = 0
    ) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        self._counter += 1
        heapq.heappush(self._heap, (-priority, self._counter, fn, args, future, 0))
        self._wake.set()
        return future

    async def _work(self) -> None:
        heap = self._heap
        wake = self._wake
        while True:
            if not heap:
                if self._closing:
                    return

                wake.clear()
                await wake.wait()
                continue

            priority, _, fn, args, future, attempts = heapq.heappop(heap)
            try:
                if self._timeout is None:
                    result = await fn(*args)
                else:
                    async with asyncio.timeout(self._timeout):
                        result = await fn(*args)
            except Exception as exc:
                if attempts < self._max_retries:
                    self._counter += 1
                    entry = (priority, self._counter, fn, args, future, attempts + 1)
                    heapq.heappush(heap, entry)
                elif not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        await asyncio.gather(*self._workers)


class LevelPool(HandPool):
    """A hand-written pool on a heap of priority levels, each a FIFO deque.

    It is the design of async_queue's ready heap and nothing else. A dict
    keeps a deque per priority, and a heap the priorities that have tasks.
    A ``threading.Lock`` is held for each push and pop, and the hand-written
    pool's ``asyncio.Event`` wakes the workers, with a Future per task. It
    keeps no states, statistics or task table, so the gap between it and
    async_queue is what those features cost. It has no retries or timeouts,
    and unlike the ready heap it keeps every emptied level, which costs
    nothing with the few priorities of the scenarios.
    """

    def __init__(self) -> None:
        super().__init__()
        self._levels: dict[int, deque[tuple[TaskFn, tuple[Any, ...], Any]]] = {}
        self._order: list[int] = []  # negated priorities of non-empty levels
        self._lock = threading.Lock()

    def submit(
        self, fn: TaskFn, /, *args: Any, priority: int = 0
    ) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        self._lock.acquire()
        try:
            level = self._levels.get(priority)
            if level is None:
                level = self._levels[priority] = deque()
            if not level:
                heapq.heappush(self._order, -priority)

            level.append((fn, args, future))
        finally:
            self._lock.release()

        self._wake.set()
        return future

    async def _work(self) -> None:
        order, levels, lock, wake = self._order, self._levels, self._lock, self._wake
        while True:
            if not order:
                if self._closing:
                    return

                wake.clear()
                await wake.wait()
                continue

            lock.acquire()
            try:
                level = levels[-order[0]]
                fn, args, future = level.popleft()
                if not level:
                    heapq.heappop(order)
            finally:
                lock.release()

            try:
                result = await fn(*args)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)


class PriorityQueuePool(Pool):
    """``asyncio.PriorityQueue`` read by the workers, and a Future per task."""

    def __init__(self) -> None:
        self._queue: asyncio.PriorityQueue[
            tuple[int, int, TaskFn, tuple[Any, ...], asyncio.Future[Any]]
        ] = asyncio.PriorityQueue()
        self._counter = 0
        self._workers: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._workers = [self._loop.create_task(self._work()) for _ in range(WORKERS)]

    def submit(
        self, fn: TaskFn, /, *args: Any, priority: int = 0
    ) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        self._counter += 1
        self._queue.put_nowait((-priority, self._counter, fn, args, future))
        return future

    async def _work(self) -> None:
        get = self._queue.get
        while True:
            _, _, fn, args, future = await get()
            try:
                result = await fn(*args)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()

        await asyncio.gather(*self._workers, return_exceptions=True)


class SemaphoreTasks(Pool):
    """One ``asyncio.create_task`` per task, run under a ``Semaphore(WORKERS)``.

    It has no priorities: waiters on the semaphore proceed in FIFO order.
    """

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._semaphore = asyncio.Semaphore(WORKERS)

    def submit(self, fn: TaskFn, /, *args: Any, priority: int = 0) -> asyncio.Task[Any]:
        return self._loop.create_task(self._guarded(fn, args))

    async def _guarded(self, fn: TaskFn, args: tuple[Any, ...]) -> Any:
        async with self._semaphore:
            return await fn(*args)


class AiojobsPool(Pool):
    """An ``aiojobs.Scheduler(limit=WORKERS)``, whose handles are ``Job`` objects.

    ``pending_limit=0`` lets every job queue up at once, as the other pools
    do. It has no priorities: pending jobs start in FIFO order.
    """

    async_submit = True

    async def open(self) -> None:
        aiojobs = optional_module("aiojobs")
        assert aiojobs is not None, "the caller checks that aiojobs is installed"
        self._scheduler = aiojobs.Scheduler(limit=WORKERS, pending_limit=0)

    async def asubmit(self, fn: TaskFn, /, *args: Any, priority: int = 0) -> Any:
        return await self._scheduler.spawn(fn(*args))

    async def wait_all(self, handles: Sequence[Any]) -> None:
        for job in handles:
            await job.wait()

    wait_needed = True

    async def wait(self, handle: Any) -> Any:
        return await handle.wait()

    async def close(self) -> None:
        await self._scheduler.close()


class QueuePool(Pool):
    """async_queue's ``AsyncTaskQueue(WORKERS)``, with queue and task options.

    ``submit`` is the queue's own ``submit_nowait``, bound once, so the pool
    adds no call per task unless ``task_options`` wraps it in a ``partial``.
    With ``await_submit`` the caller uses ``await queue.submit`` instead.
    """

    def __init__(
        self,
        *,
        await_submit: bool = False,
        task_options: dict[str, Any] | None = None,
        **queue_options: Any,
    ) -> None:
        self.async_submit = await_submit
        self._task_options = task_options or {}
        self._queue_options = queue_options

    async def open(self) -> None:
        self.queue = AsyncTaskQueue(WORKERS, **self._queue_options)
        self.prepare(self.queue)
        await self.queue.start()
        if self._task_options:
            options = self._task_options
            self.submit = partial(self.queue.submit_nowait, **options)  # type: ignore[method-assign]
            self.asubmit = partial(self.queue.submit, **options)  # type: ignore[method-assign]
        else:
            self.submit = self.queue.submit_nowait  # type: ignore[method-assign]
            self.asubmit = self.queue.submit  # type: ignore[method-assign]

    def prepare(self, queue: AsyncTaskQueue) -> None:
        """Adjust the queue before it starts; subclasses override this."""

    async def close(self) -> None:
        await self.queue.stop()


@dataclass(frozen=True)
class Contender:
    """A named way to build a pool, as listed in the result tables."""

    key: str
    label: str
    factory: Callable[[], Pool]
    needs: str | None = None  # an optional module the pool imports

    def available(self) -> bool:
        return self.needs is None or optional_module(self.needs) is not None


FLOOR = "floor"
POOL = "pool"
AIOJOBS = "aiojobs"
QUEUE = "aq"
QUEUE_TIMEOUT = "aq-timeout"

POOL_CONTENDER = Contender(POOL, "hand-written pool (heapq + Event)", HandPool)
PRIORITY_QUEUE_CONTENDER = Contender(
    "pq", "asyncio.PriorityQueue + workers", PriorityQueuePool
)
SEMAPHORE_CONTENDER = Contender("tasks", "create_task + Semaphore(16)", SemaphoreTasks)
AIOJOBS_CONTENDER = Contender(
    AIOJOBS, "aiojobs Scheduler(limit=16)", AiojobsPool, needs="aiojobs"
)
QUEUE_CONTENDER = Contender(QUEUE, "async_queue submit_nowait", QueuePool)

# The pools compared by the memory and priority scenarios.
POOLS = (
    POOL_CONTENDER,
    PRIORITY_QUEUE_CONTENDER,
    SEMAPHORE_CONTENDER,
    AIOJOBS_CONTENDER,
    QUEUE_CONTENDER,
)

# A timeout no task reaches: it exercises the timeout path without firing.
UNREACHED_TIMEOUT = 60.0

THROUGHPUT_POOLS = (
    POOL_CONTENDER,
    Contender(
        "pool-timeout",
        "hand-written pool + asyncio.timeout",
        partial(HandPool, timeout=UNREACHED_TIMEOUT),
    ),
    Contender("levels", "hand-written pool (priority levels + Lock)", LevelPool),
    PRIORITY_QUEUE_CONTENDER,
    SEMAPHORE_CONTENDER,
    AIOJOBS_CONTENDER,
    QUEUE_CONTENDER,
    Contender(
        "aq-await",
        "async_queue await submit",
        partial(QueuePool, await_submit=True),
    ),
    Contender(
        QUEUE_TIMEOUT,
        "async_queue timeout=60 per task",
        partial(QueuePool, timeout=UNREACHED_TIMEOUT),
    ),
    Contender(
        "aq-retry",
        "async_queue retry=RetryPolicy(3) per task",
        partial(QueuePool, task_options={"retry": RetryPolicy(max_retries=3)}),
    ),
    Contender(
        "aq-aging",
        "async_queue aging_rate=1.0",
        partial(QueuePool, aging_rate=1.0),
    ),
)
