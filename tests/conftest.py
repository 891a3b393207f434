"""Fixtures shared by the whole suite."""

from __future__ import annotations

import asyncio

# Imported up front: a module imported for the first time inside the event
# loop reads files, which the blocking-call detector would report. The thread
# pool behind asyncio.to_thread() is such a module, and through it `queue`.
import concurrent.futures.thread  # noqa: F401
from collections.abc import Callable, Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test that makes a blocking call inside a running event loop."""
    with blockbuster_ctx() as detector:
        yield detector


# Event loops for the tests marked `every_loop`. pytest-asyncio (1.4 and newer)
# runs each async test once per loop factory that the hook below returns for
# it, with the factory's name in the test id.
def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return _skip_uvloop

    return uvloop.new_event_loop


def _skip_uvloop() -> asyncio.AbstractEventLoop:
    pytest.skip("uvloop is not installed; install the test extra to run on it")


DEFAULT_LOOP: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
}
EVERY_LOOP = {**DEFAULT_LOOP, "uvloop": _uvloop_factory()}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run async tests marked `every_loop` on asyncio's loop and on uvloop.

    Synchronous tests in a marked module, such as those that drive their own
    ``VirtualClockLoop``, are left alone. Without uvloop, the uvloop run of
    each marked test is skipped with the reason.
    """
    if item.get_closest_marker("every_loop") is None:
        return DEFAULT_LOOP

    return EVERY_LOOP


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-tasks",
        type=int,
        default=20_000,
        help="number of tasks that each soak test submits (default: 20000)",
    )


@pytest.fixture
def soak_tasks(request: pytest.FixtureRequest) -> int:
    """The task count of a soak test, from --soak-tasks."""
    count: int = request.config.getoption("--soak-tasks")
    if count < 1:
        raise pytest.UsageError(f"--soak-tasks must be at least 1, got {count}")

    return count
