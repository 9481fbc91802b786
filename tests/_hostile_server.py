"""A hostile HTTP/2 gRPC server for client tests: a real h2 ``H2Connection`` on asyncio
that misbehaves on purpose.

It listens on 127.0.0.1 only. The first ``hostile_connections`` connections hand their
first request to an *attack* (``async attack(conn, stream_id)``), which may use h2 for the
normal parts (``conn.h2``, ``conn.flush()``) and ``conn.write(frame(...))`` (``_frames``)
for hand-built frames that h2 would never send; every later request, and every later
connection, is answered as a healthy server would (``b"ok"``, grpc-status 0). Every frame
the client sends is parsed by hand as well and kept in ``conn.received`` (PING and SETTINGS
ACKs are only counted, in ``conn.acks``: a flood's answers would fill the test's memory), so
tests can tell what the client did back (GOAWAY, RST_STREAM, ACKs) even after h2 gave up on the
connection.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import struct
from typing import Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 section 6: frame types and the flags used here.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 0x8, 0x9
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4

Headers = List[Tuple[bytes, bytes]]
Attack = Callable[["HostileConnection", int], Awaitable[None]]

RESPONSE_HEADERS: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
OK_TRAILERS: Headers = [(b"grpc-status", b"0")]


def grpc_message(payload: bytes) -> bytes:
    """A length-prefixed, uncompressed gRPC message."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


@dataclasses.dataclass
class Frame:
    """One frame as the client sent it."""

    kind: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def error_code(self) -> Optional[int]:
        """The error code of a RST_STREAM or GOAWAY frame."""
        if self.kind == RST_STREAM and len(self.payload) >= 4:
            return int.from_bytes(self.payload[:4], "big")
        if self.kind == GOAWAY and len(self.payload) >= 8:
            return int.from_bytes(self.payload[4:8], "big")
        return None


