"""A hook that exports the queue's task events as Prometheus metrics.

Install ``prometheus-client`` first: ``pip install prometheus-client``, or
``pip install ".[prometheus]"`` from a clone. With the default namespace the
hook maintains:

- ``async_queue_tasks_submitted_total``: tasks accepted by ``submit()``;
- ``async_queue_attempts_started_total``: attempts started, retries included;
- ``async_queue_retries_scheduled_total``: failed attempts that will be retried;
- ``async_queue_attempts_timed_out_total``: attempts that ran past their timeout;
- ``async_queue_tasks_finished_total``: tasks that reached a final state, by
  ``outcome`` (``succeeded``, ``failed``, ``cancelled``, ``dropped``);
- ``async_queue_task_wait_seconds``: a histogram of the seconds from the moment
  a task could start to the start of its attempt;
- ``async_queue_task_run_seconds``: a histogram of the seconds each attempt ran.

Every metric has a ``queue`` label, so that the hooks of several queues can
share one registry.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
except ImportError as error:
    raise ImportError(
        "async_queue.prometheus needs the prometheus-client package; install it "
        "with: pip install prometheus-client (from a clone of async_queue: "
        "pip install '.[prometheus]')",
        name=error.name,
    ) from error

from ._metrics import (
    DEFAULT_BUCKETS,
    OUTCOMES,
    MetricsHook,
    Recorders,
    check_buckets,
    check_queue_name,
)

__all__ = ("DEFAULT_BUCKETS", "PrometheusHook")

# The classic Prometheus metric name, of which a namespace is the first part.
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass(frozen=True)
class _Families:
    """The metric families of one namespace in one registry."""

    submitted: Counter
    started: Counter
    retries: Counter
    timeouts: Counter
    finished: Counter
    wait: Histogram
    run: Histogram
    buckets: tuple[float, ...]


# prometheus_client rejects a second metric of the same name in a registry, so
# the hooks of several queues share the families created by the first one.
_families: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Families]] = (
    weakref.WeakKeyDictionary()
)
_families_lock = threading.Lock()


def _create_families(
    registry: CollectorRegistry, namespace: str, buckets: tuple[float, ...]
) -> _Families:
    created: list[Counter | Histogram] = []
    try:
        return _register_families(registry, namespace, buckets, created)
    except BaseException:
        # A name that is taken fails one family: the ones registered before it
        # go again, so that the registry is as it was.
        for collector in created:
            registry.unregister(collector)
        raise


def _register_families(
    registry: CollectorRegistry,
    namespace: str,
    buckets: tuple[float, ...],
    created: list[Counter | Histogram],
) -> _Families:
    def counter(name: str, documentation: str, *labels: str) -> Counter:
        family = Counter(
            name,
            documentation,
            ["queue", *labels],
            namespace=namespace,
            registry=registry,
        )
        created.append(family)
        return family

    def histogram(name: str, documentation: str) -> Histogram:
        family = Histogram(
            name,
            documentation,
            ["queue"],
            namespace=namespace,
            registry=registry,
            buckets=buckets,
        )
        created.append(family)
        return family

    return _Families(
        submitted=counter("tasks_submitted", "Tasks accepted by submit()."),
        started=counter("attempts_started", "Attempts started, retries included."),
        retries=counter("retries_scheduled", "Failed attempts that will be retried."),
        timeouts=counter("attempts_timed_out", "Attempts that ran past their timeout."),
        finished=counter(
            "tasks_finished", "Tasks that reached a final state, by outcome.", "outcome"
        ),
        wait=histogram(
            "task_wait_seconds",
            "Seconds from the moment a task could start to the start of its attempt.",
        ),
        run=histogram("task_run_seconds", "Seconds each attempt ran."),
        buckets=buckets,
    )


def _get_families(
    registry: CollectorRegistry, namespace: str, buckets: tuple[float, ...] | None
) -> _Families:
    with _families_lock:
        by_namespace = _families.setdefault(registry, {})
        families = by_namespace.get(namespace)
        if families is None:
            families = _create_families(registry, namespace, buckets or DEFAULT_BUCKETS)
            by_namespace[namespace] = families
        elif buckets is not None and buckets != families.buckets:
            raise ValueError(
                f"the histograms of namespace {namespace!r} in this registry "
                f"already have the buckets {families.buckets}, not {buckets}; "
                "pass the same buckets or none"
            )

        return families


class PrometheusHook(MetricsHook):
    """Count task events and time attempts in a Prometheus registry.

    Args:
        registry: the ``CollectorRegistry`` to register the metrics in;
            ``None`` uses ``prometheus_client.REGISTRY``.
        namespace: the prefix of every metric name, itself a metric name
            (letters, digits, ``_`` and ``:``), or ``""`` for none.
        queue_name: the value of the ``queue`` label. Hooks of different
            queues that share a registry need different names, or their counts
            add up.
        buckets: upper bounds in seconds of the wait and run time histogram
            buckets, by default ``DEFAULT_BUCKETS`` (0.005 s to 300 s).
            All hooks of one namespace in one registry share the histograms,
            so the first hook sets them.

    One hook observes one queue. ``in_flight`` is the number of unfinished
    tasks it keeps a start time for, 0 once the queue has stopped.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "async_queue",
        queue_name: str = "default",
        *,
        buckets: Sequence[float] | None = None,
    ) -> None:
        if registry is None:
            registry = REGISTRY
        elif not isinstance(registry, CollectorRegistry):
            raise TypeError(
                "registry must be a prometheus_client.CollectorRegistry or None, "
                f"got {registry!r}"
            )

        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, got {namespace!r}")
        if namespace and not _METRIC_NAME.fullmatch(namespace):
            # prometheus-client would take it and rewrite it on exposition,
            # where two such namespaces could name the same series.
            suggestion = re.sub(r"[^a-zA-Z0-9_:]", "_", namespace)
            if suggestion[0].isdigit():
                suggestion = "_" + suggestion
            raise ValueError(
                "namespace must be a Prometheus metric name: letters, digits, "
                f"'_' and ':', not starting with a digit, got {namespace!r}; "
                f"use for example {suggestion!r}"
            )

        queue_name = check_queue_name(queue_name)
        bounds = None if buckets is None else check_buckets(buckets)
        families = _get_families(registry, namespace, bounds)
        super().__init__(queue_name, _bind(families, queue_name))


def _bind(families: _Families, queue: str) -> Recorders:
    # The children are bound to this queue's label values once, so that each
    # event costs one increment or observation per metric.
    return Recorders(
        submitted=families.submitted.labels(queue=queue).inc,
        started=families.started.labels(queue=queue).inc,
        retry_scheduled=families.retries.labels(queue=queue).inc,
        timed_out=families.timeouts.labels(queue=queue).inc,
        finished={
            outcome: families.finished.labels(queue=queue, outcome=outcome).inc
            for outcome in OUTCOMES
        },
        wait=families.wait.labels(queue=queue).observe,
        run=families.run.labels(queue=queue).observe,
    )
