"""Our Server's streaming kinds, driven by our Channel over loopback.

Each kind with each handler shape (async generator, ``context.write``, request iterator,
``context.read``), statuses and metadata around streams, a handler that raises or is
cancelled mid-stream, deadlines, flow control holding a handler back in both directions
(a client that stops reading, a handler that stops reading), window options, and the
mistakes a handler can make (non-bytes replies, read/write on the wrong kind).
"""

from __future__ import annotations

import asyncio
import gc
import resource
from typing import Any, AsyncIterator, Dict, List, Optional

import pytest

from wove_h2grpc import EOF, Channel, GrpcError, Server, StatusCode

T = 10.0  # bound for anything that should finish promptly
KiB = 1024
MiB = 1024 * KiB


class Record:
    """What the handlers saw, for the assertions: started/finished flags, counts, events."""

    def __init__(self) -> None:
        self.yielded = 0
        self.read = 0
        self.cancelled = asyncio.Event()
        self.closed = asyncio.Event()
        self.context_cancelled: Optional[bool] = None
        self.events: List[str] = []


async def _count(request: bytes, context: Any) -> AsyncIterator[bytes]:
    """unary_stream as an async generator: ``b"<n>"`` -> n numbered replies."""
    for i in range(int(request)):
        yield b"%08d" % i


async def _count_by_write(request: bytes, context: Any) -> None:
    """unary_stream as a coroutine that writes its replies."""
    for i in range(int(request)):
        await context.write(b"%08d" % i)


async def _sum_iterator(request_iterator: AsyncIterator[bytes], context: Any) -> bytes:
    total = count = 0
    async for request in request_iterator:
        total += len(request)
        count += 1
    return b"%d %d" % (count, total)


async def _sum_read(request_iterator: AsyncIterator[bytes], context: Any) -> bytes:
    total = count = 0
    while True:
        request = await context.read()
        if request is EOF:
            return b"%d %d" % (count, total)
        total += len(request)
        count += 1


