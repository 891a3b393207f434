"""wait_idle(): waiting until no task of the queue is unfinished."""

from __future__ import annotations

import asyncio
import gc
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    QueueStateError,
    RetryPolicy,
    TaskHandle,
    TaskState,
)
from async_queue._base import _IdleWait
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import EAGER, Gate, settle, until

NO_RETRY = RetryPolicy(max_retries=0)
RETRY_ONCE = RetryPolicy(max_retries=1, base_delay=0.5, jitter="none")


def unfinished(queue: AsyncTaskQueue) -> int:
    stats = queue.stats()
    return stats.pending + stats.delayed + stats.waiting_retry + stats.running


@settings(max_examples=60, deadline=None)
@given(
    workers=st.integers(1, 4),
    fanout=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    delays=st.lists(st.sampled_from([None, 0.0, 0.3, 2.0]), min_size=1, max_size=5),
    fail_every=st.integers(2, 5),
)
def test_wait_idle_waits_for_task_tree(
    workers: int, fanout: list[int], delays: list[float | None], fail_every: int
) -> None:
    """Tasks that submit tasks, some delayed or retried, are all final at return.

    ``fanout[d]`` is the number of children of each task at depth ``d``.
    Children are submitted with ``delays`` in turn, and every
    ``fail_every``-th task fails once and succeeds on its retry.
    """
    expected_nodes = 1
    width = 1
    for count in fanout:
        width *= count
        expected_nodes += width

    async def main(loop: VirtualClockLoop) -> None:
        attempted: list[int] = []
        numbers = itertools.count(1)

        async def node(queue: AsyncTaskQueue, depth: int, number: int) -> int:
            attempted.append(number)
            if number % fail_every == 0 and attempted.count(number) == 1:
                raise ValueError(f"first attempt of task {number} fails")

            if depth < len(fanout):
                for _ in range(fanout[depth]):
                    child = next(numbers)
                    delay = delays[child % len(delays)]
                    queue.submit_nowait(
                        node, queue, depth + 1, child, delay=delay, retry=RETRY_ONCE
                    )
            return number

        async with AsyncTaskQueue(workers, retry=NO_RETRY) as queue:
            queue.submit_nowait(node, queue, 0, 0, retry=RETRY_ONCE)
            await queue.wait_idle()

            stats = queue.stats()
            assert unfinished(queue) == 0
            assert stats.submitted == expected_nodes
            assert stats.succeeded == expected_nodes
            assert stats.failed == 0

    run_virtual(main)


def test_wait_idle_outlasts_join() -> None:
    """join() waits for the task it saw; wait_idle() also for what it submits."""

    async def main(loop: VirtualClockLoop) -> None:
        finished: list[str] = []

        async def leaf(name: str, seconds: float) -> None:
            await asyncio.sleep(seconds)
            finished.append(name)

        async def parent(name: str, seconds: float) -> None:
            queue.submit_nowait(leaf, f"{name}'s child", seconds)
            finished.append(name)

        async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
            queue.submit_nowait(parent, "first", 1.0)
            await queue.join()
            assert finished == ["first"]

            queue.submit_nowait(parent, "second", 3.0)
            await queue.wait_idle()
            assert finished == ["first", "second", "first's child", "second's child"]
            assert unfinished(queue) == 0

    run_virtual(main)


def test_wait_idle_waits_for_delayed_and_retrying_tasks() -> None:
    """A delayed task and one backing off count until they are final."""

    async def main(loop: VirtualClockLoop) -> None:
        attempts: list[float] = []

        async def flaky() -> str:
            attempts.append(loop.time())
            if len(attempts) == 1:
                raise ValueError("first attempt fails")
            return "recovered"

        async def value() -> int:
            return 5

        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            start = loop.time()
            later = queue.submit_nowait(value, delay=3.0)
            retried = queue.submit_nowait(flaky, retry=RETRY_ONCE)
            await queue.wait_idle()

            assert later.result() == 5
            assert retried.result() == "recovered"
            assert attempts[1] - attempts[0] >= 0.5
            assert loop.time() - start >= 3.0

    run_virtual(main)


