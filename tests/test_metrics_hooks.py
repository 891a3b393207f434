"""The Prometheus and OpenTelemetry hooks: values read back after each path.

Each scenario runs on a loop whose clock moves only by ``advance()``, so the
wait and run times that the hooks record are exact.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, Histogram

from async_queue import (
    AsyncTaskQueue,
    Hook,
    RetryPolicy,
    TaskEvent,
    TaskHandle,
    TaskState,
)
from async_queue._metrics import DEFAULT_BUCKETS, OUTCOMES, MetricsHook, Recorders
from async_queue.opentelemetry import OpenTelemetryHook
from async_queue.prometheus import PrometheusHook
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import until

T = TypeVar("T")


@dataclass
class Snapshot:
    """The values of one queue's metrics, the same for both backends."""

    submitted: int = 0
    started: int = 0
    retries: int = 0
    timeouts: int = 0
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    wait_count: int = 0
    wait_sum: float = 0.0
    run_count: int = 0
    run_sum: float = 0.0


class PrometheusBackend:
    name = "prometheus"

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def make_hook(self, **options: Any) -> MetricsHook:
        return PrometheusHook(self.registry, **options)

    def hook(self, queue_name: str = "q") -> MetricsHook:
        return self.make_hook(queue_name=queue_name)

    def close(self) -> None:
        pass

    def value(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(f"async_queue_{name}", labels)
        assert value is not None, f"no sample {name} {labels}"
        return value

    def snapshot(self, queue_name: str = "q") -> Snapshot:
        def count(name: str, **labels: str) -> int:
            return int(self.value(name, queue=queue_name, **labels))

        return Snapshot(
            submitted=count("tasks_submitted_total"),
            started=count("attempts_started_total"),
            retries=count("retries_scheduled_total"),
            timeouts=count("attempts_timed_out_total"),
            finished={o: count("tasks_finished_total", outcome=o) for o in OUTCOMES},
            wait_count=count("task_wait_seconds_count"),
            wait_sum=self.value("task_wait_seconds_sum", queue=queue_name),
            run_count=count("task_run_seconds_count"),
            run_sum=self.value("task_run_seconds_sum", queue=queue_name),
        )


class OpenTelemetryBackend:
    name = "opentelemetry"

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(
            metric_readers=[self.reader], shutdown_on_exit=False
        )

    def make_hook(self, **options: Any) -> MetricsHook:
        return OpenTelemetryHook(self.provider, **options)

    def hook(self, queue_name: str = "q") -> MetricsHook:
        return self.make_hook(queue_name=queue_name)

    def close(self) -> None:
        self.provider.shutdown()

    def points(self) -> dict[str, list[Any]]:
        """Return the data points of each instrument, by instrument name."""
        data = self.reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        if data is None:
            return found

        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "async_queue"
                for metric in scope.metrics:
                    found[metric.name] = list(metric.data.data_points)

        return found

    def snapshot(self, queue_name: str = "q") -> Snapshot:
        points = self.points()

        def matching(name: str, **attributes: str) -> list[Any]:
            wanted = {"queue": queue_name, **attributes}
            return [p for p in points.get(name, []) if dict(p.attributes) == wanted]

        def count(name: str, **attributes: str) -> int:
            return sum(int(p.value) for p in matching(name, **attributes))

        wait = matching("async_queue.task.wait.duration")
        run = matching("async_queue.task.run.duration")
        return Snapshot(
            submitted=count("async_queue.tasks.submitted"),
            started=count("async_queue.attempts.started"),
            retries=count("async_queue.retries.scheduled"),
            timeouts=count("async_queue.attempts.timed_out"),
            finished={
                o: count("async_queue.tasks.finished", outcome=o) for o in OUTCOMES
            },
            wait_count=sum(p.count for p in wait),
            wait_sum=sum(p.sum for p in wait),
            run_count=sum(p.count for p in run),
            run_sum=sum(p.sum for p in run),
        )


Backend = PrometheusBackend | OpenTelemetryBackend
BACKENDS = (PrometheusBackend, OpenTelemetryBackend)


@pytest.fixture(params=BACKENDS, ids=["prom", "otel"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    made: Backend = request.param()
    yield made
    made.close()


# Scenarios: a queue driven on the virtual clock, with one hook of a backend

Scenario = Callable[[VirtualClockLoop, MetricsHook], Awaitable[None]]


def run_scenario(
    backend: Backend, scenario: Scenario, hook: MetricsHook | None = None
) -> Snapshot:
    """Run ``scenario`` with ``hook``, by default a new one, and return the metrics.

    Afterwards the hook must keep no entry, because every task has ended.
    """
    if hook is None:
        hook = backend.hook()

    run_virtual(lambda loop: scenario(loop, hook))
    assert hook.in_flight == 0
    return backend.snapshot()


def finished(**counts: int) -> dict[str, int]:
    return dict.fromkeys(OUTCOMES, 0) | counts


def one_attempt(outcome: str, run_sum: float = 0.0, **counts: int) -> Snapshot:
    """Return the metrics of one task that ran one attempt and ended in ``outcome``."""
    return Snapshot(
        submitted=1,
        started=1,
        finished=finished(**{outcome: 1}),
        wait_count=1,
        run_count=1,
        run_sum=run_sum,
        **counts,
    )


async def reach(handle: TaskHandle[Any], state: TaskState) -> None:
    await until(lambda: handle.state is state)


async def start(
    queue: AsyncTaskQueue, fn: Callable[..., Awaitable[T]], *args: Any, **options: Any
) -> TaskHandle[T]:
    """Submit ``fn(*args)`` and wait until its first attempt runs."""
    handle = await queue.submit(fn, *args, **options)
    await reach(handle, TaskState.RUNNING)
    return handle


async def job() -> str:
    return "done"


async def sleeps(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def hangs() -> None:
    await asyncio.Event().wait()


async def refused() -> None:
    raise ConnectionError("refused")


def fails_once() -> Callable[[], Awaitable[str]]:
    """Return a task function that raises on its first call and returns "ok"."""
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("refused")
        return "ok"

    return flaky


NO_RETRY = RetryPolicy(max_retries=0)
# Three retries after a fixed 10 s backoff, long enough to act during it.
LONG_BACKOFF = RetryPolicy(max_retries=3, base_delay=10, jitter="none")


# Every path to a final state


def test_success_records_wait_and_run(backend: Backend) -> None:
    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        async with AsyncTaskQueue(1, hooks=[hook]) as queue:
            first = await start(queue, sleeps, 2)
            second = await queue.submit(sleeps, 3)
            assert hook.in_flight == 2
            loop.advance(2)
            await first
            await reach(second, TaskState.RUNNING)
            loop.advance(3)
            await second

    assert run_scenario(backend, scenario) == Snapshot(
        submitted=2,
        started=2,
        finished=finished(succeeded=2),
        wait_count=2,
        wait_sum=2.0,
        run_count=2,
        run_sum=5.0,
    )


def test_failure_records_run(backend: Backend) -> None:
    async def fails_later() -> None:
        await asyncio.sleep(1.5)
        raise ValueError("bad input")

    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        async with AsyncTaskQueue(1, retry=NO_RETRY, hooks=[hook]) as queue:
            handle = await start(queue, fails_later)
            loop.advance(1.5)
            with pytest.raises(ValueError, match="bad input"):
                await handle

    assert run_scenario(backend, scenario) == one_attempt("failed", run_sum=1.5)


def test_retry_wait_counts_from_backoff_end(backend: Backend) -> None:
    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        policy = RetryPolicy(max_retries=1, base_delay=4, jitter="none")
        async with AsyncTaskQueue(1, retry=policy, hooks=[hook]) as queue:
            handle = await queue.submit(fails_once())
            await reach(handle, TaskState.WAITING_RETRY)
            assert hook.in_flight == 1
            # The backoff ends at 4 s; the attempt starts at 5 s, so it waited 1 s.
            loop.advance(5)
            assert await handle == "ok"

    assert run_scenario(backend, scenario) == Snapshot(
        submitted=1,
        started=2,
        retries=1,
        finished=finished(succeeded=1),
        wait_count=2,
        wait_sum=1.0,
        run_count=2,
        run_sum=0.0,
    )


def test_timeout_counts_then_fails(backend: Backend) -> None:
    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        async with AsyncTaskQueue(1, retry=NO_RETRY, hooks=[hook]) as queue:
            handle = await start(queue, hangs, timeout=2)
            loop.advance(2)
            with pytest.raises(TimeoutError):
                await handle

    expected = one_attempt("failed", run_sum=2.0, timeouts=1)
    assert run_scenario(backend, scenario) == expected


def test_cancel_while_queued(backend: Backend) -> None:
    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        release = asyncio.Event()
        async with AsyncTaskQueue(1, hooks=[hook]) as queue:
            running = await start(queue, release.wait)
            queued = await queue.submit(release.wait)
            assert queued.cancel()
            assert hook.in_flight == 1
            loop.advance(1)
            release.set()
            await running

        assert queued.state is TaskState.CANCELLED

    assert run_scenario(backend, scenario) == Snapshot(
        submitted=2,
        started=1,
        finished=finished(succeeded=1, cancelled=1),
        wait_count=1,
        run_count=1,
        run_sum=1.0,
    )


def test_cancel_while_running(backend: Backend) -> None:
    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        async with AsyncTaskQueue(1, hooks=[hook]) as queue:
            handle = await start(queue, hangs)
            loop.advance(3)
            assert handle.cancel()
            await queue.join()

        assert handle.state is TaskState.CANCELLED

    assert run_scenario(backend, scenario) == one_attempt("cancelled", run_sum=3.0)


def test_cancel_during_backoff(backend: Backend) -> None:
    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        async with AsyncTaskQueue(1, retry=LONG_BACKOFF, hooks=[hook]) as queue:
            handle = await queue.submit(refused)
            await reach(handle, TaskState.WAITING_RETRY)
            assert handle.cancel()

        assert handle.state is TaskState.CANCELLED

    assert run_scenario(backend, scenario) == one_attempt("cancelled", retries=1)


def test_dropped_at_stop(backend: Backend) -> None:
    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        queue = AsyncTaskQueue(1, retry=LONG_BACKOFF, hooks=[hook])
        await queue.start()
        backing_off = await queue.submit(refused)
        await reach(backing_off, TaskState.WAITING_RETRY)
        queue.pause()
        pending = await queue.submit(job)
        delayed = await queue.submit(job, delay=60)
        assert hook.in_flight == 3
        report = await queue.stop()

        assert report.never_started == (pending, delayed)
        assert report.retries_cancelled == (backing_off,)

    assert run_scenario(backend, scenario) == Snapshot(
        submitted=3,
        started=1,
        retries=1,
        finished=finished(dropped=3),
        wait_count=1,
        run_count=1,
    )


def test_abandoned_at_stop(backend: Backend) -> None:
    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        release = asyncio.Event()
        cancels = 0

        async def ignores_cancel() -> None:
            nonlocal cancels
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    cancels += 1

        queue = AsyncTaskQueue(1, hooks=[hook])
        await queue.start()
        handle = await start(queue, ignores_cancel)
        stopping = asyncio.create_task(queue.stop(grace=2))
        # The stop arms its grace timer in the step that cancels the task.
        await until(lambda: cancels == 1)
        assert hook.in_flight == 1
        loop.advance(2)
        report = await stopping

        assert report.abandoned == (handle,)
        assert hook.in_flight == 0
        release.set()
        await until(lambda: len(asyncio.all_tasks()) == 1)

    assert run_scenario(backend, scenario) == one_attempt("cancelled", run_sum=2.0)


def test_delayed_task_records_no_first_wait(backend: Backend) -> None:
    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        async with AsyncTaskQueue(1, hooks=[hook]) as queue:
            handle = await queue.submit(job, delay=10)
            loop.advance(10)
            assert await handle == "done"

    assert run_scenario(backend, scenario) == Snapshot(
        submitted=1,
        started=1,
        finished=finished(succeeded=1),
        wait_count=0,
        run_count=1,
    )


def test_cancel_inside_on_submitted(backend: Backend) -> None:
    """A hook listed first cancels the task before this hook hears of it."""

    class CancelsAll(Hook):
        def __init__(self) -> None:
            self.queue: AsyncTaskQueue | None = None

        def on_submitted(self, event: TaskEvent) -> None:
            assert self.queue is not None
            self.queue.cancel(event.task_id)

    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        canceller = CancelsAll()
        async with AsyncTaskQueue(1, hooks=[canceller, hook]) as queue:
            canceller.queue = queue
            handles = [await queue.submit(job) for _ in range(3)]
            assert hook.in_flight == 0

        assert [h.state for h in handles] == [TaskState.CANCELLED] * 3

    assert run_scenario(backend, scenario) == Snapshot(
        submitted=3,
        finished=finished(cancelled=3),
    )


# Failing backends, sharing and naming


def fail(*args: object) -> None:
    raise RuntimeError("metrics backend down")


# Instruments whose every update raises, like those of a backend that is down.
BROKEN = Recorders(fail, fail, fail, fail, dict.fromkeys(OUTCOMES, fail), fail, fail)


def test_broken_backend_loses_no_task(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    hook = backend.hook()
    hook._recorders = BROKEN

    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        policy = RetryPolicy(max_retries=1, base_delay=0)
        async with AsyncTaskQueue(1, retry=policy, hooks=[hook]) as queue:
            handle = await queue.submit(fails_once())
            assert await handle == "ok"

        assert handle.attempts == 2

    caplog.set_level(logging.ERROR, logger="async_queue")
    assert run_scenario(backend, scenario, hook) == Snapshot()
    failures = [r for r in caplog.records if "hook" in r.getMessage()]
    # submitted, started, retry scheduled, started, succeeded
    assert len(failures) == 5
    for record in failures:
        assert record.exc_info is not None
        assert str(record.exc_info[1]) == "metrics backend down"


def test_queues_share_one_backend(backend: Backend) -> None:
    emails, reports = backend.hook("emails"), backend.hook("reports")

    async def main(loop: VirtualClockLoop) -> None:
        async with (
            AsyncTaskQueue(1, hooks=[emails]) as first,
            AsyncTaskQueue(1, hooks=[reports]) as second,
        ):
            for _ in range(2):
                await first.submit(job)
            for _ in range(5):
                await second.submit(job)

    run_virtual(main)
    assert backend.snapshot("emails").submitted == 2
    assert backend.snapshot("emails").finished == finished(succeeded=2)
    assert backend.snapshot("reports").submitted == 5
    assert backend.snapshot("reports").finished == finished(succeeded=5)


def test_prometheus_same_name_adds_up() -> None:
    backend = PrometheusBackend()
    first, second = backend.hook(), backend.hook()

    async def main(loop: VirtualClockLoop) -> None:
        for hook in (first, second):
            async with AsyncTaskQueue(1, hooks=[hook]) as queue:
                await queue.submit(job)

    run_virtual(main)
    assert backend.snapshot().submitted == 2


def test_prometheus_custom_buckets_and_namespace() -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry, "jobs", "q", buckets=[1, 10])

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, hooks=[hook]) as queue:
            handle = await start(queue, sleeps, 5)
            loop.advance(5)
            await handle

    run_virtual(main)

    def bucket(le: str) -> float | None:
        labels = {"queue": "q", "le": le}
        return registry.get_sample_value("jobs_task_run_seconds_bucket", labels)

    assert bucket("1.0") == 0
    assert bucket("10.0") == 1
    assert bucket("+Inf") == 1
    assert registry.get_sample_value("async_queue_tasks_submitted_total") is None


def test_prometheus_bucket_conflict_rejected() -> None:
    registry = CollectorRegistry()
    PrometheusHook(registry, queue_name="a", buckets=[1, 10])
    PrometheusHook(registry, queue_name="b")
    PrometheusHook(registry, queue_name="c", buckets=[1.0, 10.0])
    with pytest.raises(ValueError, match="already have the buckets"):
        PrometheusHook(registry, queue_name="d", buckets=[1, 5])


def test_failed_prometheus_hook_registers_nothing() -> None:
    """A PrometheusHook that fails to register leaves the registry as it was.

    The hook registers its seven metric families one at a time. When the
    last name is taken, it unregisters the first six, so a second attempt
    fails on the same name and not on one the hook itself took.
    """
    registry = CollectorRegistry()
    Histogram(
        "async_queue_task_run_seconds", "Taken by the application.", registry=registry
    )
    before = {family.name for family in registry.collect()}

    with pytest.raises(ValueError, match="async_queue_task_run_seconds"):
        PrometheusHook(registry)

    assert {family.name for family in registry.collect()} == before
    with pytest.raises(ValueError, match="async_queue_task_run_seconds"):
        PrometheusHook(registry)


def test_prometheus_default_registry() -> None:
    from prometheus_client import REGISTRY

    name = "async_queue_tasks_submitted_total"
    labels = {"queue": "default-registry"}
    hook = PrometheusHook(queue_name="default-registry")
    before = REGISTRY.get_sample_value(name, labels)
    hook.on_submitted(TaskEvent(1, "job", 0, 0, TaskState.PENDING, 0.0))
    after = REGISTRY.get_sample_value(name, labels)
    assert before is not None
    assert after == before + 1
    assert repr(hook) == "PrometheusHook(queue_name='default-registry')"


def test_opentelemetry_histogram_buckets() -> None:
    default, custom = OpenTelemetryBackend(), OpenTelemetryBackend()
    hooks = [
        default.hook(),
        OpenTelemetryHook(custom.provider, "custom", buckets=[0.5, 2]),
    ]
    for hook in hooks:
        hook.on_submitted(TaskEvent(1, "job", 0, 0, TaskState.PENDING, 0.0))
        hook.on_started(TaskEvent(1, "job", 0, 1, TaskState.RUNNING, 1.25))

    (default_point,) = default.points()["async_queue.task.wait.duration"]
    (custom_point,) = custom.points()["async_queue.task.wait.duration"]
    assert tuple(default_point.explicit_bounds) == DEFAULT_BUCKETS
    assert tuple(custom_point.explicit_bounds) == (0.5, 2.0)
    assert tuple(custom_point.bucket_counts) == (0, 1, 0)
    assert custom_point.sum == 1.25
    assert repr(hooks[1]) == "OpenTelemetryHook(queue_name='custom')"
    default.close()
    custom.close()


def test_events_without_start_record_no_run(backend: Backend) -> None:
    """A hook fed only part of a task's events still counts, and keeps nothing."""
    hook = backend.hook()
    hook.on_retry_scheduled(
        TaskEvent(7, "job", 0, 1, TaskState.WAITING_RETRY, 5.0, delay=1.0)
    )
    assert hook.in_flight == 1
    hook.on_started(TaskEvent(7, "job", 0, 2, TaskState.RUNNING, 6.5))
    hook.on_succeeded(TaskEvent(7, "job", 0, 2, TaskState.SUCCEEDED, 7.0))

    assert hook.in_flight == 0
    assert backend.snapshot() == Snapshot(
        started=1,
        retries=1,
        finished=finished(succeeded=1),
        wait_count=1,
        wait_sum=0.5,
        run_count=1,
        run_sum=0.5,
    )


def test_opentelemetry_global_provider_is_default() -> None:
    # Without an SDK installed as the global provider, the API's proxy
    # provider hands out instruments that record nothing.
    hook = OpenTelemetryHook(queue_name="global")
    hook.on_submitted(TaskEvent(1, "job", 0, 0, TaskState.PENDING, 0.0))
    assert hook.in_flight == 1


# Bad input and missing libraries


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"queue_name": ""}, ValueError, "queue_name must not be empty"),
        ({"queue_name": 3}, TypeError, "queue_name must be a str, got 3"),
        ({"buckets": []}, ValueError, "strictly increasing"),
        ({"buckets": [2, 1]}, ValueError, "strictly increasing"),
        ({"buckets": [1, 1]}, ValueError, "strictly increasing"),
        ({"buckets": [0, 1]}, ValueError, "finite and > 0, got 0"),
        ({"buckets": [1, float("inf")]}, ValueError, "finite and > 0, got inf"),
        ({"buckets": [1, float("nan")]}, ValueError, "finite and > 0, got nan"),
        ({"buckets": "1,2"}, TypeError, "sequence of upper bounds"),
        ({"buckets": [True]}, TypeError, "bucket bounds must be numbers, got True"),
        ({"buckets": ["1"]}, TypeError, "bucket bounds must be numbers, got '1'"),
    ],
)
def test_bad_arguments_rejected(
    backend: Backend, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        backend.make_hook(**kwargs)


def test_prometheus_bad_registry_and_namespace() -> None:
    with pytest.raises(TypeError, match="registry must be a prometheus_client"):
        PrometheusHook("registry")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="namespace must be a str, got 7"):
        PrometheusHook(CollectorRegistry(), 7)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("namespace", "suggestion"),
    [("bad-name", "bad_name"), ("1x", "_1x"), ("jobs queue", "jobs_queue")],
)
def test_prometheus_rejects_namespace_outside_metric_names(
    namespace: str, suggestion: str
) -> None:
    registry = CollectorRegistry()
    with pytest.raises(ValueError) as info:
        PrometheusHook(registry, namespace)

    assert repr(namespace) in str(info.value)
    assert str(info.value).endswith(f"use for example {suggestion!r}")
    assert list(registry.collect()) == []


