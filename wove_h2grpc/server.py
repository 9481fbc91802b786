"""A pure-asyncio gRPC server on ``h2``: generic unary handlers by method path.

``Server`` accepts TCP (IPv4/IPv6), unix-socket and TLS (ALPN ``h2``) connections; each
connection is an ``asyncio.Protocol`` driving one server-side ``H2Connection``. Every call
runs its handler as a task with a ``ServicerContext`` (metadata, peer, deadline, abort,
trailing metadata), mirroring ``grpc.aio.ServicerContext``.

Robustness rules, each bounded per connection so that a bad client costs only its own
connection: a handshake timeout (TLS + client preface), an idle timeout (no calls in
flight), a header-list size limit (h2/hpack, GOAWAY ENHANCE_YOUR_CALM), a RST_STREAM flood
limit (GOAWAY ENHANCE_YOUR_CALM), garbage bytes (GOAWAY PROTOCOL_ERROR), and
``max_concurrent_streams`` enforced with REFUSED_STREAM (which clients retry) instead of a
connection error.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import ssl
import stat
import struct
from dataclasses import dataclass
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    List,
    Mapping,
    NoReturn,
    Optional,
    Set,
    Tuple,
    cast,
)

import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from .aio._h2compat import GrpcH2Connection, make_h2_connection, pending_frame_problem
from .aio.options import ServerOptions
from .errors import GrpcError, Metadata
from .protocol.framing import (
    ACCEPT_ENCODING,
    MessageDecoder,
    decompress,
    encode_message_prefix,
    gzip_compress,
)
from .protocol.metadata import (
    MetadataLike,
    decode_metadata,
    encode_grpc_message,
    encode_metadata,
    normalize_metadata,
    parse_grpc_timeout,
)
from .protocol.status import StatusCode
from .protocol.target import parse_bind_address

__all__ = ["Handler", "Server", "ServicerContext"]

logger = logging.getLogger(__name__)

Handler = Callable[[bytes, "ServicerContext"], Awaitable[bytes]]
"""A unary handler: ``async (request: bytes, context: ServicerContext) -> bytes``."""

# Flow control and framing we advertise (RFC 9113 section 6.5.2). Data is acknowledged as
# soon as it arrives (the per-call buffer is bounded by max_receive_message_length), so the
# windows only decide how much the client may pipeline.
# A default-sized (4 MiB) request fits the stream window whole: no WINDOW_UPDATE round trip
# per call (grpcio servers advertise 4-8 MiB too).
_INITIAL_WINDOW_SIZE = 8 << 20  # per stream
_CONNECTION_WINDOW_SIZE = 32 << 20
# h2 buffers up to 64 CONTINUATION frames of this size before decoding a header block, so
# this also bounds a trickled header block's memory (64 * 64 KiB = 4 MiB).
_MAX_FRAME_SIZE = 1 << 16
# What h2 itself enforces for MAX_CONCURRENT_STREAMS: effectively nothing. h2 turns an excess
# stream into a connection error; we refuse the stream with REFUSED_STREAM instead.
_H2_STREAM_LIMIT = 2**31 - 1
_RESET_WINDOW = 10.0  # seconds over which client RST_STREAMs are counted
_CLOSE_ABORT_DELAY = 5.0  # a closing transport whose peer does not read is aborted after this

_RESPONSE_HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", ACCEPT_ENCODING.encode("ascii")),
]
_GZIP_RESPONSE_HEADERS = [*_RESPONSE_HEADERS, (b"grpc-encoding", b"gzip")]
_OK_TRAILERS = [(b"grpc-status", b"0")]
_STATUS_BYTES = {code: str(int(code)).encode("ascii") for code in StatusCode}


class _AbortError(Exception):
    """Raised by ``ServicerContext.abort()``; the call's status has already been sent."""


class _ServerH2Connection(GrpcH2Connection):
    """Server-side ``H2Connection`` without h2's O(open streams) scan per new stream.

    h2 counts open inbound streams by walking every stream on each new HEADERS, pruning
    closed ones as it goes: with 1,000 calls in flight that scan was a third of the server's
    CPU in a 10,000-call burst. We enforce MAX_CONCURRENT_STREAMS ourselves, so the count
    is not needed; closed streams are still pruned, but only when the table has doubled
    since the last prune (amortised O(1) per stream).
    """

    _prune_at = 64

    @property
    def open_inbound_streams(self) -> int:
        if len(self.streams) < self._prune_at:
            return 0  # h2's own limit is lifted (_H2_STREAM_LIMIT); only pruning matters
        count = self._open_streams(1)
        self._prune_at = max(64, 2 * len(self.streams))
        return count


