"""Retry-after requests, deduplication keys and dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_queue import (
    AsyncTaskQueue,
    DeadLetter,
    QueueClosedError,
    RetryAfter,
    RetryPolicy,
    TaskNotFoundError,
    TaskState,
)
from async_queue.deadletters import DeadLetterStore
from tests.clock import VirtualClockLoop, run_virtual
from tests.helpers import fail as _fail
from tests.helpers import one as _one
from tests.helpers import until

NO_RETRY = RetryPolicy(max_retries=0)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


# Retry-after


def test_retry_after_overrides_backoff() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        calls = 0

        async def throttled() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RetryAfter(42)
            return "ok"

        policy = RetryPolicy(max_retries=1, base_delay=1, jitter="none")
        async with AsyncTaskQueue(1, retry=policy) as queue:
            handle = await queue.submit(throttled)
            await until(lambda: handle.state is TaskState.WAITING_RETRY)
            loop.advance(41.9)
            await settle()
            assert calls == 1

            loop.advance(0.1)
            assert await handle == "ok"
            assert queue.stats().retries == 1

    run_virtual(main)


def test_retry_after_not_capped_by_max_delay() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        attempts_at: list[float] = []

        async def throttled() -> str:
            attempts_at.append(loop.time())
            if len(attempts_at) == 1:
                raise RetryAfter(300)
            return "ok"

        policy = RetryPolicy(max_retries=1, base_delay=1, max_delay=2)
        async with AsyncTaskQueue(1, retry=policy) as queue:
            handle = await queue.submit(throttled)
            await until(lambda: handle.state is TaskState.WAITING_RETRY)
            loop.advance(299)
            await settle()
            assert len(attempts_at) == 1

            loop.advance(1)
            assert await handle == "ok"
            assert attempts_at[1] - attempts_at[0] == pytest.approx(300)

    run_virtual(main, autojump=None)


async def test_retry_after_counts_against_max_retries() -> None:
    calls = 0

    async def always_throttled() -> None:
        nonlocal calls
        calls += 1
        raise RetryAfter(0, "server busy")

    async with AsyncTaskQueue(1, retry=RetryPolicy(max_retries=2)) as queue:
        handle = await queue.submit(always_throttled)
        with pytest.raises(RetryAfter, match="server busy"):
            await handle

    assert calls == 3
    assert handle.attempts == 3


async def test_retry_after_ignores_retry_filter() -> None:
    calls = 0

    async def throttled() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RetryAfter(0)
        return "ok"

    policy = RetryPolicy(max_retries=1, retry_on=KeyError)
    async with AsyncTaskQueue(1, retry=policy) as queue:
        assert await (await queue.submit(throttled)) == "ok"


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf")])
def test_retry_after_rejects_bad_delay(delay: float) -> None:
    with pytest.raises(ValueError, match="delay"):
        RetryAfter(delay)


@pytest.mark.parametrize(
    "delay",
    [math.nan, math.inf, -1.0, "5", 10**400],
    ids=["nan", "inf", "negative", "str", "huge_int"],
)
def test_retry_after_delay_checked_when_raised(delay: object) -> None:
    # The queue checks the delay again when the task raises RetryAfter, and
    # fails the task if it has become invalid. A NaN due time on the shared
    # retry timer would keep every other task's retry from firing.
    async def main(loop: VirtualClockLoop) -> None:
        async def odd_delay() -> None:
            error = RetryAfter(1)
            error.delay = delay  # type: ignore[assignment]
            raise error

        calls = 0

        async def retry_once() -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RetryAfter(3)
            return "done"

        async with AsyncTaskQueue(retry=RetryPolicy(max_retries=1)) as queue:
            odd = await queue.submit(odd_delay)
            other = await queue.submit(retry_once)
            await until(lambda: odd.done() and other.state is TaskState.WAITING_RETRY)

            loop.advance(3)
            await until(other.done)

        assert other.result() == "done"
        assert odd.state is TaskState.FAILED
        assert odd.attempts == 1
        error = odd.exception()
        assert isinstance(error, (TypeError, ValueError))
        assert "RetryAfter" in str(error)
        assert repr(delay)[:10] in str(error)

    run_virtual(main, autojump=None)


def test_retry_after_subclass_without_delay() -> None:
    # A subclass that skips RetryAfter.__init__ fails its task with a
    # TypeError that names the missing delay and the call to add.
    class Later(RetryAfter):
        def __init__(self) -> None:
            Exception.__init__(self, "later")

    async def later() -> None:
        raise Later()

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(retry=RetryPolicy(max_retries=1)) as queue:
            handle = await queue.submit(later)
            await until(handle.done)

        assert handle.state is TaskState.FAILED
        assert handle.attempts == 1
        error = handle.exception()
        assert isinstance(error, TypeError)
        assert "Later has no delay" in str(error)
        assert "RetryAfter.__init__(self, seconds)" in str(error)
        assert isinstance(error.__cause__, Later)

    run_virtual(main, autojump=None)


# Deduplication


async def test_dedup_returns_existing_handle() -> None:
    release = asyncio.Event()
    calls = 0

    async def job(value: int) -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return value

    async with AsyncTaskQueue(2, retry=NO_RETRY) as queue:
        first = await queue.submit(job, 1, dedup_key="report")
        second = await queue.submit(job, 2, dedup_key="report")
        other = await queue.submit(job, 3, dedup_key="other")
        assert second is first
        assert other is not first
        assert queue.stats().deduplicated == 1
        assert queue.stats().submitted == 2

        release.set()
        assert await first == 1
        assert await other == 3

        again = await queue.submit(job, 4, dedup_key="report")
        assert again is not first
        assert await again == 4

    assert calls == 3


async def test_dedup_covers_waiting_retry() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first attempt fails")
        return "ok"

    policy = RetryPolicy(max_retries=1, base_delay=60, jitter="none")
    async with AsyncTaskQueue(1, retry=policy) as queue:
        handle = await queue.submit(flaky, dedup_key="k")
        await until(lambda: handle.state is TaskState.WAITING_RETRY)
        assert await queue.submit(flaky, dedup_key="k") is handle
        handle.cancel()

    assert calls == 1


async def test_dedup_hit_while_full_returns_at_once() -> None:
    """submit() of a queued dedup key needs no room, like submit_nowait()."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_pending=1)
    await queue.start()
    queue.pause()
    first = await queue.submit(_one, dedup_key="job")

    again = asyncio.create_task(queue.submit(_one, dedup_key="job"))
    await until(again.done)

    assert again.result() is first
    assert queue.submit_nowait(_one, dedup_key="job") is first
    assert queue.stats().deduplicated == 2
    assert queue.stats().pending == 1

    queue.resume()
    assert await first == 1
    await queue.stop()


