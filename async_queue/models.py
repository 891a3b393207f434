"""Task states and the task handle that callers hold."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator, Hashable
from dataclasses import dataclass, field
from types import FunctionType
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    NoReturn,
    ParamSpec,
    SupportsIndex,
    TypeVar,
    final,
)

from ._context import CURRENT_WORKER, THREAD_TASK, running_handle
from .errors import QueueStateError, TaskCancelledError

if TYPE_CHECKING:
    from types import TracebackType

    from .core import AsyncTaskQueue
    from .policies import RetryPolicy

__all__ = (
    "BoundCall",
    "QueueStats",
    "ShutdownMode",
    "ShutdownReport",
    "TaskHandle",
    "TaskId",
    "TaskState",
    "TimeSummary",
    "bind",
    "threaded",
)

T = TypeVar("T")
P = ParamSpec("P")

TaskId = int | str
"""A task id: an ``int`` chosen by the queue, or a ``str`` chosen by the caller."""


class TaskState(enum.Enum):
    """The stage of a task's life. The last three states are final."""

    DELAYED = "delayed"
    """Submitted with a delay, waiting for its start time; occupies no worker."""

    PENDING = "pending"
    """In the ready heap, waiting for a worker."""

    WAITING_RETRY = "waiting_retry"
    """Failed an attempt and is waiting out its backoff, occupying no worker."""

    RUNNING = "running"
    """A worker is running its coroutine."""

    SUCCEEDED = "succeeded"
    """Returned a result."""

    FAILED = "failed"
    """Raised an exception that was not retried, or ran out of retries."""

    CANCELLED = "cancelled"
    """Cancelled by ``cancel()`` or by ``stop()`` before it could finish."""

    # Members are singletons compared by identity, so identity can hash them
    # too. Enum's own hash is a Python call, and the queue tests a state's
    # membership in a set of states several times per task.
    __hash__ = object.__hash__

    @property
    def is_final(self) -> bool:
        """Whether the state never changes again."""
        return self in _FINAL


DELAYED = TaskState.DELAYED
PENDING = TaskState.PENDING
WAITING_RETRY = TaskState.WAITING_RETRY
RUNNING = TaskState.RUNNING
SUCCEEDED = TaskState.SUCCEEDED
FAILED = TaskState.FAILED
CANCELLED = TaskState.CANCELLED
_FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


class CancelReason(enum.Enum):
    """The reason the queue delivered ``CancelledError`` into a running task."""

    CANCEL = "cancel"
    TIMEOUT = "timeout"


@final
class TaskSettings:
    """The timeout, retry policy and queue of a task, shared between tasks.

    Every task submitted with the queue's default timeout and retry policy
    shares one instance, so a handle spends one field on all three.
    ``detached`` is the same settings without the queue: a task that has
    finished switches to it, so that the handles a caller keeps do not keep
    the queue alive.
    """

    __slots__ = ("detached", "queue", "retry", "timeout")

    def __init__(
        self, queue: AsyncTaskQueue | None, timeout: float | None, retry: RetryPolicy
    ) -> None:
        self.queue = queue
        self.timeout = timeout
        self.retry = retry
        self.detached = self if queue is None else TaskSettings(None, timeout, retry)


@final
class TaskExtras:
    """The fields that few tasks need, made the first time one is set."""

    __slots__ = (
        "cancel_message",
        "cancel_reason",
        "dedup_key",
        "first_started",
        "last_delay",
        "progress",
        "seq",
        "traceback",
    )

    def __init__(self, seq: int) -> None:
        self.seq = seq  # for a task with its own task_id, which is not seq
        self.traceback: TracebackType | None = None  # of the final exception
        self.cancel_reason: CancelReason | None = None  # set while interrupted
        self.cancel_message: str | None = None
        self.last_delay: float | None = None  # the previous retry's backoff
        self.first_started: float | None = None  # for a RetryPolicy.max_elapsed
        self.dedup_key: Hashable | None = None  # of a failed task, for its letter
        self.progress: Any = None  # the last value given to set_progress()


