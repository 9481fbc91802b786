"""Hostile servers against our Channel: one test per attack, each bounded in time and count.

Every test runs the attack from ``_hostile_server.HostileServer`` (loopback only) against a
Channel while a second Channel calls a healthy in-process ``Server`` (the probe), and checks:
the attacked call ends with the expected ``GrpcError`` code within a bound, the client
closed the hostile connection or reset the stream where the attack calls for it (read from
the frames it sent back), its memory stayed bounded, the probe lost no call and kept a low
p99, asyncio logged nothing, and a fresh call on the same Channel still gets an answer
promptly. Each test records one row of the attack table; its reaction is built from what
happened, never written down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import zlib
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional

import pytest
from _attack_report import AttackRow, record, rss_mib
from _frames import frame
from _hostile_server import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    OK_TRAILERS,
    PING,
    PUSH_PROMISE,
    RESPONSE_HEADERS,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Attack,
    HostileConnection,
    HostileServer,
    code_name,
    grpc_message,
)
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hpack.hpack import encode_integer

from wove_h2grpc import Channel, GrpcError, Server, ServicerContext, StatusCode

TARGET = "wove_h2grpc Channel"
PROBE_P99_BOUND_MS = 200.0  # two shared CPU cores: generous
FRESH_BOUND_S = 2.0
PROBE_MIN_CALLS = 20
ATTACK_LIMIT_S = 6.0  # no attack may keep a test's call waiting longer than this
MiB = 1024 * 1024


# ---------------------------------------------------------------- the harness


async def echo(request: bytes, context: ServicerContext) -> bytes:
    return request


class Probe:
    """A well-behaved Channel calling a healthy Server in a loop while the attack runs."""

    def __init__(self, target: str) -> None:
        self.channel = Channel(target)
        self.rpc = self.channel.unary_unary("/probe.S/Echo")
        self.latencies: List[float] = []
        self.lost = 0
        self._stop = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None

    async def start(self) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), 5.0)
        assert await asyncio.wait_for(self.rpc(b"warm", timeout=5.0), 5.0) == b"warm"
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                reply = await asyncio.wait_for(self.rpc(b"probe", timeout=2.0), 3.0)
            except (GrpcError, asyncio.TimeoutError):
                self.lost += 1
            else:
                if reply == b"probe":
                    self.latencies.append(time.perf_counter() - start)
                else:
                    self.lost += 1
            await asyncio.sleep(0.01)

    async def wait_calls(self, count: int, timeout: float) -> None:
        """Wait (bounded) until the probe has made ``count`` calls."""
        end = time.monotonic() + timeout
        while self.calls < count and time.monotonic() < end:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 5.0)
        await asyncio.wait_for(self.channel.close(), 5.0)

    @property
    def calls(self) -> int:
        return len(self.latencies) + self.lost

    @property
    def p99_ms(self) -> Optional[float]:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


class RssSampler:
    """This process's RSS every 10 ms, for the peak an attack cost."""

    def __init__(self) -> None:
        self.before = rss_mib()
        self.peak = self.before
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib())
            await asyncio.sleep(0.01)

    async def stop(self) -> float:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.peak = max(self.peak, rss_mib())
        return rss_mib()


@dataclasses.dataclass
class Outcome:
    """How the attacked call ended and what the client did about it."""

    code: StatusCode
    error: Optional[GrpcError]
    elapsed: float
    conn: HostileConnection
    stream_id: int
    row: AttackRow
    server: HostileServer
    value: Any = None

    @property
    def growth_mib(self) -> float:
        assert self.row.rss_peak_mib is not None and self.row.rss_before_mib is not None
        return self.row.rss_peak_mib - self.row.rss_before_mib


@pytest.fixture
async def probe_target() -> AsyncIterator[str]:
    server = Server({"/probe.S/Echo": echo})
    port = await server.start("127.0.0.1:0")
    yield f"127.0.0.1:{port}"
    await asyncio.wait_for(server.stop(), 5.0)


def _unary(request: bytes = b"request", timeout: Optional[float] = 3.0) -> ClientAction:
    async def call(channel: Channel) -> Any:
        return await channel.unary_unary("/hostile.S/Unary")(request, timeout=timeout)

    return call


ClientAction = Callable[[Channel], Awaitable[Any]]


