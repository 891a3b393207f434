"""Regression tests for faults found by probing retries, handles, stop()
reports and periodic tasks as a hostile caller."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import pickle

import pytest

from async_queue import AsyncTaskQueue, RetryPolicy, TaskState
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


class _AsyncPredicate:
    async def __call__(self, exc: BaseException) -> bool:
        return False


async def _async_predicate(exc: BaseException) -> bool:
    return False


@pytest.mark.parametrize("predicate", [_async_predicate, _AsyncPredicate()])
def test_async_retry_on_predicate_rejected(predicate: object) -> None:
    # The coroutine it returns is truthy, so every exception was retried
    # whatever the predicate meant, and the coroutine was never awaited.
    with pytest.raises(
        TypeError, match=r"retry_on must be a plain function.*coroutine function"
    ):
        RetryPolicy(retry_on=predicate)  # type: ignore[arg-type]
