"""run_virtual() misused: called inside a running event loop, or given a main
that is not a coroutine function.

An async test function (pytest-asyncio's auto mode makes every ``async def
test_*`` one) that calls run_virtual() is the usual way to call it inside a
running loop.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import warnings

import pytest

from async_queue.testing import VirtualClockLoop, run_virtual


def test_run_virtual_in_running_loop_names_fix() -> None:
    calls: list[VirtualClockLoop] = []

    async def main(loop: VirtualClockLoop) -> int:
        calls.append(loop)
        return 1

    async def async_test() -> None:
        run_virtual(main)

    with pytest.raises(RuntimeError) as caught:
        asyncio.run(async_test())

    message = str(caught.value)
    assert "run_virtual" in message
    assert "async def" in message
    assert calls == []


def test_run_virtual_in_running_loop_no_warning() -> None:
    async def main(loop: VirtualClockLoop) -> int:
        return 1

    async def async_test() -> None:
        with pytest.raises(RuntimeError):
            run_virtual(main)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(async_test())
        gc.collect()

    assert [str(warning.message) for warning in caught] == []


def test_run_virtual_rejects_sync_main() -> None:
    def main(loop: VirtualClockLoop) -> int:
        return 5

    with pytest.raises(TypeError, match=r"async def main\(loop\).*returned 5"):
        run_virtual(main)  # type: ignore[arg-type]


def test_run_virtual_rejects_coroutine_object() -> None:
    async def main(loop: VirtualClockLoop) -> int:
        return 5

    coroutine = main(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pass main itself, not main\(\.\.\.\)"):
        run_virtual(coroutine)  # type: ignore[arg-type]

    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
