"""Type checks of the root facade, run by ``mypy --strict`` in scripts/test.sh.

mypy runs from the project root, so ``import queue`` finds the facade and
its stub ``queue.pyi`` there, as it does for a legacy caller's code. Lines
marked ``type: ignore[...]`` must stay errors, as in api_usage.py: if the
facade's names were typed ``Any``, those ignores would go unused and fail.
"""

from __future__ import annotations

import queue
from queue import AsyncTaskQueue, RetryPolicy, TaskHandle
from typing import assert_type


async def add(a: int, b: int) -> int:
    return a + b


async def legacy_usage() -> None:
    async with AsyncTaskQueue(4, retry=RetryPolicy(max_retries=1)) as tasks:
        handle = await tasks.submit(add, 1, 2)
        assert_type(handle, TaskHandle[int])
        assert_type(await handle, int)

    AsyncTaskQueue(max_workers="4")  # type: ignore[arg-type]


def standard_usage() -> None:
    items: queue.Queue[int] = queue.Queue(maxsize=2)
    items.put(1)
    assert_type(items.get_nowait(), int)
    items.put("2")  # type: ignore[arg-type]

    simple: queue.SimpleQueue[str] = queue.SimpleQueue()
    simple.put("a")
    assert_type(simple.get(timeout=0.1), str)

    stack: queue.LifoQueue[bytes] = queue.LifoQueue()
    assert_type(stack.queue, list[bytes])

    # Items of a PriorityQueue must support < or >, as typeshed requires.
    queue.PriorityQueue[dict[str, int]]()  # type: ignore[type-var]

    try:
        items.get(block=False)
    except queue.Empty as error:
        assert_type(error, queue.Empty)
