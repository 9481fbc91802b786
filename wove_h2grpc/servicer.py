"""Running a server handler of any of the four kinds, and the ``ServicerContext`` it gets.

A handler runs as one task per call. ``run_unary`` serves the unary kind (the cheapest
path); ``run_stream`` the three kinds with a stream on either side: it hands the handler the
request message or a flow-controlled request iterator, sends each reply the handler yields
(or writes with ``context.write``) as it comes, and ends the call with the handler's status.
Each runner decides its call's status in one place, its end; the connection writes it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, NoReturn, Optional, Union

from .aio.server_conn import ServedCall, ServerConnection
from .errors import Metadata
from .protocol.kinds import EOF, RpcKind
from .protocol.metadata import MetadataLike, normalize_metadata
from .protocol.status import StatusCode

__all__ = ["Handler", "Runner", "ServicerContext", "run_stream", "run_unary"]

logger = logging.getLogger(__name__)

Handler = Callable[..., Any]
"""A handler of one of the four kinds (see :meth:`wove_h2grpc.Server.add_method`)."""

Runner = Callable[[ServerConnection, ServedCall, Handler, bool], Coroutine[Any, Any, None]]
"""``run_unary`` or ``run_stream``: runs a handler and ends its call."""

_BYTES = (bytes, bytearray, memoryview)


class _AbortError(Exception):
    """Raised by ``ServicerContext.abort()``; the call's status has already been sent."""


class _RequestIterator:
    """The request stream a request-streaming handler iterates (``async for``)."""

    __slots__ = ("_call", "_conn")

    def __init__(self, conn: ServerConnection, call: ServedCall) -> None:
        self._conn = conn
        self._call = call

    def __aiter__(self) -> _RequestIterator:
        return self

    async def __anext__(self) -> bytes:
        message = await self._conn.read_request(self._call)
        if message is None:
            raise StopAsyncIteration
        return message


class ServicerContext:
    """Per-call view handed to a handler, shaped like ``grpc.aio.ServicerContext``.

    It reads the request's metadata, peer and deadline, reads request messages and writes
    replies on the streaming kinds, sets metadata and a status, and aborts the call. The
    state lives in the call itself.
    """

    __slots__ = ("_call", "_conn")

    def __init__(self, conn: ServerConnection, call: ServedCall) -> None:
        self._conn = conn
        self._call = call

    def invocation_metadata(self) -> Metadata:
        """The request's metadata as ``(key, value)`` pairs (``-bin`` values are bytes)."""
        return self._call.metadata()

    def method(self) -> str:
        """The called method path, e.g. ``/pkg.Service/Method``."""
        return self._call.method

    def peer(self) -> str:
        """The client's address, formatted as grpcio does (``ipv4:127.0.0.1:5000``)."""
        return self._conn.peer

    def time_remaining(self) -> Optional[float]:
        """Seconds left before the deadline from ``grpc-timeout``; None without a deadline."""
        deadline = self._call.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - self._conn.loop.time())

    def cancelled(self) -> bool:
        """True once the client cancelled the call, its deadline passed or the server stopped it."""
        return self._call.cancelled

    def done(self) -> bool:
        """True once the call's status has been sent or the stream is gone."""
        return self._call.done

    async def read(self) -> Union[bytes, Any]:
        """The next request message of a request-streaming method, or ``EOF`` after the
        client's last one. Reading opens the client's flow-control window again."""
        call = self._call
        if call.single_request:
            raise RuntimeError(
                f"read() is for request-streaming methods; {call.method} is {call.kind.value}"
            )
        message = await self._conn.read_request(call)
        return EOF if message is None else message

    async def write(self, message: bytes) -> None:
        """Send one reply of a response-streaming method now, waiting while the client's
        flow-control window is full (a slow reader slows the handler down)."""
        call = self._call
        if not call.kind.response_streaming:
            raise RuntimeError(
                f"write() is for response-streaming methods; {call.method} is "
                f"{call.kind.value} (return the reply instead)"
            )
        if not isinstance(message, _BYTES):
            raise TypeError(f"a reply must be bytes, not {type(message).__name__}")
        if call.done:
            raise RuntimeError(f"the call to {call.method} has already ended")
        await self._conn.send_message(call, bytes(message))

    def set_trailing_metadata(self, trailing_metadata: MetadataLike) -> None:
        """Metadata to send in the trailers; validated here (ValueError/TypeError)."""
        self._call.trailing_metadata = normalize_metadata(trailing_metadata)

    def trailing_metadata(self) -> Metadata:
        """The trailing metadata set so far."""
        return self._call.trailing_metadata

    def set_code(self, code: StatusCode) -> None:
        """The status to end with when the handler returns; non-OK drops a unary response
        (replies a streaming handler already sent stay sent)."""
        self._call.code = StatusCode(code)

    def set_details(self, details: str) -> None:
        """The status message sent with a non-OK ``set_code``."""
        self._call.details = str(details)

    def code(self) -> StatusCode:
        """The status set with ``set_code`` (OK by default)."""
        return self._call.code

    def details(self) -> str:
        """The status message set with ``set_details``."""
        return self._call.details

    async def send_initial_metadata(self, initial_metadata: MetadataLike) -> None:
        """Send response headers with this metadata now (before the response)."""
        call = self._call
        if call.headers_sent or call.done:
            raise RuntimeError("initial metadata was already sent for this call")
        call.initial_metadata = normalize_metadata(initial_metadata)
        self._conn.send_headers(call)

    async def abort(
        self, code: StatusCode, details: str = "", trailing_metadata: MetadataLike = ()
    ) -> NoReturn:
        """End the call now with ``code`` and ``details``; raises to unwind the handler.

        As in grpcio, aborting with OK is a mistake and is reported as UNKNOWN.
        """
        code = StatusCode(code)
        if code is StatusCode.OK:
            logger.error(
                "abort() called with StatusCode.OK on %s; sending UNKNOWN", self._call.method
            )
            code = StatusCode.UNKNOWN
        if trailing_metadata:
            self._call.trailing_metadata = normalize_metadata(trailing_metadata)
        self._conn.finish(self._call, code, str(details))
        raise _AbortError(f"call aborted with {code.name}: {details}")


