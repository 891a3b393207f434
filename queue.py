"""Backward-compatible facade for code that does ``from queue import AsyncTaskQueue``.

New code should import from ``async_queue``. This file re-exports the public
names of ``async_queue.__all__`` for callers of the legacy single-file module.

Because this file sits at the project root, any process whose ``sys.path``
starts there (scripts run from the root, ``python -m pip``, ``python -m pytest``,
multiprocessing spawn children) imports it in place of the standard library's
``queue`` module. So it also provides that module's whole public API, the very
same objects (``Queue``, ``LifoQueue``, ``PriorityQueue``, ``SimpleQueue``,
``Empty``, ``Full``, and ``ShutDown`` on Python 3.13+), and on access its
other names, such as ``_PySimpleQueue``. That keeps
``concurrent.futures``, ``asyncio.to_thread``, ``logging.handlers`` and
``multiprocessing`` working in the same process.

The standard module is loaded from the standard library directory under its
own name ``queue``, without being put in ``sys.modules``. Its classes then keep
``__module__ == "queue"``, so pickle finds them through ``sys.modules["queue"]``
whether that is this facade or the real module, for example when a
multiprocessing worker sends ``queue.Full`` back to its parent.

NOTE: for the same reason ``inspect.getsource()`` on those classes looks in this
file and raises ``OSError``. Tracebacks still show the standard library source.

The ``async_queue`` names are imported on first access (PEP 562), not at import
time. Code that uses only the standard API therefore does not import
``async_queue`` through this file, so it keeps working even if ``async_queue``
fails to import. It also lets ``async_queue`` import modules that import
``queue`` without an import cycle. Reading ``__all__`` or ``dir()`` imports
``async_queue``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
from types import ModuleType
from typing import Any


def _load_stdlib_queue() -> ModuleType:
    """Load the standard library's ``queue`` module without registering it."""
    facade_dir = os.path.dirname(os.path.realpath(__file__))
    # The standard library directory comes first. The rest of sys.path, minus
    # this directory, covers interpreters whose standard library is a zip file.
    search_path = [sysconfig.get_path("stdlib")]
    for entry in sys.path:
        if os.path.realpath(entry or os.curdir) != facade_dir:
            search_path.append(entry)
    spec = importlib.machinery.PathFinder.find_spec("queue", search_path)
    if spec is None or spec.loader is None:
        raise ImportError(
            f"standard library module 'queue' not found in {search_path} "
            f"(the facade's directory {facade_dir} is skipped)",
            name="queue",
        )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_stdlib_queue = _load_stdlib_queue()
_STDLIB_NAMES: tuple[str, ...] = tuple(_stdlib_queue.__all__)
for _name in _STDLIB_NAMES:
    globals()[_name] = getattr(_stdlib_queue, _name)
del _name


def _public_names() -> list[str]:
    import async_queue

    # Dunder names such as __version__ stay out because here they would
    # describe the module ``queue``.
    async_names = [name for name in async_queue.__all__ if not name.startswith("_")]
    return [*_STDLIB_NAMES, *async_names]


def __getattr__(name: str) -> Any:
    if name == "__all__":
        names = _public_names()
        globals()["__all__"] = names
        return names
    # The standard module's other names, such as _PySimpleQueue, come first:
    # reading one must not import async_queue either.
    if not name.startswith("__") and name in vars(_stdlib_queue):
        value = getattr(_stdlib_queue, name)
        globals()[name] = value
        return value
    # `from queue import X` looks up __path__ first, so underscore names must
    # not import async_queue.
    if not name.startswith("_"):
        import async_queue

        if name in async_queue.__all__:
            value = getattr(async_queue, name)
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # __all__ is listed before its first read, as in the standard module.
    return sorted({*globals(), *_public_names(), "__all__"})
