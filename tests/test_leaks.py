"""Leaks: memory, references, tasks and timers left behind by finished work.

Once the result store and the dead-letter store have evicted a finished task,
nothing of it may stay alive: not its handle, coroutine function, captured
objects, arguments, result, exception or the locals of its attempts. A stopped
queue leaves no asyncio task running and no timer that refers to it. The async
tests run on asyncio's event loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import tracemalloc
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    RetryPolicy,
    ShutdownMode,
    TaskHandle,
    TaskNotFoundError,
    TaskState,
)
from tests.helpers import until

pytestmark = pytest.mark.every_loop

NO_RETRY = RetryPolicy(max_retries=0)
ONE_RETRY = RetryPolicy(max_retries=1, base_delay=0, jitter="none")
PARKED = RetryPolicy(max_retries=1, base_delay=60, jitter="none")


class Payload:
    """An argument, result or captured object that supports weak references."""


class PlannedError(Exception):
    """The failure that a test task raises on purpose."""


@pytest.fixture
def quiet_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the queue's log records out of pytest's log capture.

    A captured record keeps its exception, and through its traceback the
    frames, arguments and queue that these tests expect to be freed.
    """
    monkeypatch.setattr(logging.getLogger("async_queue"), "disabled", True)


def assert_collectable(reference: weakref.ref[Any]) -> None:
    gc.collect()
    assert reference() is None


async def test_marked_module_runs_on_each_loop(request: pytest.FixtureRequest) -> None:
    loop_type = type(asyncio.get_running_loop())

    assert loop_type.__module__.split(".")[0] == request.node.callspec.id


# Memory over many tasks

# The warm-up fills the stores, and runs long enough for the task table's dict,
# whose ids come and go, to grow to the size it then keeps.
WARMUP_TASKS = 40_000
# Tasks per run, by event loop. One run of 200,000 tasks under tracemalloc
# takes about 10 s, so the uvloop run is shorter to keep this file near 20 s.
TOTAL_TASKS = {"asyncio": 200_000, "uvloop": 60_000}
BATCH = 5_000  # tasks in flight at once: five kinds, BATCH // 5 of each


async def succeeds() -> None:
    return None


async def fails() -> None:
    raise PlannedError("planned failure")


async def hangs() -> None:
    await asyncio.Event().wait()


async def fails_once(attempts: list[int]) -> None:
    attempts.append(len(attempts) + 1)
    if len(attempts) == 1:
        raise PlannedError("planned failure on the first attempt")


