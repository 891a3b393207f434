"""Fixtures shared by the whole suite."""

from __future__ import annotations

# Imported up front: a module imported for the first time inside the event
# loop reads files, which the blocking-call detector would report. The thread
# pool behind asyncio.to_thread() is such a module, and through it `queue`.
import concurrent.futures.thread  # noqa: F401
from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test that makes a blocking call inside a running event loop."""
    with blockbuster_ctx() as detector:
        yield detector
