"""A TLS server that stops with calls in flight: every call ends, and asyncio logs nothing.

The client once read ``get_extra_info`` from the SSL transport in ``connection_lost``, when
asyncio has already torn the SSL protocol down: every such stop logged ``Exception in
callback ClientConnection.connection_lost(None)`` with an ``AttributeError``, although the
calls got the right status. Plaintext servers and grpcio's TLS server did not trigger it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import List

import pytest
from _support import Certs

from wove_h2grpc import Channel, GrpcError, Server, StatusCode

T = 10.0


async def _slow(request: bytes, context: object) -> bytes:
    await asyncio.sleep(30)
    return request


@pytest.mark.parametrize("grace", [0.0, 0.2])
async def test_tls_server_stop_with_calls_in_flight_logs_no_traceback(
    certs: Certs, caplog: pytest.LogCaptureFixture, grace: float
) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs.server_cert_file, certs.server_key_file)
    server = Server({"/t.S/Slow": _slow})
    port = await server.start("127.0.0.1:0", ssl_context=tls)
    caplog.set_level(logging.DEBUG, logger="asyncio")
    async with Channel(f"localhost:{port}", secure=True, root_certificates=certs.ca_pem) as ch:
        rpc = ch.unary_unary("/t.S/Slow")
        calls = [asyncio.ensure_future(rpc(b"x", timeout=T)) for _ in range(5)]
        await asyncio.sleep(0.3)  # every call is on the server
        await asyncio.wait_for(server.stop(grace=grace), T)
        results: List[BaseException] = await asyncio.wait_for(
            asyncio.gather(*calls, return_exceptions=True), T
        )
        # The channel closes right after the calls ended, while the TLS connection is
        # still shutting down.
    await asyncio.sleep(0.3)  # connection_lost and its callbacks have run
    assert all(isinstance(r, GrpcError) for r in results), results
    codes = {r.code() for r in results if isinstance(r, GrpcError)}
    assert codes <= {StatusCode.CANCELLED, StatusCode.UNAVAILABLE}, codes
    callbacks = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not callbacks, [r.getMessage() for r in callbacks]
