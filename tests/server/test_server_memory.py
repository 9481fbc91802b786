"""The server's memory budget (``max_buffered_bytes``) against clients that make it hold bytes.

Partial request bodies that never finish, readers that open no flow-control window and
readers that do not read the socket: over the budget, the connections holding the most get
GOAWAY ENHANCE_YOUR_CALM (debug data ``memory_budget``) and their calls RESOURCE_EXHAUSTED,
while a well-behaved connection keeps being served; the count returns to 0 once they are
gone, and ordinary calls of every kind leave nothing counted.
"""

from __future__ import annotations

import asyncio
import gc
import os
import struct
import time
from typing import Any, AsyncIterator, Callable, List, Optional, Tuple

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from _server_raw_client import RawClient, grpc_message
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from wove_h2grpc import EOF, Channel, GrpcError, Server, ServicerContext, StatusCode
from wove_h2grpc.aio.budget import MemoryBudget, malloc_trim
from wove_h2grpc.aio.server_conn import ServerConnection

MiB = 1024 * 1024
BUDGET = 8 * MiB
RESOURCE_EXHAUSTED = int(StatusCode.RESOURCE_EXHAUSTED)
# One buffer the partial bodies are cut from: allocated once, before any RSS baseline.
FILLER = b"\x00" * (4 * MiB)
GOAWAY = 0x7


async def echo(request: bytes, context: ServicerContext) -> bytes:
    return request


async def sized(request: bytes, context: ServicerContext) -> bytes:
    """A fresh reply of as many bytes as the request's decimal text says."""
    return b"z" * int(request)


async def sized_stream(request: bytes, context: ServicerContext) -> AsyncIterator[bytes]:
    count, size = (int(x) for x in request.split(b"x"))
    for _ in range(count):
        yield b"s" * size


async def total(request_iterator: AsyncIterator[bytes], context: ServicerContext) -> bytes:
    return str(sum([len(r) async for r in request_iterator])).encode()


async def upper(request_iterator: AsyncIterator[bytes], context: ServicerContext) -> Any:
    async for request in request_iterator:
        yield request.upper()


def make_server(max_buffered_bytes: Optional[int] = BUDGET) -> Server:
    srv = Server(
        {"/t.S/Echo": echo, "/t.S/Sized": sized},
        max_buffered_bytes=max_buffered_bytes,
        idle_timeout=None,
    )
    srv.add_method("/t.S/Stream", sized_stream, kind="unary_stream")
    srv.add_method("/t.S/Total", total, kind="stream_unary")
    srv.add_method("/t.S/Upper", upper, kind="stream_stream")
    return srv


@pytest.fixture
async def served() -> AsyncIterator[Tuple[Server, int]]:
    srv = make_server()
    port = await srv.start("127.0.0.1:0")
    yield srv, port
    await asyncio.wait_for(srv.stop(), 15)


def budget(srv: Server) -> MemoryBudget:
    return srv._budget


def rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler:
    """Samples this process's RSS and the budget's total every few milliseconds."""

    def __init__(self, srv: Server) -> None:
        gc.collect()
        self.srv = srv
        self.before = rss()
        self.peak = self.before
        self.peak_total = 0
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss())
            self.peak_total = max(self.peak_total, budget(self.srv).total)
            await asyncio.sleep(0.005)

    async def stop(self) -> int:
        """Stop sampling; returns the peak RSS growth in bytes."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.peak = max(self.peak, rss())
        return self.peak - self.before


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def send_partial(client: RawClient, stream_id: int, announced: int, sent: int) -> bool:
    """Send the first ``sent`` bytes of a message whose prefix announces ``announced``
    bytes, a frame at a time, draining the socket every 256 KiB; False once the server
    closed the stream or the connection."""
    head = struct.pack(">BI", 0, announced)
    view = memoryview(FILLER)[: sent - len(head)]
    conn = client.conn
    try:
        conn.send_data(stream_id, head)
        pos = 0
        since_drain = 0
        while pos < len(view):
            if client.goaway is not None or client.closed.is_set():
                return False
            size = min(conn.max_outbound_frame_size, len(view) - pos)
            conn.send_data(stream_id, view[pos : pos + size])
            pos += size
            since_drain += size
            if since_drain >= 256 * 1024 or pos == len(view):
                since_drain = 0
                client.flush()
                await client.writer.drain()
    except (h2.exceptions.ProtocolError, ConnectionError):
        return False
    return True


async def partial_bodies(client: RawClient, streams: int, sent: int) -> List[int]:
    """Open ``streams`` unary calls, each with ``sent`` bytes of a 4 MiB message."""
    ids = []
    for _ in range(streams):
        if client.goaway is not None or client.closed.is_set():
            break  # shed: the GOAWAY may arrive between two streams
        try:
            sid = client.start("/t.S/Echo")
        except h2.exceptions.ProtocolError:
            break
        ids.append(sid)
        if not await send_partial(client, sid, 4 * MiB - 5, sent):
            break
    return ids


def server_side(srv: Server, client: RawClient) -> Optional[ServerConnection]:
    """The server's end of ``client``'s connection (None once it is gone)."""
    port = client.writer.get_extra_info("sockname")[1]
    ends = [c for c in srv._connections if c.peer == f"ipv4:127.0.0.1:{port}"]
    return ends[0] if ends else None


async def settled(srv: Server, client: RawClient, per_call: int) -> None:
    """Until the server holds ``per_call`` bytes for each call of ``client`` it still has, or
    closes it: it may read what the client wrote long after the writes returned (the kernel
    buffers hold megabytes); then until any shedding that caused is over. A stream opened
    while the budget was over its limit was refused, and holds nothing."""
    conn = server_side(srv, client)
    if conn is not None:
        await until(lambda: conn.closing or conn.held == per_call * len(conn.calls))
    await until(lambda: budget(srv).total <= BUDGET and budget(srv)._relief is None)


def gone(client: RawClient) -> bool:
    """Shed with GOAWAY, or closed under the client's feet."""
    return shed_by_budget(client) or (client.closed.is_set() and client.goaway is None)


def shed_by_budget(client: RawClient) -> bool:
    goaway = client.goaway
    return (
        goaway is not None
        and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        and goaway.additional_data == b"memory_budget"
    )


# -- options ---------------------------------------------------------------------------


def test_default_and_validation() -> None:
    assert Server()._options.max_buffered_bytes == 256 * MiB
    assert budget(Server()).limit == 256 * MiB
    assert budget(Server(max_buffered_bytes=None)).limit is None
    assert budget(Server(max_buffered_bytes=MiB)).limit == MiB
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_buffered_bytes"):
            Server(max_buffered_bytes=bad)
    for wrong in ("1", 1.5, True):
        with pytest.raises(TypeError, match="max_buffered_bytes"):
            Server(max_buffered_bytes=wrong)  # type: ignore[arg-type]


# -- partial request bodies ------------------------------------------------------------


