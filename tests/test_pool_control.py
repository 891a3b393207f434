"""Pool control at runtime: resize, pause and resume."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import AsyncTaskQueue, QueueClosedError, RetryPolicy, TaskState
from tests.helpers import one as _one
from tests.helpers import settle, until

NO_RETRY = RetryPolicy(max_retries=0)


class Gate:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.started = 0

    async def __call__(self) -> str:
        self.started += 1
        await self.event.wait()
        return "done"


async def test_grow_takes_effect_at_once() -> None:
    gate = Gate()
    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        handles = [await queue.submit(gate) for _ in range(6)]
        await until(lambda: gate.started == 2)

        queue.resize(5)
        await until(lambda: gate.started == 5)
        assert queue.stats().running == 5
        assert queue.stats().workers == 5
        assert queue.max_workers == 5

        gate.event.set()
        assert await asyncio.gather(*handles) == ["done"] * 6


async def test_shrink_lets_running_tasks_finish() -> None:
    gate = Gate()
    async with AsyncTaskQueue(4, retry=NO_RETRY) as queue:
        running = [await queue.submit(gate) for _ in range(4)]
        await until(lambda: gate.started == 4)

        queue.resize(1)
        for _ in range(10):
            await asyncio.sleep(0)
        assert all(h.state is TaskState.RUNNING for h in running)

        later = [await queue.submit(gate) for _ in range(3)]
        gate.event.set()
        assert await asyncio.gather(*running, *later) == ["done"] * 7
        await until(lambda: queue.stats().workers == 1)

        max_seen = 0
        release = asyncio.Event()

        async def count_running() -> None:
            nonlocal max_seen
            max_seen = max(max_seen, queue.stats().running)
            await release.wait()

        probes = [await queue.submit(count_running) for _ in range(3)]
        await until(lambda: queue.stats().running == 1)
        release.set()
        await asyncio.gather(*probes)

    assert max_seen == 1


async def test_shrink_retires_idle_workers_first() -> None:
    gate = Gate()
    async with AsyncTaskQueue(3, retry=NO_RETRY) as queue:
        busy = await queue.submit(gate)
        await until(lambda: gate.started == 1)

        queue.resize(1)
        await until(lambda: queue.stats().workers == 1)
        assert busy.state is TaskState.RUNNING
        gate.event.set()
        assert await busy == "done"


async def test_resize_cycles_keep_idle_list_bounded() -> None:
    """Growing and shrinking an idle pool leaves no retired worker listed idle."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    await settle()
    for _ in range(200):
        queue.resize(10)
        await settle(3)
        queue.resize(1)
        await settle(3)

    assert queue.stats().workers == 1
    assert len(queue._idle) == 1  # the only live worker

    handle = await queue.submit(_one)
    assert await handle == 1
    await queue.stop()


async def test_shrink_keeps_wakeup() -> None:
    """resize() may retire the idle worker that a submission has just woken;
    an idle worker that stays then takes the task."""

    async def job() -> str:
        return "ran"

    async with AsyncTaskQueue(2) as queue:
        await settle()  # both workers idle
        handle = queue.submit_nowait(job)
        queue.resize(1)

        await until(handle.done)
        stats = queue.stats()

    assert handle.result() == "ran"
    assert stats.workers == 1


