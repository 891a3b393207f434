"""The ``demo`` command: a flaky local TCP service driven through the queue.

The demo starts ``DemoServer`` on 127.0.0.1, submits ``count`` requests with
mixed priorities to an ``AsyncTaskQueue`` whose tasks send one request each,
and retries transient errors and timeouts. The producer waits for room when
``max_pending`` tasks wait to start, and submits a share of the requests with
a delay. Tasks that end ``FAILED`` are reported as dead letters, and are
requeued once at the end if ``requeue_dead`` is set. The demo shows progress
on stderr, prints a summary on stdout and checks that every task, requeued
ones included, reached exactly one final state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import math
import random
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from ._demo_server import DemoClient, DemoServer, ServerError
from .core import AsyncTaskQueue
from .deadletters import DeadLetter
from .errors import TaskCancelledError, TaskNotFoundError
from .models import ShutdownMode, ShutdownReport, TaskHandle, TaskId, TaskState
from .policies import Jitter, RetryPolicy

__all__ = (
    "EXIT_INTERRUPTED",
    "EXIT_LOST",
    "PRIORITY_CLASSES",
    "ClassLatency",
    "DemoConfig",
    "PriorityClass",
    "RequestRecord",
    "Summary",
    "format_summary",
    "percentile",
    "record_outcomes",
    "run_demo",
    "summarize",
)

logger = logging.getLogger("async_queue.demo")

EXIT_LOST = 1
"""Exit status when a task did not reach exactly one final state."""

EXIT_INTERRUPTED = 128 + signal.SIGINT
"""Exit status after Ctrl-C (130), when no task was lost.

After SIGTERM it is 128 + SIGTERM (143), as shells report a process that a
signal ended.
"""

# The queue yields to the event loop after this many submissions, so that the
# workers and the progress line start while a large batch is being submitted.
_SUBMIT_BATCH = 256

# The summary lists this many of the most frequent dead-letter causes.
_TOP_CAUSES = 3


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """A class of requests: its name, queue priority and share of requests."""

    name: str
    priority: int
    weight: float


PRIORITY_CLASSES = (
    PriorityClass("high", 2, 0.2),
    PriorityClass("normal", 1, 0.5),
    PriorityClass("low", 0, 0.3),
)


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """The demo's settings; times are in seconds."""

    count: int = 10_000
    workers: int = 64
    failure_rate: float = 0.05
    hang_rate: float = 0.005
    timeout: float = 0.5
    retries: int = 3
    backoff: float = 0.02
    latency: float = 0.002
    rate: float = 0.0
    """Submissions per second; 0 submits every request at once."""
    seed: int = 1
    progress_interval: float = 0.5
    """Seconds between progress lines; 0 turns them off."""
    max_pending: int = 1000
    """The queue's ``max_pending``; 0 leaves the queue unbounded."""
    delayed_rate: float = 0.05
    """The probability that a request is submitted with a delay."""
    max_delay: float = 0.2
    """Delays are drawn uniformly from 0 to this many seconds."""
    retry_after_share: float = 0.2
    """The share of error responses, rejections excluded, that carry a
    retry-after delay."""
    reject_share: float = 0.04
    """The share of error responses that reject the request, without retry."""
    requeue_dead: bool = True
    """Whether to requeue each dead letter once after the run."""

    @property
    def max_backoff(self) -> float:
        """The cap on a single retry delay: 1 s, or ``backoff`` if larger."""
        return max(1.0, self.backoff)


@dataclass(slots=True)
class RequestRecord:
    """One task of the demo, the request it sends, and what its handle showed.

    A requeued dead letter is a new task with a record of its own, whose
    ``requeued_from`` is the id of the failed task.
    """

    request_id: int
    priority_class: PriorityClass
    submitted_at: float
    """Loop time at which the queue accepted the task."""
    handle: TaskHandle[str] | None = None
    finished_at: float | None = None
    """Loop time at which the handle's done callback ran, or ``None``."""
    awaited_state: TaskState | None = None
    """The final state that awaiting the finished handle implied."""
    error: str | None = None
    """The class name of the exception a failed task raised."""
    attempts_sent: int = 0
    """Attempts sent for this request. A requeued task runs with the record
    of the failed task as its argument, so its attempts continue this count
    and draw new server responses."""
    delay: float | None = None
    """The ``delay`` in seconds that the task was submitted with, if any."""
    requeued_from: TaskId | None = None
    """The id of the failed task that this task requeued, if any."""