@final
class TaskHandle(Generic[T]):
    """A submitted task: its id and state, and the way to await its outcome.

    ``await handle`` returns the task's result, raises the task's own final
    exception (``TimeoutError`` after a timeout), or raises
    ``TaskCancelledError`` if the task was cancelled. Awaiting does not start or
    cancel anything: cancelling the coroutine that awaits leaves the task
    running, and that coroutine gets ``asyncio.CancelledError``.

    A handle keeps its own outcome for as long as the caller keeps it, even
    after the queue has evicted the task from its result store.
    """

    # The queue owns every field below and changes them only on its event loop
    # thread. A handle is the only record of a task, so the hot path allocates
    # one object per task plus an optional future per awaiting coroutine.
    __slots__ = (
        "__weakref__",
        "_args",
        "_attempts",
        "_extras",
        "_fn",
        "_id",
        "_priority",
        "_queued_at",
        "_result",
        "_settings",
        "_state",
        "_waiters",
    )

    # Eleven fields and a weak reference slot: 128 bytes, two cache lines,
    # which is what the cyclic garbage collector reads for each live handle.
    _settings: TaskSettings  # its queue is None once the task is final
    _id: TaskId  # the submission order, an int, unless the caller chose an id
    _fn: Callable[..., Any] | Coroutine[Any, Any, T]
    _args: tuple[Any, ...] | None  # None when `_fn` is a coroutine object
    _priority: int
    _state: TaskState
    _attempts: int
    _queued_at: float  # loop time of the last entry into the ready heap
    _result: Any  # the return value once SUCCEEDED, the exception once FAILED
    # Futures of awaiting coroutines, and done callbacks.
    _waiters: list[asyncio.Future[None] | Callable[[Any], object]] | None
    _extras: TaskExtras | None

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            "TaskHandle cannot be created directly; submit() and "
            "submit_nowait() of an AsyncTaskQueue return one per task"
        )

    @property
    def id(self) -> TaskId:
        """The task id: the caller's ``task_id`` or an ``int`` from the queue."""
        return self._id

    @property
    def state(self) -> TaskState:
        """The current state; see ``TaskState``."""
        return self._state

    @property
    def priority(self) -> int:
        """The priority; a higher number starts first."""
        return self._priority

    @property
    def attempts(self) -> int:
        """How many times the task has started, retries included."""
        return self._attempts

    @property
    def name(self) -> str:
        """The qualified name of the task's coroutine function."""
        fn = self._fn
        if type(fn) is FunctionType:  # the common case, first: hooks read it
            return fn.__qualname__

        return function_name(fn)

    @property
    def progress(self) -> Any:
        """The last value the task passed to ``set_progress()``, or ``None``.

        A retried task keeps the value of its earlier attempt until it sets a
        new one.
        """
        extras = self._extras
        return None if extras is None else extras.progress

    def set_progress(self, progress: Any) -> None:
        """Record how far the running task has come, and tell the hooks.

        ``progress`` is any value, such as a fraction between 0 and 1 or a
        dict of counts. The queue keeps it in ``progress`` and passes it to
        each hook's ``on_progress()``. The task calls it on itself, through
        ``current_handle()``; the queue does not check who calls it on the
        event loop.

        On the event loop it takes effect at once. A function that
        ``threaded()`` runs may call it for its own task from its thread: the
        value then reaches the handle and the hooks on the loop, soon after,
        and is dropped if that attempt has ended by then.

        Raises:
            QueueStateError: the task is not running, or the caller is in
                another thread than the event loop's and is not the task's
                ``threaded()`` function.
        """
        queue = self._settings.queue
        thread_task = THREAD_TASK.get()
        if (
            thread_task is not None
            and thread_task[0] is self
            and (queue is None or asyncio._get_running_loop() is not queue._loop)
        ):
            _report_from_thread(self, thread_task[1], progress)
            return

        if queue is None or self._state is not RUNNING:
            raise QueueStateError(
                f"task {self._id!r} is not running (its state is "
                f"{self._state.value}), and only a running task has progress to set"
            )

        queue._set_progress(self, progress)

    def done(self) -> bool:
        """Return whether the task is in a final state."""
        return self._state in _FINAL

    def cancelled(self) -> bool:
        """Return whether the task ended cancelled."""
        return self._state is CANCELLED

    def cancel(self, msg: str | None = None) -> bool:
        """Request cancellation, and return whether the request took effect.

        A pending task never starts. A task waiting out its backoff never runs
        again. A running task gets ``asyncio.CancelledError`` delivered into its
        coroutine; await the handle to wait until the coroutine has finished.
        Each ends ``CANCELLED``, even a running coroutine that suppresses the
        ``CancelledError``. Returns ``False`` for a task that is already final.
        """
        queue = self._settings.queue
        if queue is None or self._state in _FINAL:
            return False

        return queue._cancel_task(self, msg)

    def add_done_callback(self, callback: Callable[[TaskHandle[T]], object]) -> None:
        """Call ``callback(handle)`` from the event loop once the task is final.

        A task that is already final has the callback scheduled at once.
        Callbacks run in the order they were added, through
        ``loop.call_soon()``; an exception from one goes to the loop's
        exception handler.

        Raises:
            TypeError: ``callback`` is not callable, or is a coroutine function.
            RuntimeError: the task is final and no event loop is running.
        """
        _check_callback(callback)
        if self._state in _FINAL:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    f"task {self._id!r} is {self._state.value}, so its callback "
                    "would be scheduled on the running event loop, but none "
                    "runs; call add_done_callback() on the loop, or call the "
                    "callback directly"
                ) from None

            loop.call_soon(callback, self)
            return

        if self._waiters is None:
            self._waiters = []

        self._waiters.append(callback)

    def remove_done_callback(self, callback: Callable[[TaskHandle[T]], object]) -> int:
        """Remove every registration of ``callback``; return how many."""
        waiters = self._waiters
        if not waiters:
            return 0

        kept = [w for w in waiters if w != callback]
        removed = len(waiters) - len(kept)
        self._waiters = kept
        return removed

    def result(self) -> T:
        """Return the result, or raise the task's final exception.

        Raises:
            asyncio.InvalidStateError: the task is not final yet.
            TaskCancelledError: the task was cancelled.
        """
        state = self._state
        if state is SUCCEEDED:
            return self._result  # type: ignore[no-any-return]

        if state is FAILED:
            # NOTE: as with asyncio's Future, the raise adds the caller's
            # frames to the stored exception's traceback until the next call.
            # A hook of a queue that calls this for another task's handle
            # thus leaves frames that keep that queue alive for a while.
            exc: BaseException = self._result
            extras = self._extras
            raise exc.with_traceback(None if extras is None else extras.traceback)

        if state is CANCELLED:
            raise self._cancelled_error()

        raise asyncio.InvalidStateError(
            f"task {self._id!r} is {state.value}, not final; "
            "await the handle to wait for its result"
        )

    def exception(self) -> BaseException | None:
        """Return the final exception, or ``None`` if the task succeeded.

        A cancelled task returns a ``TaskCancelledError``.

        Raises:
            asyncio.InvalidStateError: the task is not final yet.
        """
        state = self._state
        if state is SUCCEEDED:
            return None

        if state is FAILED:
            return self._result  # type: ignore[no-any-return]

        if state is CANCELLED:
            return self._cancelled_error()

        raise asyncio.InvalidStateError(
            f"task {self._id!r} is {state.value}, not final; "
            "await the handle to wait for its exception"
        )

    def __await__(self) -> Generator[Any, None, T]:
        if self._state is SUCCEEDED and self._result is None:
            # Most background tasks return None. Awaiting one that has
            # finished then allocates nothing: an ended generator ends the
            # await at once, with None.
            return _EXHAUSTED

        return self._wait()

    def _wait(self) -> Generator[Any, None, T]:
        if self._state is SUCCEEDED:
            return self._result  # type: ignore[no-any-return]

        if self._state not in _FINAL:
            self._check_awaiting_loop()
            if self._awaits_itself():
                # Raised here, in a frame that names no queue, because the
                # error's traceback keeps its frames.
                raise RuntimeError(
                    f"task {self._id!r} cannot await its own handle: it would "
                    "wait for itself forever"
                )

            waiter = self._add_waiter()
            unblock = None
            try:
                # Checked inline: a coroutine that no worker made, such as the
                # code that submitted the task, is never a blocked worker.
                if CURRENT_WORKER.get() is not None:
                    unblock = self._block_caller(waiter)
                yield from waiter.__await__()
            finally:
                # A cancelled awaiter leaves the list, so that awaiting again
                # and again with a timeout does not grow it.
                if not waiter.done() or waiter.cancelled():
                    _discard(self._waiters, waiter)
                if unblock is not None:
                    unblock()
                    unblock = None  # a raised error's traceback keeps this frame

        return self.result()

    def _block_caller(self, waiter: asyncio.Future[None]) -> Callable[[], None] | None:
        # Counts the worker of a task of the same queue that awaits this
        # handle; returns the function that ends the count.
        queue = self._settings.queue
        assert queue is not None
        return queue._block_caller(waiter)

    def _check_awaiting_loop(self) -> None:
        # Checked before anything reads the queue's state, which belongs to
        # the thread of the queue's loop. A separate frame from _wait(), as
        # for _add_waiter().
        queue = self._settings.queue
        assert queue is not None
        if asyncio._get_running_loop() is queue._loop:
            return

        if queue._loop.is_closed():
            queue._check_loop()  # raises QueueStateError naming the closed loop

        raise QueueStateError(
            f"task {self._id!r} belongs to the event loop that started its "
            "queue, and a different loop awaits it; await the handle in a "
            "coroutine on that loop, for example through "
            "asyncio.run_coroutine_threadsafe() from another thread"
        )

    def _awaits_itself(self) -> bool:
        # NOTE: a task that awaits its own handle through shield(), wait(),
        # a TaskGroup, wait_for() before Python 3.12 or a child task made
        # outside the queue is not caught here (see _worker_above()). It
        # waits for itself until a timeout ends the wait.
        queue = self._settings.queue
        assert queue is not None
        # Not a child in its eager first step, which may be one that the
        # task never awaits, as when it waits for the task to end.
        return self._state is RUNNING and queue._calling_task(eager=False) is self

    def _add_waiter(self) -> asyncio.Future[None]:
        # A separate frame from _wait(), whose frame a raised exception's
        # traceback keeps: a local reference to the queue here goes away.
        queue = self._settings.queue
        assert queue is not None
        waiter: asyncio.Future[None] = queue._loop.create_future()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []

        waiters.append(waiter)
        if queue._lost_workers:
            # After the waiter is in place: under an eager task factory a new
            # worker may run this very task to its end inside the call.
            queue._replace_lost_workers()
        return waiter

    def __copy__(self) -> TaskHandle[T]:
        # The queue updates the one handle of a task in place, so a copy would
        # never change state, and cancelling it would corrupt the queue's
        # counts. A handle refers to its task, as a weak reference does.
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> TaskHandle[T]:
        return self

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError(
            f"a TaskHandle cannot be pickled: task {self._id!r} lives on the "
            "event loop of its queue; pickle handle.id, or the result of "
            "await handle, instead"
        )

    def __repr__(self) -> str:
        return (
            f"<TaskHandle id={self._id!r} {self.name} state={self._state.value} "
            f"priority={_format_int(self._priority)} attempts={self._attempts}>"
        )

    def _cancelled_error(self) -> TaskCancelledError:
        message = f"task {self._id!r} was cancelled"
        if self._extras is not None and self._extras.cancel_message:
            message += f": {self._extras.cancel_message}"

        return TaskCancelledError(message)


