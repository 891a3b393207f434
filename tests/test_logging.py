"""Logging: a WARNING per retry, an ERROR per final failure, silence otherwise,
and a queue that keeps working when a logging filter raises."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator

import pytest

from async_queue import (
    AsyncTaskQueue,
    Jitter,
    RetryPolicy,
    TaskCancelledError,
    TaskState,
    bind,
)
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import settle, until

LOGGER = "async_queue"
NO_RETRY = RetryPolicy(max_retries=0)


def retry_now(max_retries: int) -> RetryPolicy:
    return RetryPolicy(max_retries=max_retries, base_delay=0, jitter=Jitter.NONE)


class RecordList(logging.Handler):
    """A handler that keeps every record it receives."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Collect every record of the "async_queue" logger, DEBUG included."""
    logger = logging.getLogger(LOGGER)
    handler = RecordList()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class Flaky:
    """A coroutine function that fails its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.errors: list[ValueError] = []

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            error = ValueError(f"failure {self.calls}")
            self.errors.append(error)
            raise error

        return "done"


async def hang() -> None:
    await asyncio.Event().wait()


async def echo(value: object, *, label: str = "") -> object:
    await asyncio.sleep(0)
    return value


def test_package_adds_null_handler() -> None:
    logger = logging.getLogger(LOGGER)
    assert [type(h) for h in logger.handlers] == [logging.NullHandler]
    assert logger.propagate


async def test_retry_logs_warning(records: list[logging.LogRecord]) -> None:
    flaky = Flaky(failures=2)
    async with AsyncTaskQueue(1, retry=retry_now(2)) as queue:
        handle = await queue.submit(flaky, task_id="job-7")
        assert await handle == "done"

    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    for record, error in zip(records, flaky.errors, strict=True):
        message = record.getMessage()
        assert record.name == LOGGER
        assert "'job-7'" in message
        assert repr(error) in message


async def test_final_failure_logs_error(records: list[logging.LogRecord]) -> None:
    flaky = Flaky(failures=2)
    async with AsyncTaskQueue(1, retry=retry_now(1)) as queue:
        handle = await queue.submit(flaky, task_id="job-8")
        with pytest.raises(ValueError, match="failure 2"):
            await handle

    assert [r.levelno for r in records] == [logging.WARNING, logging.ERROR]
    error = records[1]
    message = error.getMessage()
    assert "'job-8'" in message
    assert repr(flaky.errors[1]) in message
    assert error.exc_info is not None
    assert error.exc_info[0] is ValueError
    assert error.exc_info[1] is handle.exception()


async def test_no_retry_logs_one_error(records: list[logging.LogRecord]) -> None:
    flaky = Flaky(failures=1)
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(flaky)
        with pytest.raises(ValueError, match="failure 1"):
            await handle

    assert [r.levelno for r in records] == [logging.ERROR]
    assert records[0].exc_info is not None
    assert records[0].exc_info[1] is flaky.errors[0]


def test_timeout_logs_error(records: list[logging.LogRecord]) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            handle = await queue.submit(hang, timeout=5, task_id="slow")
            await until(lambda: handle.attempts == 1)
            loop.advance(5)
            with pytest.raises(TimeoutError):
                await handle

        assert [r.levelno for r in records] == [logging.ERROR]
        message = records[0].getMessage()
        assert "'slow'" in message
        assert "TimeoutError" in message
        assert records[0].exc_info is not None
        assert records[0].exc_info[1] is handle.exception()

    run_virtual(main)


def test_retried_timeout_logs_warning(records: list[logging.LogRecord]) -> None:
    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=retry_now(1)) as queue:
            handle = await queue.submit(hang, timeout=5)
            for attempt in (1, 2):
                await until(lambda: handle.attempts == attempt)  # noqa: B023
                loop.advance(5)

            with pytest.raises(TimeoutError):
                await handle

        assert [r.levelno for r in records] == [logging.WARNING, logging.ERROR]
        assert "TimeoutError" in records[0].getMessage()
        assert "TimeoutError" in records[1].getMessage()

    run_virtual(main)


async def test_success_logs_nothing(records: list[logging.LogRecord]) -> None:
    async with AsyncTaskQueue(4) as queue:
        handles = [await queue.submit(echo, index) for index in range(50)]
        handles.append(await queue.submit(bind(echo, "bound", label="x"), priority=3))
        handles.append(await queue.submit(echo, "timed", timeout=30))
        for handle in handles:
            await handle

        await queue.join()
        assert queue.stats().succeeded == 52
        assert records == []


async def test_cancel_logs_no_error(records: list[logging.LogRecord]) -> None:
    started = asyncio.Event()

    async def wait_forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async with AsyncTaskQueue(1) as queue:
        running = await queue.submit(wait_forever)
        pending = await queue.submit(echo, "never runs")
        await started.wait()
        assert pending.cancel()
        assert running.cancel()
        for handle in (running, pending):
            with pytest.raises(TaskCancelledError):
                await handle

        stopped_running = await queue.submit(hang)
        stopped_pending = await queue.submit(echo, "never runs")
        await until(lambda: stopped_running.attempts == 1)
        report = await queue.stop()

    assert report.interrupted == (stopped_running,)
    assert report.never_started == (stopped_pending,)
    assert queue.stats().cancelled == 4
    assert [r for r in records if r.levelno >= logging.ERROR] == []


async def test_abandoned_task_logs_error(records: list[logging.LogRecord]) -> None:
    """A task that suppresses its cancellation past the grace period is logged."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()

    queue = AsyncTaskQueue(1)
    await queue.start()
    handle = await queue.submit(stubborn, task_id="stubborn")
    await started.wait()
    stopping = asyncio.create_task(queue.stop(grace=0))
    await until(lambda: handle.done())
    release.set()
    report = await stopping

    assert report.abandoned == (handle,)
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "'stubborn'" in errors[0].getMessage()