async def test_partial_bodies_shed_the_heaviest_connections(served: Tuple[Server, int]) -> None:
    """Three connections of two 3 MiB partial bodies each (18 MiB against 8 MiB): the
    heaviest connection is shed each time the total goes over, its calls end with
    RESOURCE_EXHAUSTED; the last one stays, and a good client is served throughout."""
    srv, port = served

    async def scenario() -> None:
        good = await RawClient.connect("127.0.0.1", port)
        attackers = [await RawClient.connect("127.0.0.1", port) for _ in range(3)]
        for attacker in attackers:
            await partial_bodies(attacker, 2, 3 * MiB)
            await settled(srv, attacker, 3 * MiB - 5)
            resp = await good.call("/t.S/Echo", b"still served", timeout=5)
            assert resp.messages() == [b"still served"]
        # The first two were each the heaviest when the next pushed the total over.
        await until(lambda: shed_by_budget(attackers[0]) and shed_by_budget(attackers[1]))
        assert not shed_by_budget(attackers[2]) and attackers[2].goaway is None
        assert budget(srv).shed_count == 2
        for attacker in attackers[:2]:
            responses = [await attacker.response(sid, 5) for sid in list(attacker.streams)]
            assert [r.status for r in responses] == [RESOURCE_EXHAUSTED] * 2
            assert "memory budget" in responses[0].message
        # The third still holds its two partial bodies, and nothing else is counted.
        assert budget(srv).total == 2 * (3 * MiB - 5)
        for client in (*attackers, good):
            await client.close()
        await until(lambda: not srv._connections)
        assert budget(srv).total == 0

    await asyncio.wait_for(scenario(), 30)


async def test_partial_bodies_keep_memory_bounded(served: Tuple[Server, int]) -> None:
    """Six connections at once, each with four 2 MiB partial bodies (48 MiB in all): the
    total never goes far over the 8 MiB budget, RSS grows by well under what was sent, a
    Channel on another connection keeps being served, and all is released at the end."""
    srv, port = served

    async def scenario() -> None:
        async with Channel(f"127.0.0.1:{port}") as channel:
            rpc = channel.unary_unary("/t.S/Echo")
            assert await rpc(b"warm", timeout=5) == b"warm"
            sampler = Sampler(srv)
            attackers = [await RawClient.connect("127.0.0.1", port) for _ in range(6)]
            attacks = [asyncio.ensure_future(partial_bodies(a, 4, 2 * MiB)) for a in attackers]
            while not all(a.done() for a in attacks):
                assert await rpc(b"probe", timeout=5) == b"probe"
                await asyncio.sleep(0.01)
            await asyncio.gather(*attacks)
            for attacker in attackers:
                await settled(srv, attacker, 2 * MiB - 5)
            growth = await sampler.stop()
            assert budget(srv).shed_count >= 5  # 8 MiB each against 8 MiB: one may stay
            # Each shed client sees its GOAWAY, or a reset: a client still sending when its
            # connection is closed may get TCP's RST (unread data) before reading GOAWAY.
            await until(lambda: sum(map(gone, attackers)) == budget(srv).shed_count)
            assert any(map(shed_by_budget, attackers))
            # One socket read (64 KiB) per connection may land before the shedding.
            assert sampler.peak_total <= BUDGET + 7 * 64 * 1024
            assert growth < 32 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
            for attacker in attackers:
                await attacker.close()
            assert await rpc(b"after", timeout=5) == b"after"
        await until(lambda: not srv._connections)
        assert budget(srv).total == 0
        if malloc_trim() is not None:
            # What they held goes back to the OS (glibc would keep it): at most a second.
            await asyncio.sleep(1.2)
            gc.collect()
            kept = rss() - sampler.before
            assert kept < 8 * MiB, f"{kept / MiB:.1f} MiB kept after the attack"

    await asyncio.wait_for(scenario(), 60)


async def test_without_a_limit_bytes_are_counted_not_shed() -> None:
    srv = make_server(None)
    port = await srv.start("127.0.0.1:0")
    try:
        client = await RawClient.connect("127.0.0.1", port)
        await asyncio.wait_for(partial_bodies(client, 3, 3 * MiB), 10)
        await until(lambda: budget(srv).total >= 9 * MiB - 15)
        assert client.goaway is None and budget(srv).shed_count == 0
        await client.close()
        await until(lambda: not srv._connections)
        assert budget(srv).total == 0
    finally:
        await asyncio.wait_for(srv.stop(), 10)