async def run_mixed(queue: AsyncTaskQueue, count: int) -> None:
    """Run ``count`` tasks that succeed, fail, time out, retry or get cancelled."""
    for _ in range(count // BATCH):
        to_cancel = []
        for _ in range(BATCH // 5):
            queue.submit_nowait(succeeds)
            queue.submit_nowait(fails)
            queue.submit_nowait(hangs, timeout=1e-6)
            queue.submit_nowait(fails_once, [], retry=ONE_RETRY)
            to_cancel.append(queue.submit_nowait(hangs))

        # One loop step starts the first tasks, so that some of the cancelled
        # tasks are running and the rest are still pending.
        await asyncio.sleep(0)
        for handle in to_cancel:
            handle.cancel()

        del to_cancel
        await queue.join()


def traced_memory() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@contextlib.contextmanager
def loop_debug_off() -> Iterator[None]:
    """Turn off asyncio debug mode for a block, then restore it.

    Debug mode records a creation traceback for every future and timer, which
    makes a run of 200,000 tasks several times slower. Those records are freed
    with their objects, so they do not change what these tests measure.
    """
    loop = asyncio.get_running_loop()
    debug = loop.get_debug()
    loop.set_debug(False)
    try:
        yield
    finally:
        loop.set_debug(debug)


# Coverage's line tracer would make this run three times slower, and the
# other tests cover the same lines.
@pytest.mark.no_cover
@pytest.mark.usefixtures("quiet_log")
async def test_memory_flat_over_mixed_outcomes(request: pytest.FixtureRequest) -> None:
    """Traced memory does not grow with the number of finished tasks.

    The warm-up fills the result store (10,000 tasks by default) and the
    dead-letter store (1,000). After that, every finished task evicts one, so
    the tasks that follow must leave the traced memory where it was. A single
    leaked handle per task would add hundreds of bytes per task.
    """
    total = TOTAL_TASKS[request.node.callspec.id]
    tracemalloc.start()
    try:
        with loop_debug_off():
            async with AsyncTaskQueue(retry=NO_RETRY) as queue:
                await run_mixed(queue, WARMUP_TASKS)
                after_warmup = traced_memory()
                await run_mixed(queue, total - WARMUP_TASKS)
                after_all = traced_memory()
                stats = queue.stats()
    finally:
        tracemalloc.stop()

    per_task = (after_all - after_warmup) / (total - WARMUP_TASKS)
    fifth = total // 5

    # The traced memory includes the stores that the warm-up filled.
    assert after_warmup > 1_000_000
    assert per_task < 2.0, f"{per_task:.2f} bytes retained per finished task"
    assert stats.submitted == total
    assert stats.succeeded == 2 * fifth
    assert stats.failed == 2 * fifth
    assert stats.cancelled == fifth
    assert stats.retries == fifth
    assert stats.retained == 10_000
    assert stats.dead_letters == 1_000


# Weak references after eviction


class Watched:
    """Weak references to the objects one task touched, by name."""

    def __init__(self) -> None:
        self.references: dict[str, weakref.ref[Any]] = {}

    def add(self, name: str, obj: object) -> None:
        self.references[name] = weakref.ref(obj)

    def alive(self) -> list[str]:
        """Return the names of the objects still alive; run gc.collect() first."""
        return sorted(name for name, ref in self.references.items() if ref())


def make_task(outcome: str, watched: Watched) -> Callable[[Payload], Awaitable[Any]]:
    """Return a coroutine function that ends in ``outcome``, a closure.

    Each attempt registers a local object and the objects it raises or
    returns, so that a test can check that they are all freed.
    """
    captured = Payload()
    watched.add("captured", captured)
    attempt = 0

    async def task(argument: Payload) -> Payload:
        nonlocal attempt
        attempt += 1
        local = Payload()
        watched.add(f"local of attempt {attempt}", local)
        if outcome in ("fails", "fails_after_retry"):
            error = PlannedError(captured, argument, local)
            watched.add(f"exception of attempt {attempt}", error)
            raise error

        if outcome == "cancel_suppressed":
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
        elif outcome != "succeeds":
            await asyncio.Event().wait()  # timed out or cancelled

        result = Payload()
        watched.add("result", result)
        return result

    watched.add("coroutine function", task)
    return task


OUTCOMES = {
    "succeeds": TaskState.SUCCEEDED,
    "fails": TaskState.FAILED,
    "fails_after_retry": TaskState.FAILED,
    "times_out": TaskState.FAILED,
    "cancelled_pending": TaskState.CANCELLED,
    "cancelled_running": TaskState.CANCELLED,
    "cancel_suppressed": TaskState.CANCELLED,
}


async def drive_to_outcome(
    queue: AsyncTaskQueue,
    outcome: str,
    fn: Callable[[Payload], Awaitable[Any]],
    argument: Payload,
) -> TaskHandle[Any]:
    """Submit ``fn(argument)`` to a one-worker queue and bring it to ``outcome``."""
    if outcome == "cancelled_pending":
        queue.pause()

    retry = ONE_RETRY if outcome == "fails_after_retry" else NO_RETRY
    timeout = 0.001 if outcome == "times_out" else None
    handle = await queue.submit(fn, argument, retry=retry, timeout=timeout)
    if outcome in ("cancelled_running", "cancel_suppressed"):
        await until(lambda: handle.state is TaskState.RUNNING)

    if outcome.startswith("cancel"):
        handle.cancel()

    queue.resume()
    await queue.join()
    return handle


@pytest.mark.usefixtures("quiet_log")
@pytest.mark.parametrize("outcome", list(OUTCOMES))
async def test_evicted_task_leaves_nothing(outcome: str) -> None:
    """After eviction from both stores, no object of the task is alive."""
    watched = Watched()
    async with AsyncTaskQueue(1, max_results=1, max_dead_letters=1) as queue:
        fn = make_task(outcome, watched)
        argument = Payload()
        watched.add("argument", argument)
        handle = await drive_to_outcome(queue, outcome, fn, argument)
        task_id = handle.id

        assert handle.state is OUTCOMES[outcome]
        assert queue.task(task_id) is handle

        watched.add("handle", handle)
        del fn, argument, handle

        # A failing task evicts the entry from each store.
        filler = await queue.submit(fails, retry=NO_RETRY)
        await queue.join()
        del filler
        gc.collect()

        assert watched.alive() == []
        with pytest.raises(TaskNotFoundError):
            queue.task(task_id)
        assert task_id not in [letter.task_id for letter in queue.dead_letters()]


@pytest.mark.usefixtures("quiet_log")
async def test_retained_task_stays_alive() -> None:
    """The control case: what the stores still hold is not freed."""
    watched = Watched()
    async with AsyncTaskQueue(1, max_results=1, max_dead_letters=1) as queue:
        fn = make_task("fails", watched)
        argument = Payload()
        watched.add("argument", argument)
        handle = await drive_to_outcome(queue, "fails", fn, argument)
        task_id = handle.id
        watched.add("handle", handle)
        del fn, argument, handle
        gc.collect()

        assert watched.alive() == [
            "argument",
            "captured",
            "coroutine function",
            "exception of attempt 1",
            "handle",
            "local of attempt 1",
        ]
        assert queue.task(task_id).state is TaskState.FAILED


async def test_cancelled_pending_freed_while_idle() -> None:
    """A task cancelled in an idle queue frees its arguments before any pick."""
    async with AsyncTaskQueue(1, retry=NO_RETRY, max_results=0) as queue:
        queue.pause()
        argument = Payload()
        reference = weakref.ref(argument)
        handle = await queue.submit(make_task("succeeds", Watched()), argument)
        handle.cancel()
        del argument, handle

        assert_collectable(reference)
        assert queue.stats().pending == 0


# Property: the queue keeps exactly what its stores list

CHEAP_OUTCOMES = ["succeeds", "fails", "cancelled_pending"]


async def _retention_scenario(
    outcomes: list[str], max_results: int, max_dead_letters: int
) -> None:
    queue = AsyncTaskQueue(
        1,
        retry=NO_RETRY,
        max_results=max_results,
        max_dead_letters=max_dead_letters,
    )
    await queue.start()
    queue.pause()
    tasks = []
    for outcome in outcomes:
        watched = Watched()
        argument = Payload()
        watched.add("argument", argument)
        handle = await queue.submit(make_task(outcome, watched), argument)
        watched.add("handle", handle)
        if outcome == "cancelled_pending":
            handle.cancel()

        tasks.append((handle.id, watched))
        del argument, handle

    queue.resume()
    await queue.join()
    # stop() empties the ready heap, which still contains the entries of tasks
    # cancelled while pending (see test_cancelled_pending_freed_while_idle).
    await queue.stop()
    gc.collect()
    alive = {task_id: set(watched.alive()) for task_id, watched in tasks}
    letters = {letter.task_id for letter in queue.dead_letters()}
    retained = set()
    for task_id, _ in tasks:
        with contextlib.suppress(TaskNotFoundError):
            queue.task(task_id)
            retained.add(task_id)

    assert len(retained) == min(max_results, len(outcomes))
    ids = [task_id for task_id, _ in tasks]
    outcome_of = dict(zip(ids, outcomes, strict=True))
    for task_id, objects in alive.items():
        assert ("handle" in objects) == (task_id in retained)
        # A finished handle lets go of its arguments, except through the
        # traceback of its exception; a dead letter keeps them for requeue().
        keeps_traceback = task_id in retained and outcome_of[task_id] == "fails"
        assert ("argument" in objects) == (task_id in letters or keeps_traceback)
        assert ("coroutine function" in objects) == (task_id in retained | letters)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from(CHEAP_OUTCOMES), max_size=8),
    st.integers(0, 3),
    st.integers(0, 2),
)
def test_retention_matches_stores(
    outcomes: list[str], max_results: int, max_dead_letters: int
) -> None:
    logger = logging.getLogger("async_queue")
    logger.disabled = True  # see quiet_log
    try:
        asyncio.run(_retention_scenario(outcomes, max_results, max_dead_letters))
    finally:
        logger.disabled = False


