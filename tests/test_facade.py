"""The root ``queue.py`` facade, checked the way legacy callers meet it.

Each check runs in a child interpreter started with ``python -c`` in the
project root, so ``sys.path[0]`` is the root and ``import queue`` finds the
facade instead of the standard library module. The child prints JSON and
the test asserts on it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FACADE = ROOT / "queue.py"
STDLIB_QUEUE = Path(sysconfig.get_path("stdlib")) / "queue.py"
CHILD_TIMEOUT_SECONDS = 60.0

# Worker functions for spawn children, which import them by module name.
PROBE_MODULE = """
import queue


def facade_file(_: object) -> str:
    return queue.__file__


def square(value: int) -> int:
    return value * value


def overfill(size: int) -> None:
    bounded = queue.Queue(maxsize=size)
    for item in range(size + 1):
        bounded.put_nowait(item)
"""


def run_child(code: str, extra_path: Path | None = None) -> Any:
    """Run ``code`` with ``python -W error -c`` in the project root.

    Returns the JSON the child printed on its last line of output. Fails if
    the child exits non-zero or writes anything to stderr, so a warning at
    import fails the test.
    """
    env = dict(os.environ)
    # Both would keep the project root off sys.path or put it behind others.
    env.pop("PYTHONSAFEPATH", None)
    env.pop("PYTHONPATH", None)
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)

    completed = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_SECONDS,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    return json.loads(completed.stdout.splitlines()[-1])


def test_facade_shadows_stdlib() -> None:
    report = run_child(
        """
        import json, sys
        import queue
        print(json.dumps({
            "file": queue.__file__,
            "registered": sys.modules["queue"] is queue,
            "stdlib_file": queue._stdlib_queue.__file__,
        }))
        """
    )

    assert Path(report["file"]) == FACADE
    assert report["registered"] is True
    assert Path(report["stdlib_file"]) == STDLIB_QUEUE


def test_facade_reexports_async_queue() -> None:
    report = run_child(
        """
        import json
        from queue import AsyncTaskQueue, RetryPolicy, bind
        import async_queue
        import queue

        names = [
            "AsyncTaskQueue", "RetryPolicy", "Jitter", "bind", "TaskHandle",
            "TaskState", "ShutdownMode", "ShutdownReport", "QueueStats",
            "AsyncQueueError", "QueueStateError", "QueueClosedError",
            "TaskCancelledError", "DuplicateTaskIdError", "TaskNotFoundError",
        ]
        print(json.dumps({
            "imported_is_same": AsyncTaskQueue is async_queue.AsyncTaskQueue,
            "different": [
                name for name in names
                if getattr(queue, name) is not getattr(async_queue, name)
            ],
        }))
        """
    )

    assert report["imported_is_same"] is True
    assert report["different"] == []


def test_facade_runs_queue_by_priority() -> None:
    report = run_child(
        """
        import asyncio, json
        from queue import AsyncTaskQueue, RetryPolicy, bind

        async def main():
            started = []
            release = asyncio.Event()

            async def record(label, *, scale):
                started.append(label)
                return label * scale

            async with AsyncTaskQueue(1, retry=RetryPolicy(max_retries=0)) as q:
                blocker = await q.submit(release.wait)
                for _ in range(1000):
                    if q.stats().running == 1:
                        break
                    await asyncio.sleep(0)
                handles = [
                    await q.submit(bind(record, label, scale=2), priority=priority)
                    for label, priority in [("low", -1), ("high", 9), ("mid", 3)]
                ]
                release.set()
                results = [await handle for handle in handles]
                await blocker
            return {"started": started, "results": results}

        print(json.dumps(asyncio.run(main())))
        """
    )

    assert report["started"] == ["high", "mid", "low"]
    assert report["results"] == ["lowlow", "highhigh", "midmid"]


def test_to_thread_and_executor() -> None:
    report = run_child(
        """
        import asyncio, json, sys, threading
        import concurrent.futures.thread
        from concurrent.futures import ThreadPoolExecutor

        def compute(value):
            return value * 3, threading.current_thread() is threading.main_thread()

        async def main():
            return await asyncio.to_thread(compute, 14)

        value, in_main_thread = asyncio.run(main())
        with ThreadPoolExecutor(max_workers=2) as pool:
            mapped = list(pool.map(pow, [2, 3, 4], [3, 2, 1]))
        print(json.dumps({
            "value": value,
            "in_main_thread": in_main_thread,
            "mapped": mapped,
            "pool_uses_facade": concurrent.futures.thread.queue is sys.modules["queue"],
            "facade": sys.modules["queue"].__file__,
        }))
        """
    )

    assert report["value"] == 42
    assert report["in_main_thread"] is False
    assert report["mapped"] == [8, 9, 4]
    assert report["pool_uses_facade"] is True
    assert Path(report["facade"]) == FACADE


def test_logging_queue_listener() -> None:
    report = run_child(
        """
        import json, logging, logging.handlers, sys, threading
        import queue

        received = []
        delivered = threading.Event()

        class CollectingHandler(logging.Handler):
            def emit(self, record):
                received.append(record.getMessage())
                delivered.set()

        records = queue.Queue()
        listener = logging.handlers.QueueListener(records, CollectingHandler())
        logger = logging.getLogger("facade-check")
        logger.propagate = False
        logger.addHandler(logging.handlers.QueueHandler(records))
        listener.start()
        logger.warning("sent %d", 7)
        arrived = delivered.wait(timeout=30)
        listener.stop()
        print(json.dumps({
            "arrived": arrived,
            "received": received,
            "handlers_use_facade": logging.handlers.queue is queue,
        }))
        """
    )

    assert report["arrived"] is True
    assert report["received"] == ["sent 7"]
    assert report["handlers_use_facade"] is True


def test_multiprocessing_queue_empty() -> None:
    report = run_child(
        """
        import json, multiprocessing
        import queue

        channel = multiprocessing.get_context("spawn").Queue()
        try:
            channel.get(timeout=0.01)
        except queue.Empty as exc:
            raised = type(exc) is queue.Empty
        else:
            raised = False
        channel.close()
        channel.join_thread()
        print(json.dumps({"raised_facade_empty": raised}))
        """
    )

    assert report["raised_facade_empty"] is True


def test_spawn_pool_uses_facade(tmp_path: Path) -> None:
    (tmp_path / "facade_probe.py").write_text(PROBE_MODULE)

    report = run_child(
        """
        import json, multiprocessing
        import queue
        import facade_probe

        with multiprocessing.get_context("spawn").Pool(2) as pool:
            squares = pool.map(facade_probe.square, range(5))
            child_files = pool.map(facade_probe.facade_file, range(2))
            try:
                pool.apply(facade_probe.overfill, (1,))
            except queue.Full as exc:
                full_type = type(exc) is queue.Full
            else:
                full_type = False
        print(json.dumps({
            "squares": squares,
            "child_files": child_files,
            "full_type": full_type,
        }))
        """,
        extra_path=tmp_path,
    )

    assert report["squares"] == [0, 1, 4, 9, 16]
    assert [Path(file) for file in report["child_files"]] == [FACADE, FACADE]
    assert report["full_type"] is True


def test_stdlib_classes_keep_order() -> None:
    report = run_child(
        """
        import json
        import queue

        def drain(q, items):
            for item in items:
                q.put(item)
            return [q.get() for _ in items]

        bounded = queue.Queue(maxsize=1)
        bounded.put(1)
        try:
            bounded.put_nowait(2)
        except queue.Full:
            full = True
        else:
            full = False
        try:
            queue.Queue().get_nowait()
        except queue.Empty:
            empty = True
        else:
            empty = False
        print(json.dumps({
            "fifo": drain(queue.Queue(), [3, 1, 2]),
            "lifo": drain(queue.LifoQueue(), [3, 1, 2]),
            "priority": drain(queue.PriorityQueue(), [3, 1, 2]),
            "simple": drain(queue.SimpleQueue(), [3, 1, 2]),
            "full": full,
            "empty": empty,
        }))
        """
    )

    assert report["fifo"] == [3, 1, 2]
    assert report["lifo"] == [2, 1, 3]
    assert report["priority"] == [1, 2, 3]
    assert report["simple"] == [3, 1, 2]
    assert report["full"] is True
    assert report["empty"] is True


def test_stdlib_objects_are_identical() -> None:
    """The facade's names are the standard module's objects, not copies.

    A second load of the standard file by path defines new Python classes.
    So the child compares names and the source files of methods with that
    load. It checks identity with the module object the facade executed, and
    with ``_queue`` for the classes implemented in C.
    """
    report = run_child(
        """
        import importlib.util, inspect, json, pickle
        import _queue
        import queue

        stdlib_path = queue._stdlib_queue.__file__
        spec = importlib.util.spec_from_file_location("stdlib_queue_check", stdlib_path)
        fresh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fresh)

        python_classes = [
            name for name in fresh.__all__ if name not in ("Empty", "SimpleQueue")
        ]

        def source_files(cls):
            return sorted(
                member.__code__.co_filename
                for member in vars(cls).values()
                if inspect.isfunction(member)
            )

        restored = pickle.loads(pickle.dumps(queue.Full()))
        print(json.dumps({
            "stdlib_path": stdlib_path,
            "names": fresh.__all__,
            "not_identical": [
                name for name in fresh.__all__
                if getattr(queue, name) is not getattr(queue._stdlib_queue, name)
            ],
            "empty_is_c": queue.Empty is _queue.Empty,
            "simple_is_c": queue.SimpleQueue is _queue.SimpleQueue,
            "other_source": [
                name for name in python_classes
                if source_files(getattr(queue, name))
                != source_files(getattr(fresh, name))
            ],
            "queue_sources": source_files(queue.Queue),
            "modules": sorted({getattr(queue, n).__module__ for n in python_classes}),
            "full_round_trip": type(restored) is queue.Full,
        }))
        """
    )

    assert Path(report["stdlib_path"]) == STDLIB_QUEUE
    assert {"Queue", "LifoQueue", "PriorityQueue", "SimpleQueue"} <= set(
        report["names"]
    )
    assert {"Empty", "Full"} <= set(report["names"])
    assert ("ShutDown" in report["names"]) == (sys.version_info >= (3, 13))
    assert report["not_identical"] == []
    assert report["empty_is_c"] is True
    assert report["simple_is_c"] is True
    assert report["other_source"] == []
    assert {Path(file) for file in report["queue_sources"]} == {STDLIB_QUEUE}
    assert report["modules"] == ["queue"]
    assert report["full_round_trip"] is True


def test_all_lists_both_apis() -> None:
    report = run_child(
        """
        import json
        import async_queue
        import queue

        namespace = {}
        exec("from queue import *", namespace)
        print(json.dumps({
            "all": list(queue.__all__),
            "stdlib": list(queue._stdlib_queue.__all__),
            "async": list(async_queue.__all__),
            "unresolved": [name for name in queue.__all__ if not hasattr(queue, name)],
            "star_missing": [name for name in queue.__all__ if name not in namespace],
            "dir_missing": [name for name in queue.__all__ if name not in dir(queue)],
        }))
        """
    )
    public_async = [name for name in report["async"] if not name.startswith("_")]

    assert report["all"] == report["stdlib"] + public_async
    assert "AsyncTaskQueue" in report["all"]
    assert "Queue" in report["all"]
    assert report["unresolved"] == []
    assert report["star_missing"] == []
    assert report["dir_missing"] == []


def test_dir_lists_all_before_first_read() -> None:
    """``dir(queue)`` lists ``__all__`` as the standard module's does."""
    report = run_child(
        """
        import json
        import queue

        print(json.dumps({"listed": "__all__" in dir(queue)}))
        """
    )

    assert report["listed"] is True


