"""The project's performance targets, checked against the figures of one run.

The targets are reported, never enforced: a run on a loaded machine can miss
one without anything being wrong with the code.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import memory, priority, throughput
from .contenders import AIOJOBS, POOL, QUEUE, QUEUE_TIMEOUT, WORKERS
from .harness import Record, format_table, paired_ratios, print_heading

LARGE = 1_000_000


@dataclass(frozen=True)
class Outcome:
    target: str
    loop: str
    size: int | None
    measured: str
    met: bool | None  # None: not measured in this run


def _find(
    records: Sequence[Record], scenario: str, loop: str, size: int, contender: str
) -> Record | None:
    for record in records:
        if (record.scenario, record.loop, record.size, record.contender) == (
            scenario,
            loop,
            size,
            contender,
        ):
            return record

    return None


def _throughput_ratio(
    records: Sequence[Record], loop: str, size: int, baseline: str, contender: str
) -> float | None:
    """Return time(baseline) / time(contender), the median of the paired ratios."""
    base = _find(records, throughput.SCENARIO, loop, size, baseline)
    ours = _find(records, throughput.SCENARIO, loop, size, contender)
    if base is None or ours is None:
        return None

    return statistics.median(paired_ratios(base.samples, ours.samples))


def _ratio_targets(
    records: Sequence[Record], loop: str, sizes: Sequence[int]
) -> list[Outcome]:
    checks: list[tuple[str, str, str, Callable[[int], float]]] = [
        ("no-op throughput vs hand-written pool", POOL, QUEUE, _pool_minimum),
        ("no-op throughput vs aiojobs", AIOJOBS, QUEUE, lambda size: 12.0),
        ("with timeouts vs hand-written pool", POOL, QUEUE_TIMEOUT, lambda size: 0.6),
    ]
    outcomes = []
    for text, baseline, contender, minimum in checks:
        for size in sizes:
            target = f"{text} >= {minimum(size):.1f}x"
            ratio = _throughput_ratio(records, loop, size, baseline, contender)
            if ratio is None:
                outcomes.append(Outcome(target, loop, size, "not measured", None))
            else:
                met = ratio >= minimum(size)
                outcomes.append(Outcome(target, loop, size, f"{ratio:.2f}x", met))

    return outcomes


def _pool_minimum(size: int) -> float:
    return 1.5 if size >= LARGE else 0.9


def _memory_targets(
    records: Sequence[Record], loop: str, sizes: Sequence[int]
) -> list[Outcome]:
    outcomes = []
    for size in sizes:
        target = "bytes per pending task <= 400 (tracemalloc)"
        record = _find(records, memory.SCENARIO, loop, size, QUEUE)
        if record is None:
            outcomes.append(Outcome(target, loop, size, "not measured", None))
        else:
            measured = f"{record.median:.0f} B"
            outcomes.append(Outcome(target, loop, size, measured, record.median <= 400))

    return outcomes


def _scaling_target(records: Sequence[Record], loop: str) -> Outcome:
    target = "time(1,000,000) <= 12x time(100,000)"
    small = _find(records, throughput.SCENARIO, loop, 100_000, QUEUE)
    large = _find(records, throughput.SCENARIO, loop, LARGE, QUEUE)
    if small is None or large is None:
        return Outcome(target, loop, None, "not measured (needs --full)", None)

    ratio = large.median / small.median
    return Outcome(target, loop, LARGE, f"{ratio:.2f}x", ratio <= 12.0)


def _priority_targets(
    records: Sequence[Record], loop: str, sizes: Sequence[int]
) -> list[Outcome]:
    outcomes = []
    for size in sizes:
        target = f"high priority starts within {WORKERS} completions (1 per worker)"
        record = _find(records, priority.SCENARIO, loop, size, QUEUE)
        if record is None:
            outcomes.append(Outcome(target, loop, size, "not measured", None))
        else:
            count = record.median
            outcomes.append(
                Outcome(target, loop, size, f"{count:.0f}", count <= WORKERS)
            )

    return outcomes


def evaluate(
    records: Sequence[Record], loops: Sequence[str], sizes: Sequence[int]
) -> list[Outcome]:
    """Check every target at every loop and size of the run."""
    outcomes = []
    for loop in loops:
        outcomes += _ratio_targets(records, loop, sizes)
        outcomes += _memory_targets(records, loop, sizes)
        outcomes.append(_scaling_target(records, loop))
        outcomes += _priority_targets(records, loop, sizes)

    return outcomes


def report(outcomes: Sequence[Outcome]) -> None:
    print_heading("Targets (measured, not enforced)")
    if all(o.met is None for o in outcomes):
        # Such as a run of the round-trip scenario alone.
        print("none of the chosen scenarios measures a target")
        return

    status = {True: "met", False: "NOT met", None: "-"}
    table = [
        [
            o.target,
            o.loop,
            "-" if o.size is None else f"{o.size:,}",
            o.measured,
            status[o.met],
        ]
        for o in outcomes
    ]
    print(format_table(["target", "loop", "N", "measured", "status"], table))