def _new_server_h2(options: ServerOptions) -> h2.connection.H2Connection:
    """A server ``H2Connection`` with our SETTINGS queued for sending.

    Settings are installed as ``initial_values`` (the pattern hypercorn uses) so they apply
    at once; the inbound frame size, header-list size and connection window are then
    aligned by hand because ``H2Connection.__init__`` read the defaults. After the SETTINGS
    frame is serialized, h2's own stream limit is lifted: h2 treats an excess stream as a
    connection error, while RFC 9113 section 5.1.2 lets us refuse just that stream.
    """
    conn = make_h2_connection(client_side=False)
    if type(conn) is GrpcH2Connection:
        # Same object and configuration as every connection of ours (_h2compat: config,
        # HPACK contexts), with the stream accounting above; it adds no state of its own.
        conn.__class__ = _ServerH2Connection
    advertised = {
        SettingCodes.MAX_CONCURRENT_STREAMS: options.max_concurrent_streams,
        SettingCodes.INITIAL_WINDOW_SIZE: _INITIAL_WINDOW_SIZE,
        SettingCodes.MAX_FRAME_SIZE: _MAX_FRAME_SIZE,
        SettingCodes.MAX_HEADER_LIST_SIZE: options.max_header_list_size,
    }
    conn.local_settings = h2.settings.Settings(client=False, initial_values=advertised)
    conn.max_inbound_frame_size = _MAX_FRAME_SIZE
    conn.decoder.max_header_list_size = options.max_header_list_size
    conn.initiate_connection()
    conn.increment_flow_control_window(_CONNECTION_WINDOW_SIZE - 65535)
    enforced = dict(advertised)
    enforced[SettingCodes.MAX_CONCURRENT_STREAMS] = _H2_STREAM_LIMIT
    conn.local_settings = h2.settings.Settings(client=False, initial_values=enforced)
    return conn


def _format_peer(transport: asyncio.BaseTransport) -> str:
    """grpcio's peer format: ``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``, ``unix:/path``."""
    sock = transport.get_extra_info("socket")
    peer = transport.get_extra_info("peername")
    family = getattr(sock, "family", None)
    if family == socket.AF_UNIX or isinstance(peer, (str, bytes)) or peer is None:
        name = peer or transport.get_extra_info("sockname") or ""
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return f"unix:{name}"
    if family == socket.AF_INET6:
        return f"ipv6:[{peer[0]}]:{peer[1]}"
    return f"ipv4:{peer[0]}:{peer[1]}"


class ServicerContext:
    """Per-call state handed to a handler, shaped like ``grpc.aio.ServicerContext``.

    It reads the request's metadata, peer and deadline, sets trailing metadata or a
    status, and aborts the call.
    """

    __slots__ = (
        "_accept_gzip",
        "_cancelled",
        "_code",
        "_deadline",
        "_deadline_handle",
        "_decoder",
        "_details",
        "_done",
        "_handler",
        "_headers",
        "_headers_sent",
        "_initial_metadata",
        "_message",
        "_metadata",
        "_method",
        "_proto",
        "_request_complete",
        "_request_encoding",
        "_stream_id",
        "_task",
        "_trailing_metadata",
        "_waiter",
    )

    def __init__(
        self,
        proto: _ServerProtocol,
        stream_id: int,
        method: str,
        headers: List[Tuple[bytes, bytes]],
        handler: Handler,
    ) -> None:
        self._proto = proto
        self._stream_id = stream_id
        self._method = method
        self._headers = headers
        self._handler = handler
        self._metadata: Optional[Metadata] = None
        self._deadline: Optional[float] = None
        self._deadline_handle: Optional[asyncio.TimerHandle] = None
        self._decoder: Optional[MessageDecoder] = None
        self._message: Optional[Tuple[bool, bytes]] = None
        self._request_encoding: Optional[str] = None
        self._accept_gzip = False
        self._task: Optional[asyncio.Task[None]] = None
        self._waiter: Optional[asyncio.Future[None]] = None
        self._done = False  # the call's outcome is on the wire (or the stream is gone)
        self._cancelled = False
        self._request_complete = False
        self._headers_sent = False
        self._code = StatusCode.OK
        self._details = ""
        self._initial_metadata: Metadata = ()
        self._trailing_metadata: Metadata = ()

    def invocation_metadata(self) -> Metadata:
        """The request's metadata as ``(key, value)`` pairs (``-bin`` values are bytes)."""
        if self._metadata is None:
            self._metadata = decode_metadata(self._headers)
        return self._metadata

    def method(self) -> str:
        """The called method path, e.g. ``/pkg.Service/Method``."""
        return self._method

    def peer(self) -> str:
        """The client's address, formatted as grpcio does (``ipv4:127.0.0.1:5000``)."""
        return self._proto.peer

    def time_remaining(self) -> Optional[float]:
        """Seconds left before the deadline from ``grpc-timeout``; None without a deadline."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._proto.loop.time())

    def cancelled(self) -> bool:
        """True once the client cancelled the call, its deadline passed or the server stopped it."""
        return self._cancelled

    def done(self) -> bool:
        """True once the call's status has been sent or the stream is gone."""
        return self._done

    def set_trailing_metadata(self, trailing_metadata: MetadataLike) -> None:
        """Metadata to send in the trailers; validated here (ValueError/TypeError)."""
        self._trailing_metadata = normalize_metadata(trailing_metadata)

    def trailing_metadata(self) -> Metadata:
        """The trailing metadata set so far."""
        return self._trailing_metadata

    def set_code(self, code: StatusCode) -> None:
        """The status to end with when the handler returns; non-OK drops the response."""
        self._code = StatusCode(code)

    def set_details(self, details: str) -> None:
        """The status message sent with a non-OK ``set_code``."""
        self._details = str(details)

    def code(self) -> StatusCode:
        """The status set with ``set_code`` (OK by default)."""
        return self._code

    def details(self) -> str:
        """The status message set with ``set_details``."""
        return self._details

    async def send_initial_metadata(self, initial_metadata: MetadataLike) -> None:
        """Send response headers with this metadata now (before the response)."""
        if self._headers_sent or self._done:
            raise RuntimeError("initial metadata was already sent for this call")
        self._initial_metadata = normalize_metadata(initial_metadata)
        self._proto.send_response_headers(self)

    async def abort(
        self, code: StatusCode, details: str = "", trailing_metadata: MetadataLike = ()
    ) -> NoReturn:
        """End the call now with ``code`` and ``details``; raises to unwind the handler.

        As in grpcio, aborting with OK is a mistake and is reported as UNKNOWN.
        """
        code = StatusCode(code)
        if code is StatusCode.OK:
            logger.error("abort() called with StatusCode.OK on %s; sending UNKNOWN", self._method)
            code = StatusCode.UNKNOWN
        if trailing_metadata:
            self._trailing_metadata = normalize_metadata(trailing_metadata)
        self._proto.end_call(self, code, str(details))
        raise _AbortError(f"call aborted with {code.name}: {details}")