def test_wait_idle_from_task_excludes_itself() -> None:
    """A task that waits for the queue to go idle does not wait for itself."""

    async def main(loop: VirtualClockLoop) -> None:
        grandchildren: list[TaskHandle[int]] = []

        async def grandchild(number: int) -> int:
            await asyncio.sleep(number)
            return number

        async def child(number: int) -> int:
            await asyncio.sleep(number)
            grandchildren.append(queue.submit_nowait(grandchild, 10 * number))
            return number

        async def parent() -> list[int]:
            children = [queue.submit_nowait(child, n) for n in (1, 2, 3)]
            await queue.wait_idle()
            assert all(c.state is TaskState.SUCCEEDED for c in children)
            assert all(g.state is TaskState.SUCCEEDED for g in grandchildren)
            return [c.result() for c in children + grandchildren]

        async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
            handle = queue.submit_nowait(parent)
            assert await handle == [1, 2, 3, 10, 20, 30]

    run_virtual(main)


async def test_wait_idle_on_paused_queue_waits_for_resume() -> None:
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        queue.pause()
        gate = Gate()
        handle = queue.submit_nowait(gate)
        waiter = asyncio.create_task(queue.wait_idle())
        await until(lambda: len(queue._joins) == 1)
        assert gate.calls == 0

        queue.resume()
        await gate.started.wait()
        assert not waiter.done()

        gate.release.set()
        await waiter
        assert handle.result() == "done"


async def test_wait_idle_returns_when_nothing_is_unfinished() -> None:
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.wait_idle()  # not started

    await queue.start()
    await queue.wait_idle()  # started, no task

    async def one() -> int:
        return 1

    handle = queue.submit_nowait(one)
    await queue.wait_idle()
    assert handle.result() == 1

    await queue.stop()
    await queue.wait_idle()  # stopped
    assert queue._joins == []


def test_wait_idle_returns_between_schedule_runs() -> None:
    """A schedule keeps submitting, but between runs the queue is idle."""

    async def main(loop: VirtualClockLoop) -> None:
        runs: list[float] = []

        async def tick() -> None:
            runs.append(loop.time())
            await asyncio.sleep(0.5)

        async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
            schedule = queue.every(2.0, tick, delay=0)
            await until(lambda: len(runs) == 1)
            await queue.wait_idle()

            assert len(runs) == 1
            assert unfinished(queue) == 0
            assert schedule.next_run is not None
            schedule.cancel()

    run_virtual(main)


async def test_wait_idle_counts_each_submission_once() -> None:
    """Many waiters, and tasks submitted during the wait, all end at idle."""
    async with AsyncTaskQueue(3, retry=NO_RETRY) as queue:
        handles: list[TaskHandle[int]] = []

        async def chain(left: int) -> int:
            await asyncio.sleep(0)  # so that the waiters wait before the next submit
            if left:
                handles.append(queue.submit_nowait(chain, left - 1))
            return left

        handles.append(queue.submit_nowait(chain, 20))
        waiters = [asyncio.create_task(queue.wait_idle()) for _ in range(3)]
        await asyncio.gather(*waiters)

        assert sorted(h.result() for h in handles) == list(range(21))
        assert queue._joins == []


async def sleep_one_second() -> None:
    await asyncio.sleep(1)


def test_wait_idle_returns_between_chained_tasks() -> None:
    """It returns when a task ends with none left, before code it wakes submits.

    A coroutine outside the queue runs three 1 s tasks one after another:
    it awaits each handle, then submits the next. When the first task
    finishes no task is unfinished, so the wait returns then, as
    asyncio.Queue.join() would, and not after the whole chain.
    """

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:

            async def run_chain() -> None:
                for _ in range(3):
                    await queue.submit_nowait(sleep_one_second)

            start = loop.time()
            chain = asyncio.ensure_future(run_chain())
            await asyncio.sleep(0)
            assert unfinished(queue) == 1

            await queue.wait_idle()
            waited = loop.time() - start
            succeeded = queue.stats().succeeded
            await chain

            assert waited == 1.0
            assert succeeded == 1
            assert queue._joins == []

    run_virtual(main)


