"""Scale and memory: many concurrent tasks, bounded retention, no leaks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import tracemalloc
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    Jitter,
    RetryPolicy,
    TaskCancelledError,
    TaskHandle,
    TaskNotFoundError,
    TaskState,
)
from tests.clock import VirtualClockLoop, run_virtual

TASKS = 10_000
SUBMITTERS = 8
AWAITERS = 8


async def echo(value: object) -> object:
    return value


async def noop() -> None:
    return None


class Payload:
    """A result or argument object that a test can hold a weak reference to."""


async def make_payload() -> Payload:
    return Payload()


async def take_payload(payload: Payload) -> int:
    return 1


async def fail() -> None:
    raise ValueError("always fails")


# Concurrency at scale


async def test_ten_thousand_tasks_run_once() -> None:
    """Submitters and awaiters run at once, and every task runs exactly one time."""
    calls = [0] * TASKS
    running = 0
    max_running = 0

    async def work(index: int) -> int:
        nonlocal running, max_running
        calls[index] += 1
        running += 1
        max_running = max(max_running, running)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        running -= 1
        return index

    handles: list[TaskHandle[int]] = []
    results: dict[int, int] = {}
    inbox: asyncio.Queue[tuple[int, TaskHandle[int]] | None] = asyncio.Queue()

    async with AsyncTaskQueue(32) as queue:

        async def submit_share(first: int) -> None:
            for index in range(first, TASKS, SUBMITTERS):
                handle = await queue.submit(work, index)
                handles.append(handle)
                inbox.put_nowait((index, handle))
                if index % 100 == first:
                    # submit() does not suspend: yield so that the submitters,
                    # the awaiters and the workers interleave.
                    await asyncio.sleep(0)

        async def await_results() -> None:
            while (item := await inbox.get()) is not None:
                index, handle = item
                results[index] = await handle

        awaiters = [asyncio.create_task(await_results()) for _ in range(AWAITERS)]
        await asyncio.gather(*(submit_share(first) for first in range(SUBMITTERS)))
        for _ in awaiters:
            inbox.put_nowait(None)
        await asyncio.gather(*awaiters)
        stats = queue.stats()

    assert len(results) == TASKS
    assert all(results[index] == index for index in range(TASKS))
    assert Counter(h.state for h in handles) == {TaskState.SUCCEEDED: TASKS}
    assert Counter(calls) == {1: TASKS}
    assert Counter(h.attempts for h in handles) == {1: TASKS}
    assert sorted(h.id for h in handles) == list(range(1, TASKS + 1))  # type: ignore[type-var]
    assert max_running == 32
    assert stats.succeeded == TASKS
    assert stats.submitted == TASKS
    assert stats.failed == 0
    assert stats.cancelled == 0
    assert stats.pending == 0
    assert stats.running == 0


async def _submit_cancel_await(
    rng: random.Random, tasks: int, workers: int, actors: int
) -> None:
    """Run ``tasks`` tasks while ``actors`` submitters, cancellers and awaiters race.

    Each task fails its first 0, 1 or 2 attempts and is retried once, so it
    succeeds, fails, or ends cancelled if a cancel() call took effect.
    """
    plan = [(rng.randrange(3), rng.randrange(4)) for _ in range(tasks)]
    invocations = [0] * tasks
    raised = 0

    async def work(index: int) -> int:
        nonlocal raised
        invocations[index] += 1
        failures, yields = plan[index]
        for _ in range(yields):
            await asyncio.sleep(0)

        if invocations[index] <= failures:
            raised += 1
            raise ValueError(f"task {index} attempt {invocations[index]}")

        return index

    handles: dict[int, TaskHandle[int]] = {}
    submitted: list[int] = []
    inbox: asyncio.Queue[int | None] = asyncio.Queue()
    outcomes: dict[int, tuple[str, object]] = {}
    cancel_hits: set[int] = set()
    policy = RetryPolicy(max_retries=1, base_delay=0, jitter=Jitter.NONE)

    async with AsyncTaskQueue(workers, retry=policy) as queue:

        async def submit_share(first: int) -> None:
            for index in range(first, tasks, actors):
                handles[index] = await queue.submit(work, index)
                submitted.append(index)
                inbox.put_nowait(index)
                for _ in range(rng.randrange(3)):
                    await asyncio.sleep(0)

        async def cancel_some() -> None:
            for _ in range(tasks // (4 * actors) + 1):
                if submitted:
                    # Recent tasks are mostly unfinished, so more cancels hit.
                    index = rng.choice(submitted[-50:])
                    if handles[index].cancel():
                        cancel_hits.add(index)

                for _ in range(rng.randrange(4)):
                    await asyncio.sleep(0)

        async def await_results() -> None:
            while (index := await inbox.get()) is not None:
                try:
                    outcomes[index] = ("succeeded", await handles[index])
                except ValueError as exc:
                    outcomes[index] = ("failed", exc)
                except TaskCancelledError as exc:
                    outcomes[index] = ("cancelled", exc)

        awaiters = [asyncio.create_task(await_results()) for _ in range(actors)]
        await asyncio.gather(
            *(submit_share(first) for first in range(actors)),
            *(cancel_some() for _ in range(actors)),
        )
        for _ in awaiters:
            inbox.put_nowait(None)
        await asyncio.gather(*awaiters)
        await queue.join()
        stats = queue.stats()

    assert len(handles) == tasks
    assert len(outcomes) == tasks
    for index, handle in handles.items():
        failures = plan[index][0]
        kind, value = outcomes[index]
        assert handle.done()
        assert invocations[index] == handle.attempts
        assert (handle.state is TaskState.CANCELLED) == (index in cancel_hits)
        if handle.state is TaskState.SUCCEEDED:
            assert kind == "succeeded"
            assert value == index
            assert handle.attempts == failures + 1
        elif handle.state is TaskState.FAILED:
            assert kind == "failed"
            assert str(value) == f"task {index} attempt 2"
            assert failures == 2
            assert handle.attempts == 2
        else:
            assert kind == "cancelled"
            assert handle.attempts <= min(failures + 1, 2)

    assert stats.submitted == tasks
    assert stats.succeeded + stats.failed + stats.cancelled == tasks
    assert stats.cancelled == len(cancel_hits)
    assert stats.retries + stats.failed == raised
    assert stats.pending == 0
    assert stats.waiting_retry == 0
    assert stats.running == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_submit_cancel_await_race(seed: int) -> None:
    await _submit_cancel_await(random.Random(seed), tasks=2_000, workers=16, actors=6)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 6), st.integers(1, 4))
def test_race_invariants_hold(seed: int, workers: int, actors: int) -> None:
    rng = random.Random(seed)
    asyncio.run(_submit_cancel_await(rng, tasks=200, workers=workers, actors=actors))


# Retention of finished tasks


async def _fill_store(max_results: int, count: int) -> None:
    # One worker finishes the tasks in submission order, which is the
    # eviction order.
    async with AsyncTaskQueue(1, max_results=max_results) as queue:
        handles = [
            await queue.submit(echo, index, task_id=f"t{index}")
            for index in range(count)
        ]
        await queue.join()
        retained = min(count, max_results)
        assert queue.stats().retained == retained

        for index, handle in enumerate(handles):
            if index < count - retained:
                with pytest.raises(TaskNotFoundError, match=f"'t{index}'"):
                    queue.task(handle.id)
            else:
                assert queue.task(handle.id) is handle

            assert handle.result() == index
            assert await handle == index


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 12), st.integers(0, 30))
def test_store_keeps_newest_results(max_results: int, count: int) -> None:
    """The store keeps the newest tasks, and every handle keeps its own result."""
    asyncio.run(_fill_store(max_results, count))


def test_ttl_evicts_old_results() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, result_ttl=10, retry=RetryPolicy(0)) as queue:
            old = await queue.submit(echo, "old value", task_id="old")
            failed = await queue.submit(fail, task_id="failed")
            await queue.join()
            loop.advance(6)
            new = await queue.submit(echo, "new value", task_id="new")
            await new
            loop.advance(5)

            with pytest.raises(TaskNotFoundError, match="'old'"):
                queue.task("old")
            with pytest.raises(TaskNotFoundError, match="'failed'"):
                queue.task("failed")
            assert queue.task("new") is new
            assert queue.stats().retained == 1

            assert old.result() == "old value"
            assert await old == "old value"
            assert isinstance(failed.exception(), ValueError)
            with pytest.raises(ValueError, match="always fails"):
                await failed

    run_virtual(main)


def test_ttl_expired_not_counted() -> None:
    """stats().retained leaves out tasks that outlived result_ttl."""

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, result_ttl=10) as queue:
            await (await queue.submit(echo, 1))
            assert queue.stats().retained == 1

            loop.advance(11)
            assert queue.stats().retained == 0

    run_virtual(main)


# Memory


async def test_memory_flat_over_runs() -> None:
    """Memory after 60,000 tasks is what it was after 20,000.

    The queue retains at most ``max_results`` (10,000) finished tasks, so once
    the store is full, more tasks must not grow the traced memory.
    """

    async def run_tasks(queue: AsyncTaskQueue, count: int) -> None:
        for _ in range(count // 1_000):
            handles = [queue.submit_nowait(noop) for _ in range(1_000)]
            for handle in handles:
                await handle
            del handles

    def traced() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        async with AsyncTaskQueue() as queue:
            start = traced()
            await run_tasks(queue, 20_000)
            after_first = traced()
            await run_tasks(queue, 40_000)
            after_second = traced()
            stats = queue.stats()
    finally:
        tracemalloc.stop()

    # The first run fills the store with 10,000 handles. tracemalloc counts
    # them, so it would also count 40,000 more retained handles.
    assert after_first - start > 1_000_000
    assert after_second - after_first < 2_000_000
    assert stats.succeeded == 60_000
    assert stats.retained == 10_000


# Garbage after eviction


@pytest.mark.parametrize("fn", [noop, fail])
async def test_handle_freed_without_store(
    fn: Callable[[], Awaitable[None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytest's log capture keeps each record, and the failure record's
    # exception references the handle through its traceback.
    monkeypatch.setattr(logging.getLogger("async_queue"), "propagate", False)
    # A dead letter keeps the exception, and so the same traceback.
    no_store = {"max_results": 0, "max_dead_letters": 0}
    async with AsyncTaskQueue(2, retry=RetryPolicy(0), **no_store) as queue:
        handle = await queue.submit(fn)
        with contextlib.suppress(ValueError):
            await handle

        assert handle.done()
        ref = weakref.ref(handle)
        del handle
        gc.collect()
        assert ref() is None


async def test_handle_freed_after_eviction() -> None:
    async with AsyncTaskQueue(1, max_results=2) as queue:
        first = await queue.submit(noop)
        await first
        ref = weakref.ref(first)
        del first

        for _ in range(2):
            await (await queue.submit(noop))

        gc.collect()
        assert ref() is None
        with pytest.raises(TaskNotFoundError):
            queue.task(1)


async def test_result_freed_after_eviction() -> None:
    """Once the task is evicted and the caller drops its result, it is garbage."""
    async with AsyncTaskQueue(1, max_results=0) as queue:
        result = await (await queue.submit(make_payload))
        ref = weakref.ref(result)
        del result
        gc.collect()
        assert ref() is None


async def test_args_freed_after_eviction() -> None:
    """Once the task is evicted and the caller drops its argument, it is garbage."""
    async with AsyncTaskQueue(1, max_results=0) as queue:
        payload = Payload()
        await (await queue.submit(take_payload, payload))
        ref = weakref.ref(payload)
        del payload
        gc.collect()
        assert ref() is None
