"""One server HTTP/2 connection: request streams in, each a ``protocol.server_call.ServerCall``.

Built on the shared ``H2Driver``. A stream's headers go through ``open_call``: a stream no
handler will see is answered at once; a call is handed to the ``on_call`` callback the
server gave (which starts its handler task): at its headers for a method that takes a
request stream, once its one request message is complete otherwise. Every call ends
through ``finish`` (a status to send) or ``_end`` (the stream is gone), which alone release
its deadline timer, wake its writer and reader and cancel its handler task.

Flow control is backpressure in both directions: a response message waits for the client's
window (``send_message``), and a request stream's window is handed back only as the handler
reads (``read_request``), so a handler that stops reading stops its client after one window.
A response also waits while the transport is paused (the client reads the socket slowly),
and a sender hands h2's output to the transport every ``_WRITE_SLICE`` bytes, so the
transport's buffer stays near its high-water mark whatever the windows allow.

Memory: every connection counts what it holds for its calls in the server's ``MemoryBudget``
(``budget.py``): request bytes not yet taken by the handler, response bytes not yet
written (waiting on a window or a paused transport) and a paused transport's buffer. Over
the budget, new streams are refused and the connections holding the most are shed
(``shed``: RESOURCE_EXHAUSTED to each call, GOAWAY ENHANCE_YOUR_CALM).

Robustness rules, each bounded per connection so that a bad client costs only its own
connection: a handshake timeout (TLS + client preface), an idle timeout (no calls in
flight), a RST_STREAM flood limit, PING and WINDOW_UPDATE flood limits and a limit on
frames that carry no work (SETTINGS, PRIORITY, empty DATA; each GOAWAY ENHANCE_YOUR_CALM),
garbage bytes (GOAWAY PROTOCOL_ERROR), and ``max_concurrent_streams`` enforced with
REFUSED_STREAM (which clients retry) instead of a connection error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, Callable, Dict, List, Optional, cast

import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from ..protocol.call import Headers
from ..protocol.kinds import RpcKind
from ..protocol.server_call import Finish, ServerCall, open_call
from ..protocol.status import StatusCode
from ._h2compat import make_server_h2_connection
from .budget import MemoryBudget
from .deadlines import Deadlines
from .driver import H2Driver
from .options import ServerOptions

__all__ = ["ServedCall", "ServerConnection"]

logger = logging.getLogger(__name__)

# Framing we advertise (RFC 9113 section 6.5.2); the windows are ServerOptions. A unary
# request's data is acknowledged as soon as it arrives (the per-call buffer is bounded by
# max_receive_message_length); a request stream's only as the handler reads it.
# h2 buffers up to 64 CONTINUATION frames of this size before decoding a header block (4 MiB);
# the driver refuses a block sooner, past 4 x max_header_list_size (header_block_problem).
MAX_FRAME_SIZE = 1 << 16
_RESET_WINDOW = 10.0  # seconds over which client RST_STREAMs are counted
# PING flood policy, after grpcio's "ping strikes": a PING that arrives less than
# _PING_MIN_INTERVAL after the previous one, with no response HEADERS or DATA sent by us in
# between, is a strike; more than _MAX_PING_STRIKES strikes get GOAWAY ENHANCE_YOUR_CALM
# "too_many_pings". Keepalive never strikes: our Channel sends at most two PINGs without
# data (gRFC A8) and grpcio / grpc-js clients ping at most every 10 s by default; only a
# client that sends more than ten PINGs, each within a second of the last, while we sent
# nothing, does.
_PING_MIN_INTERVAL = 1.0
_MAX_PING_STRIKES = 10
# WINDOW_UPDATE flood policy: a client grants window for data we sent it, so more than
# _MAX_WINDOW_STRIKES WINDOW_UPDATEs with no response HEADERS or DATA sent by us in between
# get GOAWAY ENHANCE_YOUR_CALM "too_many_window_updates" (a real client sends one or two
# per DATA frame it reads, and a few at start-up).
_MAX_WINDOW_STRIKES = 1000
# Frames that make the server work (SETTINGS forces an ACK) but carry no call's work:
# SETTINGS after the first, PRIORITY, empty DATA without END_STREAM. More than
# _MAX_IDLE_FRAMES of them per _IDLE_FRAME_WINDOW seconds get GOAWAY ENHANCE_YOUR_CALM;
# a real client sends a handful per connection.
_IDLE_FRAME_WINDOW = 10.0
_MAX_IDLE_FRAMES = 1000
# A request stream's window is handed back message by message while the handler lags
# behind, and all at once when no more than this is waiting to be read.
_READ_LOW_WATER = 64 * 1024
# DATA goes to the transport in slices of this size (a connection's senders together
# flush once this much is queued in h2, and no frame is larger), each handed over only
# while the transport is not paused: a client that reads slowly holds at most about one
# slice in the transport's buffer instead of every response the client's windows allow.
_WRITE_SLICE = 256 * 1024
# The details of the status a call gets when its connection is shed for the memory budget.
_BUDGET_DETAILS = "server memory budget exceeded"
# Calls a connection shed for the memory budget ends per loop turn.
_SHED_PER_TURN = 32


class ServedCall(ServerCall):
    """A ServerCall with what serving it on asyncio needs: handler task, timer, the writer's
    and the reader's wake-ups, the request bytes whose window is held back, and the bytes
    it is charged for in the server's memory budget."""

    __slots__ = (
        "cancelled",
        "charged",
        "listed",
        "out_charged",
        "reader",
        "task",
        "timer",
        "unacked",
        "waiter",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task: Optional[asyncio.Task[None]] = None
        self.timer: Optional[asyncio.TimerHandle] = None  # a deadline out of order (deadlines.py)
        self.listed = False  # the deadline is watched through the connection's list
        self.waiter: Optional[asyncio.Future[None]] = None
        self.reader: Optional[asyncio.Future[None]] = None
        self.unacked = 0  # request bytes received but not acknowledged (a lagging reader)
        self.cancelled = False  # client reset, deadline passed, or the server stopped it
        self.charged = 0  # request bytes held for the handler (budget)
        self.out_charged = 0  # response bytes not yet handed to h2 (budget)


def format_peer(transport: asyncio.BaseTransport) -> str:
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


class ServerConnection(H2Driver):
    """One client connection of a server: h2 events in, one coalesced write per loop turn out.

    ``kind_of(path)`` is the kind of the method a handler serves there (None: unknown);
    ``on_call(conn, call)`` starts a call's handler; ``on_open(conn)`` and ``on_closed(conn)``
    are told when the connection starts and when it is gone. ``budget`` is the server's
    memory budget, shared by all its connections; ``held`` is this connection's share.
    """

    pause_reading_when_blocked = True
    # A request's HEADERS starts a call: at most 16 new calls per loop turn (see H2Driver).
    headers_weight = 16

    def __init__(
        self,
        options: ServerOptions,
        *,
        budget: MemoryBudget,
        tls: bool,
        kind_of: Callable[[str], Optional[RpcKind]],
        on_call: Callable[[ServerConnection, ServedCall], None],
        on_open: Callable[[ServerConnection], None],
        on_closed: Callable[[ServerConnection], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(
            loop,
            make_server_h2_connection(
                max_concurrent_streams=options.max_concurrent_streams,
                max_header_list_size=options.max_header_list_size,
                initial_window_size=options.initial_window_size,
                max_frame_size=MAX_FRAME_SIZE,
                connection_window_size=options.connection_window_size,
            ),
        )
        self.options = options
        self.tls = tls
        self._budget = budget
        self.held = 0  # bytes of this connection counted in the budget
        self._transport_charged = 0  # the paused transport's buffer, as counted
        self._kind_of = kind_of
        self._on_call = on_call
        self._on_open = on_open
        self._on_closed = on_closed
        self.calls: Dict[int, ServedCall] = {}
        # The calls' deadlines (from grpc-timeout), under one loop timer (deadlines.py).
        self._deadlines: Deadlines[ServedCall] = Deadlines(loop, self._deadline_expired)
        self._started = False
        self._draining = False  # our GOAWAY is out: no new streams, close when calls end
        self._shedding = False  # shed for the memory budget: its calls are ending (see shed)
        self._peer_goaway = False
        self._handshake_handle: Optional[asyncio.TimerHandle] = None
        self._idle_handle: Optional[asyncio.TimerHandle] = None
        self._idle_since = loop.time()
        self._handshake_done = False
        self._resets = 0
        self._reset_window_start = self._idle_since
        self._ping_strikes = 0
        self._window_strikes = 0
        self._last_ping = -_PING_MIN_INTERVAL
        self._idle_frames = 0
        self._idle_frame_window_start = self._idle_since

    def handlers(self) -> Dict[type, Callable[[Any], None]]:
        return {
            h2.events.RequestReceived: self._on_request,
            h2.events.DataReceived: self._on_data,
            h2.events.StreamEnded: self._on_stream_ended,
            h2.events.StreamReset: self._on_stream_reset,
            h2.events.WindowUpdated: self._on_window_updated,
            h2.events.RemoteSettingsChanged: self._on_settings,
            h2.events.PingReceived: self._on_ping,
            h2.events.PriorityUpdated: self._on_idle_frame,
            h2.events.ConnectionTerminated: self._on_terminated,
        }

    # -- transport callbacks -------------------------------------------------------------

    def on_connected(self) -> None:
        transport = cast(asyncio.Transport, self.transport)
        self.peer = format_peer(transport)
        self._on_open(self)
        self._budget.join(self)
        if self.tls:
            ssl_object = transport.get_extra_info("ssl_object")
            protocol = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if protocol != "h2":
                # gRPC over TLS requires ALPN h2 (PROTOCOL-HTTP2 "Connection").
                logger.info(
                    "closing TLS connection from %s: ALPN %r is not h2", self.peer, protocol
                )
                self.closing = True
                transport.abort()
                return
        self._started = True
        if self.options.handshake_timeout is not None:
            self._handshake_handle = self.loop.call_later(
                self.options.handshake_timeout, self._handshake_expired
            )
        self.flush()

    def data_received(self, data: Any) -> None:
        if self._started:
            super().data_received(data)

    def eof_received(self) -> Optional[bool]:
        # The client will send nothing more: nothing can complete, so close (no half-open).
        self._cancel_all()
        return False

    def on_writable(self) -> None:
        self._wake_all()

    def pause_writing(self) -> None:
        """The transport's buffer passed its high-water mark: count it in the budget (no
        more DATA is queued until it resumes, so it stays about this size)."""
        super().pause_writing()
        transport = self.transport
        if transport is not None:
            size = transport.get_write_buffer_size()
            self._charge(size - self._transport_charged)
            self._transport_charged = size

    def resume_writing(self) -> None:
        if self._transport_charged:
            self._charge(-self._transport_charged)
            self._transport_charged = 0
        super().resume_writing()

    def on_broken(self, exc: Exception, not_http2: bool) -> None:
        self._cancel_all()
        self.close_transport()

    def on_lost(self, exc: Optional[Exception]) -> None:
        self._cancel_all()
        self._deadlines.close()
        for handle in (self._handshake_handle, self._idle_handle):
            if handle is not None:
                handle.cancel()
        self._handshake_handle = self._idle_handle = None
        # The transport's buffer is gone with it; every call's bytes went with _cancel_all.
        self._transport_charged = 0
        rest = self.held
        if rest:
            self._charge(-rest)
            self._budget.released(rest, self.loop)
        self._budget.leave(self)
        self._on_closed(self)

    def close_with_goaway(
        self,
        error_code: int = ErrorCodes.NO_ERROR,
        reason: str = "",
        *,
        debug_data: Optional[bytes] = None,
    ) -> None:
        """Send GOAWAY with ``error_code`` (and ``debug_data``), cancel every call and close
        the connection."""
        if self.closing:
            return
        level = logging.DEBUG if error_code == ErrorCodes.NO_ERROR else logging.WARNING
        logger.log(
            level,
            "closing connection from %s: %s (GOAWAY %s)",
            self.peer,
            reason,
            ErrorCodes(error_code).name,
        )
        self._cancel_all()
        super().close_with_goaway(error_code, debug_data=debug_data)

    @property
    def going_away(self) -> bool:
        """Shed for the memory budget or closing: shedding it (again) would free nothing."""
        return self.closing or self._shedding

    def shed(self) -> None:
        """Over the server's memory budget and holding the most: every call ends with
        RESOURCE_EXHAUSTED (its handler cancelled, its bytes released from the count at
        once), then GOAWAY ENHANCE_YOUR_CALM with debug data ``memory_budget`` closes the
        connection. The calls end ``_SHED_PER_TURN`` per loop turn, new streams refused
        meanwhile: ending hundreds of calls, and freeing what their handlers held, in one
        turn would stall every other connection of the loop."""
        if self.closing or self._shedding:
            return
        self._shedding = True
        held, budget = self.held, self._budget
        total = budget.total
        calls = list(self.calls.values())
        for call in calls:
            if call.charged or call.out_charged:
                self._charge(-call.charged - call.out_charged)
                call.charged = call.out_charged = 0
        budget.released(held, self.loop)
        reason = (
            f"over the server memory budget: it held {held} of the {total} bytes "
            f"buffered server-wide (max_buffered_bytes={budget.limit})"
        )
        self._shed_some(calls, reason)

    def _shed_some(self, calls: List[ServedCall], reason: str) -> None:
        """End the next ``_SHED_PER_TURN`` of ``calls`` with RESOURCE_EXHAUSTED, the rest in
        later turns; after the last, GOAWAY and close."""
        if self.closing:
            return  # the connection went away meanwhile: its calls ended with it
        for call in calls[:_SHED_PER_TURN]:
            if self.calls.get(call.stream_id) is not call:
                continue  # ended meanwhile
            finish = call.finish(StatusCode.RESOURCE_EXHAUSTED, _BUDGET_DETAILS)
            self._end(call, cancelled=True)
            if finish is not None:
                self._write_finish(call.stream_id, finish)
        if len(calls) > _SHED_PER_TURN:
            self.flush_soon()
            self.loop.call_soon(self._shed_some, calls[_SHED_PER_TURN:], reason)
            return
        self.close_with_goaway(ErrorCodes.ENHANCE_YOUR_CALM, reason, debug_data=b"memory_budget")

    def _charge(self, delta: int) -> None:
        """Add ``delta`` bytes (negative: released) to this connection's and the server's
        count; over the budget, the heaviest connections are shed at the next loop turn."""
        self.held += delta
        budget = self._budget
        budget.total += delta
        if delta > 0 and budget.total > budget.ceiling:
            budget.exceeded(self.loop)

    def recount_request(self, call: ServedCall) -> None:
        """Count what ``call``'s request holds now: queued messages and the one in progress
        (the handler side calls it after taking a request of a call that is charged)."""
        held = call.buffered + call.decoder.pending
        delta = held - call.charged
        call.charged = held
        # _charge, inlined.
        self.held += delta
        budget = self._budget
        budget.total += delta
        if delta > 0 and budget.total > budget.ceiling:
            budget.exceeded(self.loop)

    # -- timers --------------------------------------------------------------------------

    def _handshake_expired(self) -> None:
        self._handshake_handle = None
        if not self._handshake_done and not self.closing:
            logger.info(
                "closing connection from %s: no HTTP/2 preface within %ss",
                self.peer,
                self.options.handshake_timeout,
            )
            self.closing = True
            if self.transport is not None:
                self.transport.abort()

    def _arm_idle(self) -> None:
        timeout = self.options.idle_timeout
        if timeout is None or self.closing:
            return
        self._idle_since = self.loop.time()
        if self._idle_handle is None:
            self._idle_handle = self.loop.call_later(timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_handle = None
        timeout = self.options.idle_timeout
        if self.calls or self.closing or timeout is None:
            return  # re-armed when the last call ends
        elapsed = self.loop.time() - self._idle_since
        if elapsed >= timeout - 0.001:
            self.close_with_goaway(ErrorCodes.NO_ERROR, f"idle for {timeout}s")
        else:
            self._idle_handle = self.loop.call_later(timeout - elapsed, self._idle_check)

    # -- h2 events -----------------------------------------------------------------------

    def _on_ping(self, event: Any) -> None:
        """A PING from the client (h2 has queued its ACK): count it against the flood policy."""
        now = self.loop.time()
        if now - self._last_ping < _PING_MIN_INTERVAL:
            self._ping_strikes += 1
            if self._ping_strikes > _MAX_PING_STRIKES:
                self.close_with_goaway(
                    ErrorCodes.ENHANCE_YOUR_CALM,
                    f"more than {_MAX_PING_STRIKES} PINGs less than {_PING_MIN_INTERVAL}s apart "
                    "with nothing sent between",
                    debug_data=b"too_many_pings",
                )
                return
        self._last_ping = now

    def _on_idle_frame(self, event: Any = None) -> None:
        """A frame that costs us work but carries none for a call: count it per window."""
        now = self.loop.time()
        if now - self._idle_frame_window_start > _IDLE_FRAME_WINDOW:
            self._idle_frame_window_start = now
            self._idle_frames = 0
        self._idle_frames += 1
        if self._idle_frames > _MAX_IDLE_FRAMES:
            self.close_with_goaway(
                ErrorCodes.ENHANCE_YOUR_CALM,
                f"more than {_MAX_IDLE_FRAMES} SETTINGS, PRIORITY or empty DATA frames "
                f"in {_IDLE_FRAME_WINDOW:.0f}s",
                debug_data=b"too_many_control_frames",
            )

    def _on_settings(self, event: Any) -> None:
        if self._handshake_done:
            self._on_idle_frame()
            if self.closing:
                return
        else:
            # The client preface and its SETTINGS arrived: the handshake is complete.
            self._handshake_done = True
            if self._handshake_handle is not None:
                self._handshake_handle.cancel()
                self._handshake_handle = None
            self._arm_idle()
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._wake_all()

    def _on_request(self, event: Any) -> None:
        stream_id = event.stream_id
        self._idle_since = self.loop.time()  # any request is activity, even a rejected one
        budget = self._budget
        if (
            self._draining
            or self._shedding
            or self._peer_goaway
            or len(self.calls) >= (self.options.max_concurrent_streams)
            or budget.total > budget.ceiling
        ):
            # Above our GOAWAY's last stream id, or RFC 9113 section 5.1.2: refuse the
            # excess stream, not the connection; it was never processed, so clients retry.
            # Over the memory budget, too: the stream may be served elsewhere (or later).
            self.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        headers: Headers = event.headers
        opened = open_call(
            stream_id,
            headers,
            event.stream_ended is not None,
            now=self.loop.time(),
            kind_of=self._kind_of,
            max_receive=self.options.max_receive_message_length,
            call_type=ServedCall,
        )
        if isinstance(opened, Finish):
            self._write_finish(stream_id, opened)
            return
        call = opened
        self.calls[stream_id] = call
        if call.deadline is not None:
            self._deadlines.watch(call)
        if not call.single_request:
            # A request stream: the handler runs from the headers on and reads as it goes.
            self._on_call(self, call)

    def _on_data(self, event: Any) -> None:
        size = event.flow_controlled_length
        if not size and event.stream_ended is None:
            self._on_idle_frame()  # empty DATA that does not even end the stream
            if self.closing:
                return
        call = self.calls.get(event.stream_id)
        if call is None or call.single_request:
            # Hand the window back at once: memory per call is bounded by the message limit.
            if size:
                self.h2.acknowledge_received_data(size, event.stream_id)
            if call is not None:
                finish = call.on_data(event.data)
                if finish is not None:
                    self._deliver(call, finish)
                elif (
                    event.stream_ended is None
                    and call.buffered + call.decoder.pending != call.charged
                ):
                    # Counted while the request is still open. A request that ends with
                    # this DATA (a whole unary request in one frame) goes to its handler
                    # at once: not counted at all, so the common call pays nothing here.
                    self.recount_request(call)
            return
        finish = call.on_data(event.data)
        if finish is not None:
            call.unacked += size  # handed back by _end
            self._deliver(call, finish)
            return
        if call.buffered + call.decoder.pending != call.charged:
            self.recount_request(call)
        # A request stream: its window reopens only while the handler keeps up reading.
        if call.unacked or call.buffered > _READ_LOW_WATER:
            call.unacked += size
        elif size:
            self.h2.acknowledge_received_data(size, event.stream_id)
        _wake_reader(call)

    def _on_stream_ended(self, event: Any) -> None:
        call = self.calls.get(event.stream_id)
        if call is None:
            return
        finish = call.on_end()
        if finish is not None:
            self._deliver(call, finish)
        elif call.single_request:
            if not call.done:
                self._on_call(self, call)
        else:
            _wake_reader(call)

    def _on_stream_reset(self, event: Any) -> None:
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
        call = self.calls.get(event.stream_id)
        if call is not None:
            self._end(call, cancelled=True)

    def _on_window_updated(self, event: Any) -> None:
        self._window_strikes += 1
        if self._window_strikes > _MAX_WINDOW_STRIKES:
            self.close_with_goaway(
                ErrorCodes.ENHANCE_YOUR_CALM,
                f"more than {_MAX_WINDOW_STRIKES} WINDOW_UPDATEs with nothing sent between",
                debug_data=b"too_many_window_updates",
            )
            return
        if event.stream_id == 0:
            self._wake_all()
        else:
            call = self.calls.get(event.stream_id)
            if call is not None:
                _wake(call)

    def _on_terminated(self, event: Any) -> None:
        if event.error_code != ErrorCodes.NO_ERROR or not self.calls:
            logger.debug("client %s sent GOAWAY %s", self.peer, event.error_code)
            self._cancel_all()
            self.close_transport()
            return
        # A graceful GOAWAY from the client (RFC 9113 section 6.8): calls already started
        # may still complete (GrpcH2Connection keeps h2's state machine open for that); the
        # connection closes after the last call.
        self._peer_goaway = True

    # -- calls: input --------------------------------------------------------------------

    async def read_request(self, call: ServedCall) -> Optional[bytes]:
        """The next message of ``call``'s request stream, waiting for it; None at its end
        (or once the call has ended). Reading hands the message's window back to the client."""
        while True:
            message = call.take()
            if message is not None:
                if call.charged:
                    self.recount_request(call)
                if call.unacked:
                    self._consumed(call, len(message) + 5)
                return message
            if call.request_complete:
                return None
            waiter = self.loop.create_future()
            call.reader = waiter
            try:
                await waiter
            finally:
                call.reader = None

    def _consumed(self, call: ServedCall, size: int) -> None:
        """Give back the window of ``size`` bytes the handler read (all of the held-back
        window once it has caught up)."""
        unacked = call.unacked
        if call.buffered > _READ_LOW_WATER:
            unacked = min(unacked, size)
        call.unacked -= unacked
        if not self.closing:
            self.h2.acknowledge_received_data(unacked, call.stream_id)
            self.flush_soon()

    # -- calls: output -------------------------------------------------------------------

    def send_headers(self, call: ServedCall) -> None:
        """Send the response HEADERS (with any initial metadata) if not sent yet."""
        headers = call.response_headers()
        if headers is None:
            return
        try:
            self.h2.send_headers(call.stream_id, headers)
        except h2.exceptions.ProtocolError:
            self._end(call, cancelled=True)  # the stream is gone (reset by the client)
            return
        # We sent work: the client's PINGs and WINDOW_UPDATEs since then are fair.
        self._ping_strikes = self._window_strikes = 0
        self.flush_soon()

    async def send_message(self, call: ServedCall, payload: bytes) -> bool:
        """Send one response message, waiting on flow-control windows and the socket.

        Returns False when the call ended meanwhile (nothing more may be sent for it).
        While it waits, what is left of the message counts in the memory budget.
        """
        prefix, body = call.encode_response(payload)
        self.send_headers(call)
        message = memoryview(prefix + body) if len(body) < 65536 else None
        parts = (message,) if message is not None else (memoryview(prefix), memoryview(body))
        conn = self.h2
        stream_id = call.stream_id
        for part in parts:
            offset = 0
            total = len(part)
            while True:
                if call.done:
                    return False
                if not self.write_paused:
                    # A peer may allow 16 MiB frames: cap them, so a flush is never more
                    # than two slices past the transport's high-water mark.
                    frame_size = conn.max_outbound_frame_size
                    if frame_size > _WRITE_SLICE:
                        frame_size = _WRITE_SLICE
                    try:
                        while offset < total:
                            window = conn.local_flow_control_window(stream_id)
                            if window <= 0:
                                break
                            size = min(window, frame_size, total - offset)
                            conn.send_data(stream_id, part[offset : offset + size])
                            offset += size
                            self._ping_strikes = self._window_strikes = 0
                            self.unflushed += size
                            if self.unflushed >= _WRITE_SLICE:
                                # Hand it to the socket now: a reader that does not keep
                                # up pauses our writing, which holds the rest back.
                                self.flush()
                                if self.write_paused:
                                    break
                    except h2.exceptions.ProtocolError:
                        self._end(call, cancelled=True)  # the stream closed underneath us
                        return False
                if offset >= total:
                    break
                # Blocked on a window (or on the socket): let the data out, wait for
                # WINDOW_UPDATE or the socket to drain. Meanwhile the rest of the message
                # is held for a client that does not read: it counts in the budget.
                unsent = total - offset
                if part is not parts[-1]:
                    unsent += len(parts[-1])
                if unsent != call.out_charged:
                    self._charge(unsent - call.out_charged)
                    call.out_charged = unsent
                self.flush_soon()
                waiter = self.loop.create_future()
                call.waiter = waiter
                try:
                    await waiter
                except BaseException:
                    # Not sent after all (the handler stopped waiting): not held by us.
                    if call.out_charged:
                        self._charge(-call.out_charged)
                        call.out_charged = 0
                    raise
                finally:
                    call.waiter = None
        if call.out_charged:
            self._charge(-call.out_charged)
            call.out_charged = 0
        self.flush_soon()
        return not call.done

    def finish(self, call: ServedCall, code: StatusCode, details: str = "") -> None:
        """End ``call`` with ``code`` (Trailers-Only if nothing went out yet); once. Called
        by the call's handler side, which therefore is not cancelled for it."""
        self._deliver(call, call.finish(code, details), by_handler=True)

    def _deliver(
        self, call: ServedCall, finish: Optional[Finish], by_handler: bool = False
    ) -> None:
        if finish is None:
            return
        self._end(call, cancelled=False, by_handler=by_handler)
        if not self.closing:
            self._write_finish(call.stream_id, finish)
        if finish.code is StatusCode.OK and self._resets:
            # A completed call earns back one reset: only resets far beyond real work (the
            # rapid-reset pattern) reach the limit, not a busy client that cancels some calls.
            self._resets -= 1

    def _write_finish(self, stream_id: int, finish: Finish) -> None:
        """The one place a stream's final status goes on the wire."""
        self._ping_strikes = self._window_strikes = 0
        # The client may have reset the stream meanwhile: then there is nothing to answer.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            if finish.headers is not None:
                self.h2.send_headers(stream_id, finish.headers, end_stream=True)
            if finish.reset is not None:
                # RFC 9113 section 8.1: a complete response before the request ended.
                self.h2.reset_stream(stream_id, finish.reset)
        self.flush_soon()

    # -- calls: the one exit -------------------------------------------------------------

    def _end(self, call: ServedCall, *, cancelled: bool, by_handler: bool = False) -> None:
        """A call is over (status decided, or the stream gone): release what it holds.

        ``cancelled``: the handler must stop (client reset, deadline, connection closing).
        ``by_handler``: the handler's side ended it (its own status), so it runs on.
        """
        if cancelled:
            call.cancelled = True
            call.on_reset()
        if call.listed or call.timer is not None:
            self._deadlines.forget(call)
        if call.waiter is not None:
            _wake(call)
        if call.reader is not None:
            _wake_reader(call)
        if call.charged or call.out_charged:
            # Its queued requests are dropped and its unsent reply will never go out.
            self._charge(-call.charged - call.out_charged)
            call.charged = call.out_charged = 0
        if call.unacked:
            # The connection window the unread requests held: the client may use it again.
            if not self.closing:
                self.h2.acknowledge_received_data(call.unacked, call.stream_id)
                self.flush_soon()
            call.unacked = 0
        task = call.task
        # A call ended by anything but its own handler (client reset, deadline, a bad
        # request message while a request-streaming handler runs, stop) stops that handler.
        if not by_handler and task is not None and not task.done() and task is not _current_task():
            task.cancel()
        if self.calls.pop(call.stream_id, None) is not None and not self.calls:
            if self._draining or self._peer_goaway:
                self.loop.call_soon(self._close_if_drained)
            else:
                self._arm_idle()

    def _deadline_expired(self, call: ServedCall) -> None:
        """``call``'s deadline has come (the deadline list expires it)."""
        if call.done:
            return
        finish = call.finish(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self._end(call, cancelled=True)
        if finish is not None and not self.closing:
            self._write_finish(call.stream_id, finish)

    def _close_if_drained(self) -> None:
        if not self.calls and not self.closing:
            self.close_with_goaway(ErrorCodes.NO_ERROR, "drained")

    def _wake_all(self) -> None:
        for call in self.calls.values():
            _wake(call)

    def _cancel_all(self) -> None:
        """The connection is going away: every call is cancelled, nothing more is sent."""
        held = self.held
        for call in list(self.calls.values()):
            self._end(call, cancelled=True)
        if held != self.held:
            self._budget.released(held - self.held, self.loop)

    def cancel_calls(self) -> None:
        """Server stop after the grace period: reset every call with CANCEL, then close."""
        for call in list(self.calls.values()):
            self._end(call, cancelled=True)
            self.reset_stream(call.stream_id, ErrorCodes.CANCEL)
        self.close_with_goaway(ErrorCodes.NO_ERROR, "server stopped")

    def begin_drain(self) -> None:
        """Server stop: GOAWAY now, finish calls already started, refuse new streams."""
        if self.closing or self._draining:
            return
        if not self._started or not self.calls:
            self.close_with_goaway(ErrorCodes.NO_ERROR, "server stopping")
            return
        self._draining = True
        self.send_draining_goaway(self.h2.highest_inbound_stream_id)


def _wake(call: ServedCall) -> None:
    waiter = call.waiter
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _wake_reader(call: ServedCall) -> None:
    reader = call.reader
    if reader is not None and not reader.done():
        reader.set_result(None)


def _current_task() -> Optional[asyncio.Task[Any]]:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