class _FrameParser:
    """Splits the client's bytes into frames, after its 24-byte preface."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._preface = len(PREFACE)

    def feed(self, data: bytes) -> List[Frame]:
        self._buffer += data
        if self._preface:
            skip = min(self._preface, len(self._buffer))
            del self._buffer[:skip]
            self._preface -= skip
        frames = []
        buffer = self._buffer
        pos, size = 0, len(buffer)
        while pos + 9 <= size:
            length = int.from_bytes(buffer[pos : pos + 3], "big")
            if size < pos + 9 + length:
                break
            kind, flags = buffer[pos + 3], buffer[pos + 4]
            stream_id = int.from_bytes(buffer[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            # Only the start of a DATA payload is kept: tests count DATA, never read it.
            keep = 64 if kind == DATA else length
            body = bytes(buffer[pos + 9 : pos + 9 + keep])
            frames.append(Frame(kind, flags, stream_id, body))
            pos += 9 + length
        del buffer[:pos]  # once per read: a flood of small frames stays linear
        return frames


class HostileConnection:
    """One accepted connection: h2 for the normal parts, raw frames for the rest."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: Mapping[int, int],
    ) -> None:
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        if settings:
            self.h2.local_settings = h2.settings.Settings(
                client=False, initial_values=dict(settings)
            )
        self.h2_live = True  # False once h2 refused what the client sent (or we broke it)
        self.received: List[Frame] = []
        self.acks: Dict[int, int] = {PING: 0, SETTINGS: 0}  # ACK frames by type
        self.client_settings: Dict[int, int] = {}
        self.requests: asyncio.Queue[int] = asyncio.Queue()
        self.request_bytes: Dict[int, int] = {}
        self.request_ended: Dict[int, asyncio.Event] = {}
        self.auto_window = True  # False: never give the client's request bytes back
        self.closed = asyncio.Event()  # the client closed (or reset) the connection
        self.changed = asyncio.Event()  # set (and cleared by waiters) on every frame
        self.reading = asyncio.Event()  # cleared: the socket is not read (our window shuts)
        self.reading.set()
        self._parser = _FrameParser()

    # ------------------------------------------------------------- writing

    def write(self, data: bytes) -> None:
        """Raw bytes to the client, bypassing h2 (what h2 queued goes first)."""
        self.flush()
        if not self.writer.is_closing():
            self.writer.write(data)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self, timeout: float = 5.0) -> bool:
        """Wait (bounded) until the client took what was written; False if it is gone."""
        if self.closed.is_set() or self.writer.is_closing():
            return False
        try:
            await asyncio.wait_for(self.writer.drain(), timeout)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            return False
        return not self.closed.is_set()

    def encode_headers(self, headers: Sequence[Tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        """A header block from h2's own HPACK encoder (so h2's later blocks stay valid).

        ``huffman=False`` for large blocks: hpack's Huffman coder is pure Python and would
        stall this event loop (the client's too) for seconds on a 256 KiB value.
        """
        return bytes(self.h2.encoder.encode(list(headers), huffman=huffman))

    # ------------------------------------------------------------- reading

    async def read_loop(self) -> None:
        try:
            while True:
                if not self.reading.is_set():
                    waiter = asyncio.ensure_future(self.reading.wait())
                    closed = asyncio.ensure_future(self._writer_closed())
                    await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    closed.cancel()
                    if self.writer.is_closing():
                        break
                data = await self.reader.read(65536)
                if not data:
                    break
                self._on_bytes(data)
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            self.changed.set()
            for ended in self.request_ended.values():
                ended.set()

    async def _writer_closed(self) -> None:
        while not self.writer.is_closing():
            await asyncio.sleep(0.05)

    def _on_bytes(self, data: bytes) -> None:
        for received in self._parser.feed(data):
            if received.kind in (PING, SETTINGS) and received.flags & ACK:
                self.acks[received.kind] += 1
                continue
            self.received.append(received)
            if received.kind == SETTINGS and not received.flags & ACK:
                payload = received.payload
                for pos in range(0, len(payload) - 5, 6):
                    code, value = struct.unpack(">HI", payload[pos : pos + 6])
                    self.client_settings[code] = value
        self.changed.set()
        if not self.h2_live:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.h2_live = False  # what the client sent no longer fits h2's view
            self.h2.data_to_send()  # h2's own GOAWAY: never sent, the attack speaks
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                sid = event.stream_id
                self.request_bytes[sid] = 0
                self.request_ended[sid] = asyncio.Event()
                if event.stream_ended is not None:
                    self.request_ended[sid].set()
                self.requests.put_nowait(sid)
            elif isinstance(event, h2.events.DataReceived):
                sid = event.stream_id
                self.request_bytes[sid] = self.request_bytes.get(sid, 0) + len(event.data)
                if self.auto_window and event.flow_controlled_length:
                    with contextlib.suppress(h2.exceptions.ProtocolError):
                        self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                ended = self.request_ended.get(event.stream_id)
                if ended is not None:
                    ended.set()
        self.flush()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (bounded) until ``predicate()`` holds, re-checked on every received frame."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not predicate():
            remaining = end - loop.time()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.05))
        return True

    # ------------------------------------------------------- what came back

    def frames_of(self, kind: int, stream_id: Optional[int] = None) -> List[Frame]:
        return [
            f
            for f in self.received
            if f.kind == kind and (stream_id is None or f.stream_id == stream_id)
        ]

    def goaway_codes(self) -> List[int]:
        return [f.error_code for f in self.frames_of(GOAWAY) if f.error_code is not None]

    def reset_codes(self, stream_id: int) -> List[int]:
        return [
            f.error_code for f in self.frames_of(RST_STREAM, stream_id) if f.error_code is not None
        ]

    def answered(self, stream_id: int) -> bool:
        """The client reset ``stream_id``, sent GOAWAY or closed the connection."""
        return bool(self.reset_codes(stream_id) or self.goaway_codes() or self.closed.is_set())

    def reaction(self, stream_id: int) -> str:
        """What the client did back, as data: its GOAWAY, its RST_STREAM on the attacked
        stream, whether it closed the connection."""
        parts = [f"GOAWAY {code_name(c)}" for c in dict.fromkeys(self.goaway_codes())]
        parts += [f"RST {code_name(c)}" for c in dict.fromkeys(self.reset_codes(stream_id))]
        if self.closed.is_set() and not self.goaway_codes():
            parts.append("connection closed")
        return ", ".join(parts) or "connection kept"

    # ------------------------------------------------------ healthy answers

    async def serve_healthy(self, stream_id: int) -> None:
        """Answer like a healthy server: open the windows the request needs (an attack may
        have shut them), wait for the request's end, reply ``b"ok"``."""
        if self.h2_live:
            with contextlib.suppress(h2.exceptions.ProtocolError, ValueError):
                self.h2.increment_flow_control_window(1 << 20, stream_id)
                self.h2.increment_flow_control_window(1 << 20)
            self.flush()
        ended = self.request_ended.get(stream_id)
        if ended is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ended.wait(), 5.0)
        if not self.h2_live or self.closed.is_set():
            return
        try:
            self.h2.send_headers(stream_id, RESPONSE_HEADERS)
            self.h2.send_data(stream_id, grpc_message(b"ok"))
            self.h2.send_headers(stream_id, OK_TRAILERS, end_stream=True)
        except h2.exceptions.ProtocolError:
            return  # the client reset the stream meanwhile
        self.flush()


