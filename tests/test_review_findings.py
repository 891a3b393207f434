"""Regression tests for faults found while reviewing cheaper hook events and
retries, the queue.py stub and the fixes for copied and pickled objects."""

from __future__ import annotations

import warnings
from collections.abc import Coroutine
from typing import Any

import pytest

from async_queue import (
    AsyncTaskQueue,
    RetryPolicy,
    TaskHandle,
    TaskState,
)
from async_queue.testing import VirtualClockLoop, run_virtual


async def is_transient(exc: BaseException) -> bool:
    return False


async def fail_once() -> None:
    raise ValueError("boom")


def test_predicate_returning_coroutine_fails_task() -> None:
    # A plain lambda around an async predicate passes the check at creation,
    # and its truthy coroutine retried every exception.
    def predicate(exc: BaseException) -> Coroutine[Any, Any, bool]:
        return is_transient(exc)

    policy = RetryPolicy(max_retries=2, base_delay=0, retry_on=predicate)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returned a coroutine"):
        policy.should_retry(ValueError(), 0)

    handles: list[TaskHandle[None]] = []

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=policy) as queue:
            handle = queue.submit_nowait(fail_once)
            handles.append(handle)
            with pytest.raises(TypeError, match="returned a coroutine"):
                await handle

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_virtual(main)

    handle = handles[0]
    assert handle.state is TaskState.FAILED
    assert handle.attempts == 1
