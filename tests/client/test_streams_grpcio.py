"""Our Channel's streaming calls and call objects against a real grpc.aio server.

The server is ``tests/grpcio_server.py`` in its own process (Count: server stream, Collect:
client stream, Bidi: echo stream, Flood: a stream as fast as flow control allows). Covered:
each kind through ``read()``/``async for``/``write()``/``done_writing()`` and through request
iterators (sync and async), errors after messages, cancellation from either API, deadlines,
size limits, compression, flow control holding a fast server back from a reader that stops
reading (with the default and a configured window), and the call object's accessors.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, AsyncIterator, Iterator, List

import pytest
from _support import HelperProcess, grpcio_python, start_helper

from wove_h2grpc import EOF, Channel, GrpcError, StatusCode

T = 10.0  # bound for anything that should finish promptly
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[HelperProcess]:
    proc = start_helper("grpcio_server.py", ["--bind", "127.0.0.1:0"], python=grpcio_python())
    yield proc
    proc.stop()


def _target(server: HelperProcess) -> str:
    return f"127.0.0.1:{server.port}"


def _count(n: int, **spec: Any) -> bytes:
    return json.dumps({"count": n, **spec}).encode()


async def _stats(channel: Channel) -> Any:
    return json.loads(await channel.unary_unary("/test.Test/Stats")(b"", timeout=T))


# ------------------------------------------------------------------ server streams


async def test_server_stream_async_for_with_metadata(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.unary_stream("/test.Test/Count")(
            _count(1000, size=100), metadata=[("x-tag", "seven")], timeout=T
        )
        got: List[bytes] = []

        async def consume() -> None:
            async for reply in call:
                got.append(reply)

        await asyncio.wait_for(consume(), T)
        assert [int(m[:8]) for m in got] == list(range(1000))
        assert all(len(m) == 100 for m in got)
        assert ("x-tag", "seven") in await call.initial_metadata()
        assert ("x-tag", "seven") in await call.trailing_metadata()
        assert await call.code() is StatusCode.OK
        assert await call.details() == ""
        assert call.done() and not call.cancelled()


async def test_server_stream_read_until_eof(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.unary_stream("/test.Test/Count")(_count(3), timeout=T)
        replies = [await asyncio.wait_for(call.read(), T) for _ in range(3)]
        assert replies == [b"00000000", b"00000001", b"00000002"]
        assert await asyncio.wait_for(call.read(), T) is EOF
        assert await asyncio.wait_for(call.read(), T) is EOF  # stays at EOF


async def test_empty_server_stream(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.unary_stream("/test.Test/Count")(_count(0), timeout=T)
        assert await asyncio.wait_for(call.read(), T) is EOF
        assert await call.code() is StatusCode.OK


async def test_error_after_messages_delivers_the_messages_first(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.unary_stream("/test.Test/Count")(
            _count(3, code=int(StatusCode.NOT_FOUND), details="no more"), timeout=T
        )
        got = []
        with pytest.raises(GrpcError) as info:
            async for reply in call:
                got.append(reply)
        assert len(got) == 3
        assert info.value.code() is StatusCode.NOT_FOUND
        assert info.value.details() == "no more"
        assert await call.code() is StatusCode.NOT_FOUND
        assert await call.details() == "no more"
        with pytest.raises(GrpcError):
            await call.read()  # the error again, not EOF


async def test_server_stream_deadline_after_some_messages(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.unary_stream("/test.Test/Count")(_count(100, delay=0.2), timeout=0.5)
        got = []
        started = time.monotonic()
        with pytest.raises(GrpcError) as info:
            async for reply in call:
                got.append(reply)
        assert info.value.code() is StatusCode.DEADLINE_EXCEEDED
        assert 1 <= len(got) <= 4
        assert time.monotonic() - started < 3.0
        assert call.time_remaining() == 0.0


async def test_cancel_mid_stream_resets_the_stream_and_cancels_the_handler(
    server: HelperProcess,
) -> None:
    async with Channel(_target(server)) as ch:
        before = (await _stats(ch)).get("count_cancelled", 0)
        call = ch.unary_stream("/test.Test/Count")(_count(1000, delay=0.05), timeout=T)
        assert await asyncio.wait_for(call.read(), T) == b"00000000"
        done: List[Any] = []
        call.add_done_callback(done.append)
        assert call.cancel() is True
        assert call.cancel() is False  # once
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call.read(), T)
        assert call.cancelled() and call.done()
        assert await call.code() is StatusCode.CANCELLED
        assert done == [call]
        # The server saw the RST_STREAM and cancelled the handler (grpc.aio notices it on
        # its own schedule: bounded generously for a loaded 2-core machine).
        deadline = time.monotonic() + 15.0
        while (await _stats(ch)).get("count_cancelled", 0) <= before:
            assert time.monotonic() < deadline, "the server handler was not cancelled"
            await asyncio.sleep(0.05)


async def test_cancelling_the_reading_task_cancels_the_call(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.unary_stream("/test.Test/Count")(_count(1000, delay=1.0), timeout=T)
        assert await asyncio.wait_for(call.read(), T) == b"00000000"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call.read(), 0.2)  # the next one is 1 s away
        assert call.cancelled()
        assert await call.code() is StatusCode.CANCELLED


async def test_receive_limit_applies_per_stream_message(server: HelperProcess) -> None:
    async with Channel(_target(server), max_receive_message_length=1000) as ch:
        call = ch.unary_stream("/test.Test/Count")(_count(5, size=2000), timeout=T)
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call.read(), T)
        assert info.value.code() is StatusCode.RESOURCE_EXHAUSTED


# ------------------------------------------------------------------ client streams


async def test_client_stream_write_and_done_writing(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.stream_unary("/test.Test/Collect")(timeout=T)
        for i in range(100):
            await asyncio.wait_for(call.write(b"m" * i), T)
        await call.done_writing()
        reply = json.loads(await asyncio.wait_for(call, T))
        assert reply == {"count": 100, "bytes": sum(range(100))}
        with pytest.raises(asyncio.InvalidStateError):
            await call.write(b"late")
        assert await call.code() is StatusCode.OK


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_client_stream_from_an_iterator(server: HelperProcess, flavour: str) -> None:
    def sync_requests() -> Iterator[bytes]:
        for _ in range(50):
            yield b"r" * 1000

    async def async_requests() -> AsyncIterator[bytes]:
        for _ in range(50):
            await asyncio.sleep(0)
            yield b"r" * 1000

    requests = sync_requests() if flavour == "sync" else async_requests()
    async with Channel(_target(server)) as ch:
        reply = await asyncio.wait_for(ch.stream_unary("/test.Test/Collect")(requests), T)
        assert json.loads(reply) == {"count": 50, "bytes": 50_000}


async def test_empty_client_stream(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.stream_unary("/test.Test/Collect")(timeout=T)
        await call.done_writing()
        assert json.loads(await asyncio.wait_for(call, T)) == {"count": 0, "bytes": 0}
        assert json.loads(
            await asyncio.wait_for(ch.stream_unary("/test.Test/Collect")(iter(())), T)
        ) == {"count": 0, "bytes": 0}


async def test_large_client_stream_under_flow_control(server: HelperProcess) -> None:
    """64 MiB in 1 MiB messages: more than any window, so writes wait for WINDOW_UPDATEs."""
    async with Channel(_target(server)) as ch:
        call = ch.stream_unary("/test.Test/Collect")(timeout=30)
        chunk = b"z" * MiB
        for _ in range(64):
            await asyncio.wait_for(call.write(chunk), 30)
        await call.done_writing()
        assert json.loads(await asyncio.wait_for(call, 30)) == {"count": 64, "bytes": 64 * MiB}


async def test_server_ends_a_client_stream_early(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.stream_unary("/test.Test/Collect")(timeout=T)
        await call.write(b"a")
        await call.write(b"fail")
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call, T)
        assert info.value.code() is StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "failed after 1"
        with pytest.raises(GrpcError):
            await call.write(b"after the end")


async def test_failing_request_iterator_ends_the_call(server: HelperProcess) -> None:
    def requests() -> Iterator[bytes]:
        yield b"one"
        raise ValueError("no more requests")

    async with Channel(_target(server)) as ch:
        call = ch.stream_unary("/test.Test/Collect")(requests(), timeout=T)
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call, T)
        assert info.value.code() is StatusCode.CANCELLED
        assert "request iterator raised ValueError: no more requests" in info.value.details()
        with pytest.raises(RuntimeError):
            await call.write(b"x")  # the iterator owns the request stream


async def test_send_limit_fails_the_stream_call(server: HelperProcess) -> None:
    async with Channel(_target(server), max_send_message_length=10) as ch:
        call = ch.stream_unary("/test.Test/Collect")(timeout=T)
        await call.write(b"small")
        with pytest.raises(GrpcError) as info:
            await call.write(b"far too large for the limit")
        assert info.value.code() is StatusCode.RESOURCE_EXHAUSTED
        assert await asyncio.wait_for(call.code(), T) is StatusCode.RESOURCE_EXHAUSTED


# ------------------------------------------------------------------------ bidi


async def test_bidi_ping_pong(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.stream_stream("/test.Test/Bidi")(timeout=T)
        for i in range(200):
            message = f"ping {i}".encode()
            await asyncio.wait_for(call.write(message), T)
            assert await asyncio.wait_for(call.read(), T) == message
        await call.done_writing()
        assert await asyncio.wait_for(call.read(), T) is EOF
        assert await call.code() is StatusCode.OK


@pytest.mark.parametrize("compression", [None, "gzip"])
async def test_bidi_from_an_iterator(server: HelperProcess, compression: Any) -> None:
    messages = [os.urandom(10) * (i + 1) for i in range(100)]
    async with Channel(_target(server)) as ch:
        call = ch.stream_stream("/test.Test/Bidi")(
            iter(messages), timeout=T, compression=compression
        )

        async def consume() -> List[bytes]:
            return [reply async for reply in call]

        assert await asyncio.wait_for(consume(), T) == messages


async def test_bidi_cancel_from_another_task(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.stream_stream("/test.Test/Bidi")(timeout=T)
        reader = asyncio.ensure_future(call.read())
        await asyncio.sleep(0.1)
        assert not reader.done()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(reader, T)
        assert await call.code() is StatusCode.CANCELLED
        # The channel goes on serving calls.
        assert await ch.unary_unary("/test.Test/Echo")(b"still", timeout=T) == b"still"


async def test_many_concurrent_streams(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        rpc = ch.stream_stream("/test.Test/Bidi")

        async def one(i: int) -> None:
            call = rpc(timeout=T)
            for j in range(10):
                await call.write(b"%d-%d" % (i, j))
                assert await call.read() == b"%d-%d" % (i, j)
            await call.done_writing()
            assert await call.read() is EOF

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(50))), 30)


# ----------------------------------------------------------------- flow control


@pytest.mark.parametrize("window", [None, 1 * MiB])
async def test_reader_that_stops_stops_the_sender(server: HelperProcess, window: Any) -> None:
    """A reader that stops reading holds the server back after about one window; reading
    again lets it go on."""
    options = {} if window is None else {"initial_window_size": window}
    limit = window or 16 * MiB
    async with Channel(_target(server), **options) as ch:
        before = (await _stats(ch)).get("flood_sent", 0)
        call = ch.unary_stream("/test.Test/Flood")(
            json.dumps({"total": 1024 * MiB, "chunk": 16 * 1024}).encode(), timeout=60
        )
        assert len(await asyncio.wait_for(call.read(), T)) == 16 * 1024
        await asyncio.sleep(1.0)  # stop reading
        sent = (await _stats(ch)).get("flood_sent", 0) - before
        # The window, plus what grpcio buffers before its flow control stops the handler.
        assert sent <= limit + 8 * MiB, sent
        for _ in range(200):
            assert len(await asyncio.wait_for(call.read(), T)) == 16 * 1024
        await asyncio.sleep(0.5)
        later = (await _stats(ch)).get("flood_sent", 0) - before
        assert later > sent  # reading reopened the window
        assert later <= limit + 8 * MiB + 200 * 16 * 1024 + MiB, later
        call.cancel()


# -------------------------------------------------------------- call objects


async def test_unary_call_object(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.unary_unary("/test.Test/Echo")(
            b"hi", metadata=[("x-k", "v")], timeout=T, wait_for_ready=True
        )
        assert not call.done()
        assert ("x-k", "v") in await asyncio.wait_for(call.initial_metadata(), T)
        assert await asyncio.wait_for(call, T) == b"hi"
        assert await call == b"hi"  # awaiting again gives the same response
        assert await call.code() is StatusCode.OK
        assert ("x-k", "v") in await call.trailing_metadata()
        remaining = call.time_remaining()
        assert remaining is not None and 0 < remaining <= T
        seen: List[Any] = []
        call.add_done_callback(seen.append)  # already done: called at once
        assert seen == [call]


async def test_unary_call_cancel_before_it_is_awaited(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        call = ch.unary_unary("/test.Test/Sleep")(json.dumps({"seconds": 5}).encode())
        task = asyncio.ensure_future(call.code())
        await asyncio.sleep(0.2)
        assert call.cancel()
        assert await asyncio.wait_for(task, T) is StatusCode.CANCELLED
        with pytest.raises(asyncio.CancelledError):
            await call


async def test_call_arguments_are_checked_at_once(server: HelperProcess) -> None:
    async with Channel(_target(server)) as ch:
        with pytest.raises(TypeError):
            ch.unary_stream("/test.Test/Count")("not bytes")
        with pytest.raises(TypeError):
            ch.stream_stream("/test.Test/Bidi")(wait_for_ready="yes")
        with pytest.raises(ValueError):
            ch.stream_unary("/test.Test/Collect")(compression="br")
        with pytest.raises(ValueError):
            ch.stream_stream("no-slash")
    with pytest.raises(ValueError):
        Channel("127.0.0.1:1", initial_window_size=10)
    with pytest.raises(TypeError):
        Channel("127.0.0.1:1", wait_for_ready=1)


async def test_write_before_a_connection_ends_with_the_deadline() -> None:
    """A writer waiting for the first connection is woken when the call fails meanwhile."""
    async with Channel("127.0.0.1:9", wait_for_ready=True) as ch:  # nothing listens there
        call = ch.stream_stream("/test.Test/Bidi")(timeout=0.2)
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call.write(b"x"), T)
        # At the deadline, with the last connect error (as for a unary call).
        assert info.value.code() in (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED)
        assert info.value.request_sent is False
