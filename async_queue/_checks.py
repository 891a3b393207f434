"""Argument checks shared by the queue and its helpers.

Each check raises ``TypeError`` or ``ValueError`` with the rejected value and
the fix, before anything has been changed.
"""

from __future__ import annotations

import enum
import inspect
import math
from collections.abc import Sequence
from types import FunctionType, MethodType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from .models import Overflow, ShutdownMode, _format_int

if TYPE_CHECKING:
    from .policies import RetryPolicy

_CO_COROUTINE = inspect.CO_COROUTINE
_E = TypeVar("_E", bound=enum.Enum)

MIN_INTERVAL = 1e-9
"""The shortest interval of a schedule, in seconds."""


def shown(value: object) -> str:
    """Return ``repr(value)`` for an error message, even for a huge int.

    ``repr()`` of an int of more than 4,300 digits, Python's default limit,
    raises ``ValueError``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return _format_int(value)

    return repr(value)


def is_coroutine_function(fn: object) -> bool:
    """Return whether calling ``fn`` returns a coroutine.

    Plain ``async def`` functions and bound methods take a fast path, because
    ``submit()`` calls this for every task.
    """
    kind = type(fn)
    if kind is FunctionType:
        return bool(fn.__code__.co_flags & _CO_COROUTINE)  # type: ignore[attr-defined]

    if kind is MethodType:
        return is_coroutine_function(fn.__func__)  # type: ignore[attr-defined]

    from .models import BoundCall

    if kind is BoundCall:
        return True

    if inspect.iscoroutinefunction(fn):
        return True

    # An instance whose class defines __call__ as an async method.
    if not callable(fn) or isinstance(fn, type):
        return False

    return inspect.iscoroutinefunction(kind.__call__)


def check_coroutine_function(fn: object) -> None:
    """Raise ``TypeError`` unless ``fn`` is a coroutine function."""
    if is_coroutine_function(fn):
        return

    if inspect.iscoroutine(fn):
        raise TypeError(
            f"expected a coroutine function, got the coroutine object {fn!r}; "
            "pass the function and its arguments instead"
        )

    if inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"expected a coroutine function, got the async generator function "
            f"{_name(fn)}; wrap it in an 'async def' that consumes the generator"
        )

    if callable(fn):
        raise TypeError(
            f"expected a coroutine function, got the plain function {_name(fn)}; "
            "define it with 'async def', submit threaded(fn, ...) to run a "
            "blocking function in a thread, or, if it only calls a coroutine "
            "function, submit bind(coroutine_function, ...) instead"
        )

    raise TypeError(
        f"expected a coroutine function, got {fn!r} "
        f"of type {type(fn).__name__}, which is not callable"
    )


def check_priority(priority: object) -> int:
    """Return ``priority`` as an int, or raise ``TypeError``."""
    if type(priority) is int:
        return priority

    if isinstance(priority, int) and not isinstance(priority, bool):
        return int(priority)

    raise TypeError(
        f"priority must be an int (higher runs first), got {priority!r} "
        f"of type {type(priority).__name__}"
    )


def check_timeout(name: str, value: object) -> float | None:
    """Return a timeout in seconds, or ``None`` for no timeout."""
    if value is None:
        return None

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds or None, got {shown(value)} "
            f"of type {type(value).__name__}"
        )

    if not is_finite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a finite number of seconds > 0, got {shown(value)}; "
            "use None for no timeout"
        )

    return float(value)


def check_rate(name: str, value: object, unit: str, *, zero_ok: bool) -> float:
    """Return a finite rate in ``unit``: >= 0 with ``zero_ok``, else > 0.

    Both rates are optional, so the message suggests ``None`` instead.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of {unit} or None, got {shown(value)} "
            f"of type {type(value).__name__}"
        )

    if not is_finite(value) or value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(
            f"{name} must be a finite number of {unit} {bound}, got {shown(value)}; "
            f"use None for no {name.replace('_', ' ')}"
        )

    return float(value)