# Tasks and timers after stop()


async def wait_for(event: asyncio.Event) -> None:
    await event.wait()


async def until_closed(queue: AsyncTaskQueue) -> None:
    await until(lambda: queue.closed)


Setup = tuple[AsyncTaskQueue, list[TaskHandle[Any]]]


async def queue_with_timers(gates: list[asyncio.Event]) -> Setup:
    """Return a queue whose watchdog, retry timer and delay timer are all set.

    Each gate keeps one task running, and one more task waits behind them.
    """
    queue = AsyncTaskQueue(len(gates), timeout=60, retry=PARKED)
    await queue.start()
    flaky = await queue.submit(fails)
    await until(lambda: flaky.state is TaskState.WAITING_RETRY)
    handles = [flaky, await queue.submit(succeeds, delay=60)]
    handles += [await queue.submit(wait_for, gate) for gate in gates]
    handles.append(await queue.submit(succeeds))
    await until(lambda: queue.stats().running == len(gates))
    return queue, handles


async def queue_with_token_timer(gates: list[asyncio.Event]) -> Setup:
    """Return a queue whose rate-limit timer is set for a start 1,000 s ahead.

    Each gate keeps one task running, and one more task waits for a token.
    """
    queue = AsyncTaskQueue(len(gates) + 1, rate_limit=0.001, rate_burst=len(gates) + 1)
    await queue.start()
    handles = [await queue.submit(wait_for, gate) for gate in gates]
    handles.append(await queue.submit(succeeds))
    await handles[-1]  # its worker is idle again, with no token left
    handles.append(await queue.submit(succeeds))
    await until(lambda: queue.stats().running == len(gates))
    return queue, handles