@dataclass(frozen=True, slots=True)
class ClassLatency:
    """Latency percentiles of one priority class, in seconds."""

    priority_class: PriorityClass
    count: int
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class Summary:
    """The counts, timings and latencies of one demo run.

    ``submitted`` counts the producer's tasks, and ``succeeded``, ``failed``
    and ``cancelled`` their final states. The tasks that requeued dead
    letters are counted apart, in ``requeued`` and the ``requeued_*`` fields.
    ``lost``, ``retried_tasks`` and ``retries`` cover both kinds.
    """

    submitted: int
    succeeded: int
    failed: int
    cancelled: int
    lost: int
    retried_tasks: int
    retries: int
    wall_time: float
    latencies: tuple[ClassLatency, ...] = field(default=())
    failure_causes: tuple[tuple[str, int], ...] = field(default=())
    """Exception class names of the failed tasks with their counts, most
    frequent first; requeued tasks excluded."""
    delayed: int = 0
    """Tasks that the producer submitted with a delay."""
    requeued: int = 0
    requeued_succeeded: int = 0
    requeued_failed: int = 0
    requeued_cancelled: int = 0
    dead_letters: int = 0
    """Dead letters that ``on_dead_letter`` received, requeued tasks included."""
    dead_letters_left: int = 0
    """Dead letters that ``dead_letters()`` still contained at the end."""
    dead_letter_causes: tuple[tuple[str, int], ...] = field(default=())
    """Exception class names of all dead letters with their counts, most
    frequent first."""
    producer_waits: int | None = None
    """Submissions that waited for room; ``None`` if ``max_pending`` was unset."""
    producer_wait_time: float = 0.0
    """Seconds that the producer spent waiting for room, in total."""

    @property
    def throughput(self) -> float:
        """Tasks that succeeded or failed per second of wall time, requeued
        tasks included."""
        completed = (
            self.succeeded
            + self.failed
            + self.requeued_succeeded
            + self.requeued_failed
        )
        return completed / self.wall_time if self.wall_time > 0 else 0.0


