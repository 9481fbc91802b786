"""A fault-injection HTTP/2 server for the client's robustness tests.

Raw ``h2`` (server side) on asyncio, in the test process, listening on 127.0.0.1 only.
Each test tells it how to misbehave with a *handler*: an async callable that receives a
:class:`FaultStream` for every request (once the request has ended, or as soon as its
headers arrive with ``handle_on="headers"``) and answers it, or does not, through the
stream's methods (headers, raw DATA, trailers, RST_STREAM, GOAWAY, floods, closing the
socket...). Connection-level misbehaviour (never speaking HTTP/2, never opening flow
control windows, a handshake hook) is set on the server.

Everything the server sees is recorded (``connections``, ``streams``, ``handled``) so a
test can assert what reached the server, e.g. that a call was never processed twice.
This module deliberately does not use ``wove_h2grpc``: it is an independent peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame

logger = logging.getLogger(__name__)

Handler = Callable[["FaultStream"], Awaitable[None]]
ConnectionHook = Callable[["FaultConnection"], Awaitable[None]]
HeaderList = Sequence[Tuple[str, str]]

GRPC_CONTENT_TYPE = "application/grpc"


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    """A 5-byte length-prefixed gRPC message (written here, not with the code under test)."""
    return (b"\x01" if compressed else b"\x00") + len(payload).to_bytes(4, "big") + payload


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """One HPACK "literal header field without indexing, new name", no Huffman (RFC 7541 6.2.2)."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        # int(): str() of an IntEnum is its name before Python 3.11, its value after.
        return str(int(value)).encode("ascii")
    return str(value).encode("utf-8")


