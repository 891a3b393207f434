"""submit() and submit_nowait() queue the same task, on every path they take."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import AsyncTaskQueue, RetryPolicy, TaskState

QUEUE_POLICY = RetryPolicy(max_retries=0)
OWN_POLICY = RetryPolicy(max_retries=2, base_delay=0.0)

# One submission: whether it awaits submit(), its priority, and its retry
# policy (None, the queue's policy object, or another policy).
submission = st.tuples(
    st.booleans(),
    st.integers(min_value=-2, max_value=2),
    st.sampled_from([None, QUEUE_POLICY, OWN_POLICY]),
)


@settings(max_examples=60, deadline=None)
@given(submissions=st.lists(submission, min_size=1, max_size=20))
def test_both_methods_queue_alike(
    submissions: list[tuple[bool, int, RetryPolicy | None]],
) -> None:
    """Mixed calls of both methods give the same handles and one start order."""
    started: list[int] = []

    async def record(index: int) -> int:
        started.append(index)
        return index

    async def scenario() -> None:
        async with AsyncTaskQueue(1, retry=QUEUE_POLICY, timeout=30.0) as queue:
            queue.pause()
            handles = []
            for index, (awaited, priority, policy) in enumerate(submissions):
                if awaited:
                    handle = await queue.submit(
                        record, index, priority=priority, retry=policy
                    )
                else:
                    handle = queue.submit_nowait(
                        record, index, priority=priority, retry=policy
                    )
                handles.append(handle)

            assert [h.id for h in handles] == list(range(1, len(submissions) + 1))
            assert all(h.state is TaskState.PENDING for h in handles)
            for handle, (_, priority, policy) in zip(handles, submissions, strict=True):
                assert handle.priority == priority
                assert handle._settings.retry is (policy or QUEUE_POLICY)
                assert handle._settings.timeout == 30.0
                assert handle._settings.queue is queue

            queue.resume()
            assert [await h for h in handles] == list(range(len(submissions)))

        by_priority = sorted(
            range(len(submissions)), key=lambda index: -submissions[index][1]
        )
        assert started == by_priority

    asyncio.run(scenario())


async def test_submit_takes_checked_path_when_needed() -> None:
    """Options the inline path skips still apply when submit() is awaited."""
    async with AsyncTaskQueue(1, timeout=30.0) as queue:
        queue.pause()
        named = await queue.submit(asyncio.sleep, 0, task_id="named")
        delayed = await queue.submit(asyncio.sleep, 0, delay=3600.0)
        timed = await queue.submit(asyncio.sleep, 0, timeout=5.0)
        first = await queue.submit(asyncio.sleep, 0, dedup_key="key")
        again = await queue.submit(asyncio.sleep, 0, dedup_key="key")

        assert named.id == "named"
        assert delayed.state is TaskState.DELAYED
        assert timed._settings.timeout == 5.0
        assert again is first
        assert queue.stats().pending == 3

        delayed.cancel()
        queue.resume()
        await queue.join()

    assert [h.state for h in (named, delayed, timed, first)] == [
        TaskState.SUCCEEDED,
        TaskState.CANCELLED,
        TaskState.SUCCEEDED,
        TaskState.SUCCEEDED,
    ]
