"""Helpers for test suites: a test mode without backoff, and a virtual clock.

Test mode makes every retry delay zero, so a test suite that exercises
retries never sleeps through them::

    from async_queue import testing

    testing.set_testing(True)       # for the whole process, or:
    with testing.set_testing(True):
        await queue.submit(flaky)   # retried at once, as often as the policy allows

``VirtualClockLoop`` is an event loop whose clock a test moves forward by hand.
The queue reads every time from its loop (backoff, delays, timeouts, the rate
limit and aging), so on this loop all of them run in virtual time::

    async def main(loop: testing.VirtualClockLoop) -> None:
        ...
        loop.advance(60)            # a 60 s backoff is over

    testing.run_virtual(main)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import math
import selectors
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, TypeVarTuple, cast

from ._checks import check_seconds

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = (
    "VirtualClockLoop",
    "is_testing",
    "run_virtual",
    "set_testing",
)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _TestMode:
    # One flag for the process, read by the queue each time it schedules a
    # retry. It is not per event loop or per thread.
    enabled = False


class set_testing(contextlib.AbstractContextManager[None]):
    """Turn test mode on or off for the whole process.

    In test mode every retry waits zero seconds: backoff, jitter and
    ``RetryAfter`` delays are skipped, and the policy's random source is not
    used, so the number and order of retries stay deterministic. Retry counts
    and filters still apply.

    The call takes effect at once. Used as a context manager, it also restores
    the previous setting on exit. The class is named like a function because
    it is called like one.
    """

    def __init__(self, enabled: bool) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {enabled!r}")

        self._previous = _TestMode.enabled
        _TestMode.enabled = enabled

    def __exit__(self, *exc_info: object) -> None:
        _TestMode.enabled = self._previous


def is_testing() -> bool:
    """Return whether test mode is on."""
    return _TestMode.enabled


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock moves only when the test moves it.

    ``time()`` starts at the whole seconds of the real monotonic time of the
    loop's creation and then stays fixed: however long a callback takes,
    virtual times stay exact. ``advance()`` makes every timer due within the
    jump fire on the next loop iteration.

    When the loop has nothing to run, no I/O arrives for ``autojump`` real
    seconds and no function it passed to an executor (``run_in_executor()``,
    ``asyncio.to_thread()``) is still running, the clock jumps to the next
    timer, so a coroutine that awaits a timer which no ``advance()`` reaches
    still finishes, at its exact virtual time. A test that checks a timer
    has not fired yet keeps the loop busy (``await asyncio.sleep(0)``)
    between its steps. ``autojump=None`` turns the jumps off: then only
    ``advance()`` moves the clock.

    asyncio's debug mode times callbacks with the loop's clock, so it would
    report each callback that calls ``advance()`` as slow; this loop turns
    that report off.
    """

    def __init__(self, *, autojump: float | None = 0.05) -> None:
        super().__init__(_JumpingSelector(selectors.DefaultSelector(), self))
        if autojump is not None:
            try:
                autojump = check_seconds("autojump", autojump)
            except (TypeError, ValueError):
                self.close()
                raise

        # Whole seconds, so that the start plus whole seconds is exact: from
        # a fractional start such as 32753.3, adding 20 rounds the result.
        self._start = float(math.floor(time.monotonic()))
        self._offset = 0.0
        self._resolution: float = self._clock_resolution
        self._fit_resolution()
        self.autojump = autojump
        """Real seconds of idleness after which the clock jumps, or ``None``."""
        self.slow_callback_duration = math.inf
        # Executor calls submitted and not yet returned. A thread's work takes
        # real time, so the clock must not jump while one runs.
        self._executor_calls = 0
        self._executor_lock = threading.Lock()

    @property
    def offset(self) -> float:
        """Virtual seconds advanced so far."""
        return self._offset

    @offset.setter
    def offset(self, seconds: float) -> None:
        checked = check_seconds("offset", seconds)
        assert checked is not None
        if checked < self._offset:
            raise ValueError(
                f"offset must not go back from {self._offset!r}, got {seconds!r}: "
                "asyncio's timers and the queue assume that the clock never "
                "goes back; use a new loop to start again"
            )

        self._offset = checked
        self._fit_resolution()

    def time(self) -> float:
        return self._start + self._offset

    def advance(self, seconds: float) -> None:
        """Move the loop clock forward by ``seconds``."""
        checked = check_seconds("seconds", seconds)
        assert checked is not None
        self.offset += checked

    def _fit_resolution(self) -> None:
        # asyncio runs a timer once its time is below time() plus the clock's
        # resolution. Past about 2**24 seconds (194 days of uptime, where the
        # clock starts) floats are more than 1e-9 apart, time() plus 1e-9 is
        # time() itself, and a timer due at exactly time() would never run:
        # the loop would spin. A few units in the last place cover that and
        # the rounding of times computed along different paths.
        self._clock_resolution = max(self._resolution, 4 * math.ulp(self.time()))

    def _seconds_to_jump(self, timeout: float) -> float:
        """Return how far to jump for ``timeout``, the wait that select() got.

        asyncio passes select() at most 24 hours; the jump goes on to the
        next timer instead. ``_scheduled`` is asyncio's own timer heap.
        """
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            until_next = scheduled[0].when() - self.time()
            # A timer at infinity, such as asyncio.sleep(math.inf), is never
            # due: a jump to it would leave time() at infinity for good.
            if math.isfinite(until_next):
                return max(timeout, until_next)

        return timeout

    def run_in_executor(
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[[*Ts], T],
        *args: *Ts,
    ) -> asyncio.Future[T]:
        function: object = func  # typed, but not checked at run time
        if self.get_debug() and (
            inspect.iscoroutine(function) or inspect.iscoroutinefunction(function)
        ):
            # The wrapper below would hide it from asyncio's own check.
            raise TypeError(
                f"run_in_executor() runs plain functions, got the coroutine "
                f"function or coroutine {func!r}; await it on the loop instead"
            )

        call = _ExecutorCall(self, func, args)
        with self._executor_lock:
            self._executor_calls += 1
        try:
            if executor is None or isinstance(
                executor, concurrent.futures.ThreadPoolExecutor
            ):
                future = super().run_in_executor(executor, call)
                future.add_done_callback(call.on_future_done)
            else:
                # Another executor, such as a process pool, may pickle the
                # function, so it gets the function itself. The call then
                # counts until its future is done.
                future = super().run_in_executor(executor, func, *args)
                future.add_done_callback(lambda _: call.stop_counting())
        except BaseException:
            call.stop_counting()
            raise

        return future

    def _executor_busy(self) -> bool:
        """Return whether a function passed to an executor may still run."""
        with self._executor_lock:
            return self._executor_calls > 0