async def test_new_streams_refused_while_over_budget(served: Tuple[Server, int]) -> None:
    """Bytes nobody can shed (a closing connection's transport buffer, here a stand-in)
    keep the total over the budget: new streams get REFUSED_STREAM until it is under."""
    srv, port = served

    class Closing:
        held = BUDGET + 1
        going_away = True

        def shed(self) -> None:
            raise AssertionError("a closing connection is not shed again")

    async def scenario() -> None:
        client = await RawClient.connect("127.0.0.1", port)
        assert (await client.call("/t.S/Echo", b"before")).messages() == [b"before"]
        stand_in = Closing()
        budget(srv).join(stand_in)
        budget(srv).total += stand_in.held
        try:
            resp = await client.call("/t.S/Echo", b"refused", timeout=5)
            assert resp.reset_code == ErrorCodes.REFUSED_STREAM
            budget(srv).relieve()  # nothing to shed: only the closing stand-in holds bytes
        finally:
            budget(srv).total -= stand_in.held
            budget(srv).leave(stand_in)
        assert (await client.call("/t.S/Echo", b"after")).messages() == [b"after"]
        assert client.goaway is None
        await client.close()

    await asyncio.wait_for(scenario(), 20)


# -- responses the client does not take --------------------------------------------------


async def zero_window_calls(client: RawClient, count: int, size: int) -> List[int]:
    ids = []
    for _ in range(count):
        sid = client.start("/t.S/Sized")
        client.conn.send_data(sid, grpc_message(str(size).encode()), end_stream=True)
        ids.append(sid)
    client.flush()
    await client.writer.drain()
    return ids


async def replies_settled(srv: Server, reader: RawClient) -> None:
    """Until the server has taken every call of ``reader`` (each waits on its window,
    counted) or answered it (REFUSED_STREAM while over the budget), or closed it; then
    until any shedding that caused is over."""
    conn = server_side(srv, reader)

    def taken() -> bool:
        if conn is None or conn.closing:
            return True
        for stream_id, stream in reader.streams.items():
            call = conn.calls.get(stream_id)
            if (call is None or not call.out_charged) and not stream.done.done():
                return False
        return True

    await until(taken)
    await until(lambda: not budget(srv).over and budget(srv)._relief is None)


async def test_zero_window_readers_are_shed(served: Tuple[Server, int]) -> None:
    """Four connections with SETTINGS_INITIAL_WINDOW_SIZE=0, asking for 100, 90, 80 and 70
    replies of 64 KiB that wait for flow control (21 MiB against 8 MiB): the heaviest are
    shed until the total is under the budget, their calls get RESOURCE_EXHAUSTED (or
    REFUSED_STREAM for those that arrived while it was over); RSS stays bounded, another
    connection is served, and nothing stays counted."""
    srv, port = served
    counts = (100, 90, 80, 70)

    async def scenario() -> None:
        good = await RawClient.connect("127.0.0.1", port)
        assert (await good.call("/t.S/Sized", b"70000")).messages() == [b"z" * 70000]
        sampler = Sampler(srv)
        readers = [await RawClient.connect("127.0.0.1", port, initial_window=0) for _ in range(4)]
        for reader, count in zip(readers, counts):
            await zero_window_calls(reader, count, 64 * 1024)
            await replies_settled(srv, reader)
            resp = await good.call("/t.S/Sized", b"100", timeout=5)
            assert resp.messages() == [b"z" * 100]
        growth = await sampler.stop()
        await until(lambda: sum(map(shed_by_budget, readers)) == budget(srv).shed_count)
        assert budget(srv).shed_count >= 2  # 21 MiB against 8: at least two must go
        assert budget(srv).total == sum(c.held for c in srv._connections) <= BUDGET
        for reader in readers:
            if not shed_by_budget(reader):
                continue
            responses = [await reader.response(s, 5) for s in reader.streams]
            outcomes = {r.status or r.reset_code for r in responses}
            assert outcomes <= {RESOURCE_EXHAUSTED, ErrorCodes.REFUSED_STREAM}
            assert RESOURCE_EXHAUSTED in outcomes
        assert sampler.peak_total <= BUDGET + counts[0] * (64 * 1024 + 5)
        assert growth < 24 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
        assert (await good.call("/t.S/Sized", b"70000")).messages() == [b"z" * 70000]
        for client in (*readers, good):
            await client.close()
        await until(lambda: not srv._connections)
        assert budget(srv).total == 0

    await asyncio.wait_for(scenario(), 60)