async def test_pause_stops_new_starts() -> None:
    calls = 0

    async def job() -> int:
        nonlocal calls
        calls += 1
        return calls

    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        queue.pause()
        handles = [await queue.submit(job) for _ in range(3)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert calls == 0
        assert queue.paused
        assert queue.stats().paused
        assert queue.stats().pending == 3

        queue.resume()
        assert sorted(await asyncio.gather(*handles)) == [1, 2, 3]
        assert not queue.stats().paused


async def test_pause_leaves_running_tasks() -> None:
    gate = Gate()
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        first = await queue.submit(gate)
        await until(lambda: gate.started == 1)
        queue.pause()
        second = await queue.submit(gate)
        gate.event.set()
        assert await first == "done"
        for _ in range(10):
            await asyncio.sleep(0)
        assert second.state is TaskState.PENDING

        queue.resume()
        assert await second == "done"


async def test_drain_resumes_paused_queue() -> None:
    async def job() -> str:
        return "ran"

    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    queue.pause()
    handle = await queue.submit(job)
    report = await queue.stop("drain")

    assert await handle == "ran"
    assert report.never_started == ()


async def test_pause_during_drain_raises() -> None:
    """pause() once stop() has begun raises, so a drain cannot hang paused."""
    gate = asyncio.Event()

    async def hold() -> str:
        await gate.wait()
        return "held"

    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    running = await queue.submit(hold)
    queued = await queue.submit(_one)
    await until(lambda: running.state is TaskState.RUNNING)
    stop = asyncio.create_task(queue.stop("drain"))
    await until(lambda: queue.closed)

    with pytest.raises(QueueClosedError, match="cannot pause a queue that is stopping"):
        queue.pause()

    assert not queue.paused
    gate.set()
    await until(stop.done)
    assert await running == "held"
    assert await queued == 1
    assert stop.result().never_started == ()

    with pytest.raises(QueueClosedError, match="cannot pause a queue that is stopped"):
        queue.pause()


async def test_resize_before_start_sets_pool_size() -> None:
    queue = AsyncTaskQueue(2)
    queue.resize(5)
    await queue.start()

    assert queue.stats().workers == 5
    await queue.stop()


async def test_resize_after_stop_raises() -> None:
    queue = AsyncTaskQueue(2)
    await queue.start()
    await queue.stop()

    with pytest.raises(QueueClosedError):
        queue.resize(3)


async def test_resize_after_stop_message() -> None:
    """resize() after stop() names the call, not task submission."""
    queue = AsyncTaskQueue(2)
    await queue.start()
    await queue.stop()

    with pytest.raises(QueueClosedError, match=r"cannot resize .* call resize\(\)"):
        queue.resize(3)


@pytest.mark.parametrize("value", [0, -2, 1.5, True, None])
async def test_resize_rejects_invalid_count(value: object) -> None:
    async with AsyncTaskQueue(2) as queue:
        with pytest.raises((TypeError, ValueError), match="max_workers"):
            queue.resize(value)  # type: ignore[arg-type]

        assert queue.max_workers == 2
        assert queue.stats().workers == 2


async def test_resize_to_zero_points_to_pause() -> None:
    async with AsyncTaskQueue(2) as queue:
        with pytest.raises(ValueError, match=r"got 0; the pool .* call pause\(\)"):
            queue.resize(0)

        assert queue.max_workers == 2


# One step: the new pool size, then how many of the running tasks finish.
resize_step = st.tuples(st.integers(min_value=1, max_value=4), st.integers(0, 3))


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(resize_step, min_size=1, max_size=8))
def test_resize_never_exceeds_max_workers(steps: list[tuple[int, int]]) -> None:
    """A task starts only while fewer than max_workers tasks run, however the
    pool shrinks and grows; the pool ends with max_workers live workers."""
    over: list[tuple[int, int]] = []
    running: list[asyncio.Future[None]] = []

    async def job() -> None:
        if len(running) >= queue.max_workers:
            over.append((len(running), queue.max_workers))

        release = asyncio.get_running_loop().create_future()
        running.append(release)
        await release

    def finish(count: int) -> None:
        for release in running[:count]:
            release.set_result(None)
        del running[:count]

    async def scenario() -> None:
        for size, finished in steps:
            queue.resize(size)
            finish(finished)
            await until(lambda: queue.stats().running == len(running))
            for _ in range(5):
                await asyncio.sleep(0)

        queue.resize(4)
        while queue.stats().succeeded < 30:
            finish(len(running))
            await asyncio.sleep(0)

        await until(lambda: queue.stats().workers == 4)

    queue = AsyncTaskQueue(4, retry=NO_RETRY)

    async def main() -> None:
        async with queue:
            for _ in range(30):
                queue.submit_nowait(job)
            await until(lambda: len(running) == 4)
            await scenario()

    asyncio.run(main())
    assert over == []