async def _echo_each(request_iterator: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in request_iterator:
        yield request


async def _echo_by_read_write(request_iterator: AsyncIterator[bytes], context: Any) -> None:
    while True:
        request = await context.read()
        if request is EOF:
            return
        await context.write(request.upper())


def _handlers(rec: Record) -> Dict[str, Any]:
    async def fail_after(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield b"%d" % i
        raise RuntimeError("boom after the replies")

    async def status_after(request: bytes, context: Any) -> AsyncIterator[bytes]:
        await context.send_initial_metadata([("x-initial", "first")])
        yield b"one"
        yield b"two"
        context.set_trailing_metadata([("x-trailing", "last")])
        context.set_code(StatusCode.FAILED_PRECONDITION)
        context.set_details("two were enough")

    async def abort_after(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"only"
        await context.abort(StatusCode.PERMISSION_DENIED, "no more for you")

    async def forever(request: bytes, context: Any) -> AsyncIterator[bytes]:
        try:
            while True:
                rec.yielded += 1
                yield b"x" * int(request or b"1")
        finally:
            rec.context_cancelled = context.cancelled()
            rec.closed.set()

    async def sleeper(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"awake"
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            rec.context_cancelled = context.cancelled()
            rec.cancelled.set()
            raise
        yield b"never"

    async def no_reader(request_iterator: AsyncIterator[bytes], context: Any) -> bytes:
        await asyncio.sleep(60)  # never reads: the client's writes must stop after a window
        return b""

    async def slow_reader(request_iterator: AsyncIterator[bytes], context: Any) -> bytes:
        async for _request in request_iterator:
            rec.read += 1
            await asyncio.sleep(0)
        return b"%d" % rec.read

    async def first_only(request_iterator: AsyncIterator[bytes], context: Any) -> bytes:
        first = await context.read()
        return b"first=" + first

    async def not_bytes(request: bytes, context: Any) -> AsyncIterator[Any]:
        yield b"fine"
        yield "a str"

    async def not_iterable(request: bytes, context: Any) -> int:
        return 42

    def sync_list(request: bytes, context: Any) -> List[bytes]:
        return [b"a", b"b", b"c"]

    async def wrong_calls(request: bytes, context: Any) -> bytes:
        problems = []
        try:
            await context.read()
        except RuntimeError as exc:
            problems.append(str(exc))
        try:
            await context.write(b"x")
        except RuntimeError as exc:
            problems.append(str(exc))
        return " | ".join(problems).encode()

    async def write_str(request: bytes, context: Any) -> None:
        await context.write("text")

    async def bidi_cancel(request_iterator: AsyncIterator[bytes], context: Any) -> Any:
        try:
            async for request in request_iterator:
                yield request
        except asyncio.CancelledError:
            rec.context_cancelled = context.cancelled()
            rec.cancelled.set()
            raise

    return {
        "/s.S/Count": (_count, "unary_stream"),
        "/s.S/CountByWrite": (_count_by_write, "unary_stream"),
        "/s.S/SumIterator": (_sum_iterator, "stream_unary"),
        "/s.S/SumRead": (_sum_read, "stream_unary"),
        "/s.S/Echo": (_echo_each, "stream_stream"),
        "/s.S/EchoReadWrite": (_echo_by_read_write, "stream_stream"),
        "/s.S/FailAfter": (fail_after, "unary_stream"),
        "/s.S/StatusAfter": (status_after, "unary_stream"),
        "/s.S/AbortAfter": (abort_after, "unary_stream"),
        "/s.S/Forever": (forever, "unary_stream"),
        "/s.S/Sleeper": (sleeper, "unary_stream"),
        "/s.S/NoReader": (no_reader, "stream_unary"),
        "/s.S/SlowReader": (slow_reader, "stream_unary"),
        "/s.S/FirstOnly": (first_only, "stream_unary"),
        "/s.S/NotBytes": (not_bytes, "unary_stream"),
        "/s.S/NotIterable": (not_iterable, "unary_stream"),
        "/s.S/SyncList": (sync_list, "unary_stream"),
        "/s.S/WrongCalls": (wrong_calls, "unary_unary"),
        "/s.S/WriteStr": (write_str, "unary_stream"),
        "/s.S/BidiCancel": (bidi_cancel, "stream_stream"),
    }


@pytest.fixture
async def rec() -> Record:
    return Record()  # on the test's loop: asyncio.Event binds to it at creation on 3.9


async def _serve(rec: Record, **options: Any) -> Server:
    server = Server(**options)
    for path, (handler, kind) in _handlers(rec).items():
        server.add_method(path, handler, kind=kind)
    return server


@pytest.fixture
async def target(rec: Record) -> AsyncIterator[str]:
    server = await _serve(rec)
    port = await server.start("127.0.0.1:0")
    yield f"127.0.0.1:{port}"
    await server.stop(grace=1.0)


async def _replies(call: Any) -> List[bytes]:
    async def collect() -> List[bytes]:
        return [reply async for reply in call]

    return await asyncio.wait_for(collect(), T)


# ------------------------------------------------------------------------- the four kinds


@pytest.mark.parametrize("method", ["/s.S/Count", "/s.S/CountByWrite"])
async def test_server_stream_handler_shapes(target: str, method: str) -> None:
    async with Channel(target) as ch:
        call = ch.unary_stream(method)(b"500", timeout=T)
        assert await _replies(call) == [b"%08d" % i for i in range(500)]
        assert await call.code() is StatusCode.OK


async def test_empty_server_stream_is_trailers_only(target: str) -> None:
    async with Channel(target) as ch:
        call = ch.unary_stream("/s.S/Count")(b"0", timeout=T)
        assert await _replies(call) == []
        assert await call.code() is StatusCode.OK


async def test_sync_iterable_of_replies(target: str) -> None:
    async with Channel(target) as ch:
        assert await _replies(ch.unary_stream("/s.S/SyncList")(b"", timeout=T)) == [
            b"a",
            b"b",
            b"c",
        ]


@pytest.mark.parametrize("method", ["/s.S/SumIterator", "/s.S/SumRead"])
async def test_client_stream_handler_shapes(target: str, method: str) -> None:
    async with Channel(target) as ch:
        call = ch.stream_unary(method)(timeout=T)
        for size in (1, 10, 100, 100_000):
            await asyncio.wait_for(call.write(b"r" * size), T)
        await call.done_writing()
        assert await asyncio.wait_for(call, T) == b"4 100111"
        # From an iterator, and an empty stream.
        assert await asyncio.wait_for(ch.stream_unary(method)(iter([b"ab", b"c"])), T) == b"2 3"
        assert await asyncio.wait_for(ch.stream_unary(method)(iter(())), T) == b"0 0"


@pytest.mark.parametrize(("method", "upper"), [("/s.S/Echo", False), ("/s.S/EchoReadWrite", True)])
async def test_bidi_ping_pong(target: str, method: str, upper: bool) -> None:
    async with Channel(target) as ch:
        call = ch.stream_stream(method)(timeout=T)
        for i in range(200):
            message = b"ping %d" % i
            await call.write(message)
            assert await asyncio.wait_for(call.read(), T) == (message.upper() if upper else message)
        await call.done_writing()
        assert await asyncio.wait_for(call.read(), T) is EOF
        assert await call.code() is StatusCode.OK


async def test_bidi_many_concurrent_streams_on_one_connection(target: str) -> None:
    async with Channel(target) as ch:

        async def one(n: int) -> List[bytes]:
            requests = [b"%d-%d" % (n, i) for i in range(20)]
            return await _replies(ch.stream_stream("/s.S/Echo")(iter(requests), timeout=T))

        results = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(100))), 30)
        assert all(r == [b"%d-%d" % (n, i) for i in range(20)] for n, r in enumerate(results))


async def test_gzip_both_ways_on_a_stream(target: str) -> None:
    async with Channel(target, compression="gzip") as ch:
        requests = [bytes(1000), b"y" * 5000]
        call = ch.stream_stream("/s.S/Echo")(iter(requests), timeout=T)
        assert await _replies(call) == requests


# -------------------------------------------------------------------- statuses and errors


async def test_handler_raising_mid_stream_ends_with_unknown_after_the_replies(target: str) -> None:
    async with Channel(target) as ch:
        call = ch.unary_stream("/s.S/FailAfter")(b"3", timeout=T)
        got = [await asyncio.wait_for(call.read(), T) for _ in range(3)]
        assert got == [b"0", b"1", b"2"]
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call.read(), T)
        assert info.value.code() is StatusCode.UNKNOWN
        assert info.value.details() == "Exception calling application"  # text withheld


