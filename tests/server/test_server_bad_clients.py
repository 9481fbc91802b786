"""Bad clients against our Server: each may cost only its own connection.

Garbage bytes, a half-open connection, headers trickled forever, an oversized header
block, a RST_STREAM flood: the offending connection gets GOAWAY (or is dropped) within
bounded time while another connection keeps being served.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import AsyncIterator, List, Tuple

import pytest
from _server_raw_client import RawClient, grpc_message
from h2.errors import ErrorCodes
from hpack import Encoder

from wove_h2grpc import Server, ServicerContext

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
GOAWAY, HEADERS, CONTINUATION = 0x7, 0x1, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


def parse_frames(data: bytes) -> List[Tuple[int, int, int, bytes]]:
    out = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        stream_id = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        out.append((kind, flags, stream_id, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return out


def goaway_codes(data: bytes) -> List[int]:
    return [int.from_bytes(p[4:8], "big") for kind, _, _, p in parse_frames(data) if kind == GOAWAY]


def request_block(encoder: Encoder, path: bytes = b"/t.S/Echo", extra: int = 0) -> bytes:
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
    ]
    if extra:
        headers.append((b"x-huge", b"v" * extra))
    return encoder.encode(headers, huffman=False)


# Encoded before any test runs: encoding 50 KB on a cold PyPy JIT blocks the event loop long
# enough to trip the server's idle timeout for the well-behaved connection.
OVERSIZED_BLOCK = request_block(Encoder(), extra=50_000)


async def read_until_eof(reader: asyncio.StreamReader, timeout: float) -> Tuple[bytes, float]:
    """Everything the server sends until it closes; and how long that took."""
    start = time.monotonic()
    chunks = []
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
        except ConnectionResetError:
            # A reset makes read() raise at once, even over bytes that arrived before it
            # (uvloop hands both over in one turn): keep those too.
            chunks.append(bytes(reader._buffer))
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - start


async def echo(request: bytes, context: ServicerContext) -> bytes:
    return request


@pytest.fixture
async def server() -> AsyncIterator[Tuple[Server, int]]:
    srv = Server(
        {"/t.S/Echo": echo},
        handshake_timeout=0.5,
        idle_timeout=1.0,
        max_client_resets=100,
        max_header_list_size=8192,
    )
    port = await srv.start("127.0.0.1:0")
    yield srv, port
    await asyncio.wait_for(srv.stop(), 15)


@pytest.fixture
async def good(server: Tuple[Server, int]) -> AsyncIterator[RawClient]:
    """A well-behaved connection, served all through the test (a call every 50 ms, so it
    is never idle); teardown checks that every one of its calls succeeded."""
    c = await RawClient.connect("127.0.0.1", server[1])
    served: List[int] = []

    async def heartbeat() -> None:
        while True:
            resp = await c.call("/t.S/Echo", b"beat", timeout=5)
            assert resp.messages() == [b"beat"], resp
            served.append(1)
            await asyncio.sleep(0.05)

    beat = asyncio.ensure_future(heartbeat())
    yield c
    assert not beat.done(), beat.exception() if beat.done() else None
    beat.cancel()
    assert served
    await c.close()


async def keep_serving(client: RawClient, seconds: float) -> int:
    """Call Echo repeatedly for ``seconds``; every call must succeed."""
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        resp = await client.call("/t.S/Echo", b"ping %d" % done, timeout=5)
        assert resp.messages() == [b"ping %d" % done]
        done += 1
        await asyncio.sleep(0.02)
    return done


async def test_garbage_bytes_get_goaway_protocol_error(server: tuple, good: RawClient) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\xff" * 100)
    data, _ = await read_until_eof(reader, 5)
    writer.close()
    assert goaway_codes(data) == [ErrorCodes.PROTOCOL_ERROR]
    assert await keep_serving(good, 0.2) > 0


async def test_garbage_after_preface(server: tuple, good: RawClient) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    writer.write(
        PREFACE
        + EMPTY_SETTINGS
        + b"\x00\x00\x04\xee\x00\x00\x00\x00\x00junk" * 3
        + b"\x00\x00\x08\x08\x00\x00\x00\x00\x00"
        + b"12345678"
    )  # bad WINDOW_UPDATE
    data, _ = await read_until_eof(reader, 5)
    writer.close()
    codes = goaway_codes(data)
    assert len(codes) == 1 and codes[0] != ErrorCodes.NO_ERROR
    assert await keep_serving(good, 0.2) > 0


async def test_half_open_connection_closed_after_handshake_timeout(
    server: tuple, good: RawClient
) -> None:
    # Connects and says nothing: no preface within handshake_timeout (0.5 s).
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    serving = asyncio.ensure_future(keep_serving(good, 0.8))
    _, elapsed = await read_until_eof(reader, 5)
    writer.close()
    assert 0.3 < elapsed < 3
    assert await serving > 5


async def test_partial_preface_closed_after_handshake_timeout(server: tuple) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    writer.write(PREFACE[:10])
    _, elapsed = await read_until_eof(reader, 5)
    writer.close()
    assert elapsed < 3


async def test_idle_connection_gets_goaway(server: tuple, good: RawClient) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    writer.write(PREFACE + EMPTY_SETTINGS)
    serving = asyncio.ensure_future(keep_serving(good, 1.5))
    data, elapsed = await read_until_eof(reader, 5)
    writer.close()
    assert goaway_codes(data) == [ErrorCodes.NO_ERROR]
    assert 0.7 < elapsed < 4
    # The busy connection is not idle: it keeps being served past the idle timeout.
    assert await serving > 10
    assert (await good.call("/t.S/Echo", b"still")).messages() == [b"still"]


async def test_headers_trickled_forever(server: tuple, good: RawClient) -> None:
    """A header block that never ends opens no stream: the connection is idle and closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    block = request_block(Encoder())
    writer.write(PREFACE + EMPTY_SETTINGS + frame(HEADERS, 0, 1, block[:3]))

    async def trickle() -> None:
        pos = 3
        while pos < len(block):
            await asyncio.sleep(0.1)
            writer.write(frame(CONTINUATION, 0, 1, block[pos : pos + 1]))
            pos += 1
        while True:  # then empty CONTINUATIONs, still no END_HEADERS
            await asyncio.sleep(0.1)
            writer.write(frame(CONTINUATION, 0, 1, b""))

    trickler = asyncio.ensure_future(trickle())
    serving = asyncio.ensure_future(keep_serving(good, 1.0))
    try:
        data, elapsed = await read_until_eof(reader, 10)
    finally:
        trickler.cancel()
        writer.close()
    # Closed by the idle timeout (1 s), well before h2's 64-CONTINUATION limit (6.4 s here).
    assert 0.7 < elapsed < 3
    assert goaway_codes(data) == [ErrorCodes.NO_ERROR]
    assert await serving > 5


