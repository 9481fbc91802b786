"""Server tests: a raw h2 client (tests/_server_raw_client.py) and grpcio aio clients in a
helper process (tests/grpcio_client_helper.py) against our ``Server``."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import tempfile
import time
from typing import Any, AsyncIterator, Dict, List, Optional

import pytest
from _server_raw_client import RawClient, grpc_message
from _support import REPO_DIR, TESTS_DIR, Certs, grpcio_python
from h2.connection import ConnectionState
from h2.errors import ErrorCodes

from wove_h2grpc import Channel, Server, ServicerContext, StatusCode

UNICODE_DETAILS = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"


class Recorder:
    """Handlers under test plus what they observed."""

    def __init__(self) -> None:
        self.seen: Dict[str, Any] = {}
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled: List[str] = []

    def handlers(self) -> Dict[str, Any]:
        return {
            "/test.S/Echo": self.echo,
            "/test.S/Meta": self.meta,
            "/test.S/Abort": self.abort,
            "/test.S/Raise": self.raise_,
            "/test.S/Sleep": self.sleep,
            "/test.S/Big": self.big,
            "/test.S/Block": self.block,
            "/test.S/SetCode": self.set_code,
            "/test.S/AbortMeta": self.abort_meta,
        }

    async def echo(self, request: bytes, context: ServicerContext) -> bytes:
        return request

    async def meta(self, request: bytes, context: ServicerContext) -> bytes:
        md = context.invocation_metadata()
        self.seen["metadata"] = md
        self.seen["peer"] = context.peer()
        self.seen["time_remaining"] = context.time_remaining()
        context.set_trailing_metadata(
            [("x-trailer", "t-value"), ("x-trailer-bin", b"\x00\x01\xfe\xff")]
        )
        out = []
        for key, value in md:
            if isinstance(value, bytes):
                out.append([key, "bin:" + value.hex()])
            else:
                out.append([key, value])
        return json.dumps(out).encode()

    async def abort(self, request: bytes, context: ServicerContext) -> bytes:
        spec = json.loads(request)
        await context.abort(StatusCode(spec["code"]), spec["details"])

    async def raise_(self, request: bytes, context: ServicerContext) -> bytes:
        raise ValueError("secret internal text")

    async def sleep(self, request: bytes, context: ServicerContext) -> bytes:
        self.seen["time_remaining"] = context.time_remaining()
        self.started.set()
        try:
            await asyncio.sleep(float(request or b"30"))
        except asyncio.CancelledError:
            self.cancelled.append("sleep")
            self.seen["cancelled_flag"] = context.cancelled()
            raise
        return b"slept"

    async def big(self, request: bytes, context: ServicerContext) -> bytes:
        self.seen["big_request"] = len(request)
        return b"r" * int(request[:20].split(b"|")[0])

    async def block(self, request: bytes, context: ServicerContext) -> bytes:
        self.started.set()
        await self.release.wait()
        return b"released"

    async def abort_meta(self, request: bytes, context: ServicerContext) -> bytes:
        context.set_trailing_metadata({"x-why": "because", "x-why-bin": b"\x00\xff"})
        if request == b"replace":
            # As in grpcio, metadata given to abort() replaces set_trailing_metadata().
            await context.abort(StatusCode.FAILED_PRECONDITION, "not now", [("x-other", "o")])
        await context.abort(StatusCode.FAILED_PRECONDITION, "not now")

    async def set_code(self, request: bytes, context: ServicerContext) -> bytes:
        context.set_code(StatusCode.NOT_FOUND)
        context.set_details("no such thing")
        return b"ignored"


@pytest.fixture
async def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def server(rec: Recorder) -> AsyncIterator[tuple]:
    srv = Server(rec.handlers())
    port = await srv.start("127.0.0.1:0")
    yield srv, port
    await asyncio.wait_for(srv.stop(grace=1.0), 15)


@pytest.fixture
async def client(server: tuple) -> AsyncIterator[RawClient]:
    _, port = server
    c = await RawClient.connect("127.0.0.1", port)
    yield c
    await c.close()


# -- raw h2 client -----------------------------------------------------------------------


async def test_echo_and_response_shape(client: RawClient) -> None:
    resp = await client.call("/test.S/Echo", b"hello")
    assert resp.status == 0
    assert resp.messages() == [b"hello"]
    assert (b":status", b"200") in resp.headers
    assert (b"content-type", b"application/grpc") in resp.headers
    assert resp.trailers[0] == (b"grpc-status", b"0")


async def test_settings_advertised(client: RawClient) -> None:
    from h2.settings import SettingCodes

    assert client.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 1000
    assert client.remote_settings[SettingCodes.INITIAL_WINDOW_SIZE] >= 1 << 20
    assert client.remote_settings[SettingCodes.MAX_FRAME_SIZE] > 16384
    assert client.remote_settings[SettingCodes.MAX_HEADER_LIST_SIZE] == 16384


async def test_metadata_both_ways(client: RawClient, rec: Recorder) -> None:
    resp = await client.call(
        "/test.S/Meta",
        b"",
        metadata=[(b"x-plain", b"value 1"), (b"x-data-bin", b"AAEC/w")],  # unpadded base64
        grpc_timeout="5S",
    )
    assert resp.status == 0
    got = dict((k, v) for k, v in json.loads(resp.messages()[0]))
    assert got["x-plain"] == "value 1"
    assert got["x-data-bin"] == "bin:000102ff"
    assert ("x-trailer", "t-value") in [(k.decode(), v.decode()) for k, v in resp.trailers]
    assert (b"x-trailer-bin", b"AAH+/w") in resp.trailers
    assert rec.seen["peer"].startswith("ipv4:127.0.0.1:")
    assert 4.0 < rec.seen["time_remaining"] <= 5.0


@pytest.mark.parametrize("code", [c for c in StatusCode if c is not StatusCode.OK])
async def test_abort_every_code(client: RawClient, code: StatusCode) -> None:
    spec = json.dumps({"code": int(code), "details": UNICODE_DETAILS}).encode()
    resp = await client.call("/test.S/Abort", spec)
    assert resp.status == int(code)
    assert resp.message == UNICODE_DETAILS
    assert resp.trailers_only


async def test_set_code_without_abort(client: RawClient) -> None:
    resp = await client.call("/test.S/SetCode", b"")
    assert resp.status == StatusCode.NOT_FOUND
    assert resp.message == "no such thing"
    assert resp.data == b""


async def test_unknown_method_is_trailers_only_unimplemented(client: RawClient) -> None:
    resp = await client.call("/test.S/Nope", b"x")
    assert resp.trailers_only
    assert resp.status == StatusCode.UNIMPLEMENTED
    assert "/test.S/Nope" in resp.message


async def test_handler_exception_text_withheld(client: RawClient, caplog: Any) -> None:
    resp = await client.call("/test.S/Raise", b"")
    assert resp.status == StatusCode.UNKNOWN
    assert "secret" not in resp.message
    assert any("secret internal text" in str(r.exc_info) for r in caplog.records if r.exc_info)


async def test_handler_exception_text_with_debug(rec: Recorder) -> None:
    srv = Server(rec.handlers(), debug=True)
    port = await srv.start("127.0.0.1:0")
    try:
        c = await RawClient.connect("127.0.0.1", port)
        resp = await c.call("/test.S/Raise", b"")
        assert resp.status == StatusCode.UNKNOWN
        assert "secret internal text" in resp.message
        await c.close()
    finally:
        await asyncio.wait_for(srv.stop(), 10)


async def test_deadline_cancels_handler(client: RawClient, rec: Recorder) -> None:
    start = time.monotonic()
    resp = await client.call("/test.S/Sleep", b"30", grpc_timeout="200m")
    assert resp.status == StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 5
    # uvloop's clock moves once per loop turn: read in the turn the request arrived, the
    # remaining time is the whole 0.2 s, give or take a float rounding.
    assert 0 < rec.seen["time_remaining"] <= 0.2 + 1e-9
    await asyncio.sleep(0.05)
    assert rec.cancelled == ["sleep"]
    assert rec.seen["cancelled_flag"] is True


async def test_client_reset_cancels_handler(client: RawClient, rec: Recorder) -> None:
    sid = client.start("/test.S/Sleep")
    await client.send_body(sid, grpc_message(b"30"))
    await asyncio.wait_for(rec.started.wait(), 5)
    client.reset(sid)
    for _ in range(100):
        if rec.cancelled:
            break
        await asyncio.sleep(0.02)
    assert rec.cancelled == ["sleep"]
    assert rec.seen["cancelled_flag"] is True
    # The connection keeps working.
    assert (await client.call("/test.S/Echo", b"after")).messages() == [b"after"]


async def test_max_receive_message_length(rec: Recorder) -> None:
    srv = Server(rec.handlers(), max_receive_message_length=1000)
    port = await srv.start("127.0.0.1:0")
    try:
        c = await RawClient.connect("127.0.0.1", port)
        resp = await c.call("/test.S/Echo", b"x" * 1001)
        assert resp.status == StatusCode.RESOURCE_EXHAUSTED
        ok = await c.call("/test.S/Echo", b"x" * 1000)
        assert ok.status == 0 and ok.messages() == [b"x" * 1000]
        # A large request is refused from its prefix while it is still streaming in.
        big = await c.call("/test.S/Echo", b"y" * (3 << 20))
        assert big.status == StatusCode.RESOURCE_EXHAUSTED
        assert (await c.call("/test.S/Echo", b"z")).messages() == [b"z"]
        await c.close()
    finally:
        await asyncio.wait_for(srv.stop(), 10)


async def test_8mib_both_ways(rec: Recorder) -> None:
    srv = Server(rec.handlers(), max_receive_message_length=16 << 20)
    port = await srv.start("127.0.0.1:0")
    try:
        c = await RawClient.connect("127.0.0.1", port)
        size = 8 << 20
        request = b"%d|" % size + b"q" * (size - 10)
        resp = await c.call("/test.S/Big", request, timeout=60)
        assert resp.status == 0
        assert rec.seen["big_request"] == len(request)
        assert resp.messages() == [b"r" * size]
        await c.close()
    finally:
        await asyncio.wait_for(srv.stop(), 10)


async def _blocked_big_call(port: int, grpc_timeout: Optional[str] = None) -> tuple:
    """A client with a 1000-byte window that never hands it back asks for 1 MiB: the
    server's handler is left waiting on flow control inside its reply."""
    c = await RawClient.connect("127.0.0.1", port, initial_window=1000)
    c.auto_ack = False
    sid = c.start("/test.S/Big", grpc_timeout=grpc_timeout)
    await c.send_body(sid, grpc_message(b"%d|" % (1 << 20)))
    await asyncio.wait_for(c.data_event.wait(), 5)
    return c, sid


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_reset_while_reply_waits_on_flow_control(server: tuple) -> None:
    srv, port = server
    c, sid = await _blocked_big_call(port)
    (proto,) = [p for p in srv._connections if p.calls]
    call = proto.calls[sid]
    task = call.task
    assert task is not None and not task.done()
    c.reset(sid)
    await _until(lambda: task.done() and not proto.calls)
    assert call.cancelled and task.exception() is None
    assert (await c.call("/test.S/Echo", b"x")).status == 0  # small: fits the window
    await c.close()