async def test_set_code_and_metadata_after_replies(target: str) -> None:
    async with Channel(target) as ch:
        call = ch.unary_stream("/s.S/StatusAfter")(b"", timeout=T)
        assert await asyncio.wait_for(call.read(), T) == b"one"
        assert ("x-initial", "first") in await call.initial_metadata()
        assert await asyncio.wait_for(call.read(), T) == b"two"
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call.read(), T)
        assert info.value.code() is StatusCode.FAILED_PRECONDITION
        assert info.value.details() == "two were enough"
        assert ("x-trailing", "last") in info.value.trailing_metadata()
        assert await call.code() is StatusCode.FAILED_PRECONDITION


async def test_abort_mid_stream(target: str) -> None:
    async with Channel(target) as ch:
        call = ch.unary_stream("/s.S/AbortAfter")(b"", timeout=T)
        assert await asyncio.wait_for(call.read(), T) == b"only"
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call.read(), T)
        assert info.value.code() is StatusCode.PERMISSION_DENIED
        assert info.value.details() == "no more for you"


@pytest.mark.parametrize(
    ("method", "fragment"),
    [
        ("/s.S/NotBytes", "handler yielded str, not bytes"),
        ("/s.S/NotIterable", "handler returned int, not an iterator of bytes"),
        ("/s.S/WriteStr", "Exception calling application"),
    ],
)
async def test_handler_mistakes_end_the_call_clearly(
    target: str, method: str, fragment: str
) -> None:
    async with Channel(target) as ch:
        with pytest.raises(GrpcError) as info:
            await _replies(ch.unary_stream(method)(b"", timeout=T))
        assert info.value.code() in (StatusCode.INTERNAL, StatusCode.UNKNOWN)
        assert fragment in info.value.details()