@dataclass
class _Listener:
    server: asyncio.AbstractServer
    unix_path: Optional[str]


class _ServerProtocol(asyncio.Protocol):
    """One client connection: h2 events in, one coalesced write per loop turn out."""

    def __init__(self, server: Server, tls: bool) -> None:
        self.server = server
        self.options = server._options
        self.loop = asyncio.get_running_loop()
        self.tls = tls
        self.peer = "unknown"
        self.conn = _new_server_h2(self.options)
        self._started = False
        self.transport: Optional[asyncio.Transport] = None
        self.calls: Dict[int, ServicerContext] = {}
        self.closed = self.loop.create_future()
        self._flush_pending = False
        self._paused = False
        self._closing = False
        self._draining = False  # our GOAWAY is out: no new streams, close when calls end
        self._peer_goaway = False
        self._handshake_handle: Optional[asyncio.TimerHandle] = None
        self._idle_handle: Optional[asyncio.TimerHandle] = None
        self._abort_handle: Optional[asyncio.TimerHandle] = None
        self._idle_since = self.loop.time()
        self._handshake_done = False
        self._resets = 0
        self._reset_window_start = self._idle_since
        self._dispatch: Dict[type, Callable[[Any], None]] = {
            h2.events.RequestReceived: self._on_request,
            h2.events.DataReceived: self._on_data,
            h2.events.StreamEnded: self._on_stream_ended,
            h2.events.StreamReset: self._on_stream_reset,
            h2.events.WindowUpdated: self._on_window_updated,
            h2.events.RemoteSettingsChanged: self._on_settings,
            h2.events.ConnectionTerminated: self._on_terminated,
        }

    # -- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = _format_peer(transport)
        self.server._connections.add(self)
        if self.tls:
            ssl_object = transport.get_extra_info("ssl_object")
            protocol = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if protocol != "h2":
                # gRPC over TLS requires ALPN h2 (PROTOCOL-HTTP2 "Connection").
                logger.info(
                    "closing TLS connection from %s: ALPN %r is not h2", self.peer, protocol
                )
                self._closing = True
                self.transport.abort()
                return
        self._started = True
        if self.options.handshake_timeout is not None:
            self._handshake_handle = self.loop.call_later(
                self.options.handshake_timeout, self._handshake_expired
            )
        self._flush()

    def data_received(self, data: bytes) -> None:
        if not self._started or self._closing:
            return
        try:
            events = self.conn.receive_data(data)
            # h2 checks a frame's length only once its whole body is buffered; refuse an
            # oversized frame from its 9-byte header (RFC 9113 section 4.2).
            problem = pending_frame_problem(self.conn, first=False)
            if problem:
                raise h2.exceptions.FrameTooLargeError(problem)
        except h2.exceptions.ProtocolError as exc:
            self._protocol_error(exc)
            return
        dispatch = self._dispatch
        try:
            for event in events:
                handler = dispatch.get(type(event))
                if handler is not None:
                    handler(event)
                if self._closing:
                    return
        except h2.exceptions.ProtocolError as exc:
            self._protocol_error(exc)
            return
        except Exception:
            # A bug of ours must cost this connection only, and be visible.
            logger.exception("internal error serving %s; closing its connection", self.peer)
            self.close_with_goaway(ErrorCodes.INTERNAL_ERROR, "internal error")
            return
        self._flush()

    def eof_received(self) -> Optional[bool]:
        # The client will send nothing more: nothing can complete, so close (no half-open).
        self._cancel_all()
        return False

    def pause_writing(self) -> None:
        # The client is not reading: stop reading from it too, so that frames h2 answers by
        # itself (PING and SETTINGS ACKs) cannot pile up in our write buffer without bound.
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        self._wake_all()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._closing = True
        self._cancel_all()
        for handle in (self._handshake_handle, self._idle_handle, self._abort_handle):
            if handle is not None:
                handle.cancel()
        self._handshake_handle = self._idle_handle = self._abort_handle = None
        self.server._connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- writing -------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_pending = False
        conn = self.conn
        transport = self.transport
        if transport is None:
            return
        data = conn.data_to_send()
        if data and not transport.is_closing():
            transport.write(data)

    def flush_soon(self) -> None:
        """Coalesce writes: whatever h2 has queued goes out once, at the end of this turn."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _close_transport(self) -> None:
        """Close after pending writes; abort if the peer does not read them in time."""
        self._closing = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._flush()
        transport.close()
        if self._abort_handle is None:
            self._abort_handle = self.loop.call_later(_CLOSE_ABORT_DELAY, transport.abort)

    def close_with_goaway(self, error_code: ErrorCodes, reason: str) -> None:
        """Send GOAWAY with ``error_code``, cancel every call and close the connection."""
        if self._closing:
            return
        level = logging.DEBUG if error_code == ErrorCodes.NO_ERROR else logging.WARNING
        logger.log(
            level, "closing connection from %s: %s (GOAWAY %s)", self.peer, reason, error_code.name
        )
        conn = self.conn
        with contextlib.suppress(h2.exceptions.ProtocolError):
            conn.close_connection(error_code=error_code)
        self._cancel_all()
        self._close_transport()

    def _protocol_error(self, exc: h2.exceptions.ProtocolError) -> None:
        logger.info("HTTP/2 protocol error from %s: %s", self.peer, exc)
        conn = self.conn
        if conn.state_machine.state is not h2.connection.ConnectionState.CLOSED:
            # h2 raises an invalid preface before it queues a GOAWAY; send one ourselves.
            code = getattr(exc, "error_code", None) or ErrorCodes.PROTOCOL_ERROR
            with contextlib.suppress(h2.exceptions.ProtocolError):
                conn.close_connection(error_code=code)
        self._cancel_all()
        self._close_transport()

    # -- timers --------------------------------------------------------------------------

    def _handshake_expired(self) -> None:
        self._handshake_handle = None
        if not self._handshake_done and not self._closing:
            logger.info(
                "closing connection from %s: no HTTP/2 preface within %ss",
                self.peer,
                self.options.handshake_timeout,
            )
            self._closing = True
            if self.transport is not None:
                self.transport.abort()

    def _arm_idle(self) -> None:
        timeout = self.options.idle_timeout
        if timeout is None or self._closing:
            return
        self._idle_since = self.loop.time()
        if self._idle_handle is None:
            self._idle_handle = self.loop.call_later(timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_handle = None
        timeout = self.options.idle_timeout
        if self.calls or self._closing or timeout is None:
            return  # re-armed when the last call ends
        elapsed = self.loop.time() - self._idle_since
        if elapsed >= timeout - 0.001:
            self.close_with_goaway(ErrorCodes.NO_ERROR, f"idle for {timeout}s")
        else:
            self._idle_handle = self.loop.call_later(timeout - elapsed, self._idle_check)

    # -- h2 events -----------------------------------------------------------------------

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        if not self._handshake_done:
            # The client preface and its SETTINGS arrived: the handshake is complete.
            self._handshake_done = True
            if self._handshake_handle is not None:
                self._handshake_handle.cancel()
                self._handshake_handle = None
            self._arm_idle()
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._wake_all()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        self._idle_since = self.loop.time()  # any request is activity, even a rejected one
        if self._draining or self._peer_goaway:
            # Above our GOAWAY's last stream id: never processed, so the client may retry.
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if len(self.calls) >= self.options.max_concurrent_streams:
            # RFC 9113 section 5.1.2: refuse the excess stream, not the connection.
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        headers: List[Tuple[bytes, bytes]] = event.headers
        method = path = content_type = timeout = encoding = accept = None
        for key, value in headers:
            if key[:1] == b":":
                if key == b":path":
                    path = value
                elif key == b":method":
                    method = value
            elif key == b"content-type":
                content_type = value
            elif key == b"grpc-timeout":
                timeout = value
            elif key == b"grpc-encoding":
                encoding = value
            elif key == b"grpc-accept-encoding":
                accept = value
        ended = event.stream_ended is not None
        if path is None or method is None:
            self._reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        # h2 header validation is off (_h2compat), so the gRPC request rules are checked here.
        if method != b"POST":
            self._reject(
                stream_id,
                ended,
                StatusCode.INTERNAL,
                f"gRPC requires POST, got {method.decode('latin-1')!r}",
                http=b"405",
            )
            return
        if not (
            content_type == b"application/grpc"
            or (
                content_type is not None
                and content_type.startswith((b"application/grpc+", b"application/grpc;"))
            )
        ):
            # PROTOCOL-HTTP2: a non-gRPC content-type gets HTTP 415.
            self._reject(
                stream_id,
                ended,
                StatusCode.INTERNAL,
                f"invalid gRPC content-type {content_type!r}",
                http=b"415",
            )
            return
        method_name = path.decode("utf-8", "replace")
        handler = self.server._handlers.get(method_name)
        if handler is None:
            self._reject(
                stream_id, ended, StatusCode.UNIMPLEMENTED, f"Method not found: {method_name}"
            )
            return
        request_encoding = None
        if encoding is not None and encoding != b"identity":
            request_encoding = encoding.decode("latin-1")
            if request_encoding != "gzip":
                self._reject(
                    stream_id,
                    ended,
                    StatusCode.UNIMPLEMENTED,
                    f"grpc-encoding {request_encoding!r} is not supported "
                    f"(supported: {ACCEPT_ENCODING})",
                )
                return
        deadline = None
        if timeout is not None:
            try:
                deadline = self.loop.time() + parse_grpc_timeout(timeout.decode("latin-1"))
            except ValueError as exc:
                self._reject(stream_id, ended, StatusCode.INTERNAL, str(exc))
                return
        ctx = ServicerContext(self, stream_id, method_name, headers, handler)
        ctx._request_encoding = request_encoding
        # Policy: answer gzip only to a gzip request from a client that accepts gzip.
        ctx._accept_gzip = request_encoding == "gzip" and (accept is not None and b"gzip" in accept)
        ctx._decoder = MessageDecoder(self.options.max_receive_message_length)
        self.calls[stream_id] = ctx
        if deadline is not None:
            ctx._deadline = deadline
            ctx._deadline_handle = self.loop.call_at(deadline, self._deadline_expired, ctx)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        conn = self.conn
        # Hand the window back at once: memory per call is bounded by the message limit.
        if event.flow_controlled_length:
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        ctx = self.calls.get(event.stream_id)
        if ctx is None or ctx._done or ctx._decoder is None:
            return
        try:
            messages = ctx._decoder.feed(event.data)
        except GrpcError as exc:
            self.end_call(ctx, exc.code(), exc.details())
            return
        if messages:
            if ctx._message is not None or len(messages) > 1:
                self.end_call(
                    ctx,
                    StatusCode.UNIMPLEMENTED,
                    "received more than one request message for a unary method",
                )
                return
            ctx._message = messages[0]

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        ctx = self.calls.get(event.stream_id)
        if ctx is None or ctx._done:
            return
        ctx._request_complete = True
        message = ctx._message
        ctx._message = None
        decoder = ctx._decoder
        ctx._decoder = None
        error = decoder.incomplete_error() if decoder is not None else None
        if error is not None:
            self.end_call(ctx, error.code(), error.details())
            return
        if message is None:
            self.end_call(
                ctx, StatusCode.INTERNAL, "request stream ended without a request message"
            )
            return
        compressed, payload = message
        try:
            request = decompress(
                compressed, payload, ctx._request_encoding, self.options.max_receive_message_length
            )
        except GrpcError as exc:
            self.end_call(ctx, exc.code(), exc.details())
            return
        ctx._task = self.loop.create_task(self._run_call(ctx, request))

    def _on_stream_reset(self, event: h2.events.StreamReset) -> None:
        if event.remote_reset:
            limit = self.options.max_client_resets
            if limit is not None:
                now = self.loop.time()
                if now - self._reset_window_start > _RESET_WINDOW:
                    self._reset_window_start = now
                    self._resets = 0
                self._resets += 1
                if self._resets > limit:
                    # CVE-2023-44487 "rapid reset": the client resets faster than is plausible.
                    self.close_with_goaway(
                        ErrorCodes.ENHANCE_YOUR_CALM,
                        f"more than {limit} RST_STREAM frames in {_RESET_WINDOW:.0f}s",
                    )
                    return
        ctx = self.calls.get(event.stream_id)
        if ctx is None:
            return
        ctx._cancelled = True
        self._forget(ctx)
        if ctx._task is not None:
            ctx._task.cancel()

    def _on_window_updated(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id == 0:
            self._wake_all()
        else:
            ctx = self.calls.get(event.stream_id)
            if ctx is not None:
                self._wake(ctx)

    def _on_terminated(self, event: h2.events.ConnectionTerminated) -> None:
        if event.error_code != ErrorCodes.NO_ERROR or not self.calls:
            logger.debug("client %s sent GOAWAY %s", self.peer, event.error_code)
            self._cancel_all()
            self._close_transport()
            return
        # A graceful GOAWAY from the client (RFC 9113 section 6.8): calls already started
        # may still complete (GrpcH2Connection keeps h2's state machine open for that); the
        # connection closes after the last call.
        self._peer_goaway = True

    # -- calls ---------------------------------------------------------------------------

    def _reset(self, stream_id: int, code: ErrorCodes) -> None:
        # Already closed when the client reset it first: nothing to do then.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.reset_stream(stream_id, code)

    def _reject(
        self,
        stream_id: int,
        ended: bool,
        code: StatusCode,
        details: str,
        *,
        http: bytes = b"200",
    ) -> None:
        """Answer a stream no handler will see with a Trailers-Only response."""
        conn = self.conn
        headers = [
            (b":status", http),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", _STATUS_BYTES[code]),
            (b"grpc-message", encode_grpc_message(details)),
        ]
        if code is StatusCode.UNIMPLEMENTED:
            headers.append((b"grpc-accept-encoding", ACCEPT_ENCODING.encode("ascii")))
        # The client may have reset the stream meanwhile: then there is nothing to answer.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            conn.send_headers(stream_id, headers, end_stream=True)
            if not ended:
                # RFC 9113 section 8.1: a complete response before the request ended.
                conn.reset_stream(stream_id, ErrorCodes.NO_ERROR)

    def _deadline_expired(self, ctx: ServicerContext) -> None:
        ctx._deadline_handle = None
        if ctx._done:
            return
        ctx._cancelled = True
        self.end_call(ctx, StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self.flush_soon()
        if ctx._task is not None:
            ctx._task.cancel()

    def _forget(self, ctx: ServicerContext) -> None:
        """Bookkeeping once a call's outcome is decided: no more frames go out for it."""
        ctx._done = True
        handle = ctx._deadline_handle
        if handle is not None:
            handle.cancel()
            ctx._deadline_handle = None
        ctx._message = None
        if self.calls.pop(ctx._stream_id, None) is not None and not self.calls:
            if self._draining or self._peer_goaway:
                self.loop.call_soon(self._close_if_drained)
            else:
                self._arm_idle()
        self._wake(ctx)

    def _close_if_drained(self) -> None:
        if not self.calls and not self._closing:
            self.close_with_goaway(ErrorCodes.NO_ERROR, "drained")

    def end_call(self, ctx: ServicerContext, code: StatusCode, details: str = "") -> None:
        """Send ``code`` as the call's final status (Trailers-Only if nothing went out yet)."""
        if ctx._done:
            return
        conn = self.conn
        self._forget(ctx)
        if self._closing:
            return
        status = [(b"grpc-status", _STATUS_BYTES[code])]
        if details:
            status.append((b"grpc-message", encode_grpc_message(details)))
        if ctx._headers_sent:
            block = status
        else:
            block = [(b":status", b"200"), (b"content-type", b"application/grpc"), *status]
            if ctx._initial_metadata:
                block.extend(encode_metadata(ctx._initial_metadata))
        if ctx._trailing_metadata:
            block.extend(encode_metadata(ctx._trailing_metadata))
        # The client may have reset the stream meanwhile: then there is nothing to answer.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            conn.send_headers(ctx._stream_id, block, end_stream=True)
            if not ctx._request_complete:
                conn.reset_stream(ctx._stream_id, ErrorCodes.NO_ERROR)
        self.flush_soon()

    def send_response_headers(self, ctx: ServicerContext) -> None:
        """Send the response HEADERS (with any initial metadata) if not sent yet."""
        if ctx._headers_sent or ctx._done:
            return
        conn = self.conn
        headers = _GZIP_RESPONSE_HEADERS if ctx._accept_gzip else _RESPONSE_HEADERS
        if ctx._initial_metadata:
            headers = headers + encode_metadata(ctx._initial_metadata)
        ctx._headers_sent = True
        try:
            conn.send_headers(ctx._stream_id, headers)
        except h2.exceptions.ProtocolError:
            self._forget(ctx)  # the stream is gone (reset by the client)
            return
        self.flush_soon()

    def _cancel_all(self) -> None:
        """The connection is going away: every call is cancelled, nothing more is sent."""
        calls = list(self.calls.values())
        for ctx in calls:
            ctx._cancelled = True
            self._forget(ctx)
            if ctx._task is not None:
                ctx._task.cancel()

    def cancel_calls(self) -> None:
        """Server stop after the grace period: reset every call with CANCEL, then close."""
        for ctx in list(self.calls.values()):
            ctx._cancelled = True
            self._forget(ctx)
            self._reset(ctx._stream_id, ErrorCodes.CANCEL)
            if ctx._task is not None:
                ctx._task.cancel()
        self.close_with_goaway(ErrorCodes.NO_ERROR, "server stopped")

    def begin_drain(self) -> None:
        """Server stop: GOAWAY now, finish calls already started, refuse new streams."""
        if self._closing or self._draining:
            return
        conn = self.conn
        if not self._started or not self.calls:
            self.close_with_goaway(ErrorCodes.NO_ERROR, "server stopping")
            return
        self._draining = True
        # Written by hand, not with h2's close_connection(): that closes h2's state machine,
        # and the in-flight calls still have to send their responses (RFC 9113 section 6.8).
        self._flush()
        # RFC 9113 section 6.8: 9-byte frame header (length 8, type 0x7, no flags, stream 0),
        # then the last stream id we will process and the error code.
        frame = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(
            ">II", conn.highest_inbound_stream_id & 0x7FFFFFFF, int(ErrorCodes.NO_ERROR)
        )
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    # -- handler tasks -------------------------------------------------------------------

    def _wake(self, ctx: ServicerContext) -> None:
        waiter = ctx._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_all(self) -> None:
        for ctx in self.calls.values():
            waiter = ctx._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _run_call(self, ctx: ServicerContext, request: bytes) -> None:
        try:
            result: Any = ctx._handler(request, ctx)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            if not ctx._done:
                ctx._cancelled = True
                self.end_call(ctx, StatusCode.CANCELLED, "handler was cancelled")
            return
        except _AbortError:
            return
        except Exception as exc:
            logger.exception("handler for %s (peer %s) raised", ctx._method, self.peer)
            if self.options.debug:
                details = f"Exception calling application: {type(exc).__name__}: {exc}"
            else:
                details = "Exception calling application"
            self.end_call(ctx, StatusCode.UNKNOWN, details)
            return
        except BaseException:
            self.end_call(ctx, StatusCode.UNKNOWN, "Exception calling application")
            raise
        if ctx._done:
            return
        if ctx._code is not StatusCode.OK:
            self.end_call(ctx, ctx._code, ctx._details)
            return
        if not isinstance(result, (bytes, bytearray, memoryview)):
            logger.error(
                "handler for %s returned %s, not bytes", ctx._method, type(result).__name__
            )
            self.end_call(
                ctx, StatusCode.INTERNAL, f"handler returned {type(result).__name__}, not bytes"
            )
            return
        try:
            await self._reply(ctx, bytes(result))
        except asyncio.CancelledError:
            if not ctx._done:
                ctx._cancelled = True
                self.end_call(ctx, StatusCode.CANCELLED, "call was cancelled")
        except h2.exceptions.ProtocolError:
            # The stream closed underneath us (client reset, connection lost).
            self._forget(ctx)

    async def _reply(self, ctx: ServicerContext, payload: bytes) -> None:
        """Send headers, the response message (waiting on flow-control windows) and trailers."""
        conn = self.conn
        if ctx._accept_gzip:
            payload = gzip_compress(payload)
        message = memoryview(encode_message_prefix(len(payload), ctx._accept_gzip) + payload)
        self.send_response_headers(ctx)
        stream_id = ctx._stream_id
        offset = 0
        total = len(message)
        while True:
            if ctx._done:
                return
            if not self._paused:
                frame_size = conn.max_outbound_frame_size
                while offset < total:
                    window = conn.local_flow_control_window(stream_id)
                    if window <= 0:
                        break
                    size = min(window, frame_size, total - offset)
                    conn.send_data(stream_id, message[offset : offset + size])
                    offset += size
            if offset >= total:
                break
            # Blocked on a window (or on the socket): let the data out, wait for WINDOW_UPDATE.
            self.flush_soon()
            waiter = self.loop.create_future()
            ctx._waiter = waiter
            try:
                await waiter
            finally:
                ctx._waiter = None
        if ctx._done:
            return
        trailers = _OK_TRAILERS
        if ctx._trailing_metadata:
            trailers = trailers + encode_metadata(ctx._trailing_metadata)
        conn.send_headers(stream_id, trailers, end_stream=True)
        self._forget(ctx)
        if self._resets:
            # A completed call earns back one reset: only resets far beyond real work (the
            # rapid-reset pattern) reach the limit, not a busy client that cancels some calls.
            self._resets -= 1
        self.flush_soon()


