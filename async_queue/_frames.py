"""Tracebacks without the frames that would keep a queue alive.

A failed task's exception stays on its handle, and a traceback keeps every
frame it passes through, with their locals. A frame of a queue method
references the queue, so a caller that keeps a failed handle would keep the
whole stopped queue alive. The queue stores a copy of the traceback without
those frames, and keeps the frames of the task's own code.
"""

from __future__ import annotations

from types import CodeType, FrameType, TracebackType

__all__ = ("strip_frames",)

# Per frame id: the frame, kept alive so that its id stays its own, and
# whether it leads to a queue.
_Known = dict[int, tuple[FrameType, bool]]


def strip_frames(
    exc: BaseException | None, codes: frozenset[CodeType], stop: CodeType
) -> BaseException | None:
    """Drop the frames that lead to a queue from ``exc``'s traceback.

    A frame leads to a queue if it runs one of ``codes``, the queue's methods,
    or was called by such a frame, as a ``retry_on`` predicate is. The search
    up the callers ends at a frame running ``stop``, the worker loop, which
    lets go of the queue when it ends. The exceptions that ``exc`` was raised
    from or while handling, and the members of an exception group, lose
    their queue frames too. Returns ``exc``.
    """
    known: _Known = {}
    seen: set[int] = set()
    pending = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue

        seen.add(id(error))
        error.__traceback__ = _without_frames(error.__traceback__, codes, stop, known)
        pending += (error.__cause__, error.__context__)
        if isinstance(error, BaseExceptionGroup):
            pending += error.exceptions

    return exc


def _without_frames(
    tb: TracebackType | None,
    codes: frozenset[CodeType],
    stop: CodeType,
    known: _Known,
) -> TracebackType | None:
    """Return ``tb``, or a copy without the entries whose frames lead to a queue."""
    entries = []
    total = 0
    current = tb
    while current is not None:
        total += 1
        if not _leads_to(current.tb_frame, codes, stop, known):
            entries.append(current)
        current = current.tb_next

    if len(entries) == total:
        return tb

    copy = None
    for entry in reversed(entries):
        copy = TracebackType(copy, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)

    return copy


def _leads_to(
    frame: FrameType, codes: frozenset[CodeType], stop: CodeType, known: _Known
) -> bool:
    """Return whether ``frame`` runs one of ``codes``, or was called by one.

    On Python 3.12 and later, a finished coroutine's frame links to the frame
    that awaited it, so the search up the callers ends at ``stop``. ``known``
    caches the result for each frame on the way.
    """
    if frame.f_code in codes:
        return True

    path = []
    found = False
    current: FrameType | None = frame
    while current is not None:
        code = current.f_code
        if code is stop:
            break
        if code in codes:
            found = True
            break

        cached = known.get(id(current))
        if cached is not None:
            found = cached[1]
            break

        path.append(current)
        current = current.f_back

    for visited in path:
        known[id(visited)] = (visited, found)

    return found
