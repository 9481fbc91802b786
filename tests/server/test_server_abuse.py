"""Floods of frames that carry no work: the offending connection gets GOAWAY
ENHANCE_YOUR_CALM while real keepalive and other connections are left alone.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import AsyncIterator, List, Tuple

import _attacks
import pytest
from _frames import frame
from h2.errors import ErrorCodes

from wove_h2grpc import Channel, Server, ServicerContext

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY, PRIORITY, DATA, WINDOW_UPDATE = 0x4, 0x6, 0x7, 0x2, 0x0, 0x8


def goaways(data: bytes) -> List[Tuple[int, bytes]]:
    """(error code, debug data) of every GOAWAY in ``data``."""
    out = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind = data[pos + 3]
        payload = data[pos + 9 : pos + 9 + length]
        if kind == GOAWAY:
            out.append((int.from_bytes(payload[4:8], "big"), payload[8:]))
        pos += 9 + length
    return out


async def echo(request: bytes, context: ServicerContext) -> bytes:
    return request


@pytest.fixture
async def port() -> AsyncIterator[int]:
    srv = Server({"/t.S/Echo": echo})
    bound = await srv.start("127.0.0.1:0")
    yield bound
    await asyncio.wait_for(srv.stop(), 10)


async def flood(port: int, unit: bytes, count: int, timeout: float = 5.0) -> bytes:
    """Send the preface, then ``unit`` ``count`` times (in batches, stopping when the server
    closes); return everything the server sent until it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + frame(SETTINGS, 0, 0, b""))
    chunks: List[bytes] = []

    async def read_all() -> None:
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reading = asyncio.ensure_future(read_all())
    try:
        sent = 0
        while sent < count and not reading.done():
            try:
                writer.write(unit * 100)
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                break
            sent += 100
            await asyncio.sleep(0)
        await asyncio.wait_for(reading, timeout)
    finally:
        reading.cancel()
        writer.close()
    return b"".join(chunks)


async def test_ping_flood_gets_too_many_pings(port: int) -> None:
    data = await flood(port, frame(PING, 0, 0, b"flooding"), 20_000)
    assert (ErrorCodes.ENHANCE_YOUR_CALM, b"too_many_pings") in goaways(data)


async def test_settings_flood_gets_goaway(port: int) -> None:
    data = await flood(port, frame(SETTINGS, 0, 0, b""), 20_000)
    assert [code for code, _ in goaways(data)] == [ErrorCodes.ENHANCE_YOUR_CALM]


async def test_priority_flood_gets_goaway(port: int) -> None:
    data = await flood(port, frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"), 20_000)
    assert [code for code, _ in goaways(data)] == [ErrorCodes.ENHANCE_YOUR_CALM]


async def test_window_update_flood_gets_goaway(port: int) -> None:
    data = await flood(port, frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)), 20_000)
    assert (ErrorCodes.ENHANCE_YOUR_CALM, b"too_many_window_updates") in goaways(data)


async def test_window_updates_for_received_data_are_not_a_flood() -> None:
    """A client that grants back every DATA frame at once (two WINDOW_UPDATEs per frame,
    over 8,000 in all) while reading 64 MiB: each follows data we sent, none is a strike."""

    async def many(request: bytes, context: ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(4096):
            yield b"m" * 16000

    srv = Server()
    srv.add_method("/t.S/Many", many, kind="unary_stream")
    many_port = await srv.start("127.0.0.1:0")
    try:
        peer = await _attacks.Peer.connect(many_port)
        peer.ack_data = True
        peer.open_stream(1, peer.headers_block(_attacks.request_headers("/t.S/Many")))
        peer.send(frame(DATA, 0x1, 1, _attacks.grpc_message(b"")))
        deadline = time.monotonic() + 30
        while not peer.observed.grpc_statuses and time.monotonic() < deadline:
            if await peer.wait_closed(0.05):
                break
        seen = await peer.close()
        assert seen.goaways == [] and dict(seen.grpc_statuses) == {0: 1}
        assert peer.data[1] == 4096 * (16000 + 5)
    finally:
        await asyncio.wait_for(srv.stop(), 10)


async def test_channel_keepalive_is_not_a_ping_flood(port: int) -> None:
    """Our Channel with a very short keepalive_time, over a call that reads nothing for a
    while and calls in a row: no GOAWAY, every call succeeds."""

    async def slow(request: bytes, context: ServicerContext) -> bytes:
        await asyncio.sleep(0.5)
        return request

    srv = Server({"/t.S/Slow": slow, "/t.S/Echo": echo})
    slow_port = await srv.start("127.0.0.1:0")
    try:
        async with Channel(
            f"127.0.0.1:{slow_port}", keepalive_time=0.05, keepalive_timeout=2.0
        ) as channel:
            slow_rpc = channel.unary_unary("/t.S/Slow")
            echo_rpc = channel.unary_unary("/t.S/Echo")
            for i in range(6):
                assert await asyncio.wait_for(slow_rpc(b"s%d" % i), 5) == b"s%d" % i
                assert await asyncio.wait_for(echo_rpc(b"e"), 5) == b"e"
    finally:
        await asyncio.wait_for(srv.stop(), 10)


async def test_flooder_does_not_starve_another_connection(port: int) -> None:
    """While one connection floods PINGs and SETTINGS, a Channel on another connection
    runs 200 calls, every one OK."""
    stop = time.monotonic() + 3.0

    async def flooder() -> None:
        while time.monotonic() < stop:
            await flood(port, frame(PING, 0, 0, b"flooding") + frame(SETTINGS, 0, 0, b""), 5000)

    flooding = asyncio.ensure_future(flooder())
    latencies = []
    try:
        async with Channel(f"127.0.0.1:{port}") as channel:
            rpc = channel.unary_unary("/t.S/Echo")
            await asyncio.wait_for(channel.channel_ready(), 5)
            for i in range(200):
                start = time.monotonic()
                assert await asyncio.wait_for(rpc(b"%d" % i), 5) == b"%d" % i
                latencies.append(time.monotonic() - start)
    finally:
        flooding.cancel()
        await asyncio.gather(flooding, return_exceptions=True)
    latencies.sort()
    assert len(latencies) == 200


async def test_slow_reader_holds_one_slice_in_the_transport_buffer() -> None:
    """A client that grants every window but does not read its socket: a 16 MiB response
    goes to the transport a slice at a time, so its buffer stays far below the response."""

    async def big(request: bytes, context: ServicerContext) -> bytes:
        return b"b" * (16 * 1024 * 1024)

    srv = Server({"/t.S/Big": big})
    big_port = await srv.start("127.0.0.1:0")
    try:
        peer = await _attacks.Peer.connect(
            big_port,
            settings={_attacks.SETTINGS_INITIAL_WINDOW_SIZE: _attacks.MAX_WINDOW},
            rcvbuf=4096,
            read_delay=10.0,  # reads nothing during the test
        )
        peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", _attacks.MAX_WINDOW - 65535)))
        peer.open_stream(1, peer.headers_block(_attacks.request_headers("/t.S/Big")))
        peer.send(frame(DATA, 0x1, 1, _attacks.grpc_message(b"")))
        largest = 0
        for _ in range(50):
            await asyncio.sleep(0.02)
            for conn in srv._connections:
                if conn.transport is not None:
                    largest = max(largest, conn.transport.get_write_buffer_size())
        assert 0 < largest <= 1024 * 1024
        await peer.close()
    finally:
        await asyncio.wait_for(srv.stop(grace=0), 10)