class _ExecutorCall(Generic[T]):
    """A function run by an executor, counted while it may still run.

    It counts until it returns in its thread, or, if the executor never
    started it (the future was cancelled first), until its future is done.
    """

    def __init__(
        self, loop: VirtualClockLoop, func: Callable[..., T], args: tuple[Any, ...]
    ) -> None:
        self._loop = loop
        self._func = func
        self._args = args
        self._started = False
        self._counted = True

    def __call__(self) -> T:
        with self._loop._executor_lock:
            self._started = True
            if not self._counted:
                # Its future was cancelled as the thread picked it up.
                self._counted = True
                self._loop._executor_calls += 1

        try:
            return self._func(*self._args)
        finally:
            self.stop_counting()

    def on_future_done(self, future: asyncio.Future[T]) -> None:
        with self._loop._executor_lock:
            if self._started or not self._counted:
                return  # the thread stops counting it when it returns

            self._counted = False
            self._loop._executor_calls -= 1

    def stop_counting(self) -> None:
        """Stop counting this call, once."""
        with self._loop._executor_lock:
            if self._counted:
                self._counted = False
                self._loop._executor_calls -= 1


class _JumpingSelector(selectors.BaseSelector):
    """The loop's selector, which jumps the virtual clock when the loop idles.

    The loop passes ``select()`` the time until its next timer, at most 24
    hours. After ``autojump`` real seconds without I/O, the clock jumps to
    that timer, however far it is, and the timer is due when ``select()``
    returns.
    """

    def __init__(
        self, selector: selectors.BaseSelector, loop: VirtualClockLoop
    ) -> None:
        self._selector = selector
        self._loop = loop

    def select(
        self, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        autojump = self._loop.autojump
        if timeout is None or timeout <= 0 or autojump is None:
            return self._selector.select(timeout)

        if self._loop._executor_busy():
            # The thread's result arrives through the loop's self-pipe, which
            # wakes this wait.
            return self._selector.select(timeout)

        events = self._selector.select(min(timeout, autojump))
        if not events:
            self._loop.offset += self._loop._seconds_to_jump(timeout)

        return events

    # The rest is the wrapped selector's.

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._selector.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._selector.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._selector.modify(fileobj, events, data)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._selector.get_map()

    def close(self) -> None:
        self._selector.close()


def run_virtual(
    main: Callable[[VirtualClockLoop], Awaitable[T]],
    *,
    autojump: float | None = 0.05,
) -> T:
    """Run ``main(loop)`` to completion on a new ``VirtualClockLoop``.

    ``autojump`` is passed to the loop: ``None`` leaves the clock to
    ``advance()`` alone.
    """
    main_object: object = main  # typed, but not checked at run time
    if inspect.iscoroutine(main_object) or not callable(main_object):
        if inspect.iscoroutine(main_object):
            main_object.close()  # it never runs, so Python need not warn
        raise TypeError(
            f"main must be a function such as 'async def main(loop)', got "
            f"{main!r}; pass main itself, not main(...)"
        )

    if asyncio._get_running_loop() is not None:
        # Checked before anything is made: asyncio's own error would come with
        # warnings about coroutines that were never awaited.
        raise RuntimeError(
            "run_virtual() starts its own event loop, so it cannot be called "
            "while one is running; call it from a plain 'def' test function, "
            "not from an 'async def' one"
        )

    loop = VirtualClockLoop(autojump=autojump)  # checks autojump before running

    async def wrapper() -> T:
        awaitable: object = main(loop)  # typed, but not checked at run time
        if not inspect.isawaitable(awaitable):
            raise TypeError(
                f"main(loop) must return an awaitable, so define it as "
                f"'async def main(loop)'; {main!r} returned {awaitable!r}"
            )

        return await cast(Awaitable[T], awaitable)

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        return runner.run(wrapper())