SETUPS = {"timers": queue_with_timers, "token_timer": queue_with_token_timer}


@pytest.mark.usefixtures("quiet_log")
@pytest.mark.parametrize("mode", list(ShutdownMode))
@pytest.mark.parametrize("setup", list(SETUPS))
async def test_stop_leaves_no_task_or_timer(setup: str, mode: ShutdownMode) -> None:
    """After stop(), only the test's own task runs, and the queue can be freed.

    A timer still scheduled on the loop would keep the queue alive through its
    callback, a bound method of the queue, so ``assert_collectable`` also
    checks that every timer was cancelled or has run.
    """
    gates = [asyncio.Event() for _ in range(2)]
    queue, handles = await SETUPS[setup](gates)
    # The delayed and rate-limited tasks would keep a drain waiting for
    # minutes, so the drain's deadline escalates it to a cancel.
    timeout = 0.01 if mode is ShutdownMode.DRAIN else None
    stopping = asyncio.create_task(queue.stop(mode, timeout=timeout))
    await until_closed(queue)
    for gate in gates:
        gate.set()

    report = await stopping

    assert report.escalated is (mode is ShutdownMode.DRAIN)
    assert report.abandoned == ()
    assert all(handle.done() for handle in handles)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    stats = queue.stats()
    assert (stats.workers, stats.running, stats.pending) == (0, 0, 0)
    assert (stats.delayed, stats.waiting_retry) == (0, 0)
    reference = weakref.ref(queue)
    del queue, stopping
    assert_collectable(reference)


async def stops_queue(queue: AsyncTaskQueue, mode: ShutdownMode) -> None:
    await queue.stop(mode)


@pytest.mark.parametrize("mode", list(ShutdownMode))
async def test_stop_from_own_task_leaves_nothing(mode: ShutdownMode) -> None:
    """A task that stops its own queue does not leave its worker running."""
    queue = AsyncTaskQueue(2, retry=NO_RETRY)
    await queue.start()
    handle = await queue.submit(stops_queue, queue, mode)
    await until_closed(queue)
    report = await queue.stop(mode)  # the report of the task's call
    await until(lambda: asyncio.all_tasks() == {asyncio.current_task()})
    await asyncio.sleep(0)  # the done callbacks of the last worker run

    assert handle.done()
    assert queue.report is report
    assert queue.stats().workers == 0
    # The handle, and the report through it, hold the queue as an argument.
    reference = weakref.ref(queue)
    del queue, handle, report
    assert_collectable(reference)


async def test_abandoned_worker_exits_when_task_ends() -> None:
    """The worker of an abandoned task exits once the coroutine ends at last."""
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    # The timeout arms the queue's watchdog, which stop() must cancel too.
    handle = await queue.submit(stubborn, timeout=60)
    await until(lambda: handle.state is TaskState.RUNNING)
    report = await queue.stop("cancel", grace=0)
    others = asyncio.all_tasks() - {asyncio.current_task()}

    assert report.abandoned == (handle,)
    assert [task.get_name() for task in others] == ["async_queue-worker-1"]

    release.set()
    await until(lambda: asyncio.all_tasks() == {asyncio.current_task()})

    assert handle.state is TaskState.CANCELLED
    assert queue.stats().running == 0
    assert queue.stats().workers == 0
    reference = weakref.ref(queue)
    del queue
    assert_collectable(reference)