async def test_deadline_while_reply_waits_on_flow_control(server: tuple) -> None:
    srv, port = server
    c, sid = await _blocked_big_call(port, grpc_timeout="300m")
    resp = await c.response(sid, 5)  # trailers are HEADERS: not flow controlled
    assert resp.status == StatusCode.DEADLINE_EXCEEDED
    assert not any(p.calls for p in srv._connections)
    await c.close()


async def test_connection_lost_while_reply_waits_on_flow_control(server: tuple) -> None:
    srv, port = server
    c, sid = await _blocked_big_call(port)
    (proto,) = [p for p in srv._connections if p.calls]
    call = proto.calls[sid]
    task = call.task
    assert task is not None
    c.writer.transport.abort()
    await _until(lambda: task.done() and proto.closed.done())
    assert call.cancelled
    await c.close()


async def test_gzip_request_gets_gzip_response(client: RawClient) -> None:
    resp = await client.call("/test.S/Echo", b"z" * 5000, gzip=True)
    assert resp.status == 0
    assert resp.header(b"grpc-encoding") == b"gzip"
    assert resp.data[0] == 1 and len(resp.data) < 1000
    assert resp.messages() == [b"z" * 5000]
    plain = await client.call("/test.S/Echo", b"z" * 5000)
    assert plain.header(b"grpc-encoding") is None and plain.data[0] == 0