class _HandlerEnd:
    """How a handler's exception ends its call, around the handler's whole run: cancelled
    (client reset, deadline, stop) -> CANCELLED if not ended yet; ``abort()`` -> its status
    is out already; any other exception -> UNKNOWN (after the replies already sent)."""

    __slots__ = ("_call", "_conn", "_debug")

    def __init__(self, conn: ServerConnection, call: ServedCall, debug: bool) -> None:
        self._conn = conn
        self._call = call
        self._debug = debug

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Optional[BaseException], tb: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, asyncio.CancelledError):
            self._conn.finish(self._call, StatusCode.CANCELLED, "handler was cancelled")
            return True
        if isinstance(exc, _AbortError):
            return True
        if isinstance(exc, Exception):
            _failed(self._conn, self._call, exc, self._debug)
            return True
        # SystemExit, KeyboardInterrupt: end the call, then let it propagate.
        self._conn.finish(self._call, StatusCode.UNKNOWN, "Exception calling application")
        return False


def _failed(conn: ServerConnection, call: ServedCall, exc: Exception, debug: bool) -> None:
    """A handler raised: the call ends with UNKNOWN (after any replies already sent)."""
    logger.exception("handler for %s (peer %s) raised", call.method, conn.peer, exc_info=exc)
    if debug:
        details = f"Exception calling application: {type(exc).__name__}: {exc}"
    else:
        details = "Exception calling application"
    conn.finish(call, StatusCode.UNKNOWN, details)


def _not_bytes(conn: ServerConnection, call: ServedCall, result: object, verb: str) -> None:
    name = type(result).__name__
    logger.error("handler for %s %s %s, not bytes", call.method, verb, name)
    conn.finish(call, StatusCode.INTERNAL, f"handler {verb} {name}, not bytes")


