"""An event loop whose clock a test moves forward by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector loop whose ``time()`` runs ahead by ``offset`` seconds.

    ``advance()`` makes every timer due within the jump fire on the next loop
    iteration, so a test can cross a 60-second backoff without waiting for it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the loop clock forward by ``seconds``."""
        self.offset += seconds


def run_virtual(main: Callable[[VirtualClockLoop], Awaitable[T]]) -> T:
    """Run ``main(loop)`` to completion on a fresh ``VirtualClockLoop``."""

    async def wrapper() -> T:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop)
        return await main(loop)

    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(wrapper())