async def test_trickled_request_body_is_bounded_by_deadline(server: tuple, good: RawClient) -> None:
    """A request body trickled byte by byte ends at its grpc-timeout; others are unaffected."""
    slow = await RawClient.connect("127.0.0.1", server[1])
    sid = slow.start("/t.S/Echo", grpc_timeout="500m")
    body = grpc_message(b"x" * 100)

    async def trickle() -> None:
        for i in range(len(body)):
            await asyncio.sleep(0.05)
            try:
                slow.conn.send_data(sid, body[i : i + 1])
                slow.flush()
            except Exception:
                return

    trickler = asyncio.ensure_future(trickle())
    serving = asyncio.ensure_future(keep_serving(good, 0.5))
    resp = await slow.response(sid, 5)
    trickler.cancel()
    assert resp.status == 4  # DEADLINE_EXCEEDED
    assert await serving > 5
    await slow.close()


async def test_oversized_header_block(server: tuple, good: RawClient) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    block = OVERSIZED_BLOCK  # > max_header_list_size=8192
    chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    out = PREFACE + EMPTY_SETTINGS + frame(HEADERS, 0, 1, chunks[0])
    for i, chunk in enumerate(chunks[1:], 1):
        out += frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, 1, chunk)
    writer.write(out)
    data, _ = await read_until_eof(reader, 5)
    writer.close()
    assert goaway_codes(data) == [ErrorCodes.ENHANCE_YOUR_CALM]
    assert await keep_serving(good, 0.2) > 0