def check_interval(value: object) -> float:
    """Return the ``interval`` of a schedule: finite seconds > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"interval must be a number of seconds, got {shown(value)} "
            f"of type {type(value).__name__}"
        )

    if not is_finite(value) or value <= 0:
        raise ValueError(
            f"interval must be a finite number of seconds > 0, got {shown(value)}; "
            "to run a task once, submit it with delay= instead"
        )

    # A due time is the float first + k * interval. Floats near a loop time
    # of 10**4 s are about 1e-12 s apart, and near 10**9 s about 1e-7 s, so a
    # much smaller interval does not move the due time past the current one.
    if value < MIN_INTERVAL:
        raise ValueError(
            f"interval must be >= {MIN_INTERVAL!r} seconds, got {shown(value)}, "
            "which is below the resolution of the event loop's clock"
        )

    return float(value)


def check_seconds(
    name: str, value: object, *, allow_none: bool = False
) -> float | None:
    """Return a duration in seconds that is finite and >= 0."""
    if value is None and allow_none:
        return None

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds, got {shown(value)} "
            f"of type {type(value).__name__}"
        )

    if not is_finite(value) or value < 0:
        raise ValueError(
            f"{name} must be a finite number of seconds >= 0, got {shown(value)}"
        )

    return float(value)


def check_count(name: str, value: object, minimum: int, advice: str = "") -> int:
    """Return ``value`` if it is an int of at least ``minimum``.

    ``advice``, if given, ends the error message for ``None`` or a value
    below ``minimum``, which other libraries use for "no limit": what to
    pass instead.
    """
    tail = f"; {advice}" if advice else ""
    if isinstance(value, bool) or not isinstance(value, int):
        type_tail = tail if value is None else ""
        raise TypeError(
            f"{name} must be an int, got {shown(value)} of type "
            f"{type(value).__name__}{type_tail}"
        )

    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {shown(value)}{tail}")

    return value


def is_finite(value: float) -> bool:
    """Return whether ``value`` is finite, without OverflowError for huge ints."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", repr(fn)))


def reject_retry(retry: object) -> NoReturn:
    """Raise ``TypeError`` for a ``retry`` that is not a ``RetryPolicy``."""
    raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")


def check_task_id(task_id: object) -> str:
    """Return ``task_id`` as a plain str if it is a non-empty str; raise otherwise."""
    if not isinstance(task_id, str):
        raise TypeError(
            f"task_id must be a non-empty str, got {task_id!r}; "
            "omit it to get an int id from the queue"
        )

    if not task_id:
        raise ValueError(
            "task_id must be a non-empty str, got ''; "
            "omit it to get an int id from the queue"
        )

    # A str subclass may define a hash that changes while the task table keys
    # on it, so the table gets a plain str copy (str.__str__ makes one).
    return task_id if type(task_id) is str else str.__str__(task_id)


def check_task_key(task_id: object) -> None:
    """Raise ``TypeError`` unless ``task_id`` has the type of a task id."""
    if isinstance(task_id, bool) or not isinstance(task_id, (int, str)):
        raise TypeError(
            f"task_id must be the int id the queue gave or the str id given to "
            f"submit(), got {task_id!r}"
        )


def check_hooks(hooks: object) -> Sequence[object]:
    """Return ``hooks`` if it is a sequence, but not a str or bytes."""
    if isinstance(hooks, (str, bytes)) or not isinstance(hooks, Sequence):
        raise TypeError(
            f"hooks must be a list or tuple of hooks, got {hooks!r}; "
            "wrap a single hook in a list"
        )

    return hooks


def check_mode(mode: object) -> ShutdownMode:
    """Return the ``ShutdownMode`` that ``mode`` names, in any letter case."""
    return _member(ShutdownMode, "mode", mode, ShutdownMode.CANCEL)


def check_overflow(overflow: object, max_pending: int | None, aging: bool) -> Overflow:
    """Return the ``Overflow`` that ``overflow`` names, if it fits the queue."""
    policy = _member(Overflow, "overflow", overflow, Overflow.WAIT)
    if policy is not Overflow.WAIT and max_pending is None:
        raise ValueError(
            f"overflow={policy.value!r} needs a bound: pass max_pending as well"
        )

    if policy is Overflow.DROP_LOWEST and aging:
        raise ValueError(
            "overflow='drop_lowest' cannot be used with aging_rate, whose "
            "priorities change while tasks wait; use 'drop_newest' or no aging"
        )

    return policy


def _member(kind: type[_E], name: str, value: object, default: _E) -> _E:
    """Return the member of ``kind`` that ``value`` is or names, in any case.

    Names are matched in any letter case, such as "DRAIN" as written in the
    docs' tables. ``default`` is the parameter's default, named in the error
    for ``None``.
    """
    try:
        return kind(value.lower() if isinstance(value, str) else value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in kind)
        error = ValueError if isinstance(value, str) else TypeError
        article = "an" if kind.__name__[0] in "AEIOU" else "a"
        advice = ""
        if value is None:
            advice = f"; leave {name} out for the default, {default.value!r}"
        raise error(
            f"{name} must be {article} {kind.__name__} or one of {choices}, "
            f"got {shown(value)}{advice}"
        ) from None


def check_coroutine_object(
    fn: object, args: tuple[Any, ...], retry: RetryPolicy
) -> None:
    """Raise unless ``fn`` is a coroutine object, or a coroutine function,
    that may be submitted alone with the retry policy ``retry``."""
    if not inspect.iscoroutine(fn):
        check_coroutine_function(fn)

    if args:
        raise TypeError(
            f"got the coroutine object {fn!r} and positional arguments; pass "
            "the coroutine function with its arguments instead"
        )

    if retry.max_retries > 0:
        raise ValueError(
            f"the coroutine object {fn!r} cannot be retried, because a coroutine "
            "runs only once; submit the coroutine function and its arguments, "
            "or pass retry=RetryPolicy(max_retries=0)"
        )
