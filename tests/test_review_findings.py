"""Regression tests for faults found while reviewing cheaper hook events and
retries, the queue.py stub and the fixes for copied and pickled objects."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Coroutine
from typing import Any

import pytest

from async_queue import (
    AsyncTaskQueue,
    QueueStateError,
    RetryPolicy,
    TaskHandle,
    TaskState,
)
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import assert_failed_unretried


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


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
def test_fatal_cleanup_after_timeout_not_retried(
    fatal: type[BaseException],
) -> None:
    # The worker re-raises the fatal exception and the event loop stops, so
    # a retry could never run: the task was left WAITING_RETRY for good.
    queue = AsyncTaskQueue(1, retry=RetryPolicy(max_retries=3), timeout=1)
    handles: list[TaskHandle[None]] = []

    async def cleanup_raises() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise fatal from None

    async def main() -> None:
        await queue.start()
        handles.append(queue.submit_nowait(cleanup_raises))
        await asyncio.Event().wait()

    loop = VirtualClockLoop()
    loop.set_exception_handler(lambda _, context: None)
    try:
        with pytest.raises(fatal):
            loop.run_until_complete(main())

        loop.run_until_complete(queue.stop())
    finally:
        loop.close()

    assert_failed_unretried(queue, handles[0], fatal)


def test_await_after_loop_closed_says_closed() -> None:
    # The check for another loop ran first and advised awaiting the handle
    # on the queue's loop, which had closed and could never finish it.
    handles: list[TaskHandle[bool]] = []

    async def main() -> None:
        queue = AsyncTaskQueue(1)
        await queue.start()
        handles.append(queue.submit_nowait(asyncio.Event().wait))
        handles.append(queue.submit_nowait(asyncio.Event().wait))
        await asyncio.sleep(0)

    asyncio.run(main())
    handle = handles[1]
    assert handle.state is TaskState.PENDING

    async def await_later() -> None:
        await handle

    with pytest.raises(QueueStateError, match="which is closed") as caught:
        asyncio.run(await_later())

    assert "run_coroutine_threadsafe" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "advice"),
    [
        ("max_pending", "10", "max_pending=None"),
        ("max_pending", 2.5, "max_pending=None"),
        ("max_workers", 4.0, "the pool has a fixed size"),
    ],
)
def test_type_error_omits_limit_advice(name: str, value: object, advice: str) -> None:
    # The advice is for values that mean "no limit" elsewhere. A str or a
    # float is a wrong type for a real bound, which the advice does not fix.
    with pytest.raises(TypeError) as caught:
        AsyncTaskQueue(**{name: value})  # type: ignore[arg-type]

    message = str(caught.value)
    assert message.startswith(f"{name} must be an int, got {value!r}")
    assert advice not in message