@pytest.mark.parametrize("namespace", ["", "app:jobs", "_private", "Queue2"])
def test_prometheus_takes_metric_name_namespaces(namespace: str) -> None:
    registry = CollectorRegistry()
    PrometheusHook(registry, namespace)

    prefix = f"{namespace}_" if namespace else ""
    names = {metric.name for metric in registry.collect()}
    assert f"{prefix}tasks_submitted" in names


def test_opentelemetry_bad_provider() -> None:
    with pytest.raises(TypeError, match="meter_provider must be an opentelemetry"):
        OpenTelemetryHook("provider")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("module", "library", "package", "extra"),
    [
        (
            "async_queue.prometheus",
            "prometheus_client",
            "prometheus-client",
            "prometheus",
        ),
        (
            "async_queue.opentelemetry",
            "opentelemetry.metrics",
            "opentelemetry-api",
            "opentelemetry",
        ),
    ],
)
def test_missing_library_names_package(
    monkeypatch: pytest.MonkeyPatch, module: str, library: str, package: str, extra: str
) -> None:
    # None in sys.modules makes the next import of that name fail.
    monkeypatch.setitem(sys.modules, library, None)
    monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ImportError) as caught:
        importlib.import_module(module)

    message = str(caught.value)
    assert f"pip install {package} (" in message
    assert f"pip install '.[{extra}]'" in message


