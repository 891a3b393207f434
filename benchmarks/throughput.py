"""No-op throughput and scaling: submit N no-op tasks, then await every handle."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from functools import partial
from time import perf_counter
from typing import Any

from .contenders import FLOOR, POOL, Contender
from .harness import (
    Record,
    describe_ratios,
    interleaved_caption,
    measured_sizes,
    paired_ratios,
    print_captioned_table,
    print_heading,
    rate_cells,
    run_on_loop,
    time_interleaved,
)

SCENARIO = "throughput"
SCALING = "scaling"

FLOOR_LABEL = "floor: a loop awaiting each coroutine"


async def noop() -> None:
    return None


async def time_floor(n: int) -> float:
    """Time awaiting ``n`` no-op coroutines one after another."""
    start = perf_counter()
    for _ in range(n):
        await noop()

    return perf_counter() - start


async def time_pool(contender: Contender, n: int) -> float:
    """Time a pool from its start to its stop, running ``n`` no-op tasks.

    The handle list is allocated before the clock starts.
    """
    pool = contender.factory()
    handles: list[Any] = [None] * n
    start = perf_counter()
    await pool.open()
    if pool.async_submit:
        asubmit = pool.asubmit
        for index in range(n):
            handles[index] = await asubmit(noop)
    else:
        submit = pool.submit
        for index in range(n):
            handles[index] = submit(noop)

    await pool.wait_all(handles)
    await pool.close()
    return perf_counter() - start


def measure(loop: str, contenders: dict[str, Contender], n: int, key: str) -> float:
    if key == FLOOR:
        return run_on_loop(loop, time_floor(n))

    return run_on_loop(loop, time_pool(contenders[key], n))


def run(
    loop: str,
    sizes: Sequence[int],
    repeat: int,
    contenders: Sequence[Contender],
    *,
    with_floor: bool = True,
) -> list[Record]:
    """Measure every contender ``repeat`` times at each size, interleaved.

    One untimed round at each size comes first; see ``WARMUP_MAX_SIZE``.
    """
    by_key = {c.key: c for c in contenders}
    labels = {FLOOR: FLOOR_LABEL} if with_floor else {}
    labels |= {c.key: c.label for c in contenders}
    measure_size = partial(measure, loop, by_key)
    return time_interleaved(SCENARIO, loop, sizes, repeat, labels, measure_size)


def print_table(records: Sequence[Record], loop: str, size: int, repeat: int) -> None:
    rows = [r for r in records if r.loop == loop and r.size == size]
    pool = next((r for r in rows if r.contender == POOL), None)
    table = []
    for record in rows:
        ratio = "-"
        if pool is not None:
            ratio = describe_ratios(paired_ratios(pool.samples, record.samples))

        spread = f"{record.spread:.1%}"
        table.append([record.extra["label"], *rate_cells(record), spread, ratio])

    headers = ["contender", "tasks/s", "us/task", "spread", "vs hand-written pool"]
    print_captioned_table(interleaved_caption(loop, size, repeat), headers, table)


def report(records: Sequence[Record], loops: Sequence[str], repeat: int) -> None:
    print_heading("1. No-op throughput: submit N no-op tasks, await every handle")
    print(
        "tasks/s and us/task: medians. spread: (max - min) / median of the times.\n"
        "vs hand-written pool: time(pool) / time(contender) paired by repeat,\n"
        "median (min-max); above 1.00x is faster than the pool."
    )
    for loop in loops:
        for size in measured_sizes(records, loop):
            print_table(records, loop, size, repeat)


def scaling_ratios(records: Sequence[Record], loop: str) -> list[Record]:
    """Derive time(larger N) / time(smaller N) for each consecutive pair of sizes."""
    derived = []
    by_contender: dict[str, list[Record]] = {}
    for record in records:
        if record.scenario == SCENARIO and record.loop == loop:
            by_contender.setdefault(record.contender, []).append(record)

    for key, rows in by_contender.items():
        rows.sort(key=lambda r: r.size)
        for small, large in itertools.pairwise(rows):
            ratio = large.median / small.median
            derived.append(
                Record(
                    SCALING,
                    loop,
                    large.size,
                    key,
                    "time ratio",
                    [ratio],
                    {
                        "label": small.extra["label"],
                        "from_size": small.size,
                        "ideal": large.size / small.size,
                    },
                )
            )

    return derived


def report_scaling(derived: Sequence[Record], loops: Sequence[str]) -> None:
    print_heading("3. Scaling: time(larger N) / time(smaller N), no-op tasks")
    print(
        "From the medians of scenario 1. Linear scaling gives the ideal ratio;\n"
        "more means the cost per task grows with the number of tasks."
    )
    for loop in loops:
        rows = [r for r in derived if r.loop == loop]
        if not rows:
            print(f"\nloop={loop}: needs at least two sizes (see --sizes)")
            continue

        table = []
        for record in rows:
            ratio = statistics.median(record.samples)
            ideal = record.extra["ideal"]
            table.append(
                [
                    record.extra["label"],
                    f"{record.extra['from_size']:,} -> {record.size:,}",
                    f"{ratio:.2f}",
                    f"{ideal:.1f}",
                    f"{ratio / ideal:.2f}",
                ]
            )

        headers = ["contender", "N", "time ratio", "ideal", "per-task cost growth"]
        print_captioned_table(f"loop={loop}", headers, table)
