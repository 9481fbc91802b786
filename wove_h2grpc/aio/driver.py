"""One asyncio protocol around an ``H2Connection``, shared by the client and the server.

It feeds received bytes to h2, dispatches h2's events through one ``{EventType: handler}``
table the subclass provides, writes through one ``flush()`` (coalesced to one write per
event-loop turn with ``flush_soon()``), tracks the transport's backpressure, and closes
with GOAWAY. It decides nothing about calls: the client connection and the server
connection do that through the call state machines of ``protocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
import time
from typing import Any, Callable, Dict, Optional

import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes

from ._h2compat import (
    APPLIED,
    header_block_problem,
    pending_frame_problem,
    pending_input,
    take_output,
)

__all__ = ["H2Driver"]

logger = logging.getLogger(__name__)

# asyncio's TLS transports were rewritten in 3.11; the older ones need the abort below.
_OLD_SSLPROTO = sys.version_info < (3, 11)

# A closing transport whose peer does not read what is left is aborted after this long.
CLOSE_ABORT_DELAY = 5.0

# Frames h2 answers by itself (PING and SETTINGS, each with an ACK) that a peer may send while
# our writes are blocked, before the connection is dropped: grpcio's default limit of pending
# induced frames (GRPC_ARG_HTTP2_MAX_PENDING_INDUCED_FRAMES) and Go's maxQueuedControlFrames.
MAX_ANSWERS_WHILE_BLOCKED = 10_000
_ANSWERED_EVENTS = (h2.events.PingReceived, h2.events.RemoteSettingsChanged)
# The output comes as parts (a large DATA payload written as it is) where that patch applies.
_OUTPUT_PARTS = "output_parts" in APPLIED


class H2Driver(asyncio.BufferedProtocol):
    """The HTTP/2 connection machinery both sides share; subclasses add the call logic.

    Subclass hooks: ``handlers()`` (the dispatch table), ``on_connected()``,
    ``on_broken(exc, not_http2)``, ``on_writable()`` and ``on_lost(exc)``.
    """

    # Stop reading while our writes are blocked (server: frames h2 answers by itself, such
    # as PING and SETTINGS ACKs, cannot then pile up for a peer that does not read).
    pause_reading_when_blocked = False
    # The socket is read into one buffer of this size, kept for the connection's life: a
    # plain Protocol gets a fresh bytes object of asyncio's 256 KiB read size per read,
    # which glibc may serve with mmap/mremap/munmap, three system calls per read.
    receive_buffer_size = 64 * 1024
    # At most this many frames go to h2 per event-loop turn (a HEADERS frame counts as
    # ``headers_weight``); the rest of a read waits for the next turn with reading paused,
    # so that a peer flooding small frames (resets, PINGs, SETTINGS) delays the loop's
    # other connections by one slice at a time.
    # Bulk DATA is never cut: a 64 KiB read of 16 KiB frames holds four.
    max_frames_per_turn = 256
    # What a HEADERS frame counts as against max_frames_per_turn. The server sets more: a
    # request's HEADERS starts a call, whose handler then runs in the next turn.
    headers_weight = 1

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: h2.connection.H2Connection) -> None:
        self.loop = loop
        self.h2 = conn
        self.transport: Optional[asyncio.Transport] = None
        self.peer = "unknown"
        self.write_paused = False
        self.answers_while_blocked = 0  # ACKs owed since our writes blocked
        self.closing = False  # no more frames are read or written for calls
        # While True, the peer's first frame must be SETTINGS (RFC 9113 section 3.4): the
        # client sets it until the server's SETTINGS arrive.
        self.settings_first = False
        self.last_read = time.monotonic()  # when bytes last arrived (keepalive reads it)
        self.closed: asyncio.Future[None] = loop.create_future()
        self._flush_scheduled = False
        self.unflushed = 0  # DATA bytes queued in h2 since the last flush (senders read it)
        self._abort_handle: Optional[asyncio.TimerHandle] = None
        self._receive_view = memoryview(bytearray(self.receive_buffer_size))
        self._small_read = 9 * self.max_frames_per_turn  # cannot hold more frames than that
        self._backlog: Optional[bytes] = None  # the rest of a read, for the next turn
        self._dispatch: Dict[type, Callable[[Any], None]] = self.handlers()

    # ------------------------------------------------------------------ hooks

    def handlers(self) -> Dict[type, Callable[[Any], None]]:
        """The h2 event types this side handles, each with its handler."""
        return {}

    def on_connected(self) -> None:
        """The transport is up (the preface is for the subclass to send)."""

    def on_broken(self, exc: Exception, not_http2: bool) -> None:
        """The peer broke HTTP/2 (or we failed handling it): a GOAWAY is out; end everything.

        ``not_http2``: the peer's first frame was not SETTINGS, so it does not speak HTTP/2.
        """

    def on_writable(self) -> None:
        """The transport drained below its low-water mark: blocked bodies may go on."""

    def on_lost(self, exc: Optional[Exception]) -> None:
        """The transport is gone; everything still open must end now."""

    # --------------------------------------------------------- asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.on_connected()

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where asyncio reads the socket into (BufferedProtocol): the connection's buffer."""
        return self._receive_view

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` arrived in the buffer; h2 copies what it keeps, so the buffer is free
        again when this returns."""
        self.data_received(self._receive_view[:nbytes])

    def data_received(self, data: Any) -> None:
        """Bytes (or a view of them) from the peer: up to ``max_frames_per_turn`` frames to
        h2 now, the rest in a later turn."""
        if self.closing:
            return
        if self._backlog is not None:
            # Reading is paused, yet a TLS transport may still hand over what it decrypted.
            self._backlog += bytes(data)
            return
        cut = self._frame_cut(data)
        if cut is not None:
            self._backlog = bytes(data[cut:])
            data = data[:cut]
            self._pause_for_backlog()
        self._receive(data)

    def _frame_cut(self, data: Any) -> Optional[int]:
        """Where in ``data`` the frame after the first ``max_frames_per_turn`` starts, or
        None when it holds no more (a read of fewer bytes than that many frame headers
        never does). Where the first frame starts comes from what h2 holds unparsed."""
        size = len(data)
        if size <= self._small_read:
            return None
        state = pending_input(self.h2)
        if state is None:
            return None
        preface, head, got = state
        pos: int = preface
        if not preface and got:
            if got < 9:
                head += bytes(data[: 9 - got])
            if len(head) < 9:
                return None
            pos = 9 + (head[0] << 16 | head[1] << 8 | head[2]) - got
        frames = 0
        limit = self.max_frames_per_turn
        weight = self.headers_weight
        while pos + 9 <= size:
            frames += weight if data[pos + 3] == 0x1 else 1
            pos += 9 + (data[pos] << 16 | data[pos + 1] << 8 | data[pos + 2])
            if frames >= limit and pos < size:
                return pos
        return None

    def _pause_for_backlog(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()
        self.loop.call_soon(self._receive_backlog)

    def _receive_backlog(self) -> None:
        """The next slice of a read that held more than ``max_frames_per_turn`` frames."""
        data, self._backlog = self._backlog, None
        if data is None or self.closing:
            return
        cut = self._frame_cut(data)
        if cut is not None:
            self._backlog = data[cut:]
            data = data[:cut]
            self.loop.call_soon(self._receive_backlog)
        self._receive(data)
        transport = self.transport
        if (
            self._backlog is None
            and transport is not None
            and not transport.is_closing()
            and not (self.write_paused and self.pause_reading_when_blocked)
        ):
            transport.resume_reading()

    def _receive(self, data: Any) -> None:
        """Bytes (or a view of them) from the peer: to h2, then its events to the handlers."""
        if self.closing:
            return
        self.last_read = time.monotonic()
        h2c = self.h2
        not_http2 = False
        try:
            events = h2c.receive_data(data)
            # h2 checks a frame's length only once its whole body is buffered; refuse an
            # oversized frame from its 9-byte header (RFC 9113 section 4.2).
            problem = pending_frame_problem(h2c, first=False)
            if not problem and self.settings_first:
                problem = pending_frame_problem(h2c, first=True)
                not_http2 = bool(problem)  # RFC 9113 section 3.4: not SETTINGS first
            if problem:
                code = ErrorCodes.PROTOCOL_ERROR if not_http2 else ErrorCodes.FRAME_SIZE_ERROR
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    h2c.close_connection(code)
                raise h2.exceptions.FrameTooLargeError(problem)
            problem = header_block_problem(h2c)
            if problem:
                # Its bytes would be held for a block we must refuse: GOAWAY ENHANCE_YOUR_CALM,
                # as h2 answers a decoded header list over the limit.
                raise h2.exceptions.DenialOfServiceError(problem)
        except h2.exceptions.ProtocolError as exc:
            self._broken(exc, not_http2=not_http2)
            return
        dispatch = self._dispatch
        try:
            for event in events:
                handler = dispatch.get(type(event))
                if handler is not None:
                    handler(event)
                if self.closing:
                    return
        except h2.exceptions.ProtocolError as exc:
            self._broken(exc, not_http2=False)
            return
        except Exception as exc:
            # A bug of ours must cost this connection only, and be visible.
            logger.exception("internal error on the connection with %s; closing it", self.peer)
            self._broken(exc, not_http2=False, code=ErrorCodes.INTERNAL_ERROR)
            return
        if self.write_paused and self._answer_flood(events):
            return
        self.flush()

    def _answer_flood(self, events: Any) -> bool:
        """Count the ACKs ``events`` make h2 owe while our writes are blocked; True when the
        connection was dropped for it.

        A peer that sends PINGs or SETTINGS without end and reads nothing makes every ACK
        wait in our write buffer (RFC 9113 section 10.5; CVE-2019-9512 and -9515). A side
        that keeps reading while blocked (the client: responses must keep flowing while a
        large request waits) drops the connection with GOAWAY ENHANCE_YOUR_CALM once
        ``MAX_ANSWERS_WHILE_BLOCKED`` are owed; the count restarts when the transport drains.
        """
        count = self.answers_while_blocked
        for event in events:
            if type(event) in _ANSWERED_EVENTS:
                count += 1
        self.answers_while_blocked = count
        if count <= MAX_ANSWERS_WHILE_BLOCKED:
            return False
        self._broken(
            h2.exceptions.DenialOfServiceError(
                f"{count} PING/SETTINGS frames to answer while {self.peer} reads nothing"
            ),
            not_http2=False,
        )
        return True

    def _broken(self, exc: Exception, *, not_http2: bool, code: Optional[int] = None) -> None:
        """The connection cannot go on: GOAWAY with the error's code, then the hook."""
        if isinstance(exc, h2.exceptions.ProtocolError):
            logger.info("HTTP/2 protocol error from %s: %s", self.peer, exc)
        h2c = self.h2
        if h2c.state_machine.state is not h2.connection.ConnectionState.CLOSED:
            # h2 raises an invalid preface before it queues a GOAWAY; send one ourselves.
            code = code or getattr(exc, "error_code", None) or ErrorCodes.PROTOCOL_ERROR
            with contextlib.suppress(h2.exceptions.ProtocolError):
                h2c.close_connection(error_code=code)
        self.flush()
        self.on_broken(exc, not_http2)

    def eof_received(self) -> Optional[bool]:
        return False  # close the transport; connection_lost ends what is left

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.pause_reading_when_blocked and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.answers_while_blocked = 0
        transport = self.transport
        if (
            self.pause_reading_when_blocked
            and self._backlog is None
            and transport is not None
            and not transport.is_closing()
        ):
            transport.resume_reading()
        if not self.closing:
            self.on_writable()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closing = True
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        try:
            self.on_lost(exc)
        finally:
            transport = self.transport
            if _OLD_SSLPROTO and transport is not None and not transport.is_closing():
                # Before 3.11 asyncio leaves a TLS transport whose peer went away unclosed
                # (a ResourceWarning when it is collected); aborting it now is a no-op else.
                transport.abort()
            self.transport = None
            if not self.closed.done():
                self.closed.set_result(None)

    # ---------------------------------------------------------------- writing

    def flush(self) -> None:
        """Write whatever h2 has queued, in one write (the only place that writes frames)."""
        self._flush_scheduled = False
        self.unflushed = 0
        transport = self.transport
        if _OUTPUT_PARTS:
            for part in take_output(self.h2):
                if transport is not None:
                    transport.write(part)
            return
        data = self.h2.data_to_send()
        if data and transport is not None:
            # A closing transport still sends what it buffered (our GOAWAY included);
            # after connection_lost there is no transport.
            transport.write(data)

    def flush_soon(self) -> None:
        """Coalesce writes: whatever h2 has queued goes out once, at the end of this turn."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def send_ping(self, payload: bytes = b"wovekalv") -> bool:
        """PING the peer now (RFC 9113 section 6.7); False if h2 refused (connection closed)."""
        try:
            self.h2.ping(payload)
        except h2.exceptions.H2Error:
            return False
        self.flush()
        return True

    def reset_stream(self, stream_id: int, code: int) -> None:
        """RST_STREAM; nothing when the stream is already closed (the peer reset it first)."""
        with contextlib.suppress(h2.exceptions.H2Error):
            self.h2.reset_stream(stream_id, code)

    def send_draining_goaway(self, last_stream_id: int) -> None:
        """GOAWAY NO_ERROR that keeps h2's state machine open for the streams still finishing.

        Written by hand, not with h2's ``close_connection()``, which closes its state machine
        while in-flight calls still have to send their responses (RFC 9113 section 6.8): a
        9-byte frame header (length 8, type 0x7, no flags, stream 0), the last stream id
        we will process and the error code.
        """
        self.flush()
        frame = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(
            ">II", last_stream_id & 0x7FFFFFFF, int(ErrorCodes.NO_ERROR)
        )
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)

    def close_with_goaway(
        self, error_code: int = ErrorCodes.NO_ERROR, *, debug_data: Optional[bytes] = None
    ) -> None:
        """GOAWAY (h2's, with ``debug_data`` if given), then close the transport once it is
        written."""
        if self.transport is not None and self.h2.state_machine.state is not (
            h2.connection.ConnectionState.CLOSED
        ):
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.close_connection(error_code, additional_data=debug_data)
        self.close_transport()

    def close_transport(self) -> None:
        """Close after pending writes; abort if the peer does not read them in time."""
        self.closing = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.flush()
        transport.close()
        if self._abort_handle is None:
            self._abort_handle = self.loop.call_later(CLOSE_ABORT_DELAY, transport.abort)