async def test_memory_goes_back_to_the_os_once_attackers_leave() -> None:
    """Zero-window readers holding 40 MiB of 100 KiB replies (heap blocks glibc keeps
    after they are freed; no limit, so nothing is shed) go away: within about a second
    the process is back near where it started, not tens of MiB larger."""
    if malloc_trim() is None:
        pytest.skip("needs glibc's malloc_trim")
    srv = make_server(None)
    port = await srv.start("127.0.0.1:0")

    async def scenario() -> None:
        gc.collect()
        before = rss()
        readers = [await RawClient.connect("127.0.0.1", port, initial_window=0) for _ in range(8)]
        for reader in readers:
            await zero_window_calls(reader, 50, 100 * 1024)
            await replies_settled(srv, reader)
        assert budget(srv).total == 400 * (100 * 1024 + 5)
        # Something allocated after them pins the top of the heap, as a server's work does.
        pinned = [bytes(200) for _ in range(20_000)]
        for reader in readers:
            await reader.close()
        await until(lambda: not srv._connections)
        assert budget(srv).total == 0
        await asyncio.sleep(1.2)
        gc.collect()
        kept = rss() - before
        assert kept < 12 * MiB, f"{kept / MiB:.1f} MiB kept after the readers left"
        del pinned

    try:
        await asyncio.wait_for(scenario(), 30)
    finally:
        await asyncio.wait_for(srv.stop(), 10)