async def test_unsupported_request_encoding(client: RawClient) -> None:
    sid = client.start("/test.S/Echo", metadata=[(b"grpc-encoding", b"snappy")])
    await client.send_body(sid, b"\x01\x00\x00\x00\x01x")
    resp = await client.response(sid)
    assert resp.status == StatusCode.UNIMPLEMENTED
    assert resp.header(b"grpc-accept-encoding") == b"identity,gzip"


async def test_non_grpc_requests_rejected(client: RawClient) -> None:
    sid = client.start("/test.S/Echo", method=b"GET", end_stream=True)
    resp = await client.response(sid)
    assert (b":status", b"405") in resp.headers
    sid = client.start("/test.S/Echo", content_type=b"text/plain", end_stream=True)
    resp = await client.response(sid)
    assert (b":status", b"415") in resp.headers
    sid = client.start("/test.S/Echo", content_type=b"application/grpc+proto")
    await client.send_body(sid, grpc_message(b"proto ok"))
    assert (await client.response(sid)).messages() == [b"proto ok"]


async def test_bad_request_bodies(client: RawClient) -> None:
    # No message at all.
    sid = client.start("/test.S/Echo", end_stream=True)
    assert (await client.response(sid)).status == StatusCode.INTERNAL
    # Truncated message.
    sid = client.start("/test.S/Echo")
    await client.send_body(sid, b"\x00\x00\x00\x00\x09abc")
    assert (await client.response(sid)).status == StatusCode.INTERNAL
    # Two messages for a unary method.
    sid = client.start("/test.S/Echo")
    await client.send_body(sid, grpc_message(b"a") + grpc_message(b"b"))
    assert (await client.response(sid)).status == StatusCode.UNIMPLEMENTED
    # Compressed flag without grpc-encoding.
    sid = client.start("/test.S/Echo")
    await client.send_body(sid, b"\x01\x00\x00\x00\x01x")
    assert (await client.response(sid)).status == StatusCode.INTERNAL
    # Malformed grpc-timeout.
    sid = client.start("/test.S/Echo", grpc_timeout="forever")
    await client.send_body(sid, grpc_message(b"a"))
    assert (await client.response(sid)).status == StatusCode.INTERNAL
    assert (await client.call("/test.S/Echo", b"still fine")).status == 0


