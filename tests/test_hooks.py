"""Lifecycle hooks: which events fire, with what and when, hooks that fail or
cancel tasks, and callbacks rejected for being defined with ``async def``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from async_queue import (
    AsyncTaskQueue,
    DeadLetter,
    Hook,
    RetryPolicy,
    TaskEvent,
    TaskId,
    TaskState,
)
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import fail as _fail
from tests.helpers import one as _one
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)


class Recorder(Hook):
    """Records every event as (event name, task id, state, extra)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object, TaskState]] = []
        self.records: list[TaskEvent] = []

    def _add(self, name: str, event: TaskEvent) -> None:
        self.events.append((name, event.task_id, event.state))
        self.records.append(event)

    def on_submitted(self, event: TaskEvent) -> None:
        self._add("submitted", event)

    def on_started(self, event: TaskEvent) -> None:
        self._add("started", event)

    def on_retry_scheduled(self, event: TaskEvent) -> None:
        self._add("retry_scheduled", event)

    def on_succeeded(self, event: TaskEvent) -> None:
        self._add("succeeded", event)

    def on_failed(self, event: TaskEvent) -> None:
        self._add("failed", event)

    def on_timed_out(self, event: TaskEvent) -> None:
        self._add("timed_out", event)

    def on_cancelled(self, event: TaskEvent) -> None:
        self._add("cancelled", event)

    def on_dropped(self, event: TaskEvent) -> None:
        self._add("dropped", event)


async def test_success_and_retry_events() -> None:
    recorder = Recorder()
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first attempt fails")
        return "ok"

    policy = RetryPolicy(max_retries=1, base_delay=0)
    async with AsyncTaskQueue(1, retry=policy, hooks=[recorder]) as queue:
        await (await queue.submit(flaky, priority=3))

    assert [name for name, _, _ in recorder.events] == [
        "submitted",
        "started",
        "retry_scheduled",
        "started",
        "succeeded",
    ]
    retry = recorder.records[2]
    assert retry.delay == 0
    assert isinstance(retry.exception, ValueError)
    assert retry.attempts == 1
    assert retry.priority == 3
    assert recorder.records[-1].state is TaskState.SUCCEEDED
    assert recorder.records[-1].attempts == 2


def test_timeout_then_failed_events() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        recorder = Recorder()

        async def hang() -> None:
            await asyncio.Event().wait()

        policy = RetryPolicy(max_retries=0)
        async with AsyncTaskQueue(1, retry=policy, hooks=[recorder]) as queue:
            handle = await queue.submit(hang, timeout=5)
            await until(lambda: queue.stats().running == 1)
            loop.advance(5)
            with pytest.raises(TimeoutError):
                await handle

        names = [name for name, _, _ in recorder.events]
        assert names == ["submitted", "started", "timed_out", "failed"]
        assert isinstance(recorder.records[2].exception, TimeoutError)
        assert recorder.records[3].state is TaskState.FAILED

    run_virtual(main)


async def test_cancelled_and_dropped_events() -> None:
    recorder = Recorder()
    release = asyncio.Event()

    async def blocker() -> None:
        await release.wait()

    queue = AsyncTaskQueue(1, retry=RetryPolicy(max_retries=0), hooks=[recorder])
    await queue.start()
    running = await queue.submit(blocker)
    await until(lambda: queue.stats().running == 1)
    cancelled = await queue.submit(blocker)
    dropped = await queue.submit(blocker)
    cancelled.cancel()
    await queue.stop()

    final = {task_id: name for name, task_id, _ in recorder.events}
    assert final[cancelled.id] == "cancelled"
    assert final[dropped.id] == "dropped"
    assert final[running.id] == "cancelled"


