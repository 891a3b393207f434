"""run_virtual() called where it cannot run: inside a running event loop.

An async test function (pytest-asyncio's auto mode makes every ``async def
test_*`` one) that calls run_virtual() is the usual way to get here.
"""

from __future__ import annotations

import asyncio
import gc
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