def percentile(values: Sequence[float], percent: float) -> float | None:
    """Return the nearest-rank ``percent`` percentile of ``values``.

    The result is the smallest value such that at least ``percent`` % of the
    values are less than or equal to it. Returns ``None`` for no values.
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be between 0 and 100, got {percent!r}")

    if not values:
        return None

    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


_FINAL_STATES = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)


async def record_outcomes(records: Sequence[RequestRecord]) -> None:
    """Await each final handle and store the state its outcome implies.

    Awaiting a final handle returns or raises at once, and handles that are
    not final are skipped. The demo awaits its handles here, after the run,
    rather than in one coroutine per task. With one coroutine per task, a
    ``stop()`` that cancelled 50,000 pending tasks woke that many coroutines at
    once. That held the event loop past the 0.5 s attempt timeout, so running
    tasks timed out.
    """
    for record in records:
        handle = record.handle
        if handle is None or not handle.done():
            continue

        try:
            await handle
        except TaskCancelledError:
            record.awaited_state = TaskState.CANCELLED
        except Exception as exc:
            record.awaited_state = TaskState.FAILED
            record.error = type(exc).__name__
        else:
            record.awaited_state = TaskState.SUCCEEDED


def summarize(records: Sequence[RequestRecord], wall_time: float) -> Summary:
    """Count the final state of each record's handle, once per handle.

    A record is lost if its handle is missing or not final, or if awaiting the
    handle implied a different final state than the handle reports.
    Latencies cover the producer's tasks that succeeded or failed, from
    submission, or from the end of the task's delay, until its handle became
    final. Requeued tasks are counted apart and have no latency.
    """
    counts = dict.fromkeys(_FINAL_STATES, 0)
    requeued_counts = dict.fromkeys(_FINAL_STATES, 0)
    causes: collections.Counter[str] = collections.Counter()
    submitted = requeued = delayed = lost = retried_tasks = retries = 0
    durations: dict[str, list[float]] = {c.name: [] for c in PRIORITY_CLASSES}
    for record in records:
        is_requeued = record.requeued_from is not None
        if is_requeued:
            requeued += 1
        else:
            submitted += 1
            if record.delay is not None:
                delayed += 1

        handle = record.handle
        if handle is None:
            lost += 1
            continue

        state = handle.state
        if state not in counts or record.awaited_state is not state:
            lost += 1
            continue

        if handle.attempts > 1:
            retried_tasks += 1
            retries += handle.attempts - 1

        if is_requeued:
            requeued_counts[state] += 1
            continue

        counts[state] += 1
        if state is TaskState.FAILED:
            causes[record.error or "unknown"] += 1

        if state is not TaskState.CANCELLED and record.finished_at is not None:
            started_at = record.submitted_at + (record.delay or 0.0)
            latency = record.finished_at - started_at
            durations.setdefault(record.priority_class.name, []).append(latency)

    return Summary(
        submitted=submitted,
        succeeded=counts[TaskState.SUCCEEDED],
        failed=counts[TaskState.FAILED],
        cancelled=counts[TaskState.CANCELLED],
        lost=lost,
        retried_tasks=retried_tasks,
        retries=retries,
        wall_time=wall_time,
        latencies=_class_latencies(records, durations),
        failure_causes=tuple(causes.most_common()),
        delayed=delayed,
        requeued=requeued,
        requeued_succeeded=requeued_counts[TaskState.SUCCEEDED],
        requeued_failed=requeued_counts[TaskState.FAILED],
        requeued_cancelled=requeued_counts[TaskState.CANCELLED],
    )


def _class_latencies(
    records: Sequence[RequestRecord], durations: dict[str, list[float]]
) -> tuple[ClassLatency, ...]:
    classes = {c.name: c for c in PRIORITY_CLASSES}
    classes.update((r.priority_class.name, r.priority_class) for r in records)
    return tuple(
        ClassLatency(
            classes[name],
            len(values),
            percentile(values, 50),
            percentile(values, 95),
            percentile(values, 99),
        )
        for name, values in durations.items()
    )


def _milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _format_causes(causes: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {count}" for name, count in causes)


def _count(number: int, noun: str) -> str:
    """Return ``number`` and ``noun``, with an "s" unless ``number`` is 1."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def format_summary(summary: Summary) -> str:
    """Return the summary as lines of text, ending with a newline."""
    lines = [f"submitted: {summary.submitted}", f"delayed: {summary.delayed}"]
    if summary.producer_waits is None:
        lines.append("backpressure: off (max_pending unbounded)")
    else:
        lines.append(
            f"backpressure: the producer waited for room {summary.producer_waits} "
            f"times, {summary.producer_wait_time:.2f} s in total"
        )

    failed = f"failed: {summary.failed}"
    if summary.requeued:
        # The count is final for the first runs; the requeued ones follow.
        failed += f" (first runs; {summary.requeued} requeued, see below)"
    lines += [f"succeeded: {summary.succeeded}", failed]
    if summary.failure_causes:
        lines.append(f"failed by cause: {_format_causes(summary.failure_causes)}")

    lines += [
        f"cancelled: {summary.cancelled}",
        f"requeued: {summary.requeued}, succeeded {summary.requeued_succeeded}, "
        f"failed {summary.requeued_failed}, cancelled {summary.requeued_cancelled}",
        _format_dead_letters(summary),
        f"lost: {summary.lost}",
        f"retried: {summary.retried_tasks} tasks, {summary.retries} retries",
        f"throughput: {summary.throughput:.1f} tasks/s (succeeded and failed)",
        f"wall time: {summary.wall_time:.2f} s",
        "latency from submission, or from the end of a delay, to the final "
        "state (succeeded and failed tasks, requeued ones excluded):",
        f"  {'class':<12} {'tasks':>7} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}",
    ]
    for item in summary.latencies:
        label = f"{item.priority_class.name} ({item.priority_class.priority})"
        lines.append(
            f"  {label:<12} {item.count:>7} {_milliseconds(item.p50):>9} "
            f"{_milliseconds(item.p95):>9} {_milliseconds(item.p99):>9}"
        )

    return "\n".join(lines) + "\n"


def _format_dead_letters(summary: Summary) -> str:
    line = f"dead letters: {summary.dead_letters}, left {summary.dead_letters_left}"
    if summary.dead_letter_causes:
        top = summary.dead_letter_causes[:_TOP_CAUSES]
        line += f", top causes: {_format_causes(top)}"

    return line