@pytest.mark.parametrize("key", [["a"], {"a": 1}, {1}])
async def test_unhashable_dedup_key_message(key: object) -> None:
    """An unhashable dedup_key raises a TypeError that names the option."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_pending=1)
    await queue.start()
    queue.pause()
    await queue.submit(_one)

    # The queue is full, so submit() looks the key up before it waits.
    with pytest.raises(TypeError, match="dedup_key must be hashable"):
        await queue.submit(_one, dedup_key=key)

    with pytest.raises(TypeError, match="dedup_key must be hashable"):
        queue.submit_nowait(_one, dedup_key=key)

    assert queue.stats().submitted == 1
    await queue.stop()


async def test_dedup_hit_still_checks_task_id() -> None:
    """An invalid task_id raises even when the dedup key matches a task."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    queue.pause()
    first = await queue.submit(_one, dedup_key="job", task_id="job")

    with pytest.raises(TypeError, match="task_id must be a non-empty str"):
        await queue.submit(_one, dedup_key="job", task_id=7)  # type: ignore[arg-type]

    # The same valid id with the same key is the idempotent resubmission.
    assert await queue.submit(_one, dedup_key="job", task_id="job") is first
    assert queue.stats().deduplicated == 1
    await queue.stop()


class ChangingKey:
    """A dedup key whose hash its owner changes after submitting it."""

    def __init__(self) -> None:
        self.hash = 1

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return self is other


