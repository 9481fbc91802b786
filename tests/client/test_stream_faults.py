"""Streaming calls against a fault-injecting raw-h2 peer: transparent retry and odd answers.

A streaming request is sent again only while none of its messages left the client: a
refused stream with nothing sent is retried (and the messages written later go on the new
stream), a refused stream that already carried a message fails with ``request_sent=False``
(the server never processed it, but the messages are gone with it).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable, List

import h2.errors
import pytest
from fault_server import FaultServer, FaultStream

from wove_h2grpc import EOF, Channel, GrpcError, StatusCode

E = h2.errors.ErrorCodes
T = 5.0
StartServer = Callable[..., Awaitable[FaultServer]]


@pytest.fixture
async def serve() -> AsyncIterator[StartServer]:
    servers: List[FaultServer] = []

    async def start(handler: Any = None, **kwargs: Any) -> FaultServer:
        server = await FaultServer(handler, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await asyncio.wait_for(server.close(), 10)
    errors = [e for server in servers for e in server.errors]
    assert not errors, errors


async def test_refused_empty_client_stream_is_retried(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        if len(stream.server.handled) == 1:
            stream.reset(E.REFUSED_STREAM)
        else:
            await stream.respond(b"second")

    server = await serve(handler)
    async with Channel(server.target) as ch:
        call = ch.stream_unary("/t.S/M")(timeout=T)
        await call.done_writing()
        assert await asyncio.wait_for(call, T) == b"second"
    assert len(server.streams) == 2


async def test_refused_client_stream_after_a_message_is_not_sent_again(
    serve: StartServer,
) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.reset(E.REFUSED_STREAM)

    server = await serve(handler)
    async with Channel(server.target) as ch:
        call = ch.stream_unary("/t.S/M")(timeout=T)
        await call.write(b"one")
        await call.done_writing()
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call, T)
    assert info.value.code() is StatusCode.UNAVAILABLE
    assert info.value.request_sent is False
    assert "REFUSED_STREAM" in info.value.details()
    assert len(server.streams) == 1


async def test_refused_server_stream_is_retried_with_its_request(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        if len(stream.server.handled) == 1:
            stream.reset(E.REFUSED_STREAM)
            return
        stream.send_headers()
        for i in range(3):
            await stream.send_message(stream.request + b"%d" % i)
        stream.send_trailers(0)

    server = await serve(handler)
    async with Channel(server.target) as ch:
        call = ch.unary_stream("/t.S/M")(b"r", timeout=T)
        replies = [await asyncio.wait_for(call.read(), T) for _ in range(3)]
        assert replies == [b"r0", b"r1", b"r2"]
        assert await asyncio.wait_for(call.read(), T) is EOF
    assert [s.request for s in server.handled] == [b"r", b"r"]


async def test_a_second_message_on_a_unary_response_stream_fails(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        await stream.send_message(b"one")
        await stream.send_message(b"two")
        stream.send_trailers(0)

    server = await serve(handler)
    async with Channel(server.target) as ch:
        call = ch.stream_unary("/t.S/M")(iter([b"a"]), timeout=T)
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call, T)
    assert info.value.code() is StatusCode.INTERNAL
    assert "more than one response message" in info.value.details()


async def test_server_stream_without_trailers_is_internal_after_its_messages(
    serve: StartServer,
) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        await stream.send_message(b"kept")
        await stream.send_data(b"", end_stream=True)

    server = await serve(handler)
    async with Channel(server.target) as ch:
        call = ch.unary_stream("/t.S/M")(b"", timeout=T)
        assert await asyncio.wait_for(call.read(), T) == b"kept"
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call.read(), T)
    assert info.value.code() is StatusCode.INTERNAL