class SlowReader:
    """A client that grants the largest windows, asks for big replies and then does not
    read the socket at all (until told to read everything)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)

    @classmethod
    async def connect(cls, port: int) -> SlowReader:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self = cls(reader, writer)
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        self.conn.increment_flow_control_window(2**31 - 1 - 65535)
        writer.write(self.conn.data_to_send())
        await writer.drain()
        return self

    def ask(self, count: int, size: int) -> None:
        for _ in range(count):
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_headers(
                sid,
                [
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b":path", b"/t.S/Sized"),
                    (b":authority", b"x"),
                    (b"content-type", b"application/grpc"),
                ],
            )
            self.conn.send_data(sid, grpc_message(str(size).encode()), end_stream=True)
        self.writer.write(self.conn.data_to_send())

    async def read_all(self, timeout: float) -> List[Tuple[int, bytes]]:
        """Read until the server closes; (error code, debug data) of its GOAWAY frames."""
        chunks = []
        while True:
            try:
                chunk = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
            except ConnectionError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        self.writer.close()
        data = b"".join(chunks)
        out, pos = [], 0
        while pos + 9 <= len(data):
            length = int.from_bytes(data[pos : pos + 3], "big")
            if data[pos + 3] == GOAWAY:
                payload = data[pos + 9 : pos + 9 + length]
                out.append((int.from_bytes(payload[4:8], "big"), payload[8:]))
            pos += 9 + length
        return out


async def test_slow_reader_keeps_the_transport_bounded_and_is_shed(
    served: Tuple[Server, int],
) -> None:
    """A client with 2 GiB windows asks for eight 4 MiB replies and reads nothing: the
    server's transport buffer stays near its high-water mark (the replies wait, counted
    in the budget, instead of piling up in it), the connection is shed, and the GOAWAY
    is there once the client reads."""
    srv, port = served

    async def scenario() -> None:
        slow = await SlowReader.connect(port)
        await until(lambda: len(srv._connections) == 1)
        (conn,) = srv._connections
        transport = conn.transport
        assert transport is not None
        slow.ask(8, 4 * MiB)
        largest = 0

        def shed() -> bool:
            nonlocal largest
            largest = max(largest, transport.get_write_buffer_size())
            return budget(srv).shed_count == 1

        await until(shed)
        largest = max(largest, transport.get_write_buffer_size())
        assert largest < 2 * MiB, f"transport buffer reached {largest / MiB:.1f} MiB"
        good = await RawClient.connect("127.0.0.1", port)
        assert (await good.call("/t.S/Sized", b"1000")).messages() == [b"z" * 1000]
        goaways = await slow.read_all(10)
        assert goaways == [(ErrorCodes.ENHANCE_YOUR_CALM, b"memory_budget")]
        await good.close()
        await until(lambda: not srv._connections)
        assert budget(srv).total == 0

    await asyncio.wait_for(scenario(), 60)


# -- ordinary calls leave nothing counted ----------------------------------------------


async def test_ordinary_calls_leave_nothing_counted(served: Tuple[Server, int]) -> None:
    """Unary and streaming calls of all sizes, cancellations, deadlines and resets mid-
    body: while the connections are still open, the budget's total is back at 0."""
    srv, port = served

    async def scenario() -> None:
        async with Channel(f"127.0.0.1:{port}") as channel:
            echo_rpc = channel.unary_unary("/t.S/Echo")
            sized_rpc = channel.unary_unary("/t.S/Sized")
            stream_rpc = channel.unary_stream("/t.S/Stream")
            total_rpc = channel.stream_unary("/t.S/Total")
            upper_rpc = channel.stream_stream("/t.S/Upper")
            for _ in range(200):
                assert await echo_rpc(b"x" * 100, timeout=5) == b"x" * 100
            payloads = [b"p" * n for n in (0, 1, 100, 70_000, 3 * MiB)]
            await asyncio.gather(*(echo_rpc(p, timeout=10) for p in payloads * 4))
            assert len(await sized_rpc(b"%d" % (3 * MiB), timeout=10)) == 3 * MiB
            replies = [r async for r in stream_rpc(b"20x100000", timeout=10)]
            assert len(replies) == 20
            assert await total_rpc(iter([b"a" * 70_000] * 30), timeout=10) == b"2100000"
            chat = upper_rpc(timeout=10)
            for word in (b"ab", b"c" * 200_000):
                await chat.write(word)
                assert await chat.read() == word.upper()
            await chat.done_writing()
            assert await chat.read() is EOF
            # Calls that end early: a cancelled stream, a deadline, a stopped reader.
            call = stream_rpc(b"1000x65536", timeout=10)
            async for _ in call:
                break
            call.cancel()
            with pytest.raises(GrpcError) as failed:
                async for _ in stream_rpc(b"1000x65536", timeout=0.05):
                    await asyncio.sleep(0.001)
            assert failed.value.code() == StatusCode.DEADLINE_EXCEEDED
            raw = await RawClient.connect("127.0.0.1", port)
            sid = raw.start("/t.S/Echo")
            await send_partial(raw, sid, 4 * MiB - 5, MiB)
            await until(lambda: budget(srv).total >= MiB - 5)
            raw.reset(sid)
            sid = raw.start("/t.S/Echo", grpc_timeout="200m")
            await send_partial(raw, sid, 4 * MiB - 5, MiB)
            assert (await raw.response(sid, 5)).status == int(StatusCode.DEADLINE_EXCEEDED)
            sid = raw.start("/t.S/Total")
            await send_partial(raw, sid, 2 * MiB, MiB)
            raw.reset(sid)
            await until(lambda: budget(srv).total == 0)
            assert all(c.held == 0 for c in srv._connections)
            assert all(not c.calls for c in srv._connections)
            await raw.close()
        await until(lambda: not srv._connections)
        assert budget(srv).total == 0 and budget(srv).shed_count == 0

    await asyncio.wait_for(scenario(), 60)
