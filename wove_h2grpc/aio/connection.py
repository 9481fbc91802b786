"""One client HTTP/2 connection: streams for calls, request bodies under flow control, keepalive.

Built on the shared ``H2Driver``; every call is a ``protocol.call.ClientCall`` fed the
events of its stream, and ends through ``_end`` alone, which stops watching its deadline,
frees its stream slot, resets the stream when the outcome says so and hands the outcome to
the waiting caller. The connection knows nothing about targets, reconnects or retries; the
outcome tells the caller whether the server provably never ran the call.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

import h2.events
import h2.settings
from h2.errors import ErrorCodes

from ..errors import GrpcError
from ..protocol.call import Outcome
from ..protocol.status import StatusCode, h2_error_name, status_from_h2_error
from ._h2compat import make_h2_connection
from .deadlines import Deadlines
from .driver import H2Driver
from .keepalive import ConnectionSettings, Keepalive
from .wire import WireCall

__all__ = ["ClientConnection", "ConnectionSettings", "WireCall"]

logger = logging.getLogger(__name__)

_SettingCodes = h2.settings.SettingCodes

# The receive windows (ConnectionSettings, from the channel's options) are large, so that a
# multi-megabyte response streams without waiting for WINDOW_UPDATE round trips (RFC 9113
# section 6.9.2). A unary response's bytes are acknowledged as they arrive (the message-size
# limit bounds them); a response stream's only while its reader keeps up (see _on_data).
MAX_FRAME_SIZE = 1024 * 1024
MAX_HEADER_LIST_SIZE = 64 * 1024
# Framed request bytes that trigger an immediate write (see _send_body).
_FLUSH_THRESHOLD = 256 * 1024
_JOIN_LIMIT = 64 * 1024
# A response stream's unread messages up to this many bytes do not hold back the window.
_READ_LOW_WATER = 64 * 1024
# Concurrent streams per connection when the server advertises no limit: grpcio servers
# advertise none and cancel calls beyond grpc.server.max_pending_requests (default 1000).
DEFAULT_MAX_STREAMS = 1000


class ClientConnection(H2Driver):
    """An HTTP/2 client connection multiplexing gRPC calls.

    Lifecycle: ``connection_made`` sends the preface; ``ready`` resolves when the server's
    SETTINGS arrive; ``usable`` turns False on GOAWAY or a fatal error (the first fatal
    error sticks and ends every call on it); calls beyond the server's
    MAX_CONCURRENT_STREAMS wait in a queue instead of failing.
    """

    # A client has few connections and may read large responses: read in bigger chunks.
    receive_buffer_size = 256 * 1024

    def __init__(
        self, loop: asyncio.AbstractEventLoop, settings: ConnectionSettings, peer: str
    ) -> None:
        super().__init__(loop, make_h2_connection(client_side=True))
        self._settings = settings
        self.peer = peer
        self._fd = -1
        self._tls = False
        self._streams: Dict[int, WireCall] = {}
        self._queue: Deque[WireCall] = deque()
        self._blocked: Dict[int, WireCall] = {}  # streams waiting for send window
        self._unflushed = 0  # request bytes framed since the last write
        # Until (and unless) the server's SETTINGS give a limit. RFC 9113 6.5.2 makes the
        # initial limit unlimited; we cap our own concurrency so that a server advertising
        # none (grpcio's) is not sent more calls than its default pending queue takes.
        self._max_streams = DEFAULT_MAX_STREAMS
        self._goaway_last_id: Optional[int] = None
        self.goaway_reason = ""
        self.permanent_failure = False  # failed in a way a reconnect cannot fix
        # Closed by the server before it sent a single byte (a TLS port answers a plaintext
        # preface this way: the connect path then probes for TLS, to say so).
        self.closed_silently = False
        self._created_read = self.last_read
        self.proven = False  # the server answered a request here (resets reconnect backoff)
        self._error: Optional[GrpcError] = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self._keepalive = Keepalive(
            loop,
            settings,
            busy=self._streams.__len__,
            ping=self.send_ping,
            expired=self._keepalive_expired,
            last_read=lambda: self.last_read,
        )
        self.settings_first = True  # until the server's SETTINGS arrive
        # The deadlines of calls started here, under one loop timer (deadlines.py).
        self._deadlines: Deadlines[WireCall] = Deadlines(loop, self._on_deadline)
        self.on_idle: Optional[Callable[[ClientConnection], None]] = None

    def handlers(self) -> Dict[type, Callable[[Any], None]]:
        return {
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
    def error(self) -> Optional[GrpcError]:
        """The sticky fatal error, if the connection failed."""
        return self._error

    # ------------------------------------------------------------ asyncio side

    def on_connected(self) -> None:
        transport = self.transport
        if transport is None:  # pragma: no cover - connection_made sets it just before
            return
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        # Read now: a closed SSL transport cannot answer get_extra_info() any more.
        self._tls = transport.get_extra_info("sslcontext") is not None
        h2c = self.h2
        h2c.initiate_connection()
        h2c.update_settings(
            {
                _SettingCodes.ENABLE_PUSH: 0,
                _SettingCodes.INITIAL_WINDOW_SIZE: self._settings.initial_window_size,
                _SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                _SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            }
        )
        extra = self._settings.connection_window_size - 65535
        if extra > 0:
            h2c.increment_flow_control_window(extra)
        self.flush()

    def on_broken(self, exc: Exception, not_http2: bool) -> None:
        if not_http2:
            self.permanent_failure = True
        # The calls carry the code of the GOAWAY we sent (an h2 error's own code).
        code = getattr(exc, "error_code", None)
        self._fail(
            StatusCode.UNAVAILABLE,
            f"HTTP/2 protocol error from {self.peer}: {exc}",
            h2_error_code=int(code) if code is not None else None,
        )

    def on_lost(self, exc: Optional[Exception]) -> None:
        reason = f": {exc}" if exc else ""
        # The driver stamps last_read on every read, starting at its construction.
        if not self.ready.done() and self.last_read == self._created_read and not self._tls:
            self.closed_silently = True
            reason += " before the server sent a byte"
        if not self.ready.done() and self._tls:
            # TLS 1.3 finishes the client's handshake before the server checks the client
            # certificate: a refusal shows up as the connection closing before SETTINGS.
            self.permanent_failure = True
            reason += (
                " before the server's HTTP/2 SETTINGS, right after the TLS handshake "
                "(did the server refuse our client certificate, or require one?)"
            )
        self._fail(StatusCode.UNAVAILABLE, f"connection to {self.peer} lost{reason}", close=False)

    def on_writable(self) -> None:
        if self._blocked and self._error is None:
            self._send_blocked()
            self.flush()

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

    # -------------------------------------------------------------- calls out

    def start(self, call: WireCall) -> None:
        """Open a stream for ``call`` now, or queue it until the server allows another.

        ``call.future`` gets the call's one ``Outcome``; it never raises.
        """
        if self._error is not None or self._goaway_last_id is not None:
            # Never sent: the caller may send it elsewhere.
            reason = self._error.details() if self._error is not None else self.goaway_reason
            outcome = call.on_connection_lost(StatusCode.UNAVAILABLE, reason)
            if outcome is not None:
                self._end(call, outcome)
            return
        if call.deadline is not None:
            self._deadlines.watch(call)
        streams = self._streams
        if len(streams) < self._max_streams and not self._queue:
            idle = not streams
            self._open(call)
            if idle and not self._flush_scheduled:
                # A lone call (the sequential case) goes out now: one loop turn saved.
                # Calls started while others are open coalesce into one write per turn.
                self.flush()
            else:
                self.flush_soon()
        else:
            self._queue.append(call)

    def cancel(
        self,
        call: WireCall,
        details: str = "Locally cancelled by application!",
        code: StatusCode = StatusCode.CANCELLED,
    ) -> None:
        """The caller gave up on ``call``: reset its stream (or drop it from the queue)."""
        outcome = call.on_cancel(details, code)
        if outcome is not None:
            self._end(call, outcome)

    def _open(self, call: WireCall) -> None:
        h2c = self.h2
        stream_id = h2c.get_next_available_stream_id()
        self._streams[stream_id] = call
        h2c.send_headers(stream_id, call.request_headers)
        call.opened(stream_id, self.peer)
        self._keepalive.pings_without_data = 0
        self._send_body(call)

    def _send_body(self, call: WireCall) -> None:
        """Send as much of the request as the windows allow (RFC 9113 section 5.2).

        Messages go out in order; END_STREAM goes with the last frame once the request is
        closing (a unary request is closing from the start, so its last DATA frame ends
        the stream).
        """
        h2c = self.h2
        sid = call.stream_id
        while True:
            prefix = call.prefix
            body = call.body
            head = len(prefix)
            total = head + len(body)
            pos = call.out_pos
            last = call.closing and not call.outbox
            while pos < total and not self.write_paused:
                window = h2c.local_flow_control_window(sid)
                if window <= 0:
                    break
                size = min(total - pos, window, h2c.max_outbound_frame_size)
                if pos < head and size > _JOIN_LIMIT:
                    size = head - pos  # the prefix alone: a large body is never copied
                end = pos + size
                if pos < head:
                    # The frame with the prefix: copies at most one frame of the message.
                    data: Any = prefix[pos:] + body[: end - head]
                elif pos == head and end == total:
                    data = body
                else:
                    data = memoryview(body)[pos - head : end - head]
                ends = last and end == total
                h2c.send_data(sid, data, end_stream=ends)
                if ends:
                    call.end_sent = True
                pos = end
                call.data_sent += size
                self._unflushed += size
                if self._unflushed >= _FLUSH_THRESHOLD:
                    # Hand large bodies to the transport as they are framed, so that its
                    # pause_writing() can stop the rest (instead of h2 buffering them all).
                    self._unflushed = 0
                    self.flush()
            call.out_pos = pos
            if pos < total:
                self._blocked[sid] = call
                return
            outbox = call.outbox
            if not outbox:
                break
            call.prefix, call.body = outbox.popleft()
            call.out_pos = 0
        call.body = call.prefix = b""
        self._blocked.pop(sid, None)
        if call.closing and not call.end_sent:
            # Nothing (more) to send with it: an empty DATA frame ends the request.
            h2c.end_stream(sid)
            call.end_sent = True
        writer = call.writer
        if writer is not None:
            call.writer = None
            if not writer.done():
                writer.set_result(None)

    def write(self, call: WireCall, prefix: bytes, body: bytes) -> bool:
        """Add one message to a streaming request; True when it has gone out already.

        Otherwise the caller waits on ``call.writer`` (the windows or the transport hold
        it back, or the stream is not open yet), which resolves when the connection has
        taken every message written so far, or the call ended.
        """
        call.queue(prefix, body)
        sid = call.stream_id
        if sid and self._streams.get(sid) is call:
            self._send_body(call)
            self.flush_soon()
        return call.request_drained

    def done_writing(self, call: WireCall) -> None:
        """End a streaming request after the messages written so far (half-close)."""
        if call.closing:
            return
        call.closing = True
        sid = call.stream_id
        if sid and self._streams.get(sid) is call:
            self._send_body(call)
            self.flush_soon()

    def consumed(self, call: WireCall, size: int) -> None:
        """The reader took a message of ``size`` framed bytes from a response stream: give
        that much of the window it held back to the server again (all of it once the reader
        has caught up)."""
        unacked = call.unacked
        if not unacked:
            return
        if call.buffered > _READ_LOW_WATER:
            unacked = min(unacked, size)
        call.unacked -= unacked
        if self._error is None and self.transport is not None:
            self.h2.acknowledge_received_data(unacked, call.stream_id)
            self.flush_soon()

    def _send_blocked(self) -> None:
        """Resume waiting request bodies, oldest first, while the connection can take data.

        Stops at the first call the connection window or a paused transport holds back:
        with hundreds of large requests waiting, visiting all of them on every
        connection-level WINDOW_UPDATE would cost O(waiting) per update.
        """
        h2c = self.h2
        for call in list(self._blocked.values()):
            if self.write_paused or h2c.outbound_flow_control_window <= 0:
                break
            self._send_body(call)

    def pending_futures(self) -> List[asyncio.Future[Outcome]]:
        """Futures of the calls open or queued here (for a graceful close)."""
        calls = [*self._streams.values(), *self._queue]
        return [c.future for c in calls if not c.future.done()]

    def _drain_queue(self) -> None:
        queue = self._queue
        opened = False
        while queue and len(self._streams) < self._max_streams and self.usable:
            self._open(queue.popleft())
            opened = True
        if opened:
            self.flush_soon()

    def _on_deadline(self, call: WireCall) -> None:
        """``call``'s deadline has come (the deadline list expires it)."""
        outcome = call.on_deadline()
        if outcome is not None:
            self._end(call, outcome)

    # ----------------------------------------------------------- the one exit

    def _end(self, call: WireCall, outcome: Outcome) -> None:
        """Every call ends here: timer stopped, slot freed, stream reset if the outcome says
        so, the outcome handed to the caller, the next queued call started."""
        if call.listed or call.timer is not None:
            self._deadlines.forget(call)
        sid = call.stream_id
        removed = False
        if sid and self._streams.get(sid) is call:
            removed = True
            del self._streams[sid]
            self._blocked.pop(sid, None)
            if outcome.reset is not None and self._error is None and self.transport is not None:
                self.reset_stream(sid, outcome.reset)
                self.flush()
            if self._queue:
                self._drain_queue()
        elif not sid and call in self._queue:
            # (Not there when a connection-wide event emptied the queue first.)
            self._queue.remove(call)
            removed = True
        if call.streaming:
            if call.unacked and self._error is None and self.transport is not None:
                # The stream is over: give its held-back bytes to the connection window.
                self.h2.acknowledge_received_data(call.unacked, sid)
                self.flush_soon()
            call.unacked = 0
            if call.progress is not None:
                _resolve_progress(call)
        writer = call.writer
        if writer is not None:
            call.writer = None
            if not writer.done():
                writer.set_result(None)
        if not call.future.done():
            call.future.set_result(outcome)
        if removed and not self._streams and not self._queue and self.on_idle is not None:
            self.on_idle(self)

    # ----------------------------------------------------------------- events

    def _on_response(self, event: Any) -> None:
        call = self._streams.get(event.stream_id)
        if call is not None:
            self.proven = True
            outcome = call.on_headers(event.headers)
            if outcome is not None:
                self._end(call, outcome)
            elif call.progress is not None:
                _resolve_progress(call)

    def _on_data(self, event: Any) -> None:
        sid = event.stream_id
        call = self._streams.get(sid)
        if call is None or not call.streaming:
            self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
            if call is None:
                return
            outcome = call.on_data(event.data)
            if outcome is not None:
                self._end(call, outcome)
            return
        outcome = call.on_data(event.data)
        sink = call.sink
        if sink is not None:
            # A consumer that takes every message as it arrives: nothing waits unread, so
            # the window reopens at once. A sink that ends the call stops the delivery.
            self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
            messages = call.messages
            while messages and not call.future.done():
                sink(call.take())  # type: ignore[arg-type]
            if outcome is not None and not call.future.done():
                self._end(call, outcome)
            return
        # A response stream: its window reopens only while the reader keeps up, so a
        # reader that stops stops the server after one window (memory stays bounded).
        if outcome is not None:
            call.unacked += event.flow_controlled_length
            self._end(call, outcome)
            return
        if call.unacked or call.buffered > _READ_LOW_WATER:
            call.unacked += event.flow_controlled_length
        else:
            self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
        if call.progress is not None and call.messages:
            _resolve_progress(call)

    def _on_trailers(self, event: Any) -> None:
        call = self._streams.get(event.stream_id)
        if call is not None:
            call.on_trailers(event.headers)

    def _on_stream_ended(self, event: Any) -> None:
        call = self._streams.get(event.stream_id)
        if call is not None:
            outcome = call.on_end()
            if outcome is not None:
                self._end(call, outcome)

    def _on_stream_reset(self, event: Any) -> None:
        call = self._streams.get(event.stream_id)
        if call is not None:
            outcome = call.on_reset(int(event.error_code))
            if outcome is not None:
                self._end(call, outcome)

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
            self.settings_first = False
            if self._error is None:
                self._keepalive.start()
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
        if code == ErrorCodes.ENHANCE_YOUR_CALM and debug == b"too_many_pings":
            self._keepalive.too_many_pings(self.peer)
        reason = f"GOAWAY {h2_error_name(code)} from {self.peer}"
        if debug:
            reason += f" ({debug[:200].decode('utf-8', 'replace')})"
        self.goaway_reason = reason
        queued = list(self._queue)
        self._queue.clear()
        for call in [*self._streams.values(), *queued]:
            outcome = call.on_goaway(last_id, code, reason)
            if outcome is not None:
                self._end(call, outcome)
        if not self._streams:
            self.close(code=StatusCode.UNAVAILABLE, details=reason)
        elif code != ErrorCodes.NO_ERROR:
            # A GOAWAY with an error ends the connection (h2 closes it).
            self._fail(status_from_h2_error(code), reason, h2_error_code=code)

    def goaway_and_drain(self) -> None:
        """Stop taking calls here; close once the open ones finish (address went away)."""
        if self._goaway_last_id is None:
            self._goaway_last_id = self.h2.highest_outbound_stream_id or 0
            self.goaway_reason = f"address {self.peer} left the target's resolved addresses"
        queued = list(self._queue)
        self._queue.clear()
        for call in queued:  # never opened here: the caller sends them elsewhere
            outcome = call.on_connection_lost(StatusCode.UNAVAILABLE, self.goaway_reason)
            if outcome is not None:
                self._end(call, outcome)
        if not self._streams:
            self.close()

    def _on_ping_ack(self, event: Any) -> None:
        self._keepalive.acknowledged()

    def _keepalive_expired(self) -> None:
        self._fail(
            StatusCode.UNAVAILABLE,
            f"keepalive PING to {self.peer} not acknowledged within "
            f"{self._settings.keepalive_timeout}s; connection dropped",
        )

    # --------------------------------------------------------------- teardown

    def _fail(
        self,
        code: StatusCode,
        details: str,
        *,
        h2_error_code: Optional[int] = None,
        close: bool = True,
    ) -> None:
        """Make this the connection's sticky error and end every call on it."""
        if self._error is None:
            self._error = GrpcError(code, details, h2_error_code=h2_error_code)
        error = self._error
        self._keepalive.stop()
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: the dialer reports it
        calls = [*self._streams.values(), *self._queue]
        self._streams.clear()
        self._queue.clear()
        self._blocked.clear()
        for call in calls:
            outcome = call.on_connection_lost(
                error.code(), error.details(), h2_error_code=error.h2_error_code
            )
            if outcome is not None:
                self._end(call, outcome)
        self._deadlines.close()  # every call on it has ended by now
        if close:
            self.close_transport()
        if self.on_idle is not None:
            self.on_idle(self)

    def close(
        self,
        error_code: int = ErrorCodes.NO_ERROR,
        *,
        code: StatusCode = StatusCode.CANCELLED,
        details: str = "connection closed by the client",
    ) -> None:
        """Send GOAWAY and close the transport; calls still open end with ``code``."""
        if self.transport is not None and self._error is None:
            self.close_with_goaway(error_code)
        self._fail(code, details)

    def abandon(self) -> None:
        """Forget the connection without touching its socket (used in a forked child)."""
        self.transport = None
        self._error = GrpcError(StatusCode.UNAVAILABLE, "connection belongs to the parent process")


def _resolve_progress(call: WireCall) -> None:
    progress = call.progress
    call.progress = None
    if progress is not None and not progress.done():
        progress.set_result(None)
