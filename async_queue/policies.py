"""Retry policy and exponential backoff with jitter."""

from __future__ import annotations

import asyncio
import enum
import inspect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ._checks import is_coroutine_function, shown

__all__ = ("Jitter", "RetryPolicy")

# The filter that decides which exceptions are retried: exception classes, or a
# predicate that receives the exception.
RetryFilter = (
    type[BaseException]
    | tuple[type[BaseException], ...]
    | Callable[[BaseException], bool]
)

JitterName = Literal["none", "full", "equal", "decorrelated"]

# Decorrelated jitter draws the next delay from [base_delay, previous * 3],
# the factor used by the AWS Architecture Blog post "Exponential Backoff And
# Jitter" (2015).
_DECORRELATED_GROWTH = 3.0

# A cancellation ends the task. KeyboardInterrupt and SystemExit end the
# worker and stop the event loop, so a retry could never run.
_NEVER_RETRIED = (asyncio.CancelledError, KeyboardInterrupt, SystemExit)


class Jitter(enum.Enum):
    """The randomisation applied to a backoff delay."""

    NONE = "none"
    """Wait exactly the computed delay."""

    FULL = "full"
    """Wait a uniform random time in ``[0, delay]``."""

    EQUAL = "equal"
    """Wait ``delay / 2`` plus a uniform random time in ``[0, delay / 2]``."""

    DECORRELATED = "decorrelated"
    """Wait a uniform random time in ``[base_delay, previous * 3]``, capped."""


def _check_delay(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds, got {shown(value)} "
            f"of type {type(value).__name__}"
        )

    if not _is_finite(value) or value < 0:
        raise ValueError(
            f"{name} must be a finite number of seconds >= 0, got {shown(value)}"
        )

    return float(value)


