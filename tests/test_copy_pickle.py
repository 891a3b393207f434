"""Copies and pickles: a copied handle or schedule is the object itself, so
``dataclasses.asdict()`` works on a stop() report, and the queue, handles and
schedules cannot be pickled."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import pickle

import pytest

from async_queue import AsyncTaskQueue, RetryPolicy, TaskState
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import Gate

NO_RETRY = RetryPolicy(max_retries=0)


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy])
async def test_copied_handle_is_the_handle(copier: object) -> None:
    # A copy that the queue never updates would stay PENDING forever, and
    # cancelling it would corrupt the queue's counts.
    gate = Gate(result=42)
    async with AsyncTaskQueue(max_workers=1, retry=NO_RETRY) as queue:
        handle = await queue.submit(gate)
        copied = copier(handle)  # type: ignore[operator]
        assert copied is handle

        gate.release.set()
        assert await asyncio.wait_for(copied, 10) == 42

    assert handle.state is TaskState.SUCCEEDED


async def test_report_converts_with_asdict() -> None:
    # dataclasses.asdict() deep-copies each field, the handles included.
    gate = Gate()
    queue = AsyncTaskQueue(max_workers=1, retry=NO_RETRY)
    await queue.start()
    running = await queue.submit(gate)
    pending = await queue.submit(gate)
    await gate.started.wait()

    report = await queue.stop()
    fields = dataclasses.asdict(report)

    assert fields["interrupted"] == (running,)
    assert fields["interrupted"][0] is running
    assert fields["never_started"][0] is pending


async def test_handle_pickle_raises_clear_error() -> None:
    async with AsyncTaskQueue(retry=NO_RETRY) as queue:
        handle = await queue.submit(Gate())
        with pytest.raises(TypeError, match=r"cannot be pickled.*handle\.id"):
            pickle.dumps(handle)

        handle.cancel()


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy])
def test_copied_schedule_is_the_schedule(copier: object) -> None:
    # A copy would share the schedule's timer, so cancelling the copy would
    # stop the schedule while its `active` stayed True.
    async def tick() -> None:
        pass

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(retry=NO_RETRY) as queue:
            schedule = queue.every(1, tick)
            copied = copier(schedule)  # type: ignore[operator]
            assert copied is schedule

            await asyncio.sleep(3.5)
            assert schedule.runs == 3
            assert schedule.active

    run_virtual(main)


async def test_schedule_pickle_raises_clear_error() -> None:
    async def tick() -> None:
        pass

    async with AsyncTaskQueue(retry=NO_RETRY) as queue:
        schedule = queue.every(1, tick)
        with pytest.raises(TypeError, match=r"cannot be pickled"):
            pickle.dumps(schedule)


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy, pickle.dumps])
async def test_queue_copy_raises(copier: object) -> None:
    # A copy would share the heap and the workers but keep counters of its
    # own, and its stop() would hang. The queue itself goes on working.
    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        with pytest.raises(TypeError, match="AsyncTaskQueue cannot be"):
            copier(queue)  # type: ignore[operator]

        handle = await queue.submit(asyncio.sleep, 0)
        assert await handle is None

    assert queue.stats().succeeded == 1