def stub_names() -> set[str]:
    """Return the public names that queue.pyi declares, in any version branch."""
    tree = ast.parse((ROOT / "queue.pyi").read_text(encoding="utf-8"))
    names: set[str] = set()
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.If):
            statements += node.body + node.orelse
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            # A stub re-exports a name that it imports as itself.
            names.update(a.name for a in node.names if a.asname == a.name)

    return {name for name in names if not name.startswith("_")}


def test_stub_lists_facade_names() -> None:
    # A type checker reads queue.pyi instead of queue.py: a name missing
    # there is an error in a legacy caller's type check.
    facade_names = run_child(
        """
        import json
        import queue

        print(json.dumps(list(queue.__all__)))
        """
    )

    # ShutDown exists from Python 3.13, and the stub declares it for those.
    assert stub_names() == {*facade_names, "ShutDown"}


# Code that the standard library's stubs accept: at run time queue.Empty is
# _queue.Empty and queue.SimpleQueue is _queue.SimpleQueue.
C_QUEUE_USAGE = """
import _queue
import queue


def takes_empty(error: _queue.Empty) -> None: ...


def takes_simple(items: _queue.SimpleQueue[int]) -> None: ...


takes_empty(queue.Empty())
takes_simple(queue.SimpleQueue[int]())
simple: queue.SimpleQueue[int] = _queue.SimpleQueue()
"""