class HostileServer:
    """Accepts connections on 127.0.0.1; the first ``hostile_connections`` run ``attack`` on
    their first request, everything else is answered healthily.

    ``settings`` are this server's SETTINGS on hostile connections (h2's defaults otherwise);
    ``window_updates=False``: hostile connections never give the client's request bytes back
    (no WINDOW_UPDATE at all, from the first byte); ``every_request``: every request on a
    hostile connection is attacked, not only the first; ``receive_buffer``: SO_RCVBUF of the
    listening socket (inherited by accepted ones), so that what the client sends while this
    server reads nothing piles up on the client's side rather than in this kernel buffer;
    ``silent``: hostile connections never send a byte (no SETTINGS: the handshake never ends).
    """

    def __init__(
        self,
        attack: Attack,
        *,
        hostile_connections: int = 1,
        settings: Optional[Mapping[int, int]] = None,
        window_updates: bool = True,
        every_request: bool = False,
        receive_buffer: Optional[int] = None,
        silent: bool = False,
    ) -> None:
        self.attack = attack
        self.silent = silent
        self.receive_buffer = receive_buffer
        self.every_request = every_request
        self.window_updates = window_updates
        self.hostile_connections = hostile_connections
        self.settings = dict(settings or {})
        self.connections: List[HostileConnection] = []
        self.attacked: Optional[Tuple[HostileConnection, int]] = None  # the first one
        self.attacks = 0
        self.attack_started = asyncio.Event()
        self.attack_error: Optional[BaseException] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: List[asyncio.Task[None]] = []
        self.port = 0

    async def start(self) -> int:
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that name it (else
        # Nagle and the client's delayed ACK hold every answer for 40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.receive_buffer is not None:
            # Before listen(): the TCP window is negotiated from it at the handshake.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        sock.bind(("127.0.0.1", 0))
        self._server = await asyncio.start_server(self._accept, sock=sock)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.append(task)  # type: ignore[arg-type]
        hostile = len(self.connections) < self.hostile_connections
        conn = HostileConnection(reader, writer, self.settings if hostile else {})
        conn.auto_window = self.window_updates or not hostile
        self.connections.append(conn)
        if hostile and self.silent:
            conn.h2_live = False  # read (and record) what the client sends, answer nothing
        else:
            conn.h2.initiate_connection()
            conn.flush()
        reading = asyncio.ensure_future(conn.read_loop())
        answers: List[asyncio.Future[None]] = []
        try:
            first = hostile
            while not conn.closed.is_set():
                getter = asyncio.ensure_future(conn.requests.get())
                closed = asyncio.ensure_future(conn.closed.wait())
                await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                if not getter.done():
                    getter.cancel()
                    break
                stream_id = getter.result()
                if first:
                    first = self.every_request
                    self.attacks += 1
                    if self.attacked is None:
                        self.attacked = (conn, stream_id)
                    self.attack_started.set()
                    answers.append(asyncio.ensure_future(self._run_attack(conn, stream_id)))
                else:
                    answers.append(asyncio.ensure_future(conn.serve_healthy(stream_id)))
        finally:
            for answer in answers:
                answer.cancel()
            await asyncio.gather(*answers, return_exceptions=True)
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            writer.close()

    async def _run_attack(self, conn: HostileConnection, stream_id: int) -> None:
        try:
            await self.attack(conn, stream_id)
        except (ConnectionError, OSError):
            pass  # the client hung up on us: that is an answer too
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a broken attack must fail its test, not vanish
            self.attack_error = exc

    async def close(self) -> None:
        """Close every connection; each handler then ends by itself (reading sees EOF)."""
        if self._server is not None:
            self._server.close()
        for conn in self.connections:
            conn.writer.close()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5.0)
            for task in pending:  # pragma: no cover - a handler that did not notice
                task.cancel()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
