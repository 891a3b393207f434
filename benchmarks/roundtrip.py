"""Round trip: submit one task and await its handle before submitting the next.

The throughput scenario queues every task before it awaits any, so a worker
runs task after task without ever waiting. Here each task finds the workers
idle: the submission wakes one, and the caller waits on an unfinished
handle. That is the path of a request handler that hands one job to the pool
and awaits its result.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from time import perf_counter

from .contenders import (
    AIOJOBS_CONTENDER,
    POOL,
    POOL_CONTENDER,
    QUEUE_CONTENDER,
    SEMAPHORE_CONTENDER,
    Contender,
    QueuePool,
)
from .harness import (
    Record,
    print_heading,
    print_rate_tables,
    run_on_loop,
    time_interleaved,
)
from .throughput import noop

SCENARIO = "roundtrip"

CONTENDERS = (
    POOL_CONTENDER,
    SEMAPHORE_CONTENDER,
    AIOJOBS_CONTENDER,
    QUEUE_CONTENDER,
    Contender(
        "aq-await", "async_queue await submit", partial(QueuePool, await_submit=True)
    ),
)


async def time_round_trips(contender: Contender, n: int) -> float:
    """Time ``n`` tasks, each submitted once the one before it has finished."""
    pool = contender.factory()
    start = perf_counter()
    await pool.open()
    if pool.wait_needed:
        asubmit, wait = pool.asubmit, pool.wait
        for _ in range(n):
            await wait(await asubmit(noop))
    elif pool.async_submit:
        asubmit = pool.asubmit
        for _ in range(n):
            await (await asubmit(noop))
    else:
        submit = pool.submit
        for _ in range(n):
            await submit(noop)

    await pool.close()
    return perf_counter() - start


def measure(loop: str, n: int, key: str) -> float:
    contender = {c.key: c for c in CONTENDERS}[key]
    return run_on_loop(loop, time_round_trips(contender, n))


def run(loop: str, sizes: Sequence[int], repeat: int) -> list[Record]:
    labels = {c.key: c.label for c in CONTENDERS if c.available()}
    measure_size = partial(measure, loop)
    return time_interleaved(SCENARIO, loop, sizes, repeat, labels, measure_size)


def report(records: Sequence[Record], loops: Sequence[str], repeat: int) -> None:
    print_heading("7. Round trip: submit one task, await it, then the next")
    print(
        "Each task finds the workers idle and its caller waits on an unfinished\n"
        "handle. vs pool: paired by repeat, median (min-max)."
    )
    for contender in CONTENDERS:
        if not contender.available():
            print(f"  {contender.label}: skipped ({contender.needs} not installed)")

    print_rate_tables(records, loops, repeat, POOL)
