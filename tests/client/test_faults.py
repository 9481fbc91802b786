"""The client on a bad day: every fault ends the call promptly, with the right
status and a ``details()`` a person can act on; refused calls are retried transparently,
and a call that may have run is never sent twice.

The misbehaving peer is ``tests/fault_server.py`` (raw h2 on asyncio, in this process).
Every call is bounded with ``asyncio.wait_for`` and its elapsed time asserted.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import gzip
import json
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterator, List, Optional, Tuple

import h2.errors
import h2.settings
import pytest
from _support import TracedMemory
from fault_server import FaultServer, FaultStream, grpc_message, hpack_literal

from wove_h2grpc import Channel, GrpcError, StatusCode

METHOD = "/fault.Test/Call"
MiB = 1024 * 1024
E = h2.errors.ErrorCodes

StartServer = Callable[..., Awaitable[FaultServer]]


@pytest.fixture
async def serve() -> AsyncIterator[StartServer]:
    """Start fault servers for a test; close them after it and check none of them broke."""
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


async def _close(channel: Channel) -> None:
    await asyncio.wait_for(channel.close(), 5)


async def call_error(
    target: str,
    *,
    bound: float = 3.0,
    timeout: Optional[float] = 5.0,
    request: bytes = b"request",
    **options: Any,
) -> Tuple[GrpcError, float]:
    """Make one call that must fail; return the error and how long it took."""
    channel = Channel(target, **options)
    try:
        start = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(channel.unary_unary(METHOD)(request, timeout=timeout), bound)
        elapsed = time.monotonic() - start
    finally:
        await _close(channel)
    _record(info.value, elapsed)
    return info.value, elapsed


async def call_ok(
    target: str,
    *,
    bound: float = 3.0,
    timeout: Optional[float] = 5.0,
    request: bytes = b"req",
    **options: Any,
) -> Tuple[bytes, float]:
    channel = Channel(target, **options)
    try:
        start = time.monotonic()
        reply = await asyncio.wait_for(channel.unary_unary(METHOD)(request, timeout=timeout), bound)
        elapsed = time.monotonic() - start
    finally:
        await _close(channel)
    return reply, elapsed


# With WOVE_H2GRPC_FAULT_REPORT=<file>, every failing call's outcome is written there as
# JSON lines (test, code, details, elapsed): the measured figures of docs/reliability.md.
_REPORT: List[Dict[str, Any]] = []


def _record(err: GrpcError, elapsed: float) -> None:
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("::")[-1]
    _REPORT.append(
        {"test": test, "code": err.code().name, "details": err.details(), "elapsed": elapsed}
    )


def _figure(name: str, value: float) -> None:
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("::")[-1]
    _REPORT.append({"test": test, "figure": name, "value": value})


@pytest.fixture(scope="module", autouse=True)
def _write_report() -> Iterator[None]:
    yield
    path = os.environ.get("WOVE_H2GRPC_FAULT_REPORT")
    if path and _REPORT:
        with open(path, "a", encoding="utf-8") as f:
            for row in _REPORT:
                f.write(json.dumps(row) + "\n")


def _says(err: GrpcError, *words: str) -> None:
    details = err.details()
    for word in words:
        assert word.lower() in details.lower(), f"details {details!r} do not mention {word!r}"


# --- sanity: the fault server itself answers well-formed calls ---------------------------


async def test_well_formed_answer_is_ok(serve: StartServer) -> None:
    server = await serve()
    reply, elapsed = await call_ok(server.target, request=b"hello")
    assert reply == b"hello"
    assert elapsed < 2.0
    assert server.paths() == [METHOD]
    (stream,) = server.handled
    assert stream.headers["content-type"] == "application/grpc"
    assert stream.headers["te"] == "trailers"
    assert stream.headers[":method"] == "POST"
    assert float(stream.headers["grpc-timeout"][:-1]) > 0


async def test_grpc_proto_content_type_is_grpc(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers(content_type="application/grpc+proto")
        await stream.send_message(b"fine")
        stream.send_trailers(0)

    server = await serve(handler)
    reply, _ = await call_ok(server.target)
    assert reply == b"fine"


# --- malformed responses ---------------------------------------------------------------


async def test_end_stream_without_trailers(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        await stream.send_message(b"x", end_stream=True)

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is StatusCode.INTERNAL
    _says(err, "grpc-status")
    assert elapsed < 2.0


async def test_headers_then_eof_without_trailers(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        await stream.send_message(b"x")
        await asyncio.sleep(0.05)
        stream.conn.close()

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is StatusCode.UNAVAILABLE
    _says(err, "connection")
    assert elapsed < 2.0


async def test_trailers_without_grpc_status(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        await stream.send_message(b"x")
        stream.send_trailers(None, extra=[("x-trailer", "1")])

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is StatusCode.INTERNAL
    _says(err, "grpc-status")
    assert elapsed < 2.0


HTTP_CASES = [
    (400, StatusCode.INTERNAL),
    (401, StatusCode.UNAUTHENTICATED),
    (403, StatusCode.PERMISSION_DENIED),
    (404, StatusCode.UNIMPLEMENTED),
    (429, StatusCode.UNAVAILABLE),
    (502, StatusCode.UNAVAILABLE),
    (503, StatusCode.UNAVAILABLE),
    (504, StatusCode.UNAVAILABLE),
    (418, StatusCode.UNKNOWN),
    (500, StatusCode.UNKNOWN),
]


@pytest.mark.parametrize(("http_status", "expected"), HTTP_CASES)
async def test_http_status_without_grpc_status(
    serve: StartServer, http_status: int, expected: StatusCode
) -> None:
    # What a proxy in front of a dead backend sends: an HTML error page.
    async def handler(stream: FaultStream) -> None:
        stream.send_headers(http_status, content_type="text/html")
        await stream.send_data(b"<html>upstream error</html>", end_stream=True)

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is expected
    _says(err, f"HTTP status {http_status}")
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("http_status", "expected"), [(503, StatusCode.UNAVAILABLE), (404, StatusCode.UNIMPLEMENTED)]
)
async def test_http_status_headers_only(
    serve: StartServer, http_status: int, expected: StatusCode
) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers(http_status, content_type=None, end_stream=True)

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is expected
    _says(err, f"HTTP status {http_status}")
    assert elapsed < 2.0


@pytest.mark.parametrize("content_type", ["text/html", "application/json", "application/grpcx"])
async def test_non_grpc_content_type(serve: StartServer, content_type: str) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers(200, content_type=content_type)
        await stream.send_data(b"<html>hello</html>", end_stream=True)

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is StatusCode.UNKNOWN
    _says(err, "content-type", content_type)
    assert elapsed < 2.0


@pytest.mark.parametrize("ending", ["trailers", "end_stream"])
async def test_length_prefix_longer_than_data(serve: StartServer, ending: str) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        truncated = b"\x00" + (16).to_bytes(4, "big") + b"abc"
        await stream.send_data(truncated, end_stream=ending == "end_stream")
        if ending == "trailers":
            stream.send_trailers(0)

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is StatusCode.INTERNAL
    if ending == "trailers":
        _says(err, "3 of 16")
    else:  # both faults are true here: the message is cut short, and no grpc-status came
        assert "3 of 16" in err.details() or "grpc-status" in err.details(), err.details()
    assert elapsed < 2.0


async def test_compressed_flag_without_grpc_encoding(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        await stream.send_message(gzip.compress(b"payload"), compressed=True)
        stream.send_trailers(0)

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is StatusCode.INTERNAL
    _says(err, "grpc-encoding")
    assert elapsed < 2.0


async def test_unknown_grpc_encoding(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers(extra=[("grpc-encoding", "snappy")])
        await stream.send_message(b"\x00not-snappy", compressed=True)
        stream.send_trailers(0)

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is StatusCode.INTERNAL
    _says(err, "snappy")
    assert elapsed < 2.0


async def test_gzip_response_is_understood(serve: StartServer) -> None:
    # The positive twin of the two cases above: real gzip with grpc-encoding works.
    async def handler(stream: FaultStream) -> None:
        stream.send_headers(extra=[("grpc-encoding", "gzip")])
        await stream.send_message(gzip.compress(b"inflated"), compressed=True)
        stream.send_trailers(0)

    server = await serve(handler)
    reply, _ = await call_ok(server.target)
    assert reply == b"inflated"


# --- RST_STREAM ------------------------------------------------------------------------

RST_CASES = {
    E.NO_ERROR: StatusCode.INTERNAL,
    E.PROTOCOL_ERROR: StatusCode.INTERNAL,
    E.INTERNAL_ERROR: StatusCode.INTERNAL,
    E.FLOW_CONTROL_ERROR: StatusCode.INTERNAL,
    E.SETTINGS_TIMEOUT: StatusCode.INTERNAL,
    E.STREAM_CLOSED: StatusCode.INTERNAL,
    E.FRAME_SIZE_ERROR: StatusCode.INTERNAL,
    E.REFUSED_STREAM: StatusCode.UNAVAILABLE,
    E.CANCEL: StatusCode.CANCELLED,
    E.COMPRESSION_ERROR: StatusCode.INTERNAL,
    E.CONNECT_ERROR: StatusCode.INTERNAL,
    E.ENHANCE_YOUR_CALM: StatusCode.RESOURCE_EXHAUSTED,
    E.INADEQUATE_SECURITY: StatusCode.PERMISSION_DENIED,
    E.HTTP_1_1_REQUIRED: StatusCode.INTERNAL,
}


@pytest.mark.parametrize("code", list(RST_CASES), ids=lambda c: E(c).name)
async def test_rst_stream_after_headers(serve: StartServer, code: int) -> None:
    # After response headers the call may have run: every code is final, none retried.
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        await asyncio.sleep(0.02)
        stream.reset(code)

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is RST_CASES[code]
    _says(err, "RST_STREAM", E(code).name)
    assert elapsed < 2.0
    assert len(server.streams) == 1, "a stream that got response headers was sent again"


@pytest.mark.parametrize(
    "code", [c for c in RST_CASES if c != E.REFUSED_STREAM], ids=lambda c: E(c).name
)
async def test_rst_stream_before_headers(serve: StartServer, code: int) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.reset(code)

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is RST_CASES[code]
    _says(err, "RST_STREAM", E(code).name)
    assert elapsed < 2.0
    assert len(server.streams) == 1, "only REFUSED_STREAM may be retried"


# --- transparent retry (gRFC A6) ---------------------------------------------------------


async def test_refused_stream_is_retried_transparently(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        if len(stream.server.handled) == 1:
            stream.reset(E.REFUSED_STREAM)
        else:
            await stream.respond(b"second:" + stream.request)

    server = await serve(handler)
    reply, elapsed = await call_ok(server.target, request=b"once")
    _figure("elapsed s", elapsed)
    assert reply == b"second:once"
    assert elapsed < 2.0
    assert len(server.handled) == 2
    assert [s.request for s in server.handled] == [b"once", b"once"]


async def test_refused_stream_not_retried_when_disabled(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        if len(stream.server.handled) == 1:
            stream.reset(E.REFUSED_STREAM)
        else:
            await stream.respond(b"must not happen")

    server = await serve(handler)
    err, elapsed = await call_error(server.target, transparent_retry=False)
    assert err.code() is StatusCode.UNAVAILABLE
    _says(err, "REFUSED_STREAM")
    assert elapsed < 2.0
    assert len(server.streams) == 1


async def test_refused_stream_retries_are_bounded(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.reset(E.REFUSED_STREAM)

    server = await serve(handler)
    err, elapsed = await call_error(server.target, timeout=10.0, bound=5.0)
    assert err.code() is StatusCode.UNAVAILABLE
    _says(err, "REFUSED_STREAM")
    assert elapsed < 3.0
    assert 2 <= len(server.streams) <= 11


async def test_refused_stream_after_headers_not_retried(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        await asyncio.sleep(0.02)
        stream.reset(E.REFUSED_STREAM)

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is StatusCode.UNAVAILABLE
    _says(err, "REFUSED_STREAM")
    assert elapsed < 2.0
    assert len(server.streams) == 1, "a stream that got response headers was sent again"


async def test_goaway_last_stream_id_drains_and_retries_the_rest(serve: StartServer) -> None:
    """Streams at or below last-stream-id finish; the stream above it runs on a new
    connection, once; new calls go to the new connection."""
    arrived: List[FaultStream] = []
    all_arrived = asyncio.Event()
    goaway_sent = asyncio.Event()
    answered: List[Tuple[int, bytes]] = []

    async def handler(stream: FaultStream) -> None:
        if stream.conn.index == 0:
            arrived.append(stream)
            if len(arrived) == 3:
                all_arrived.set()
            await asyncio.wait_for(all_arrived.wait(), 5)
            ids = sorted(s.stream_id for s in arrived)
            if stream.stream_id == ids[-1]:
                # Not processed: announce the drain, never answer this one.
                stream.conn.goaway(last_stream_id=ids[1])
                goaway_sent.set()
                return
            await asyncio.wait_for(goaway_sent.wait(), 5)
            await asyncio.sleep(0.05)  # the answers come after the GOAWAY
        answered.append((stream.conn.index, stream.request))
        await stream.respond(b"ok:" + stream.request)

    server = await serve(handler)
    channel = Channel(server.target)
    try:
        rpc = channel.unary_unary(METHOD)
        start = time.monotonic()
        replies = await asyncio.wait_for(
            asyncio.gather(*(rpc(b"r%d" % i, timeout=5.0) for i in range(3))), 4.0
        )
        assert replies == [b"ok:r0", b"ok:r1", b"ok:r2"]
        _figure("elapsed s (3 calls)", time.monotonic() - start)
        assert time.monotonic() - start < 3.0
        # Exactly one call went to the new connection, and no request was answered twice.
        counts = collections.Counter(request for _, request in answered)
        assert counts == {b"r0": 1, b"r1": 1, b"r2": 1}
        assert sorted(index for index, _ in answered) == [0, 0, 1]
        # The next call uses the new connection, not the draining one.
        reply = await asyncio.wait_for(rpc(b"r3", timeout=5.0), 3.0)
        assert reply == b"ok:r3"
        assert answered[-1] == (1, b"r3")
    finally:
        await _close(channel)
    assert len(server.connections) == 2


async def test_goaway_before_processing_is_retried(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        if stream.conn.index == 0:
            stream.conn.goaway(last_stream_id=0)
            return
        await stream.respond(b"fresh")

    server = await serve(handler)
    reply, elapsed = await call_ok(server.target)
    _figure("elapsed s", elapsed)
    assert reply == b"fresh"
    assert elapsed < 2.0
    assert len(server.connections) == 2


async def test_goaway_not_retried_when_disabled(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        if stream.conn.index == 0:
            stream.conn.goaway(last_stream_id=0)
            return
        await stream.respond(b"must not happen")

    server = await serve(handler)
    err, elapsed = await call_error(server.target, transparent_retry=False)
    assert err.code() is StatusCode.UNAVAILABLE
    _says(err, "GOAWAY")
    assert elapsed < 2.0
    assert len(server.handled) == 1


@pytest.mark.parametrize(
    ("code", "expected"),
    [(E.INTERNAL_ERROR, StatusCode.INTERNAL), (E.ENHANCE_YOUR_CALM, StatusCode.RESOURCE_EXHAUSTED)],
    ids=["INTERNAL_ERROR", "ENHANCE_YOUR_CALM"],
)
async def test_goaway_error_fails_processed_stream_without_retry(
    serve: StartServer, code: int, expected: StatusCode
) -> None:
    # The stream is at or below last-stream-id and got headers: it may have run.
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        await asyncio.sleep(0.02)
        stream.conn.goaway(last_stream_id=stream.stream_id, code=code, debug=b"backend crashed")
        await asyncio.sleep(0.02)
        stream.conn.close()

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is expected
    _says(err, "GOAWAY")
    assert elapsed < 2.0
    assert len(server.streams) == 1


# --- connection faults ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_connection_closed_mid_response(serve: StartServer, how: str) -> None:
    async def handler(stream: FaultStream) -> None:
        if stream.conn.index > 0:
            await stream.respond(b"recovered")
            return
        stream.send_headers()
        await stream.send_data(b"\x00" + (100).to_bytes(4, "big") + b"0123456789")
        await asyncio.sleep(0.05)
        getattr(stream.conn, how)()

    server = await serve(handler)
    channel = Channel(server.target)
    try:
        rpc = channel.unary_unary(METHOD)
        start = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(rpc(b"x", timeout=5.0), 3.0)
        _record(info.value, time.monotonic() - start)
        assert time.monotonic() - start < 2.0
        assert info.value.code() is StatusCode.UNAVAILABLE
        _says(info.value, "connection")
        # The channel reconnects for the next call; the failed one is not replayed.
        reply = await asyncio.wait_for(rpc(b"y", timeout=5.0), 3.0)
        assert reply == b"recovered"
    finally:
        await _close(channel)
    assert [s.request for s in server.handled] == [b"x", b"y"]


async def test_tcp_without_http2_times_out_connect(serve: StartServer) -> None:
    server = await serve(speak_h2=False)
    err, elapsed = await call_error(server.target, timeout=None, connect_timeout=0.5, bound=3.0)
    assert err.code() is StatusCode.UNAVAILABLE
    _says(err, "HTTP/2", "connect_timeout")
    assert 0.4 <= elapsed < 1.5


async def test_tcp_without_http2_channel_ready(serve: StartServer) -> None:
    server = await serve(speak_h2=False)
    channel = Channel(server.target, connect_timeout=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(channel.channel_ready(), 3.0)
        assert 0.4 <= time.monotonic() - start < 1.5
        assert info.value.code() is StatusCode.UNAVAILABLE
    finally:
        await _close(channel)


async def test_silent_server_deadline(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        await asyncio.sleep(60)

    server = await serve(handler)
    err, elapsed = await call_error(server.target, timeout=0.5, bound=2.0)
    assert err.code() is StatusCode.DEADLINE_EXCEEDED
    assert 0.45 <= elapsed < 0.9
    # The client told the server to stop: RST_STREAM CANCEL.
    (stream,) = server.streams
    assert await stream.wait_reset(2.0) == E.CANCEL


async def test_silent_after_headers_deadline(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers(extra=[("x-initial", "1")])
        await asyncio.sleep(60)

    server = await serve(handler)
    err, elapsed = await call_error(server.target, timeout=0.5, bound=2.0)
    assert err.code() is StatusCode.DEADLINE_EXCEEDED
    assert 0.45 <= elapsed < 0.9


async def test_stream_window_never_opened(serve: StartServer) -> None:
    # The server never acknowledges DATA: a 1 MiB request can never be sent whole.
    server = await serve(auto_ack=False, handle_on="headers", handler=_never_answer)
    err, elapsed = await call_error(server.target, timeout=0.5, bound=2.0, request=b"r" * MiB)
    assert err.code() is StatusCode.DEADLINE_EXCEEDED
    assert 0.45 <= elapsed < 0.9
    (stream,) = server.streams
    assert await stream.wait_reset(2.0) == E.CANCEL
    assert len(stream.body) <= 65535


async def test_zero_initial_window(serve: StartServer) -> None:
    server = await serve(
        auto_ack=False,
        handle_on="headers",
        handler=_never_answer,
        settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0},
    )
    err, elapsed = await call_error(server.target, timeout=0.5, bound=2.0)
    assert err.code() is StatusCode.DEADLINE_EXCEEDED
    assert 0.45 <= elapsed < 0.9


async def _never_answer(stream: FaultStream) -> None:
    await asyncio.sleep(60)


@pytest.mark.parametrize("frame_size", [16384, 512 * 1024], ids=["16KiB-frames", "512KiB-frames"])
async def test_one_mib_header_block(serve: StartServer, frame_size: int) -> None:
    # Many CONTINUATION frames, or a few large ones over the advertised header list size.
    async def handler(stream: FaultStream) -> None:
        if stream.conn.index > 0:
            await stream.respond(b"after")
            return
        block = (
            hpack_literal(b":status", b"200")
            + hpack_literal(b"content-type", b"application/grpc")
            + hpack_literal(b"x-huge", b"h" * MiB)
        )
        stream.send_raw_header_block(block, frame_size=frame_size)

    server = await serve(handler)
    channel = Channel(server.target)
    with TracedMemory() as memory:
        rpc = channel.unary_unary(METHOD)
        start = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(rpc(b"x", timeout=5.0), 3.0)
        elapsed = time.monotonic() - start
    peak = memory.peak
    _record(info.value, elapsed)
    try:
        assert info.value.code() in (
            StatusCode.RESOURCE_EXHAUSTED,
            StatusCode.INTERNAL,
            StatusCode.UNAVAILABLE,
        )
        assert info.value.details()
        assert elapsed < 2.5
        if peak is not None:  # CPython: tracemalloc
            _figure("tracemalloc peak bytes (client and server)", peak)
            # The server side alone holds ~2 MiB for the block; the client must not add
            # more than a few copies of it.
            assert peak < 12 * MiB, peak
        reply = await asyncio.wait_for(rpc(b"y", timeout=5.0), 3.0)
        assert reply == b"after"
    finally:
        await _close(channel)


async def test_response_over_max_receive_length(serve: StartServer) -> None:
    claimed = 32 * MiB
    sent: Dict[str, Any] = {}

    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        chunk = b"z" * (256 * 1024)
        ok = await stream.send_data(b"\x00" + claimed.to_bytes(4, "big"))
        total = 0
        while ok and total < claimed:
            ok = await stream.send_data(chunk)
            if ok:
                total += len(chunk)
        sent["bytes"] = total
        if ok:
            stream.send_trailers(0)

    server = await serve(handler)
    with TracedMemory() as memory:
        err, elapsed = await call_error(server.target, max_receive_message_length=MiB, bound=5.0)
    peak = memory.peak
    if peak is not None:
        _figure("tracemalloc peak bytes (client and server)", peak)
    assert err.code() is StatusCode.RESOURCE_EXHAUSTED
    _says(err, f"{claimed} vs. {MiB}")
    assert elapsed < 2.0
    if peak is not None:  # CPython: tracemalloc
        assert peak < 16 * MiB, peak  # the 32 MiB message was never held
    (stream,) = server.streams
    assert await stream.wait_reset(2.0) is not None  # the client reset the stream
    await asyncio.sleep(0.1)
    _figure("message bytes the server got out before the reset", sent.get("bytes", 0))
    assert sent.get("bytes", 0) < claimed


async def test_response_within_max_receive_length(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        await stream.respond(b"m" * MiB)

    server = await serve(handler)
    reply, elapsed = await call_ok(server.target, max_receive_message_length=MiB)
    assert len(reply) == MiB
    assert elapsed < 2.0


async def test_ping_and_settings_flood(serve: StartServer) -> None:
    pings, settings = 5000, 500

    async def flood(conn: Any) -> None:
        conn.send_pings(pings)
        conn.send_settings(settings)

    async def handler(stream: FaultStream) -> None:
        # A second flood while the call is in flight, then the answer.
        stream.conn.send_pings(pings)
        stream.conn.send_settings(settings)
        await asyncio.sleep(0.05)
        await stream.respond(b"still fine")

    server = await serve(handler, on_connection=flood)
    channel = Channel(server.target)
    try:
        rpc = channel.unary_unary(METHOD)
        start = time.monotonic()
        assert await asyncio.wait_for(rpc(b"1", timeout=5.0), 5.0) == b"still fine"
        assert time.monotonic() - start < 4.0
        (conn,) = server.connections
        for _ in range(100):
            if conn.ping_acks >= 2 * pings and conn.settings_acks >= 2 * settings:
                break
            await asyncio.sleep(0.02)
        assert conn.ping_acks == 2 * pings
        assert conn.settings_acks == 2 * settings + 1  # + the one after the preface
        # No growth: two more floods (smaller: tracemalloc is slow) leave memory where the
        # first of them left it.
        acks = conn.ping_acks
        with TracedMemory() as memory:
            sizes = []
            for round_ in (1, 2):
                conn.send_pings(1000)
                conn.send_settings(100)
                for _ in range(200):
                    if conn.ping_acks >= acks + round_ * 1000:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.05)
                gc.collect()
                sizes.append(memory.current())
        assert conn.ping_acks == acks + 2000
        if sizes[0] is not None and sizes[1] is not None:  # CPython: tracemalloc
            _figure("traced bytes after flood 1", sizes[0])
            _figure("traced bytes after flood 2", sizes[1])
            assert sizes[1] - sizes[0] < 32 * 1024, sizes
            assert sizes[0] < 256 * 1024, sizes
        assert await asyncio.wait_for(rpc(b"2", timeout=5.0), 3.0) == b"still fine"
        assert len(server.connections) == 1  # the flood did not cost the connection
    finally:
        await _close(channel)


async def test_max_concurrent_streams_queues(serve: StartServer) -> None:
    active: List[int] = [0, 0]  # current, peak

    async def handler(stream: FaultStream) -> None:
        active[0] += 1
        active[1] = max(active[1], active[0])
        await asyncio.sleep(0.02)
        active[0] -= 1
        await stream.respond(stream.request)

    server = await serve(handler, settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    channel = Channel(server.target)
    try:
        rpc = channel.unary_unary(METHOD)
        replies = await asyncio.wait_for(
            asyncio.gather(*(rpc(b"%d" % i, timeout=5.0) for i in range(8))), 4.0
        )
        assert replies == [b"%d" % i for i in range(8)]
    finally:
        await _close(channel)
    assert active[1] == 1
    assert len(server.handled) == 8


async def test_connect_refused_is_unavailable() -> None:
    server = FaultServer()
    await server.start()
    target = server.target
    await server.close()  # nothing listens there now
    err, elapsed = await call_error(target, timeout=None, connect_timeout=1.0)
    assert err.code() is StatusCode.UNAVAILABLE
    _says(err, "127.0.0.1")
    assert elapsed < 2.0


def test_fault_server_message_helper() -> None:
    assert grpc_message(b"ab") == b"\x00\x00\x00\x00\x02ab"
    assert grpc_message(b"", compressed=True) == b"\x01\x00\x00\x00\x00"


# --- more bad days -----------------------------------------------------------------------


async def test_http1_server(serve: StartServer) -> None:
    reply = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    server = await serve(speak_h2=False, raw_reply=reply)
    err, elapsed = await call_error(server.target, timeout=None, connect_timeout=1.0)
    assert err.code() is StatusCode.UNAVAILABLE
    # Actionable: the peer answered, but not with HTTP/2 (not just "no connection").
    _says(err, "127.0.0.1", "HTTP/2")
    assert elapsed < 1.6
    assert len(server.connections) <= 10, len(server.connections)


@pytest.mark.parametrize("when", ["before-preface", "after-preface"])
async def test_connection_closed_right_after_accept(serve: StartServer, when: str) -> None:
    async def hang_up(conn: Any) -> None:
        conn.close()

    if when == "before-preface":
        server = await serve(hang_up=True)
    else:  # the server's SETTINGS arrive, then the connection closes
        server = await serve(on_connection=hang_up)
    err, elapsed = await call_error(server.target, timeout=None, connect_timeout=1.0)
    _figure("connections in the call", len(server.connections))
    # Reconnecting backs off: a peer that hangs up at once is not hammered.
    assert len(server.connections) <= 10, f"{len(server.connections)} connections in {elapsed:.2f}s"
    assert err.code() is StatusCode.UNAVAILABLE
    _says(err, "127.0.0.1")
    assert "closed" in err.details() or "lost" in err.details(), err.details()
    assert elapsed < 1.6


async def test_deadline_while_connecting(serve: StartServer) -> None:
    server = await serve(speak_h2=False)
    err, elapsed = await call_error(server.target, timeout=0.5, connect_timeout=5.0, bound=2.0)
    assert err.code() is StatusCode.DEADLINE_EXCEEDED
    assert 0.45 <= elapsed < 0.9


async def test_zero_max_concurrent_streams(serve: StartServer) -> None:
    # The server accepts no stream at all: calls queue, then end at their deadline.
    server = await serve(settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
    err, elapsed = await call_error(server.target, timeout=0.5, bound=2.0)
    assert err.code() is StatusCode.DEADLINE_EXCEEDED
    assert 0.45 <= elapsed < 0.9
    assert server.streams == []


async def test_caller_cancellation_resets_stream(serve: StartServer) -> None:
    server = await serve(_never_answer)
    channel = Channel(server.target)
    try:
        task = asyncio.ensure_future(channel.unary_unary(METHOD)(b"x", timeout=5.0))
        for _ in range(100):
            if server.streams:
                break
            await asyncio.sleep(0.01)
        start = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2.0)
        assert time.monotonic() - start < 0.5
        (stream,) = server.streams
        assert await stream.wait_reset(2.0) == E.CANCEL
    finally:
        await _close(channel)


async def test_close_with_grace_ends_inflight_call(serve: StartServer) -> None:
    server = await serve(_never_answer)
    channel = Channel(server.target)
    task = asyncio.ensure_future(channel.unary_unary(METHOD)(b"x"))  # no deadline at all
    for _ in range(100):
        if server.streams:
            break
        await asyncio.sleep(0.01)
    start = time.monotonic()
    await asyncio.wait_for(channel.close(grace=0.2), 3.0)
    with pytest.raises(GrpcError) as info:
        await asyncio.wait_for(task, 2.0)
    assert time.monotonic() - start < 1.0
    assert info.value.code() is StatusCode.CANCELLED


@pytest.mark.parametrize("value", ["abc", "-1", "", "1 2"])
async def test_malformed_grpc_status(serve: StartServer, value: str) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        await stream.send_message(b"x")
        stream.send_trailers(None, extra=[("grpc-status", value)])

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is StatusCode.INTERNAL
    _says(err, "grpc-status")
    assert elapsed < 2.0


TRICKY = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"


@pytest.mark.parametrize("shape", ["trailers", "trailers-only"])
async def test_error_status_with_encoded_message(serve: StartServer, shape: str) -> None:
    from urllib.parse import quote

    wire = quote(TRICKY, safe=" ")

    async def handler(stream: FaultStream) -> None:
        if shape == "trailers-only":
            stream.trailers_only(StatusCode.FAILED_PRECONDITION, wire)
            return
        stream.send_headers(extra=[("x-initial", "i")])
        stream.send_trailers(StatusCode.FAILED_PRECONDITION, wire, extra=[("x-trailing", "t")])

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is StatusCode.FAILED_PRECONDITION
    assert err.details() == TRICKY
    assert elapsed < 2.0
    if shape == "trailers":
        assert ("x-initial", "i") in err.initial_metadata()
        assert ("x-trailing", "t") in err.trailing_metadata()


async def test_two_messages_for_unary(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        await stream.send_data(grpc_message(b"one") + grpc_message(b"two"))
        stream.send_trailers(0)

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is StatusCode.INTERNAL
    _says(err, "more than one")
    assert elapsed < 2.0


async def test_ok_without_message(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        stream.send_trailers(0)

    server = await serve(handler)
    err, elapsed = await call_error(server.target)
    assert err.code() is StatusCode.INTERNAL
    _says(err, "no response message")
    assert elapsed < 2.0


async def test_keepalive_detects_hung_server(serve: StartServer) -> None:
    # The peer stops answering anything (a hung process): keepalive ends the call.
    async def handler(stream: FaultStream) -> None:
        stream.conn.frozen = True
        await asyncio.sleep(60)

    server = await serve(handler)
    err, elapsed = await call_error(
        server.target, timeout=None, keepalive_time=0.2, keepalive_timeout=0.3, bound=3.0
    )
    assert err.code() is StatusCode.UNAVAILABLE
    _says(err, "keepalive")
    assert 0.4 <= elapsed < 1.5


async def test_keepalive_pings_answered_call_survives(serve: StartServer) -> None:
    async def handler(stream: FaultStream) -> None:
        await asyncio.sleep(0.8)
        await stream.respond(b"slow but fine")

    server = await serve(handler)
    reply, elapsed = await call_ok(
        server.target, timeout=None, keepalive_time=0.2, keepalive_timeout=0.3
    )
    assert reply == b"slow but fine"
    assert elapsed < 1.5
    (conn,) = server.connections
    assert conn.pings_received >= 1


async def test_goaway_on_every_stream_is_bounded(serve: StartServer) -> None:
    # A server shutting down that refuses every stream with GOAWAY: retries are bounded.
    async def handler(stream: FaultStream) -> None:
        stream.conn.goaway(last_stream_id=0)

    server = await serve(handler)
    err, elapsed = await call_error(server.target, timeout=2.0, bound=3.0)
    assert err.code() is StatusCode.UNAVAILABLE
    _says(err, "GOAWAY")
    assert elapsed < 1.5
    assert 2 <= len(server.handled) <= 11
    assert len(server.connections) <= 11


async def test_goaway_right_after_preface(serve: StartServer) -> None:
    # Every connection is told to go away before any stream: no reconnect storm, no hang.
    async def go_away(conn: Any) -> None:
        conn.goaway(last_stream_id=0)

    server = await serve(on_connection=go_away)
    err, elapsed = await call_error(server.target, timeout=1.0, bound=3.0)
    assert len(server.connections) <= 10, f"{len(server.connections)} connections in {elapsed:.2f}s"
    assert err.code() in (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED)
    _says(err, "GOAWAY")  # the cause, not an h2 state-machine message
    assert elapsed < 1.5


async def test_goaway_drain_survives_ping_settings_and_window_updates(serve: StartServer) -> None:
    # After GOAWAY the connection is still alive for the streams at or below last-stream-id
    # (RFC 9113 6.8): PING, SETTINGS and WINDOW_UPDATE frames may still arrive.
    async def handler(stream: FaultStream) -> None:
        stream.conn.goaway(last_stream_id=stream.stream_id)
        await asyncio.sleep(0.02)
        stream.conn.send_pings(3)
        stream.conn.send_settings(1)
        await asyncio.sleep(0.02)
        await stream.respond(b"drained")

    server = await serve(handler)
    reply, elapsed = await call_ok(server.target, request=b"w" * 200_000)
    assert reply == b"drained"
    assert elapsed < 2.0
    assert len(server.handled) == 1


async def test_frame_over_max_frame_size_fails_at_once(serve: StartServer) -> None:
    # RFC 9113 4.2: a frame longer than our SETTINGS_MAX_FRAME_SIZE is a FRAME_SIZE_ERROR
    # as soon as its 9-byte header is read; waiting for 16 MiB of body first is a hang.
    async def handler(stream: FaultStream) -> None:
        stream.send_headers()
        length = (1 << 24) - 1
        header = length.to_bytes(3, "big") + b"\x00\x00" + stream.stream_id.to_bytes(4, "big")
        stream.conn.write_raw(header + b"\x00" * 1024)
        await asyncio.sleep(60)

    server = await serve(handler)
    err, elapsed = await call_error(server.target, timeout=2.0, bound=3.0)
    assert err.code() in (StatusCode.UNAVAILABLE, StatusCode.INTERNAL)
    assert elapsed < 1.0
    _says(err, "frame")