async def test_max_concurrent_streams_refused(rec: Recorder) -> None:
    srv = Server(rec.handlers(), max_concurrent_streams=3)
    port = await srv.start("127.0.0.1:0")
    try:
        c = await RawClient.connect("127.0.0.1", port)
        c.ignore_stream_limit()
        ids = []
        for _ in range(5):  # ignore the advertised limit on purpose
            sid = c.start("/test.S/Block")
            await c.send_body(sid, grpc_message(b""))
            ids.append(sid)
        refused = [await c.response(sid, 5) for sid in ids[3:]]
        assert [r.reset_code for r in refused] == [ErrorCodes.REFUSED_STREAM] * 2
        rec.release.set()
        done = [await c.response(sid, 5) for sid in ids[:3]]
        assert [r.messages() for r in done] == [[b"released"]] * 3
        # The connection survived and the slots are free again.
        assert (await c.call("/test.S/Echo", b"x")).status == 0
        await c.close()
    finally:
        await asyncio.wait_for(srv.stop(), 10)


async def test_stop_drains_then_cancels(rec: Recorder) -> None:
    srv = Server(rec.handlers())
    port = await srv.start("127.0.0.1:0")
    c = await RawClient.connect("127.0.0.1", port)
    short = c.start("/test.S/Sleep")
    await c.send_body(short, grpc_message(b"0.3"))
    long = c.start("/test.S/Block")
    await c.send_body(long, grpc_message(b""))
    await asyncio.wait_for(rec.started.wait(), 5)
    await asyncio.sleep(0.05)
    start = time.monotonic()
    stop = asyncio.ensure_future(srv.stop(grace=1.0))
    await asyncio.sleep(0.1)
    assert c.goaway is not None and c.goaway.last_stream_id == long
    # A stream that crossed the GOAWAY is refused (never processed: safe to retry elsewhere).
    # (h2 would refuse to open it after GOAWAY; pretend it was sent just before.)
    c.conn.state_machine.state = ConnectionState.CLIENT_OPEN
    late = c.start("/test.S/Echo")
    await c.send_body(late, grpc_message(b"late"))
    assert (await c.response(late, 5)).reset_code == ErrorCodes.REFUSED_STREAM
    assert (await c.response(short, 5)).messages() == [b"slept"]
    assert (await c.response(long, 5)).reset_code == ErrorCodes.CANCEL
    await asyncio.wait_for(stop, 10)
    assert 0.9 < time.monotonic() - start < 5
    await asyncio.wait_for(srv.wait_closed(), 5)
    await asyncio.wait_for(c.closed.wait(), 5)
    await c.close()
    with pytest.raises(OSError):
        await RawClient.connect("127.0.0.1", port, timeout=2)


