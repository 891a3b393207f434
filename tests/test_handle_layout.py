"""The handle's layout: its size, and the settings its tasks share."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref

from hypothesis import given, settings
from hypothesis import strategies as st

from async_queue import AsyncTaskQueue, RetryPolicy, TaskHandle

NO_RETRY = RetryPolicy(max_retries=0)
# Distinct policies, each failing at once: a task's dead letter names its own.
POLICIES = [RetryPolicy(max_retries=0, base_delay=0.1 * n) for n in range(3)]


async def fails() -> None:
    raise ValueError("boom")


async def returns(value: int) -> int:
    return value


class ElevenFields:
    """Eleven fields and a weak reference slot, like a handle should have."""

    __slots__ = ("__weakref__", *(f"field{n}" for n in range(11)))


async def test_handle_fits_two_cache_lines() -> None:
    """The collector reads every live handle on each full pass: keep it small.

    On CPython 3.11 eleven fields and the weak reference slot take 128 bytes.
    """
    async with AsyncTaskQueue(1, retry=NO_RETRY) as queue:
        handle = queue.submit_nowait(returns, 1)
        pending_size = sys.getsizeof(handle)

        assert await handle == 1
        assert len(TaskHandle.__slots__) == 12
        assert pending_size == sys.getsizeof(ElevenFields())
        assert sys.getsizeof(handle) == pending_size
        if sys.version_info[:2] == (3, 11):
            assert pending_size == 128


@settings(max_examples=30, deadline=None)
@given(
    choices=st.lists(
        st.tuples(
            st.sampled_from([None, 0.5, 7, 60.0, "default"]),
            st.sampled_from([None, 0, 1, 2]),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_dead_letter_own_settings(
    choices: list[tuple[float | str | None, int | None]],
) -> None:
    """Tasks that share settings still report their own timeout and policy."""

    async def scenario() -> None:
        async with AsyncTaskQueue(2, retry=NO_RETRY, timeout=30.0) as queue:
            expected = []
            for timeout, policy in choices:
                options: dict[str, object] = {}
                if timeout != "default":
                    options["timeout"] = timeout
                if policy is not None:
                    options["retry"] = POLICIES[policy]
                queue.submit_nowait(fails, **options)  # type: ignore[arg-type]
                expected.append(
                    (
                        30.0 if timeout == "default" else timeout,
                        NO_RETRY if policy is None else POLICIES[policy],
                    )
                )

            await queue.join()
            letters = queue.dead_letters()

        assert [letter.timeout for letter in letters] == [t for t, _ in expected]
        assert all(
            letter.retry is policy
            for letter, (_, policy) in zip(letters, expected, strict=True)
        )

    asyncio.run(scenario())


async def test_many_timeouts_keep_values() -> None:
    """More distinct settings than the queue keeps for reuse lose nothing."""
    timeouts = [1.0 + index for index in range(200)]
    async with AsyncTaskQueue(4, retry=NO_RETRY) as queue:
        for timeout in timeouts:
            queue.submit_nowait(fails, timeout=timeout)
        await queue.join()

        assert [letter.timeout for letter in queue.dead_letters()] == timeouts


async def test_finished_custom_settings_free_queue() -> None:
    """A kept handle of a task with its own timeout and policy lets go of its queue."""
    queue = AsyncTaskQueue(1, retry=NO_RETRY)
    await queue.start()
    handle = queue.submit_nowait(returns, 3, timeout=5.0, retry=POLICIES[0])
    assert await handle == 3
    await queue.stop()
    reference = weakref.ref(queue)
    del queue
    gc.collect()

    assert reference() is None
    assert handle.result() == 3
    assert handle.cancel() is False


async def test_same_options_share_settings() -> None:
    """Tasks with equal options share one settings record, defaults included."""
    policy = POLICIES[1]
    async with AsyncTaskQueue(1, retry=NO_RETRY, timeout=30.0) as queue:
        first = queue.submit_nowait(returns, 1, retry=policy)
        second = queue.submit_nowait(returns, 2, retry=policy)
        equal_default = queue.submit_nowait(returns, 3, timeout=float("30"))
        default = queue.submit_nowait(returns, 4)

        assert first._settings is second._settings
        assert first._settings.retry is policy
        assert first._settings.timeout == 30.0
        assert equal_default._settings is default._settings
        assert default._settings.retry is NO_RETRY
        assert [await h for h in (first, second, equal_default, default)] == [
            1,
            2,
            3,
            4,
        ]
