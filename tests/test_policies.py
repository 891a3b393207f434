"""RetryPolicy: backoff, jitter, the retry decision and argument checks."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import re
import warnings
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from async_queue import AsyncTaskQueue, Jitter, RetryPolicy, TaskHandle, TaskState
from async_queue.testing import VirtualClockLoop, run_virtual

HUGE_RETRIES = [
    pytest.param(10**6, id="1e6"),
    pytest.param(10**18, id="1e18"),
    pytest.param(10**400, id="1e400"),
]

delays = st.floats(min_value=0, max_value=1e300, allow_nan=False)
# Delays whose ratio max_delay / base_delay fits in a float, for the properties
# other than the formula itself.
moderate_delays = st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e6))
multipliers = st.floats(min_value=1, max_value=1e6, allow_nan=False)
retries = st.one_of(
    st.integers(min_value=0, max_value=200),
    st.integers(min_value=0, max_value=10**18),
)
seeds = st.integers(min_value=0, max_value=2**32)


@st.composite
def policies(
    draw: st.DrawFn, jitter: Jitter = Jitter.NONE, wide: bool = False
) -> RetryPolicy:
    """Draw a valid policy with a seeded rng.

    Delays go up to 1e300 when ``wide`` is set, and up to 1e6 otherwise.
    """
    strategy = delays if wide else moderate_delays
    low, high = sorted([draw(strategy), draw(strategy)])
    return RetryPolicy(
        base_delay=low,
        max_delay=high,
        multiplier=draw(multipliers),
        jitter=jitter,
        rng=random.Random(draw(seeds)),
    )


def expected_backoff(policy: RetryPolicy, retry: int) -> float:
    """Compute min(base * multiplier ** retry, max) in log space, never overflowing."""
    base, cap = policy.base_delay, policy.max_delay
    if base == 0:
        return 0.0

    log_delay = math.log(base) + retry * math.log(policy.multiplier)
    if log_delay >= math.log(cap):
        return cap

    return math.exp(log_delay)


# Backoff


@given(policies(wide=True), retries)
@example(RetryPolicy(base_delay=5e-324, max_delay=1e308, jitter="none"), 10**6)
@example(RetryPolicy(base_delay=1e-300, max_delay=1e300, jitter="none"), 5000)
@example(RetryPolicy(base_delay=5e-324, max_delay=1.0, jitter="none"), 1024)
def test_backoff_matches_formula(policy: RetryPolicy, retry: int) -> None:
    delay = policy.backoff(retry)

    assert math.isclose(delay, expected_backoff(policy, retry), rel_tol=1e-9)
    assert delay <= policy.max_delay


@given(policies(), retries, retries)
def test_backoff_is_monotone(policy: RetryPolicy, first: int, second: int) -> None:
    low, high = sorted([first, second])

    assert policy.backoff(low) <= policy.backoff(high)


def test_backoff_exact_values() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=10, multiplier=3)

    assert [policy.backoff(n) for n in range(5)] == [0.5, 1.5, 4.5, 10.0, 10.0]


@pytest.mark.parametrize("retry", HUGE_RETRIES)
def test_backoff_huge_retry_caps(retry: int) -> None:
    policy = RetryPolicy(base_delay=1, max_delay=60, multiplier=2)

    assert policy.backoff(retry) == 60.0


@pytest.mark.parametrize("retry", HUGE_RETRIES)
def test_backoff_wide_delay_range_caps(retry: int) -> None:
    """max_delay / base_delay overflows to inf, yet the delay still caps."""
    policy = RetryPolicy(base_delay=5e-324, max_delay=1e308, multiplier=2)

    assert policy.backoff(retry) == 1e308


@pytest.mark.parametrize("retry", [0, 1, 7, *HUGE_RETRIES])
def test_backoff_zero_base(retry: int) -> None:
    policy = RetryPolicy(base_delay=0, max_delay=60, multiplier=2)

    assert policy.backoff(retry) == 0.0


@pytest.mark.parametrize("retry", [0, 1, 7, *HUGE_RETRIES])
def test_backoff_multiplier_one(retry: int) -> None:
    policy = RetryPolicy(base_delay=2.5, max_delay=60, multiplier=1)

    assert policy.backoff(retry) == 2.5


def test_backoff_negative_retry() -> None:
    policy = RetryPolicy()

    with pytest.raises(ValueError, match="-1"):
        policy.backoff(-1)


@pytest.mark.parametrize("retry", [math.nan, 2.5, True, "1", None])
@pytest.mark.parametrize("jitter", ["none", "decorrelated"])
def test_backoff_and_delay_reject_non_int_retry(retry: object, jitter: str) -> None:
    # A retry number of nan would give a NaN delay, and 2.5 a delay between
    # those of two retries.
    policy = RetryPolicy(jitter=jitter)  # type: ignore[arg-type]
    for method in (policy.backoff, policy.delay):
        with pytest.raises(TypeError, match=r"retry must be an int .*got"):
            method(retry)  # type: ignore[arg-type]


# Jitter


@given(policies(Jitter.NONE), retries)
def test_jitter_none_is_backoff(policy: RetryPolicy, retry: int) -> None:
    assert policy.delay(retry) == policy.backoff(retry)


@given(policies(Jitter.FULL), retries)
def test_jitter_full_range(policy: RetryPolicy, retry: int) -> None:
    backoff = policy.backoff(retry)
    delay = policy.delay(retry)

    assert delay >= 0
    assert delay <= backoff


@given(policies(Jitter.EQUAL), retries)
def test_jitter_equal_range(policy: RetryPolicy, retry: int) -> None:
    backoff = policy.backoff(retry)
    delay = policy.delay(retry)

    assert delay >= backoff / 2
    assert delay <= backoff


@given(policies(Jitter.DECORRELATED), st.lists(retries, min_size=1, max_size=10))
def test_jitter_decorrelated_range(policy: RetryPolicy, sequence: list[int]) -> None:
    """Each delay lies in [base_delay, previous * 3], capped at max_delay."""
    base, cap = policy.base_delay, policy.max_delay
    previous: float | None = None
    for retry in sequence:
        growth_limit = (base if previous is None else previous) * 3
        delay = policy.delay(retry, previous)

        assert delay >= base
        assert delay <= cap
        assert delay <= max(base, growth_limit)
        previous = delay


def test_jitter_decorrelated_grows() -> None:
    """A chain fed its own delays grows past 3 * base_delay, never past max_delay."""
    policy = RetryPolicy(
        base_delay=1, max_delay=30, jitter="decorrelated", rng=random.Random(7)
    )
    previous: float | None = None
    chain = []
    for retry in range(60):
        previous = policy.delay(retry, previous)
        chain.append(previous)

    assert min(chain) >= 1.0
    assert max(chain) > 3.0
    assert max(chain) <= 30.0


def _delay_sequence(policy: RetryPolicy) -> list[float]:
    previous: float | None = None
    sequence = []
    for retry in range(20):
        previous = policy.delay(retry, previous)
        sequence.append(previous)

    return sequence


@pytest.mark.parametrize("jitter", [Jitter.FULL, Jitter.EQUAL, Jitter.DECORRELATED])
def test_jitter_uses_injected_rng(jitter: Jitter) -> None:
    def make_policy(seed: int) -> RetryPolicy:
        return RetryPolicy(
            base_delay=1, max_delay=1000, jitter=jitter, rng=random.Random(seed)
        )

    random.seed(1)
    first = _delay_sequence(make_policy(42))
    random.seed(2)
    second = _delay_sequence(make_policy(42))
    other_seed = _delay_sequence(make_policy(43))

    assert first == second
    assert first != other_seed
    assert len(set(first)) > 1


def test_jitter_advances_rng() -> None:
    rng = random.Random(5)
    policy = RetryPolicy(jitter="full", rng=rng)
    untouched = random.Random(5)

    policy.delay(0)

    assert rng.getstate() != untouched.getstate()


@pytest.mark.parametrize("member", list(Jitter))
def test_jitter_string_normalised(member: Jitter) -> None:
    policy = RetryPolicy(jitter=member.value)  # type: ignore[arg-type]

    assert policy.jitter is member


def test_jitter_member_kept() -> None:
    policy = RetryPolicy(jitter=Jitter.EQUAL)

    assert policy.jitter is Jitter.EQUAL


def test_jitter_strings() -> None:
    values = {member.value for member in Jitter}

    assert values == {"none", "full", "equal", "decorrelated"}


# should_retry


def test_retry_respects_max_retries() -> None:
    policy = RetryPolicy(max_retries=2)
    error = ValueError("boom")

    assert policy.should_retry(error, 0) is True
    assert policy.should_retry(error, 1) is True
    assert policy.should_retry(error, 2) is False
    assert policy.should_retry(error, 3) is False


def test_retry_zero_max_retries() -> None:
    policy = RetryPolicy(max_retries=0)

    assert policy.should_retry(ValueError(), 0) is False


def test_retry_on_class() -> None:
    policy = RetryPolicy(retry_on=OSError)

    assert policy.should_retry(ConnectionResetError(), 0) is True
    assert policy.should_retry(ValueError(), 0) is False


def test_retry_on_tuple() -> None:
    policy = RetryPolicy(retry_on=(KeyError, TimeoutError))

    assert policy.should_retry(KeyError("k"), 0) is True
    assert policy.should_retry(TimeoutError(), 0) is True
    assert policy.should_retry(ValueError(), 0) is False


def test_retry_on_empty_tuple() -> None:
    policy = RetryPolicy(retry_on=())

    assert policy.should_retry(ValueError(), 0) is False


def test_retry_on_predicate() -> None:
    seen: list[BaseException] = []

    def transient(exc: BaseException) -> bool:
        seen.append(exc)
        return "transient" in str(exc)

    policy = RetryPolicy(retry_on=transient)
    retried = ValueError("transient failure")
    final = ValueError("permanent failure")

    assert policy.should_retry(retried, 0) is True
    assert policy.should_retry(final, 0) is False
    assert seen == [retried, final]


def test_retry_predicate_skipped_when_exhausted() -> None:
    seen: list[BaseException] = []

    def always(exc: BaseException) -> bool:
        seen.append(exc)
        return True

    policy = RetryPolicy(max_retries=1, retry_on=always)

    assert policy.should_retry(ValueError(), 1) is False
    assert seen == []


def test_retry_default_filter() -> None:
    policy = RetryPolicy()

    assert policy.should_retry(RuntimeError(), 0) is True
    assert policy.should_retry(KeyboardInterrupt(), 0) is False


@pytest.mark.parametrize(
    "retry_on",
    [
        BaseException,
        asyncio.CancelledError,
        (asyncio.CancelledError, ValueError),
        lambda exc: True,
    ],
    ids=["base-exception", "cancelled-class", "tuple", "predicate"],
)
def test_retry_never_cancelled_error(retry_on: Any) -> None:
    policy = RetryPolicy(max_retries=5, retry_on=retry_on)

    assert policy.should_retry(asyncio.CancelledError(), 0) is False


async def is_transient(exc: BaseException) -> bool:
    return False


async def fail_once() -> None:
    raise ValueError("boom")


def test_predicate_returning_coroutine_fails_task() -> None:
    # A plain function around an async predicate passes the check at creation,
    # so should_retry() rejects the coroutine it returns, which is truthy and
    # would retry every exception, and closes it without a warning.
    def predicate(exc: BaseException) -> Coroutine[Any, Any, bool]:
        return is_transient(exc)

    policy = RetryPolicy(max_retries=2, base_delay=0, retry_on=predicate)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="returned a coroutine"):
        policy.should_retry(ValueError(), 0)

    handles: list[TaskHandle[None]] = []

    async def main(loop: VirtualClockLoop) -> None:
        async with AsyncTaskQueue(1, retry=policy) as queue:
            handle = queue.submit_nowait(fail_once)
            handles.append(handle)
            with pytest.raises(TypeError, match="returned a coroutine"):
                await handle

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_virtual(main)

    handle = handles[0]
    assert handle.state is TaskState.FAILED
    assert handle.attempts == 1


# Argument checks


def assert_rejected(
    error: type[Exception], shown: object, **kwargs: Any
) -> pytest.ExceptionInfo[Exception]:
    with pytest.raises(error, match=re.escape(repr(shown))) as info:
        RetryPolicy(**kwargs)

    return info


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ["base_delay", "max_delay"])
def test_policy_rejects_delay_value(name: str, value: float) -> None:
    info = assert_rejected(ValueError, value, **{name: value})

    assert name in str(info.value)


@pytest.mark.parametrize("value", ["1", None, True, [1]])
@pytest.mark.parametrize("name", ["base_delay", "max_delay"])
def test_policy_rejects_delay_type(name: str, value: object) -> None:
    info = assert_rejected(TypeError, value, **{name: value})

    assert name in str(info.value)


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf, 10**400])
def test_policy_rejects_max_elapsed_value(value: float) -> None:
    info = assert_rejected(ValueError, value, max_elapsed=value)

    assert "max_elapsed" in str(info.value)


def test_max_elapsed_huge_int_named() -> None:
    """RetryPolicy(max_elapsed=10**5000) raises an error that names the field.

    The value is out of range, like ``10**400``, which raises ``ValueError``
    starting "max_elapsed must be a finite number of seconds".
    """
    with pytest.raises(ValueError, match="max_elapsed must be a finite number"):
        RetryPolicy(max_elapsed=10**5000)


@pytest.mark.parametrize("value", ["1", True, [1]])
def test_policy_rejects_max_elapsed_type(value: object) -> None:
    info = assert_rejected(TypeError, value, max_elapsed=value)

    assert "max_elapsed" in str(info.value)


@pytest.mark.parametrize(("value", "stored"), [(None, None), (0, 0.0), (2, 2.0)])
def test_policy_stores_max_elapsed(value: int | None, stored: float | None) -> None:
    policy = RetryPolicy(max_elapsed=value)

    assert policy.max_elapsed == stored
    assert type(policy.max_elapsed) is type(stored)


@pytest.mark.parametrize("name", ["base_delay", "max_delay", "multiplier"])
def test_policy_rejects_int_beyond_float(name: str) -> None:
    """An int too large for a float is rejected like inf, not with OverflowError."""
    value = 10**400
    with pytest.raises(ValueError, match=name):
        RetryPolicy(**{name: value})


def test_policy_rejects_max_below_base() -> None:
    info = assert_rejected(ValueError, 2.0, base_delay=5.0, max_delay=2.0)

    assert repr(5.0) in str(info.value)


@pytest.mark.parametrize("value", [0.5, 0.0, -2.0, math.nan, math.inf])
def test_policy_rejects_multiplier_value(value: float) -> None:
    assert_rejected(ValueError, value, multiplier=value)


@pytest.mark.parametrize("value", ["2", None, True])
def test_policy_rejects_multiplier_type(value: object) -> None:
    assert_rejected(TypeError, value, multiplier=value)


def test_policy_rejects_negative_retries() -> None:
    assert_rejected(ValueError, -1, max_retries=-1)


@pytest.mark.parametrize("value", [True, False, 2.0, "3", None])
def test_policy_rejects_retries_type(value: object) -> None:
    assert_rejected(TypeError, value, max_retries=value)


@pytest.mark.parametrize("value", ["FULL", "random", ""])
def test_policy_rejects_jitter(value: object) -> None:
    assert_rejected(ValueError, value, jitter=value)


@pytest.mark.parametrize("value", [None, 3, b"full"])
def test_policy_rejects_jitter_type(value: object) -> None:
    assert_rejected(TypeError, value, jitter=value)


@pytest.mark.parametrize(
    "value", [42, "ValueError", int, (ValueError, 42), (ValueError, int), ValueError()]
)
def test_policy_rejects_retry_on(value: object) -> None:
    assert_rejected(TypeError, value, retry_on=value)


class _AsyncPredicate:
    async def __call__(self, exc: BaseException) -> bool:
        return False


async def _async_predicate(exc: BaseException) -> bool:
    return False


@pytest.mark.parametrize("predicate", [_async_predicate, _AsyncPredicate()])
def test_async_retry_on_predicate_rejected(predicate: object) -> None:
    # The coroutine it would return is truthy, so every exception would be
    # retried whatever the predicate means, and no one would await it.
    with pytest.raises(
        TypeError, match=r"retry_on must be a plain function.*coroutine function"
    ):
        RetryPolicy(retry_on=predicate)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [42, None, random])
def test_policy_rejects_rng(value: object) -> None:
    assert_rejected(TypeError, value, rng=value)


def test_policy_accepts_random_subclass() -> None:
    rng = random.SystemRandom()
    policy = RetryPolicy(rng=rng)

    assert policy.rng is rng


def test_policy_normalises_numbers() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=8, multiplier=3)

    assert type(policy.base_delay) is float
    assert type(policy.max_delay) is float
    assert type(policy.multiplier) is float


# Dataclass


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_retries", 9), ("base_delay", 0.0), ("jitter", Jitter.NONE)],
)
def test_policy_is_frozen(name: str, value: object) -> None:
    policy = RetryPolicy()

    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(policy, name, value)

    assert getattr(policy, name) != value


def test_policy_replace_checks() -> None:
    policy = RetryPolicy()

    with pytest.raises(ValueError, match=re.escape(repr(-3))):
        dataclasses.replace(policy, max_retries=-3)


def test_policy_equality_ignores_rng() -> None:
    first = RetryPolicy(jitter="equal", rng=random.Random(1))
    second = RetryPolicy(jitter=Jitter.EQUAL, rng=random.Random(2))

    assert first == second