async def test_stop_without_grace_cancels_at_once(rec: Recorder) -> None:
    srv = Server(rec.handlers())
    port = await srv.start("127.0.0.1:0")
    c = await RawClient.connect("127.0.0.1", port)
    sid = c.start("/test.S/Sleep")
    await c.send_body(sid, grpc_message(b"30"))
    await asyncio.wait_for(rec.started.wait(), 5)
    start = time.monotonic()
    await asyncio.wait_for(srv.stop(), 10)
    assert time.monotonic() - start < 2
    assert rec.cancelled == ["sleep"]
    await c.close()


async def test_unix_socket(rec: Recorder) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "grpc.sock")
        srv = Server(rec.handlers())
        assert await srv.start(f"unix:{path}") == 0
        try:
            c = await RawClient.connect(path=path)
            resp = await c.call("/test.S/Meta", b"")
            assert resp.status == 0
            assert rec.seen["peer"].startswith("unix:")
            await c.close()
        finally:
            await asyncio.wait_for(srv.stop(), 10)
        assert not os.path.exists(path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only")
async def test_abstract_unix_socket_with_tls_served_to_our_channel(
    rec: Recorder, certs: Certs
) -> None:
    """Bound and connected by socket, not by name: on uvloop too (libuv cannot by name)."""
    name = f"wove-h2grpc-test-{os.getpid()}-abstract"
    srv = Server(rec.handlers())
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs.server_cert_file, certs.server_key_file)
    server_ctx.set_alpn_protocols(["h2"])
    assert await srv.start(f"unix-abstract:{name}", ssl_context=server_ctx) == 0
    try:
        with pytest.raises(OSError):  # the name is taken while it serves
            await Server(rec.handlers()).start(f"unix-abstract:{name}")
        async with Channel(
            f"unix-abstract:{name}", secure=True, root_certificates=certs.ca_pem
        ) as channel:
            reply = await asyncio.wait_for(channel.unary_unary("/test.S/Meta")(b"", timeout=5), 10)
            assert isinstance(reply, bytes)
        assert rec.seen["peer"].startswith("unix:")
    finally:
        await asyncio.wait_for(srv.stop(), 10)


async def test_ipv6(rec: Recorder) -> None:
    srv = Server(rec.handlers())
    try:
        port = await srv.start("[::1]:0")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        c = await RawClient.connect("::1", port)
        assert (await c.call("/test.S/Meta", b"")).status == 0
        assert rec.seen["peer"].startswith("ipv6:[::1]:")
        await c.close()
    finally:
        await asyncio.wait_for(srv.stop(), 10)


def _server_tls(certs: Certs, *, require_client: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.server_cert_file, certs.server_key_file)
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(certs.ca_file)
    return ctx


def _client_tls(certs: Certs, alpn: List[str], *, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca_file)
    ctx.set_alpn_protocols(alpn)
    if with_cert:
        ctx.load_cert_chain(certs.client_cert_file, certs.client_key_file)
    return ctx


async def test_tls_alpn_h2_required(rec: Recorder, certs: Certs) -> None:
    srv = Server(rec.handlers())
    port = await srv.start("127.0.0.1:0", ssl_context=_server_tls(certs))
    try:
        c = await RawClient.connect(
            "127.0.0.1", port, ssl_context=_client_tls(certs, ["h2"]), server_hostname="localhost"
        )
        assert (await c.call("/test.S/Echo", b"tls")).messages() == [b"tls"]
        await c.close()
        # A client that does not negotiate h2 is dropped.
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=_client_tls(certs, ["http/1.1"]),
                server_hostname="localhost",
            ),
            10,
        )
        assert await asyncio.wait_for(reader.read(100), 10) == b""
        writer.close()
    finally:
        await asyncio.wait_for(srv.stop(), 10)


