"""Retry path: every task fails on its first attempt and succeeds on its second."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from time import perf_counter
from typing import Any

from async_queue import RetryPolicy

from .contenders import POOL, Contender, HandPool, QueuePool
from .harness import (
    Record,
    print_heading,
    print_rate_tables,
    run_on_loop,
    time_interleaved,
)

SCENARIO = "retry"

# Zero backoff, so that the figures measure the retry path and not the wait.
ZERO_BACKOFF = RetryPolicy(max_retries=3, base_delay=0, jitter="none")

CONTENDERS = (
    Contender(
        POOL, "hand-written pool, re-push on failure", partial(HandPool, max_retries=3)
    ),
    Contender(
        "aq",
        "async_queue RetryPolicy(base_delay=0)",
        partial(QueuePool, retry=ZERO_BACKOFF),
    ),
)


class TransientError(Exception):
    """The failure of a task's first attempt."""


async def time_retries(contender: Contender, n: int) -> float:
    """Time a pool running ``n`` tasks that each fail once, then succeed."""
    failed: set[int] = set()

    # A plain coroutine function, as callers submit. The queue checks a
    # callable object on a slower path.
    async def fail_once(key: int) -> None:
        if key not in failed:
            failed.add(key)
            raise TransientError(key)

    pool = contender.factory()
    handles: list[Any] = [None] * n
    start = perf_counter()
    await pool.open()
    submit = pool.submit
    for index in range(n):
        handles[index] = submit(fail_once, index)

    await pool.wait_all(handles)
    await pool.close()
    elapsed = perf_counter() - start
    assert len(failed) == n, "every task failed exactly once"
    return elapsed


def measure(loop: str, n: int, key: str) -> float:
    contender = {c.key: c for c in CONTENDERS}[key]
    return run_on_loop(loop, time_retries(contender, n))


def run(loop: str, sizes: Sequence[int], repeat: int) -> list[Record]:
    labels = {c.key: c.label for c in CONTENDERS}
    measure_size = partial(measure, loop)
    return time_interleaved(SCENARIO, loop, sizes, repeat, labels, measure_size)


def report(records: Sequence[Record], loops: Sequence[str], repeat: int) -> None:
    print_heading("5. Retry path: each task fails once, then succeeds (zero backoff)")
    print(
        "tasks/s counts tasks, not attempts (two attempts per task). The\n"
        "async_queue logger is set to ERROR, so the WARNING logged per retry is\n"
        "never formatted. vs pool: paired by repeat, median (min-max)."
    )
    print_rate_tables(records, loops, repeat, POOL)
