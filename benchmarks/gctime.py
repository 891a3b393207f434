"""Time spent in CPython's cyclic garbage collector during a no-op run.

At a million pending tasks, the collector takes a large share of every
contender's time, because each full collection reads every live object.
This runs the throughput scenario once per contender, each in a new
interpreter, and reports the run's time, the collector's share of it
(measured with ``gc.callbacks``) and the number of full collections.

    python -m benchmarks.gctime [--size N] [KEY ...]

KEY is a contender of the throughput scenario (``pool``, ``aq`` and so on);
the default compares the hand-written pool with async_queue.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from .contenders import POOL, THROUGHPUT_POOLS
from .harness import check_contender_args, contender_parser, print_captioned_table
from .throughput import time_pool

DEFAULT_KEYS = (POOL, "aq")
DEFAULT_SIZE = 1_000_000
FULL_GENERATION = 2


class CollectorClock:
    """A ``gc.callbacks`` entry that adds up the time of each collection."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full_collections = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return

        self.seconds += time.perf_counter() - self._started
        if info["generation"] == FULL_GENERATION:
            self.full_collections += 1


def measure(key: str, size: int) -> dict[str, Any]:
    """Run one contender with ``size`` tasks in this process; return its figures."""
    contenders = {c.key: c for c in THROUGHPUT_POOLS}
    clock = CollectorClock()
    gc.collect()
    gc.callbacks.append(clock)
    try:
        total = asyncio.run(time_pool(contenders[key], size))
    finally:
        gc.callbacks.remove(clock)

    return {
        "total": total,
        "collector": clock.seconds,
        "full_collections": clock.full_collections,
    }


def measure_in_new_interpreter(key: str, size: int) -> dict[str, Any]:
    """Run :func:`measure` in a fresh interpreter, so no run inherits garbage."""
    command = [sys.executable, "-m", "benchmarks.gctime", "--run", key, str(size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def report(keys: Sequence[str], size: int) -> None:
    rows = []
    for key in keys:
        figures = measure_in_new_interpreter(key, size)
        total, collector = figures["total"], figures["collector"]
        share = collector / total if total > 0 else 0.0
        rows.append(
            [
                key,
                f"{total:.3f}",
                f"{collector:.3f}",
                f"{share:.0%}",
                str(figures["full_collections"]),
            ]
        )

    headers = ["contender", "total s", "collector s", "share", "full collections"]
    caption = f"N={size:,}, asyncio loop, one run each in a new interpreter"
    print_captioned_table(caption, headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    known = sorted(c.key for c in THROUGHPUT_POOLS)
    parser = contender_parser(
        "python -m benchmarks.gctime",
        "Measure the cyclic collector's time in a no-op run.",
        known,
        DEFAULT_KEYS,
        DEFAULT_SIZE,
    )
    args = parser.parse_args(argv)
    if args.run is not None:
        print(json.dumps(measure(args.run[0], int(args.run[1]))))
        return 0

    check_contender_args(parser, args, known)

    report(args.keys, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