def test_core_imports_no_metrics_library() -> None:
    code = (
        "import sys, async_queue\n"
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('prometheus_client', 'opentelemetry')))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "[]"


# Properties

Behaviour = str  # "ok", "fail", "flaky", "cancel"


@settings(max_examples=30, deadline=None)
@given(
    make_backend=st.sampled_from(BACKENDS),
    behaviours=st.lists(
        st.sampled_from(["ok", "fail", "flaky", "cancel"]), min_size=1, max_size=12
    ),
    workers=st.integers(1, 4),
)
def test_counts_match_outcomes(
    make_backend: Callable[[], Backend], behaviours: list[Behaviour], workers: int
) -> None:
    """Counters agree with the handles, and the hook keeps nothing afterwards."""
    handles: list[TaskHandle[None]] = []

    async def scenario(loop: VirtualClockLoop, hook: MetricsHook) -> None:
        failed_once: set[int] = set()
        release = asyncio.Event()

        async def task(index: int, behaviour: Behaviour) -> None:
            if behaviour == "cancel":
                await release.wait()
            elif behaviour == "fail" or (
                behaviour == "flaky" and index not in failed_once
            ):
                failed_once.add(index)
                raise ConnectionError(index)

        policy = RetryPolicy(max_retries=1, base_delay=0, retry_on=ConnectionError)
        async with AsyncTaskQueue(workers, retry=policy, hooks=[hook]) as queue:
            for index, behaviour in enumerate(behaviours):
                handles.append(await queue.submit(task, index, behaviour))
            for handle, behaviour in zip(handles, behaviours, strict=True):
                if behaviour == "cancel":
                    handle.cancel()
            release.set()
            await queue.join()

    backend = make_backend()
    try:
        snapshot = run_scenario(backend, scenario)
    finally:
        backend.close()

    states = [h.state for h in handles]
    attempts = sum(h.attempts for h in handles)
    by_state = {
        "succeeded": states.count(TaskState.SUCCEEDED),
        "failed": states.count(TaskState.FAILED),
        "cancelled": states.count(TaskState.CANCELLED),
        "dropped": 0,
    }
    assert snapshot.submitted == len(behaviours)
    assert snapshot.finished == by_state
    assert snapshot.started == attempts
    assert snapshot.wait_count == attempts
    assert snapshot.run_count == attempts
    assert snapshot.retries == sum(max(h.attempts - 1, 0) for h in handles)
