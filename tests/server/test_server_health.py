"""The gRPC health service: its codec (against protobuf's generated classes in a helper
process), HealthService's statuses and watchers, and grpcio-health-checking's client against
it on our Server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import threading
import time
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Tuple

import pytest
from _support import REPO_DIR, TESTS_DIR, HelperProcess, TracedMemory, grpcio_python, start_helper
from hypothesis import given, settings
from hypothesis import strategies as st

from wove_h2grpc import Channel, GrpcError, Server, StatusCode
from wove_h2grpc.health import CHECK_METHOD, WATCH_METHOD, HealthService, ServingStatus
from wove_h2grpc.protocol.health_messages import (
    HealthMessageError,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

_HELPER = str(TESTS_DIR / "grpcio_health.py")


def _helper_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH")) if p)
    return env


def _run_helper(*args: str, stdin: str = "", timeout: float = 60.0) -> str:
    done = subprocess.run(
        [grpcio_python(), _HELPER, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_helper_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- the codec ----------------------------------------------------------------------------


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


# Inputs a protobuf parser takes or refuses: unknown fields of every wire type (groups too),
# repeated field 1 (the last wins), field 1 with another wire type (an unknown field), and
# malformed bytes.
_UNKNOWN_FIELDS = (
    _field(2, 0, _varint(300))
    + _field(3, 1, b"\x01" * 8)
    + _len(4, b"nested \x00 bytes")
    + _field(5, 5, b"\x02" * 4)
    + _field(6, 3, _field(7, 0, b"\x01") + _field(6, 4, b""))
    + _len(536870911, b"max field number")
)
REQUEST_INPUTS: List[bytes] = [
    b"",
    _len(1, b"pkg.Service"),
    _UNKNOWN_FIELDS + _len(1, b"after unknown") + _UNKNOWN_FIELDS,
    _len(1, b"first") + _len(1, b"second"),
    _field(1, 0, b"\x05"),  # field 1 as a varint: not the string
    _len(1, "ünïcødé ☺ 😈".encode()),
    _len(1, b"x" * 300),
    _len(1, b"\xff\xfe"),  # invalid UTF-8
    b"\x0a",  # tag without a length
    b"\x0a\x05abc",  # length past the end
    b"\x80",  # truncated tag
    b"\x08" + b"\xff" * 10 + b"\x01",  # varint of 11 bytes
    b"\x00",  # field number 0
    b"\x0f",  # wire type 7
    _field(6, 3, b""),  # a group that never ends
    _field(6, 4, b""),  # the end of a group never started
    _field(6, 3, _field(7, 4, b"")),  # a group ended by another field number
    b"\x0a\x00",  # an empty string written out
]
RESPONSE_INPUTS: List[bytes] = [
    b"",
    b"\x08\x01",
    b"\x08\x02",
    b"\x08\x03",
    b"\x08\x00",
    b"\x08\x07",  # outside the enum: kept as its number
    b"\x08" + _varint(-1),  # a negative enum, ten bytes
    b"\x08" + _varint(2**32 + 1),  # more than 32 bits: the low 32 count
    _UNKNOWN_FIELDS + b"\x08\x01" + _UNKNOWN_FIELDS,
    b"\x08\x01\x08\x02",
    _len(1, b"\x01"),  # field 1 as bytes: not the enum
    b"\x08",
    b"\x08\x80",
    b"\x10",
]
SERVICES = ["", "pkg.Service", "grpc.health.v1.Health", "ünïcødé ☺ 😈", "x" * 300, "a" * 20000]
STATUSES = [0, 1, 2, 3, 7, -1, 2**31 - 1, -(2**31)]


def _ours(decode: Any, data: bytes) -> Dict[str, Any]:
    try:
        return {"ok": int(v) if isinstance(v := decode(data), int) else v}
    except HealthMessageError:
        return {"error": "DecodeError"}


def test_codec_is_byte_for_byte_protobufs() -> None:
    spec = {
        "encode_requests": SERVICES,
        "encode_responses": STATUSES,
        "parse_requests": [b.hex() for b in REQUEST_INPUTS],
        "parse_responses": [b.hex() for b in RESPONSE_INPUTS],
    }
    theirs = json.loads(_run_helper("codec", stdin=json.dumps(spec)))
    assert theirs["encode_requests"] == [encode_request(s).hex() for s in SERVICES]
    assert theirs["encode_responses"] == [encode_response(n).hex() for n in STATUSES]
    assert theirs["parse_requests"] == [_ours(decode_request, b) for b in REQUEST_INPUTS]
    assert theirs["parse_responses"] == [_ours(decode_response, b) for b in RESPONSE_INPUTS]


def _random_message(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randrange(4)):
        number = rng.choice([1, 1, 2, 9, 1000])
        kind = rng.choice([0, 1, 2, 5])
        if kind == 0:
            parts.append(_field(number, 0, _varint(rng.choice([0, 1, 3, 300, -5, 2**40]))))
        elif kind == 2:
            data = rng.choice([b"", b"svc", "é".encode(), b"\xc3", bytes(rng.randrange(40))])
            parts.append(_len(number, data))
        else:
            parts.append(_field(number, kind, bytes(8 if kind == 1 else 4)))
    message = b"".join(parts)
    if message and rng.random() < 0.2:
        message = message[: rng.randrange(len(message))]  # truncated somewhere
    return message


def test_codec_parses_random_messages_as_protobuf_does() -> None:
    rng = random.Random(20240601)
    messages = [_random_message(rng) for _ in range(400)]
    spec = {
        "encode_requests": [],
        "encode_responses": [],
        "parse_requests": [m.hex() for m in messages],
        "parse_responses": [m.hex() for m in messages],
    }
    theirs = json.loads(_run_helper("codec", stdin=json.dumps(spec)))
    assert theirs["parse_requests"] == [_ours(decode_request, m) for m in messages]
    assert theirs["parse_responses"] == [_ours(decode_response, m) for m in messages]


def test_codec_known_bytes() -> None:
    assert encode_request("") == b""
    assert encode_request("a.B") == b"\n\x03a.B"
    assert encode_response(ServingStatus.UNKNOWN) == b""
    assert encode_response(ServingStatus.SERVING) == b"\x08\x01"
    assert encode_response(ServingStatus.SERVICE_UNKNOWN) == b"\x08\x03"
    assert decode_response(b"\x08\x02") is ServingStatus.NOT_SERVING
    assert decode_response(b"\x08\x09") == 9
    assert decode_request(memoryview(b"\n\x03a.B")) == "a.B"
    with pytest.raises(TypeError):
        encode_request(b"a.B")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_response(2**31)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_request_round_trip(service: str) -> None:
    assert decode_request(encode_request(service)) == service


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_response_round_trip(status: int) -> None:
    assert decode_response(encode_response(status)) == status


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_decoders_refuse_garbage_only_with_their_error(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        with contextlib.suppress(HealthMessageError):
            decode(data)


# -- statuses -----------------------------------------------------------------------------


def test_statuses_set_get_and_names() -> None:
    health = HealthService({"a": "NOT_SERVING"})
    assert health.get() is ServingStatus.SERVING  # the overall status starts SERVING
    assert health.get("a") is ServingStatus.NOT_SERVING
    assert health.get("never") is None
    health.set("a", 1)
    assert health.get("a") is ServingStatus.SERVING
    health.set("a", "service_unknown")
    assert health.get("a") is ServingStatus.SERVICE_UNKNOWN
    health.set("", ServingStatus.NOT_SERVING)
    assert health.get("") is ServingStatus.NOT_SERVING
    for bad, error in [(4, ValueError), ("BUSY", ValueError), (True, TypeError), (1.0, TypeError)]:
        with pytest.raises(error):
            health.set("a", bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        health.set(None, 1)  # type: ignore[arg-type]


def test_graceful_shutdown_sets_everything_not_serving_for_good() -> None:
    health = HealthService({"a": 1, "b": 0})
    health.enter_graceful_shutdown()
    assert {s: health.get(s) for s in ("", "a", "b")} == dict.fromkeys(
        ("", "a", "b"), ServingStatus.NOT_SERVING
    )
    health.set("a", ServingStatus.SERVING)
    health.set("new", ServingStatus.SERVING)
    assert health.get("a") is ServingStatus.NOT_SERVING and health.get("new") is None
    health.enter_graceful_shutdown()  # idempotent


# -- the handlers, driven directly --------------------------------------------------------


class _Aborted(Exception):
    pass


class FakeContext:
    """What the handlers use of a ServicerContext: abort() raises, as the real one does."""

    def __init__(self) -> None:
        self.aborted: Optional[Tuple[StatusCode, str]] = None

    async def abort(self, code: StatusCode, details: str = "") -> None:
        self.aborted = (code, details)
        raise _Aborted(details)


async def test_check_handler() -> None:
    health = HealthService({"a": "NOT_SERVING"})
    assert await health.check(b"", FakeContext()) == b"\x08\x01"
    assert await health.check(encode_request("a"), FakeContext()) == b"\x08\x02"
    for request, code in [(encode_request("b"), StatusCode.NOT_FOUND), (b"\x0a", None)]:
        context = FakeContext()
        with pytest.raises(_Aborted):
            await health.check(request, context)
        assert context.aborted is not None
        assert context.aborted[0] is (code or StatusCode.INVALID_ARGUMENT)


async def _next(stream: AsyncIterator[bytes], timeout: float = 5.0) -> ServingStatus:
    status = decode_response(await asyncio.wait_for(stream.__anext__(), timeout))
    assert isinstance(status, ServingStatus)
    return status


async def _quiet(stream: AsyncIterator[bytes]) -> bool:
    """True when the stream has nothing to send for a moment."""
    task = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)
    if task.done():
        return False
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # the generator ends there, as when the server cancels a handler
    return True


async def test_watch_handler_sends_now_then_each_change() -> None:
    health = HealthService({"a": "SERVING"})
    stream = health.watch(encode_request("a"), FakeContext())
    assert await _next(stream) is ServingStatus.SERVING
    health.set("a", ServingStatus.NOT_SERVING)
    assert await _next(stream) is ServingStatus.NOT_SERVING
    health.set("a", ServingStatus.NOT_SERVING)  # no change: nothing sent
    health.set("other", ServingStatus.SERVING)  # another service: nothing sent
    task = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)
    assert not task.done()
    health.set("a", ServingStatus.SERVING)
    assert decode_response(await asyncio.wait_for(task, 5)) is ServingStatus.SERVING
    assert health.watcher_count("a") == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert health.watcher_count() == 0


async def test_watch_handler_unknown_service_then_set() -> None:
    health = HealthService()
    stream = health.watch(encode_request("later"), FakeContext())
    assert await _next(stream) is ServingStatus.SERVICE_UNKNOWN
    health.set("later", "SERVING")
    assert await _next(stream) is ServingStatus.SERVING
    await stream.aclose()  # type: ignore[attr-defined]


async def test_watch_handler_cancelled_leaves_no_watcher() -> None:
    health = HealthService()
    stream = health.watch(b"", FakeContext())

    async def consume() -> None:
        async for _ in stream:
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    assert health.watcher_count("") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert health.watcher_count() == 0


async def test_watch_handler_bad_request() -> None:
    context = FakeContext()
    with pytest.raises(_Aborted):
        await HealthService().watch(b"\xff", context).__anext__()
    assert context.aborted is not None and context.aborted[0] is StatusCode.INVALID_ARGUMENT


async def test_slow_watchers_keep_only_the_newest_status() -> None:
    # 500 watchers that read nothing after their first message, 2,000 changes: each holds one
    # pending status, and when one reads again it gets the newest status, not a backlog.
    health = HealthService()
    streams = [health.watch(b"", FakeContext()) for _ in range(500)]
    for stream in streams:
        assert await _next(stream) is ServingStatus.SERVING
    with TracedMemory() as memory:
        before = memory.current()
        for index in range(2000):
            health.set("", ServingStatus.NOT_SERVING if index % 2 == 0 else ServingStatus.SERVING)
        health.set("", ServingStatus.NOT_SERVING)
        after = memory.current()
    if before is not None and after is not None:
        assert after - before < 64 * 1024, (before, after)
    for stream in streams[:3]:
        assert await _next(stream) is ServingStatus.NOT_SERVING
        assert await _quiet(stream)
    for stream in streams:
        await stream.aclose()  # type: ignore[attr-defined]
    assert health.watcher_count() == 0


async def test_watch_handler_set_from_another_thread() -> None:
    health = HealthService()
    stream = health.watch(b"", FakeContext())
    assert await _next(stream) is ServingStatus.SERVING
    thread = threading.Thread(target=health.set, args=("", ServingStatus.NOT_SERVING))
    thread.start()
    thread.join(5)
    assert await _next(stream) is ServingStatus.NOT_SERVING
    await stream.aclose()  # type: ignore[attr-defined]


async def test_shutdown_and_close_watches_end_the_watch() -> None:
    health = HealthService({"a": "SERVING"})
    overall = health.watch(b"", FakeContext())
    named = health.watch(encode_request("a"), FakeContext())
    unknown = health.watch(encode_request("never"), FakeContext())
    assert await _next(overall) is ServingStatus.SERVING
    assert await _next(named) is ServingStatus.SERVING
    assert await _next(unknown) is ServingStatus.SERVICE_UNKNOWN
    health.enter_graceful_shutdown()
    assert await _next(overall) is ServingStatus.NOT_SERVING
    assert await _quiet(unknown)  # a service never set stays SERVICE_UNKNOWN, as in grpcio
    health.close_watches()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(overall.__anext__(), 5)
    for stream in (named,):
        assert await _next(stream) is ServingStatus.NOT_SERVING  # the last status first
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(stream.__anext__(), 5)
    late = health.watch(b"", FakeContext())  # a Watch after close: one message, then the end
    assert await _next(late) is ServingStatus.NOT_SERVING
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(late.__anext__(), 5)
    assert health.watcher_count() == 0


# -- on our Server ------------------------------------------------------------------------


@pytest.fixture
async def served() -> AsyncIterator[Tuple[HealthService, int]]:
    health = HealthService({"pkg.Up": "SERVING", "pkg.Down": "NOT_SERVING"})
    server = Server()
    health.attach(server)
    port = await server.start("127.0.0.1:0")
    try:
        yield health, port
    finally:
        health.close_watches()
        await server.stop(grace=1.0)


async def test_check_over_the_wire(served: Tuple[HealthService, int]) -> None:
    _, port = served
    async with Channel(f"127.0.0.1:{port}", timeout=10) as channel:
        check = channel.unary_unary(CHECK_METHOD)
        assert decode_response(await check(b"")) is ServingStatus.SERVING
        assert decode_response(await check(encode_request("pkg.Down"))) == 2
        for request, code in [
            (encode_request("pkg.Nope"), StatusCode.NOT_FOUND),
            (b"\x0a\x09short", StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(GrpcError) as info:
                await check(request)
            assert info.value.code() is code


async def test_grpcio_health_client_checks_our_server(served: Tuple[HealthService, int]) -> None:
    health, port = served
    target = f"127.0.0.1:{port}"
    cases = {"": "STATUS SERVING", "pkg.Up": "STATUS SERVING", "pkg.Down": "STATUS NOT_SERVING"}
    cases["pkg.Nope"] = "ERROR NOT_FOUND"
    for service, expected in cases.items():
        out = await asyncio.to_thread(
            _run_helper, "check", "--target", target, "--service", service
        )
        assert out.startswith(expected), (service, out)
    health.set("pkg.Up", "NOT_SERVING")
    out = await asyncio.to_thread(_run_helper, "check", "--target", target, "--service", "pkg.Up")
    assert out.startswith("STATUS NOT_SERVING"), out


async def _wait_lines(helper: HelperProcess, count: int, timeout: float = 15.0) -> List[str]:
    deadline = time.monotonic() + timeout
    while len(helper.lines) < count:
        assert time.monotonic() < deadline, helper.lines
        assert helper.proc.poll() is None or len(helper.lines) >= count, helper.lines
        await asyncio.sleep(0.02)
    return helper.lines[:count]


@pytest.fixture
def helpers() -> Iterator[List[HelperProcess]]:
    started: List[HelperProcess] = []
    yield started
    for helper in started:
        helper.kill()


async def test_grpcio_health_client_watches_our_server(
    served: Tuple[HealthService, int], helpers: List[HelperProcess]
) -> None:
    health, port = served
    args = ["watch", "--target", f"127.0.0.1:{port}", "--service", "pkg.Up", "--count", "3"]
    watch = await asyncio.to_thread(start_helper, "grpcio_health.py", args)
    helpers.append(watch)
    assert watch.info == "SERVING"
    health.set("pkg.Up", "NOT_SERVING")
    await _wait_lines(watch, 2)
    health.set("pkg.Up", "SERVING")
    assert await _wait_lines(watch, 3) == ["READY SERVING", "STATUS NOT_SERVING", "STATUS SERVING"]
    assert await asyncio.to_thread(watch.proc.wait, 15) == 0


async def test_grpcio_health_client_watches_an_unknown_service(
    served: Tuple[HealthService, int], helpers: List[HelperProcess]
) -> None:
    health, port = served
    args = ["watch", "--target", f"127.0.0.1:{port}", "--service", "pkg.Later", "--count", "2"]
    watch = await asyncio.to_thread(start_helper, "grpcio_health.py", args)
    helpers.append(watch)
    assert watch.info == "SERVICE_UNKNOWN"
    health.set("pkg.Later", "SERVING")
    assert await _wait_lines(watch, 2) == ["READY SERVICE_UNKNOWN", "STATUS SERVING"]


async def test_our_channel_watches_and_the_watch_ends_on_close(
    served: Tuple[HealthService, int],
) -> None:
    health, port = served
    async with Channel(f"127.0.0.1:{port}", timeout=20) as channel:
        call: Any = channel.unary_stream(WATCH_METHOD)(encode_request("pkg.Down"))
        assert decode_response(await asyncio.wait_for(call.read(), 5)) == 2
        health.set("pkg.Down", "SERVING")
        assert decode_response(await asyncio.wait_for(call.read(), 5)) == 1
        health.enter_graceful_shutdown()
        assert decode_response(await asyncio.wait_for(call.read(), 5)) == 2
        health.close_watches()
        rest = [m async for m in call]
        assert rest == [] and await call.code() is StatusCode.OK
    assert health.watcher_count() == 0
