"""The four multicallables of a ``Channel`` and the call objects they return (grpc.aio-shaped).

Calling a multicallable checks its arguments and returns a call object at once. A unary call
runs inside the task that awaits it (no task of its own: that is the cheapest path); the
other kinds run their attempts in a task started with the call, so that ``write()`` and
``read()`` may interleave freely from any task. Every attempt is one ``WireCall`` on one
connection; its ``Outcome`` says whether the server provably never ran it, and only then is
it sent again (on another connection, or after a refused stream, gRFC A6), carrying over the
request messages written so far. A call's final state is set in one place, ``_settle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Generic,
    Iterable,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from .aio.options import check_compression
from .aio.wire import WireCall
from .errors import GrpcError, Metadata
from .protocol.call import NO_RETRY, REFUSED, Outcome, initial_metadata_of, with_debug
from .protocol.framing import frame_message, too_large
from .protocol.kinds import EOF, RpcKind
from .protocol.metadata import (
    MetadataLike,
    encode_grpc_timeout,
    encode_metadata,
    normalize_metadata,
)
from .protocol.status import StatusCode

if TYPE_CHECKING:
    from .aio.connection import ClientConnection
    from .client import Channel

__all__ = [
    "Call",
    "StreamStreamCall",
    "StreamStreamMultiCallable",
    "StreamUnaryCall",
    "StreamUnaryMultiCallable",
    "UnaryStreamCall",
    "UnaryStreamMultiCallable",
    "UnaryUnaryCall",
    "UnaryUnaryMultiCallable",
]

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
RequestIterator = Union[Iterable[Any], AsyncIterator[Any]]
DoneCallback = Callable[["Call"], None]

_OK = StatusCode.OK  # a module constant: cheaper than the enum lookup on every call
_MAX_REFUSED_RETRIES = 3  # bounded transparent retries of refused streams (gRFC A6)
_FINISHED = "RPC already finished."
_HALF_CLOSED = "RPC is half closed after calling done_writing."


class _MultiCallable:
    """What every multicallable shares: the channel, the method and the fixed headers."""

    __slots__ = ("_base_headers", "_channel", "_deserializer", "_method", "_serializer")

    def __init__(
        self,
        channel: Channel,
        method: str,
        serializer: Optional[Callable[[Any], bytes]],
        deserializer: Optional[Callable[[bytes], Any]],
    ) -> None:
        opts = channel._opts
        self._channel = channel
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._base_headers: List[Tuple[bytes, bytes]] = [
            (b":method", b"POST"),
            (b":scheme", opts.scheme),
            (b":path", method.encode("ascii")),
            (b":authority", opts.authority),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"user-agent", opts.user_agent),
            (b"grpc-accept-encoding", b"identity,gzip"),
            *opts.metadata,
        ]

    def _serialize(self, request: Any) -> bytes:
        """The request as bytes, within max_send_message_length (RESOURCE_EXHAUSTED)."""
        payload = self._serializer(request) if self._serializer is not None else request
        if not isinstance(payload, bytes):
            if isinstance(payload, (bytearray, memoryview)):
                payload = bytes(payload)
            else:
                raise TypeError(
                    f"request must be bytes (or give a request_serializer), "
                    f"not {type(payload).__name__}"
                )
        limit = self._channel._opts.max_send_message_length
        if limit >= 0 and len(payload) > limit:
            raise too_large("Sent", len(payload), limit)
        return payload


class Call:
    """One call of any kind: its status, metadata, deadline, cancellation and callbacks.

    ``code()``, ``details()`` and ``trailing_metadata()`` wait for the call to end;
    ``initial_metadata()`` for the response headers. A call either succeeds or fails with a
    ``GrpcError``; cancelled by ``cancel()`` (or by cancelling a task that waits on it), it
    resets its stream with CANCEL and its waiters get ``asyncio.CancelledError``.
    """

    __slots__ = (
        "_assigning",
        "_callbacks",
        "_cancelled",
        "_compress",
        "_conn",
        "_deadline",
        "_done",
        "_error",
        "_headers",
        "_loop",
        "_outcome",
        "_progress",
        "_request",
        "_rpc",
        "_sink",
        "_start",
        "_started",
        "_task",
        "_wait_for_ready",
        "_wire",
    )

    _kind = RpcKind.UNARY_UNARY
    _single_response = True  # the kind's response is one message (read from _kind once)

    def __init__(
        self,
        rpc: _MultiCallable,
        request: Optional[Tuple[bytes, bytes]],
        timeout: Optional[float],
        metadata: MetadataLike,
        compress: bool,
        wait_for_ready: Optional[bool],
    ) -> None:
        opts = rpc._channel._opts
        loop = asyncio.get_running_loop()
        self._rpc = rpc
        self._loop = loop
        headers = rpc._base_headers
        if metadata is not None:
            headers = headers + encode_metadata(normalize_metadata(metadata))
        if compress:
            headers = [*headers, (b"grpc-encoding", b"gzip")]
        self._headers = headers
        self._compress = compress
        if timeout is None:
            timeout = opts.timeout
        elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        if wait_for_ready is None:
            wait_for_ready = opts.wait_for_ready
        elif not isinstance(wait_for_ready, bool):
            raise TypeError("wait_for_ready must be True, False or None")
        self._wait_for_ready = wait_for_ready
        start = loop.time()
        self._start = start
        self._deadline = None if timeout is None else start + timeout
        self._request = request  # a unary request's (prefix, body), kept for retries
        self._wire: Optional[WireCall] = None
        self._conn: Optional[ClientConnection] = None
        self._outcome: Optional[Outcome] = None
        self._error: Optional[GrpcError] = None
        self._done = False
        self._cancelled = False
        self._started = False
        self._task: Optional[asyncio.Future[Any]] = None
        self._assigning: Optional[asyncio.Future[ClientConnection]] = None
        self._progress: Optional[asyncio.Future[None]] = None
        self._callbacks: Optional[List[DoneCallback]] = None
        self._sink: Optional[Callable[[bytes], None]] = None

    # ---------------------------------------------------------- the public view

    def done(self) -> bool:
        """True once the call has ended (whatever the outcome)."""
        return self._done

    def cancelled(self) -> bool:
        """True when the call was cancelled by this side (``cancel()`` or a cancelled waiter)."""
        return self._cancelled

    def time_remaining(self) -> Optional[float]:
        """Seconds left before the deadline; None without one."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._loop.time())

    def cancel(self) -> bool:
        """Cancel the call: its stream is reset with CANCEL; False if it had ended already."""
        if self._done:
            return False
        self._cancelled = True
        self._stop(StatusCode.CANCELLED, "Locally cancelled by application!")
        return True

    def add_done_callback(self, callback: DoneCallback) -> None:
        """Call ``callback(call)`` when the call ends (at once if it has ended)."""
        if self._done:
            _run_callback(callback, self)
            return
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    async def initial_metadata(self) -> Metadata:
        """The response headers' metadata (empty for a Trailers-Only response)."""
        self._ensure_started()
        while not self._done:
            wire = self._wire
            if wire is not None and wire.headers is not None:
                return initial_metadata_of(wire.headers, wire.trailers)
            await self._wait()
        if self._outcome is not None:
            return self._outcome.initial_metadata
        return self._error.initial_metadata() if self._error is not None else ()

    async def trailing_metadata(self) -> Metadata:
        """The trailers' metadata, once the call has ended."""
        await self._wait_done()
        if self._outcome is not None:
            return self._outcome.trailing_metadata
        return self._error.trailing_metadata() if self._error is not None else ()

    async def code(self) -> StatusCode:
        """The call's status code, once it has ended."""
        await self._wait_done()
        return self._error.code() if self._error is not None else _OK

    async def details(self) -> str:
        """The call's status message, once it has ended (also after success)."""
        await self._wait_done()
        if self._error is not None:
            return self._error.details()
        return self._outcome.details if self._outcome is not None else ""

    async def wait_for_connection(self) -> None:
        """Wait until the call has a stream (or has ended); raises its error if it failed."""
        self._ensure_started()
        while not self._done and (self._wire is None or not self._wire.stream_id):
            await self._wait()
        if self._done:
            self._raise_if_failed()

    def __repr__(self) -> str:
        state = "done" if self._done else ("running" if self._started else "new")
        code = f", {self._error.code().name}" if self._error is not None else ""
        return f"<{type(self).__name__} {self._rpc._method} {state}{code}>"

    # --------------------------------------------------------------- waiting

    async def _wait(self) -> None:
        """Wait for the call's next change (headers, a message, a new attempt, its end);
        a waiter that is cancelled cancels the call (as in grpc.aio)."""
        progress = self._progress
        if progress is None or progress.done():
            progress = self._loop.create_future()
            self._progress = progress
        wire = self._wire
        if wire is not None:
            wire.progress = progress
        await _cancels_call(progress, self)

    def _poke(self) -> None:
        progress = self._progress
        self._progress = None
        if progress is not None and not progress.done():
            progress.set_result(None)

    async def _wait_done(self) -> None:
        self._ensure_started()
        while not self._done:
            await self._wait()

    def _ensure_started(self) -> None:
        """Start the call's attempts in a task, unless they already run somewhere."""
        if not self._started:
            self._started = True
            self._task = self._loop.create_task(_run_attempts(self))

    def _raise_if_failed(self) -> None:
        if self._cancelled:
            raise asyncio.CancelledError()
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------- attempts

    def _new_wire(self, previous: Optional[WireCall]) -> WireCall:
        """The WireCall of one attempt (its headers are completed when it is sent)."""
        rpc = self._rpc
        request = self._request
        future: asyncio.Future[Outcome] = self._loop.create_future()
        if request is not None:
            prefix, body = request
            closing = True
        else:
            prefix = body = b""
            closing = False
        wire = WireCall(
            rpc._method,
            self._headers,
            prefix,
            body,
            future,
            self._deadline,
            rpc._channel._opts.max_receive_message_length,
            self._single_response,
            closing,
        )
        wire.sink = self._sink
        if previous is not None:
            if request is None:
                wire.take_request(previous)
            wire.writer, previous.writer = previous.writer, None
        return wire

    def _attempts(self) -> Generator[Any, None, Any]:
        """Send the call until it ends: pick a connection, open a stream, retry only what
        the server provably never processed. Sets the final state, then returns
        ``_value()`` (a unary response, or raises its error; None for the streaming kinds,
        whose task never raises except CancelledError when it is cancelled).

        A generator, not a coroutine: a unary call's ``__await__`` returns it as it is
        (no coroutine and await-wrapper per call); a task runs it through ``_Attempts``.
        """
        rpc = self._rpc
        channel = rpc._channel
        opts = channel._opts
        pool = channel._pool
        loop = self._loop
        where = opts.target.original
        deadline = self._deadline
        refused = 0
        wire = self._wire
        try:
            while True:
                if pool._closed:
                    closed = GrpcError(
                        StatusCode.CANCELLED, "channel is closed", request_sent=False
                    )
                    self._settle_error(closed)
                    break
                conn = pool.pick_now(loop)
                if conn is None:
                    # In a task of its own, so that cancel() can stop the wait.
                    assigning = asyncio.ensure_future(
                        pool.assign(deadline, fail_fast=not self._wait_for_ready)
                    )
                    self._assigning = assigning
                    try:
                        conn = yield from assigning
                    finally:
                        self._assigning = None
                if self._done:
                    break  # cancelled (or failed locally) while waiting for a connection
                wire = self._new_wire(wire) if wire is None or wire.future.done() else wire
                self._wire = wire
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        late = GrpcError(
                            StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", request_sent=False
                        )
                        self._settle_error(late)
                        break
                    wire.request_headers = [
                        *wire.request_headers,
                        (b"grpc-timeout", encode_grpc_timeout(remaining).encode()),
                    ]
                self._conn = conn
                conn.start(wire)
                if self._progress is not None:
                    self._poke()  # waiters re-check with the new attempt
                try:
                    outcome = yield from wire.future
                except asyncio.CancelledError:
                    conn.cancel(wire)
                    raise
                if self._done:
                    break  # settled by cancel() or a local failure meanwhile
                retry = outcome.retry
                if retry is not NO_RETRY and (self._request is not None or wire.data_sent == 0):
                    if retry is REFUSED:
                        # gRFC A6: the server refused the stream unprocessed; a bounded retry.
                        if not opts.transparent_retry:
                            why = "not retried because transparent_retry=False"
                            self._settle(outcome, self._not_retried(wire, outcome, why))
                            break
                        refused += 1
                        if refused > _MAX_REFUSED_RETRIES:
                            why = f"gave up after {_MAX_REFUSED_RETRIES} transparent retries"
                            self._settle(outcome, self._not_retried(wire, outcome, why))
                            break
                    continue  # never processed: send it (again) on another stream
                error = None
                if outcome.code is not _OK:
                    error = wire.error(outcome, target=where, elapsed=loop.time() - self._start)
                self._settle(outcome, error)
                break
        except GrpcError as exc:  # from pool.assign: no connection
            self._settle_error(exc)
        except asyncio.CancelledError:
            if not self._done:
                self._cancelled = True
                self._settle_error(
                    GrpcError(
                        StatusCode.CANCELLED,
                        "Locally cancelled by application!",
                        request_sent=False if self._conn is None else None,
                    )
                )
            raise
        return self._value()

    def _not_retried(self, wire: WireCall, outcome: Outcome, why: str) -> GrpcError:
        """The refused call's error when it is not sent again; it provably never ran."""
        error = wire.error(
            outcome,
            target=self._rpc._channel._opts.target.original,
            elapsed=self._loop.time() - self._start,
        )
        return GrpcError(
            error.code(),
            f"{error.details()}; {why}",
            debug_error_string=error.debug_error_string(),
            request_sent=False,
            h2_error_code=outcome.h2_error_code,
        )

    def _stop(self, code: StatusCode, details: str) -> None:
        """End the call from this side (cancel, a local failure): reset its stream, or stop
        its attempts while it has none."""
        wire, conn = self._wire, self._conn
        if wire is not None and conn is not None and not wire.future.done():
            conn.cancel(wire, details, code)
            outcome = wire.outcome
            if outcome is not None:  # settled now: the attempt loop sees it when it wakes
                self._settle(
                    outcome,
                    wire.error(
                        outcome,
                        target=self._rpc._channel._opts.target.original,
                        elapsed=self._loop.time() - self._start,
                    ),
                )
                return
        self._settle_error(GrpcError(code, details, request_sent=False))
        assigning = self._assigning
        if assigning is not None and not assigning.done():
            assigning.cancel()

    # -------------------------------------------------------- the one settle

    def _settle_error(self, error: GrpcError) -> None:
        """End with an error raised before (or instead of) a stream's outcome."""
        error = with_debug(
            error,
            method=self._rpc._method,
            target=self._rpc._channel._opts.target.original,
            elapsed=self._loop.time() - self._start,
        )
        self._settle(None, error)

    def _settle(self, outcome: Optional[Outcome], error: Optional[GrpcError]) -> None:
        """The call's one exit: record how it ended, wake every waiter, run the callbacks."""
        if self._done:
            return
        self._done = True
        self._outcome = outcome
        self._error = error
        if self._progress is not None:
            self._poke()
        wire = self._wire
        if wire is not None and wire.writer is not None:
            # A writer waits on an attempt that never reached a connection: wake it.
            writer, wire.writer = wire.writer, None
            if not writer.done():
                writer.set_result(None)
        callbacks = self._callbacks
        if callbacks:
            self._callbacks = None
            for callback in callbacks:
                _run_callback(callback, self)

    def _value(self) -> Any:
        """What the attempt loop returns once the call has ended (see UnaryUnaryCall)."""
        return None