async def test_failing_hook_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Hook):
        def on_started(self, event: TaskEvent) -> None:
            raise RuntimeError("hook broke")

    async def job() -> str:
        return "ok"

    caplog.set_level(logging.ERROR, logger="async_queue")
    async with AsyncTaskQueue(1, hooks=[Broken()]) as queue:
        results = [await (await queue.submit(job)) for _ in range(3)]
        workers = queue.stats().workers

    assert results == ["ok"] * 3
    assert workers == 1
    failures = [r for r in caplog.records if "hook" in r.getMessage()]
    assert len(failures) == 3


async def test_plain_object_with_some_methods_is_a_hook() -> None:
    seen: list[object] = []

    class OnlySucceeded:
        def on_succeeded(self, event: TaskEvent) -> None:
            seen.append(event.task_id)

    async def job() -> None:
        pass

    async with AsyncTaskQueue(1, hooks=[OnlySucceeded()]) as queue:
        await (await queue.submit(job))

    assert seen == [1]


async def test_hook_instance_attribute_called() -> None:
    seen: list[object] = []
    hook = Hook()
    hook.on_succeeded = lambda event: seen.append(event.task_id)  # type: ignore[method-assign]

    async def job() -> None:
        pass

    async with AsyncTaskQueue(1, hooks=[hook]) as queue:
        await (await queue.submit(job))

    assert seen == [1]


@pytest.mark.parametrize("hooks", [object(), [object()], "hook", [42]])
def test_invalid_hooks_rejected(hooks: object) -> None:
    with pytest.raises(TypeError, match="hook"):
        AsyncTaskQueue(hooks=hooks)  # type: ignore[arg-type]


async def test_no_user_hook_means_no_hot_path_calls() -> None:
    """Only the logging hook is set, and it observes no success-path event."""
    queue = AsyncTaskQueue(1)

    assert queue._hooks["on_started"] == []
    assert queue._hooks["on_succeeded"] == []
    assert queue._hooks["on_submitted"] == []
    assert len(queue._hooks["on_failed"]) == 1


class CancelOnSubmit(Hook):
    """Cancels every task as soon as it is submitted."""

    def on_submitted(self, event: TaskEvent) -> None:
        self.queue.cancel(event.task_id, "refused by a hook")

    queue: AsyncTaskQueue


@pytest.mark.parametrize("canceller_first", [True, False])
async def test_hook_caused_event_follows_current_one(canceller_first: bool) -> None:
    """Every hook receives on_submitted before the on_cancelled a hook caused."""
    canceller, before, after = CancelOnSubmit(), Recorder(), Recorder()
    hooks = (
        [canceller, before, after] if canceller_first else [before, canceller, after]
    )
    async with AsyncTaskQueue(1, hooks=hooks) as queue:
        canceller.queue = queue
        handle = queue.submit_nowait(asyncio.sleep, 0)

    assert handle.state is TaskState.CANCELLED
    expected = [
        ("submitted", handle.id, TaskState.PENDING),
        ("cancelled", handle.id, TaskState.CANCELLED),
    ]
    assert before.events == expected
    assert after.events == expected


class RaisingHook(Hook):
    """A hook whose chosen event raises ``CancelledError``, a BaseException."""

    def __init__(self, event: str) -> None:
        self.event = event

    def _maybe_raise(self, event: TaskEvent, name: str) -> None:
        if name == self.event:
            raise asyncio.CancelledError(f"{name} of task {event.task_id!r}")

    def on_submitted(self, event: TaskEvent) -> None:
        self._maybe_raise(event, "on_submitted")

    def on_started(self, event: TaskEvent) -> None:
        self._maybe_raise(event, "on_started")

    def on_succeeded(self, event: TaskEvent) -> None:
        self._maybe_raise(event, "on_succeeded")

    def on_failed(self, event: TaskEvent) -> None:
        self._maybe_raise(event, "on_failed")


