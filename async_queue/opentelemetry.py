"""A hook that records the queue's task events as OpenTelemetry metrics.

Install ``opentelemetry-api`` first: ``pip install opentelemetry-api``, or
``pip install ".[opentelemetry]"`` from a clone. The hook uses only the
OpenTelemetry API, so the application chooses the SDK, the readers and the
exporters. From the meter ``async_queue`` it records:

- ``async_queue.tasks.submitted``: tasks accepted by ``submit()``;
- ``async_queue.attempts.started``: attempts started, retries included;
- ``async_queue.retries.scheduled``: failed attempts that will be retried;
- ``async_queue.attempts.timed_out``: attempts that ran past their timeout;
- ``async_queue.tasks.finished``: tasks that reached a final state, with an
  ``outcome`` attribute (``succeeded``, ``failed``, ``cancelled``, ``dropped``);
- ``async_queue.task.wait.duration``: a histogram, in seconds, of the time from
  the moment a task could start to the start of its attempt;
- ``async_queue.task.run.duration``: a histogram, in seconds, of the time each
  attempt ran.

Every measurement has a ``queue`` attribute, so that the hooks of several
queues can share one meter provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

try:
    from opentelemetry.metrics import MeterProvider, get_meter_provider
except ImportError as error:
    raise ImportError(
        "async_queue.opentelemetry needs the opentelemetry-api package; install "
        "it with: pip install opentelemetry-api (from a clone of async_queue: "
        "pip install '.[opentelemetry]')",
        name=error.name,
    ) from error

from . import __version__
from ._metrics import (
    DEFAULT_BUCKETS,
    OUTCOMES,
    MetricsHook,
    Recorders,
    check_buckets,
    check_queue_name,
)

__all__ = ("DEFAULT_BUCKETS", "METER_NAME", "OpenTelemetryHook")

METER_NAME = "async_queue"
"""The name of the meter, the instrumentation scope of every instrument."""


class OpenTelemetryHook(MetricsHook):
    """Count task events and time attempts with OpenTelemetry instruments.

    Args:
        meter_provider: the ``MeterProvider`` to get the meter from; ``None``
            uses the global one of ``opentelemetry.metrics``.
        queue_name: the value of the ``queue`` attribute. Hooks of different
            queues that share a meter provider need different names, or their
            counts add up.
        buckets: upper bounds in seconds of the wait and run time histogram
            buckets, by default ``DEFAULT_BUCKETS`` (0.005 s to 300 s). They
            are the instruments' advisory bucket boundaries. A view configured
            in the SDK takes precedence. The hooks of one meter provider share
            the instruments, so the first hook sets the buckets, and the SDK
            logs a warning for a later hook that passes different ones.

    One hook observes one queue. ``in_flight`` is the number of unfinished
    tasks it keeps a start time for, 0 once the queue has stopped.
    """

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        queue_name: str = "default",
        *,
        buckets: Sequence[float] | None = None,
    ) -> None:
        if meter_provider is None:
            meter_provider = get_meter_provider()
        elif not isinstance(meter_provider, MeterProvider):
            raise TypeError(
                "meter_provider must be an opentelemetry.metrics.MeterProvider "
                f"or None, got {meter_provider!r}"
            )

        queue_name = check_queue_name(queue_name)
        bounds = DEFAULT_BUCKETS if buckets is None else check_buckets(buckets)
        super().__init__(queue_name, _bind(meter_provider, queue_name, bounds))


def _bind(
    meter_provider: MeterProvider, queue_name: str, bounds: tuple[float, ...]
) -> Recorders:
    meter = meter_provider.get_meter(METER_NAME, __version__)
    submitted = meter.create_counter(
        "async_queue.tasks.submitted", "{task}", "Tasks accepted by submit()."
    )
    started = meter.create_counter(
        "async_queue.attempts.started",
        "{attempt}",
        "Attempts started, retries included.",
    )
    retries = meter.create_counter(
        "async_queue.retries.scheduled",
        "{attempt}",
        "Failed attempts that will be retried.",
    )
    timeouts = meter.create_counter(
        "async_queue.attempts.timed_out",
        "{attempt}",
        "Attempts that ran past their timeout.",
    )
    finished = meter.create_counter(
        "async_queue.tasks.finished",
        "{task}",
        "Tasks that reached a final state, by outcome.",
    )
    wait = meter.create_histogram(
        "async_queue.task.wait.duration",
        "s",
        "Time from the moment a task could start to the start of its attempt.",
        explicit_bucket_boundaries_advisory=bounds,
    )
    run = meter.create_histogram(
        "async_queue.task.run.duration",
        "s",
        "Time each attempt ran.",
        explicit_bucket_boundaries_advisory=bounds,
    )

    # Built once: each measurement passes the same mapping.
    attributes = {"queue": queue_name}
    return Recorders(
        submitted=partial(submitted.add, 1, attributes),
        started=partial(started.add, 1, attributes),
        retry_scheduled=partial(retries.add, 1, attributes),
        timed_out=partial(timeouts.add, 1, attributes),
        finished={
            outcome: partial(finished.add, 1, {"queue": queue_name, "outcome": outcome})
            for outcome in OUTCOMES
        },
        wait=partial(wait.record, attributes=attributes),
        run=partial(run.record, attributes=attributes),
    )