class FaultStream:
    """One request stream: what the client sent, and ways to answer (or not)."""

    def __init__(self, conn: FaultConnection, stream_id: int, headers: List[Tuple[bytes, bytes]]):
        self.conn = conn
        self.stream_id = stream_id
        self.raw_headers = headers
        self.headers: Dict[str, str] = {}
        for key, value in headers:
            self.headers.setdefault(key.decode("latin-1"), value.decode("latin-1"))
        self.body = bytearray()
        self.ended = asyncio.Event()
        self.reset_code: Optional[int] = None  # RST_STREAM code the client sent us
        self.reset_received = asyncio.Event()

    @property
    def path(self) -> str:
        return self.headers.get(":path", "")

    @property
    def request(self) -> bytes:
        """The first request message (uncompressed framing assumed)."""
        data = bytes(self.body)
        if len(data) < 5:
            return b""
        return data[5 : 5 + int.from_bytes(data[1:5], "big")]

    @property
    def server(self) -> FaultServer:
        return self.conn.server

    # -- answering ---------------------------------------------------------------

    def send_headers(
        self,
        status: int = 200,
        *,
        content_type: Optional[str] = GRPC_CONTENT_TYPE,
        extra: HeaderList = (),
        end_stream: bool = False,
    ) -> None:
        """Response headers (``content_type=None`` leaves content-type out)."""
        headers: List[Tuple[bytes, bytes]] = [(b":status", _b(status))]
        if content_type is not None:
            headers.append((b"content-type", _b(content_type)))
        headers.extend((_b(k), _b(v)) for k, v in extra)
        self.send_raw_headers(headers, end_stream=end_stream)

    def send_raw_headers(self, headers: List[Tuple[bytes, bytes]], *, end_stream: bool) -> None:
        self.conn.h2.send_headers(self.stream_id, headers, end_stream=end_stream)
        self.conn.flush()

    def send_trailers(
        self, status: Optional[int] = 0, message: Optional[str] = None, extra: HeaderList = ()
    ) -> None:
        """Trailers ending the stream; ``status=None`` leaves grpc-status out."""
        trailers: List[Tuple[bytes, bytes]] = []
        if status is not None:
            trailers.append((b"grpc-status", _b(status)))
        if message is not None:
            trailers.append((b"grpc-message", _b(message)))
        trailers.extend((_b(k), _b(v)) for k, v in extra)
        self.send_raw_headers(trailers, end_stream=True)

    def send_raw_header_block(self, block: bytes, *, frame_size: int = 16384) -> None:
        """Write an HPACK block as HEADERS + CONTINUATION frames straight to the socket.

        Bypasses the server's h2 state (which would refuse or re-encode it): used for
        header blocks no sane server sends, e.g. 1 MiB of one literal header.
        """
        chunks = [block[i : i + frame_size] for i in range(0, len(block), frame_size)] or [b""]
        frames = []
        for i, chunk in enumerate(chunks):
            cls = HeadersFrame if i == 0 else ContinuationFrame
            frame = cls(self.stream_id, chunk)
            if i == len(chunks) - 1:
                frame.flags.add("END_HEADERS")
            frames.append(frame.serialize())
        self.conn.flush()
        self.conn.writer.write(b"".join(frames))

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> bool:
        """Send DATA within the client's flow-control windows; False if the stream died."""
        return await self.conn.send_data(self.stream_id, data, end_stream=end_stream)

    async def send_message(
        self, payload: bytes, *, compressed: bool = False, end_stream: bool = False
    ) -> bool:
        return await self.send_data(grpc_message(payload, compressed), end_stream=end_stream)

    async def respond(
        self,
        payload: bytes = b"",
        *,
        status: int = 0,
        message: Optional[str] = None,
        headers: HeaderList = (),
        trailers: HeaderList = (),
    ) -> None:
        """A well-formed gRPC answer: headers, one message (if status OK), trailers."""
        self.send_headers(extra=headers)
        if status == 0 and not await self.send_message(payload):
            return
        self.send_trailers(status, message, trailers)

    def trailers_only(self, status: int, message: Optional[str] = None) -> None:
        headers: List[Tuple[str, str]] = [("grpc-status", str(int(status)))]
        if message is not None:
            headers.append(("grpc-message", message))
        self.send_headers(extra=headers, end_stream=True)

    def reset(self, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self.conn.h2.reset_stream(self.stream_id, error_code=code)
        self.conn.flush()

    async def wait_reset(self, timeout: float = 5.0) -> Optional[int]:
        """Wait (bounded) for the client's RST_STREAM on this stream; its code or None."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.reset_received.wait(), timeout)
        return self.reset_code


class FaultConnection:
    """One accepted TCP connection and its server-side ``H2Connection``."""

    def __init__(
        self,
        server: FaultServer,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.index = index
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.streams: Dict[int, FaultStream] = {}
        self.window_changed = asyncio.Event()
        self.closed = asyncio.Event()
        self.bytes_received = 0
        self.pings_received = 0
        self.ping_acks = 0
        self.settings_acks = 0
        self.goaway_received: Optional[int] = None
        self.frozen = False  # a hung peer: bytes are read and dropped, nothing is answered
        self.tasks: List[asyncio.Task[None]] = []

    @property
    def peer(self) -> str:
        return str(self.writer.get_extra_info("peername"))

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def write_raw(self, data: bytes) -> None:
        """Bytes straight to the socket, after what h2 has queued (hand-made frames)."""
        self.flush()
        if not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        """Close the TCP connection (FIN), no GOAWAY: a crash as the client sees it."""
        if not self.writer.is_closing():
            self.writer.close()

    def abort(self) -> None:
        """Reset the TCP connection (RST), no GOAWAY."""
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()

    def goaway(
        self,
        last_stream_id: Optional[int] = None,
        code: int = h2.errors.ErrorCodes.NO_ERROR,
        debug: bytes = b"",
    ) -> None:
        """Send GOAWAY as a raw frame, keeping this side's h2 state open.

        h2's ``close_connection()`` would move our state machine to CLOSED and refuse to
        answer the streams at or below ``last_stream_id``, which a draining server does.
        """
        if last_stream_id is None:
            last_stream_id = self.h2.highest_inbound_stream_id
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = int(code)
        frame.additional_data = debug
        self.flush()
        if not self.writer.is_closing():
            self.writer.write(frame.serialize())

    def send_pings(self, count: int) -> None:
        for i in range(count):
            self.h2.ping(i.to_bytes(8, "big"))
        self.flush()

    def send_settings(self, count: int) -> None:
        for i in range(count):
            self.h2.update_settings(
                {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100 + (i % 2)}
            )
        self.flush()

    async def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> bool:
        view = memoryview(data)
        while True:
            if self.closed.is_set():
                return False
            try:
                window = self.h2.local_flow_control_window(stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                return False
            size = min(window, self.h2.max_outbound_frame_size, len(view))
            if size <= 0 and len(view):
                self.window_changed.clear()
                try:
                    await asyncio.wait_for(self.window_changed.wait(), 30.0)
                except asyncio.TimeoutError:
                    return False
                continue
            last = size == len(view)
            try:
                self.h2.send_data(stream_id, bytes(view[:size]), end_stream=end_stream and last)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return False
            self.flush()
            view = view[size:]
            if last:
                await self.writer.drain()
                return True
            # Let the client read: a writer buffer that only grows would hide flow control.
            await self.writer.drain()

    # -- the read loop -------------------------------------------------------------

    async def serve(self) -> None:
        server = self.server
        try:
            if server.hang_up:
                return  # accepted, then closed before a single byte
            if not server.speak_h2:
                # TCP accepted, not one byte of HTTP/2 back (``raw_reply`` at most): read
                # and discard.
                if server.raw_reply:
                    self.writer.write(server.raw_reply)
                while await self.reader.read(65536):
                    pass
                return
            self.h2.initiate_connection()
            if server.settings:
                self.h2.update_settings(dict(server.settings))
            self.flush()
            if server.on_connection is not None:
                await server.on_connection(self)
            while not self.closed.is_set():
                data = await self.reader.read(65536)
                if not data:
                    break
                self.bytes_received += len(data)
                if self.frozen:
                    continue
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    server.errors.append(f"connection {self.index}: protocol error: {exc!r}")
                    self.flush()
                    break
                for event in events:
                    self._on_event(event)
                del events  # not kept alive across the next read (memory checks)
                self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            self.window_changed.set()
            for stream in self.streams.values():
                stream.reset_received.set()
            if not self.writer.is_closing():
                self.writer.close()

    def _on_event(self, event: Any) -> None:
        server = self.server
        if isinstance(event, h2.events.RequestReceived):
            stream = FaultStream(self, event.stream_id, list(event.headers))
            self.streams[event.stream_id] = stream
            server.streams.append(stream)
            if event.stream_ended is not None:
                stream.ended.set()
            if server.handle_on == "headers" or event.stream_ended is not None:
                self._dispatch(stream)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.body += event.data
            if server.auto_ack and event.flow_controlled_length:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_ended is not None and stream is not None:
                stream.ended.set()
                if server.handle_on == "end":
                    self._dispatch(stream)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.ended.is_set():
                stream.ended.set()
                if server.handle_on == "end":
                    self._dispatch(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.reset_code = int(event.error_code)
                stream.reset_received.set()
            self.window_changed.set()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window_changed.set()
        elif isinstance(event, h2.events.PingReceived):
            self.pings_received += 1
        elif isinstance(event, h2.events.PingAckReceived):
            self.ping_acks += 1
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self.settings_acks += 1
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_received = int(event.error_code)

    def _dispatch(self, stream: FaultStream) -> None:
        if stream in self.server.handled:
            return
        self.server.handled.append(stream)
        task = asyncio.get_running_loop().create_task(self._run_handler(stream))
        self.tasks.append(task)

    async def _run_handler(self, stream: FaultStream) -> None:
        try:
            await self.server.handler(stream)
        except (h2.exceptions.StreamClosedError, ConnectionError):
            pass
        except h2.exceptions.ProtocolError as exc:
            if not self.closed.is_set():
                self.server.errors.append(f"stream {stream.stream_id}: {exc!r}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken test handler must fail the test, not vanish
            logger.exception("fault handler failed")
            self.server.errors.append(f"stream {stream.stream_id}: handler raised {exc!r}")


async def _ok_handler(stream: FaultStream) -> None:
    await stream.respond(stream.request)


class FaultServer:
    """An HTTP/2 server on 127.0.0.1 that misbehaves as told.

    ``handler(stream)`` answers each request (default: echo with status OK).
    ``speak_h2=False`` accepts TCP and never speaks HTTP/2 (it writes ``raw_reply``, e.g.
    an HTTP/1.1 answer, and nothing else); ``hang_up=True`` closes every connection as soon
    as it is accepted. ``auto_ack=False`` never
    acknowledges received DATA, so the client's send windows never reopen.
    ``settings`` are sent after the preface; ``on_connection(conn)`` runs right after.
    ``handle_on="headers"`` calls the handler as soon as request headers arrive.
    """

    def __init__(
        self,
        handler: Optional[Handler] = None,
        *,
        speak_h2: bool = True,
        raw_reply: bytes = b"",
        hang_up: bool = False,
        auto_ack: bool = True,
        settings: Optional[Dict[int, int]] = None,
        on_connection: Optional[ConnectionHook] = None,
        handle_on: str = "end",
    ) -> None:
        if handle_on not in ("end", "headers"):
            raise ValueError(f"handle_on must be 'end' or 'headers', not {handle_on!r}")
        self.handler: Handler = handler or _ok_handler
        self.speak_h2 = speak_h2
        self.raw_reply = raw_reply
        self.hang_up = hang_up
        self.auto_ack = auto_ack
        self.settings = settings
        self.on_connection = on_connection
        self.handle_on = handle_on
        self.connections: List[FaultConnection] = []
        self.streams: List[FaultStream] = []  # every request whose headers arrived
        self.handled: List[FaultStream] = []  # every request given to the handler
        self.errors: List[str] = []
        self.port = 0
        self._server: Optional[asyncio.AbstractServer] = None
        self._serve_tasks: List[asyncio.Task[None]] = []
        self.new_connection = asyncio.Event()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> FaultServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = FaultConnection(self, len(self.connections), reader, writer)
        self.connections.append(conn)
        self.new_connection.set()
        task = asyncio.current_task()
        if task is not None:
            self._serve_tasks.append(task)  # type: ignore[arg-type]
        await conn.serve()

    def paths(self) -> List[str]:
        return [s.path for s in self.handled]

    async def close(self) -> None:
        """Stop listening, drop every connection, cancel handlers (bounded)."""
        if self._server is not None:
            self._server.close()
        tasks: List[asyncio.Task[None]] = []
        for conn in self.connections:
            conn.abort()
            conn.closed.set()
            conn.window_changed.set()
            tasks.extend(t for t in conn.tasks if not t.done())
        for task in tasks:
            task.cancel()
        pending = [t for t in tasks + self._serve_tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)

    async def __aenter__(self) -> FaultServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