def _format_report(report: ShutdownReport, escalated_by_user: int) -> str:
    return (
        f"stop report ({report.mode.value}): "
        f"never started {len(report.never_started)}, "
        f"retries cancelled {len(report.retries_cancelled)}, "
        f"interrupted {len(report.interrupted)}, "
        f"abandoned {len(report.abandoned)}, "
        f"escalated {'yes' if report.escalated else 'no'}, "
        f"cancelled by a second interrupt {escalated_by_user}\n"
    )


class _Interrupts:
    """Counts SIGINT and SIGTERM, and wakes the demo on the first and second."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.signum = signal.SIGINT  # the first signal, once ``first`` is set
        self.first = asyncio.Event()
        self.second = asyncio.Event()
        self._installed: list[signal.Signals] = []
        self._fallback: dict[signal.Signals, Callable[..., object] | int | None] = {}

    def on_signal(self, signum: signal.Signals) -> None:
        if self.first.is_set():
            self.second.set()
            # A third Ctrl-C gets Python's default handler: KeyboardInterrupt.
            self.uninstall()
        else:
            self.signum = signum
            self.first.set()

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._loop.add_signal_handler(signum, self.on_signal, signum)
                self._installed.append(signum)
            except (NotImplementedError, RuntimeError):
                # No add_signal_handler() on this loop (Windows) or thread.
                self._install_fallback(signum)

    def _install_fallback(self, signum: signal.Signals) -> None:
        def handler(received: int, frame: object) -> None:
            self._loop.call_soon_threadsafe(self.on_signal, signal.Signals(received))

        # signal.signal() raises ValueError outside the main thread, where the
        # demo runs without signal handling.
        with contextlib.suppress(ValueError):
            self._fallback[signum] = signal.signal(signum, handler)

    def uninstall(self) -> None:
        for signum in self._installed:
            self._loop.remove_signal_handler(signum)

        self._installed.clear()
        for signum, previous in self._fallback.items():
            signal.signal(signum, previous)

        self._fallback.clear()


@dataclass(slots=True)
class _ProducerWaits:
    """How often and how long the producer waited for room in the queue."""

    count: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class _DeadLetterLog:
    """The dead letters that the queue's ``on_dead_letter`` hook received."""

    task_ids: list[TaskId] = field(default_factory=list)
    causes: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, letter: DeadLetter) -> None:
        self.task_ids.append(letter.task_id)
        self.causes[type(letter.exception).__name__] += 1


