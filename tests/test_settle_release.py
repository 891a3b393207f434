"""Cancels while an attempt settles, and finished handles keeping a queue alive."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import weakref
from typing import Any

import pytest

from async_queue import (
    AsyncTaskQueue,
    Hook,
    RetryPolicy,
    TaskEvent,
    TaskHandle,
    TaskState,
    bind,
)
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import frame_names, settle, until

NO_RETRY = RetryPolicy(max_retries=0)


@pytest.fixture
def quiet_queue_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Silence the queue's error log, which a failing retry_on predicate writes."""
    monkeypatch.setattr(logging.getLogger("async_queue"), "disabled", True)


async def finish_and_stop(
    queue: AsyncTaskQueue, fn: Any, **options: Any
) -> tuple[TaskHandle[Any], weakref.ref[AsyncTaskQueue]]:
    """Run one task to its end, stop the queue, and return a weak reference to it.

    The caller keeps no strong reference, so a collected queue shows that the
    handle does not keep it alive.
    """
    await queue.start()
    handle = queue.submit_nowait(fn, **options)
    await until(handle.done)
    await queue.stop()
    reference = weakref.ref(queue)
    del queue
    gc.collect()
    return handle, reference


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


class CancelOnTimeout(Hook):
    """A hook that cancels each task whose attempt timed out."""

    def __init__(self) -> None:
        self.queue: AsyncTaskQueue | None = None
        self.accepted: list[bool] = []

    def on_timed_out(self, event: TaskEvent) -> None:
        assert self.queue is not None
        self.accepted.append(self.queue.cancel(event.task_id, "cancelled on timeout"))


def test_cancel_from_timeout_hook_stops_retry() -> None:
    """A task cancelled by its on_timed_out hook never runs another attempt."""

    async def main(loop: VirtualClockLoop) -> None:
        calls: list[float] = []

        async def slow_then_fast() -> str:
            calls.append(loop.time())
            if len(calls) == 1:
                await asyncio.sleep(100)

            return "ok"

        hook = CancelOnTimeout()
        policy = RetryPolicy(max_retries=1, base_delay=1.0, jitter="none")
        queue = AsyncTaskQueue(1, retry=policy, timeout=5, hooks=[hook])
        hook.queue = queue
        await queue.start()
        handle = await queue.submit(slow_then_fast)
        await until(lambda: handle.state is TaskState.RUNNING)
        loop.advance(6)
        await until(handle.done)
        loop.advance(2)  # past the backoff the retry would have waited
        await settle()

        assert hook.accepted == [True]
        assert handle.state is TaskState.CANCELLED
        assert handle.attempts == 1
        assert len(calls) == 1
        assert "cancelled on timeout" in str(handle.exception())
        stats = queue.stats()
        assert stats.retries == 0
        assert stats.cancelled == 1
        assert stats.waiting_retry == 0
        await queue.stop()

    run_virtual(main)


async def test_cancel_from_retry_predicate_stops_retry() -> None:
    """A retry_on predicate that cancels its task ends it CANCELLED at once."""
    handles: list[Any] = []
    calls = 0

    def cancel_and_retry(exc: BaseException) -> bool:
        handles[0].cancel("cancelled by the predicate")
        return True

    async def fails_once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first attempt")

        return "ok"

    policy = RetryPolicy(max_retries=1, base_delay=0, retry_on=cancel_and_retry)
    queue = AsyncTaskQueue(1, retry=policy)
    await queue.start()
    handles.append(await queue.submit(fails_once))
    await until(handles[0].done)
    await settle()

    assert handles[0].state is TaskState.CANCELLED
    assert handles[0].attempts == 1
    assert calls == 1
    assert queue.stats().retries == 0
    await queue.stop()


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
    handle, reference = await finish_and_stop(
        AsyncTaskQueue(1, retry=NO_RETRY), fails, retry=policy
    )

    assert handle.state is TaskState.FAILED
    assert isinstance(handle.exception(), KeyError)
    assert reference() is None


# Tracebacks of failed tasks: the task's frames stay, the queue's go.


class TransientError(Exception):
    pass


class PermanentError(Exception):
    pass


def raise_from_helper(error_type: type[Exception]) -> None:
    raise error_type("the task's own error")


async def fails_permanently() -> None:
    await asyncio.sleep(0)
    raise_from_helper(PermanentError)


async def fails_unexpectedly() -> None:
    await asyncio.sleep(0)
    raise_from_helper(ValueError)


def classify(exc: BaseException) -> bool:
    """Sort errors for retry_on by raising them. Other classes propagate."""
    try:
        raise exc
    except TransientError:
        return True
    except PermanentError:
        return False


@pytest.mark.usefixtures("quiet_queue_log")
async def test_raising_predicate_keeps_task_frames() -> None:
    """A retry_on predicate that re-raises the task's error must not erase the
    task's own frames from the stored exception."""
    policy = RetryPolicy(max_retries=1, retry_on=classify)
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    try:
        handle = queue.submit_nowait(fails_unexpectedly, retry=policy)
        await until(handle.done)
    finally:
        await queue.stop()

    assert handle.state is TaskState.FAILED
    error = handle.exception()
    assert isinstance(error, ValueError)
    assert "fails_unexpectedly" in frame_names(error.__traceback__)
    with pytest.raises(ValueError) as raised:
        handle.result()
    assert "fails_unexpectedly" in frame_names(raised.value.__traceback__)
    assert "raise_from_helper" in frame_names(raised.value.__traceback__)


