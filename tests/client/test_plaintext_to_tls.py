"""A plaintext Channel pointed at a TLS port fails at once, and says to use TLS.

TLS servers (ours on Python's ssl, grpcio's on BoringSSL) answer a plaintext HTTP/2
preface by closing the connection without a byte. The client then checks whether the
address completes a TLS handshake; if it does, the connect error is permanent (no waiting
out the deadline, even with ``wait_for_ready=True``) and names ``secure=True``. A server
that closes silently but does not speak TLS keeps the ordinary, retryable error.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any, AsyncIterator, Iterator

import pytest
from _support import Certs, HelperProcess, grpcio_python, start_helper

from wove_h2grpc import Channel, GrpcError, Server, StatusCode

T = 10.0


async def _echo(request: bytes, context: Any) -> bytes:
    return request


@pytest.fixture
async def our_tls_port(certs: Certs) -> AsyncIterator[int]:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs.server_cert_file, certs.server_key_file)
    server = Server({"/t.S/Echo": _echo})
    yield await server.start("127.0.0.1:0", ssl_context=tls)
    await server.stop()


@pytest.fixture(scope="module")
def grpcio_tls(certs: Certs) -> Iterator[HelperProcess]:
    helper = start_helper(
        "grpcio_server.py",
        ["--tls-cert", certs.server_cert_file, "--tls-key", certs.server_key_file],
        python=grpcio_python(),
    )
    yield helper
    helper.stop()


async def _fails_fast(port: int, wait_for_ready: bool) -> GrpcError:
    async with Channel(f"127.0.0.1:{port}", wait_for_ready=wait_for_ready) as channel:
        began = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(channel.unary_unary("/t.S/Echo")(b"x", timeout=T), T + 5)
        assert time.monotonic() - began < 3.0, "the call waited instead of failing at once"
    return info.value


@pytest.mark.parametrize("wait_for_ready", [False, True])
async def test_plaintext_channel_to_our_tls_server(our_tls_port: int, wait_for_ready: bool) -> None:
    error = await _fails_fast(our_tls_port, wait_for_ready)
    assert error.code() is StatusCode.UNAVAILABLE
    assert "answers TLS" in error.details() and "secure=True" in error.details()


@pytest.mark.parametrize("wait_for_ready", [False, True])
async def test_plaintext_channel_to_a_grpcio_tls_server(
    grpcio_tls: HelperProcess, wait_for_ready: bool
) -> None:
    error = await _fails_fast(grpcio_tls.port, wait_for_ready)
    assert error.code() is StatusCode.UNAVAILABLE
    assert "secure=True" in error.details(), error.details()


async def test_a_silent_close_without_tls_is_not_called_tls() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        error = await _fails_fast(port, wait_for_ready=False)
    finally:
        server.close()
        await server.wait_closed()
    assert error.code() is StatusCode.UNAVAILABLE
    assert "before the server sent a byte" in error.details()
    assert "secure=True" not in error.details()
