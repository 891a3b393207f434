"""The virtual clock that the library ships, under the name the tests use."""

from __future__ import annotations

from async_queue.testing import VirtualClockLoop, run_virtual

__all__ = ("VirtualClockLoop", "run_virtual")