class Server:
    """A gRPC server for generic unary methods (bytes in, bytes out) on asyncio and h2.

    ``handlers`` maps method paths (``/pkg.Service/Method``) to handlers
    ``async (request: bytes, context: ServicerContext) -> bytes``. Keyword options:

    - ``max_receive_message_length``: larger requests end with RESOURCE_EXHAUSTED (-1: no limit).
    - ``max_concurrent_streams``: advertised in SETTINGS; excess streams get REFUSED_STREAM,
      which clients retry.
    - ``debug``: put a handler exception's text in the UNKNOWN status (always logged).
    - ``handshake_timeout``: seconds for TLS plus the client's HTTP/2 preface (None: no limit).
    - ``idle_timeout``: a connection with no call in flight for this long gets GOAWAY and is
      closed; clients reconnect on their next call (None: no limit).
    - ``max_header_list_size``: bytes of decoded request headers; a larger header block is a
      denial-of-service attempt and costs the connection (GOAWAY ENHANCE_YOUR_CALM).
    - ``max_client_resets``: RST_STREAM frames a connection may send per 10 seconds, net of
      calls it completed, before it gets GOAWAY ENHANCE_YOUR_CALM (None: no limit).
    """

    def __init__(
        self,
        handlers: Optional[Mapping[str, Handler]] = None,
        *,
        max_receive_message_length: int = 4 * 1024 * 1024,
        max_concurrent_streams: int = 1000,
        debug: bool = False,
        handshake_timeout: Optional[float] = 10.0,
        idle_timeout: Optional[float] = 300.0,
        max_header_list_size: int = 16 * 1024,
        max_client_resets: Optional[int] = 2000,
    ) -> None:
        self._options = ServerOptions(
            max_receive_message_length=max_receive_message_length,
            max_concurrent_streams=max_concurrent_streams,
            debug=bool(debug),
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            max_header_list_size=max_header_list_size,
            max_client_resets=max_client_resets,
        )
        self._handlers: Dict[str, Handler] = {}
        if handlers is not None:
            if not isinstance(handlers, Mapping):
                raise TypeError("handlers must be a mapping of method path to handler")
            for path, handler in handlers.items():
                self.add_method(path, handler)
        self._listeners: List[_Listener] = []
        self._connections: Set[_ServerProtocol] = set()
        self._stop_task: Optional[asyncio.Future[None]] = None
        self._closed: Optional[asyncio.Event] = None
        self._stopped = False

    def add_method(self, path: str, handler: Handler) -> None:
        """Serve ``path`` (``/pkg.Service/Method``) with ``handler``; replaces an earlier one."""
        if not isinstance(path, str):
            raise TypeError(f"method path must be a str, not {type(path).__name__}")
        if not path.startswith("/") or len(path) < 2:
            raise ValueError(f"method path must start with '/', got {path!r}")
        if not callable(handler):
            raise TypeError(f"handler for {path} is not callable")
        self._handlers[path] = handler

    def _closed_event(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
        return self._closed

    async def start(self, address: str, *, ssl_context: Optional[ssl.SSLContext] = None) -> int:
        """Listen on ``address`` and return the bound port (0 for unix sockets).

        ``address`` is ``host:port``, ``[v6]:port``, ``unix:/path`` or ``unix-abstract:name``;
        port 0 picks a free port (the same one on every address ``host`` resolves to).
        With ``ssl_context`` the server speaks TLS; ALPN is set to ``h2`` on that context
        and connections that do not negotiate h2 are closed. Require client certificates
        (mutual TLS) on the context itself: ``verify_mode = ssl.CERT_REQUIRED`` and
        ``load_verify_locations(client_ca)``. Call ``start`` again to listen on more addresses.
        """
        if self._stopped or self._stop_task is not None:
            raise RuntimeError("server was stopped; create a new Server")
        target = parse_bind_address(address)
        if ssl_context is not None:
            if not isinstance(ssl_context, ssl.SSLContext):
                raise TypeError("ssl_context must be an ssl.SSLContext")
            ssl_context.set_alpn_protocols(["h2"])
        self._closed_event()
        loop = asyncio.get_running_loop()
        tls = ssl_context is not None
        handshake = self._options.handshake_timeout if tls else None

        def factory() -> _ServerProtocol:
            return _ServerProtocol(self, tls)

        if target.kind in ("unix", "unix-abstract"):
            path = target.path
            server = await loop.create_unix_server(
                factory, path, ssl=ssl_context, ssl_handshake_timeout=handshake
            )
            owned = None if path.startswith("\0") else path
            self._listeners.append(_Listener(server, owned))
            logger.info("serving gRPC on unix:%s%s", path.lstrip("\0"), " (TLS)" if tls else "")
            return 0
        host, port = target.addresses[0]
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        addresses: List[str] = []
        for info in infos:
            ip = str(info[4][0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise OSError(f"cannot resolve bind host {host!r}")
        servers: List[asyncio.Server] = []
        try:
            for ip in addresses:
                server = await loop.create_server(
                    factory,
                    ip,
                    port,
                    ssl=ssl_context,
                    ssl_handshake_timeout=handshake,
                    reuse_address=True,
                )
                servers.append(server)
                if port == 0:
                    sockets = server.sockets or ()
                    port = int(sockets[0].getsockname()[1])
        except BaseException:
            for srv in servers:
                srv.close()
            raise
        for srv in servers:
            self._listeners.append(_Listener(srv, None))
        logger.info(
            "serving gRPC on %s port %d%s", ", ".join(addresses), port, " (TLS)" if tls else ""
        )
        return port

    async def stop(self, grace: Optional[float] = None) -> None:
        """Stop: GOAWAY to every client, let in-flight calls finish within ``grace`` seconds,
        then cancel the rest (``None`` or 0: cancel at once, as grpcio does). Idempotent."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._do_stop(grace))
        await asyncio.shield(self._stop_task)

    async def _do_stop(self, grace: Optional[float]) -> None:
        for listener in self._listeners:
            listener.server.close()
        connections = list(self._connections)
        for proto in connections:
            proto.begin_drain()
        if grace is not None and grace > 0:
            pending = [p.closed for p in self._connections if not p.closed.done()]
            if pending:
                await asyncio.wait(pending, timeout=grace)
        tasks = [
            ctx._task
            for proto in self._connections
            for ctx in proto.calls.values()
            if ctx._task is not None
        ]
        for proto in list(self._connections):
            proto.cancel_calls()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        pending = [p.closed for p in self._connections if not p.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=_CLOSE_ABORT_DELAY + 1.0)
        for proto in list(self._connections):
            if proto.transport is not None:
                proto.transport.abort()
        for listener in self._listeners:
            try:
                await asyncio.wait_for(listener.server.wait_closed(), 5.0)
            except asyncio.TimeoutError:
                logger.warning("listener did not close within 5s")
            if listener.unix_path is not None:
                _unlink_socket(listener.unix_path)
        self._stopped = True
        self._closed_event().set()

    async def wait_closed(self) -> None:
        """Wait until ``stop()`` has finished."""
        await self._closed_event().wait()


def _unlink_socket(path: str) -> None:
    # Already gone, or not ours to remove: nothing to clean up.
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