class BadRepr(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


async def fails_bad_repr() -> None:
    raise BadRepr("boom")


async def test_exception_with_broken_repr_keeps_log_lines(
    records: list[logging.LogRecord],
) -> None:
    """A task error whose repr() raises still gets its WARNING and ERROR lines."""
    formatter = logging.Formatter("%(message)s")
    async with AsyncTaskQueue(1, retry=retry_now(1)) as queue:
        handle = queue.submit_nowait(fails_bad_repr)
        with pytest.raises(BadRepr):
            await handle

    messages = [formatter.format(record) for record in records]
    assert [record.levelno for record in records] == [logging.WARNING, logging.ERROR]
    assert messages[0] == (
        "task 1 (fails_bad_repr) failed on attempt 1, retrying in 0.000 s: "
        "<BadRepr whose repr() raised RuntimeError>"
    )
    assert messages[1].startswith(
        "task 1 (fails_bad_repr) failed after 2 attempt(s): "
        "<BadRepr whose repr() raised RuntimeError>\nTraceback"
    )
    assert messages[1].endswith("BadRepr: boom")


# A logging filter that raises


class FailOnAbandon(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "abandoning it" in record.getMessage():
            raise RuntimeError("log filter failed")
        return True


def test_stop_abandons_despite_failing_log_filter() -> None:
    """stop() ends an abandoned task even when a logging filter raises on its ERROR.

    The task ends CANCELLED, the report lists it as abandoned, and the queue
    no longer counts it as running.
    """
    log_filter = FailOnAbandon()
    logger = logging.getLogger("async_queue")
    logger.addFilter(log_filter)
    cleanup = asyncio.Event()
    started = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await cleanup.wait()  # outlasts the grace period

    async def main(loop: VirtualClockLoop) -> None:
        queue = AsyncTaskQueue(1)
        await queue.start()
        handle = await queue.submit(stubborn, task_id="stubborn")
        await started.wait()
        try:
            report = await queue.stop("cancel", grace=1)

            assert handle.state is TaskState.CANCELLED
            assert report.abandoned == (handle,)
            assert queue.report is report
            assert queue.stats().running == 0
        finally:
            cleanup.set()
            await until(lambda: queue._running == 0)

    try:
        run_virtual(main)
    finally:
        logger.removeFilter(log_filter)


async def lose_only_worker(queue: AsyncTaskQueue) -> None:
    """Make the only worker of ``queue`` exit, as a task that cancels it does."""

    async def cancel_own_worker() -> None:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        await asyncio.sleep(0)

    await queue.submit(cancel_own_worker, task_id="lost")
    await until(lambda: queue._lost_workers == 1)


class FailOnLostWorker(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "cancelled from outside the queue" in record.getMessage():
            raise RuntimeError("log filter failed")
        return True


async def test_lost_worker_log_failure_retrieved() -> None:
    """A lost worker leaves no unretrieved error when a logging filter raises.

    The queue has already dropped the worker when it logs the warning about
    it, so an error from that log call would reach asyncio's exception
    handler as "Task exception was never retrieved".
    """
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
    log_filter = FailOnLostWorker()
    logging.getLogger("async_queue").addFilter(log_filter)
    try:
        async with AsyncTaskQueue(1) as queue:
            await lose_only_worker(queue)

            async def job() -> str:
                return "ran"

            assert await (await queue.submit(job)) == "ran"

        gc.collect()
        await settle(50)

        assert reported == []
    finally:
        logging.getLogger("async_queue").removeFilter(log_filter)
        loop.set_exception_handler(None)
