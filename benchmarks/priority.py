"""Priority latency: how long a new high-priority task waits behind a backlog."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from .contenders import WORKERS, Contender
from .harness import (
    Record,
    measure_once_each,
    print_captioned_table,
    print_heading,
    run_on_loop,
)

SCENARIO = "priority"

# The high-priority task is submitted once this many low-priority tasks have
# completed: every worker is then running a low-priority task, and nearly all
# of the backlog is still queued.
SUBMIT_AFTER = 2 * WORKERS

LOW = 0
HIGH = 1


async def measure_latency(contender: Contender, n: int) -> dict[str, float]:
    """Queue ``n`` low-priority tasks, then one high-priority task mid-run.

    Each low-priority task yields to the loop once, so that all workers are
    busy at once. Returns the completions counted between submitting the
    high-priority task and its start, and the time in between.
    """
    pool = contender.factory()
    await pool.open()
    total = n + 1
    completed = 0
    started_after = -1
    started_at = 0.0
    submit_now = asyncio.Event()
    all_done = asyncio.Event()

    async def low() -> None:
        nonlocal completed
        await asyncio.sleep(0)
        completed += 1
        if completed == SUBMIT_AFTER:
            submit_now.set()
        if completed == total:
            all_done.set()

    async def high() -> None:
        nonlocal completed, started_after, started_at
        started_at = perf_counter()
        started_after = completed
        completed += 1
        if completed == total:
            all_done.set()

    handles: list[Any] = []
    for _ in range(n):
        handles.append(await pool.asubmit(low, priority=LOW))

    await submit_now.wait()
    submitted_after = completed
    submitted_at = perf_counter()
    handles.append(await pool.asubmit(high, priority=HIGH))
    await all_done.wait()
    await pool.wait_all(handles)
    await pool.close()
    return {
        "backlog_at_submit": n - submitted_after,
        "completions_before_start": started_after - submitted_after,
        "latency_seconds": started_at - submitted_at,
    }


def run(
    loop: str, sizes: Sequence[int], contenders: Sequence[Contender]
) -> list[Record]:
    by_key = {c.key: c for c in contenders}

    def measure(key: str, size: int) -> tuple[float, dict[str, Any]]:
        figures = run_on_loop(loop, measure_latency(by_key[key], size))
        return figures["completions_before_start"], figures

    labels = {c.key: c.label for c in contenders}
    metric = "completions before start"
    return measure_once_each(SCENARIO, loop, sizes, labels, metric, measure)


def report(records: Sequence[Record], loops: Sequence[str]) -> None:
    print_heading("4. Priority latency: one high-priority task behind N low ones")
    print(
        f"{WORKERS} workers busy with low-priority tasks, the rest queued; then one\n"
        "task of higher priority is submitted. backlog: low-priority tasks not\n"
        "finished at that moment, running or queued. completions: low-priority\n"
        "tasks that finished between its submission and its start. One run\n"
        "each: the count depends only on the order in which the loop runs\n"
        "callbacks, not on timing."
    )
    for loop in loops:
        rows = [r for r in records if r.loop == loop]
        table = [
            [
                r.extra["label"],
                f"{r.size:,}",
                f"{r.extra['backlog_at_submit']:,.0f}",
                f"{r.median:,.0f}",
                f"{r.extra['latency_seconds'] * 1e3:.3f}",
            ]
            for r in rows
        ]
        headers = ["contender", "N", "backlog", "completions", "latency ms"]
        print_captioned_table(f"loop={loop}", headers, table)
