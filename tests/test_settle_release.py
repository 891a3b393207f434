"""Cancels while an attempt settles, and finished handles keeping a queue alive."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import weakref
from collections.abc import Iterator

import pytest

from async_queue import AsyncTaskQueue, RetryPolicy, TaskHandle, TaskState
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)


@pytest.fixture
def quiet_queue_log() -> Iterator[None]:
    """Silence the queue's error log, which a failing retry_on predicate writes."""
    queue_logger = logging.getLogger("async_queue")
    previous = queue_logger.disabled
    queue_logger.disabled = True
    yield
    queue_logger.disabled = previous


class CancellingRandom(random.Random):
    """A jitter source that cancels a task each time the policy draws a delay.

    The policy draws the delay while the failed attempt is settled, so the
    cancel reaches a task that is still RUNNING but no longer has a worker.
    """

    def __init__(self, delay: float) -> None:
        super().__init__(0)
        self.delay = delay
        self.target: TaskHandle[None] | None = None
        self.cancel_results: list[bool] = []

    def uniform(self, a: float, b: float) -> float:
        assert self.target is not None
        self.cancel_results.append(self.target.cancel("cancelled by the jitter source"))
        return self.delay


class FailsThenBlocks:
    """A coroutine function that raises on its first call and blocks on later ones."""

    def __init__(self) -> None:
        self.calls = 0
        self.second_started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ValueError("first attempt fails")

        self.second_started.set()
        await self.release.wait()


@pytest.mark.parametrize("delay", [0.0, 0.5])
async def test_cancel_while_settling_no_rerun(delay: float) -> None:
    """A task cancelled while its retry delay is drawn does not start again."""
    source = CancellingRandom(delay=delay)
    policy = RetryPolicy(max_retries=1, base_delay=0.01, rng=source)
    work = FailsThenBlocks()
    queue = AsyncTaskQueue(1, retry=NO_RETRY, timeout=60.0)
    await queue.start()
    try:
        handle: TaskHandle[None] = queue.submit_nowait(work, retry=policy)
        source.target = handle
        # Wait until the task ends or starts a second attempt, whichever comes first.
        ended = asyncio.get_running_loop().create_future()
        handle.add_done_callback(lambda done: ended.set_result(None))
        rerun = asyncio.ensure_future(work.second_started.wait())
        await asyncio.wait([ended, rerun], return_when=asyncio.FIRST_COMPLETED)
        rerun.cancel()

        assert source.cancel_results == [True]
        assert work.calls == 1
        assert handle.state is TaskState.CANCELLED
    finally:
        await queue.stop()


def test_cancel_while_settling_keeps_timeout() -> None:
    """A task cancelled while its retry delay is drawn still ends, past its timeout."""

    async def main(loop: VirtualClockLoop) -> None:
        source = CancellingRandom(delay=0.0)
        policy = RetryPolicy(max_retries=1, base_delay=0.01, rng=source)
        work = FailsThenBlocks()
        queue = AsyncTaskQueue(1, retry=NO_RETRY)
        await queue.start()
        try:
            handle: TaskHandle[None] = queue.submit_nowait(
                work, retry=policy, timeout=5.0
            )
            source.target = handle
            await until(lambda: handle.done() or work.calls == 2)
            loop.advance(50.0)  # ten times the task's timeout
            await until(handle.done, max_iterations=1_000)

            assert handle.state is TaskState.CANCELLED
        finally:
            await queue.stop(grace=0.0)

    run_virtual(main)


async def fails() -> None:
    raise ValueError("task fails")


@pytest.mark.usefixtures("quiet_queue_log")
async def test_awaited_failed_handle_frees_queue() -> None:
    """Awaiting a failed handle leaves no reference from the handle to its queue."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    handle = queue.submit_nowait(fails)
    with pytest.raises(ValueError, match="task fails"):
        await handle
    await queue.stop()
    reference = weakref.ref(queue)
    del queue
    gc.collect()

    assert handle.state is TaskState.FAILED
    assert reference() is None


def _raising_predicate(exc: BaseException) -> bool:
    raise KeyError("retry_on predicate fails")


@pytest.mark.usefixtures("quiet_queue_log")
async def test_failed_predicate_frees_queue() -> None:
    """A task failed by a raising retry_on predicate frees its queue."""
    policy = RetryPolicy(max_retries=1, retry_on=_raising_predicate)
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    handle = queue.submit_nowait(fails, retry=policy)
    await until(handle.done)
    await queue.stop()
    reference = weakref.ref(queue)
    del queue
    gc.collect()

    assert handle.state is TaskState.FAILED
    assert isinstance(handle.exception(), KeyError)
    assert reference() is None