async def test_mtls_requires_client_certificate(rec: Recorder, certs: Certs) -> None:
    srv = Server(rec.handlers())
    port = await srv.start("127.0.0.1:0", ssl_context=_server_tls(certs, require_client=True))
    try:
        c = await RawClient.connect(
            "127.0.0.1",
            port,
            ssl_context=_client_tls(certs, ["h2"], with_cert=True),
            server_hostname="localhost",
        )
        assert (await c.call("/test.S/Echo", b"mtls")).messages() == [b"mtls"]
        await c.close()
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.TimeoutError, OSError)):
            bad = await RawClient.connect(
                "127.0.0.1",
                port,
                ssl_context=_client_tls(certs, ["h2"]),
                server_hostname="localhost",
                timeout=3,
            )
            await bad.call("/test.S/Echo", b"no cert", timeout=5)
    finally:
        await asyncio.wait_for(srv.stop(), 10)


async def test_options_validated() -> None:
    with pytest.raises(ValueError, match="max_concurrent_streams"):
        Server(max_concurrent_streams=0)
    with pytest.raises(TypeError, match="max_receive_message_length"):
        Server(max_receive_message_length="big")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="idle_timeout"):
        Server(idle_timeout=-1)
    with pytest.raises(ValueError, match="start with '/'"):
        Server({"Echo": Recorder().echo})
    srv = Server()
    with pytest.raises(ValueError):
        await srv.start("nonsense")


# -- grpcio aio client in a helper process ----------------------------------------------


