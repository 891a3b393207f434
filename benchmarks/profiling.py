"""A profile of async_queue's no-op path: submit_nowait, run, await the handle."""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats

from .contenders import QUEUE_CONTENDER
from .harness import loop_factory, optional_module, print_heading
from .throughput import time_pool

PROFILERS = ("cprofile", "pyinstrument")

# Functions listed from the cProfile output, by their own time.
TOP_FUNCTIONS = 20


def profile_cprofile(loop: str, n: int) -> str:
    """Run the no-op path under cProfile and return the top functions by own time.

    cProfile adds a fixed cost to every Python call, so it overstates code
    that makes many small calls. Read the ranking, not the absolute times.
    """
    profiler = cProfile.Profile()
    gc.collect()
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        profiler.enable()
        runner.run(time_pool(QUEUE_CONTENDER, n))
        profiler.disable()

    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(TOP_FUNCTIONS)
    return stream.getvalue()


def profile_pyinstrument(loop: str, n: int) -> str:
    """Run the no-op path under pyinstrument and return its call tree."""
    pyinstrument = optional_module("pyinstrument")
    if pyinstrument is None:
        raise RuntimeError(
            "pyinstrument is not installed; install it with "
            "pip install -e '.[bench]' or use --profile cprofile"
        )

    profiler = pyinstrument.Profiler(interval=0.0001, async_mode="disabled")
    gc.collect()
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        profiler.start()
        runner.run(time_pool(QUEUE_CONTENDER, n))
        profiler.stop()
    text: str = profiler.output_text(unicode=False, color=False)
    return text


def report(tool: str, loop: str, n: int) -> None:
    print_heading(f"Profile ({tool}): async_queue submit_nowait, N={n:,}, loop={loop}")
    if tool == "pyinstrument":
        print(profile_pyinstrument(loop, n))
    else:
        print(profile_cprofile(loop, n))
