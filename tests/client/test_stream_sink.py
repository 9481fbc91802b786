"""A server stream read through a sink (``UnaryStreamCall._deliver_to``), as the Wove
executor reads its streamed runs: every message handed over as it arrives, in order, with
the call's outcome raised at the end, against our Server over loopback.

The flow-control case matters most: a sink consumes each message at once, so the stream's
window must reopen without any ``read()``; a stream many windows long would stall if not.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, List

import pytest

from wove_h2grpc import EOF, Channel, GrpcError, Server, StatusCode

T = 10.0  # bound for anything that should finish promptly
KiB = 1024
MiB = 1024 * KiB


class Seen:
    """What the handlers saw."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.closed = asyncio.Event()
        self.yielded = 0


@pytest.fixture
async def seen() -> Seen:
    return Seen()  # on the test's loop: asyncio.Event binds to it at creation on 3.9


@pytest.fixture
async def target(seen: Seen) -> AsyncIterator[str]:
    async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
        number, size = (int(part) for part in request.split())
        for i in range(number):
            yield (b"%08d" % i).ljust(size, b".")

    async def fail_after(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"one"
        yield b"two"
        raise RuntimeError("boom after the replies")

    async def forever(request: bytes, context: Any) -> AsyncIterator[bytes]:
        try:
            while True:
                seen.yielded += 1
                yield b"tick"
                await asyncio.sleep(0.001)
        finally:
            seen.closed.set()

    async def silent(request: bytes, context: Any) -> AsyncIterator[bytes]:
        seen.started.set()
        try:
            await asyncio.sleep(60)
            yield b"never"
        finally:
            seen.closed.set()

    server = Server()
    server.add_method("/s.S/Count", count, kind="unary_stream")
    server.add_method("/s.S/FailAfter", fail_after, kind="unary_stream")
    server.add_method("/s.S/Forever", forever, kind="unary_stream")
    server.add_method("/s.S/Silent", silent, kind="unary_stream")
    port = await server.start("127.0.0.1:0")
    yield f"127.0.0.1:{port}"
    await server.stop(grace=1.0)


async def _started_by(waiting: asyncio.Future[None]) -> None:
    """Let the task just made for ``_deliver_to`` take its first step, so that it, not a
    later ``wait_for_connection()``, starts the call (``asyncio.wait_for`` runs a coroutine
    in the calling task from Python 3.12 on, ahead of tasks already scheduled)."""
    await asyncio.sleep(0)
    assert not waiting.done(), waiting


async def test_every_message_reaches_the_sink_in_order(target: str) -> None:
    async with Channel(target) as channel:
        got: List[bytes] = []
        call = channel.unary_stream("/s.S/Count")._prepare(b"50 8")
        await asyncio.wait_for(call._deliver_to(got.append), T)
        assert got == [b"%08d" % i for i in range(50)]
        assert call.done() and not call.cancelled()
        assert await call.code() is StatusCode.OK
        assert await call.read() is EOF  # nothing was queued for read()


async def test_a_stream_many_windows_long_flows_without_read(target: str) -> None:
    # 24 MiB through a 256 KiB stream window: it completes only if the sink's consumption
    # reopens the window as the messages arrive.
    async with Channel(target, initial_window_size=256 * KiB) as channel:
        total = 0
        count = 0

        def sink(message: bytes) -> None:
            nonlocal total, count
            total += len(message)
            count += 1

        call = channel.unary_stream("/s.S/Count")._prepare(b"384 65536")
        await asyncio.wait_for(call._deliver_to(sink), T)
        assert (count, total) == (384, 384 * 64 * KiB)


async def test_a_failing_stream_raises_after_its_messages(target: str) -> None:
    async with Channel(target) as channel:
        got: List[bytes] = []
        call = channel.unary_stream("/s.S/FailAfter")._prepare(b"")
        with pytest.raises(GrpcError) as caught:
            await asyncio.wait_for(call._deliver_to(got.append), T)
        assert got == [b"one", b"two"]
        assert caught.value.code() is StatusCode.UNKNOWN


async def test_cancel_from_the_sink_stops_delivery_and_the_handler(target: str, seen: Seen) -> None:
    async with Channel(target) as channel:
        got: List[bytes] = []
        call = channel.unary_stream("/s.S/Forever")._prepare(b"")

        def sink(message: bytes) -> None:
            got.append(message)
            if len(got) == 3:
                call.cancel()

        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call._deliver_to(sink), T)
        assert got == [b"tick"] * 3  # nothing after the cancel, even from the same read
        assert call.cancelled()
        await asyncio.wait_for(seen.closed.wait(), T)


