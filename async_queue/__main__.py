"""The command line: ``python -m async_queue COMMAND``.

Commands:
    demo    run the queue against a flaky local TCP service and print a summary
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from collections.abc import Callable, Sequence

from ._demo import EXIT_INTERRUPTED, EXIT_LOST, DemoConfig, run_demo

__all__ = ("build_parser", "main")

_DEFAULTS = DemoConfig()


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}: expected an integer {bound}"
            ) from None

        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}: expected an integer {bound}"
            )

        return value

    return parse


def _number(
    *, minimum: float, maximum: float = math.inf, exclusive_minimum: bool = False
) -> Callable[[str], float]:
    bound = f"> {minimum:g}" if exclusive_minimum else f">= {minimum:g}"
    if maximum != math.inf:
        bound += f" and <= {maximum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan

        too_low = value <= minimum if exclusive_minimum else value < minimum
        if not math.isfinite(value) or too_low or value > maximum:
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}: expected a finite number {bound}"
            )

        return value

    return parse


_PROBABILITY = _number(minimum=0, maximum=1)
_SECONDS = _number(minimum=0)
_POSITIVE_SECONDS = _number(minimum=0, exclusive_minimum=True)


def _add_demo_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the queue against a flaky local TCP service",
        description=(
            "Start a TCP service on 127.0.0.1 that responds with random latency, "
            "transient errors, retry-after hints, rejections and requests that "
            "hang, push requests with three priorities (high 2, normal 1, low 0) "
            "through an AsyncTaskQueue with retries, backoff, per-attempt "
            "timeouts, delayed starts and a bound on pending tasks, requeue the "
            "tasks that failed (the dead letters) once, show progress on stderr "
            "and print a summary on stdout."
        ),
        epilog=(
            "Ctrl-C (or SIGTERM) stops gracefully: running tasks finish, queued "
            "ones are cancelled, and the summary is printed. A second Ctrl-C "
            "cancels the running tasks. Exit status: 0 when every task, requeued "
            "ones included, reached exactly one final state (failed tasks "
            f"included), {EXIT_LOST} when a task was lost, {EXIT_INTERRUPTED} "
            "after Ctrl-C and 143 after SIGTERM with nothing lost."
        ),
    )

    demo.add_argument(
        "--count",
        type=_integer(1, sys.maxsize),  # the maximum length of a Python list
        default=_DEFAULTS.count,
        metavar="N",
        help="number of requests to submit (default: %(default)s)",
    )

    demo.add_argument(
        "--workers",
        type=_integer(1, sys.maxsize),
        default=_DEFAULTS.workers,
        metavar="N",
        help="max_workers of the queue: requests in flight at once "
        "(default: %(default)s)",
    )

    demo.add_argument(
        "--failure-rate",
        type=_PROBABILITY,
        default=_DEFAULTS.failure_rate,
        metavar="P",
        help="probability, 0 to 1, that the server responds to an attempt with a "
        "transient error; plus --hang-rate, at most 1 (default: %(default)s)",
    )

    demo.add_argument(
        "--retry-after-share",
        type=_PROBABILITY,
        default=_DEFAULTS.retry_after_share,
        metavar="P",
        help="share, 0 to 1, of the error responses other than rejections that "
        "ask the client to retry after 0.01 to 0.1 s; the client raises "
        "RetryAfter, so the queue waits that long in place of its backoff "
        "(default: %(default)s)",
    )

    demo.add_argument(
        "--reject-share",
        type=_PROBABILITY,
        default=_DEFAULTS.reject_share,
        metavar="P",
        help="share, 0 to 1, of the error responses that reject the request; "
        "rejections are not retried, so the task fails at once and becomes a "
        "dead letter (default: %(default)s)",
    )

    demo.add_argument(
        "--hang-rate",
        type=_PROBABILITY,
        default=_DEFAULTS.hang_rate,
        metavar="P",
        help="probability, 0 to 1, that the server never responds to an attempt, "
        "so that the attempt times out; plus --failure-rate, at most 1 "
        "(default: %(default)s)",
    )

    demo.add_argument(
        "--timeout",
        type=_POSITIVE_SECONDS,
        default=_DEFAULTS.timeout,
        metavar="SECONDS",
        help="timeout of each attempt in seconds (default: %(default)s)",
    )

    demo.add_argument(
        "--retries",
        type=_integer(0),
        default=_DEFAULTS.retries,
        metavar="N",
        help="retries per request after its first attempt (default: %(default)s)",
    )

    demo.add_argument(
        "--backoff",
        type=_SECONDS,
        default=_DEFAULTS.backoff,
        metavar="SECONDS",
        help="base delay before the first retry in seconds; it doubles with each "
        "retry, with full jitter, up to 1 s or the base delay if that is longer "
        "(default: %(default)s)",
    )

    demo.add_argument(
        "--latency",
        type=_SECONDS,
        default=_DEFAULTS.latency,
        metavar="SECONDS",
        help="mean of the server's exponentially distributed response delay in "
        "seconds (default: %(default)s)",
    )

    demo.add_argument(
        "--rate",
        type=_SECONDS,
        default=_DEFAULTS.rate,
        metavar="PER_SECOND",
        help="requests submitted per second; 0 submits all of them at once "
        "(default: %(default)s)",
    )

    demo.add_argument(
        "--max-pending",
        type=_integer(0),
        default=_DEFAULTS.max_pending,
        metavar="N",
        help="max_pending of the queue: tasks that may wait to start, delayed "
        "ones included; the producer waits for room when the queue is full; "
        "0 means unbounded (default: %(default)s)",
    )

    demo.add_argument(
        "--delayed-rate",
        type=_PROBABILITY,
        default=_DEFAULTS.delayed_rate,
        metavar="P",
        help="probability, 0 to 1, that a request is submitted with a delay "
        "before it may start (default: %(default)s)",
    )

    demo.add_argument(
        "--max-delay",
        type=_SECONDS,
        default=_DEFAULTS.max_delay,
        metavar="SECONDS",
        help="delays are drawn uniformly from 0 to this many seconds "
        "(default: %(default)s)",
    )

    demo.add_argument(
        "--requeue-dead",
        action=argparse.BooleanOptionalAction,
        default=_DEFAULTS.requeue_dead,
        help="after the run, requeue each task that failed (each dead letter) "
        "once, as a new task, and report how many of them succeeded "
        "(default: on)",
    )

    demo.add_argument(
        "--seed",
        type=int,
        default=_DEFAULTS.seed,
        help="seed of the random generators: the same seed gives each attempt "
        "the same server response and each request the same priority "
        "(default: %(default)s)",
    )

    demo.add_argument(
        "--progress-interval",
        type=_SECONDS,
        default=_DEFAULTS.progress_interval,
        metavar="SECONDS",
        help="seconds between progress lines on stderr; 0 turns them off "
        "(default: %(default)s)",
    )

    demo.set_defaults(command_parser=demo)
    demo.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log the demo's start and stop and every retry and failure to stderr",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the parser of ``python -m async_queue``."""
    parser = argparse.ArgumentParser(
        prog="python -m async_queue",
        description="Commands that exercise the async_queue task queue.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        print(
            "\nerror: no command given; to run the demo: python -m async_queue demo",
            file=sys.stderr,
        )
        return 2

    if args.failure_rate + args.hang_rate > 1:
        args.command_parser.error(
            f"--failure-rate ({args.failure_rate:g}) plus --hang-rate "
            f"({args.hang_rate:g}) must be at most 1"
        )

    if args.verbose:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )

    config = DemoConfig(
        count=args.count,
        workers=args.workers,
        failure_rate=args.failure_rate,
        hang_rate=args.hang_rate,
        timeout=args.timeout,
        retries=args.retries,
        backoff=args.backoff,
        latency=args.latency,
        rate=args.rate,
        seed=args.seed,
        progress_interval=args.progress_interval,
        max_pending=args.max_pending,
        delayed_rate=args.delayed_rate,
        max_delay=args.max_delay,
        retry_after_share=args.retry_after_share,
        reject_share=args.reject_share,
        requeue_dead=args.requeue_dead,
    )
    try:
        return asyncio.run(run_demo(config))
    except MemoryError:
        print(
            f"the demo ran out of memory with --count {config.count} and "
            f"--workers {config.workers}; use smaller values",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        # A third Ctrl-C: the demo's own handlers are gone by then.
        print("interrupted a third time: exiting at once", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
