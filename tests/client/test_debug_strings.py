"""Every failed call's debug_error_string() names the method, the target, the stream (or that
there was none) and how long the call had run, whichever way it failed."""

from __future__ import annotations

import asyncio
import re

from fault_server import FaultServer, FaultStream

from wove_h2grpc import Channel, GrpcError, Server, StatusCode

METHOD = "/debug.Svc/Call"


async def _error(channel: Channel, timeout: float) -> GrpcError:
    try:
        await asyncio.wait_for(channel.unary_unary(METHOD)(b"x", timeout=timeout), 10)
    except GrpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def _elapsed(debug: str) -> float:
    match = re.search(r" after (\d+\.\d+)s", debug)
    assert match, debug
    return float(match.group(1))


async def test_deadline_on_a_stream_names_method_target_stream_and_time() -> None:
    async def silent(stream: FaultStream) -> None:
        await stream.wait_reset(5)

    async with FaultServer(silent) as server, Channel(server.target) as channel:
        err = await _error(channel, 0.3)
    assert err.code() is StatusCode.DEADLINE_EXCEEDED
    debug = err.debug_error_string()
    assert METHOD in debug and server.target in debug and "stream 1" in debug, debug
    assert 0.25 <= _elapsed(debug) < 5, debug


async def test_deadline_while_waiting_for_a_connection_says_no_stream() -> None:
    # A listener that never answers the HTTP/2 preface: the call waits out its deadline.
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    listener = await asyncio.start_server(never, "127.0.0.1", 0)
    target = f"127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    try:
        async with Channel(target, connect_timeout=5.0) as channel:
            err = await _error(channel, 0.3)
    finally:
        listener.close()
    assert err.code() is StatusCode.DEADLINE_EXCEEDED
    assert err.request_sent is False
    debug = err.debug_error_string()
    assert METHOD in debug and target in debug and "no stream" in debug, debug
    assert 0.25 <= _elapsed(debug) < 5, debug


async def test_server_status_names_method_target_and_stream() -> None:
    server = Server({})
    port = await server.start("127.0.0.1:0")
    try:
        async with Channel(f"127.0.0.1:{port}") as channel:
            err = await _error(channel, 5.0)
    finally:
        await server.stop()
    assert err.code() is StatusCode.UNIMPLEMENTED
    debug = err.debug_error_string()
    assert METHOD in debug and f"127.0.0.1:{port}" in debug and "stream 1" in debug, debug
    assert _elapsed(debug) < 5


async def test_closed_channel_names_the_method() -> None:
    channel = Channel("127.0.0.1:1")
    await channel.close()
    err = await _error(channel, 1.0)
    assert err.code() is StatusCode.CANCELLED and err.request_sent is False
    assert METHOD in err.debug_error_string() and "127.0.0.1:1" in err.debug_error_string()