@pytest.mark.parametrize("eager", [False, pytest.param(True, marks=EAGER)])
def test_wait_idle_in_unawaited_child_waits_for_task(eager: bool) -> None:
    """A child that a task starts and never awaits waits for that task too.

    Under asyncio.eager_task_factory the child's first step runs inside the
    task's step, so the child looks like part of the task when it calls
    wait_idle(). The task sleeps 3 s in three steps without awaiting the
    child, so it counts, and the wait ends when it ends.
    """

    async def main(loop: VirtualClockLoop) -> None:
        if eager:
            loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        returns: list[tuple[float, int]] = []
        children: list[asyncio.Task[None]] = []

        async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:

            async def wait_for_idle() -> None:
                await queue.wait_idle()
                returns.append((loop.time() - start, unfinished(queue)))

            async def start_child_and_sleep() -> None:
                children.append(asyncio.create_task(wait_for_idle()))
                for _ in range(3):
                    await asyncio.sleep(1)

            start = loop.time()
            await queue.submit_nowait(start_child_and_sleep)
            await asyncio.gather(*children)

            assert returns == [(3.0, 0)]
            assert queue._joins == []

    run_virtual(main)


@EAGER
@pytest.mark.parametrize("other_seconds", [None, 2.0])
def test_wait_idle_in_awaited_eager_child_skips_task(
    other_seconds: float | None,
) -> None:
    """A child that its task awaits does not wait for that task.

    The task starts the child eagerly and awaits it at once. The child waits
    for the queue to go idle; the task can only end after the child, so it
    does not count. The wait ends at once, or when another task, a sleep of
    ``other_seconds``, ends.
    """

    async def main(loop: VirtualClockLoop) -> None:
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]

        async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:

            async def wait_for_idle() -> float:
                await queue.wait_idle()
                return loop.time() - start

            async def start_child_and_await() -> float:
                return await asyncio.create_task(wait_for_idle())

            start = loop.time()
            if other_seconds is not None:
                queue.submit_nowait(asyncio.sleep, other_seconds)
            waited = await queue.submit_nowait(start_child_and_await)

            assert waited == (other_seconds or 0.0)
            assert unfinished(queue) == 0
            assert queue._joins == []

    run_virtual(main)


async def sleep_briefly(number: int) -> int:
    await asyncio.sleep(0.1)
    return number


@pytest.mark.parametrize("held_back_by", ["pause", "rate_limit"])
def test_wait_idle_waits_through_lowest_drop(held_back_by: str) -> None:
    """A drop_lowest submission that drops the only pending task is not idle.

    The workers are held back, by pause() or by a rate limit with no token
    left, so one low-priority task is pending and a wait_idle() waits for
    it. A higher-priority task submitted into the full queue drops it and
    takes its place in the same submit_nowait() call, so the queue is not
    idle at that moment. The wait returns once the new task has run.
    """

    async def main(loop: VirtualClockLoop) -> None:
        paused = held_back_by == "pause"
        async with AsyncTaskQueue(
            1,
            retry=NO_RETRY,
            max_pending=1,
            overflow="drop_lowest",
            rate_limit=None if paused else 0.1,
        ) as queue:
            if paused:
                queue.pause()
            else:
                assert await queue.submit_nowait(sleep_briefly, 0) == 0  # the token

            low = queue.submit_nowait(sleep_briefly, 1, priority=0)
            waiter = asyncio.ensure_future(queue.wait_idle())
            await settle()
            assert len(queue._joins) == 1

            high = queue.submit_nowait(sleep_briefly, 2, priority=5)
            await settle()
            assert low.state is TaskState.CANCELLED
            assert high.state is TaskState.PENDING
            assert not waiter.done()

            if paused:
                queue.resume()
            await waiter
            assert high.state is TaskState.SUCCEEDED
            assert queue._joins == []

    run_virtual(main)


@pytest.mark.parametrize("method", ["join", "wait_idle"])
def test_wait_on_closed_loop_leaves_no_join(method: str) -> None:
    """A join() or wait_idle() rejected for a closed loop leaves no entry.

    The queue was started, and got a pending task, on a loop that has
    closed since, which cancelled its workers. A wait from a new loop
    raises QueueStateError and leaves nothing in queue._joins.
    """
    queue = AsyncTaskQueue(1, retry=NO_RETRY)

    async def start_paused() -> None:
        await queue.start()
        queue.pause()
        queue.submit_nowait(sleep_briefly, 1)

    async def wait_on_new_loop() -> None:
        with pytest.raises(QueueStateError, match="is closed"):
            await getattr(queue, method)()

    asyncio.run(start_paused())
    asyncio.run(wait_on_new_loop())
    assert queue._joins == []


