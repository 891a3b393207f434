"""Logging on the ``async_queue`` logger that a failing filter cannot break."""

from __future__ import annotations

import contextlib
import logging

logger = logging.getLogger("async_queue")


def log(
    level: int, msg: str, *args: object, exc_info: bool | BaseException = False
) -> None:
    """Log ``msg % args`` on the ``async_queue`` logger, dropping its errors.

    The queue logs from steps that must run to the end, such as settling a
    task, stopping or starting a worker. A logging filter or handler that
    raises an ``Exception`` must not break them, so that error is dropped.
    ``KeyboardInterrupt`` and ``SystemExit`` still propagate. The record names
    the caller's line, as a direct call to the logger would.
    """
    with contextlib.suppress(Exception):
        logger.log(level, msg, *args, exc_info=exc_info, stacklevel=2)
