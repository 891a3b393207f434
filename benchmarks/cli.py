"""Command line of ``python -m benchmarks``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import (
    hooks,
    memory,
    priority,
    profiling,
    retry,
    roundtrip,
    targets,
    throughput,
)
from .contenders import POOL, POOLS, QUEUE, THROUGHPUT_POOLS, Contender
from .harness import LOOP_NAMES, Record, machine_info, optional_module

SCENARIOS = (
    "throughput",
    "memory",
    "scaling",
    "priority",
    "retry",
    "hooks",
    "roundtrip",
)

DEFAULT_SIZES = (10_000, 100_000)
FULL_SIZES = (10_000, 100_000, 1_000_000)
SMOKE_SIZES = (100, 1_000)

# The priority scenario submits its high-priority task after 2 * 16
# completions, so every size must leave tasks queued past that point.
MIN_SIZE = 100


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(part.replace("_", "")) for part in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid --sizes {text!r}: expected comma-separated integers, "
            "for example 10000,100000"
        ) from None

    if sizes[0] < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"invalid --sizes {text!r}: every size must be at least {MIN_SIZE}"
        )

    return sizes


def parse_scenarios(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"invalid --scenarios {text!r}: choose from {', '.join(SCENARIOS)}"
        )

    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Benchmark async_queue against a hand-written worker pool and other "
            "baselines, interleaved in the same run. See docs/benchmarks.md."
        ),
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        help="comma-separated task counts N (default: 10000,100000)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="also run N=1,000,000 (several minutes); ignored with --sizes",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="interleaved repeats of each timed measurement (default: 5)",
    )
    parser.add_argument(
        "--loop",
        choices=(*LOOP_NAMES, "both"),
        default="both",
        help="event loop to run on; 'both' skips uvloop if it is not installed "
        "(default: both)",
    )
    parser.add_argument(
        "--scenarios",
        type=parse_scenarios,
        default=SCENARIOS,
        help=f"comma-separated scenarios to run (default: {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"run every scenario once at N={SMOKE_SIZES} (memory at the "
        "first only) to check that the suite works; the figures mean nothing",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="also write the machine, settings and every sample to FILE as JSON",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="cprofile",
        choices=profiling.PROFILERS,
        help="after the scenarios, profile async_queue's no-op path at the "
        "largest size on the first loop (default profiler: cprofile)",
    )
    return parser


@dataclasses.dataclass
class Settings:
    sizes: tuple[int, ...]
    repeat: int
    loops: tuple[str, ...]
    scenarios: tuple[str, ...]
    smoke: bool


def resolve_settings(args: argparse.Namespace) -> Settings:
    sizes: tuple[int, ...] = args.sizes or (FULL_SIZES if args.full else DEFAULT_SIZES)
    repeat: int = args.repeat
    if args.smoke:
        sizes, repeat = SMOKE_SIZES, 1

    if repeat < 1:
        raise SystemExit(f"invalid --repeat {repeat}: it must be at least 1")

    loops: tuple[str, ...] = LOOP_NAMES if args.loop == "both" else (args.loop,)
    if optional_module("uvloop") is None and "uvloop" in loops:
        if args.loop == "uvloop":
            raise SystemExit(
                "uvloop is not installed; install it with pip install -e '.[bench]' "
                "or run with --loop asyncio"
            )

        print("uvloop: skipped, not installed (pip install -e '.[bench]')")
        loops = ("asyncio",)

    return Settings(sizes, repeat, loops, args.scenarios, args.smoke)


def available(contenders: Sequence[Contender]) -> list[Contender]:
    """Return the contenders whose optional module is installed."""
    return [c for c in contenders if c.available()]


def print_skipped() -> None:
    """Name each contender left out because its optional module is missing."""
    for contender in dict.fromkeys([*POOLS, *THROUGHPUT_POOLS]):
        if not contender.available():
            print(
                f"{contender.label}: skipped, {contender.needs} is not installed "
                "(pip install -e '.[bench]')"
            )


def run_scenarios(settings: Settings) -> list[Record]:
    sizes, repeat, loops = settings.sizes, settings.repeat, settings.loops
    chosen = settings.scenarios
    pools = available(POOLS)
    records: list[Record] = []

    if "throughput" in chosen:
        for loop in loops:
            records += throughput.run(loop, sizes, repeat, available(THROUGHPUT_POOLS))
        throughput.report(records, loops, repeat)

    if "memory" in chosen:
        # Each memory figure costs a fresh interpreter: a smoke run measures
        # the smallest size only.
        memory_sizes = sizes[:1] if settings.smoke else sizes
        found = []
        for loop in loops:
            found += memory.run(loop, memory_sizes, pools)
        memory.report(found, loops)
        records += found

    if "scaling" in chosen:
        source = records
        if "throughput" not in chosen:
            # Scaling needs the no-op timings: take them for the pool and
            # async_queue only.
            basics = [c for c in THROUGHPUT_POOLS if c.key in (POOL, QUEUE)]
            source = []
            for loop in loops:
                source += throughput.run(loop, sizes, repeat, basics, with_floor=False)
            records += source

        derived = []
        for loop in loops:
            derived += throughput.scaling_ratios(source, loop)
        throughput.report_scaling(derived, loops)
        records += derived

    if "priority" in chosen:
        found = []
        for loop in loops:
            found += priority.run(loop, sizes, pools)
        priority.report(found, loops)
        records += found

    if "retry" in chosen:
        found = []
        for loop in loops:
            found += retry.run(loop, sizes, repeat)
        retry.report(found, loops, repeat)
        records += found

    if "hooks" in chosen:
        found = []
        for loop in loops:
            found += hooks.run(loop, sizes, repeat)
        hooks.report(found, loops, repeat)
        records += found

    if "roundtrip" in chosen:
        found = []
        for loop in loops:
            found += roundtrip.run(loop, sizes, repeat)
        roundtrip.report(found, loops, repeat)
        records += found

    return records


def record_json(record: Record) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data["median"] = record.median
    data["spread"] = record.spread
    return data


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = resolve_settings(args)

    # The queue logs a WARNING per retry: at level ERROR the logger drops each
    # one before formatting it, so the retry figures measure the queue.
    logging.getLogger("async_queue").setLevel(logging.ERROR)

    info = machine_info()
    title = "async_queue benchmarks"
    if settings.smoke:
        title += " (smoke run: the figures mean nothing)"
    print(title)
    for key, value in info.items():
        print(f"  {key}: {value}")
    print(
        f"  sizes: {', '.join(f'{s:,}' for s in settings.sizes)}; "
        f"repeats: {settings.repeat}; loops: {', '.join(settings.loops)}"
    )
    sys.stdout.flush()

    print_skipped()
    started = time.perf_counter()
    records = run_scenarios(settings)
    outcomes = targets.evaluate(records, settings.loops, settings.sizes)
    targets.report(outcomes)

    if args.profile:
        profile_size = 1_000 if settings.smoke else max(settings.sizes)
        profiling.report(args.profile, settings.loops[0], profile_size)

    elapsed = time.perf_counter() - started
    print(f"\ntotal time: {elapsed:.0f} s")

    if args.json:
        document = {
            "machine": info,
            "settings": dataclasses.asdict(settings),
            "records": [record_json(r) for r in records],
            "targets": [dataclasses.asdict(o) for o in outcomes],
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2)
            out.write("\n")

    return 0