def test_stub_types_empty_as_c_queue_type() -> None:
    """queue.pyi types Empty and SimpleQueue as the _queue classes they are.

    So mypy, run in the project root, accepts code that mixes them with the
    _queue types, as it does elsewhere.
    """
    completed = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "-c", C_QUEUE_USAGE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout


def test_stdlib_private_names_resolve() -> None:
    # Code that reaches for the pure-Python SimpleQueue or a helper the
    # standard module imports gets the same object as from that module.
    report = run_child(
        """
        import json, sys
        import collections, heapq
        import queue

        print(json.dumps({
            "simple": queue._PySimpleQueue.__qualname__,
            "simple_module": queue._PySimpleQueue.__module__,
            "deque": queue.deque is collections.deque,
            "heappush": queue.heappush is heapq.heappush,
            "loaded": "async_queue" in sys.modules,
        }))
        """
    )

    assert report == {
        "simple": "_PySimpleQueue",
        "simple_module": "queue",
        "deque": True,
        "heappush": True,
        "loaded": False,
    }


def test_stdlib_users_skip_async_queue() -> None:
    """Importing ``queue`` for its standard API does not import the project."""
    report = run_child(
        """
        import json, sys
        import concurrent.futures.thread, logging.handlers, multiprocessing.queues
        from queue import Empty, Full
        import queue

        has_path = hasattr(queue, "__path__")
        loaded_early = "async_queue" in sys.modules
        try:
            queue.NoSuchName
        except AttributeError as exc:
            missing = str(exc)
        else:
            missing = None
        print(json.dumps({
            "loaded_early": loaded_early,
            "has_path": has_path,
            "missing": missing,
        }))
        """
    )

    assert report["loaded_early"] is False
    assert report["has_path"] is False
    assert report["missing"] == "module 'queue' has no attribute 'NoSuchName'"