async def test_classifying_predicate_frees_queue() -> None:
    """A predicate that raises and catches the task's error leaves no queue frame."""
    policy = RetryPolicy(max_retries=1, retry_on=classify)
    handle, reference = await finish_and_stop(
        AsyncTaskQueue(1, retry=NO_RETRY), fails_permanently, retry=policy
    )

    assert handle.state is TaskState.FAILED
    assert reference() is None
    assert "_run_worker" not in frame_names(handle.exception().__traceback__)


HANDLES: dict[str, TaskHandle[None]] = {}


async def awaits_own_handle() -> None:
    # The handle comes from a module dict, so that this frame references no queue.
    await HANDLES["self"]


async def test_self_await_error_frees_queue() -> None:
    """The RuntimeError of a task awaiting its own handle keeps no queue alive."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    handle = HANDLES["self"] = queue.submit_nowait(awaits_own_handle)
    await until(handle.done)
    del HANDLES["self"]
    await queue.stop()
    reference = weakref.ref(queue)
    del queue
    gc.collect()

    assert handle.state is TaskState.FAILED
    assert isinstance(handle.exception(), RuntimeError)
    assert reference() is None


class CancelThenRaise:
    """A retry_on predicate that cancels its task and then raises."""

    def __init__(self) -> None:
        self.target: TaskHandle[None] | None = None
        self.cancel_results: list[bool] = []

    def __call__(self, exc: BaseException) -> bool:
        assert self.target is not None
        self.cancel_results.append(self.target.cancel("cancelled by retry_on"))
        raise KeyError("retry_on fails after the cancel")


@pytest.mark.usefixtures("quiet_queue_log")
async def test_cancel_then_raise_in_predicate() -> None:
    """A cancel that returned True while the attempt settled ends the task
    CANCELLED, even when the predicate raises afterwards."""
    predicate = CancelThenRaise()
    policy = RetryPolicy(max_retries=1, retry_on=predicate)
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    try:
        handle = queue.submit_nowait(fails_permanently, retry=policy)
        predicate.target = handle
        await until(handle.done)
        stats = queue.stats()
    finally:
        await queue.stop()

    assert predicate.cancel_results == [True]
    assert handle.state is TaskState.CANCELLED
    assert stats.cancelled == 1
    assert stats.failed == 0


class ReraisingHook(Hook):
    """An on_failed hook that raises the task's exception and catches it."""

    def on_failed(self, event: TaskEvent) -> None:
        assert event.exception is not None
        try:
            raise event.exception
        except Exception:
            pass


async def test_reraising_hook_frees_queue() -> None:
    """A hook that raises a task's exception adds no frame referencing the queue."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, hooks=[ReraisingHook()])
    handle, reference = await finish_and_stop(queue, fails_permanently)
    del queue
    gc.collect()

    assert handle.state is TaskState.FAILED
    assert reference() is None
    names = frame_names(handle.exception().__traceback__)
    assert names == ["fails_permanently", "raise_from_helper"]


async def call_error_task(count: int) -> None:
    raise AssertionError(f"never runs: {count}")


async def test_bound_call_error_frees_queue() -> None:
    """A call error raised inside bind() keeps no frame referencing the queue."""
    task = bind(call_error_task, 1, 2)  # type: ignore[call-arg]
    handle, reference = await finish_and_stop(AsyncTaskQueue(1, retry=NO_RETRY), task)

    assert isinstance(handle.exception(), TypeError)
    assert reference() is None


async def test_cancel_then_raise_logs_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The error log of a cancel-then-raise predicate names the cancelled end."""
    predicate = CancelThenRaise()
    policy = RetryPolicy(max_retries=1, retry_on=predicate)
    caplog.set_level(logging.ERROR, logger="async_queue")
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = queue.submit_nowait(fails_permanently, retry=policy)
        predicate.target = handle
        await until(handle.done)

    messages = [record.getMessage() for record in caplog.records]
    assert handle.state is TaskState.CANCELLED
    assert messages == [
        "settling an attempt of task 1 failed; the task was cancelled first, "
        "so it ends cancelled"
    ]


class QueueReadingHook(Hook):
    """A hook that references its queue and reads its stats on every event."""

    def __init__(self) -> None:
        self.queue: AsyncTaskQueue | None = None
        self.running: list[int] = []

    def on_started(self, event: TaskEvent) -> None:
        assert self.queue is not None
        self.running.append(self.queue.stats().running)

    def on_succeeded(self, event: TaskEvent) -> None:
        self.on_started(event)


async def test_hook_with_queue_frees_queue() -> None:
    """A failed handle does not keep a stopped queue whose hooks name it.

    On Python 3.12 and later the task's frames link to the worker loop's
    frame, whose locals once held the hook lists.
    """
    hook = QueueReadingHook()
    queue = AsyncTaskQueue(1, retry=NO_RETRY, hooks=[hook])
    hook.queue = queue
    running = hook.running
    del hook  # the queue keeps it, and it keeps the queue
    handle, reference = await finish_and_stop(queue, fails_permanently)
    del queue
    gc.collect()

    assert handle.state is TaskState.FAILED
    assert running == [1]
    assert reference() is None