_new_object = object.__new__


def _finished() -> Generator[Any, None, None]:
    return
    yield  # a generator function, whose generator ends at once


# A generator that has already ended: `await` on it, or send(), returns None
# at once. Sharing one is safe, since it stays ended.
_EXHAUSTED: Generator[Any, None, Any] = _finished()
next(_EXHAUSTED, None)


def _check_callback(callback: object) -> None:
    from ._checks import is_coroutine_function

    if is_coroutine_function(callback):
        raise TypeError(
            f"a done callback must be a plain function, got the coroutine "
            f"function {callback!r}; pass a function that starts it with "
            "asyncio.create_task() instead"
        )

    if not callable(callback):
        raise TypeError(
            f"a done callback must be a function that takes the handle, "
            f"got {callback!r}"
        )


def new_handle(
    settings: TaskSettings,
    task_id: TaskId,
    fn: Callable[..., Any] | Coroutine[Any, Any, Any],
    args: tuple[Any, ...] | None,
    priority: int,
    queued_at: float = 0.0,
) -> TaskHandle[Any]:
    """Create the handle of a task that is being submitted, in state PENDING.

    The queue calls this once per task. It fills the slots of a bare instance
    itself: calling the class would cost a third more, because ``type``
    passes the arguments on to ``__init__`` through a tuple. A task with its
    own ``task_id`` also needs ``handle._extras = TaskExtras(seq)``.
    """
    handle: TaskHandle[Any] = _new_object(TaskHandle)
    handle._settings = settings
    handle._id = task_id
    handle._fn = fn
    handle._args = args
    handle._priority = priority
    handle._state = PENDING
    handle._attempts = 0
    handle._queued_at = queued_at
    handle._result = None
    handle._waiters = None
    handle._extras = None
    return handle