class UnaryUnaryCall(Call, Generic[Resp]):
    """``await call`` -> the response (or ``GrpcError``)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, Resp]:
        if self._started:
            return self._result_when_done().__await__()
        self._started = True
        return self._attempts()

    async def _result_when_done(self) -> Resp:
        while not self._done:
            await self._wait()
        return self._value()

    def _ensure_started(self) -> None:
        # Run by a task of its own: the response (or error) is read by whoever awaits.
        if not self._started:
            self._started = True
            self._task = self._loop.create_task(self._attempts_quietly())

    async def _attempts_quietly(self) -> None:
        with contextlib.suppress(GrpcError):
            await _Attempts(self)

    def _value(self) -> Resp:
        if self._error is not None or self._cancelled:
            self._raise_if_failed()
        outcome = self._outcome
        response = (outcome.message if outcome is not None else None) or b""
        deserializer = self._rpc._deserializer
        if deserializer is not None:
            return deserializer(response)  # type: ignore[no-any-return]
        return response  # type: ignore[return-value]


class _ResponseStream(Call):
    """Reading a response stream: ``read()`` and ``async for`` (flow-controlled)."""

    __slots__ = ()

    async def read(self) -> Any:
        """The next response message, or ``EOF`` after the last; raises the call's error
        once the messages that arrived before it have been read."""
        self._ensure_started()
        while True:
            wire = self._wire
            if wire is not None:
                message = wire.take()
                if message is not None:
                    conn = self._conn
                    if wire.unacked and conn is not None:
                        conn.consumed(wire, len(message) + 5)
                    deserializer = self._rpc._deserializer
                    return deserializer(message) if deserializer is not None else message
                if not self._done and wire.future.done():
                    # The stream ended OK and everything is read: settle here rather than
                    # wait for the attempt task to wake and do it (one wake-up per stream).
                    outcome = wire.future.result()
                    if outcome.code is _OK and outcome.retry is NO_RETRY:
                        self._settle(outcome, None)
            if self._done:
                self._raise_if_failed()
                return EOF
            await self._wait()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            message = await self.read()
            if message is EOF:
                return
            yield message


class _RequestStream(Call):
    """Writing a request stream: ``write()``, ``done_writing()``, or a request iterator."""

    __slots__ = ("_closed_writing", "_consumer")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._closed_writing = False
        self._consumer: Optional[asyncio.Task[None]] = None
        # The first attempt's WireCall exists from the start, so that messages written
        # before a connection is ready wait in it.
        self._wire = self._new_wire(None)

    def _feed(self, request_iterator: Optional[RequestIterator]) -> None:
        self._ensure_started()
        if request_iterator is not None:
            self._consumer = self._loop.create_task(self._consume(request_iterator))

    async def write(self, request: Any) -> None:
        """Send one request message; waits while flow control holds the stream back."""
        if self._consumer is not None:
            raise RuntimeError("write() cannot be used on a call given a request_iterator")
        await self._write(request)

    async def done_writing(self) -> None:
        """End the request stream (half-close); the response may still follow."""
        if self._consumer is not None:
            raise RuntimeError("done_writing() cannot be used on a call given a request_iterator")
        self._done_writing()

    async def _write(self, request: Any) -> None:
        if self._done:
            self._raise_if_failed()
            raise asyncio.InvalidStateError(_FINISHED)
        if self._closed_writing:
            raise asyncio.InvalidStateError(_HALF_CLOSED)
        try:
            payload = self._rpc._serialize(request)
        except GrpcError as exc:  # over max_send_message_length: the call cannot go on
            self._stop(exc.code(), exc.details())
            raise
        prefix, body = frame_message(payload, self._compress)
        wire = self._wire
        assert wire is not None  # set at construction
        conn = self._conn
        if conn is not None and not wire.future.done():
            drained = conn.write(wire, prefix, body)
        else:
            wire.queue(prefix, body)  # no stream yet: it goes out when the attempt starts
            drained = False
        while not drained:
            if self._done:
                self._raise_if_failed()
                return  # ended OK meanwhile: the server answered before reading it all
            wire = self._wire
            assert wire is not None
            writer = wire.writer
            if writer is None or writer.done():
                writer = self._loop.create_future()
                wire.writer = writer
            await _cancels_call(writer, self)
            wire = self._wire
            assert wire is not None
            drained = wire.request_drained and wire.stream_id != 0

    def _done_writing(self) -> None:
        if self._done or self._closed_writing:
            return
        self._closed_writing = True
        wire, conn = self._wire, self._conn
        assert wire is not None
        if conn is not None and not wire.future.done():
            conn.done_writing(wire)
        else:
            wire.closing = True

    async def _consume(self, requests: RequestIterator) -> None:
        """Write every message of the request iterator, then half-close.

        An iterator that raises ends the call with CANCELLED and the exception in the
        details (logged), as grpc.aio cancels such a call.
        """
        try:
            if hasattr(requests, "__aiter__"):
                async for request in requests:
                    await self._write(request)
            else:
                for request in requests:
                    await self._write(request)
        except (GrpcError, asyncio.InvalidStateError):
            return  # the call ended: its own error says why
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("request iterator of %s raised", self._rpc._method)
            self._stop(
                StatusCode.CANCELLED,
                f"request iterator raised {type(exc).__name__}: {exc}",
            )
            return
        self._done_writing()

    def _settle(self, outcome: Optional[Outcome], error: Optional[GrpcError]) -> None:
        super()._settle(outcome, error)
        consumer = self._consumer  # the request iterator has nothing more to do
        if consumer is not None and not consumer.done() and consumer is not _current_task():
            consumer.cancel()


class UnaryStreamCall(_ResponseStream):
    """One request, a stream of responses: ``async for reply in call`` or ``await call.read()``."""

    __slots__ = ()

    _kind = RpcKind.UNARY_STREAM
    _single_response = not RpcKind.UNARY_STREAM.response_streaming

    async def _deliver_to(self, sink: Callable[[Any], None]) -> None:
        """Run the call in the awaiting task, handing ``sink`` each response message as it
        arrives, in order, instead of queueing it for ``read()``.

        For a consumer that handles every message at once (the Wove executor): no reader
        wake-up per message and no task of the call's own. Returns when the stream ended
        OK; raises its ``GrpcError``, or ``CancelledError`` once ``cancel()`` ended it. The
        sink runs inside the connection's read path, so it must be quick; calling
        ``cancel()`` from it stops the delivery. A sink (or deserializer) that raises ends
        this call with INTERNAL, never the connection the other calls share.
        """
        if self._started:
            raise RuntimeError("the call runs already; build it with _prepare()")
        deserializer = self._rpc._deserializer

        def deliver(message: bytes) -> None:
            try:
                sink(deserializer(message) if deserializer is not None else message)
            except Exception as exc:
                self._stop(
                    StatusCode.INTERNAL,
                    f"the response message's consumer failed: {type(exc).__name__}: {exc}",
                )

        self._sink = deliver
        self._started = True
        await _Attempts(self)
        self._raise_if_failed()


class StreamUnaryCall(_RequestStream, Generic[Resp]):
    """A stream of requests (``write``/``done_writing`` or an iterator), ``await call`` -> reply."""

    __slots__ = ()

    _kind = RpcKind.STREAM_UNARY
    _single_response = not RpcKind.STREAM_UNARY.response_streaming

    def __await__(self) -> Generator[Any, None, Resp]:
        return self._response().__await__()

    async def _response(self) -> Resp:
        await self._wait_done()
        self._raise_if_failed()
        outcome = self._outcome
        response = (outcome.message if outcome is not None else None) or b""
        deserializer = self._rpc._deserializer
        if deserializer is not None:
            return deserializer(response)  # type: ignore[no-any-return]
        return response  # type: ignore[return-value]


class StreamStreamCall(_RequestStream, _ResponseStream):
    """Streams both ways: ``write``/``done_writing`` and ``read``/``async for``, interleaved."""

    __slots__ = ()

    _kind = RpcKind.STREAM_STREAM
    _single_response = not RpcKind.STREAM_STREAM.response_streaming


# ------------------------------------------------------------------ multicallables


class UnaryUnaryMultiCallable(_MultiCallable, Generic[Req, Resp]):
    """``call = rpc(request, *, timeout=None, metadata=None, compression=None,
    wait_for_ready=None)``; ``await call`` (or ``await rpc(...)``) -> the response."""

    __slots__ = ()

    def __call__(
        self,
        request: Req,
        *,
        timeout: Optional[float] = None,
        metadata: MetadataLike = None,
        compression: Optional[str] = None,
        wait_for_ready: Optional[bool] = None,
    ) -> UnaryUnaryCall[Resp]:
        # The common case inline (bytes, no serializer, the channel's compression): this is
        # the per-call path of every unary call.
        opts = self._channel._opts
        if compression is None:
            compress = opts.compression is not None
        else:
            compress = _compressing(self, compression)
        if self._serializer is None and isinstance(request, bytes):
            limit = opts.max_send_message_length
            if limit >= 0 and len(request) > limit:
                raise too_large("Sent", len(request), limit)
            framed = frame_message(request, compress)
        else:
            framed = frame_message(self._serialize(request), compress)
        return UnaryUnaryCall(self, framed, timeout, metadata, compress, wait_for_ready)


class UnaryStreamMultiCallable(_MultiCallable, Generic[Req, Resp]):
    """``call = rpc(request, ...)``; ``async for reply in call``."""

    __slots__ = ()

    def __call__(
        self,
        request: Req,
        *,
        timeout: Optional[float] = None,
        metadata: MetadataLike = None,
        compression: Optional[str] = None,
        wait_for_ready: Optional[bool] = None,
    ) -> UnaryStreamCall:
        call = self._prepare(
            request,
            timeout=timeout,
            metadata=metadata,
            compression=compression,
            wait_for_ready=wait_for_ready,
        )
        call._ensure_started()
        return call

    def _prepare(
        self,
        request: Req,
        *,
        timeout: Optional[float] = None,
        metadata: MetadataLike = None,
        compression: Optional[str] = None,
        wait_for_ready: Optional[bool] = None,
    ) -> UnaryStreamCall:
        """The call, not started yet (for ``UnaryStreamCall._deliver_to``)."""
        compress = _compressing(self, compression)
        framed = frame_message(self._serialize(request), compress)
        return UnaryStreamCall(self, framed, timeout, metadata, compress, wait_for_ready)


class StreamUnaryMultiCallable(_MultiCallable, Generic[Req, Resp]):
    """``call = rpc(request_iterator=None, ...)``; ``await call.write(m)``,
    ``await call.done_writing()``, ``reply = await call``."""

    __slots__ = ()

    def __call__(
        self,
        request_iterator: Optional[RequestIterator] = None,
        *,
        timeout: Optional[float] = None,
        metadata: MetadataLike = None,
        compression: Optional[str] = None,
        wait_for_ready: Optional[bool] = None,
    ) -> StreamUnaryCall[Resp]:
        call: StreamUnaryCall[Resp] = StreamUnaryCall(
            self, None, timeout, metadata, _compressing(self, compression), wait_for_ready
        )
        call._feed(request_iterator)
        return call


class StreamStreamMultiCallable(_MultiCallable, Generic[Req, Resp]):
    """``call = rpc(request_iterator=None, ...)``; write and read interleaved."""

    __slots__ = ()

    def __call__(
        self,
        request_iterator: Optional[RequestIterator] = None,
        *,
        timeout: Optional[float] = None,
        metadata: MetadataLike = None,
        compression: Optional[str] = None,
        wait_for_ready: Optional[bool] = None,
    ) -> StreamStreamCall:
        compress = _compressing(self, compression)
        call = StreamStreamCall(self, None, timeout, metadata, compress, wait_for_ready)
        call._feed(request_iterator)
        return call


# ------------------------------------------------------------------------- helpers


def _compressing(rpc: _MultiCallable, compression: Optional[str]) -> bool:
    if compression is None:
        return rpc._channel._opts.compression is not None
    return check_compression(compression) is not None


def _run_callback(callback: DoneCallback, call: Call) -> None:
    try:
        callback(call)
    except Exception:
        logger.exception("done callback %r of %r raised", callback, call)


async def _cancels_call(waiter: Awaitable[None], call: Call) -> None:
    """Await ``waiter``; if the awaiting task is cancelled, the call is cancelled with it."""
    try:
        await waiter
    except asyncio.CancelledError:
        call.cancel()
        raise


class _Attempts:
    """A call's attempt loop (a generator) as an awaitable, for a task to run."""

    __slots__ = ("_call",)

    def __init__(self, call: Call) -> None:
        self._call = call

    def __await__(self) -> Generator[Any, None, Any]:
        return self._call._attempts()


async def _run_attempts(call: Call) -> Any:
    """The attempt loop of ``call`` as a coroutine (the task of a streaming call)."""
    return await _Attempts(call)


def _current_task() -> Optional[asyncio.Task[Any]]:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
