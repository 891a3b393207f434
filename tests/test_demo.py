"""The ``demo`` command: summary helpers, the flaky server, and whole runs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import math
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_queue import AsyncTaskQueue, RetryAfter, RetryPolicy, TaskState
from async_queue.__main__ import build_parser, main
from async_queue.__main__ import main as cli_main
from async_queue._demo import (
    EXIT_INTERRUPTED,
    PRIORITY_CLASSES,
    DemoConfig,
    RequestRecord,
    Summary,
    format_summary,
    percentile,
    record_outcomes,
    run_demo,
    summarize,
)
from async_queue._demo_server import (
    DemoClient,
    DemoServer,
    Outcome,
    RequestRejectedError,
    ServerError,
    decide,
)
from async_queue.testing import VirtualClockLoop, run_virtual
from tests.helpers import settle, until

ROOT = Path(__file__).resolve().parent.parent
HIGH, NORMAL, LOW = PRIORITY_CLASSES
NO_RETRY = RetryPolicy(max_retries=0)

# A bound on each subprocess, so that a hung demo fails the test.
SUBPROCESS_TIMEOUT = 30


def search_line(pattern: str, text: str) -> re.Match[str]:
    """Return the match of the one line of ``text`` that matches ``pattern``."""
    found = list(re.finditer(pattern, text, flags=re.MULTILINE))
    assert len(found) == 1, f"expected one line matching {pattern!r} in:\n{text}"
    return found[0]


def parse_summary(text: str) -> dict[str, int]:
    """Return the integer fields of a demo summary, by name.

    The producer's waits for room depend on timing, so they are left out;
    ``parse_backpressure()`` reads them.
    """
    fields = {}
    for name in ("submitted", "delayed", "succeeded", "failed", "cancelled", "lost"):
        fields[name] = int(search_line(rf"^{name}: (\d+)( \(.*\))?$", text)[1])

    retried = search_line(r"^retried: (\d+) tasks, (\d+) retries$", text)
    fields["retried_tasks"] = int(retried[1])
    fields["retries"] = int(retried[2])
    requeued = search_line(
        r"^requeued: (\d+), succeeded (\d+), failed (\d+), cancelled (\d+)$", text
    )
    fields["requeued"] = int(requeued[1])
    fields["requeued_succeeded"] = int(requeued[2])
    fields["requeued_failed"] = int(requeued[3])
    fields["requeued_cancelled"] = int(requeued[4])
    dead = search_line(r"^dead letters: (\d+), left (\d+)(, top causes: .*)?$", text)
    fields["dead_letters"] = int(dead[1])
    fields["dead_letters_left"] = int(dead[2])
    return fields


def parse_backpressure(text: str) -> int | None:
    """Return how often the producer waited for room, or ``None`` if unbounded."""
    line = search_line(r"^backpressure: .*$", text)[0]
    if line == "backpressure: off (max_pending unbounded)":
        return None

    waits = re.fullmatch(
        r"backpressure: the producer waited for room (\d+) times, [\d.]+ s in total",
        line,
    )
    assert waits is not None, line
    return int(waits[1])


def parse_dead_letter_causes(text: str) -> dict[str, int]:
    """Return the top causes that the 'dead letters:' line lists."""
    dead = search_line(r"^dead letters: \d+, left \d+(, top causes: (.*))?$", text)
    if dead[2] is None:
        return {}

    causes = {}
    for item in dead[2].split(", "):
        name, count = item.split(" ")
        causes[name] = int(count)

    return causes


def last_progress(text: str) -> re.Match[str]:
    """Return the fields of the last progress line of ``text``."""
    found = list(
        re.finditer(
            r"^progress: (?P<done>\d+)/(?P<total>\d+) done .*, "
            r"(?P<delayed>\d+) delayed, .*, (?P<failed>\d+) failed, "
            r"(?P<dead>\d+) dead letters(, producer waited (?P<waits>\d+) times)?$",
            text,
            flags=re.MULTILINE,
        )
    )
    assert found, f"no progress line in:\n{text}"
    return found[-1]


# percentile


def test_percentile_known_values() -> None:
    values = [float(n) for n in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0


def test_percentile_single_value() -> None:
    assert percentile([7.5], 50) == 7.5
    assert percentile([7.5], 99) == 7.5


def test_percentile_empty_is_none() -> None:
    assert percentile([], 50) is None


@pytest.mark.parametrize("percent", [-1, 100.5, math.nan])
def test_percentile_rejects_out_of_range(percent: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], percent)


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50),
    st.floats(0.001, 100),
)
def test_percentile_is_nearest_rank(values: list[float], percent: float) -> None:
    result = percentile(values, percent)
    assert result in values
    share = percent / 100 * len(values)
    at_most = sum(1 for v in values if v <= result)
    below = sum(1 for v in values if v < result)
    assert at_most >= share
    assert below < share


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_percentile_grows_with_percent(values: list[float], a: float, b: float) -> None:
    low, high = sorted((a, b))
    low_value = percentile(values, low)
    high_value = percentile(values, high)
    assert low_value is not None
    assert high_value is not None
    assert low_value <= high_value


# summarize, record_outcomes, format_summary


async def succeed() -> str:
    return "ok"


async def fail_once_then_succeed(calls: list[int]) -> str:
    calls.append(1)
    if len(calls) == 1:
        raise ServerError("first attempt fails")

    return "ok"


async def fail() -> str:
    raise ServerError("always fails")


async def block(event: asyncio.Event) -> str:
    await event.wait()
    return "ok"


def make_record(request_id: int, submitted_at: float = 0.0) -> RequestRecord:
    return RequestRecord(request_id, NORMAL, submitted_at)


async def test_summarize_counts_final_states() -> None:
    retry = RetryPolicy(max_retries=1, base_delay=0)
    records = [make_record(n) for n in range(4)]
    async with AsyncTaskQueue(1, retry=retry) as queue:
        gate = asyncio.Event()
        records[0].handle = await queue.submit(block, gate)
        records[1].handle = await queue.submit(fail_once_then_succeed, [])
        records[2].handle = await queue.submit(fail, retry=NO_RETRY)
        records[3].handle = await queue.submit(succeed)
        records[3].handle.cancel()
        gate.set()

    await record_outcomes(records)
    summary = summarize(records, wall_time=2.0)
    assert summary.submitted == 4
    assert summary.succeeded == 2
    assert summary.failed == 1
    assert summary.cancelled == 1
    assert summary.lost == 0
    assert summary.retried_tasks == 1
    assert summary.retries == 1
    assert summary.failure_causes == (("ServerError", 1),)
    assert summary.throughput == 1.5


async def test_record_outcomes_sets_awaited_state() -> None:
    records = [make_record(n) for n in range(3)]
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        records[0].handle = await queue.submit(succeed)
        records[1].handle = await queue.submit(fail)
        records[2].handle = await queue.submit(succeed)
        records[2].handle.cancel()

    await record_outcomes(records)
    assert records[0].awaited_state is TaskState.SUCCEEDED
    assert records[1].awaited_state is TaskState.FAILED
    assert records[1].error == "ServerError"
    assert records[2].awaited_state is TaskState.CANCELLED


async def test_summarize_unfinished_is_lost() -> None:
    records = [make_record(0), make_record(1)]
    queue = AsyncTaskQueue(1)
    await queue.start()
    gate = asyncio.Event()
    handle = records[0].handle = await queue.submit(block, gate)
    await until(lambda: handle.state is TaskState.RUNNING)
    await record_outcomes(records)

    summary = summarize(records, wall_time=1.0)
    assert summary.lost == 2  # one running, one never submitted
    assert summary.submitted == 2
    assert summary.succeeded == 0

    gate.set()
    await queue.stop("drain")


async def test_summarize_state_mismatch_is_lost() -> None:
    record = make_record(0)
    async with AsyncTaskQueue(1) as queue:
        record.handle = await queue.submit(succeed)

    await record_outcomes([record])
    assert record.awaited_state is TaskState.SUCCEEDED

    record.awaited_state = TaskState.FAILED
    summary = summarize([record], wall_time=1.0)
    assert summary.lost == 1
    assert summary.succeeded == 0


async def test_summarize_latency_per_class() -> None:
    records = []
    async with AsyncTaskQueue(1) as queue:
        for n, priority_class in enumerate((HIGH, HIGH, LOW)):
            record = RequestRecord(n, priority_class, submitted_at=0.0)
            record.handle = await queue.submit(succeed)
            records.append(record)

    await record_outcomes(records)
    for record, finished_at in zip(records, (0.010, 0.030, 0.200), strict=True):
        record.finished_at = finished_at

    latencies = {
        item.priority_class.name: item for item in summarize(records, 1.0).latencies
    }
    assert latencies["high"].count == 2
    assert latencies["high"].p50 == 0.010
    assert latencies["high"].p99 == 0.030
    assert latencies["normal"].count == 0
    assert latencies["normal"].p50 is None
    assert latencies["low"].p95 == 0.200


async def test_summarize_counts_requeued_apart() -> None:
    calls: list[int] = []
    first = make_record(0)
    again = make_record(0)
    never_submitted = make_record(1)
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        first.handle = await queue.submit(fail_once_then_succeed, calls)
        await queue.join()
        again.handle = await queue.requeue(first.handle.id)
        again.requeued_from = first.handle.id
        never_submitted.requeued_from = first.handle.id

    records = [first, again, never_submitted]
    await record_outcomes(records)
    for record in records:
        record.finished_at = 1.0

    summary = summarize(records, wall_time=1.0)
    assert summary.submitted == 1
    assert summary.failed == 1
    assert summary.succeeded == 0
    assert summary.requeued == 2
    assert summary.requeued_succeeded == 1
    assert summary.requeued_failed == 0
    assert summary.lost == 1  # the requeued record without a handle
    assert summary.throughput == 2.0
    assert sum(item.count for item in summary.latencies) == 1


async def test_summarize_delayed_latency() -> None:
    record = RequestRecord(1, HIGH, submitted_at=1.0, delay=0.5)
    async with AsyncTaskQueue(1) as queue:
        record.handle = await queue.submit(succeed)

    await record_outcomes([record])
    record.finished_at = 2.0
    summary = summarize([record], wall_time=1.0)
    latencies = {item.priority_class.name: item for item in summary.latencies}
    assert summary.delayed == 1
    assert latencies["high"].p50 == 0.5
    assert summary.lost == 0


def test_format_summary_lines() -> None:
    summary = Summary(
        submitted=10,
        succeeded=7,
        failed=2,
        cancelled=1,
        lost=0,
        retried_tasks=3,
        retries=4,
        wall_time=0.5,
        failure_causes=(("TimeoutError", 2),),
        delayed=3,
        requeued=2,
        requeued_succeeded=1,
        requeued_failed=1,
        dead_letters=3,
        dead_letters_left=1,
        dead_letter_causes=(("TimeoutError", 3),),
        producer_waits=5,
        producer_wait_time=0.25,
    )
    text = format_summary(summary)
    lines = text.splitlines()
    assert text.endswith("\n")
    assert "lost: 0" in lines
    assert "failed by cause: TimeoutError 2" in lines
    assert "throughput: 22.0 tasks/s (succeeded and failed)" in lines
    assert (
        "backpressure: the producer waited for room 5 times, 0.25 s in total" in lines
    )
    assert "dead letters: 3, left 1, top causes: TimeoutError 3" in lines
    assert parse_backpressure(text) == 5
    assert parse_summary(text) == {
        "submitted": 10,
        "delayed": 3,
        "succeeded": 7,
        "failed": 2,
        "cancelled": 1,
        "lost": 0,
        "retried_tasks": 3,
        "retries": 4,
        "requeued": 2,
        "requeued_succeeded": 1,
        "requeued_failed": 1,
        "requeued_cancelled": 0,
        "dead_letters": 3,
        "dead_letters_left": 1,
    }


def test_format_summary_without_backpressure() -> None:
    summary = Summary(
        submitted=1,
        succeeded=1,
        failed=0,
        cancelled=0,
        lost=0,
        retried_tasks=0,
        retries=0,
        wall_time=0.1,
    )
    text = format_summary(summary)
    assert "backpressure: off (max_pending unbounded)" in text.splitlines()
    assert "dead letters: 0, left 0" in text.splitlines()
    assert parse_backpressure(text) is None


def test_format_summary_top_causes() -> None:
    causes = (("A", 5), ("B", 4), ("C", 3), ("D", 2))
    summary = Summary(
        submitted=14,
        succeeded=0,
        failed=14,
        cancelled=0,
        lost=0,
        retried_tasks=0,
        retries=0,
        wall_time=1.0,
        dead_letters=14,
        dead_letters_left=14,
        dead_letter_causes=causes,
    )
    text = format_summary(summary)
    assert parse_dead_letter_causes(text) == {"A": 5, "B": 4, "C": 3}


# decide() and the server


def test_decide_is_deterministic() -> None:
    kwargs = {"failure_rate": 0.3, "hang_rate": 0.1, "mean_latency": 0.01}
    first = [decide(5, n, 1, **kwargs) for n in range(50)]
    again = [decide(5, n, 1, **kwargs) for n in range(50)]
    other_seed = [decide(6, n, 1, **kwargs) for n in range(50)]
    assert first == again
    assert first != other_seed


@pytest.mark.parametrize(
    ("failure_rate", "hang_rate", "outcome"),
    [(0, 0, Outcome.OK), (1, 0, Outcome.ERROR), (0, 1, Outcome.HANG)],
)
def test_decide_extreme_rates(
    failure_rate: float, hang_rate: float, outcome: Outcome
) -> None:
    decisions = [
        decide(
            1,
            n,
            1,
            failure_rate=failure_rate,
            hang_rate=hang_rate,
            mean_latency=0.001,
        )
        for n in range(20)
    ]
    assert {d.outcome for d in decisions} == {outcome}


@pytest.mark.parametrize(
    ("retry_after_share", "reject_share", "outcome"),
    [
        (0, 0, Outcome.ERROR),
        (1, 0, Outcome.RETRY_AFTER),
        (0, 1, Outcome.REJECT),
        (1, 1, Outcome.REJECT),
    ],
)
def test_decide_error_shares(
    retry_after_share: float, reject_share: float, outcome: Outcome
) -> None:
    decisions = [
        decide(
            1,
            n,
            1,
            failure_rate=1,
            hang_rate=0,
            mean_latency=0,
            retry_after_share=retry_after_share,
            reject_share=reject_share,
        )
        for n in range(20)
    ]
    assert {d.outcome for d in decisions} == {outcome}


ERROR_OUTCOMES = (Outcome.ERROR, Outcome.RETRY_AFTER, Outcome.REJECT)


@given(
    seed=st.integers(0, 1000),
    request_id=st.integers(1, 10**6),
    attempt=st.integers(1, 10),
    failure_rate=st.sampled_from([0.0, 0.3, 1.0]) | st.floats(0, 1),
    hang_fraction=st.sampled_from([0.0, 1.0]) | st.floats(0, 1),
    retry_after_share=st.sampled_from([0.0, 1.0]) | st.floats(0, 1),
    reject_share=st.sampled_from([0.0, 1.0]) | st.floats(0, 1),
)
def test_decide_respects_rates(
    seed: int,
    request_id: int,
    attempt: int,
    failure_rate: float,
    hang_fraction: float,
    retry_after_share: float,
    reject_share: float,
) -> None:
    kwargs = {
        "failure_rate": failure_rate,
        "hang_rate": hang_fraction * (1 - failure_rate),
        "mean_latency": 0.001,
        "retry_after_share": retry_after_share,
        "reject_share": reject_share,
    }
    decision = decide(seed, request_id, attempt, **kwargs)
    assert decision == decide(seed, request_id, attempt, **kwargs)
    if failure_rate == 0:
        assert decision.outcome not in ERROR_OUTCOMES
    if kwargs["hang_rate"] == 0:
        assert decision.outcome is not Outcome.HANG
    if reject_share == 0:
        assert decision.outcome is not Outcome.REJECT
    if retry_after_share == 0 or reject_share == 1:
        assert decision.outcome is not Outcome.RETRY_AFTER
    if decision.outcome is Outcome.RETRY_AFTER:
        assert decision.retry_after is not None
        assert 0.01 <= decision.retry_after <= 0.1
    else:
        assert decision.retry_after is None


async def start_server(
    failure_rate: float = 0,
    hang_rate: float = 0,
    *,
    retry_after_share: float = 0,
    reject_share: float = 0,
) -> DemoServer:
    server = DemoServer(
        seed=1,
        failure_rate=failure_rate,
        hang_rate=hang_rate,
        mean_latency=0,
        retry_after_share=retry_after_share,
        reject_share=reject_share,
    )
    await server.start()
    return server


async def test_server_responds_ok() -> None:
    server = await start_server()
    client = DemoClient(server.port, max_idle=1)
    try:
        first = await client.request(5, 1)
        second = await client.request(6, 1)
    finally:
        client.close()
        await server.close()

    assert first == "OK 5"
    assert second == "OK 6"
    assert server.requests == 2
    assert server.errors == 0


async def test_server_error_raises() -> None:
    server = await start_server(failure_rate=1)
    client = DemoClient(server.port, max_idle=1)
    try:
        with pytest.raises(ServerError, match="request 3 attempt 2"):
            await client.request(3, 2)
    finally:
        client.close()
        await server.close()

    assert server.errors == 1


async def test_server_retry_after_raises() -> None:
    server = await start_server(failure_rate=1, retry_after_share=1)
    client = DemoClient(server.port, max_idle=1)
    try:
        with pytest.raises(RetryAfter, match="retry-after=") as raised:
            await client.request(3, 1)
    finally:
        client.close()
        await server.close()

    assert 0.01 <= raised.value.delay <= 0.1
    assert server.errors == 1
    assert server.retry_afters == 1
    assert server.rejections == 0


async def test_server_rejection_raises() -> None:
    server = await start_server(failure_rate=1, reject_share=1)
    client = DemoClient(server.port, max_idle=1)
    try:
        with pytest.raises(RequestRejectedError, match="request 3 attempt 1") as raised:
            await client.request(3, 1)
    finally:
        client.close()
        await server.close()

    assert not isinstance(raised.value, ServerError)
    assert server.errors == 1
    assert server.rejections == 1
    assert server.retry_afters == 0


@pytest.mark.parametrize("hint", [b"soon", b"-1", b"nan", b""])
async def test_client_invalid_retry_after(hint: bytes) -> None:
    async def respond(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readline()
        writer.write(b"ERR retry-after=" + hint + b"\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(respond, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = DemoClient(port, max_idle=1)
    try:
        with pytest.raises(ServerError, match="retry-after="):
            await client.request(1, 1)
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_server_hang_times_out() -> None:
    server = await start_server(hang_rate=1)
    client = DemoClient(server.port, max_idle=1)
    try:
        request = asyncio.ensure_future(client.request(1, 1))
        await until(lambda: server.hangs == 1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    finally:
        client.close()
        await server.close()

    assert server.requests == 1
    assert server.hangs == 1


async def test_server_rejects_invalid_request() -> None:
    server = await start_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"HELLO\nREQ x 1\n")
        first = await reader.readline()
        second = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
        await server.close()

    assert first.startswith(b"ERR invalid request")
    assert second.startswith(b"ERR invalid request id")
    assert server.requests == 0


def test_demo_server_close_ends_slow_responses() -> None:
    """Closing the demo server ends the response delays that are still running.

    A connection task that sleeps out a latency does not notice that its
    connection closed. Unless close() ends the sleep, the demo prints its
    summary and then waits out each delay: half a minute with
    ``--latency 20``, and forever with ``--latency 1e308``.
    """
    latency = 1_000_000.0
    decision = decide(
        1,
        1,
        1,
        failure_rate=0,
        hang_rate=0,
        mean_latency=latency,
        retry_after_share=0,
        reject_share=0,
    )
    assert decision.outcome is Outcome.OK
    assert decision.latency > 3600

    async def main(loop: VirtualClockLoop) -> bool:
        server = DemoServer(seed=1, failure_rate=0, hang_rate=0, mean_latency=latency)
        await server.start()
        client = DemoClient(server.port, max_idle=1)
        request = asyncio.create_task(client.request(1, 1))
        await until(lambda: server.requests == 1)

        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
        client.close()

        closing = asyncio.create_task(server.close())
        done, _ = await asyncio.wait({closing}, timeout=60)
        if not done:
            loop.advance(decision.latency)  # let the response delay end
            await closing
        return bool(done)

    assert run_virtual(main)


def test_demo_server_close_reports_no_error() -> None:
    """Closing the demo server during a slow response reports no loop error.

    close() ends the response delay without cancelling the connection task,
    because on Python 3.11 asyncio's server reports "Exception in callback"
    with a CancelledError for each cancelled connection task.
    """
    errors: list[dict[str, Any]] = []

    async def main(loop: VirtualClockLoop) -> None:
        loop.set_exception_handler(lambda _, context: errors.append(context))
        server = DemoServer(seed=1, failure_rate=0, hang_rate=0, mean_latency=1e6)
        await server.start()
        client = DemoClient(server.port, max_idle=1)
        request = asyncio.create_task(client.request(1, 1))
        await until(lambda: server.requests == 1)

        await server.close()
        with contextlib.suppress(ConnectionError):
            await request
        client.close()
        await settle()

    run_virtual(main, autojump=None)

    assert errors == []


# Whole runs in this process


async def test_run_demo_in_process() -> None:
    config = DemoConfig(
        count=200,
        workers=8,
        failure_rate=0.3,
        hang_rate=0,
        latency=0.0005,
        backoff=0.001,
        progress_interval=0.01,
    )
    out, err = io.StringIO(), io.StringIO()
    status = await run_demo(config, out=out, err=err, handle_signals=False)

    fields = parse_summary(out.getvalue())
    progress = last_progress(err.getvalue())
    assert status == 0
    assert fields["lost"] == 0
    assert fields["submitted"] == 200
    assert fields["succeeded"] + fields["failed"] + fields["cancelled"] == 200
    assert fields["retries"] > 0
    assert int(progress["done"]) == 200 + fields["requeued"]
    assert int(progress["total"]) == 200 + fields["requeued"]
    assert int(progress["delayed"]) == 0
    assert int(progress["failed"]) == fields["failed"] + fields["requeued_failed"]
    assert int(progress["dead"]) == fields["dead_letters_left"]
    assert int(progress["waits"]) == parse_backpressure(out.getvalue())


async def run_in_process(config: DemoConfig) -> tuple[int, str]:
    """Run the demo without progress lines; return the status and the summary."""
    out = io.StringIO()
    config = dataclasses.replace(config, progress_interval=0)
    status = await run_demo(config, out=out, err=io.StringIO(), handle_signals=False)
    return status, out.getvalue()


FLAKY = DemoConfig(
    count=150,
    workers=8,
    failure_rate=0.5,
    hang_rate=0,
    retries=1,
    latency=0,
    backoff=0,
    max_pending=20,
    delayed_rate=0.2,
    max_delay=0.01,
)


async def test_run_demo_same_seed_same_counts() -> None:
    results = []
    for _ in range(2):
        status, text = await run_in_process(FLAKY)
        assert status == 0
        results.append((parse_summary(text), parse_dead_letter_causes(text)))

    assert results[0] == results[1]
    assert results[0][0]["failed"] > 0
    assert results[0][0]["delayed"] > 0


async def test_run_demo_dead_letters_requeued() -> None:
    status, text = await run_in_process(FLAKY)
    fields = parse_summary(text)
    causes = parse_dead_letter_causes(text)
    finished = fields["requeued_succeeded"] + fields["requeued_failed"]
    assert status == 0
    assert fields["lost"] == 0
    assert fields["failed"] > 0
    assert fields["requeued"] == fields["failed"]
    note = f"failed: {fields['failed']} (first runs; {fields['requeued']} requeued"
    assert note in text
    assert finished + fields["requeued_cancelled"] == fields["requeued"]
    assert fields["requeued_succeeded"] > 0
    assert fields["requeued_cancelled"] == 0
    assert fields["dead_letters"] == fields["failed"] + fields["requeued_failed"]
    assert fields["dead_letters_left"] == fields["requeued_failed"]
    assert set(causes) <= {"ServerError", "RetryAfter", "RequestRejectedError"}
    assert sum(causes.values()) <= fields["dead_letters"]
    assert "mismatch" not in text


async def test_run_demo_dead_letters_kept() -> None:
    config = dataclasses.replace(FLAKY, requeue_dead=False)
    status, text = await run_in_process(config)
    fields = parse_summary(text)
    assert status == 0
    assert fields["lost"] == 0
    assert fields["failed"] > 0
    assert fields["requeued"] == 0
    assert fields["dead_letters"] == fields["failed"]
    assert fields["dead_letters_left"] == fields["failed"]
    assert "requeue dead letters off" in text
    assert f"\nfailed: {fields['failed']}\n" in text


async def test_run_demo_one_worker_no_failures() -> None:
    config = dataclasses.replace(
        FLAKY, count=10, workers=1, failure_rate=0, delayed_rate=0
    )
    out, err = io.StringIO(), io.StringIO()
    config = dataclasses.replace(config, progress_interval=0)

    status = await run_demo(config, out=out, err=err, handle_signals=False)

    fields = parse_summary(out.getvalue())
    assert status == 0
    assert fields["succeeded"] == 10
    assert fields["requeued"] == 0
    assert out.getvalue().startswith("demo: 10 requests, 1 worker, failure rate 0,")
    assert ", 1 worker, failure rate 0," in err.getvalue()
    assert "requeue: no dead letters, nothing to submit again" in err.getvalue()


async def test_run_demo_retry_after_exhausted() -> None:
    config = dataclasses.replace(
        FLAKY, count=20, failure_rate=1, retry_after_share=1, reject_share=0
    )
    status, text = await run_in_process(config)
    fields = parse_summary(text)
    assert status == 0
    assert fields["failed"] == 20
    assert fields["retries"] == 40  # one per task, then one per requeued task
    assert fields["requeued_failed"] == 20
    assert parse_dead_letter_causes(text) == {"RetryAfter": 40}
    assert "failed by cause: RetryAfter 20" in text.splitlines()


async def test_run_demo_rejections_not_retried() -> None:
    config = dataclasses.replace(
        FLAKY, count=20, failure_rate=1, reject_share=1, requeue_dead=False
    )
    status, text = await run_in_process(config)
    fields = parse_summary(text)
    assert status == 0
    assert fields["failed"] == 20
    assert fields["retries"] == 0
    assert parse_dead_letter_causes(text) == {"RequestRejectedError": 20}


async def test_run_demo_backpressure_waits() -> None:
    config = dataclasses.replace(FLAKY, failure_rate=0, max_pending=2)
    status, text = await run_in_process(config)
    waits = parse_backpressure(text)
    assert status == 0
    assert parse_summary(text)["succeeded"] == 150
    assert waits is not None
    assert waits > 0


async def test_run_demo_unbounded() -> None:
    config = dataclasses.replace(FLAKY, max_pending=0)
    status, text = await run_in_process(config)
    assert status == 0
    assert parse_backpressure(text) is None
    assert parse_summary(text)["lost"] == 0
    assert "max pending unbounded" in text


@pytest.mark.parametrize(("delayed_rate", "delayed"), [(0, 0), (1, 150)])
async def test_run_demo_delayed_rate(delayed_rate: float, delayed: int) -> None:
    config = dataclasses.replace(FLAKY, failure_rate=0, delayed_rate=delayed_rate)
    status, text = await run_in_process(config)
    fields = parse_summary(text)
    assert status == 0
    assert fields["delayed"] == delayed
    assert fields["succeeded"] == 150


# The command line


def test_main_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    status = main([])
    captured = capsys.readouterr()
    assert status == 2
    assert "usage: python -m async_queue" in captured.err
    assert "demo" in captured.err
    assert captured.err.endswith(
        "error: no command given; to run the demo: python -m async_queue demo\n"
    )
    assert captured.out == ""


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--count", "0"],
            f"--count: invalid value '0': expected an integer from 1 to {sys.maxsize}",
        ),
        (["--workers", "x"], "--workers: invalid value 'x': expected an integer"),
        (["--retries", "-1"], "--retries: invalid value '-1'"),
        (["--failure-rate", "1.5"], "expected a finite number >= 0 and <= 1"),
        (
            ["--timeout", "0"],
            "--timeout: invalid value '0': expected a finite number > 0",
        ),
        (["--latency", "nan"], "--latency: invalid value 'nan'"),
        (["--timeout", "inf"], "--timeout: invalid value 'inf': expected a finite"),
        (["--failure-rate", "0.6", "--hang-rate", "0.6"], "must be at most 1"),
        (["--max-pending", "-1"], "--max-pending: invalid value '-1'"),
        (["--delayed-rate", "2"], "--delayed-rate: invalid value '2'"),
        (["--max-delay", "-0.1"], "--max-delay: invalid value '-0.1'"),
        (["--retry-after-share", "x"], "--retry-after-share: invalid value 'x'"),
        (["--reject-share", "1.5"], "--reject-share: invalid value '1.5'"),
    ],
)
def test_main_rejects_bad_option(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", *arguments])

    error = capsys.readouterr().err
    assert exited.value.code == 2
    assert "python -m async_queue demo: error:" in error
    assert message in error


@pytest.mark.parametrize(
    ("arguments", "requeue_dead"),
    [([], True), (["--requeue-dead"], True), (["--no-requeue-dead"], False)],
)
def test_main_requeue_dead_option(arguments: list[str], requeue_dead: bool) -> None:
    args = build_parser().parse_args(["demo", *arguments])
    assert args.requeue_dead is requeue_dead


def test_main_defaults_match_config() -> None:
    args = build_parser().parse_args(["demo"])
    defaults = DemoConfig()
    assert args.max_pending == defaults.max_pending
    assert args.delayed_rate == defaults.delayed_rate
    assert args.max_delay == defaults.max_delay
    assert args.retry_after_share == defaults.retry_after_share
    assert args.reject_share == defaults.reject_share


def test_demo_rejects_huge_count(capsys: pytest.CaptureFixture[str]) -> None:
    """--count 2**63 is a usage error: exit status 2 and a message naming it.

    An uncaught OverflowError would exit with status 1, the demo's "a task
    was lost" status.
    """
    with pytest.raises(SystemExit) as exited:
        cli_main(["demo", "--count", str(2**63), "--progress-interval", "0"])

    assert exited.value.code == 2
    assert "--count" in capsys.readouterr().err


# Whole runs in a subprocess


def demo_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "async_queue", "demo", *arguments]


def test_demo_subprocess_run() -> None:
    completed = subprocess.run(
        demo_command(
            "--count",
            "300",
            "--failure-rate",
            "0.2",
            "--hang-rate",
            "0.01",
            "--timeout",
            "0.2",
            "--progress-interval",
            "0.05",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    fields = parse_summary(completed.stdout)
    assert completed.returncode == 0, completed.stderr
    assert "lost: 0" in completed.stdout.splitlines()
    assert fields["submitted"] == 300
    assert fields["succeeded"] + fields["failed"] + fields["cancelled"] == 300
    assert fields["retried_tasks"] > 0
    assert re.search(r"^progress: \d+/300 done", completed.stderr, re.MULTILINE)
    assert "progress:" not in completed.stdout
    assert "Traceback" not in completed.stderr
    assert "Exception in callback" not in completed.stderr


def test_demo_subprocess_requeue_dead() -> None:
    arguments = ["--count", "300", "--failure-rate", "0.5", "--hang-rate", "0"]
    arguments += ["--retries", "1", "--backoff", "0", "--requeue-dead"]
    arguments += ["--max-pending", "30", "--delayed-rate", "0.1"]
    arguments += ["--progress-interval", "0.05"]
    completed = subprocess.run(
        demo_command(*arguments),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )

    fields = parse_summary(completed.stdout)
    requeued = fields["requeued"]
    assert completed.returncode == 0, completed.stderr
    assert fields["lost"] == 0
    assert fields["delayed"] > 0
    assert fields["failed"] > 0
    assert requeued == fields["failed"]
    assert fields["requeued_succeeded"] > 0
    assert fields["dead_letters_left"] == fields["requeued_failed"]
    assert f"requeue: submitting {requeued} dead letters again" in completed.stderr
    assert int(last_progress(completed.stderr)["total"]) == 300 + requeued


class DemoProcess:
    """A demo subprocess whose stderr a thread reads line by line.

    The thread lets the test wait for a given line with a bound, so that a
    demo that never prints it fails the test instead of blocking it.
    """

    def __init__(self, *arguments: str) -> None:
        self.process = subprocess.Popen(
            demo_command(*arguments),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stderr_lines: list[str] = []
        self._stderr_ended = False
        self._scanned = 0  # stderr lines already checked by wait_for_line()
        self._condition = threading.Condition()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._condition:
                self._stderr_lines.append(line)
                self._condition.notify_all()

        with self._condition:
            self._stderr_ended = True
            self._condition.notify_all()

    def _find_line(self, prefix: str) -> bool:
        lines = self._stderr_lines
        while self._scanned < len(lines):
            self._scanned += 1
            if lines[self._scanned - 1].startswith(prefix):
                return True

        return False

    def wait_for_line(self, prefix: str) -> None:
        """Wait for a stderr line that starts with ``prefix``, after the last
        line that an earlier call found."""
        found = False

        def found_or_ended() -> bool:
            nonlocal found
            found = self._find_line(prefix)
            return found or self._stderr_ended

        with self._condition:
            self._condition.wait_for(found_or_ended, timeout=SUBPROCESS_TIMEOUT)
            assert found, f"no {prefix!r} line on stderr: {self._stderr_lines}"

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)

    def finish(self) -> tuple[str, str]:
        """Wait for the exit and return the whole stdout and stderr."""
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()
        self.process.wait(timeout=SUBPROCESS_TIMEOUT)
        self._reader.join(timeout=SUBPROCESS_TIMEOUT)
        with self._condition:
            return stdout, "".join(self._stderr_lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

        self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def demo_processes() -> Iterator[list[DemoProcess]]:
    """Collect started demo processes and kill any still running at the end."""
    processes: list[DemoProcess] = []
    yield processes
    for process in processes:
        process.kill()


def test_demo_sigint_stops_gracefully(demo_processes: list[DemoProcess]) -> None:
    # At 100 requests per second the run would take 20 s; SIGINT ends it.
    demo = DemoProcess(
        "--count", "2000", "--rate", "100", "--progress-interval", "0.05"
    )
    demo_processes.append(demo)
    demo.wait_for_line("progress:")
    demo.interrupt()
    stdout, stderr = demo.finish()

    fields = parse_summary(stdout)
    finished = fields["succeeded"] + fields["failed"] + fields["cancelled"]
    assert demo.process.returncode == EXIT_INTERRUPTED, stderr
    assert fields["lost"] == 0
    assert fields["submitted"] < 2000
    assert finished == fields["submitted"]
    assert "stop report (finish_running)" in stdout
    assert "interrupted: finishing the running tasks" in stderr


def test_demo_sigterm_exit_status(demo_processes: list[DemoProcess]) -> None:
    """SIGTERM stops the run as Ctrl-C does; the status names the signal."""
    demo = DemoProcess(
        "--count", "2000", "--rate", "100", "--progress-interval", "0.05"
    )
    demo_processes.append(demo)
    demo.wait_for_line("progress:")
    demo.process.send_signal(signal.SIGTERM)
    stdout, stderr = demo.finish()

    fields = parse_summary(stdout)
    assert demo.process.returncode == 128 + signal.SIGTERM == 143, stderr
    assert EXIT_INTERRUPTED == 130
    assert fields["lost"] == 0
    assert "stop report (finish_running)" in stdout


def test_demo_second_sigint_cancels_running(
    demo_processes: list[DemoProcess],
) -> None:
    # Every request hangs and the timeout is long, so the first SIGINT leaves
    # the running tasks waiting until the second one cancels them.
    demo = DemoProcess(
        "--count",
        "50",
        "--workers",
        "4",
        "--hang-rate",
        "1",
        "--failure-rate",
        "0",
        "--timeout",
        "20",
        "--progress-interval",
        "0.05",
    )
    demo_processes.append(demo)
    demo.wait_for_line("progress:")
    demo.interrupt()
    demo.wait_for_line("interrupted:")
    demo.interrupt()
    stdout, stderr = demo.finish()

    fields = parse_summary(stdout)
    assert demo.process.returncode == EXIT_INTERRUPTED, stderr
    assert fields["lost"] == 0
    assert fields["submitted"] == 50
    assert fields["cancelled"] == 50
    assert "never started 46" in stdout
    assert "interrupted 4, abandoned 0, escalated yes" in stdout
    assert "cancelled by a second interrupt 4" in stdout
    assert "interrupted again: cancelling 4 running tasks" in stderr


def test_demo_sigint_during_requeue(demo_processes: list[DemoProcess]) -> None:
    # Every attempt is rejected after about 0.1 s and two workers send them, so
    # the requeued tasks are still queued when SIGINT arrives.
    demo = DemoProcess(
        "--count",
        "20",
        "--workers",
        "2",
        "--latency",
        "0.1",
        "--failure-rate",
        "1",
        "--hang-rate",
        "0",
        "--reject-share",
        "1",
        "--progress-interval",
        "0.05",
    )
    demo_processes.append(demo)
    demo.wait_for_line("requeue: submitting 20 dead letters again")
    demo.interrupt()
    stdout, stderr = demo.finish()

    fields = parse_summary(stdout)
    requeued_finished = (
        fields["requeued_succeeded"]
        + fields["requeued_failed"]
        + fields["requeued_cancelled"]
    )
    assert demo.process.returncode == EXIT_INTERRUPTED, stderr
    assert fields["lost"] == 0
    assert fields["failed"] == 20
    assert fields["requeued"] <= 20
    assert requeued_finished == fields["requeued"]
    assert fields["requeued_succeeded"] == 0
    assert fields["dead_letters"] == 20 + fields["requeued_failed"]
    assert (
        fields["dead_letters_left"]
        == 20 - fields["requeued"] + fields["requeued_failed"]
    )
    assert "stop report (finish_running)" in stdout
    assert "mismatch" not in stdout


def test_demo_out_of_memory_names_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def exhausted(config: object) -> int:
        raise MemoryError

    monkeypatch.setattr("async_queue.__main__.run_demo", exhausted)

    assert main(["demo", "--count", "5", "--workers", "3"]) == 2
    error = capsys.readouterr().err
    assert "ran out of memory with --count 5 and --workers 3" in error


@pytest.mark.parametrize("option", ["--count", "--workers"])
def test_demo_count_above_maxsize(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", option, str(sys.maxsize + 1)])

    assert exited.value.code == 2
    assert f"expected an integer from 1 to {sys.maxsize}" in capsys.readouterr().err