async def run_grpcio_client(args: List[str], timeout: float = 240.0) -> Dict[str, Any]:
    """Run tests/grpcio_client_helper.py (never import grpc here) and parse its JSON."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        grpcio_python(),
        str(TESTS_DIR / "grpcio_client_helper.py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def _tls_args(certs: Certs, mtls: bool) -> List[str]:
    args = ["--ca", certs.ca_file, "--server-name", "localhost"]
    if mtls:
        args += ["--cert", certs.client_cert_file, "--key", certs.client_key_file]
    return args


@pytest.mark.parametrize("mode", ["plain", "tls", "mtls"])
async def test_grpcio_client_interop(rec: Recorder, certs: Certs, mode: str) -> None:
    srv = Server(rec.handlers(), max_receive_message_length=16 << 20)
    ctx = None
    if mode != "plain":
        ctx = _server_tls(certs, require_client=mode == "mtls")
    port = await srv.start("127.0.0.1:0", ssl_context=ctx)
    try:
        args = ["--target", f"localhost:{port}", "--cases", "all"]
        if mode != "plain":
            args += _tls_args(certs, mode == "mtls")
        result = await run_grpcio_client(args)
    finally:
        await asyncio.wait_for(srv.stop(grace=1.0), 15)
    assert result["echo"] == {"code": "OK", "reply": "hello"}
    for name, value in StatusCode.__members__.items():
        if value is StatusCode.OK:
            continue
        got = result["abort"][name]
        assert got["code"] == name, got
        assert got["details"] == UNICODE_DETAILS, got
    meta = result["metadata"]
    assert meta["code"] == "OK"
    sent = dict(meta["server_saw"])
    assert sent["x-plain"] == "plain value"
    assert sent["x-data-bin"] == "bin:" + bytes(range(256)).hex()
    assert ["x-trailer", "t-value"] in meta["trailing"]
    assert ["x-trailer-bin", "bin:0001feff"] in meta["trailing"]
    assert result["deadline"]["code"] == "DEADLINE_EXCEEDED"
    assert result["deadline"]["elapsed"] < 5
    assert result["unknown_method"]["code"] == "UNIMPLEMENTED"
    assert result["raise"]["code"] == "UNKNOWN"
    assert "secret" not in result["raise"]["details"]
    assert result["big"] == {"code": "OK", "reply_len": 8 << 20}
    assert rec.seen["big_request"] == 8 << 20
    assert result["too_big"]["code"] == "RESOURCE_EXHAUSTED"
    assert result["gzip"] == {"code": "OK", "reply_ok": True}


async def test_grpcio_client_burst_10000_on_one_channel(rec: Recorder) -> None:
    srv = Server(rec.handlers())
    port = await srv.start("127.0.0.1:0")
    try:
        result = await run_grpcio_client(
            ["--target", f"127.0.0.1:{port}", "--cases", "burst", "--burst", "10000"]
        )
    finally:
        await asyncio.wait_for(srv.stop(grace=1.0), 15)
    assert result["burst"]["ok"] == 10000, result["burst"]
    assert result["burst"]["errors"] == {}


# -- our Channel -> our Server -----------------------------------------------------------


async def _channel_status(coro: Any) -> tuple:
    from wove_h2grpc import GrpcError

    try:
        return ("OK", await coro, ())
    except GrpcError as err:
        return (err.code().name, err.details(), err.trailing_metadata())


async def test_channel_status_codes_details_and_trailing_metadata(server: tuple) -> None:
    from wove_h2grpc import Channel

    _, port = server
    async with Channel(f"127.0.0.1:{port}") as ch:
        abort = ch.unary_unary("/test.S/Abort")
        for code in StatusCode:
            if code is StatusCode.OK:
                continue
            spec = json.dumps({"code": int(code), "details": UNICODE_DETAILS}).encode()
            got = await _channel_status(abort(spec, timeout=10))
            assert got[:2] == (code.name, UNICODE_DETAILS)
        got = await _channel_status(ch.unary_unary("/test.S/Missing")(b"", timeout=10))
        assert got[0] == "UNIMPLEMENTED"
        got = await _channel_status(ch.unary_unary("/test.S/Raise")(b"", timeout=10))
        assert got[0] == "UNKNOWN" and "secret" not in got[1]
        got = await _channel_status(ch.unary_unary("/test.S/AbortMeta")(b"", timeout=10))
        assert got[0] == "FAILED_PRECONDITION"
        assert ("x-why", "because") in got[2] and ("x-why-bin", b"\x00\xff") in got[2]
        got = await _channel_status(ch.unary_unary("/test.S/AbortMeta")(b"replace", timeout=10))
        assert got[0] == "FAILED_PRECONDITION" and got[2] == (("x-other", "o"),)


async def test_channel_metadata_deadline_and_gzip(server: tuple, rec: Recorder) -> None:
    from wove_h2grpc import Channel

    _, port = server
    async with Channel(f"127.0.0.1:{port}", metadata={"x-channel": "c"}) as ch:
        reply = await ch.unary_unary("/test.S/Meta")(
            b"", timeout=5, metadata=[("x-plain", "p"), ("x-data-bin", bytes(range(256)))]
        )
        got = dict((k, v) for k, v in json.loads(reply))
        assert got["x-channel"] == "c" and got["x-plain"] == "p"
        assert got["x-data-bin"] == "bin:" + bytes(range(256)).hex()
        assert 4.0 < rec.seen["time_remaining"] <= 5.0
        start = time.monotonic()
        got = await _channel_status(ch.unary_unary("/test.S/Sleep")(b"30", timeout=0.3))
        assert got[0] == "DEADLINE_EXCEEDED"
        assert time.monotonic() - start < 3
        for _ in range(100):
            if rec.cancelled:
                break
            await asyncio.sleep(0.02)
        assert rec.cancelled == ["sleep"]
        payload = b"compress me " * 2000
        echo = ch.unary_unary("/test.S/Echo")
        assert await echo(payload, timeout=5, compression="gzip") == payload


async def test_channel_8mib_and_limits(rec: Recorder) -> None:
    from wove_h2grpc import Channel

    srv = Server(rec.handlers(), max_receive_message_length=16 << 20)
    port = await srv.start("127.0.0.1:0")
    try:
        async with Channel(f"127.0.0.1:{port}", max_receive_message_length=16 << 20) as ch:
            size = 8 << 20
            request = b"%d|" % size
            request += b"q" * (size - len(request))
            reply = await ch.unary_unary("/test.S/Big")(request, timeout=60)
            assert len(reply) == size and rec.seen["big_request"] == size
            got = await _channel_status(
                ch.unary_unary("/test.S/Echo")(b"t" * (17 << 20), timeout=60)
            )
            assert got[0] == "RESOURCE_EXHAUSTED"
            assert await ch.unary_unary("/test.S/Echo")(b"ok", timeout=5) == b"ok"
    finally:
        await asyncio.wait_for(srv.stop(), 10)


@pytest.mark.parametrize("mtls", [False, True])
async def test_channel_tls_and_mtls(rec: Recorder, certs: Certs, mtls: bool) -> None:
    from wove_h2grpc import Channel

    srv = Server(rec.handlers())
    port = await srv.start("127.0.0.1:0", ssl_context=_server_tls(certs, require_client=mtls))
    try:
        kwargs: Dict[str, Any] = {
            "secure": True,
            "root_certificates": certs.ca_pem,
            "server_hostname": "localhost",
        }
        if mtls:
            kwargs.update(private_key=certs.client_key_pem, certificate_chain=certs.client_cert_pem)
        async with Channel(f"127.0.0.1:{port}", **kwargs) as ch:
            assert await ch.unary_unary("/test.S/Echo")(b"secure", timeout=10) == b"secure"
        if mtls:
            # Without a client certificate the handshake (or the first read) fails.
            async with Channel(
                f"127.0.0.1:{port}",
                secure=True,
                root_certificates=certs.ca_pem,
                server_hostname="localhost",
                connect_timeout=5,
            ) as ch:
                got = await _channel_status(ch.unary_unary("/test.S/Echo")(b"x", timeout=2))
                assert got[0] in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), got
    finally:
        await asyncio.wait_for(srv.stop(), 10)


async def test_channel_burst_10000_on_one_connection(rec: Recorder) -> None:
    from wove_h2grpc import Channel

    peers: set = set()

    async def echo(request: bytes, context: ServicerContext) -> bytes:
        peers.add(context.peer())
        await asyncio.sleep(0)
        return request

    srv = Server({"/test.S/Echo": echo})
    port = await srv.start("127.0.0.1:0")
    try:
        async with Channel(f"127.0.0.1:{port}") as ch:
            rpc = ch.unary_unary("/test.S/Echo")

            async def one(i: int) -> str:
                body = b"%d" % i
                got = await _channel_status(rpc(body, timeout=120))
                return "OK" if got[0] == "OK" and got[1] == body else f"{got[0]}: {got[1]!r}"

            outcomes = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(10_000))), 180)
    finally:
        await asyncio.wait_for(srv.stop(), 10)
    bad = [o for o in outcomes if o != "OK"]
    assert not bad, bad[:5]
    assert len(peers) == 1


async def test_channel_retries_refused_stream(rec: Recorder) -> None:
    """A stream refused with REFUSED_STREAM is retried transparently by the Channel."""
    from wove_h2grpc import Channel

    srv = Server(rec.handlers())
    port = await srv.start("127.0.0.1:0")
    try:
        async with Channel(f"127.0.0.1:{port}") as ch:
            await ch.channel_ready()
            for _ in range(100):
                if srv._connections:
                    break
                await asyncio.sleep(0.01)
            (proto,) = srv._connections
            # The client believes 1000 streams are allowed; make the server enforce 1 (as if a
            # lower SETTINGS value were still in flight), and release the blocked call as soon
            # as the second call's stream has been refused.
            proto.options = proto.options._replace(max_concurrent_streams=1)
            refused: List[int] = []
            original_reset = proto.reset_stream

            def reset(stream_id: int, code: int) -> None:
                if code == ErrorCodes.REFUSED_STREAM:
                    refused.append(stream_id)
                    rec.release.set()
                original_reset(stream_id, code)

            proto.reset_stream = reset  # type: ignore[method-assign]
            blocked = asyncio.ensure_future(ch.unary_unary("/test.S/Block")(b"", timeout=10))
            await asyncio.wait_for(rec.started.wait(), 5)
            assert await ch.unary_unary("/test.S/Echo")(b"retried", timeout=10) == b"retried"
            assert await asyncio.wait_for(blocked, 10) == b"released"
            assert refused
    finally:
        await asyncio.wait_for(srv.stop(), 10)