async def test_oversized_frame_refused_from_its_header(server: tuple, good: RawClient) -> None:
    """A frame announcing 16 MiB gets GOAWAY FRAME_SIZE_ERROR before its body is buffered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    writer.write(PREFACE + EMPTY_SETTINGS + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01")
    data, elapsed = await read_until_eof(reader, 5)
    writer.close()
    assert goaway_codes(data) == [ErrorCodes.FRAME_SIZE_ERROR]
    assert elapsed < 0.9  # not the idle timeout
    assert await keep_serving(good, 0.2) > 0


async def test_continuation_flood(server: tuple, good: RawClient) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    out = PREFACE + EMPTY_SETTINGS + frame(HEADERS, 0, 1, b"")
    out += frame(CONTINUATION, 0, 1, b"\x00" * 1000) * 100
    writer.write(out)
    data, _ = await read_until_eof(reader, 5)
    writer.close()
    codes = goaway_codes(data)
    assert len(codes) == 1 and codes[0] != ErrorCodes.NO_ERROR
    assert await keep_serving(good, 0.2) > 0


async def test_rst_stream_flood(server: tuple, good: RawClient) -> None:
    flood = await RawClient.connect("127.0.0.1", server[1])
    for _ in range(300):  # max_client_resets=100 per 10 s
        if flood.closed.is_set() or flood.goaway is not None:
            break
        sid = flood.start("/t.S/Echo")
        flood.reset(sid)
        await asyncio.sleep(0)
    await asyncio.wait_for(flood.closed.wait(), 5)
    assert flood.goaway is not None
    assert flood.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    await flood.close()
    assert await keep_serving(good, 0.2) > 0


async def test_resets_mixed_with_real_calls_are_not_a_flood(server: tuple) -> None:
    """Cancelling calls is normal: resets net of completed calls stay under the limit."""
    busy = await RawClient.connect("127.0.0.1", server[1])
    for i in range(250):  # 250 resets > max_client_resets=100, but 250 completed calls too
        sid = busy.start("/t.S/Echo")
        busy.reset(sid)
        resp = await busy.call("/t.S/Echo", b"%d" % i, timeout=5)
        assert resp.messages() == [b"%d" % i]
    assert busy.goaway is None
    await busy.close()


async def test_refused_streams_do_not_cost_the_connection(good: RawClient) -> None:
    srv = Server({"/t.S/Echo": echo}, max_concurrent_streams=2)
    port = await srv.start("127.0.0.1:0")
    try:
        c = await RawClient.connect("127.0.0.1", port)
        c.ignore_stream_limit()
        ids = [c.start("/t.S/Echo") for _ in range(50)]  # headers only: all stay open
        responses = [await c.response(sid, 5) for sid in ids[2:]]
        assert {r.reset_code for r in responses} == {ErrorCodes.REFUSED_STREAM}
        for sid in ids[:2]:
            await c.send_body(sid, grpc_message(b"ok"))
            assert (await c.response(sid, 5)).messages() == [b"ok"]
        assert (await c.call("/t.S/Echo", b"after")).messages() == [b"after"]
        await c.close()
    finally:
        await asyncio.wait_for(srv.stop(), 10)


async def test_client_that_never_reads_costs_only_its_connection(good: RawClient) -> None:
    """A client asks for big responses and never opens its window; others are served."""

    async def big(request: bytes, context: ServicerContext) -> bytes:
        return b"b" * (4 << 20)

    srv = Server({"/t.S/Big": big, "/t.S/Echo": echo})
    port = await srv.start("127.0.0.1:0")
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        import h2.config
        import h2.connection

        conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
        conn.initiate_connection()
        for _ in range(20):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(
                sid,
                [
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b":path", b"/t.S/Big"),
                    (b":authority", b"x"),
                    (b"content-type", b"application/grpc"),
                ],
            )
            conn.send_data(sid, grpc_message(b""), end_stream=True)
        writer.write(conn.data_to_send())
        other = await RawClient.connect("127.0.0.1", port)
        assert await keep_serving(other, 0.5) > 5
        await other.close()
        writer.close()
    finally:
        await asyncio.wait_for(srv.stop(), 15)
