"""Interop: our Channel against a real grpc.aio server running in a separate process.

The server is ``tests/grpcio_server.py`` (generic handlers, no protobuf), started with the
interpreter ``$WOVE_H2GRPC_GRPCIO_PYTHON`` (default: this one), so grpcio never loads here.
Transports: plaintext TCP 127.0.0.1, IPv6 ::1, unix sockets, TLS, wrong CA, server_hostname
override, mTLS. Cases: sizes and limits, every status code, metadata both ways, deadlines,
unknown methods, concurrency, gzip both ways, channel options.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Iterator, List, Optional, Tuple

import pytest
from _support import Certs, HelperProcess, grpcio_python, start_helper

from wove_h2grpc import Channel, GrpcError, StatusCode, __version__

MiB = 1024 * 1024
WEIRD_DETAILS = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
BINARY = bytes(range(256))
CALL_TIMEOUT = 10.0  # bound for calls that should succeed promptly


def _start(*args: str) -> HelperProcess:
    return start_helper("grpcio_server.py", list(args), python=grpcio_python())


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[HelperProcess]:
    """Plaintext grpcio server on 127.0.0.1."""
    proc = _start("--bind", "127.0.0.1:0")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def tls_server(certs: Certs) -> Iterator[HelperProcess]:
    """TLS grpcio server; its certificate names localhost, 127.0.0.1, ::1 and server.test."""
    proc = _start(
        "--bind", "127.0.0.1:0",
        "--tls-cert", certs.server_cert_file,
        "--tls-key", certs.server_key_file,
    )  # fmt: skip
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def mtls_server(certs: Certs) -> Iterator[HelperProcess]:
    """TLS grpcio server that requires a client certificate signed by the test CA."""
    proc = _start(
        "--bind", "127.0.0.1:0",
        "--tls-cert", certs.server_cert_file,
        "--tls-key", certs.server_key_file,
        "--client-ca", certs.ca_file,
    )  # fmt: skip
    yield proc
    proc.stop()


@pytest.fixture()
async def channel(server: HelperProcess) -> AsyncIterator[Channel]:
    async with Channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


async def _call(
    channel: Channel,
    method: str,
    request: bytes = b"",
    *,
    timeout: Optional[float] = CALL_TIMEOUT,
    **kwargs: object,
) -> bytes:
    """One call, bounded in wall time by the test as well as by its own deadline."""
    rpc = channel.unary_unary(method)
    bound = (timeout or CALL_TIMEOUT) + 5.0
    return await asyncio.wait_for(rpc(request, timeout=timeout, **kwargs), bound)


async def _error(
    channel: Channel, method: str, request: bytes = b"", **kwargs: object
) -> GrpcError:
    with pytest.raises(GrpcError) as info:
        await _call(channel, method, request, **kwargs)
    return info.value


async def _stats(channel: Channel) -> dict:
    return json.loads(await _call(channel, "/test.Test/Stats"))


async def _seen_by_server(channel: Channel, **kwargs: object) -> dict:
    """What the server saw of a call: metadata pairs (-bin decoded), peer, time remaining."""
    reply = json.loads(await _call(channel, "/test.Test/Metadata", **kwargs))
    reply["metadata"] = [
        (k, base64.b64decode(v) if k.endswith("-bin") else v) for k, v in reply["metadata"]
    ]
    return reply


def _status_request(code: int, details: str = "", **extra: object) -> bytes:
    return json.dumps({"code": code, "details": details, **extra}).encode()


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


# --- transports ---------------------------------------------------------------------------


async def test_plaintext_tcp_echo(channel: Channel) -> None:
    assert await _call(channel, "/test.Test/Echo", b"hello") == b"hello"


@pytest.mark.parametrize(
    "form", ["127.0.0.1:{port}", "localhost:{port}", "dns:///127.0.0.1:{port}",
             "dns:127.0.0.1:{port}", "ipv4:127.0.0.1:{port}"],
)  # fmt: skip
async def test_target_forms_tcp(server: HelperProcess, form: str) -> None:
    async with Channel(form.format(port=server.port)) as ch:
        assert await _call(ch, "/test.Test/Echo", b"form") == b"form"


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("form", ["[::1]:{port}", "ipv6:[::1]:{port}"])
async def test_ipv6_loopback(form: str) -> None:
    proc = _start("--bind", "[::1]:0")
    try:
        async with Channel(form.format(port=proc.port)) as ch:
            assert await _call(ch, "/test.Test/Echo", b"six") == b"six"
            assert (await _seen_by_server(ch))["peer"].startswith("ipv6:")
    finally:
        proc.stop()


@pytest.mark.parametrize("form", ["unix:{path}", "unix://{path}"])
async def test_unix_socket(tmp_path: Path, form: str) -> None:
    path = str(tmp_path / "grpc.sock")
    proc = _start("--bind", f"unix:{path}")
    try:
        # "unix://" + an absolute path gives the "unix:///path" target form.
        async with Channel(form.format(path=path)) as ch:
            assert await _call(ch, "/test.Test/Echo", b"unix") == b"unix"
            assert (await _seen_by_server(ch))["peer"].startswith("unix:")
    finally:
        proc.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only")
async def test_unix_abstract_socket() -> None:
    name = f"wove-h2grpc-test-{os.getpid()}-{os.urandom(4).hex()}"
    proc = _start("--bind", f"unix-abstract:{name}")
    try:
        async with Channel(f"unix-abstract:{name}") as ch:
            assert await _call(ch, "/test.Test/Echo", b"abstract") == b"abstract"
    finally:
        proc.stop()


async def test_pick_first_skips_a_dead_address(server: HelperProcess) -> None:
    target = f"ipv4:127.0.0.1:{_unused_port()},127.0.0.1:{server.port}"
    async with Channel(target, lb_policy="pick_first") as ch:
        assert await _call(ch, "/test.Test/Echo", b"second address") == b"second address"


async def test_round_robin_spreads_calls_over_every_address() -> None:
    first, second = _start("--bind", "127.0.0.1:0"), _start("--bind", "127.0.0.1:0")
    try:
        target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
        async with Channel(target, lb_policy="round_robin") as ch:
            # round_robin spreads over READY addresses; without this, fast sequential calls
            # may all finish before the second connection is up (as with grpcio).
            await asyncio.wait_for(ch.channel_ready(), 10)
            for i in range(20):
                assert await _call(ch, "/test.Test/Echo", b"%d" % i) == b"%d" % i
        counts = []
        for proc in (first, second):
            async with Channel(f"127.0.0.1:{proc.port}") as ch:
                counts.append((await _stats(ch)).get("Echo", 0))
        assert sum(counts) == 20 and min(counts) >= 5, counts
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_tls_root_certificates(tls_server: HelperProcess, certs: Certs, host: str) -> None:
    async with Channel(
        f"{host}:{tls_server.port}", secure=True, root_certificates=certs.ca_pem
    ) as ch:
        assert await _call(ch, "/test.Test/Echo", b"tls") == b"tls"


async def test_tls_root_certificates_as_str(tls_server: HelperProcess, certs: Certs) -> None:
    async with Channel(
        f"localhost:{tls_server.port}", secure=True, root_certificates=certs.ca_pem.decode()
    ) as ch:
        assert await _call(ch, "/test.Test/Echo", b"str pem") == b"str pem"


async def test_tls_ssl_context_implies_secure(tls_server: HelperProcess, certs: Certs) -> None:
    context = ssl.create_default_context(cadata=certs.ca_pem.decode())
    async with Channel(f"localhost:{tls_server.port}", ssl_context=context) as ch:
        assert await _call(ch, "/test.Test/Echo", b"ctx") == b"ctx"


async def test_tls_wrong_ca_is_unavailable_naming_verification(
    tls_server: HelperProcess, certs: Certs
) -> None:
    async with Channel(
        f"localhost:{tls_server.port}", secure=True, root_certificates=certs.other_ca_pem
    ) as ch:
        err = await _error(ch, "/test.Test/Echo", b"x", timeout=5.0)
    assert err.code() == StatusCode.UNAVAILABLE, err
    assert "verif" in err.details().lower(), err.details()


async def test_tls_server_hostname_override(tls_server: HelperProcess, certs: Certs) -> None:
    # Dial an address; check the certificate against (and send as SNI) the override name.
    async with Channel(
        f"127.0.0.1:{tls_server.port}",
        secure=True,
        root_certificates=certs.ca_pem,
        server_hostname="server.test",
    ) as ch:
        assert await _call(ch, "/test.Test/Echo", b"sni") == b"sni"


async def test_tls_server_hostname_mismatch_is_unavailable(
    tls_server: HelperProcess, certs: Certs
) -> None:
    async with Channel(
        f"127.0.0.1:{tls_server.port}",
        secure=True,
        root_certificates=certs.ca_pem,
        server_hostname="not-the-server.test",
    ) as ch:
        err = await _error(ch, "/test.Test/Echo", b"x", timeout=5.0)
    assert err.code() == StatusCode.UNAVAILABLE, err
    assert "not-the-server.test" in err.details() or "hostname" in err.details().lower(), err


async def test_mtls_with_client_certificate(mtls_server: HelperProcess, certs: Certs) -> None:
    async with Channel(
        f"localhost:{mtls_server.port}",
        secure=True,
        root_certificates=certs.ca_pem,
        private_key=certs.client_key_pem,
        certificate_chain=certs.client_cert_pem,
    ) as ch:
        assert await _call(ch, "/test.Test/Echo", b"mutual") == b"mutual"


async def test_mtls_without_client_certificate_is_unavailable(
    mtls_server: HelperProcess, certs: Certs
) -> None:
    async with Channel(
        f"localhost:{mtls_server.port}", secure=True, root_certificates=certs.ca_pem
    ) as ch:
        err = await _error(ch, "/test.Test/Echo", b"x", timeout=5.0)
    assert err.code() == StatusCode.UNAVAILABLE, err


async def test_plaintext_channel_to_tls_server_is_unavailable(tls_server: HelperProcess) -> None:
    async with Channel(f"127.0.0.1:{tls_server.port}", connect_timeout=2.0) as ch:
        err = await _error(ch, "/test.Test/Echo", b"x", timeout=5.0)
    assert err.code() == StatusCode.UNAVAILABLE, err


async def test_tls_channel_to_plaintext_server_is_unavailable(
    server: HelperProcess, certs: Certs
) -> None:
    async with Channel(
        f"localhost:{server.port}", secure=True, root_certificates=certs.ca_pem,
        connect_timeout=2.0,
    ) as ch:  # fmt: skip
        err = await _error(ch, "/test.Test/Echo", b"x", timeout=5.0)
    assert err.code() == StatusCode.UNAVAILABLE, err


# --- sizes and limits ---------------------------------------------------------------------


async def test_empty_request_and_response(channel: Channel) -> None:
    assert await _call(channel, "/test.Test/Echo", b"") == b""
    assert await _call(channel, "/test.Test/Size", b'{"size": 0}') == b""


async def test_one_mib_round_trip(channel: Channel) -> None:
    payload = os.urandom(MiB)
    assert await _call(channel, "/test.Test/Echo", payload) == payload


async def test_eight_mib_round_trip_with_raised_receive_limit(server: HelperProcess) -> None:
    payload = os.urandom(8 * MiB)
    async with Channel(f"127.0.0.1:{server.port}", max_receive_message_length=16 * MiB) as ch:
        assert await _call(ch, "/test.Test/Echo", payload) == payload


async def test_eight_mib_round_trip_over_tls(tls_server: HelperProcess, certs: Certs) -> None:
    payload = os.urandom(8 * MiB)
    async with Channel(
        f"localhost:{tls_server.port}",
        secure=True,
        root_certificates=certs.ca_pem,
        max_receive_message_length=16 * MiB,
    ) as ch:
        assert await _call(ch, "/test.Test/Echo", payload) == payload


async def test_five_mib_response_over_default_limit_is_resource_exhausted(
    channel: Channel,
) -> None:
    err = await _error(channel, "/test.Test/Size", json.dumps({"size": 5 * MiB}).encode())
    assert err.code() == StatusCode.RESOURCE_EXHAUSTED, err
    # The channel is still usable afterwards (only that stream was reset).
    assert await _call(channel, "/test.Test/Echo", b"after") == b"after"


async def test_max_send_message_length_fails_before_sending(server: HelperProcess) -> None:
    async with Channel(f"127.0.0.1:{server.port}", max_send_message_length=1000) as ch:
        before = (await _stats(ch)).get("Echo", 0)
        err = await _error(ch, "/test.Test/Echo", b"x" * 1001)
        assert err.code() == StatusCode.RESOURCE_EXHAUSTED, err
        assert (await _stats(ch)).get("Echo", 0) == before  # the server never saw it
        assert await _call(ch, "/test.Test/Echo", b"x" * 1000) == b"x" * 1000


# --- status codes and metadata ------------------------------------------------------------


@pytest.mark.parametrize("code", [c for c in StatusCode if c != StatusCode.OK])
async def test_every_status_code_with_details(channel: Channel, code: StatusCode) -> None:
    err = await _error(channel, "/test.Test/Status", _status_request(int(code), WEIRD_DETAILS))
    assert err.code() == code
    assert err.details() == WEIRD_DETAILS
    assert code.name in str(err)


async def test_status_with_plain_details(channel: Channel) -> None:
    err = await _error(channel, "/test.Test/Status", _status_request(9, "plain 100% ok"))
    assert (err.code(), err.details()) == (StatusCode.FAILED_PRECONDITION, "plain 100% ok")


async def test_metadata_client_to_server_including_bin(channel: Channel) -> None:
    seen = await _seen_by_server(
        channel, metadata=[("x-text", "hello world"), ("x-data-bin", BINARY), ("x-multi", "1"),
                           ("x-multi", "2")],
    )  # fmt: skip
    pairs = seen["metadata"]
    assert ("x-text", "hello world") in pairs
    assert ("x-data-bin", BINARY) in pairs
    assert [v for k, v in pairs if k == "x-multi"] == ["1", "2"]


async def test_metadata_server_to_client_initial_and_trailing_including_bin(
    channel: Channel,
) -> None:
    request = _status_request(
        int(StatusCode.ABORTED),
        "with metadata",
        initial=[["i-text", "initial value"], ["i-data-bin", _b64(BINARY)]],
        trailing=[["t-text", "trailing value"], ["t-data-bin", _b64(b"\x00\xff\x00")]],
    )
    err = await _error(channel, "/test.Test/Status", request)
    assert err.code() == StatusCode.ABORTED
    initial = list(err.initial_metadata())
    trailing = list(err.trailing_metadata())
    assert ("i-text", "initial value") in initial
    assert ("i-data-bin", BINARY) in initial
    assert ("t-text", "trailing value") in trailing
    assert ("t-data-bin", b"\x00\xff\x00") in trailing
    assert all(isinstance(v, bytes) == k.endswith("-bin") for k, v in initial + trailing)


async def test_metadata_round_trip_echoed_by_server(channel: Channel) -> None:
    request = _status_request(int(StatusCode.NOT_FOUND), "echo", echo=True)
    err = await _error(
        channel, "/test.Test/Status", request, metadata=(("x-round", "trip"), ("x-r-bin", BINARY))
    )
    for got in (err.initial_metadata(), err.trailing_metadata()):
        assert ("x-round", "trip") in got
        assert ("x-r-bin", BINARY) in got


async def test_metadata_as_dict(channel: Channel) -> None:
    seen = await _seen_by_server(channel, metadata={"x-dict": "yes"})
    assert ("x-dict", "yes") in seen["metadata"]


async def test_default_and_per_call_metadata(server: HelperProcess) -> None:
    async with Channel(
        f"127.0.0.1:{server.port}", metadata={"x-default": "d", "x-default-bin": b"\x01"}
    ) as ch:
        seen = await _seen_by_server(ch, metadata=[("x-call", "c")])
        assert ("x-default", "d") in seen["metadata"]
        assert ("x-default-bin", b"\x01") in seen["metadata"]
        assert ("x-call", "c") in seen["metadata"]
        seen = await _seen_by_server(ch)
        assert ("x-default", "d") in seen["metadata"]
        assert not any(k == "x-call" for k, _ in seen["metadata"])


async def test_user_agent_default_and_prefix(server: HelperProcess) -> None:
    async with Channel(f"127.0.0.1:{server.port}") as ch:
        agent = dict((await _seen_by_server(ch))["metadata"])["user-agent"]
        assert agent.startswith(f"wove_h2grpc/{__version__}"), agent
    async with Channel(f"127.0.0.1:{server.port}", user_agent="my-app/1.2") as ch:
        agent = dict((await _seen_by_server(ch))["metadata"])["user-agent"]
        assert agent.startswith("my-app/1.2"), agent


# --- deadlines ----------------------------------------------------------------------------


async def test_deadline_fires_before_the_handler_wakes(channel: Channel) -> None:
    before = await _stats(channel)
    started = time.monotonic()
    with pytest.raises(GrpcError) as info:
        await asyncio.wait_for(
            channel.unary_unary("/test.Test/Sleep")(b'{"seconds": 5}', timeout=0.5), 1.5
        )
    elapsed = time.monotonic() - started
    assert info.value.code() == StatusCode.DEADLINE_EXCEEDED, info.value
    assert 0.4 <= elapsed < 1.5, elapsed
    after = await _stats(channel)
    assert after.get("sleep_started", 0) == before.get("sleep_started", 0) + 1
    assert after.get("sleep_woke", 0) == before.get("sleep_woke", 0)


async def test_default_timeout_and_per_call_override(server: HelperProcess) -> None:
    async with Channel(f"127.0.0.1:{server.port}", timeout=30.0) as ch:
        remaining = (await _seen_by_server(ch, timeout=None))["time_remaining"]
        assert remaining is not None and 20.0 < remaining <= 30.5, remaining
        remaining = (await _seen_by_server(ch, timeout=5.0))["time_remaining"]
        assert remaining is not None and 3.0 < remaining <= 5.5, remaining
    async with Channel(f"127.0.0.1:{server.port}", timeout=0.3) as ch:
        started = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(ch.unary_unary("/test.Test/Sleep")(b'{"seconds": 5}'), 1.5)
        assert info.value.code() == StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.3


async def test_no_timeout_sends_no_deadline(channel: Channel) -> None:
    assert (await _seen_by_server(channel, timeout=None))["time_remaining"] is None


# --- methods, concurrency, compression ----------------------------------------------------


async def test_unknown_method_is_unimplemented(channel: Channel) -> None:
    err = await _error(channel, "/test.Test/NoSuchMethod", b"x")
    assert err.code() == StatusCode.UNIMPLEMENTED, err
    err = await _error(channel, "/no.Such/Service", b"x")
    assert err.code() == StatusCode.UNIMPLEMENTED, err


async def test_method_must_start_with_slash(channel: Channel) -> None:
    with pytest.raises(ValueError):
        channel.unary_unary("test.Test/Echo")


async def test_serializers(channel: Channel) -> None:
    rpc = channel.unary_unary(
        "/test.Test/Echo",
        request_serializer=lambda s: s.encode("utf-8"),
        response_deserializer=lambda b: b.decode("utf-8"),
    )
    assert await asyncio.wait_for(rpc("grüße", timeout=CALL_TIMEOUT), 15) == "grüße"


async def test_thousand_concurrent_calls_on_one_channel(channel: Channel) -> None:
    rpc = channel.unary_unary("/test.Test/Echo")
    payloads = [f"call {i}".encode() * (1 + i % 7) for i in range(1000)]
    replies = await asyncio.wait_for(asyncio.gather(*(rpc(p, timeout=30.0) for p in payloads)), 45)
    assert replies == payloads


class _CountingProxy:
    """A loopback TCP proxy counting bytes each way, to see compression on the wire."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.to_server = 0
        self.to_client = 0
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: List[asyncio.Task[None]] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if upstream:
                    self.to_server += len(data)
                else:
                    self.to_client += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._tasks += [
            asyncio.ensure_future(self._pipe(reader, up_writer, True)),
            asyncio.ensure_future(self._pipe(up_reader, writer, False)),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture()
async def proxy(server: HelperProcess) -> AsyncIterator[Tuple[_CountingProxy, int]]:
    counting = _CountingProxy(server.port)
    port = await counting.start()
    yield counting, port
    await counting.close()


async def test_gzip_request_channel_default(proxy: Tuple[_CountingProxy, int]) -> None:
    counting, port = proxy
    payload = b"\x00" * MiB  # compresses to about 1 KiB
    async with Channel(f"127.0.0.1:{port}", compression="gzip") as ch:
        assert await _call(ch, "/test.Test/Echo", payload) == payload
    assert counting.to_server < 64 * 1024, counting.to_server


async def test_gzip_request_per_call(proxy: Tuple[_CountingProxy, int]) -> None:
    counting, port = proxy
    payload = b"\x00" * MiB
    async with Channel(f"127.0.0.1:{port}") as ch:
        assert await _call(ch, "/test.Test/Echo", payload, compression="gzip") == payload
    assert counting.to_server < 64 * 1024, counting.to_server


async def test_uncompressed_request_by_default(proxy: Tuple[_CountingProxy, int]) -> None:
    counting, port = proxy
    async with Channel(f"127.0.0.1:{port}") as ch:
        assert await _call(ch, "/test.Test/Echo", b"\x00" * MiB) == b"\x00" * MiB
    assert counting.to_server > MiB, counting.to_server


async def test_gzip_response(proxy: Tuple[_CountingProxy, int]) -> None:
    counting, port = proxy
    payload = b"\x00" * MiB
    async with Channel(f"127.0.0.1:{port}", compression="gzip") as ch:
        assert await _call(ch, "/test.Test/Gzip", payload) == payload
    assert counting.to_client < 64 * 1024, counting.to_client


async def test_gzip_response_from_server_default_compression() -> None:
    proc = _start("--compression", "gzip")
    try:
        counting = _CountingProxy(proc.port)
        port = await counting.start()
        try:
            async with Channel(f"127.0.0.1:{port}") as ch:
                reply = await _call(ch, "/test.Test/Size", json.dumps({"size": MiB}).encode())
            assert reply == b"x" * MiB
            assert counting.to_client < 64 * 1024, counting.to_client
        finally:
            await counting.close()
    finally:
        proc.stop()


# --- channel lifecycle --------------------------------------------------------------------


async def test_channel_ready(server: HelperProcess) -> None:
    async with Channel(f"127.0.0.1:{server.port}") as ch:
        await asyncio.wait_for(ch.channel_ready(), 10)
        assert await _call(ch, "/test.Test/Echo", b"r") == b"r"


async def test_channel_ready_fails_unavailable_when_nothing_listens() -> None:
    async with Channel(f"127.0.0.1:{_unused_port()}", connect_timeout=2.0) as ch:
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(ch.channel_ready(), 10)
    assert info.value.code() == StatusCode.UNAVAILABLE


async def test_close_with_grace_lets_calls_finish(server: HelperProcess) -> None:
    ch = Channel(f"127.0.0.1:{server.port}")
    call = asyncio.ensure_future(_call(ch, "/test.Test/Sleep", b'{"seconds": 0.5}'))
    await asyncio.sleep(0.2)
    await asyncio.wait_for(ch.close(grace=5.0), 10)
    assert await asyncio.wait_for(call, 5) == b"woke"


async def test_close_grace_expiry_cancels_calls(server: HelperProcess) -> None:
    ch = Channel(f"127.0.0.1:{server.port}")
    call = asyncio.ensure_future(_call(ch, "/test.Test/Sleep", b'{"seconds": 5}'))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await asyncio.wait_for(ch.close(grace=0.3), 5)
    assert time.monotonic() - started < 2.0
    with pytest.raises(GrpcError) as info:
        await asyncio.wait_for(call, 2)
    assert info.value.code() == StatusCode.CANCELLED, info.value


async def test_close_refuses_new_calls_and_is_idempotent(server: HelperProcess) -> None:
    ch = Channel(f"127.0.0.1:{server.port}")
    assert await _call(ch, "/test.Test/Echo", b"once") == b"once"
    await asyncio.wait_for(ch.close(), 5)
    await asyncio.wait_for(ch.close(), 5)
    with pytest.raises(GrpcError) as info:
        await _call(ch, "/test.Test/Echo", b"twice")
    assert info.value.code() == StatusCode.CANCELLED, info.value


async def test_cancelled_caller_leaves_channel_usable(channel: Channel) -> None:
    before = await _stats(channel)
    task = asyncio.ensure_future(_call(channel, "/test.Test/Sleep", b'{"seconds": 5}'))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    # The stream was reset with CANCEL: grpcio cancels the handler instead of letting it wake.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        after = await _stats(channel)
        if after.get("sleep_cancelled", 0) > before.get("sleep_cancelled", 0):
            break
        await asyncio.sleep(0.05)
    assert after.get("sleep_cancelled", 0) == before.get("sleep_cancelled", 0) + 1
    assert await _call(channel, "/test.Test/Echo", b"still") == b"still"


@pytest.mark.parametrize("target", ["", "unix:", "host:notaport", "dns:///"])
async def test_malformed_target_raises_value_error(target: str) -> None:
    with pytest.raises(ValueError):
        Channel(target)


def test_channel_reused_from_a_second_event_loop(server: HelperProcess) -> None:
    ch = Channel(f"127.0.0.1:{server.port}")

    async def once(payload: bytes) -> bytes:
        return await _call(ch, "/test.Test/Echo", payload)

    assert asyncio.run(once(b"first loop")) == b"first loop"
    assert asyncio.run(once(b"second loop")) == b"second loop"
    asyncio.run(ch.close())
