"""Memory per pending task: N tasks queued behind workers that are all busy.

Each measurement runs in a fresh Python process (``python -m
benchmarks.memory KEY N LOOP``), so that memory freed by earlier measurements
cannot hide the growth of this one.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .contenders import POOLS, WORKERS, Contender
from .harness import (
    Record,
    measure_once_each,
    print_captioned_table,
    print_heading,
    run_on_loop,
)

SCENARIO = "memory"

# Loop iterations run after the submissions and before the measurement, so
# that a design which starts a coroutine per task (create_task) has reached
# the point where it waits for a worker.
SETTLE_STEPS = 2


async def noop() -> None:
    return None


def rss_bytes() -> int:
    """Return the resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        resident_pages = int(statm.read().split()[1])

    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def traced_bytes() -> int:
    return tracemalloc.get_traced_memory()[0]


async def measure_pending(contender: Contender, n: int, read: Callable[[], int]) -> int:
    """Queue ``n`` no-op tasks behind ``WORKERS`` blocked ones, return the growth.

    ``read`` returns the current memory figure. The list that keeps the
    handles is allocated before the first reading, so it is not counted.
    """
    pool = contender.factory()
    await pool.open()
    release = asyncio.Event()
    all_started = asyncio.Event()
    started = 0

    async def block() -> None:
        nonlocal started
        started += 1
        if started == WORKERS:
            all_started.set()

        await release.wait()

    blockers = [await pool.asubmit(block) for _ in range(WORKERS)]
    await all_started.wait()

    handles: list[Any] = [None] * n
    gc.collect()
    before = read()
    if pool.async_submit:
        for index in range(n):
            handles[index] = await pool.asubmit(noop)
    else:
        submit = pool.submit
        for index in range(n):
            handles[index] = submit(noop)

    for _ in range(SETTLE_STEPS):
        await asyncio.sleep(0)

    growth = read() - before

    release.set()
    await pool.wait_all(blockers)
    await pool.wait_all(handles)
    await pool.close()
    return growth


def probe(key: str, n: int, loop: str) -> dict[str, float]:
    """Measure one contender in this process: RSS first, then tracemalloc."""
    contender = {c.key: c for c in POOLS}[key]
    rss = run_on_loop(loop, measure_pending(contender, n, rss_bytes))

    tracemalloc.start()
    try:
        traced = run_on_loop(loop, measure_pending(contender, n, traced_bytes))
    finally:
        tracemalloc.stop()

    return {"traced_per_task": traced / n, "rss_per_task": rss / n}


def run_probe(key: str, n: int, loop: str) -> dict[str, float]:
    """Run ``probe`` in a fresh interpreter and return its figures."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(root), env.get("PYTHONPATH", "")) if p
    )
    command = [sys.executable, "-m", "benchmarks.memory", key, str(n), loop]
    completed = subprocess.run(
        command, env=env, cwd=root, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"memory probe {' '.join(command[1:])} failed with exit code "
            f"{completed.returncode}:\n{completed.stderr}"
        )

    figures: dict[str, float] = json.loads(completed.stdout)
    return figures


def run(
    loop: str, sizes: Sequence[int], contenders: Sequence[Contender]
) -> list[Record]:
    def measure(key: str, size: int) -> tuple[float, dict[str, Any]]:
        figures = run_probe(key, size, loop)
        return figures["traced_per_task"], {"rss_per_task": figures["rss_per_task"]}

    labels = {c.key: c.label for c in contenders}
    return measure_once_each(SCENARIO, loop, sizes, labels, "bytes per task", measure)


def report(records: Sequence[Record], loops: Sequence[str]) -> None:
    print_heading("2. Memory per pending task (workers busy, N tasks queued)")
    print(
        "tracemalloc: bytes Python allocated per queued task, handle included,\n"
        "the caller's list of handles excluded. RSS: growth of the resident set\n"
        "per task, in a fresh process; it moves in whole pages and arenas.\n"
        "One measurement each: tracemalloc figures repeat exactly."
    )
    for loop in loops:
        rows = [r for r in records if r.loop == loop]
        table = [
            [
                r.extra["label"],
                f"{r.size:,}",
                f"{r.median:,.0f}",
                f"{r.extra['rss_per_task']:,.0f}",
            ]
            for r in rows
        ]
        headers = ["contender", "N", "tracemalloc B/task", "RSS B/task"]
        print_captioned_table(f"loop={loop}", headers, table)


def main(argv: Sequence[str]) -> int:
    key, size, loop = argv
    print(json.dumps(probe(key, int(size), loop)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