@pytest.mark.parametrize("eager", [False, pytest.param(True, marks=EAGER)])
def test_wait_idle_in_child_awaited_later(eager: bool) -> None:
    """A child awaited after a 1 s sleep stops counting its task from then.

    The task starts the child, sleeps 1 s, then awaits it. From then on the
    task can only end after the child, so nothing else is unfinished and
    the child's wait_idle() returns at 1 s, with or without an eager task
    factory.
    """

    async def main(loop: VirtualClockLoop) -> None:
        if eager:
            loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]

        async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:

            async def wait_for_idle() -> float:
                await queue.wait_idle()
                return loop.time() - start

            async def start_child_then_await() -> float:
                child = asyncio.create_task(wait_for_idle())
                await asyncio.sleep(1)
                return await child

            start = loop.time()
            handle = queue.submit_nowait(start_child_then_await)
            try:
                # 60 s of virtual time: a wait that never ends fails the
                # test with TimeoutError instead of hanging it.
                waited = await asyncio.wait_for(handle, timeout=60)
            finally:
                await queue.stop("cancel")

            assert waited == 1.0
            assert handle.state is TaskState.SUCCEEDED

    run_virtual(main)


def live_idle_waits() -> int:
    gc.collect()
    return sum(isinstance(item, _IdleWait) for item in gc.get_objects())


@pytest.mark.parametrize("eager", [False, pytest.param(True, marks=EAGER)])
def test_timed_out_waits_leave_no_callbacks(eager: bool) -> None:
    """A wait_idle() call that times out leaves nothing behind.

    A queue task starts a child and awaits a future. The child calls
    wait_idle() 50 times through wait_for() with a 0.1 s timeout, and each
    call times out because the task is unfinished. Each call followed the
    task's steps with a callback on that future, and each removed it at
    its end, so neither the callbacks nor the records of the calls pile up.
    """

    async def main(loop: VirtualClockLoop) -> None:
        if eager:
            loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        gate: asyncio.Future[None] = loop.create_future()
        alive: list[int] = []
        callbacks: list[int] = []
        timeouts: list[float] = []

        async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:

            async def poll_idle() -> None:
                for _ in range(50):
                    try:
                        await asyncio.wait_for(queue.wait_idle(), 0.1)
                    except TimeoutError:
                        timeouts.append(loop.time())
                alive.append(live_idle_waits())
                callbacks.append(len(gate._callbacks))  # type: ignore[attr-defined]
                gate.set_result(None)

            async def start_child_and_wait() -> None:
                child = asyncio.create_task(poll_idle())
                await gate
                await child

            handle = queue.submit_nowait(start_child_and_wait)
            await handle

            assert handle.state is TaskState.SUCCEEDED
            assert len(timeouts) == 50
            # At most the last call's record: on 3.12 the frames of that
            # call stay alive with the traceback of its cancellation.
            assert alive in ([0], [1])
            assert callbacks == [1]  # the wake-up of the task that awaits it

    run_virtual(main)


@pytest.mark.parametrize("eager", [False, pytest.param(True, marks=EAGER)])
def test_wait_idle_child_awaited_through_task(eager: bool) -> None:
    """A task that awaits a child through another task does not count.

    A queue task starts a child that calls wait_idle(), then a second
    asyncio task that awaits the child, and awaits the second task. The
    queue task cannot end before the child does, so the wait returns at
    once and the queue task succeeds. Without an eager task factory the
    child calls wait_idle() before the second task awaits it, so the wait
    has to follow the steps of the second task too.
    """

    async def main(loop: VirtualClockLoop) -> None:
        if eager:
            loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        returned_at: list[float] = []

        async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:

            async def wait_for_idle() -> None:
                await queue.wait_idle()
                returned_at.append(loop.time() - start)

            async def await_child(child: asyncio.Task[None]) -> None:
                await child

            async def start_children() -> None:
                child = asyncio.create_task(wait_for_idle())
                await asyncio.create_task(await_child(child))

            start = loop.time()
            handle = queue.submit_nowait(start_children)
            done: asyncio.Future[None] = loop.create_future()
            handle.add_done_callback(lambda _: done.set_result(None))
            await asyncio.wait({done}, timeout=100)

            assert handle.state is TaskState.SUCCEEDED
            assert returned_at == [0.0]

    run_virtual(main)
