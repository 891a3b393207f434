"""The demo's TCP service and its client: a flaky line-based echo on loopback.

Protocol, one line each way, ASCII, ``\\n``-terminated::

    request:  REQ <request id> <attempt>
    response: OK <request id>            the request succeeded
              ERR <reason>               a transient error, which the client may retry
              ERR retry-after=<seconds>  a transient error, with the delay after
                                         which the client should retry
              ERR rejected <reason>      the server rejected the request, which
                                         the client does not retry
              (nothing)                  the request hangs until the client closes

A connection carries one request at a time and can be reused after an ``OK``
or ``ERR`` response. After a request that hangs, the server reads nothing more
from the connection and waits for the client to close it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from dataclasses import dataclass

from .errors import RetryAfter

__all__ = (
    "DemoClient",
    "DemoServer",
    "Outcome",
    "RequestRejectedError",
    "ServerError",
    "decide",
)

logger = logging.getLogger("async_queue.demo")

# The latency of a hanging request: long enough that a sensible per-attempt
# timeout always fires first, short enough that nothing waits forever if the
# client forgets the connection.
_HANG_SECONDS = 3600.0

# The range of the delay, in seconds, that a ``retry-after`` response requests.
_RETRY_AFTER_MIN = 0.01
_RETRY_AFTER_MAX = 0.1


class ServerError(Exception):
    """Raised by the client when the server responds with a transient ``ERR``
    line that carries no retry-after delay."""


class RequestRejectedError(Exception):
    """Raised by the client when the server responds ``ERR rejected``.

    It is not a ``ServerError``, so that a retry policy that retries
    ``ServerError`` does not retry a rejection.
    """


class Outcome(enum.Enum):
    """The kind of response the server sends to one request."""

    OK = "ok"
    ERROR = "error"
    RETRY_AFTER = "retry-after"
    REJECT = "reject"
    HANG = "hang"


@dataclass(frozen=True, slots=True)
class Decision:
    """The server's plan for one request: its outcome and delay."""

    outcome: Outcome
    latency: float
    """Seconds before the response is sent; unused for ``HANG``."""
    retry_after: float | None = None
    """The delay in seconds that a ``RETRY_AFTER`` response requests."""


def decide(
    seed: int,
    request_id: int,
    attempt: int,
    *,
    failure_rate: float,
    hang_rate: float,
    mean_latency: float,
    retry_after_share: float = 0.0,
    reject_share: float = 0.0,
) -> Decision:
    """Draw the server's response to attempt ``attempt`` of request ``request_id``.

    The draw comes from a ``random.Random`` seeded with all three numbers, so
    the same seed gives each attempt the same response however the requests
    interleave. Latency is exponential with mean ``mean_latency`` seconds.
    An attempt hangs with probability ``hang_rate`` and gets an error response
    with probability ``failure_rate``. Of the error responses, the share
    ``reject_share`` are rejections. Of the others, the share
    ``retry_after_share`` carry a retry-after delay of 0.01 to 0.1 s, and the
    rest are plain errors.
    """
    rng = random.Random(f"{seed}/{request_id}/{attempt}")
    draw = rng.random()
    if draw < hang_rate:
        return Decision(Outcome.HANG, _HANG_SECONDS)

    latency = rng.expovariate(1.0 / mean_latency) if mean_latency > 0 else 0.0
    if draw < hang_rate + failure_rate:
        if rng.random() < reject_share:
            return Decision(Outcome.REJECT, latency)

        if rng.random() < retry_after_share:
            delay = round(rng.uniform(_RETRY_AFTER_MIN, _RETRY_AFTER_MAX), 3)
            return Decision(Outcome.RETRY_AFTER, latency, delay)

        return Decision(Outcome.ERROR, latency)

    return Decision(Outcome.OK, latency)