@pytest.mark.parametrize(
    "event", ["on_submitted", "on_started", "on_succeeded", "on_failed"]
)
async def test_hook_cancelled_error_keeps_worker(event: str) -> None:
    """A hook that raises CancelledError is ignored like any other hook error."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, hooks=[RaisingHook(event)])
    await queue.start()
    failing = await queue.submit(_fail)
    first = await queue.submit(_one)
    second = await queue.submit(_one)
    await until(lambda: second.done())

    assert failing.state is TaskState.FAILED
    assert first.state is TaskState.SUCCEEDED
    assert second.state is TaskState.SUCCEEDED
    assert queue.stats().workers == 1
    assert queue.stats().running == 0

    report = await queue.stop()
    assert report.abandoned == ()


class CancelEveryTask(Hook):
    """A hook that cancels every task in ``handles`` whenever one is dropped."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.dropped: list[object] = []

    def on_dropped(self, event: TaskEvent) -> None:
        self.dropped.append(event.task_id)
        for handle in self.handles:
            handle.cancel()


@pytest.mark.parametrize("mode", ["cancel", "finish_running"])
async def test_hook_cancel_during_stop_drop_settles_once(mode: str) -> None:
    """A hook cancelling queued tasks while stop() drops them changes nothing."""
    hook = CancelEveryTask()
    queue = AsyncTaskQueue(1, retry=NO_RETRY, hooks=[hook])
    await queue.start()
    queue.pause()
    hook.handles = [await queue.submit(_one) for _ in range(3)]
    hook.handles.append(await queue.submit(_one, delay=10))

    report = await queue.stop(mode)

    assert report.never_started == tuple(hook.handles)
    assert hook.dropped == [1, 2, 3, 4]
    assert all(h.state is TaskState.CANCELLED for h in hook.handles)
    stats = queue.stats()
    assert stats.pending == 0
    assert stats.delayed == 0
    assert stats.waiting_retry == 0
    assert stats.cancelled == 4
    assert stats.dropped == 4
    assert stats.workers == 0
    assert queue.closed


@pytest.mark.parametrize("how", ["swallows the timeout", "cancels itself, returns"])
def test_interruption_hooks_delay_next_start(how: str) -> None:
    """A task that was interrupted but returned runs its hooks before the next
    task starts: the next task's timeout and wait time count from after them."""

    async def main(loop: VirtualClockLoop) -> None:
        class SlowHook(Hook):
            def on_timed_out(self, event: TaskEvent) -> None:
                loop.advance(5)

            def on_cancelled(self, event: TaskEvent) -> None:
                loop.advance(5)

        queue = AsyncTaskQueue(1, retry=NO_RETRY, hooks=[SlowHook()])

        async def first() -> str:
            if how == "cancels itself, returns":
                await asyncio.sleep(1)
                queue.task(1).cancel()
                return "returned"

            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(100)
            return "returned"

        async def second() -> str:
            await asyncio.sleep(7)
            return "ran 7 s"

        async with queue:
            timeout = 1 if how == "swallows the timeout" else None
            interrupted = queue.submit_nowait(first, timeout=timeout)
            following = queue.submit_nowait(second, timeout=10)
            assert await following == "ran 7 s"
            stats = queue.stats()

        assert interrupted.state in (TaskState.FAILED, TaskState.CANCELLED)
        # The second task waited 1 s for the first, then 5 s for its hook.
        assert stats.wait_time.total == 6.0
        assert stats.wait_time.count == 2

    run_virtual(main)


class AsyncFailedHook(Hook):
    def __init__(self) -> None:
        self.failed: list[TaskId] = []

    async def on_failed(self, event: TaskEvent) -> None:  # type: ignore[override]
        self.failed.append(event.task_id)


def test_async_callbacks_rejected_with_advice() -> None:
    async def notify(letter: DeadLetter) -> None:
        pass

    with pytest.raises(TypeError, match=r"on_dead_letter .* is a coroutine function"):
        AsyncTaskQueue(on_dead_letter=notify)
    with pytest.raises(TypeError, match=r"defines on_failed with 'async def'"):
        AsyncTaskQueue(hooks=[AsyncFailedHook()])