def _is_finite(value: float) -> bool:
    # math.isfinite() raises OverflowError for an int beyond the float range.
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed task runs again, and after how long.

    A task runs once and then up to ``max_retries`` more times while its
    exception passes ``retry_on``. Before retry ``n`` (``n`` is 0 for the first
    retry) it waits ``min(base_delay * multiplier ** n, max_delay)`` seconds,
    randomised by ``jitter``. The computation cannot overflow for any ``n``.

    While it waits, a task occupies no worker: it is parked on a timer and
    re-enters the ready heap at its priority when the delay ends.

    ``asyncio.CancelledError``, ``KeyboardInterrupt`` and ``SystemExit`` are
    never retried, whatever ``retry_on`` says.
    A task that runs over its timeout fails with ``TimeoutError``, which
    ``retry_on`` sees like any other exception.

    Args:
        max_retries: retries after the first attempt; 0 disables retrying.
        base_delay: delay in seconds before the first retry.
        max_delay: cap on any single backoff delay, in seconds; at least
            ``base_delay``. A ``RetryAfter`` delay is not capped.
        multiplier: growth factor per retry, at least 1.
        jitter: a ``Jitter`` member or its value (``"none"``, ``"full"``,
            ``"equal"``, ``"decorrelated"``).
        retry_on: exception classes to retry, or a predicate that receives
            the exception and returns whether to retry it.
        rng: the random source for jitter. Pass a seeded ``random.Random`` for
            reproducible delays; the default is a private unseeded one.
        max_elapsed: if set, the seconds from the start of a task's first
            attempt within which a retry must start. A retry whose delay
            would end later is not made, and the task fails with its last
            exception. It does not cut a running attempt short: use a
            timeout for that.
    """

    max_retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0
    jitter: Jitter | JitterName = Jitter.FULL
    retry_on: RetryFilter = Exception
    rng: random.Random = field(default_factory=random.Random, compare=False)
    max_elapsed: float | None = None

    def __post_init__(self) -> None:
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise TypeError(
                f"max_retries must be an int, got {shown(retries)}; "
                "use 0 to disable retries"
            )

        if retries < 0:
            raise ValueError(
                f"max_retries must be >= 0, got {shown(retries)}; "
                "use 0 to disable retries"
            )

        base = _check_delay("base_delay", self.base_delay)
        cap = _check_delay("max_delay", self.max_delay)
        if cap < base:
            raise ValueError(
                f"max_delay ({cap!r}) must be >= base_delay ({base!r}); "
                "raise max_delay or lower base_delay"
            )

        multiplier = self.multiplier
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)):
            raise TypeError(f"multiplier must be a number, got {shown(multiplier)}")

        if not _is_finite(multiplier) or multiplier < 1:
            raise ValueError(
                f"multiplier must be a finite number >= 1, got {shown(multiplier)}"
            )

        try:
            jitter = Jitter(self.jitter)
        except ValueError:
            choices = ", ".join(repr(member.value) for member in Jitter)
            error = ValueError if isinstance(self.jitter, str) else TypeError
            raise error(
                f"jitter must be a Jitter member or one of {choices}, "
                f"got {self.jitter!r}"
            ) from None

        _check_filter(self.retry_on)
        if not isinstance(self.rng, random.Random):
            raise TypeError(f"rng must be a random.Random, got {self.rng!r}")

        if self.max_elapsed is not None:
            budget = _check_delay("max_elapsed", self.max_elapsed)
            object.__setattr__(self, "max_elapsed", budget)

        object.__setattr__(self, "base_delay", base)
        object.__setattr__(self, "max_delay", cap)
        object.__setattr__(self, "multiplier", float(multiplier))
        object.__setattr__(self, "jitter", jitter)

    def should_retry(self, exc: BaseException, retries_done: int) -> bool:
        """Return whether a task that raised ``exc`` runs again.

        ``retries_done`` is the number of retries the task has already had.
        """
        if retries_done >= self.max_retries:
            return False

        if isinstance(exc, _NEVER_RETRIED):
            return False

        retry_on = self.retry_on
        if isinstance(retry_on, (type, tuple)):
            return isinstance(exc, retry_on)

        verdict: object = retry_on(exc)  # typed bool, but may be anything
        if inspect.isawaitable(verdict):
            # A sync wrapper of an async predicate passes the check in
            # __post_init__, and its coroutine is truthy.
            if inspect.iscoroutine(verdict):
                verdict.close()
            raise TypeError(
                f"retry_on {retry_on!r} returned a coroutine or awaitable, "
                "which the queue does not await; return a bool from a plain "
                "function instead"
            )

        return bool(verdict)

    def backoff(self, retry: int) -> float:
        """Return the delay before retry ``retry`` (0-based) without jitter."""
        if type(retry) is not int or retry < 0:
            _check_retry_number(retry)

        base, cap, multiplier = self.base_delay, self.max_delay, self.multiplier
        if base == 0 or multiplier == 1:
            return min(base, cap)

        # Compare exponents in log space, so that a huge retry number caps the
        # delay instead of overflowing the float power. Comparing the int
        # `retry` with a float is exact in Python, whatever its size.
        log_multiplier = math.log(multiplier)
        if retry >= (math.log(cap) - math.log(base)) / log_multiplier:
            return cap

        try:
            delay = base * multiplier**retry
        except OverflowError:
            # A tiny base times a power beyond the float range: still below cap.
            delay = math.exp(math.log(base) + retry * log_multiplier)

        return min(delay, cap)

    def delay(self, retry: int, previous: float | None = None) -> float:
        """Return the delay before retry ``retry`` (0-based), with jitter.

        ``previous`` is the delay before the preceding retry; only decorrelated
        jitter reads it, and treats ``None`` as ``base_delay``.
        """
        if type(retry) is not int or retry < 0:
            _check_retry_number(retry)

        if self.base_delay == 0 and self.jitter is not Jitter.DECORRELATED:
            return 0.0  # the backoff of every retry is 0, and so is any jitter of it

        delay = self._jittered(retry, previous)
        if math.isnan(delay):
            # Only a broken random source gets here; fall back to no jitter.
            return self.backoff(retry)

        return min(max(delay, 0.0), self.max_delay)

    def _jittered(self, retry: int, previous: float | None) -> float:
        jitter = self.jitter
        if jitter is Jitter.DECORRELATED:
            low = self.base_delay
            high = max(
                low, (low if previous is None else previous) * _DECORRELATED_GROWTH
            )
            return min(self.rng.uniform(low, high), self.max_delay)

        delay = self.backoff(retry)
        if jitter is Jitter.NONE:
            return delay

        if jitter is Jitter.FULL:
            return self.rng.uniform(0.0, delay)

        half = delay / 2
        return half + self.rng.uniform(0.0, half)


def _check_retry_number(retry: object) -> None:
    # The callers check the common case, a plain int >= 0, inline first.
    if isinstance(retry, bool) or not isinstance(retry, int):
        raise TypeError(
            f"retry must be an int (0 for the first retry), got {shown(retry)} "
            f"of type {type(retry).__name__}"
        )

    if retry < 0:
        raise ValueError(
            f"retry must be >= 0 (0 for the first retry), got {shown(retry)}"
        )


def _check_filter(retry_on: object) -> None:
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        return

    if isinstance(retry_on, tuple) and all(
        isinstance(item, type) and issubclass(item, BaseException) for item in retry_on
    ):
        return

    if is_coroutine_function(retry_on):
        # Its coroutine is truthy, so every exception would be retried.
        raise TypeError(
            f"retry_on must be a plain function that returns whether to retry, "
            f"got the coroutine function {retry_on!r}; the queue calls it "
            "without awaiting it, so decide without awaiting anything"
        )

    if callable(retry_on) and not isinstance(retry_on, (type, tuple)):
        return

    raise TypeError(
        "retry_on must be an exception class, a tuple of exception classes "
        f"or a callable taking the exception, got {retry_on!r}"
    )