def _reply_of(conn: ServerConnection, call: ServedCall, result: Any) -> Optional[bytes]:
    """A unary kind's one reply to send, or None when the call ends without one (it has
    ended already, the handler set a non-OK status, or returned no bytes)."""
    if call.done:
        return None
    if call.code is not StatusCode.OK:
        conn.finish(call, call.code, call.details)
        return None
    if not isinstance(result, _BYTES):
        _not_bytes(conn, call, result, "returned")
        return None
    return bytes(result)


async def run_unary(
    conn: ServerConnection, call: ServedCall, handler: Handler, debug: bool
) -> None:
    """Run a unary handler and end its call: the response and OK, or the error's status."""
    context = ServicerContext(conn, call)
    with _HandlerEnd(conn, call, debug):
        request = call.take()
        if call.charged:
            conn.recount_request(call)  # taken: no longer the server's to hold
        result: Any = handler(request, context)
        if inspect.isawaitable(result):
            result = await result
        reply = _reply_of(conn, call, result)
        if reply is not None and await conn.send_message(call, reply):
            conn.finish(call, StatusCode.OK)


def _replies(result: Any) -> Optional[AsyncIterator[Any]]:
    """A response-streaming handler's replies as an async iterator (None: not iterable)."""
    if hasattr(result, "__aiter__"):
        return result.__aiter__()  # type: ignore[no-any-return]
    if hasattr(result, "__iter__") and not isinstance(result, (*_BYTES, str)):
        return _from_sync(result)
    return None


async def _from_sync(iterable: Any) -> AsyncIterator[Any]:
    for item in iterable:
        yield item


async def _close(replies: Optional[AsyncIterator[Any]]) -> None:
    """Close a reply generator the call stopped early, so that its ``finally`` runs."""
    aclose: Optional[Callable[[], Awaitable[None]]] = getattr(replies, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # the handler's own cleanup failed: the call has ended anyway
            logger.exception("closing the reply stream of a handler raised")


async def _stream_replies(
    conn: ServerConnection, call: ServedCall, replies: Optional[AsyncIterator[Any]]
) -> Optional[AsyncIterator[Any]]:
    """Send every reply (none without an iterator), then end the call with its status.

    Returns the reply iterator when it must still be closed (the call stopped it early).
    """
    if replies is not None:
        send = conn.send_message
        async for reply in replies:
            if not isinstance(reply, _BYTES):
                _not_bytes(conn, call, reply, "yielded")
                return replies
            if not await send(call, bytes(reply)):
                return replies  # the call ended meanwhile (reset, deadline, stop)
    if not call.done:
        conn.finish(call, call.code, call.details if call.code is not StatusCode.OK else "")
    return None


async def run_stream(
    conn: ServerConnection, call: ServedCall, handler: Handler, debug: bool
) -> None:
    """Run a handler of a streaming kind and end its call.

    The handler gets the request (``unary_stream``) or a request iterator; its replies are
    an async generator or iterator it returns, replies it writes with ``context.write``
    (returning None), or one reply (``stream_unary``). An exception ends the call with
    UNKNOWN after the replies already sent.
    """
    context = ServicerContext(conn, call)
    kind = call.kind
    if kind.request_streaming:
        argument: Any = _RequestIterator(conn, call)
    else:
        argument = call.take()
        if call.charged:
            conn.recount_request(call)  # taken: no longer the server's to hold
    replies: Optional[AsyncIterator[Any]] = None
    try:
        with _HandlerEnd(conn, call, debug):
            result: Any = handler(argument, context)
            if kind is RpcKind.STREAM_UNARY:
                if inspect.isawaitable(result):
                    result = await result
                reply = _reply_of(conn, call, result)
                if reply is not None and await conn.send_message(call, reply):
                    conn.finish(call, StatusCode.OK)
                return
            if inspect.isawaitable(result):  # a coroutine that writes with context.write()
                result = await result
            if result is not None:
                replies = _replies(result)
                if replies is None:
                    name = type(result).__name__
                    logger.error("handler for %s returned %s, not replies", call.method, name)
                    details = f"handler returned {name}, not an iterator of bytes"
                    conn.finish(call, StatusCode.INTERNAL, details)
                    return
            replies = await _stream_replies(conn, call, replies)
    finally:
        if replies is not None:
            await _close(replies)