async def test_read_and_write_belong_to_the_streaming_kinds(target: str) -> None:
    async with Channel(target) as ch:
        reply = await asyncio.wait_for(ch.unary_unary("/s.S/WrongCalls")(b""), T)
    assert b"read() is for request-streaming methods" in reply
    assert b"write() is for response-streaming methods" in reply


async def test_handler_that_ends_before_the_request_stream(target: str) -> None:
    """A stream_unary handler may answer before the client half-closes (RFC 9113 8.1)."""
    async with Channel(target) as ch:
        call = ch.stream_unary("/s.S/FirstOnly")(timeout=T)
        await call.write(b"A")
        assert await asyncio.wait_for(call, T) == b"first=A"
        assert await call.code() is StatusCode.OK


async def test_unknown_streaming_method_is_unimplemented(target: str) -> None:
    async with Channel(target) as ch:
        with pytest.raises(GrpcError) as info:
            await _replies(ch.stream_stream("/s.S/Nope")(iter([b"x"]), timeout=T))
        assert info.value.code() is StatusCode.UNIMPLEMENTED


async def test_unary_method_rejects_a_second_request_message(target: str) -> None:
    async with Channel(target) as ch:
        call = ch.stream_unary("/s.S/WrongCalls")(iter([b"a", b"b"]), timeout=T)
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call, T)
        assert info.value.code() is StatusCode.UNIMPLEMENTED


def test_add_method_checks_the_kind() -> None:
    server = Server()
    with pytest.raises(ValueError, match="kind must be one of"):
        server.add_method("/s.S/M", _count, kind="server_stream")
    with pytest.raises(TypeError):
        server.add_method("/s.S/M", _count, kind=2)  # type: ignore[arg-type]


# ---------------------------------------------------------- cancellation and deadlines


async def test_client_cancel_cancels_the_handler(target: str, rec: Record) -> None:
    async with Channel(target) as ch:
        call = ch.unary_stream("/s.S/Sleeper")(b"", timeout=T)
        assert await asyncio.wait_for(call.read(), T) == b"awake"
        assert call.cancel()
        await asyncio.wait_for(rec.cancelled.wait(), T)
        assert rec.context_cancelled is True


async def test_bidi_cancel_cancels_the_handler(target: str, rec: Record) -> None:
    async with Channel(target) as ch:
        call = ch.stream_stream("/s.S/BidiCancel")(timeout=T)
        await call.write(b"hello")
        assert await asyncio.wait_for(call.read(), T) == b"hello"
        call.cancel()
        await asyncio.wait_for(rec.cancelled.wait(), T)
        assert rec.context_cancelled is True


async def test_deadline_ends_a_server_stream_and_cancels_the_handler(
    target: str, rec: Record
) -> None:
    async with Channel(target) as ch:
        call = ch.unary_stream("/s.S/Sleeper")(b"", timeout=0.5)
        assert await asyncio.wait_for(call.read(), T) == b"awake"
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call.read(), T)
        assert info.value.code() is StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(rec.cancelled.wait(), T)
        assert rec.context_cancelled is True


async def test_server_stop_ends_a_stream_after_the_grace(rec: Record) -> None:
    server = await _serve(rec)
    port = await server.start("127.0.0.1:0")
    async with Channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_stream("/s.S/Sleeper")(b"", timeout=T)
        assert await asyncio.wait_for(call.read(), T) == b"awake"
        await asyncio.wait_for(server.stop(grace=0.2), T)
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call.read(), T)
        assert info.value.code() in (StatusCode.CANCELLED, StatusCode.UNAVAILABLE)
        await asyncio.wait_for(rec.cancelled.wait(), T)


# ---------------------------------------------------------------------- flow control