def test_stdlib_found_without_sysconfig_dir() -> None:
    """Without queue.py in sysconfig's stdlib directory, sys.path is searched."""
    report = run_child(
        """
        import json, sysconfig
        sysconfig.get_path = lambda name: "/nonexistent-stdlib"
        import queue

        lifo = queue.LifoQueue()
        lifo.put(1)
        lifo.put(2)
        print(json.dumps({
            "stdlib_file": queue._stdlib_queue.__file__,
            "top": lifo.get(),
        }))
        """
    )

    assert Path(report["stdlib_file"]) == STDLIB_QUEUE
    assert report["top"] == 2


def test_missing_stdlib_queue_raises() -> None:
    report = run_child(
        """
        import json, sys, sysconfig
        # The facade's own imports must be loaded before sys.path shrinks.
        import __future__, importlib.machinery, importlib.util, typing
        sysconfig.get_path = lambda name: "/nonexistent-stdlib"
        sys.path[:] = [""]
        try:
            import queue
        except ImportError as exc:
            outcome = {"message": str(exc), "name": exc.name}
        else:
            outcome = {"message": None, "name": None}
        outcome["registered"] = "queue" in sys.modules
        print(json.dumps(outcome))
        """
    )

    assert report["message"] == (
        "standard library module 'queue' not found in ['/nonexistent-stdlib'] "
        f"(the facade's directory {ROOT} is skipped)"
    )
    assert report["name"] == "queue"
    assert report["registered"] is False


def test_pyproject_packages_only_async_queue() -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        setuptools_config = tomllib.load(file)["tool"]["setuptools"]

    assert setuptools_config["packages"] == ["async_queue"]
    assert "py-modules" not in setuptools_config