class DemoServer:
    """A TCP service on 127.0.0.1 that responds to requests as ``decide()`` draws.

    Counts the valid requests, the ``ERR`` responses of every kind and the
    hung requests in ``requests``, ``errors`` and ``hangs``. Of the errors,
    ``retry_afters`` carried a retry-after delay and ``rejections`` rejected
    the request.
    """

    def __init__(
        self,
        *,
        seed: int,
        failure_rate: float,
        hang_rate: float,
        mean_latency: float,
        retry_after_share: float = 0.0,
        reject_share: float = 0.0,
    ) -> None:
        self._seed = seed
        self._failure_rate = failure_rate
        self._hang_rate = hang_rate
        self._mean_latency = mean_latency
        self._retry_after_share = retry_after_share
        self._reject_share = reject_share
        self._server: asyncio.Server | None = None
        self._closing = asyncio.Event()  # set by close()
        # Open connections and the task that serves each.
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self.requests = 0
        self.errors = 0
        self.retry_afters = 0
        self.rejections = 0
        self.hangs = 0
        self.port = 0

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1 and store it in ``port``."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("demo server listening on 127.0.0.1:%d", self.port)

    async def close(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is None:
            return

        self._server.close()
        for writer in self._connections:
            writer.close()

        # Closing a connection ends the read that its task is waiting in, and
        # the event ends the wait of a response delay. The tasks are not
        # cancelled: on Python 3.11 asyncio's server logs a cancelled one as
        # an error.
        self._closing.set()
        tasks = list(self._connections.values())
        if tasks:
            await asyncio.wait(tasks)

        await self._server.wait_closed()
        self._server = None
        logger.info(
            "demo server closed after %d requests (%d errors, %d hangs)",
            self.requests,
            self.errors,
            self.hangs,
        )

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        try:
            while line := await reader.readline():
                if not await self._respond(line, reader, writer):
                    break
        except ConnectionError as exc:
            # Expected when the client times out an attempt mid-response.
            logger.debug("demo server: connection lost: %r", exc)
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _respond(
        self,
        line: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Respond to one request line; return whether the connection stays usable."""
        parts = line.split()
        if len(parts) != 3 or parts[0] != b"REQ":
            logger.warning("demo server: invalid request line %r", line)
            writer.write(b"ERR invalid request, expected 'REQ <id> <attempt>'\n")
            await writer.drain()
            return True

        try:
            request_id, attempt = int(parts[1]), int(parts[2])
        except ValueError:
            logger.warning("demo server: invalid request id or attempt in %r", line)
            writer.write(b"ERR invalid request id or attempt, expected integers\n")
            await writer.drain()
            return True

        self.requests += 1
        decision = decide(
            self._seed,
            request_id,
            attempt,
            failure_rate=self._failure_rate,
            hang_rate=self._hang_rate,
            mean_latency=self._mean_latency,
            retry_after_share=self._retry_after_share,
            reject_share=self._reject_share,
        )
        if decision.outcome is Outcome.HANG:
            self.hangs += 1
            # Wait for the client to give up and close the connection.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(decision.latency):
                    await reader.read()

            return False

        if await self._closed_within(decision.latency):
            return False

        writer.write(self._response(decision, request_id))

        await writer.drain()
        return True

    async def _closed_within(self, seconds: float) -> bool:
        """Wait ``seconds``, or until ``close()``; return whether it came first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()
                return True

        return False

    def _response(self, decision: Decision, request_id: int) -> bytes:
        """Return the response line for ``decision`` and count the errors."""
        if decision.outcome is Outcome.OK:
            return b"OK %d\n" % request_id

        self.errors += 1
        if decision.outcome is Outcome.RETRY_AFTER:
            self.retry_afters += 1
            return f"ERR retry-after={decision.retry_after:.3f}\n".encode("ascii")

        if decision.outcome is Outcome.REJECT:
            self.rejections += 1
            return b"ERR rejected request %d\n" % request_id

        return b"ERR transient server error\n"


class DemoClient:
    """A client of ``DemoServer`` that reuses idle connections.

    A connection goes back to the pool only after a complete response. One
    whose request failed in transit, timed out or was cancelled is closed,
    because a late response could otherwise be read as the response to the
    next request.
    """

    def __init__(self, port: int, *, max_idle: int) -> None:
        self._port = port
        self._max_idle = max_idle
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, request_id: int, attempt: int) -> str:
        """Send one request and return the ``OK`` line.

        Raises:
            RetryAfter: the server responded ``ERR retry-after=<seconds>``.
            RequestRejectedError: the server responded ``ERR rejected``.
            ServerError: the server responded with another ``ERR`` line.
            ConnectionError: the connection closed before the response.
        """
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self._port)

        reusable = False
        try:
            writer.write(b"REQ %d %d\n" % (request_id, attempt))
            await writer.drain()
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise ConnectionResetError(
                    f"connection to 127.0.0.1:{self._port} closed before the "
                    f"response to request {request_id}"
                )

            reusable = True
            response = line.decode("ascii").rstrip("\n")
            if response.startswith("ERR"):
                raise _error(response, request_id, attempt)

            return response
        finally:
            if reusable and len(self._idle) < self._max_idle:
                self._idle.append((reader, writer))
            else:
                writer.close()

    def close(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()


def _error(response: str, request_id: int, attempt: int) -> Exception:
    """Return the exception that the client raises for an ``ERR`` response."""
    message = f"request {request_id} attempt {attempt}: server responded {response!r}"
    if response.startswith("ERR rejected"):
        return RequestRejectedError(message)

    hint = response.removeprefix("ERR retry-after=")
    if hint != response:
        try:
            return RetryAfter(float(hint), message)
        except ValueError:
            # Not a number of seconds >= 0: treat it as a plain error.
            pass

    return ServerError(message)