async def test_dedup_key_with_changed_hash_keeps_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def job() -> int:
        return 1

    queue = AsyncTaskQueue(max_workers=1)
    await queue.start()
    key = ChangingKey()
    first = await queue.submit(job, dedup_key=key)
    key.hash = 2

    assert await first == 1
    assert queue.stats().workers == 1
    second = await queue.submit(job, dedup_key=key)
    assert second is not first
    assert await second == 1

    cancelled = await queue.submit(job, dedup_key=key, delay=60)
    key.hash = 3
    assert cancelled.cancel() is True
    assert queue.stats().cancelled == 1

    report = await queue.stop("drain")
    assert report.never_started == ()
    assert queue.stats().succeeded == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "changed its hash or equality" in warnings[0].getMessage()


# Dead letters


async def test_failed_task_becomes_dead_letter() -> None:
    seen: list[DeadLetter] = []
    error = ValueError("broken")

    async def broken(a: int, b: str) -> None:
        raise error

    policy = RetryPolicy(max_retries=1, base_delay=0)
    async with AsyncTaskQueue(1, retry=policy, on_dead_letter=seen.append) as queue:
        handle = await queue.submit(broken, 1, "x", priority=4)
        with pytest.raises(ValueError):
            await handle

        letters = queue.dead_letters()
        assert queue.stats().dead_letters == 1

    assert seen == list(letters)
    letter = letters[0]
    assert letter.task_id == handle.id
    assert letter.args == (1, "x")
    assert letter.priority == 4
    assert letter.exception is error
    assert letter.attempts == 2
    assert letter.dedup_key is None
    assert letter.requeueable


async def test_requeue_keeps_dedup_key() -> None:
    """A requeued task is deduplicated under the key it was submitted with."""
    release = asyncio.Event()
    calls = 0

    async def fails_first() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first run fails")
        await release.wait()
        return "done"

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(fails_first, dedup_key="sync-7")
        with pytest.raises(ValueError):
            await handle

        assert queue.dead_letters()[0].dedup_key == "sync-7"

        again = await queue.requeue(handle.id)
        duplicate = await queue.submit(fails_first, dedup_key="sync-7")

        assert duplicate is again
        assert queue.stats().deduplicated == 1

        release.set()
        assert await again == "done"
        assert calls == 2


async def test_requeue_returns_unfinished_duplicate() -> None:
    """Requeueing while an unfinished task has the key queues nothing."""
    release = asyncio.Event()

    async def fails() -> None:
        raise ValueError("broken")

    async def waits() -> str:
        await release.wait()
        return "waited"

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        failed = await queue.submit(fails, dedup_key="report")
        with pytest.raises(ValueError):
            await failed

        holder = await queue.submit(waits, dedup_key="report")
        again = await queue.requeue(failed.id)

        assert again is holder
        assert queue.dead_letters() == ()
        assert queue.stats().deduplicated == 1

        release.set()
        assert await again == "waited"
        assert queue.stats().failed == 1


