"""The demo's terminal progress line, its count self-check and --verbose."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import pytest

from async_queue import AsyncTaskQueue, RetryPolicy, TaskState
from async_queue._demo import (
    PRIORITY_CLASSES,
    RequestRecord,
    Summary,
    _check_counts,
    _DeadLetterLog,
    _Progress,
)
from async_queue._demo_server import DemoServer

ROOT = Path(__file__).resolve().parent.parent
NO_RETRY = RetryPolicy(max_retries=0)

# A bound on the subprocess, so that a hung demo fails the test.
SUBPROCESS_TIMEOUT = 30


class TerminalStream(io.StringIO):
    """A text stream whose isatty() returns True, like a terminal."""

    def isatty(self) -> bool:
        return True


async def noop() -> None:
    return None


async def fails() -> None:
    raise ValueError("planned failure")


async def test_progress_rewrites_terminal_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, each progress line replaces the last, cut to its width."""
    monkeypatch.setenv("COLUMNS", "60")
    stream = TerminalStream()
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        loop = asyncio.get_running_loop()
        progress = _Progress(queue, lambda: 4, None, stream, loop)
        progress.write()
        first = stream.getvalue()
        await (await queue.submit(noop))
        progress.write(final=True)
        progress.end_line()

    second = stream.getvalue()[len(first) :]

    # A line one character short of the width, so that the cursor never wraps.
    assert first.startswith("\rprogress: 0/4 done (0%)")
    assert len(first) == 1 + 59
    assert second.startswith("\rprogress: 1/4 done (25%)")
    assert second.endswith("\n")
    assert len(second) == 1 + 59 + 1


async def test_progress_end_line_ends_open_line() -> None:
    stream = TerminalStream()
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        progress = _Progress(queue, lambda: 1, None, stream, asyncio.get_running_loop())
        progress.write()
        progress.end_line()
        progress.end_line()

    assert stream.getvalue().startswith("\rprogress: 0/1 done")
    assert stream.getvalue().count("\n") == 1


async def test_count_check_reports_mismatches() -> None:
    """The demo's self-check finds counts that disagree with the handles."""
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(fails)
        await queue.join()

    assert handle.state is TaskState.FAILED
    record = RequestRecord(1, PRIORITY_CLASSES[0], 0.0, handle=handle)
    honest = Summary(
        submitted=1,
        succeeded=0,
        failed=1,
        cancelled=0,
        lost=0,
        retried_tasks=0,
        retries=0,
        wall_time=1.0,
    )
    log = _DeadLetterLog(task_ids=[handle.id])

    assert _check_counts(queue, honest, [record], log) == ""

    # Counts that claim a success, no dead letter received, and a requeue of
    # the failed task that dead_letters() does not reflect.
    wrong = dataclasses.replace(honest, succeeded=1, failed=0)
    requeue = RequestRecord(2, PRIORITY_CLASSES[0], 0.0, requeued_from=handle.id)
    lines = _check_counts(queue, wrong, [record, requeue], _DeadLetterLog())

    assert lines.splitlines() == [
        "mismatch: queue.stats() counts (submitted, succeeded, failed, "
        "cancelled) = (1, 0, 1, 0), but the handles show (1, 1, 0, 0)",
        "mismatch: on_dead_letter received 0 dead letters for 0 tasks, "
        "but 1 tasks failed",
        "mismatch: dead_letters() holds 1 tasks, but 0 failed tasks were not requeued",
    ]


async def test_server_close_before_start() -> None:
    """Closing a demo server that never listened does nothing."""
    server = DemoServer(seed=1, failure_rate=0, hang_rate=0, mean_latency=0)
    await server.close()
    await server.close()


def test_demo_verbose_logs_at_info() -> None:
    options = ["--verbose", "--count", "20", "--failure-rate", "0", "--hang-rate", "0"]
    completed = subprocess.run(
        [sys.executable, "-m", "async_queue", "demo", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert " INFO async_queue.demo: " in completed.stderr
    assert "demo server listening on 127.0.0.1:" in completed.stderr
    assert "lost: 0" in completed.stdout.splitlines()