async def test_cancel_from_elsewhere_ends_the_wait(target: str, seen: Seen) -> None:
    async with Channel(target) as channel:
        call = channel.unary_stream("/s.S/Silent")._prepare(b"")
        waiting = asyncio.ensure_future(call._deliver_to(lambda message: None))
        await _started_by(waiting)
        await asyncio.wait_for(call.wait_for_connection(), T)
        # A reset that reaches the server with the request would leave the handler unrun.
        await asyncio.wait_for(seen.started.wait(), T)
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, T)
        await asyncio.wait_for(seen.closed.wait(), T)


async def test_cancelling_the_awaiting_task_resets_the_stream(target: str, seen: Seen) -> None:
    async with Channel(target) as channel:
        call = channel.unary_stream("/s.S/Silent")._prepare(b"")
        waiting = asyncio.ensure_future(call._deliver_to(lambda message: None))
        await _started_by(waiting)
        await asyncio.wait_for(call.wait_for_connection(), T)
        # A reset that reaches the server with the request would leave the handler unrun.
        await asyncio.wait_for(seen.started.wait(), T)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, T)
        assert call.cancelled()
        await asyncio.wait_for(seen.closed.wait(), T)


async def test_the_deadline_ends_a_sink_stream(target: str, seen: Seen) -> None:
    async with Channel(target) as channel:
        call = channel.unary_stream("/s.S/Silent")._prepare(b"", timeout=0.2)
        with pytest.raises(GrpcError) as caught:
            await asyncio.wait_for(call._deliver_to(lambda message: None), T)
        assert caught.value.code() is StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(seen.closed.wait(), T)


async def test_the_deserializer_applies_to_what_the_sink_gets(target: str) -> None:
    async with Channel(target) as channel:
        got: List[int] = []
        rpc = channel.unary_stream("/s.S/Count", response_deserializer=lambda b: int(b))
        await asyncio.wait_for(rpc._prepare(b"4 8")._deliver_to(got.append), T)
        assert got == [0, 1, 2, 3]


async def test_a_started_call_cannot_take_a_sink(target: str) -> None:
    async with Channel(target) as channel:
        call = channel.unary_stream("/s.S/Count")(b"2 8")
        with pytest.raises(RuntimeError, match="_prepare"):
            await call._deliver_to(lambda message: None)
        assert [reply async for reply in call] == [b"00000000", b"00000001"]


async def test_a_failing_consumer_ends_its_call_not_the_connection(target: str) -> None:
    async with Channel(target) as channel:

        def broken(message: bytes) -> int:
            raise ValueError("cannot parse")

        rpc = channel.unary_stream("/s.S/Count", response_deserializer=broken)
        with pytest.raises(GrpcError) as caught:
            await asyncio.wait_for(rpc._prepare(b"3 8")._deliver_to(lambda m: None), T)
        assert caught.value.code() is StatusCode.INTERNAL
        assert "ValueError: cannot parse" in caught.value.details()
        got: List[bytes] = []

        def picky(message: bytes) -> None:
            got.append(message)
            if len(got) == 2:
                raise RuntimeError("enough")

        call = channel.unary_stream("/s.S/Count")._prepare(b"5 8")
        with pytest.raises(GrpcError) as caught:
            await asyncio.wait_for(call._deliver_to(picky), T)
        assert caught.value.code() is StatusCode.INTERNAL and len(got) == 2
        # The connection the failed calls used still carries the next one.
        again: List[bytes] = []
        await asyncio.wait_for(
            channel.unary_stream("/s.S/Count")._prepare(b"2 8")._deliver_to(again.append), T
        )
        assert again == [b"00000000", b"00000001"]