async def test_client_that_stops_reading_stops_the_handler(target: str, rec: Record) -> None:
    """The handler's yields stop after about the client's window: backpressure, not buffering."""
    async with Channel(target, initial_window_size=256 * KiB) as ch:
        call = ch.unary_stream("/s.S/Forever")(b"%d" % (16 * KiB), timeout=30)
        assert len(await asyncio.wait_for(call.read(), T)) == 16 * KiB
        await asyncio.sleep(0.5)
        held = rec.yielded
        print(f"held after one read: {held} messages")
        # The window (16 messages) plus the low-water reserve the reader acknowledged early
        # and the message each side has in hand.
        assert 16 <= held <= 16 + 64 // 16 + 4, held
        await asyncio.sleep(0.3)
        assert rec.yielded == held  # still held
        for _ in range(100):
            assert len(await asyncio.wait_for(call.read(), T)) == 16 * KiB
        await asyncio.sleep(0.2)
        assert rec.yielded >= held + 100  # reading let it go on
        call.cancel()
        await asyncio.wait_for(rec.closed.wait(), T)
        assert rec.context_cancelled is True


async def test_handler_that_stops_reading_stops_the_client(rec: Record) -> None:
    """A request stream's window reopens only as the handler reads it."""
    server = await _serve(rec, initial_window_size=128 * KiB, connection_window_size=1 * MiB)
    port = await server.start("127.0.0.1:0")
    try:
        async with Channel(f"127.0.0.1:{port}") as ch:
            call = ch.stream_unary("/s.S/NoReader")(timeout=30)
            written = 0
            chunk = b"w" * (16 * KiB)

            async def write_all() -> None:
                nonlocal written
                for _ in range(1000):
                    await call.write(chunk)
                    written += 1

            writer = asyncio.ensure_future(write_all())
            await asyncio.sleep(1.0)
            assert not writer.done()
            # The stream window (8 messages) and the 64 KiB the server takes before holding
            # back, plus one write in flight on the client.
            print(f"writes before the handler's window closed: {written}")
            assert 8 <= written <= 8 + 4 + 2, written
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(writer, T)
    finally:
        await server.stop(grace=0)


async def test_slow_reading_handler_gets_every_request(rec: Record) -> None:
    server = await _serve(rec, initial_window_size=65535, connection_window_size=65535)
    port = await server.start("127.0.0.1:0")
    try:
        async with Channel(f"127.0.0.1:{port}") as ch:
            requests = [bytes([i % 256]) * (8 * KiB) for i in range(500)]
            call = ch.stream_unary("/s.S/SlowReader")(iter(requests), timeout=30)
            assert await asyncio.wait_for(call, 30) == b"500"
    finally:
        await server.stop(grace=0)


def test_server_window_options_are_checked() -> None:
    with pytest.raises(ValueError, match="initial_window_size"):
        Server(initial_window_size=1000)
    with pytest.raises(TypeError, match="connection_window_size"):
        Server(connection_window_size="big")  # type: ignore[arg-type]


def _rss_mib() -> float:
    """This process's resident set size now (Linux /proc; the peak counter would hide a
    growth below an earlier test's peak)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / MiB


async def test_slow_consumer_of_a_large_stream_keeps_memory_bounded(rec: Record) -> None:
    """256 MiB through a 1 MiB window, read slowly: peak RSS grows by about the windows."""
    server = await _serve(rec)
    port = await server.start("127.0.0.1:0")
    try:
        async with Channel(f"127.0.0.1:{port}", initial_window_size=1 * MiB) as ch:
            call = ch.unary_stream("/s.S/Forever")(b"%d" % (64 * KiB), timeout=120)
            for _ in range(16):  # warm up: buffers and frames of the steady state exist
                await asyncio.wait_for(call.read(), T)
            gc.collect()
            before = peak = _rss_mib()
            received = 0
            for i in range(4096):
                received += len(await asyncio.wait_for(call.read(), T))
                if i % 256 == 0:
                    await asyncio.sleep(0.05)  # a consumer that keeps falling behind
                    peak = max(peak, _rss_mib())
            grown = peak - before
            call.cancel()
        print(f"RSS growth reading 256 MiB slowly: {grown:.1f} MiB")
        assert received == 256 * MiB
        # Both sides in this process: the 1 MiB window, h2's buffers and the allocator's
        # slack; a stream buffered whole would grow by hundreds of MiB.
        assert grown < 32, grown
    finally:
        await server.stop(grace=0)