async def run_attack(
    name: str,
    probe_target: str,
    caplog: pytest.LogCaptureFixture,
    attack: Attack,
    client: ClientAction,
    *,
    settings: Optional[Dict[int, int]] = None,
    window_updates: bool = True,
    every_request: bool = False,
    hostile_connections: int = 1,
    receive_buffer: Optional[int] = None,
    silent: bool = False,
    fresh_code: StatusCode = StatusCode.OK,
    fresh_late: bool = False,
    channel_options: Optional[Dict[str, Any]] = None,
    answered: bool = True,
    counted: Optional[Callable[[HostileServer], str]] = None,
) -> Outcome:
    """Run ``attack`` against a Channel doing ``client`` while the probe runs; record the row.

    ``answered``: the client must close the hostile connection or reset the attacked stream.
    ``counted``: more of the client's reaction, read from what the hostile server saw.
    ``fresh_code``: what a fresh call on the same Channel gets afterwards (OK: ``b"ok"``);
    ``fresh_late``: it may instead end at its deadline (the connection is still busy).
    """
    loop = asyncio.get_running_loop()
    loop_errors: List[Dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    caplog.set_level(logging.WARNING)
    probe = Probe(probe_target)
    await probe.start()
    hostile = HostileServer(
        attack,
        settings=settings,
        window_updates=window_updates,
        every_request=every_request,
        hostile_connections=hostile_connections,
        receive_buffer=receive_buffer,
        silent=silent,
    )
    await hostile.start()
    channel = Channel(hostile.target, **(channel_options or {}))
    sampler = RssSampler()
    try:
        start = time.perf_counter()
        error: Optional[GrpcError] = None
        value: Any = None
        try:
            value = await asyncio.wait_for(client(channel), ATTACK_LIMIT_S)
        except GrpcError as exc:
            error = exc
        elapsed = time.perf_counter() - start
        if silent:  # no request can reach a server that never finishes the handshake
            assert hostile.attacked is None and hostile.connections
            conn, stream_id = hostile.connections[0], 1
        else:
            assert hostile.attacked is not None, "the attacked call never reached the server"
            conn, stream_id = hostile.attacked
        if answered:
            await conn.wait_for(lambda: conn.answered(stream_id), 2.0)
        reaction = conn.reaction(stream_id)  # before our own GOAWAY at channel.close()
        extra = counted(hostile) if counted else None
        fresh_start = time.perf_counter()
        try:
            fresh = await asyncio.wait_for(
                channel.unary_unary("/hostile.S/Fresh")(b"fresh", timeout=FRESH_BOUND_S),
                FRESH_BOUND_S + 1.0,
            )
        except GrpcError as exc:
            late = fresh_late and exc.code() is StatusCode.DEADLINE_EXCEEDED
            assert late or exc.code() is fresh_code, exc  # an answer, just not OK
        else:
            assert fresh_code is StatusCode.OK and fresh == b"ok"
        fresh_ms = (time.perf_counter() - fresh_start) * 1000
        # A quick attack is over in milliseconds: let the probe make its minimum of calls.
        await probe.wait_calls(PROBE_MIN_CALLS, 3.0)
    finally:
        rss_after = await sampler.stop()
        await asyncio.wait_for(channel.close(), 5.0)
        await probe.stop()
        await asyncio.wait_for(hostile.close(), 5.0)
        loop.set_exception_handler(previous_handler)
    if hostile.attack_error is not None:
        raise hostile.attack_error
    code = error.code() if error is not None else StatusCode.OK
    status = code.name
    if error is not None and error.h2_error_code is not None:
        status += f" ({code_name(error.h2_error_code)})"  # the HTTP/2 code that ended it
    row = record(
        AttackRow(
            side="client",
            attack=name,
            target=TARGET,
            reaction=", ".join([status, *([extra] if extra else []), reaction]),
            probe_p99_ms=probe.p99_ms,
            probe_calls=probe.calls,
            probe_lost=probe.lost,
            fresh_ms=fresh_ms,
            rss_before_mib=sampler.before,
            rss_peak_mib=sampler.peak,
            rss_after_mib=rss_after,
        )
    )
    # What every attack must leave intact, whatever the attack.
    assert not loop_errors, f"asyncio reported: {loop_errors}"
    problems = [r for r in caplog.records if r.name.startswith("wove_h2grpc")]
    assert not [r for r in problems if r.levelno >= logging.ERROR], problems
    assert probe.lost == 0, f"{probe.lost} of {probe.calls} probe calls lost"
    assert probe.calls >= PROBE_MIN_CALLS
    assert probe.p99_ms is not None and probe.p99_ms < PROBE_P99_BOUND_MS, probe.p99_ms
    assert fresh_ms < FRESH_BOUND_S * 1000 + (500 if fresh_late else 0)
    if answered:
        assert conn.answered(stream_id), "the client neither reset the stream nor closed"
    return Outcome(code, error, elapsed, conn, stream_id, row, hostile, value)


# -------------------------------------------------------------- attack parts


def header_frames(
    stream_id: int, block: bytes, size: int = 16384, *, end_stream: bool = False
) -> bytes:
    """``block`` as one HEADERS frame and as many CONTINUATION frames as it takes."""
    chunks = [block[i : i + size] for i in range(0, len(block), size)] or [b""]
    out = []
    for i, chunk in enumerate(chunks):
        flags = END_HEADERS if i == len(chunks) - 1 else 0
        if i == 0:
            out.append(frame(HEADERS, flags | (END_STREAM if end_stream else 0), stream_id, chunk))
        else:
            out.append(frame(CONTINUATION, flags, stream_id, chunk))
    return b"".join(out)


async def until_answered(conn: HostileConnection, stream_id: int, timeout: float = 8.0) -> None:
    await conn.wait_for(lambda: conn.answered(stream_id), timeout)


def hpack_literal_indexed(name: bytes, value: bytes) -> bytes:
    """RFC 7541 section 6.2.1: literal with incremental indexing, new name, no Huffman."""
    return (
        b"\x40"
        + bytes(encode_integer(len(name), 7))
        + name
        + bytes(encode_integer(len(value), 7))
        + value
    )


def expect_goaway(outcome: Outcome, code: ErrorCodes) -> None:
    assert code in outcome.conn.goaway_codes(), outcome.conn.reaction(outcome.stream_id)


def expect_reset(outcome: Outcome, code: ErrorCodes) -> None:
    assert code in outcome.conn.reset_codes(outcome.stream_id), outcome.conn.reaction(
        outcome.stream_id
    )


def attacked(server: HostileServer) -> HostileConnection:
    assert server.attacked is not None
    return server.attacked[0]


def settings_acks(conn: HostileConnection) -> int:
    return conn.acks[SETTINGS]


def ping_acks(conn: HostileConnection) -> int:
    return conn.acks[PING]


# ------------------------------------------------------------------ the tests


async def test_huge_response_header(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """One 256 KiB header value (over HEADERS + CONTINUATION): refused at the client's
    64 KiB header-list limit, the connection closed."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        block = conn.encode_headers(
            [*RESPONSE_HEADERS, (b"x-huge", b"h" * (256 * 1024))], huffman=False
        )
        conn.write(header_frames(sid, block))
        await until_answered(conn, sid)

    out = await run_attack(
        "header bomb: one 256 KiB header", probe_target, caplog, attack, _unary()
    )
    assert out.code is StatusCode.UNAVAILABLE, out.error
    expect_goaway(out, ErrorCodes.ENHANCE_YOUR_CALM)
    assert out.elapsed < 2.0
    assert out.growth_mib < 32


async def test_many_response_headers(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """20,000 small headers: refused at the header-list limit."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        headers = [*RESPONSE_HEADERS] + [(b"x-m%d" % i, b"v") for i in range(20_000)]
        conn.write(header_frames(sid, conn.encode_headers(headers, huffman=False)))
        await until_answered(conn, sid)

    out = await run_attack("header bomb: 20,000 headers", probe_target, caplog, attack, _unary())
    assert out.code is StatusCode.UNAVAILABLE, out.error
    expect_goaway(out, ErrorCodes.ENHANCE_YOUR_CALM)
    assert out.elapsed < 2.0
    assert out.growth_mib < 32


async def test_hpack_bomb(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """A 4,000-byte header added to the dynamic table, then referenced 20,000 times by its
    one-byte index: 20 KB on the wire that would decode to 80 MB; the decoder stops at the
    64 KiB header-list limit."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        block = conn.encode_headers(RESPONSE_HEADERS)
        block += hpack_literal_indexed(b"x-bomb", b"b" * 4000)
        block += bytes([0x80 | 62]) * 20_000  # indexed field: the newest dynamic entry
        conn.write(header_frames(sid, block))
        await until_answered(conn, sid)

    out = await run_attack(
        "HPACK bomb (dynamic-table refs)", probe_target, caplog, attack, _unary()
    )
    assert out.code is StatusCode.UNAVAILABLE, out.error
    expect_goaway(out, ErrorCodes.ENHANCE_YOUR_CALM)
    assert out.elapsed < 2.0
    assert out.growth_mib < 32


async def test_endless_continuation(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION frames of the client's own
    MAX_FRAME_SIZE, endlessly: the client gives up on the header block early."""
    sent = [0]

    async def attack(conn: HostileConnection, sid: int) -> None:
        size = conn.client_settings.get(SettingCodes.MAX_FRAME_SIZE, 16384)
        conn.write(frame(HEADERS, 0, sid, conn.encode_headers(RESPONSE_HEADERS)))
        unit = frame(CONTINUATION, 0, sid, b"\x00" * size)
        for _ in range(256):  # bounded: at most 256 frames
            if conn.answered(sid):
                return
            conn.write(unit)
            sent[0] += size
            if not await conn.drain():
                return

    out = await run_attack("endless CONTINUATION", probe_target, caplog, attack, _unary())
    assert out.code is StatusCode.UNAVAILABLE, out.error
    expect_goaway(out, ErrorCodes.ENHANCE_YOUR_CALM)
    assert out.elapsed < 2.0
    assert out.growth_mib < 16, f"{out.growth_mib:.0f} MiB for {sent[0] / MiB:.0f} MiB sent"


async def test_stalled_stream_window(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE 0 and never a WINDOW_UPDATE, under a 1 MiB request: the
    call ends at its 1 s deadline, the stream reset; nothing else waits."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        await until_answered(conn, sid)

    out = await run_attack(
        "stalled window: INITIAL_WINDOW_SIZE 0",
        probe_target,
        caplog,
        attack,
        _unary(b"x" * MiB, timeout=1.0),
        settings={SettingCodes.INITIAL_WINDOW_SIZE: 0},
    )
    assert out.code is StatusCode.DEADLINE_EXCEEDED, out.error
    expect_reset(out, ErrorCodes.CANCEL)
    assert 0.9 < out.elapsed < 1.5
    assert out.conn.request_bytes.get(out.stream_id) == 0


async def test_stalled_connection_window(
    probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No WINDOW_UPDATE at all: a 1 MiB request stops after the first 64 KiB; the call ends
    at its deadline, the stream reset."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        await until_answered(conn, sid)

    out = await run_attack(
        "stalled window: no WINDOW_UPDATE",
        probe_target,
        caplog,
        attack,
        _unary(b"x" * MiB, timeout=1.0),
        window_updates=False,
    )
    assert out.code is StatusCode.DEADLINE_EXCEEDED, out.error
    expect_reset(out, ErrorCodes.CANCEL)
    assert 0.9 < out.elapsed < 1.5
    assert out.conn.request_bytes.get(out.stream_id, 0) <= 65535


def _h2_data(conn: HostileConnection, sid: int, data: bytes, end_stream: bool = False) -> bool:
    """Send DATA through h2 (flow control kept); False when the stream or connection is gone."""
    if not conn.h2_live or conn.answered(sid):
        return False
    try:
        if conn.h2.local_flow_control_window(sid) < len(data):
            return True  # the client's window is shut: wait for it
        conn.h2.send_data(sid, data, end_stream=end_stream)
    except Exception:  # h2's stream state after the client reset it
        return False
    conn.flush()
    return True


async def test_endless_data_unary_no_boundary(
    probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A unary response whose one message (4 MiB announced) never completes: DATA trickles
    in forever; the call ends at its deadline, the stream reset."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.h2.send_headers(sid, RESPONSE_HEADERS)
        conn.h2.send_data(sid, b"\x00" + (4 * MiB).to_bytes(4, "big"))
        conn.flush()
        for _ in range(2000):  # bounded: 10 s of trickle at most
            if not _h2_data(conn, sid, b"t" * 1024):
                return
            await asyncio.sleep(0.005)

    out = await run_attack(
        "endless DATA: unary, message never ends",
        probe_target,
        caplog,
        attack,
        _unary(timeout=1.0),
    )
    assert out.code is StatusCode.DEADLINE_EXCEEDED, out.error
    expect_reset(out, ErrorCodes.CANCEL)
    assert 0.9 < out.elapsed < 1.5


async def test_endless_messages_to_unary(
    probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Small messages without end to a unary call: INTERNAL at the second, stream reset."""
    sent = [0]

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.h2.send_headers(sid, RESPONSE_HEADERS)
        burst = grpc_message(b"m") * 1000
        for _ in range(1000):
            if not _h2_data(conn, sid, burst):
                return
            sent[0] += 1000
            await asyncio.sleep(0)

    out = await run_attack(
        "endless DATA: small messages to a unary call", probe_target, caplog, attack, _unary()
    )
    assert out.code is StatusCode.INTERNAL, out.error
    assert "more than one response message" in (out.error.details() if out.error else "")
    expect_reset(out, ErrorCodes.CANCEL)
    assert out.elapsed < 1.0


async def test_endless_server_stream_reader_stops(
    probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A response stream of small messages without end, read for a while, then not read:
    flow control stops the server after the window; the reader then cancels."""
    window = {}

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.h2.send_headers(sid, RESPONSE_HEADERS)
        burst = grpc_message(b"s" * 100) * 160
        for _ in range(20_000):
            if not _h2_data(conn, sid, burst):
                return
            window["min"] = min(window.get("min", 1 << 31), conn.h2.local_flow_control_window(sid))
            if not await conn.drain():
                return
            await asyncio.sleep(0)

    async def client(channel: Channel) -> Any:
        call = channel.unary_stream("/hostile.S/Stream")(b"go", timeout=5.0)
        got = 0
        async for _ in call:
            got += 1
            if got == 1000:
                break
        await asyncio.sleep(1.0)  # not reading: the window must stop the server
        call.cancel()
        return got

    out = await run_attack(
        "endless server stream, reader stops", probe_target, caplog, attack, client
    )
    assert out.code is StatusCode.OK  # the caller cancelled, and had its 1000 messages
    assert out.value == 1000
    expect_reset(out, ErrorCodes.CANCEL)
    assert window.get("min") == 0 or window.get("min", 1 << 31) < 16 * 1024, window
    assert out.growth_mib < 64


async def test_endless_server_stream_deadline(
    probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A response stream of messages without end, read as fast as they come: the call
    ends at its deadline."""
    sent = [0]

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.h2.send_headers(sid, RESPONSE_HEADERS)
        burst = grpc_message(b"s" * 100) * 100
        for _ in range(100_000):
            if not _h2_data(conn, sid, burst):
                return
            sent[0] += 100
            if not await conn.drain():
                return
            await asyncio.sleep(0.001)

    async def client(channel: Channel) -> Any:
        got = 0
        async for _ in channel.unary_stream("/hostile.S/Stream")(b"go", timeout=1.0):
            got += 1
        return got

    out = await run_attack("endless server stream, deadline", probe_target, caplog, attack, client)
    assert out.code is StatusCode.DEADLINE_EXCEEDED, out.error
    expect_reset(out, ErrorCodes.CANCEL)
    assert 0.9 < out.elapsed < 1.5
    assert out.growth_mib < 64


async def test_four_gib_length_prefix(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """A message prefix announcing 0xFFFFFFFF bytes, then DATA: RESOURCE_EXHAUSTED at
    once from the prefix, nothing of it buffered."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.h2.send_headers(sid, RESPONSE_HEADERS)
        conn.h2.send_data(sid, b"\x00\xff\xff\xff\xff" + b"g" * 16000)
        conn.flush()
        for _ in range(1000):
            if not _h2_data(conn, sid, b"g" * 16384):
                return
            await asyncio.sleep(0)

    out = await run_attack("4 GiB length prefix", probe_target, caplog, attack, _unary())
    assert out.code is StatusCode.RESOURCE_EXHAUSTED, out.error
    expect_reset(out, ErrorCodes.CANCEL)
    assert out.elapsed < 0.5
    assert out.growth_mib < 16


async def test_response_without_grpc_status(
    probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A gRPC response whose trailers lack grpc-status: INTERNAL."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.h2.send_headers(sid, RESPONSE_HEADERS)
        conn.h2.send_data(sid, grpc_message(b"reply"))
        conn.h2.send_headers(sid, [(b"x-not-status", b"1")], end_stream=True)
        conn.flush()

    out = await run_attack(
        "response without grpc-status", probe_target, caplog, attack, _unary(), answered=False
    )
    assert out.code is StatusCode.INTERNAL, out.error
    assert out.elapsed < 1.0


async def test_data_on_stream_zero(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """DATA on stream 0 (RFC 9113 section 6.1: a connection error PROTOCOL_ERROR)."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.write(frame(DATA, 0, 0, b"zero"))
        await until_answered(conn, sid)

    out = await run_attack("DATA on stream 0", probe_target, caplog, attack, _unary())
    assert out.code is StatusCode.UNAVAILABLE, out.error
    expect_goaway(out, ErrorCodes.PROTOCOL_ERROR)
    assert out.elapsed < 1.0


async def test_push_promise_while_disabled(
    probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PUSH_PROMISE although the client's SETTINGS_ENABLE_PUSH is 0 (RFC 9113 8.4)."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        block = conn.encode_headers(
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/p"), (b":authority", b"x")]
        )
        conn.write(frame(PUSH_PROMISE, END_HEADERS, sid, (2).to_bytes(4, "big") + block))
        await until_answered(conn, sid)

    out = await run_attack(
        "PUSH_PROMISE with push disabled", probe_target, caplog, attack, _unary()
    )
    assert out.code is StatusCode.UNAVAILABLE, out.error
    expect_goaway(out, ErrorCodes.PROTOCOL_ERROR)
    assert out.elapsed < 1.0


async def test_headers_on_unopened_stream(
    probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A response on a stream the client never opened (an odd id above its own)."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        block = conn.encode_headers([*RESPONSE_HEADERS, *OK_TRAILERS])
        conn.write(frame(HEADERS, END_HEADERS | END_STREAM, sid + 100, block))
        await until_answered(conn, sid)

    out = await run_attack(
        "HEADERS on a stream never opened", probe_target, caplog, attack, _unary()
    )
    assert out.code is StatusCode.UNAVAILABLE, out.error
    expect_goaway(out, ErrorCodes.PROTOCOL_ERROR)
    assert out.elapsed < 1.0


async def test_settings_flood(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """50,000 empty SETTINGS frames (each asks for an ACK) from a server that reads: all
    answered, memory flat, and the call then succeeds."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        chunk = frame(SETTINGS, 0, 0) * 1000
        for _ in range(50):
            conn.write(chunk)
            if not await conn.drain():
                return
        await conn.serve_healthy(sid)

    out = await run_attack(
        "SETTINGS flood",
        probe_target,
        caplog,
        attack,
        _unary(),
        answered=False,
        counted=lambda server: f"{settings_acks(attacked(server))} SETTINGS ACKs",
    )
    assert out.code is StatusCode.OK, out.error
    assert settings_acks(out.conn) == 50_001  # + the one after the preface
    assert out.elapsed < 4.0
    assert out.growth_mib < 16


async def test_ping_flood(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """100,000 PINGs from a server that reads: all answered, memory flat, and the call then
    succeeds."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        chunk = frame(PING, 0, 0, b"hostile!") * 1000
        for _ in range(100):
            conn.write(chunk)
            if not await conn.drain():
                return
        await conn.serve_healthy(sid)

    out = await run_attack(
        "PING flood",
        probe_target,
        caplog,
        attack,
        _unary(),
        answered=False,
        counted=lambda server: f"{ping_acks(attacked(server))} PING ACKs",
    )
    assert out.code is StatusCode.OK, out.error
    assert ping_acks(out.conn) == 100_000
    assert out.elapsed < 4.0
    assert out.growth_mib < 16


def _flood_unread(unit: bytes, seconds: float) -> Attack:
    """Control frames that each ask for an answer, sent for ``seconds`` while this server
    reads nothing (the client's answers pile up), then reading again; the attacked call is
    never answered."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.h2_live = False  # h2 would parse every ACK in this process: frames only
        conn.reading.clear()
        chunk = unit * 10_000
        end = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < end and await conn.drain(0.5):
            conn.write(chunk)
        conn.reading.set()
        await until_answered(conn, sid, 5.0)

    return attack


@pytest.mark.parametrize(
    ("kind", "unit"),
    [("PING", frame(PING, 0, 0, b"hostile!")), ("SETTINGS", frame(SETTINGS, 0, 0))],
    ids=["PING", "SETTINGS"],
)
async def test_control_flood_while_not_reading(
    kind: str, unit: bytes, probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PINGs (or empty SETTINGS) for 1.5 s from a server that reads nothing (its receive
    buffer 4 KiB) and never answers the call. The kernel's socket buffers take the first
    megabytes of ACKs; should they fill, the client drops the connection once 10,000 more
    are owed while its writes are blocked (tests/aio/test_driver_answers.py pins that
    down). Either way its memory stays flat, the probe keeps its latency and the call ends
    at its deadline at the latest. What the flood left in the socket is parsed before
    anything else on that connection, so a fresh call there may meet its own deadline."""

    def acks(server: HostileServer) -> str:
        conn = attacked(server)
        count = ping_acks(conn) if kind == "PING" else settings_acks(conn)
        return f"{count} {kind} ACKs"

    out = await run_attack(
        f"{kind} flood, server reads nothing",
        probe_target,
        caplog,
        _flood_unread(unit, seconds=1.5),
        _unary(timeout=3.0),
        counted=acks,
        receive_buffer=4096,
        fresh_late=True,
    )
    if out.code is StatusCode.UNAVAILABLE:
        # The GOAWAY waits behind the ACKs this server never read, and may be lost with
        # them: the code it carried is the call's.
        assert out.error is not None and out.error.h2_error_code == ErrorCodes.ENHANCE_YOUR_CALM
    else:
        assert out.code is StatusCode.DEADLINE_EXCEEDED, out.error
        expect_reset(out, ErrorCodes.CANCEL)
    assert out.elapsed < 3.5
    assert out.growth_mib < 32


async def test_every_stream_refused(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """RST_STREAM REFUSED_STREAM on every stream: transparent retry is bounded, the call
    ends with UNAVAILABLE at once instead of retrying until its deadline."""
    refused = b"\x00\x00\x00\x07"  # REFUSED_STREAM

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.write(frame(RST_STREAM, 0, sid, refused))

    out = await run_attack(
        "REFUSED_STREAM on every stream",
        probe_target,
        caplog,
        attack,
        _unary(timeout=5.0),
        every_request=True,
        answered=False,
        fresh_code=StatusCode.UNAVAILABLE,
        counted=lambda server: f"{server.attacks} requests",
    )
    assert out.code is StatusCode.UNAVAILABLE, out.error
    assert out.error is not None and "transparent retries" in out.error.details()
    assert 1 < out.server.attacks <= 10  # retried, but a bounded number of times
    assert out.elapsed < 1.0


async def test_goaway_before_every_answer(
    probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """GOAWAY with last-stream-id 0 for every request, on every new connection: bounded
    retries with backoff, UNAVAILABLE well before the 5 s deadline."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.write(frame(GOAWAY, 0, 0, bytes(8)))  # last-stream-id 0, NO_ERROR

    out = await run_attack(
        "GOAWAY last-stream-id 0 on every request",
        probe_target,
        caplog,
        attack,
        _unary(timeout=5.0),
        hostile_connections=4,
        answered=False,
        counted=lambda server: (
            f"{server.attacks} requests on {len(server.connections)} connections"
        ),
    )
    assert out.code is StatusCode.UNAVAILABLE, out.error
    assert out.error is not None and "transparent retries" in out.error.details()
    assert 1 < out.server.attacks <= 4  # retried on new connections, a bounded number of times
    assert out.elapsed < 3.0


async def test_frame_over_max_frame_size(
    probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A DATA frame announcing 16 MiB - 1, over the client's 1 MiB SETTINGS_MAX_FRAME_SIZE:
    refused from its 9-byte header (RFC 9113 section 4.2), nothing of it buffered."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.h2.send_headers(sid, RESPONSE_HEADERS)
        conn.flush()
        # 16 MiB - 1, the most a frame header can announce; then a little of the body.
        header = (16 * MiB - 1).to_bytes(3, "big") + bytes([DATA, 0]) + sid.to_bytes(4, "big")
        conn.write(header + b"f" * 65536)
        await until_answered(conn, sid)

    out = await run_attack("frame over MAX_FRAME_SIZE", probe_target, caplog, attack, _unary())
    assert out.code is StatusCode.UNAVAILABLE, out.error
    assert out.error is not None and out.error.h2_error_code == ErrorCodes.FRAME_SIZE_ERROR
    expect_goaway(out, ErrorCodes.FRAME_SIZE_ERROR)
    assert out.elapsed < 1.0


async def test_data_beyond_the_window(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """A response stream whose reader stopped, and a server that ignores the window it was
    given: the client refuses the excess (FLOW_CONTROL_ERROR) instead of buffering it."""
    window = {}

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.h2.send_headers(sid, RESPONSE_HEADERS)
        conn.flush()
        window["stream"] = conn.h2.local_flow_control_window(sid)
        unit = frame(DATA, 0, sid, grpc_message(b"w" * (16384 - 5)))
        for _ in range(2 * window["stream"] // 16384 + 10):  # twice the window, bounded
            if conn.answered(sid):
                return
            conn.write(unit)
            if not await conn.drain():
                return

    async def client(channel: Channel) -> Any:
        call = channel.unary_stream("/hostile.S/Stream")(b"go", timeout=5.0)
        await call.initial_metadata()
        await call.code()  # reads nothing until the call is over
        got = 0
        async for _ in call:  # what arrived within the window, then the error
            got += 1
        return got

    out = await run_attack(
        "DATA beyond the flow-control window", probe_target, caplog, attack, client
    )
    assert out.code is StatusCode.UNAVAILABLE, out.error
    assert out.error is not None and out.error.h2_error_code == ErrorCodes.FLOW_CONTROL_ERROR
    expect_goaway(out, ErrorCodes.FLOW_CONTROL_ERROR)
    assert out.elapsed < 3.0
    assert out.growth_mib < 64  # the 16 MiB window, not the 32 MiB sent


async def test_gzip_bomb(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """A gzip message of 64 KiB that inflates to 64 MiB: inflation stops at the 4 MiB limit,
    RESOURCE_EXHAUSTED, stream reset."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    bomb = b"".join(squeeze.compress(zeros) for _ in range(64)) + squeeze.flush()

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.h2.send_headers(sid, [*RESPONSE_HEADERS, (b"grpc-encoding", b"gzip")])
        conn.h2.send_data(sid, b"\x01" + len(bomb).to_bytes(4, "big") + bomb)
        conn.h2.send_headers(sid, OK_TRAILERS, end_stream=True)
        conn.flush()
        await until_answered(conn, sid, 2.0)

    out = await run_attack(
        f"gzip bomb ({len(bomb) // 1024} KiB -> 64 MiB)", probe_target, caplog, attack, _unary()
    )
    assert out.code is StatusCode.RESOURCE_EXHAUSTED, out.error
    assert out.elapsed < 1.0
    assert out.growth_mib < 32


async def test_spaced_pings_are_not_a_flood(
    probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The flood limit's other side: twelve PINGs 150 ms apart while the call waits (a keen
    keepalive) are all answered, and the call succeeds."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        for i in range(12):
            conn.write(frame(PING, 0, 0, b"spaced%02d" % i))
            await asyncio.sleep(0.15)
        await conn.serve_healthy(sid)

    out = await run_attack(
        "PINGs 150 ms apart (control: not a flood)",
        probe_target,
        caplog,
        attack,
        _unary(),
        answered=False,
        counted=lambda server: f"{ping_acks(attacked(server))} PING ACKs",
    )
    assert out.code is StatusCode.OK, out.error
    assert out.value == b"ok"
    assert ping_acks(out.conn) == 12
    assert ErrorCodes.ENHANCE_YOUR_CALM not in out.conn.goaway_codes()


async def test_server_never_sends_settings(
    probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that accepts the connection and never sends its SETTINGS: the call waits
    for the handshake and ends at its own deadline; the attempt itself ends at
    connect_timeout (1 s here), and a call waiting on it then fails fast with UNAVAILABLE."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        raise AssertionError("no request reaches a server that never sent SETTINGS")

    out = await run_attack(
        "no SETTINGS ever (handshake never ends)",
        probe_target,
        caplog,
        attack,
        _unary(timeout=0.5),
        silent=True,
        answered=False,
        channel_options={"connect_timeout": 1.0},
        fresh_code=StatusCode.UNAVAILABLE,
    )
    assert out.code is StatusCode.DEADLINE_EXCEEDED, out.error
    assert 0.4 < out.elapsed < 0.9
    assert not out.conn.frames_of(HEADERS)  # nothing was sent before the handshake


@pytest.mark.parametrize(
    ("name", "bad", "code"),
    [
        (
            "WINDOW_UPDATE past 2^31-1",
            frame(WINDOW_UPDATE, 0, 0, (0x7FFFFFFF).to_bytes(4, "big")),
            ErrorCodes.FLOW_CONTROL_ERROR,
        ),
        (
            "SETTINGS_INITIAL_WINDOW_SIZE 2^31",
            frame(SETTINGS, 0, 0, b"\x00\x04" + (1 << 31).to_bytes(4, "big")),
            ErrorCodes.FLOW_CONTROL_ERROR,
        ),
        (
            "SETTINGS_MAX_FRAME_SIZE 100",
            frame(SETTINGS, 0, 0, b"\x00\x05" + (100).to_bytes(4, "big")),
            ErrorCodes.PROTOCOL_ERROR,
        ),
        ("RST_STREAM on stream 0", frame(RST_STREAM, 0, 0, bytes(4)), ErrorCodes.PROTOCOL_ERROR),
    ],
    ids=["window-overflow", "initial-window", "max-frame-size", "rst-stream-0"],
)
async def test_invalid_control_frame(
    name: str, bad: bytes, code: ErrorCodes, probe_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Control frames RFC 9113 makes connection errors (sections 6.4, 6.5.2, 6.9.1)."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.write(bad)
        await until_answered(conn, sid)

    out = await run_attack(name, probe_target, caplog, attack, _unary())
    assert out.code is StatusCode.UNAVAILABLE, out.error
    assert out.error is not None and out.error.h2_error_code == code
    expect_goaway(out, code)
    assert out.elapsed < 1.0


async def test_endless_non_grpc_body(probe_target: str, caplog: pytest.LogCaptureFixture) -> None:
    """HTTP 200 with text/html and a body that never ends (a captive portal, a proxy):
    the body is dropped as it comes, memory stays flat, the deadline ends the call."""

    async def attack(conn: HostileConnection, sid: int) -> None:
        conn.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/html")])
        conn.flush()
        page = b"<html>" + b"x" * 16000
        for _ in range(5000):  # bounded: 80 MB at most
            if not _h2_data(conn, sid, page):
                return
            if not await conn.drain():
                return
            await asyncio.sleep(0)

    out = await run_attack(
        "endless text/html body", probe_target, caplog, attack, _unary(timeout=1.0)
    )
    assert out.code is StatusCode.DEADLINE_EXCEEDED, out.error
    expect_reset(out, ErrorCodes.CANCEL)
    assert 0.9 < out.elapsed < 1.5
    assert out.growth_mib < 32