async def test_requeue_runs_task_again() -> None:
    calls = 0

    async def fails_first(value: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("first run fails")
        return value * 2

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(fails_first, 21, priority=3)
        with pytest.raises(ValueError):
            await handle

        again = await queue.requeue(handle.id)
        assert again.id != handle.id
        assert again.priority == 3
        assert await again == 42
        assert queue.dead_letters() == ()

        with pytest.raises(TaskNotFoundError, match=repr(handle.id)):
            await queue.requeue(handle.id)


async def test_dead_letters_are_bounded() -> None:
    async def broken(index: int) -> None:
        raise ValueError(index)

    async with AsyncTaskQueue(1, retry=NO_RETRY, max_dead_letters=3) as queue:
        for index in range(5):
            with pytest.raises(ValueError):
                await (await queue.submit(broken, index))

        letters = queue.dead_letters()
        stats = queue.stats()

    assert [letter.args for letter in letters] == [(2,), (3,), (4,)]
    assert stats.dead_letters == 3
    assert stats.dead_letters_evicted == 2


async def test_cancelled_task_is_no_dead_letter() -> None:
    async def hang() -> None:
        await asyncio.Event().wait()

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(hang)
        await until(lambda: queue.stats().running == 1)
        handle.cancel()
        await until(handle.done)
        assert queue.dead_letters() == ()


async def test_failing_hook_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def hook(letter: DeadLetter) -> None:
        raise RuntimeError("hook broke")

    async def broken() -> None:
        raise ValueError("task broke")

    async def fine() -> str:
        return "fine"

    caplog.set_level(logging.ERROR, logger="async_queue")
    async with AsyncTaskQueue(1, retry=NO_RETRY, on_dead_letter=hook) as queue:
        with pytest.raises(ValueError):
            await (await queue.submit(broken))
        assert await (await queue.submit(fine)) == "fine"
        workers = queue.stats().workers

    assert workers == 1
    messages = [record.getMessage() for record in caplog.records]
    assert any("on_dead_letter hook" in message for message in messages)


async def test_coroutine_object_cannot_requeue() -> None:
    async def broken() -> None:
        raise ValueError("broken")

    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = await queue.submit(broken())
        with pytest.raises(ValueError):
            await handle

        assert not queue.dead_letters()[0].requeueable
        with pytest.raises(ValueError, match="coroutine object"):
            await queue.requeue(handle.id)
        assert len(queue.dead_letters()) == 1


def make_letter(task_id: int) -> DeadLetter:
    return DeadLetter(
        task_id=task_id,
        name="job",
        fn=fail_once,
        args=(),
        priority=0,
        timeout=None,
        retry=RetryPolicy(),
        exception=ValueError(task_id),
        attempts=1,
    )


async def fail_once() -> None:
    raise ValueError("once")


store_operations = st.lists(
    st.tuples(st.sampled_from(["add", "take", "put_back"]), st.integers(1, 5)),
    max_size=40,
)


@given(st.integers(0, 4), store_operations)
def test_store_keeps_arrival_order(
    max_count: int, operations: list[tuple[str, int]]
) -> None:
    # A model of the store: (arrival, task id) pairs, oldest first.
    store = DeadLetterStore(max_count)
    model: list[tuple[int, int]] = []
    taken_out: dict[int, tuple[int, DeadLetter]] = {}
    arrivals = evicted = 0

    def evict() -> int:
        count = max(len(model) - max_count, 0)
        del model[:count]
        return count

    for operation, task_id in operations:
        present = any(entry[1] == task_id for entry in model)
        if operation == "add":
            if max_count == 0:
                evicted += 1
            else:
                if present:
                    model[:] = [entry for entry in model if entry[1] != task_id]
                    evicted += 1
                arrivals += 1
                model.append((arrivals, task_id))
                evicted += evict()
            store.add(make_letter(task_id))
        elif operation == "take" and present:
            model[:] = [entry for entry in model if entry[1] != task_id]
            entry = store.take(task_id)
            assert entry is not None
            taken_out[task_id] = entry
        elif operation == "put_back" and task_id in taken_out:
            arrival, letter = taken_out.pop(task_id)
            if present:
                evicted += 1
            else:
                model.append((arrival, task_id))
                model.sort()
                evicted += evict()
            store.put_back(arrival, letter)

        assert [letter.task_id for letter in store.list()] == [e[1] for e in model]
        assert store.evicted == evicted


async def test_dead_letter_callback_cancelled_error_keeps_worker() -> None:
    """An on_dead_letter callback raising CancelledError leaves the worker running."""

    def callback(letter: DeadLetter) -> None:
        raise asyncio.CancelledError(f"dead letter {letter.task_id!r}")

    queue = AsyncTaskQueue(1, retry=NO_RETRY, on_dead_letter=callback)
    await queue.start()
    failing = await queue.submit(_fail)
    after = await queue.submit(_one)
    await until(lambda: after.done())

    assert failing.state is TaskState.FAILED
    assert len(queue.dead_letters()) == 1
    assert after.state is TaskState.SUCCEEDED
    assert queue.stats().workers == 1

    report = await queue.stop()
    assert report.abandoned == ()


async def test_failed_requeue_keeps_letter_order() -> None:
    """A requeue rejected for its arguments leaves the dead letters as they were."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_dead_letters=3)
    await queue.start()
    for _ in range(3):
        await queue.submit(_fail)
    await queue.join()
    before = [letter.task_id for letter in queue.dead_letters()]
    assert before == [1, 2, 3]

    with pytest.raises(TypeError, match="priority must be an int"):
        await queue.requeue(1, priority="urgent")  # type: ignore[arg-type]

    assert [letter.task_id for letter in queue.dead_letters()] == before

    # The oldest letter is still the first evicted.
    await queue.submit(_fail)
    await queue.join()
    assert [letter.task_id for letter in queue.dead_letters()] == [2, 3, 4]
    await queue.stop()


async def test_coroutine_letter_requeue_keeps_order() -> None:
    """Requeueing a coroutine object's letter raises and moves no letter."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    coroutine_task = await queue.submit(_fail())
    await queue.submit(_fail)
    await queue.join()

    with pytest.raises(ValueError, match="coroutine object"):
        await queue.requeue(coroutine_task.id)

    assert [letter.task_id for letter in queue.dead_letters()] == [1, 2]
    await queue.stop()


async def test_requeue_after_stop_keeps_letter() -> None:
    """requeue() on a stopped queue raises and keeps the letter in place."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    await queue.submit(_fail)
    await queue.submit(_fail)
    await queue.join()
    await queue.stop()

    with pytest.raises(QueueClosedError):
        await queue.requeue(1)

    assert [letter.task_id for letter in queue.dead_letters()] == [1, 2]


async def test_reused_task_id_letter_is_newest() -> None:
    """A str id that fails again replaces its letter as the newest one."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY, max_results=0, max_dead_letters=2)
    await queue.start()
    for task_id in ("job", "other", "job"):
        await queue.submit(_fail, task_id=task_id)
        await queue.join()

    assert [letter.task_id for letter in queue.dead_letters()] == ["other", "job"]
    assert queue.stats().dead_letters_evicted == 1  # the first letter of "job"

    await queue.submit(_fail, task_id="third")
    await queue.join()
    # "other" is now the oldest, so it is the one evicted.
    assert [letter.task_id for letter in queue.dead_letters()] == ["job", "third"]
    assert queue.stats().dead_letters_evicted == 2
    assert queue.stats().evicted == 4  # max_results=0 evicts every task at once
    await queue.stop()


async def fail(label: str, gate: asyncio.Event | None = None) -> None:
    if gate is not None:
        await gate.wait()
    raise ValueError(label)


def test_cancelled_requeue_keeps_newer_letters() -> None:
    """A cancelled requeue() puts its letter back in its old place.

    ``requeue()`` takes the letter out before it waits for room. When a task
    fails meanwhile and fills the store, the letter put back is the oldest,
    so it is the one evicted, and the newer letters stay.
    """

    async def main(loop: VirtualClockLoop) -> None:
        hold = asyncio.Event()
        gate = asyncio.Event()

        async def block() -> None:
            await hold.wait()

        queue = AsyncTaskQueue(2, retry=NO_RETRY, max_dead_letters=2, max_pending=1)
        await queue.start()
        first = await queue.submit(fail, "first")
        second = await queue.submit(fail, "second")
        await queue.join()

        await queue.submit(block)
        third = await queue.submit(fail, "third", gate)
        await settle()
        queue.pause()
        await queue.submit(block)  # pending, so the queue is full

        requeue = asyncio.create_task(queue.requeue(first.id))
        await settle()
        gate.set()
        with contextlib.suppress(ValueError):
            await third

        requeue.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await requeue

        letters = [letter.task_id for letter in queue.dead_letters()]
        hold.set()
        await queue.stop()
        # The first letter went back before the others, so it was evicted.
        assert letters == [second.id, third.id]

    run_virtual(main)