def extras_of(handle: TaskHandle[Any]) -> TaskExtras:
    """Return the rarely needed fields of ``handle``, making them if need be."""
    extras = handle._extras
    if extras is None:
        # A task with its own task_id got its extras when it was submitted.
        assert type(handle._id) is int
        extras = handle._extras = TaskExtras(handle._id)

    return extras


def seq_of(handle: TaskHandle[Any]) -> int:
    """Return the submission order of ``handle``'s task, from 1."""
    task_id = handle._id
    if type(task_id) is int:
        return task_id

    assert handle._extras is not None
    return handle._extras.seq


def _format_int(value: int) -> str:
    # str() raises ValueError past sys.get_int_max_str_digits() digits.
    try:
        return str(value)
    except ValueError:
        sign = "negative " if value < 0 else ""
        return f"<{sign}{value.bit_length()}-bit int>"


def _discard(
    waiters: list[asyncio.Future[None] | Callable[[Any], object]] | None,
    waiter: asyncio.Future[None],
) -> None:
    if waiters is not None and waiter in waiters:
        waiters.remove(waiter)


@final
class BoundCall(Generic[T]):
    """A coroutine function bound to its arguments, keyword arguments included.

    Made by ``bind()``. Calling it starts a fresh coroutine each time, so a
    task made from it can be retried.
    """

    __slots__ = ("args", "fn", "kwargs")

    def __init__(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> Awaitable[T]:
        return self.fn(*self.args, **self.kwargs)

    @property
    def name(self) -> str:
        """The qualified name of the bound function, or of the function that
        ``threaded()`` runs in a thread."""
        return _qualname(self._target()[0])

    def __repr__(self) -> str:
        target, args = self._target()
        parts = [_qualname(target), *map(repr, args)]
        parts += [f"{key}={value!r}" for key, value in self.kwargs.items()]
        maker = "bind" if target is self.fn else "threaded"
        return f"{maker}({', '.join(parts)})"

    def _target(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        # threaded() binds _run_in_thread to the function and its arguments.
        if self.fn is _run_in_thread and self.args:
            return self.args[0], self.args[1:]

        return self.fn, self.args


def function_name(fn: object) -> str:
    """Return the qualified name of the coroutine function that ``fn`` calls.

    Looks through ``bind()``, ``threaded()`` and ``functools.partial``, and
    names a callable object by its class.
    """
    if isinstance(fn, BoundCall):
        return fn.name

    target = getattr(fn, "func", fn)  # functools.partial
    return _qualname(target)


def _qualname(fn: object) -> str:
    return str(getattr(fn, "__qualname__", type(fn).__qualname__))


def bind(
    fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
) -> BoundCall[T]:
    """Bind a coroutine function to positional and keyword arguments.

    ``submit()`` passes its positional arguments on to the task and keeps every
    keyword for its own options, so a task option can never be taken for an
    argument of the callee. To pass keyword arguments, bind them::

        await queue.submit(bind(fetch, url, timeout=3.0), priority=2, timeout=10)

    Here ``fetch`` receives ``timeout=3.0`` and the task itself times out after
    10 seconds. The call is typed with ``ParamSpec``, so a type checker checks
    the arguments against ``fn``'s signature.
    """
    from ._checks import check_coroutine_function

    check_coroutine_function(fn)
    return BoundCall(fn, args, kwargs)


def threaded(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> BoundCall[T]:
    """Bind a plain function to run in a thread, as a task.

    The task calls ``asyncio.to_thread(fn, *args, **kwargs)``, which runs
    ``fn`` in the event loop's default thread pool. The task occupies a worker
    while it waits, so both the pool's size and ``max_workers`` cap how many
    such functions run at once.

    A thread cannot be cancelled. When such a task times out or is cancelled,
    the queue stops waiting for it at once (the task fails with
    ``TimeoutError`` or ends ``CANCELLED``, and its worker moves on), but the
    function keeps running in its thread until it returns, and its result is
    dropped. A retry after a timeout can therefore overlap the earlier call.
    A function that should stop early reads ``thread_cancel_event()``, which
    is set at that moment.
    """
    if not callable(fn):
        raise TypeError(f"expected a callable, got {fn!r} of type {type(fn).__name__}")

    from ._checks import is_coroutine_function

    if is_coroutine_function(fn):
        raise TypeError(
            f"{fn!r} is a coroutine function, which needs no thread; "
            "submit it directly, or with bind() for keyword arguments"
        )

    return BoundCall(_run_in_thread, (fn, *args), kwargs)


# The event of the threaded() call that runs in this context. asyncio.to_thread
# runs the function in a copy of the caller's context, so the thread can read
# it too.
_THREAD_CANCEL_EVENT: contextvars.ContextVar[threading.Event] = contextvars.ContextVar(
    "async_queue_thread_cancel_event"
)


async def _run_in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a thread, and set its cancel event if the wait is cancelled."""
    event = threading.Event()
    handle = running_handle()
    task_token = THREAD_TASK.set(None if handle is None else (handle, handle._attempts))
    event_token = _THREAD_CANCEL_EVENT.set(event)
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except asyncio.CancelledError:
        event.set()  # a timeout or a cancel of the task
        raise
    finally:
        _THREAD_CANCEL_EVENT.reset(event_token)
        THREAD_TASK.reset(task_token)


def _report_from_thread(handle: TaskHandle[Any], attempt: int, progress: Any) -> None:
    """Pass the progress of a ``threaded()`` function on to its event loop."""
    # Read once: the task may end, and drop its queue, at any moment.
    queue = handle._settings.queue
    if queue is None:
        return  # the task has ended: the report comes too late

    # NOTE: once the loop has closed, the report is dropped as well.
    with contextlib.suppress(RuntimeError):
        queue._loop.call_soon_threadsafe(
            queue._set_progress_from_thread, handle, attempt, progress
        )


def thread_cancel_event() -> threading.Event:
    """Return the event that is set if the calling ``threaded()`` task is stopped.

    Call it inside a function that ``threaded()`` runs. The event is set when
    the task times out or is cancelled, since the thread itself cannot be
    stopped: a long function checks ``is_set()`` between steps, or sleeps with
    ``wait(seconds)``, and returns early once it is set.

    Raises:
        RuntimeError: the caller is not a function that ``threaded()`` runs.
    """
    try:
        return _THREAD_CANCEL_EVENT.get()
    except LookupError:
        raise RuntimeError(
            "thread_cancel_event() works only inside a function that threaded() "
            "runs; pass a threading.Event of your own to other functions"
        ) from None


class ShutdownMode(enum.Enum):
    """The way ``stop()`` ends the work that is queued and running."""

    DRAIN = "drain"
    """Run every pending task, retries included, and wait for all of them."""

    FINISH_RUNNING = "finish_running"
    """Start nothing new: cancel what is pending, wait for what is running."""

    CANCEL = "cancel"
    """Cancel everything: pending tasks never start, running ones get
    ``CancelledError``."""


OverflowName = Literal["wait", "raise", "drop_newest", "drop_lowest"]
"""The names of the ``Overflow`` policies, which the queue also accepts."""


class Overflow(enum.Enum):
    """The policy of a queue with ``max_pending`` for a task that finds it full."""

    WAIT = "wait"
    """``await submit()`` waits for room; ``submit_nowait()`` raises
    ``QueueFullError``."""

    RAISE = "raise"
    """Every submit method raises ``QueueFullError`` at once."""

    DROP_NEWEST = "drop_newest"
    """The new task is dropped: its handle comes back ``CANCELLED``."""

    DROP_LOWEST = "drop_lowest"
    """The pending task of lowest priority that would start last is dropped,
    if its priority is below the new task's; otherwise the new task is."""


@dataclass(frozen=True, slots=True)
class TimeSummary:
    """Count, total and maximum of a series of durations, in seconds."""

    count: int
    """Number of durations."""
    total: float
    """Their sum, in seconds."""
    max: float
    """The longest, in seconds; 0 if there is none."""

    @property
    def mean(self) -> float:
        """The mean duration in seconds; 0 if there is none."""
        return self.total / self.count if self.count else 0.0


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot of a queue's counts, taken by ``AsyncTaskQueue.stats()``."""

    pending: int
    """Tasks in the ready heap."""
    waiting_retry: int
    """Tasks waiting out a backoff before their next attempt."""
    delayed: int
    """Tasks submitted with a delay whose start time has not come."""
    running: int
    """Tasks whose coroutine a worker is running."""
    succeeded: int
    """Tasks that ended ``SUCCEEDED``."""
    failed: int
    """Tasks that ended ``FAILED``."""
    cancelled: int
    """Tasks that ended ``CANCELLED``."""
    retries: int
    """Retries scheduled so far, over all tasks."""
    workers: int
    """Worker coroutines alive."""
    submitted: int
    """Tasks accepted so far, by any submit method, ``requeue()`` or
    ``every()``. A submission for which ``dedup_key`` returned an existing
    handle counts in ``deduplicated`` instead."""
    retained: int
    """Finished tasks kept for lookup by id."""
    paused: bool
    """Whether ``pause()`` keeps workers from starting tasks."""
    dead_letters: int
    """Failed tasks kept by ``dead_letters()``."""
    deduplicated: int
    """Submissions given an unfinished task's handle through ``dedup_key``."""
    dropped: int
    """Queued tasks that ``stop()`` or the ``overflow`` policy cancelled
    before their next attempt, also counted in ``cancelled``."""
    depth_by_priority: tuple[tuple[int, int], ...]
    """``(priority, pending tasks)`` pairs, highest priority first."""
    oldest_wait: float = field(compare=False)
    """Seconds the longest-waiting pending task has been in the ready heap.
    Left out of ``==``, because it grows with the clock alone."""
    wait_time: TimeSummary
    """Time from entering the ready heap to starting, over all attempts."""
    run_time: TimeSummary
    """Time per attempt, over all finished attempts."""
    evicted: int
    """Finished tasks dropped from lookup by ``max_results`` or ``result_ttl``."""
    dead_letters_evicted: int
    """Dead letters dropped by ``max_dead_letters``, or replaced by a newer
    letter of the same task id."""


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """An account of the tasks that ``stop()`` found unfinished.

    Every task listed here is in a final state, ``CANCELLED`` in each list.
    """

    mode: ShutdownMode
    """The mode that ``stop()`` was called with."""
    escalated: bool
    """Whether the deadline passed and the stop escalated to ``CANCEL``."""
    never_started: tuple[TaskHandle[Any], ...]
    """Pending tasks cancelled before their first attempt."""
    retries_cancelled: tuple[TaskHandle[Any], ...]
    """Tasks that had failed an attempt and were cancelled before the next."""
    interrupted: tuple[TaskHandle[Any], ...]
    """Running tasks that got ``CancelledError``."""
    abandoned: tuple[TaskHandle[Any], ...]
    """Interrupted tasks still running after the grace period. Their coroutine
    suppressed the cancellation; the queue stopped waiting for them."""

    @property
    def dropped(self) -> tuple[TaskHandle[Any], ...]:
        """Tasks that were queued for an attempt that never ran."""
        return self.never_started + self.retries_cancelled
