"""Event loops, timing, statistics, result records and table output."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import platform
import statistics
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

LOOP_NAMES = ("asyncio", "uvloop")


def optional_module(name: str) -> Any:
    """Import an optional dependency, or return ``None`` if it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def loop_factory(name: str) -> LoopFactory:
    """Return the event loop factory for ``name`` ("asyncio" or "uvloop").

    Raises:
        RuntimeError: uvloop was requested but is not installed.
    """
    if name == "asyncio":
        return asyncio.new_event_loop

    uvloop = optional_module("uvloop")
    if uvloop is None:
        raise RuntimeError(
            "uvloop is not installed; install it with "
            "pip install -e '.[bench]' or run with --loop asyncio"
        )

    factory: LoopFactory = uvloop.new_event_loop
    return factory


def run_on_loop(loop_name: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a new event loop of kind ``loop_name``, after a GC pass.

    Each measurement gets a fresh loop, so that no ready callbacks or cached
    objects of one contender are left for the next.
    """
    gc.collect()
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        return runner.run(coro)


# Before the timed repeats at a size, every contender runs once untimed at
# this size or below, so that the first timed run does not pay for growing the
# process's heap.
WARMUP_MAX_SIZE = 100_000


def interleave(
    keys: Sequence[str], repeat: int, measure: Callable[[str], float]
) -> dict[str, list[float]]:
    """Call ``measure(key)`` ``repeat`` times per key, interleaved.

    Each repeat measures every key once, starting one place further along the
    list than the repeat before, so that no key always runs first.
    """
    samples: dict[str, list[float]] = {key: [] for key in keys}
    for repeat_index in range(repeat):
        shift = repeat_index % len(keys)
        for key in [*keys[shift:], *keys[:shift]]:
            samples[key].append(measure(key))

    return samples


@dataclass
class Record:
    """One measured figure: the samples of one contender at one size and loop."""

    scenario: str
    loop: str
    size: int
    contender: str
    metric: str  # what the samples are, for example "seconds"
    samples: list[float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """The range of the samples as a fraction of their median."""
        median = self.median
        if median == 0:
            return 0.0

        return (max(self.samples) - min(self.samples)) / median


def time_interleaved(
    scenario: str,
    loop: str,
    sizes: Sequence[int],
    repeat: int,
    labels: Mapping[str, str],
    measure: Callable[[int, str], float],
) -> list[Record]:
    """Time each key of ``labels`` ``repeat`` times at each size, interleaved.

    ``measure(size, key)`` returns the seconds of one run. One untimed round
    at each size comes first; see ``WARMUP_MAX_SIZE``.
    """
    keys = list(labels)
    records = []
    for size in sizes:
        interleave(keys, 1, partial(measure, min(size, WARMUP_MAX_SIZE)))
        samples = interleave(keys, repeat, partial(measure, size))
        for key in keys:
            extra = {"label": labels[key]}
            records.append(
                Record(scenario, loop, size, key, "seconds", samples[key], extra)
            )

    return records


def measure_once_each(
    scenario: str,
    loop: str,
    sizes: Sequence[int],
    labels: Mapping[str, str],
    metric: str,
    measure: Callable[[str, int], tuple[float, dict[str, Any]]],
) -> list[Record]:
    """Measure each key of ``labels`` once at each size, in that order.

    For figures that repeat exactly, such as counts and allocations.
    ``measure(key, size)`` returns the value of ``metric`` and the figures to
    keep beside it in ``Record.extra``.
    """
    records = []
    for size in sizes:
        for key, label in labels.items():
            value, figures = measure(key, size)
            extra = {"label": label, **figures}
            records.append(Record(scenario, loop, size, key, metric, [value], extra))

    return records


def paired_ratios(baseline: Sequence[float], contender: Sequence[float]) -> list[float]:
    """Return ``baseline[i] / contender[i]`` for each repeat ``i``.

    With times, a ratio above 1 means the contender was faster than the
    baseline in that repeat. Pairing by repeat cancels drift that hits both.
    """
    return [b / c for b, c in zip(baseline, contender, strict=True)]


def describe_ratios(ratios: Sequence[float]) -> str:
    """Format ratios as their median and range, like ``0.93x (0.90-0.95)``."""
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}x"

    median = statistics.median(ratios)
    return f"{median:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Format rows as a plain-text table: first column left-aligned, others right."""
    widths = [len(h) for h in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = []
        for index, cell in enumerate(cells):
            if index == 0:
                parts.append(cell.ljust(widths[index]))
            else:
                parts.append(cell.rjust(widths[index]))
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for text in cpuinfo:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass

    return platform.processor() or "unknown"


def usable_cores() -> int:
    """Return the number of cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))

    return os.cpu_count() or 1


def machine_info() -> dict[str, str]:
    """Describe the machine and the software versions behind the figures."""
    info = {
        "cpu": cpu_model(),
        "cores": str(usable_cores()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
    }
    for name in ("uvloop", "aiojobs"):
        module = optional_module(name)
        info[name] = getattr(module, "__version__", "installed") if module else "-"

    async_queue = importlib.import_module("async_queue")
    info["async_queue"] = str(async_queue.__version__)
    return info


def measured_sizes(records: Sequence[Record], loop: str) -> list[int]:
    """Return the sizes measured on ``loop``, smallest first."""
    return sorted({r.size for r in records if r.loop == loop})


def rate_cells(record: Record) -> list[str]:
    """Format the median rate of a timed record as tasks/s and us/task cells."""
    return [
        f"{record.size / record.median:,.0f}",
        f"{record.median / record.size * 1e6:.2f}",
    ]


def interleaved_caption(loop: str, size: int, repeat: int) -> str:
    return f"loop={loop}  N={size:,}  repeats={repeat} (interleaved)"


def print_captioned_table(
    caption: str, headers: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    """Print a blank line, ``caption`` and the table under it."""
    print()
    print(caption)
    print(format_table(headers, rows))


def print_heading(text: str) -> None:
    print()
    print(text)
    print("=" * len(text))
    sys.stdout.flush()


def contender_parser(
    prog: str,
    description: str,
    known: Sequence[str],
    default_keys: Sequence[str],
    default_size: int,
) -> argparse.ArgumentParser:
    """Return the parser of a command that runs throughput contenders by key.

    ``--run KEY N`` is hidden: the command calls itself with it to run one
    contender in a new interpreter.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "keys",
        nargs="*",
        metavar="KEY",
        default=list(default_keys),
        help=f"contenders to run, from {', '.join(known)} "
        f"(default: {' '.join(default_keys)})",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=default_size,
        metavar="N",
        help=f"tasks per run (default: {default_size:,})",
    )
    parser.add_argument("--run", nargs=2, metavar=("KEY", "N"), help=argparse.SUPPRESS)
    return parser


def check_contender_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, known: Sequence[str]
) -> None:
    """Exit with a usage error for an unknown key or a size below 1."""
    unknown = [key for key in args.keys if key not in known]
    if unknown:
        parser.error(f"unknown contender {unknown[0]!r}; choose from {list(known)}")
    if args.size < 1:
        parser.error(f"--size must be at least 1, got {args.size}")


def print_rate_tables(
    records: Sequence[Record], loops: Sequence[str], repeat: int, reference: str
) -> None:
    """Print a table of rates per loop and size, with ratios to ``reference``."""
    for loop in loops:
        for size in measured_sizes(records, loop):
            rows = [r for r in records if r.loop == loop and r.size == size]
            base = next(r for r in rows if r.contender == reference)
            table = [
                [
                    r.extra["label"],
                    *rate_cells(r),
                    f"{r.spread:.1%}",
                    describe_ratios(paired_ratios(base.samples, r.samples)),
                ]
                for r in rows
            ]
            headers = ["contender", "tasks/s", "us/task", "spread", "vs pool"]
            caption = interleaved_caption(loop, size, repeat)
            print_captioned_table(caption, headers, table)
