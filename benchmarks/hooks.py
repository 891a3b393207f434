"""Hook overhead: the no-op throughput run of async_queue with each kind of hook."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from functools import partial

from async_queue import AsyncTaskQueue, Hook, LoggingHook, TaskEvent

from .contenders import Contender, QueuePool
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
from .throughput import time_pool

SCENARIO = "hooks"

NO_HOOKS = "aq"


class NoDispatchPool(QueuePool):
    """A queue whose hook callback lists are all empty, the built-in
    ``LoggingHook``'s included.

    Only the queue's checks of its empty callback lists remain, so this is
    the cost of a queue with no hook dispatch at all.
    """

    def prepare(self, queue: AsyncTaskQueue) -> None:
        queue._hooks = {event: [] for event in queue._hooks}
        queue._submitted_hooks = queue._hooks["on_submitted"]


class EmptyHook(Hook):
    """A ``Hook`` subclass that overrides nothing."""


class StartedSucceededHook(Hook):
    """A hook with a no-op ``on_started`` and ``on_succeeded``."""

    def on_started(self, event: TaskEvent) -> None:
        pass

    def on_succeeded(self, event: TaskEvent) -> None:
        pass


def with_hook(make_hook: Callable[[], object]) -> QueuePool:
    """Return a pool whose queue has one hook, made before the clock starts."""
    return QueuePool(hooks=[make_hook()])


def prometheus_hook() -> object:
    # Imported here: prometheus_client is optional, and each pool gets a
    # registry of its own, so that no run adds to the counters of another.
    prometheus_client = importlib.import_module("prometheus_client")
    module = importlib.import_module("async_queue.prometheus")
    return module.PrometheusHook(prometheus_client.CollectorRegistry())


CONTENDERS = (
    Contender(NO_HOOKS, "async_queue, no hooks", QueuePool),
    Contender("aq-no-dispatch", "async_queue, hook dispatch removed", NoDispatchPool),
    Contender(
        "aq-empty-hook",
        "Hook subclass overriding nothing",
        partial(with_hook, EmptyHook),
    ),
    Contender(
        "aq-noop-hook",
        "no-op on_started + on_succeeded",
        partial(with_hook, StartedSucceededHook),
    ),
    Contender(
        "aq-logging", "LoggingHook, logger at ERROR", partial(with_hook, LoggingHook)
    ),
    Contender(
        "aq-prometheus",
        "PrometheusHook",
        partial(with_hook, prometheus_hook),
        needs="prometheus_client",
    ),
)


def measure(loop: str, contenders: dict[str, Contender], n: int, key: str) -> float:
    return run_on_loop(loop, time_pool(contenders[key], n))


def run(loop: str, sizes: Sequence[int], repeat: int) -> list[Record]:
    """Measure every installed contender ``repeat`` times at each size, interleaved."""
    by_key = {c.key: c for c in CONTENDERS if c.available()}
    labels = {key: contender.label for key, contender in by_key.items()}
    measure_size = partial(measure, loop, by_key)
    return time_interleaved(SCENARIO, loop, sizes, repeat, labels, measure_size)


def print_table(records: Sequence[Record], loop: str, size: int, repeat: int) -> None:
    rows = [r for r in records if r.loop == loop and r.size == size]
    base = next(r for r in rows if r.contender == NO_HOOKS)
    table = []
    for record in rows:
        extra_us = (record.median - base.median) / record.size * 1e6
        table.append(
            [
                record.extra["label"],
                *rate_cells(record),
                f"{extra_us:+.2f}",
                f"{record.spread:.1%}",
                describe_ratios(paired_ratios(base.samples, record.samples)),
            ]
        )

    headers = ["contender", "tasks/s", "us/task", "extra us", "spread", "vs no hooks"]
    print_captioned_table(interleaved_caption(loop, size, repeat), headers, table)


def report(records: Sequence[Record], loops: Sequence[str], repeat: int) -> None:
    print_heading("6. Hook overhead: no-op tasks through async_queue with each hook")
    print(
        "extra us: us/task minus that of the queue without hooks, from the\n"
        "medians. vs no hooks: time(no hooks) / time(contender) paired by\n"
        "repeat, median (min-max); below 1.00x the hook costs time."
    )
    for contender in CONTENDERS:
        if not contender.available():
            print(
                f"{contender.label}: skipped, {contender.needs} is not installed "
                "(pip install -e '.[prometheus]')"
            )

    for loop in loops:
        for size in measured_sizes(records, loop):
            print_table(records, loop, size, repeat)
