"""Machine instructions per no-op task, counted by valgrind's callgrind.

Timed figures on a shared machine move by a third between runs. The number of
instructions that CPython executes for one task repeats to within about 1%
whatever else the machine is doing, so it shows the effect of a change to the
hot path on its own. It leaves out cache misses and the cost of
memory traffic, which the timed scenarios include.

Each contender runs twice, each time in a fresh interpreter under callgrind:
once with no task and once with N tasks. The difference divided by N is the
cost of one task: submit, pick, run, resolve the handle, await it.

    python -m benchmarks.instructions [--size N] [KEY ...]

KEY is a contender of the throughput scenario (``pool``, ``aq``,
``aq-timeout`` and so on), of the hook scenario (``aq-noop-hook`` and so
on), of the retry scenario with a ``retry-`` prefix (``retry-pool`` and
``retry-aq``, whose tasks fail once each), or of the round-trip scenario with
a ``roundtrip-`` prefix (``roundtrip-pool``, ``roundtrip-aq``: one task at a
time). A prefixed count is compared with the prefix's pool. The default
compares the
hand-written pool with async_queue's four variants. It needs ``valgrind`` on
the PATH.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

from . import hooks, retry, roundtrip
from .contenders import POOL, THROUGHPUT_POOLS
from .harness import check_contender_args, contender_parser, print_captioned_table
from .throughput import time_pool

DEFAULT_KEYS = (POOL, "aq", "aq-await", "aq-timeout", "aq-retry")
DEFAULT_SIZE = 10_000
RETRY_PREFIX = "retry-"
RETRY_POOL = RETRY_PREFIX + POOL
ROUNDTRIP_PREFIX = "roundtrip-"

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def parse_collected(report: str) -> int:
    """Return the instruction count of callgrind's summary on stderr."""
    match = _COLLECTED.search(report)
    if match is None:
        raise ValueError(f"no 'Collected :' line in callgrind's output:\n{report}")

    return int(match.group(1))


def count_instructions(key: str, size: int) -> int:
    """Run one contender with ``size`` tasks under callgrind; return its count."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--run",
        key,
        str(size),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return parse_collected(done.stderr)


def per_task(key: str, size: int) -> float:
    return (count_instructions(key, size) - count_instructions(key, 0)) / size


def missing_modules() -> dict[str, str]:
    """Return, by key, the optional module that each unavailable contender needs."""
    missing = {}
    prefixed = [(RETRY_PREFIX, c) for c in retry.CONTENDERS]
    prefixed += [(ROUNDTRIP_PREFIX, c) for c in roundtrip.CONTENDERS]
    plain = [("", c) for c in (*THROUGHPUT_POOLS, *hooks.CONTENDERS)]
    for prefix, contender in (*plain, *prefixed):
        if not contender.available():
            assert contender.needs is not None
            missing[prefix + contender.key] = contender.needs

    return missing


def runners() -> dict[str, Callable[[int], Coroutine[Any, Any, float]]]:
    """Return the timed run of each contender by key, given a task count."""
    found: dict[str, Callable[[int], Coroutine[Any, Any, float]]] = {}
    for contender in (*THROUGHPUT_POOLS, *hooks.CONTENDERS):
        found.setdefault(contender.key, partial(time_pool, contender))

    for contender in retry.CONTENDERS:
        found[RETRY_PREFIX + contender.key] = partial(retry.time_retries, contender)

    for contender in roundtrip.CONTENDERS:
        found[ROUNDTRIP_PREFIX + contender.key] = partial(
            roundtrip.time_round_trips, contender
        )

    return found


def run_contender(key: str, size: int) -> None:
    """Run the contender's timed run with ``size`` tasks; nothing for 0."""
    # As in the timed scenarios: the WARNING of each retry is not formatted.
    logging.getLogger("async_queue").setLevel(logging.ERROR)
    if size:
        asyncio.run(runners()[key](size))


def reference_of(key: str) -> str:
    """Return the key of the pool that ``key``'s count is compared with."""
    for prefix in (RETRY_PREFIX, ROUNDTRIP_PREFIX):
        if key.startswith(prefix):
            return prefix + POOL

    return POOL


def report(keys: Sequence[str], size: int) -> None:
    counts = {key: per_task(key, size) for key in keys}
    rows = []
    for key, count in counts.items():
        pool = counts.get(reference_of(key))
        ratio = "-" if pool is None or count <= 0 else f"{pool / count:.2f}x"
        rows.append([key, f"{count:,.0f}", ratio])

    headers = ["contender", "instructions/task", "vs hand-written pool"]
    caption = (
        f"N={size:,}, asyncio loop; above 1.00x is fewer than the pool "
        f"(the prefix's pool, such as {RETRY_POOL}, for prefixed contenders)"
    )
    print_captioned_table(caption, headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    known = sorted(runners())
    parser = contender_parser(
        "python -m benchmarks.instructions",
        "Count machine instructions per no-op task with callgrind.",
        known,
        DEFAULT_KEYS,
        DEFAULT_SIZE,
    )
    args = parser.parse_args(argv)
    if args.run is not None:
        run_contender(args.run[0], int(args.run[1]))
        return 0

    check_contender_args(parser, args, known)
    missing = missing_modules()
    for key in args.keys:
        if key in missing:
            parser.error(
                f"contender {key!r} needs {missing[key]}, which is not installed; "
                'install the bench extra: pip install -e ".[bench]"'
            )
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not on the PATH; install it (Debian: valgrind)")

    report(args.keys, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
