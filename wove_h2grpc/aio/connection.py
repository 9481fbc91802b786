"""One client HTTP/2 connection on asyncio around ``h2``: streams, flow control, PING, GOAWAY.

The connection is an ``asyncio.Protocol``: bytes in -> h2 events -> call outcomes, and all
writes go through one ``_flush`` per event-loop turn. It knows nothing about targets,
reconnects or retries; it tells the channel, per call, whether the server provably never
processed the stream (then the channel may retry it, gRFC A6).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from ..errors import GrpcError, Metadata
from ..protocol.framing import MessageDecoder, decompress
from ..protocol.metadata import decode_grpc_message, decode_metadata
from ..protocol.status import (
    StatusCode,
    h2_error_name,
    parse_grpc_status,
    status_from_h2_error,
    status_from_http,
)
from ._h2compat import make_h2_connection, pending_frame_problem

__all__ = ["Call", "ClientConnection", "ConnectionSettings", "RetryCall"]

logger = logging.getLogger(__name__)

_ErrorCodes = h2.errors.ErrorCodes
_SettingCodes = h2.settings.SettingCodes

# Receive side: large windows so a multi-megabyte response streams without waiting for
# WINDOW_UPDATE round trips (RFC 9113 section 6.9.2); h2 re-opens them as data is consumed.
STREAM_WINDOW = 16 * 1024 * 1024
CONNECTION_WINDOW = 64 * 1024 * 1024
MAX_FRAME_SIZE = 1024 * 1024
MAX_HEADER_LIST_SIZE = 64 * 1024
# Framed request bytes that trigger an immediate write (see _send_body).
_FLUSH_THRESHOLD = 256 * 1024
# Concurrent streams per connection when the server advertises no limit: grpcio servers
# advertise none and cancel calls beyond grpc.server.max_pending_requests (default 1000).
DEFAULT_MAX_STREAMS = 1000
# grpcio's GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA: a grpcio server answers more keepalive
# PINGs than this between our DATA/HEADERS frames with GOAWAY too_many_pings.
_MAX_PINGS_WITHOUT_DATA = 2


class RetryCall(Exception):
    """Internal: the call never reached the server's application and may be sent again.

    ``sent`` is False when no byte of the call left the client (queued, never opened);
    True when the server refused the stream before processing it (REFUSED_STREAM, or a
    GOAWAY whose last-stream-id is below the stream).
    """

    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


class ConnectionSettings:
    """Knobs shared by every connection of one channel.

    Shared on purpose: when a server answers GOAWAY too_many_pings, the doubled
    keepalive_time must also hold for the channel's next connections (as in grpcio).
    """

    __slots__ = ("keepalive_time", "keepalive_timeout", "max_receive_message_length")

    def __init__(
        self,
        *,
        max_receive_message_length: int,
        keepalive_time: Optional[float],
        keepalive_timeout: float,
    ) -> None:
        self.max_receive_message_length = max_receive_message_length
        self.keepalive_time = keepalive_time
        self.keepalive_timeout = keepalive_timeout


class Call:
    """One unary call on the wire: request bytes out, one response message or an error in."""

    __slots__ = (
        "conn",
        "deadline",
        "decoder",
        "encoding",
        "future",
        "headers",
        "http_status",
        "message",
        "method",
        "out",
        "out_pos",
        "prefix",
        "request_headers",
        "sent_end",
        "stream_id",
        "timer",
        "trailers",
    )

    def __init__(
        self,
        future: asyncio.Future[bytes],
        request_headers: List[Tuple[bytes, bytes]],
        prefix: bytes,
        out: bytes,
        deadline: Optional[float],
        method: str,
    ) -> None:
        self.future = future
        self.request_headers = request_headers
        # The 5-byte message prefix and the message, kept apart: joining them would copy
        # the whole request (a Wove task's arguments) once more for as long as it waits.
        self.prefix = prefix
        self.out = out
        self.out_pos = 0  # bytes of prefix + message sent
        self.deadline = deadline
        self.method = method
        self.stream_id = 0
        self.conn: Optional[ClientConnection] = None
        self.decoder: Optional[MessageDecoder] = None
        self.headers: Optional[List[Tuple[bytes, bytes]]] = None
        self.trailers: Optional[List[Tuple[bytes, bytes]]] = None
        self.http_status = 0
        self.encoding: Optional[str] = None
        self.message: Optional[bytes] = None
        self.sent_end = False
        self.timer: Optional[asyncio.TimerHandle] = None


def _is_grpc_content_type(value: Optional[bytes]) -> bool:
    """``application/grpc``, optionally followed by ``+proto``-style or ``;`` parameters."""
    if value is None or not value.startswith(b"application/grpc"):
        return False
    rest = value[16:]
    return not rest or rest[:1] in (b"+", b";")


def _header(headers: Sequence[Tuple[bytes, bytes]], name: bytes) -> Optional[bytes]:
    for key, value in headers:
        if key == name:
            return value
    return None


class ClientConnection(asyncio.Protocol):
    """An HTTP/2 client connection multiplexing unary gRPC calls.

    Lifecycle: ``connection_made`` sends the preface; ``ready`` resolves when the server's
    SETTINGS arrive; ``usable`` turns False on GOAWAY or a fatal error (the first fatal
    error sticks and fails every call on it); calls beyond the server's
    MAX_CONCURRENT_STREAMS wait in a queue instead of failing.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, settings: ConnectionSettings, peer: str
    ) -> None:
        self._loop = loop
        self._settings = settings
        self.peer = peer
        self._fd = -1
        self._h2: h2.connection.H2Connection = make_h2_connection(client_side=True)
        self._transport: Optional[asyncio.Transport] = None
        self._streams: Dict[int, Call] = {}
        self._queue: Deque[Call] = deque()
        self._blocked: Dict[int, Call] = {}  # streams waiting for send window
        self._flush_scheduled = False
        # The transport's buffer is over its high-water mark: request bodies wait (in
        # _blocked) instead of piling up copies in asyncio's write buffer.
        self._write_paused = False
        self._unflushed = 0  # request bytes framed since the last write
        # Until (and unless) the server's SETTINGS give a limit. RFC 9113 6.5.2 makes the
        # initial limit unlimited; we cap our own concurrency so that a server advertising
        # none (grpcio's) is not sent more calls than its default pending queue takes.
        self._max_streams = DEFAULT_MAX_STREAMS
        self._goaway_last_id: Optional[int] = None
        self.goaway_reason = ""
        self._pings_without_data = 0
        self.permanent_failure = False  # failed in a way a reconnect cannot fix
        self.proven = False  # the server answered a request here (resets reconnect backoff)
        self._error: Optional[GrpcError] = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.pid = os.getpid()
        self._last_read = time.monotonic()
        self._ping_timer: Optional[asyncio.TimerHandle] = None
        self._ping_deadline: Optional[asyncio.TimerHandle] = None
        self.on_idle: Optional[Callable[[ClientConnection], None]] = None
        self._dispatch: Dict[type, Callable[[Any], None]] = {
            h2.events.ResponseReceived: self._on_response,
            h2.events.DataReceived: self._on_data,
            h2.events.TrailersReceived: self._on_trailers,
            h2.events.StreamEnded: self._on_stream_ended,
            h2.events.StreamReset: self._on_stream_reset,
            h2.events.WindowUpdated: self._on_window_updated,
            h2.events.RemoteSettingsChanged: self._on_remote_settings,
            h2.events.ConnectionTerminated: self._on_goaway,
            h2.events.PingAckReceived: self._on_ping_ack,
        }

    # ------------------------------------------------------------------ state

    @property
    def usable(self) -> bool:
        """True while new calls may be started here (no GOAWAY, no fatal error)."""
        return self._error is None and self._goaway_last_id is None

    @property
    def active_calls(self) -> int:
        """Calls open or queued on this connection."""
        return len(self._streams) + len(self._queue)

    @property
    def error(self) -> Optional[GrpcError]:
        """The sticky fatal error, if the connection failed."""
        return self._error

    # ------------------------------------------------------------ asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        h2c = self._h2
        h2c.initiate_connection()
        h2c.update_settings(
            {
                _SettingCodes.ENABLE_PUSH: 0,
                _SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                _SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                _SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            }
        )
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        try:
            events = self._h2.receive_data(data)
            problem = pending_frame_problem(self._h2, first=not self.ready.done())
            if problem:
                self.permanent_failure = "HTTP/2" in problem
                self._h2.close_connection(_ErrorCodes.FRAME_SIZE_ERROR)
                raise h2.exceptions.ProtocolError(problem)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY; send it, then fail everything on this connection.
            self._flush()
            self._fail(
                GrpcError(
                    StatusCode.UNAVAILABLE,
                    f"HTTP/2 protocol error from {self.peer}: {exc}",
                )
            )
            return
        dispatch = self._dispatch
        for event in events:
            handler = dispatch.get(type(event))
            if handler is not None:
                handler(event)
        self._flush()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        reason = f": {exc}" if exc else ""
        tls = self._transport is not None and self._transport.get_extra_info("sslcontext")
        if tls and not self.ready.done():
            # TLS 1.3 finishes the client's handshake before the server checks the client
            # certificate: a refusal shows up as the connection closing before SETTINGS.
            self.permanent_failure = True
            reason += (
                " before the server's HTTP/2 SETTINGS, right after the TLS handshake "
                "(did the server refuse our client certificate, or require one?)"
            )
        self._fail(
            GrpcError(
                StatusCode.UNAVAILABLE,
                f"connection to {self.peer} lost{reason}",
            ),
            close=False,
        )
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._blocked and self._error is None:
            self._send_blocked()
            self._flush()

    def eof_received(self) -> Optional[bool]:
        return False  # close the transport; connection_lost fails what is left

    def input_pending(self) -> bool:
        """True when the socket has unread input while no call is open here.

        Checked before reusing an idle connection: if the peer has just closed it (or sent
        GOAWAY), the event loop learns so only on its next turn, and a request written now
        would be lost with the connection. One ``select`` on one fd; never on a busy
        connection.
        """
        if self._streams or self._fd < 0:
            return False
        try:
            readable, _, _ = select.select((self._fd,), (), (), 0)
        except (OSError, ValueError):
            return False
        return bool(readable)

    def _flush(self) -> None:
        """Write whatever h2 has queued, in one write (the only place that writes)."""
        self._flush_scheduled = False
        self._unflushed = 0
        data = self._h2.data_to_send()
        if data and self._transport is not None:
            self._transport.write(data)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    # -------------------------------------------------------------- calls out

    def start(self, call: Call) -> None:
        """Open a stream for ``call`` now, or queue it until the server allows another."""
        call.conn = self
        if call.deadline is not None:
            call.timer = self._loop.call_at(call.deadline, self._on_deadline, call)
        if self._error is not None or self._goaway_last_id is not None:
            # Never sent: the channel may dispatch it elsewhere.
            reason = self._error.details() if self._error is not None else self.goaway_reason
            call.future.set_exception(RetryCall(reason, sent=False))
            return
        streams = self._streams
        if len(streams) < self._max_streams and not self._queue:
            idle = not streams
            self._open(call)
            if idle and not self._flush_scheduled:
                # A lone call (the sequential case) goes out now: one loop turn saved.
                # Calls started while others are open coalesce into one write per turn.
                self._flush()
            else:
                self._schedule_flush()
        else:
            self._queue.append(call)

    def _open(self, call: Call) -> None:
        h2c = self._h2
        stream_id = h2c.get_next_available_stream_id()
        call.stream_id = stream_id
        self._streams[stream_id] = call
        h2c.send_headers(stream_id, call.request_headers)
        self._pings_without_data = 0
        self._send_body(call)

    def _send_body(self, call: Call) -> None:
        """Send as much of the request as the windows allow (RFC 9113 section 5.2)."""
        h2c = self._h2
        sid = call.stream_id
        prefix = call.prefix
        body = call.out
        head = len(prefix)
        total = head + len(body)
        pos = call.out_pos
        while pos < total and not self._write_paused:
            window = h2c.local_flow_control_window(sid)
            if window <= 0:
                break
            size = min(total - pos, window, h2c.max_outbound_frame_size)
            end = pos + size
            if pos < head:
                # The frame with the prefix: copies at most one frame of the message.
                data: Any = prefix[pos:] + body[: end - head]
            elif pos == head and end == total:
                data = body
            else:
                data = memoryview(body)[pos - head : end - head]
            h2c.send_data(sid, data, end_stream=end == total)
            pos = end
            self._unflushed += size
            if self._unflushed >= _FLUSH_THRESHOLD:
                # Hand large bodies to the transport as they are framed, so that its
                # pause_writing() can stop the rest (instead of h2 buffering them all).
                self._flush()
        call.out_pos = pos
        if pos >= total:
            call.sent_end = True
            call.out = call.prefix = b""
            self._blocked.pop(sid, None)
        else:
            self._blocked[sid] = call

    def _send_blocked(self) -> None:
        """Resume waiting request bodies, oldest first, while the connection can take data.

        Stops at the first call the connection window or a paused transport holds back:
        with hundreds of large requests waiting, visiting all of them on every
        connection-level WINDOW_UPDATE would cost O(waiting) per update.
        """
        h2c = self._h2
        for call in list(self._blocked.values()):
            if self._write_paused or h2c.outbound_flow_control_window <= 0:
                break
            self._send_body(call)

    def pending_futures(self) -> List[asyncio.Future[bytes]]:
        """Futures of the calls open or queued here (for a graceful close)."""
        calls = [*self._streams.values(), *self._queue]
        return [c.future for c in calls if not c.future.done()]

    def goaway_and_drain(self) -> None:
        """Stop taking calls here; close once the open ones finish (address went away)."""
        if self._goaway_last_id is None:
            self._goaway_last_id = self._h2.highest_outbound_stream_id or 0
            self.goaway_reason = f"address {self.peer} left the target's resolved addresses"
        queue = self._queue
        while queue:  # never opened here: the channel sends them elsewhere
            call = queue.popleft()
            if not call.future.done():
                call.future.set_exception(RetryCall(self.goaway_reason, sent=False))
        if not self._streams:
            self.close()

    def cancel(self, call: Call, code: int = _ErrorCodes.CANCEL) -> None:
        """Reset ``call``'s stream (or drop it from the queue); the caller already gave up."""
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        sid = call.stream_id
        if sid and self._streams.get(sid) is call:
            self._forget(sid)
            if self._error is None and self._transport is not None:
                # The stream may already be closed on the wire: nothing to reset then.
                with contextlib.suppress(h2.exceptions.H2Error):
                    self._h2.reset_stream(sid, code)
                self._flush()
            self._drain_queue()
        elif not sid:
            with contextlib.suppress(ValueError):
                self._queue.remove(call)

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        self._blocked.pop(stream_id, None)
        if not self._streams and not self._queue and self.on_idle is not None:
            self.on_idle(self)

    def _drain_queue(self) -> None:
        queue = self._queue
        opened = False
        while queue and len(self._streams) < self._max_streams and self.usable:
            call = queue.popleft()
            if call.future.done():
                continue
            self._open(call)
            opened = True
        if opened:
            self._schedule_flush()

    def _on_deadline(self, call: Call) -> None:
        call.timer = None
        if call.future.done():
            return
        self.cancel(call)
        call.future.set_exception(
            GrpcError(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", initial_metadata=())
        )

    # ----------------------------------------------------------------- events

    def _on_response(self, event: Any) -> None:
        call = self._streams.get(event.stream_id)
        if call is None:
            return
        headers = event.headers
        call.headers = headers
        status = _header(headers, b":status")
        try:
            call.http_status = int(status) if status is not None else 0
        except ValueError:
            call.http_status = 0
        self.proven = True
        if call.http_status != 200 or not _is_grpc_content_type(_header(headers, b"content-type")):
            # Not a gRPC response (an error page, a proxy's answer): its body is not
            # length-prefixed messages. Leave decoder unset; DATA is acknowledged and
            # dropped, and the status comes from the HTTP status (PROTOCOL-HTTP2).
            return
        encoding = _header(headers, b"grpc-encoding")
        call.encoding = encoding.decode("ascii", "replace") if encoding is not None else None
        call.decoder = MessageDecoder(self._settings.max_receive_message_length)

    def _on_data(self, event: Any) -> None:
        sid = event.stream_id
        self._h2.acknowledge_received_data(event.flow_controlled_length, sid)
        call = self._streams.get(sid)
        if call is None or call.future.done():
            return
        decoder = call.decoder
        if decoder is None:  # DATA before HEADERS is a protocol error h2 already rejects
            return
        try:
            messages = decoder.feed(event.data)
            for compressed, payload in messages:
                if call.message is not None:
                    raise GrpcError(
                        StatusCode.INTERNAL,
                        f"server sent more than one response message for unary {call.method}",
                    )
                call.message = decompress(
                    compressed,
                    payload,
                    call.encoding,
                    self._settings.max_receive_message_length,
                )
        except GrpcError as exc:
            self._abort_call(call, exc)

    def _on_trailers(self, event: Any) -> None:
        call = self._streams.get(event.stream_id)
        if call is not None:
            call.trailers = event.headers

    def _take(self, stream_id: int) -> Optional[Call]:
        """Detach the call of a stream that ended on the wire (timer stopped, slot freed)."""
        call = self._streams.get(stream_id)
        if call is not None:
            if call.timer is not None:
                call.timer.cancel()
                call.timer = None
            self._forget(stream_id)
        return call

    def _on_stream_ended(self, event: Any) -> None:
        call = self._take(event.stream_id)
        if call is None:
            return
        if not call.future.done():
            outcome = self._outcome(call)
            if isinstance(outcome, bytes):
                call.future.set_result(outcome)
            else:
                call.future.set_exception(outcome)
        self._drain_queue()

    def _outcome(self, call: Call) -> bytes | GrpcError:
        """Decide the call's result from headers, trailers and message (PROTOCOL-HTTP2)."""
        headers = call.headers or []
        trailers = call.trailers
        # Trailers-Only: the status is in the only HEADERS frame.
        status_block = trailers if trailers is not None else headers
        raw_status = _header(status_block, b"grpc-status")
        http_status = call.http_status
        if raw_status is None:
            if http_status != 200:
                code = status_from_http(http_status)
                return self._error_for(
                    call,
                    code,
                    f"HTTP status {http_status} without grpc-status from {self.peer}"
                    f" (mapped to {code.name})",
                )
            content_type = _header(headers, b"content-type") or b""
            if not _is_grpc_content_type(content_type):
                return self._error_for(
                    call,
                    StatusCode.UNKNOWN,
                    f"response is not gRPC: content-type {content_type.decode('latin-1')!r}",
                )
            if trailers is None:
                return self._error_for(
                    call,
                    StatusCode.INTERNAL,
                    "server closed the stream without trailers (grpc-status missing)",
                )
            return self._error_for(
                call, StatusCode.INTERNAL, "trailers arrived without grpc-status"
            )
        try:
            code = parse_grpc_status(raw_status.decode("ascii", "replace"))
        except ValueError as exc:
            return self._error_for(call, StatusCode.INTERNAL, str(exc))
        if code is not StatusCode.OK:
            raw_message = _header(status_block, b"grpc-message")
            details = decode_grpc_message(raw_message) if raw_message is not None else ""
            return self._error_for(call, code, details)
        decoder = call.decoder
        if decoder is not None:
            incomplete = decoder.incomplete_error()
            if incomplete is not None:
                return self._error_for(call, incomplete.code(), incomplete.details())
        if call.message is None:
            return self._error_for(
                call,
                StatusCode.INTERNAL,
                f"server sent OK but no response message for unary {call.method}",
            )
        return call.message

    def _error_for(self, call: Call, code: StatusCode, details: str) -> GrpcError:
        initial: Metadata = (
            decode_metadata(call.headers)
            if call.trailers is not None and call.headers is not None
            else ()
        )
        if call.trailers is not None:
            trailing = decode_metadata(call.trailers)
        elif call.headers is not None:
            trailing = decode_metadata(call.headers)  # Trailers-Only
        else:
            trailing = ()
        return GrpcError(
            code,
            details,
            initial_metadata=initial,
            trailing_metadata=trailing,
            debug_error_string=(
                f"{code.name} from {self.peer} stream {call.stream_id} ({call.method}): {details}"
            ),
        )

    def _abort_call(self, call: Call, error: GrpcError) -> None:
        """Fail one call locally and reset its stream (e.g. an oversized message)."""
        self.cancel(call)
        if not call.future.done():
            call.future.set_exception(self._error_for(call, error.code(), error.details()))

    def _on_stream_reset(self, event: Any) -> None:
        call = self._take(event.stream_id)
        if call is None:
            return
        code = int(event.error_code)
        if not call.future.done():
            name = h2_error_name(code)
            if code == _ErrorCodes.REFUSED_STREAM and call.headers is None:
                call.future.set_exception(
                    RetryCall(
                        f"stream refused by {self.peer} (RST_STREAM REFUSED_STREAM)",
                        sent=True,
                    )
                )
            else:
                status = status_from_h2_error(code)
                call.future.set_exception(
                    self._error_for(call, status, f"stream reset by server (RST_STREAM {name})")
                )
        self._drain_queue()

    def _on_window_updated(self, event: Any) -> None:
        if not self._blocked:
            return
        sid = event.stream_id
        if sid:
            call = self._blocked.get(sid)
            if call is not None:
                self._send_body(call)
        else:
            self._send_blocked()

    def _on_remote_settings(self, event: Any) -> None:
        changed = event.changed_settings.get(_SettingCodes.MAX_CONCURRENT_STREAMS)
        if changed is not None:
            self._max_streams = changed.new_value
        if not self.ready.done():
            self.ready.set_result(None)
            self._arm_keepalive()
        if changed is not None:
            self._drain_queue()
        if _SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings and self._blocked:
            self._send_blocked()

    def _on_goaway(self, event: Any) -> None:
        """GOAWAY: streams at or below last-stream-id finish; the rest never ran (RFC 9113 6.8)."""
        last_id = event.last_stream_id if event.last_stream_id is not None else 0
        code = int(event.error_code)
        debug = bytes(event.additional_data or b"")
        self._goaway_last_id = last_id
        calm = code == _ErrorCodes.ENHANCE_YOUR_CALM and debug == b"too_many_pings"
        settings = self._settings
        if calm and settings.keepalive_time is not None:
            # As grpcio does: the server finds our PINGs too frequent; back off for good.
            settings.keepalive_time *= 2
            logger.warning(
                "server %s sent GOAWAY too_many_pings; keepalive_time doubled to %.1fs",
                self.peer,
                settings.keepalive_time,
            )
        reason = f"GOAWAY {h2_error_name(code)} from {self.peer}"
        if debug:
            reason += f" ({debug[:200].decode('utf-8', 'replace')})"
        self.goaway_reason = reason
        for sid, call in list(self._streams.items()):
            if sid > last_id:
                self._take(sid)
                if not call.future.done():
                    call.future.set_exception(
                        RetryCall(
                            f"{reason}: stream {sid} above last-stream-id {last_id}", sent=True
                        )
                    )
        queue = self._queue
        while queue:
            call = queue.popleft()
            if not call.future.done():
                call.future.set_exception(RetryCall(reason, sent=False))
        if not self._streams:
            self.close(error=GrpcError(StatusCode.UNAVAILABLE, reason))
        elif code != _ErrorCodes.NO_ERROR:
            # A GOAWAY with an error ends the connection (h2 closes it): streams at or
            # below last-stream-id may have run, so they fail instead of retrying.
            self._fail(GrpcError(status_from_h2_error(code), reason))

    # -------------------------------------------------------------- keepalive

    def _arm_keepalive(self) -> None:
        interval = self._settings.keepalive_time
        if interval is not None and self._error is None:
            self._ping_timer = self._loop.call_later(interval, self._keepalive_check)

    def _keepalive_check(self) -> None:
        """PING after keepalive_time without reads while calls are in flight (gRFC A8)."""
        self._ping_timer = None
        interval = self._settings.keepalive_time
        if self._error is not None or interval is None:
            return
        idle = time.monotonic() - self._last_read
        if (
            self._streams
            and idle >= interval
            and self._ping_deadline is None
            and self._pings_without_data < _MAX_PINGS_WITHOUT_DATA
        ):
            self._pings_without_data += 1
            try:
                self._h2.ping(b"wovekalv")
            except h2.exceptions.H2Error:
                return
            self._flush()
            self._ping_deadline = self._loop.call_later(
                self._settings.keepalive_timeout, self._keepalive_expired
            )
            self._ping_timer = self._loop.call_later(interval, self._keepalive_check)
        else:
            wait = max(interval - idle, 0.01) if self._streams else interval
            self._ping_timer = self._loop.call_later(wait, self._keepalive_check)

    def _keepalive_expired(self) -> None:
        self._ping_deadline = None
        self._fail(
            GrpcError(
                StatusCode.UNAVAILABLE,
                f"keepalive PING to {self.peer} not acknowledged within "
                f"{self._settings.keepalive_timeout}s; connection dropped",
            )
        )

    def _on_ping_ack(self, event: Any) -> None:
        if self._ping_deadline is not None:
            self._ping_deadline.cancel()
            self._ping_deadline = None

    # --------------------------------------------------------------- teardown

    def _fail(self, error: GrpcError, *, close: bool = True) -> None:
        """Make ``error`` the connection's sticky error and end every call on it."""
        if self._error is None:
            self._error = error
        error = self._error
        for timer in (self._ping_timer, self._ping_deadline):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._ping_deadline = None
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: the dialer reports it
        streams = list(self._streams.values())
        self._streams.clear()
        self._blocked.clear()
        for call in streams:
            if call.timer is not None:
                call.timer.cancel()
                call.timer = None
            if not call.future.done():
                call.future.set_exception(self._error_for(call, error.code(), error.details()))
        queue = self._queue
        while queue:
            call = queue.popleft()
            if not call.future.done():
                call.future.set_exception(RetryCall(error.details(), sent=False))
        if close and self._transport is not None:
            self._transport.close()
        if self.on_idle is not None:
            self.on_idle(self)

    def close(
        self, error_code: int = _ErrorCodes.NO_ERROR, *, error: Optional[GrpcError] = None
    ) -> None:
        """Send GOAWAY and close the transport; calls still open fail with ``error``.

        The default error is CANCELLED (the client closed the channel).
        """
        if self._transport is not None and self._error is None:
            with contextlib.suppress(h2.exceptions.H2Error):
                self._h2.close_connection(error_code)
            self._flush()
        self._fail(error or GrpcError(StatusCode.CANCELLED, "connection closed by the client"))

    def abandon(self) -> None:
        """Forget the connection without touching its socket (used in a forked child)."""
        self._transport = None
        self._error = GrpcError(StatusCode.UNAVAILABLE, "connection belongs to the parent process")