class _Progress:
    """Writes a progress line to stderr at a fixed interval."""

    def __init__(
        self,
        queue: AsyncTaskQueue,
        total: Callable[[], int],
        waits: _ProducerWaits | None,
        stream: TextIO,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._queue = queue
        self._total = total
        self._waits = waits
        self._stream = stream
        self._loop = loop
        self._tty = stream.isatty()
        # On a terminal, a line longer than the window would wrap, and "\r"
        # would return only to the start of its last row.
        columns = shutil.get_terminal_size().columns if self._tty else 0
        self._columns = max(1, columns - 1)
        self._started_at = loop.time()
        self._last_at = self._started_at
        self._last_completed = 0
        self._width = 0

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.write()

    def write(self, *, final: bool = False) -> None:
        """Write the current counts; the rate counts succeeded and failed tasks
        since the previous line, or since the start for the ``final`` line."""
        stats = self._queue.stats()
        done = stats.succeeded + stats.failed + stats.cancelled
        completed = stats.succeeded + stats.failed
        now = self._loop.time()
        since, before = self._last_at, self._last_completed
        if final:
            since, before = self._started_at, 0

        rate = (completed - before) / (now - since) if now > since else 0.0
        self._last_at, self._last_completed = now, completed
        total = self._total()
        percent = 100 * done / total
        line = (
            f"progress: {done}/{total} done ({percent:.0f}%), "
            f"{rate:.0f} tasks/s, {stats.retries} retries, "
            f"{stats.running} running, {stats.pending} pending, "
            f"{stats.delayed} delayed, {stats.waiting_retry} waiting to retry, "
            f"{stats.failed} failed, {stats.dead_letters} dead letters"
        )
        if self._waits is not None:
            line += f", producer waited {self._waits.count} times"

        if self._tty:
            # Overwrite the previous line in place.
            line = line[: self._columns]
            padding = " " * max(0, self._width - len(line))
            self._stream.write(f"\r{line}{padding}")
            self._width = len(line)
            if final:
                self.end_line()
        else:
            self._stream.write(line + "\n")

        self._stream.flush()

    def end_line(self) -> None:
        """End the line that a terminal shows, so that other output follows."""
        if self._tty and self._width:
            self._stream.write("\n")
            self._width = 0


class _Demo:
    """One run of the demo: server, client, queue, producer and progress."""

    def __init__(self, config: DemoConfig, out: TextIO, err: TextIO) -> None:
        self.config = config
        self.out = out
        self.err = err
        self.loop = asyncio.get_running_loop()
        self.server = DemoServer(
            seed=config.seed,
            failure_rate=config.failure_rate,
            hang_rate=config.hang_rate,
            mean_latency=config.latency,
            retry_after_share=config.retry_after_share,
            reject_share=config.reject_share,
        )
        self.client: DemoClient  # set by run(), once the server has a port
        self.records: list[RequestRecord] = []
        self.requeued = 0
        self.waits = _ProducerWaits() if config.max_pending > 0 else None
        self.dead_letters = _DeadLetterLog()

    async def run(self, *, handle_signals: bool) -> int:
        config = self.config
        await self.server.start()
        self.client = client = DemoClient(self.server.port, max_idle=config.workers)
        policy = RetryPolicy(
            max_retries=config.retries,
            base_delay=config.backoff,
            max_delay=config.max_backoff,
            jitter=Jitter.FULL,
            retry_on=(ServerError, TimeoutError, ConnectionError),
            rng=random.Random(config.seed),
        )
        queue = AsyncTaskQueue(
            # More workers than requests would only idle, and each costs memory.
            min(config.workers, config.count),
            retry=policy,
            timeout=config.timeout,
            max_results=0,
            max_pending=config.max_pending or None,
            # Room for every failure, so that none is evicted before requeue.
            max_dead_letters=config.count,
            on_dead_letter=self.dead_letters.add,
        )
        interrupts = _Interrupts(self.loop)
        if handle_signals:
            interrupts.install()

        self.err.write(
            f"demo: {_count(config.count, 'request')} to 127.0.0.1:{self.server.port}, "
            f"{_count(config.workers, 'worker')}, "
            f"failure rate {config.failure_rate:g}, "
            f"hang rate {config.hang_rate:g}, timeout {config.timeout:g} s, "
            f"seed {config.seed}; Ctrl-C stops\n"
        )
        try:
            return await self._run_queue(queue, interrupts)
        finally:
            interrupts.uninstall()
            # Returns at once after a normal run, which has stopped the queue.
            await queue.stop(ShutdownMode.CANCEL)
            client.close()
            await self.server.close()

    async def _run_queue(self, queue: AsyncTaskQueue, interrupts: _Interrupts) -> int:
        config = self.config
        await queue.start()
        started_at = self.loop.time()
        progress = _Progress(
            queue,
            lambda: config.count + self.requeued,
            self.waits,
            self.err,
            self.loop,
        )
        progress_task = None
        if config.progress_interval > 0:
            progress_task = self.loop.create_task(
                progress.run(config.progress_interval)
            )

        work = self.loop.create_task(self._work(queue, progress))
        interrupt_waiter = self.loop.create_task(interrupts.first.wait())
        await asyncio.wait(
            (work, interrupt_waiter), return_when=asyncio.FIRST_COMPLETED
        )
        interrupted = interrupts.first.is_set()
        interrupt_waiter.cancel()

        user_cancelled = 0
        if interrupted:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            progress.end_line()
            logger.info("interrupted: stopping the queue in finish_running mode")
            self.err.write(
                "interrupted: finishing the running tasks and cancelling the "
                "rest; press Ctrl-C again to cancel the running tasks\n"
            )
            self.err.flush()
            report, user_cancelled = await self._stop(queue, interrupts, progress)
            logger.info(
                "queue stopped: %s", _format_report(report, user_cancelled).strip()
            )
        else:
            await work
            report = await queue.stop(ShutdownMode.DRAIN)

        await record_outcomes(self.records)
        wall_time = self.loop.time() - started_at
        if progress_task is not None:
            progress_task.cancel()
            await asyncio.gather(progress_task, return_exceptions=True)
            progress.write(final=True)

        summary = self._summarize(queue, wall_time)
        mismatch = _check_counts(queue, summary, self.records, self.dead_letters)
        self.out.write(self._describe())
        self.out.write(format_summary(summary))
        if interrupted:
            self.out.write(_format_report(report, user_cancelled))

        if mismatch:
            self.out.write(mismatch)

        self.out.flush()
        if summary.lost or mismatch:
            return EXIT_LOST

        return 128 + interrupts.signum if interrupted else 0

    def _summarize(self, queue: AsyncTaskQueue, wall_time: float) -> Summary:
        """Summarize the records, with the counts that only the run has."""
        summary = summarize(self.records, wall_time)
        waits = self.waits
        return dataclasses.replace(
            summary,
            dead_letters=len(self.dead_letters.task_ids),
            dead_letters_left=len(queue.dead_letters()),
            dead_letter_causes=tuple(self.dead_letters.causes.most_common()),
            producer_waits=None if waits is None else waits.count,
            producer_wait_time=0.0 if waits is None else waits.seconds,
        )

    async def _stop(
        self, queue: AsyncTaskQueue, interrupts: _Interrupts, progress: _Progress
    ) -> tuple[ShutdownReport, int]:
        """Stop in ``FINISH_RUNNING`` mode, escalating to ``CANCEL`` on a second
        interrupt; return the stop report and how many tasks were running
        when that interrupt came."""
        stop = self.loop.create_task(queue.stop(ShutdownMode.FINISH_RUNNING))
        second = self.loop.create_task(interrupts.second.wait())
        await asyncio.wait((stop, second), return_when=asyncio.FIRST_COMPLETED)
        second.cancel()
        cancelled = 0
        if not stop.done():
            # A later stop("cancel") escalates the stop in progress: the
            # running tasks are cancelled and the report records the escalation.
            cancelled = sum(
                record.handle is not None and record.handle.state is TaskState.RUNNING
                for record in self.records
            )
            progress.end_line()
            logger.info("interrupted again: cancelling %d running tasks", cancelled)
            self.err.write(f"interrupted again: cancelling {cancelled} running tasks\n")
            self.err.flush()
            await queue.stop(ShutdownMode.CANCEL)

        return await stop, cancelled

    async def _work(self, queue: AsyncTaskQueue, progress: _Progress) -> None:
        """Submit every request, wait for them, then requeue the dead letters."""
        await self._submit_all(queue)
        await queue.join()
        if not self.config.requeue_dead:
            return

        count = len(queue.dead_letters())
        progress.end_line()
        if count:
            self.err.write(f"requeue: submitting {count} dead letters again\n")
        else:
            self.err.write("requeue: no dead letters, nothing to submit again\n")
        self.err.flush()
        await self._requeue_dead(queue)
        await queue.join()

    async def _submit_all(self, queue: AsyncTaskQueue) -> None:
        config = self.config
        rng = random.Random(config.seed)
        weights = [c.weight for c in PRIORITY_CLASSES]
        classes = rng.choices(PRIORITY_CLASSES, weights, k=config.count)
        start = self.loop.time()
        for request_id, priority_class in enumerate(classes, start=1):
            if config.rate > 0:
                delay = start + (request_id - 1) / config.rate - self.loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif request_id % _SUBMIT_BATCH == 0:
                await asyncio.sleep(0)

            record = RequestRecord(request_id, priority_class, 0.0)
            if rng.random() < config.delayed_rate:
                record.delay = rng.uniform(0, config.max_delay)

            handle = await self._submit(queue, record)
            record.submitted_at = self.loop.time()
            record.handle = handle
            handle.add_done_callback(functools.partial(self._mark_finished, record))
            self.records.append(record)

    async def _submit(
        self, queue: AsyncTaskQueue, record: RequestRecord
    ) -> TaskHandle[str]:
        """Submit the task of ``record``, counting in ``waits`` a wait for room."""
        submission = queue.submit(
            self._send,
            record,
            priority=record.priority_class.priority,
            delay=record.delay,
        )
        waits = self.waits
        if waits is None:
            return await submission

        # AsyncTaskQueue.submit() suspends only to wait for room under
        # max_pending, so the callback runs only if the submission waited.
        waited = False

        def note_wait() -> None:
            nonlocal waited
            waited = True

        started_at = self.loop.time()
        marker = self.loop.call_soon(note_wait)
        handle = await submission
        marker.cancel()
        if waited:
            waits.count += 1
            waits.seconds += self.loop.time() - started_at

        return handle

    def _mark_finished(self, record: RequestRecord, handle: TaskHandle[str]) -> None:
        record.finished_at = self.loop.time()

    async def _requeue_dead(self, queue: AsyncTaskQueue) -> None:
        """Requeue each dead letter once, each as a new task with its own record."""
        for letter in queue.dead_letters():
            # Every task of the demo is _send(record).
            assert letter.args is not None
            failed = letter.args[0]
            assert isinstance(failed, RequestRecord)

            try:
                handle = await queue.requeue(letter.task_id)
            except TaskNotFoundError as exc:
                # The final count check reports the dead letter as missing.
                logger.error("requeue of task %r failed: %s", letter.task_id, exc)
                continue

            record = RequestRecord(
                failed.request_id,
                failed.priority_class,
                self.loop.time(),
                handle=handle,
                requeued_from=letter.task_id,
            )
            self.records.append(record)
            self.requeued += 1

        logger.info("requeued %d dead letters", self.requeued)

    async def _send(self, record: RequestRecord) -> str:
        record.attempts_sent += 1
        return await self.client.request(record.request_id, record.attempts_sent)

    def _describe(self) -> str:
        config = self.config
        server = self.server
        max_pending = config.max_pending or "unbounded"
        return (
            f"demo: {config.count} requests, {_count(config.workers, 'worker')}, "
            f"failure rate {config.failure_rate:g}, hang rate {config.hang_rate:g}, "
            f"timeout {config.timeout:g} s, retries {config.retries}, "
            f"seed {config.seed}\n"
            f"demo: max pending {max_pending}, delayed rate "
            f"{config.delayed_rate:g} (0 to {config.max_delay:g} s), retry-after "
            f"share {config.retry_after_share:g}, reject share "
            f"{config.reject_share:g}, requeue dead letters "
            f"{'on' if config.requeue_dead else 'off'}\n"
            f"server: {server.requests} requests, {server.errors} error responses "
            f"({server.retry_afters} retry-after, {server.rejections} rejected), "
            f"{server.hangs} hung\n"
        )


def _check_counts(
    queue: AsyncTaskQueue,
    summary: Summary,
    records: Sequence[RequestRecord],
    dead_letters: _DeadLetterLog,
) -> str:
    """Return mismatch lines, or "" if the queue's counts match the handles.

    Checks the totals of ``queue.stats()``, that ``on_dead_letter`` received
    each failed task exactly once, and that ``dead_letters()`` contains
    exactly the failed tasks that were not requeued.
    """
    lines = []
    stats = queue.stats()
    expected = (
        summary.submitted + summary.requeued,
        summary.succeeded + summary.requeued_succeeded,
        summary.failed + summary.requeued_failed,
        summary.cancelled + summary.requeued_cancelled,
    )
    actual = (stats.submitted, stats.succeeded, stats.failed, stats.cancelled)
    if expected != actual:
        lines.append(
            "mismatch: queue.stats() counts (submitted, succeeded, failed, "
            f"cancelled) = {actual}, but the handles show {expected}\n"
        )

    failed = [
        r.handle.id
        for r in records
        if r.handle is not None and r.handle.state is TaskState.FAILED
    ]
    reported = collections.Counter(dead_letters.task_ids)
    if reported != collections.Counter(failed):
        lines.append(
            f"mismatch: on_dead_letter received {reported.total()} dead letters "
            f"for {len(reported)} tasks, but {len(failed)} tasks failed\n"
        )

    requeued = {r.requeued_from for r in records}
    expected_left = {task_id for task_id in failed if task_id not in requeued}
    left = {letter.task_id for letter in queue.dead_letters()}
    if left != expected_left:
        lines.append(
            f"mismatch: dead_letters() holds {len(left)} tasks, but "
            f"{len(expected_left)} failed tasks were not requeued\n"
        )

    return "".join(lines)


async def run_demo(
    config: DemoConfig,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    handle_signals: bool = True,
) -> int:
    """Run the demo and return the exit status: 0, ``EXIT_LOST`` or
    ``EXIT_INTERRUPTED``.

    ``out`` gets the summary and ``err`` the progress lines; they default to
    ``sys.stdout`` and ``sys.stderr``. With ``handle_signals``, SIGINT and
    SIGTERM stop the run gracefully, and a second one cancels running tasks.
    """
    demo = _Demo(config, out or sys.stdout, err or sys.stderr)
    logger.info("demo started: %s", config)
    status = await demo.run(handle_signals=handle_signals)
    logger.info("demo finished with exit status %d", status)
    return status
