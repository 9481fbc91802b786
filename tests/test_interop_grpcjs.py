"""Interop with grpc-js (Node's @grpc/grpc-js), a third gRPC implementation, both directions.

- our ``Channel`` against a grpc-js ``TestService`` server (``tests/grpcjs/interop_server.js``,
  a helper process printing ``READY <port>``), one test per official interop case;
- the grpc-js interop client (``tests/grpcjs/interop_client.js``) against our ``Server``
  hosting ``TestService`` (``tests/grpcjs/our_server.py``), one test per case;
- the grpc-js client against the grpc-js server: the reference both sides are measured by.

Cases and server features are those of grpc/grpc doc/interop-test-descriptions.md; messages
are grpc.testing's, encoded here by the hand-made codec of ``tests/grpcjs/messages.py``.

grpc-js is installed into tests/grpcjs/node_modules by ``.ci/install-grpcjs.sh``. Without it
the module is skipped, unless ``WOVE_H2GRPC_REQUIRE_GRPCJS`` is set (CI's tests-grpcjs lane):
then anything missing (node, node_modules, the protos) fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional

import pytest
from _support import TESTS_DIR, HelperProcess, start_helper
from grpcjs import messages as pb
from grpcjs.our_server import build_server

from wove_h2grpc import EOF, Channel, GrpcError, Server, StatusCode

GRPCJS_DIR = TESTS_DIR / "grpcjs"
NODE_MODULES = GRPCJS_DIR / "node_modules"
PROTO_ROOT = Path(os.environ.get("WOVE_H2GRPC_INTEROP_PROTOS") or TESTS_DIR / "interop" / "protos")
REQUIRED = bool(os.environ.get("WOVE_H2GRPC_REQUIRE_GRPCJS"))
NODE = shutil.which("node")

CALL_TIMEOUT = 10.0  # every call of a case that should succeed promptly
CASE_TIMEOUT = 20.0  # one case, all its calls
CLIENT_TIMEOUT = 60.0  # one run of the grpc-js client process

M = "/grpc.testing.TestService/"
ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"
INITIAL_VALUE = "test_initial_metadata_value"
TRAILING_VALUE = b"\xab\xab\xab"
SPECIAL_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
# Not an official case's: an HTTP/2 field value may not start or end with a space unencoded.
EDGE_SPACES_MESSAGE = "  leading and trailing spaces  "
# (request payload size, response payload size) of client_streaming/server_streaming/ping_pong
SIZES = ((27182, 31415), (8, 9), (1828, 2653), (45904, 58979))


def _missing() -> Optional[str]:
    """What the grpc-js tests lack on this machine, or None."""
    if not NODE_MODULES.is_dir():
        return f"{NODE_MODULES} is absent (run .ci/install-grpcjs.sh)"
    if NODE is None:
        return "node is not on PATH (run .ci/install-grpcjs.sh)"
    if not (PROTO_ROOT / "grpc" / "testing" / "test.proto").is_file():
        return f"the interop protos are absent from {PROTO_ROOT}"
    return None


@pytest.fixture(scope="module", autouse=True)
def grpcjs_available() -> None:
    reason = _missing()
    if reason is None:
        return
    if REQUIRED or NODE_MODULES.is_dir():
        pytest.fail(f"grpc-js interop cannot run: {reason}", pytrace=False)
    pytest.skip(f"grpc-js not installed: {reason}; WOVE_H2GRPC_REQUIRE_GRPCJS unset")


def _node_env() -> Dict[str, str]:
    return {"WOVE_H2GRPC_INTEROP_PROTOS": str(PROTO_ROOT)}


@pytest.fixture(scope="module")
def grpcjs_server(grpcjs_available: None) -> Iterator[HelperProcess]:
    assert NODE is not None
    proc = start_helper("grpcjs/interop_server.js", python=NODE, env=_node_env())
    yield proc
    proc.stop()


# ---------------------------------------------------------------------------------------------
# The interop cases, as our Channel runs them (API.md, "Streaming and call objects").

Case = Callable[[Channel, str], Awaitable[None]]


async def empty_unary(ch: Channel, target: str) -> None:
    reply = await ch.unary_unary(M + "EmptyCall")(b"", timeout=CALL_TIMEOUT)
    assert reply == b""


async def large_unary(ch: Channel, target: str) -> None:
    request = pb.simple_request(314159, bytes(271828))
    reply = await ch.unary_unary(M + "UnaryCall")(request, timeout=CALL_TIMEOUT)
    assert pb.response_body(reply) == bytes(314159)


async def client_streaming(ch: Channel, target: str) -> None:
    call = ch.stream_unary(M + "StreamingInputCall")(timeout=CALL_TIMEOUT)
    for size, _ in SIZES:
        await call.write(pb.streaming_input_request(bytes(size)))
    await call.done_writing()
    reply = await call
    assert pb.decode_streaming_input_response(reply) == 74922
    assert await call.code() == StatusCode.OK


async def server_streaming(ch: Channel, target: str) -> None:
    request = pb.streaming_output_request(sizes=tuple(n for _, n in SIZES))
    call = ch.unary_stream(M + "StreamingOutputCall")(request, timeout=CALL_TIMEOUT)
    bodies = [pb.response_body(reply) async for reply in call]
    assert [len(b or b"") for b in bodies] == [n for _, n in SIZES]
    assert bodies == [bytes(n) for _, n in SIZES]
    assert await call.code() == StatusCode.OK


async def ping_pong(ch: Channel, target: str) -> None:
    call = ch.stream_stream(M + "FullDuplexCall")(timeout=CALL_TIMEOUT)
    for request_size, response_size in SIZES:
        await call.write(pb.streaming_output_request((response_size,), bytes(request_size)))
        reply = await call.read()
        assert reply is not EOF
        assert pb.response_body(reply) == bytes(response_size)
    await call.done_writing()
    assert await call.read() is EOF
    assert await call.code() == StatusCode.OK


async def empty_stream(ch: Channel, target: str) -> None:
    call = ch.stream_stream(M + "FullDuplexCall")(timeout=CALL_TIMEOUT)
    await call.done_writing()
    assert await call.read() is EOF
    assert await call.code() == StatusCode.OK


async def cancel_after_begin(ch: Channel, target: str) -> None:
    # The echo header makes the server send its headers at once: once they are here, the
    # call has begun on the server, and no request message has been sent.
    call = ch.stream_unary(M + "StreamingInputCall")(
        timeout=CALL_TIMEOUT, metadata=[(ECHO_INITIAL, INITIAL_VALUE)]
    )
    assert (ECHO_INITIAL, INITIAL_VALUE) in await call.initial_metadata()
    assert call.cancel() is True
    with pytest.raises(asyncio.CancelledError):
        await call
    assert call.cancelled()
    assert await call.code() == StatusCode.CANCELLED


async def cancel_after_first_response(ch: Channel, target: str) -> None:
    call = ch.stream_stream(M + "FullDuplexCall")(timeout=CALL_TIMEOUT)
    await call.write(pb.streaming_output_request((31415,), bytes(27182)))
    reply = await call.read()
    assert reply is not EOF
    assert pb.response_body(reply) == bytes(31415)
    assert call.cancel() is True
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    assert call.cancelled()
    assert await call.code() == StatusCode.CANCELLED


async def timeout_on_sleeping_server(ch: Channel, target: str) -> None:
    call = ch.stream_stream(M + "FullDuplexCall")(timeout=0.001)
    with contextlib.suppress(GrpcError):  # the deadline may already have passed
        await call.write(pb.streaming_output_request(body=bytes(27182)))
    with pytest.raises(GrpcError) as info:
        await call.read()
    assert info.value.code() == StatusCode.DEADLINE_EXCEEDED
    assert await call.code() == StatusCode.DEADLINE_EXCEEDED


ECHO_METADATA = [(ECHO_INITIAL, INITIAL_VALUE), (ECHO_TRAILING, TRAILING_VALUE)]


async def _check_echoed(call: Any) -> None:
    assert (ECHO_INITIAL, INITIAL_VALUE) in await call.initial_metadata()
    assert (ECHO_TRAILING, TRAILING_VALUE) in await call.trailing_metadata()


async def custom_metadata_unary(ch: Channel, target: str) -> None:
    request = pb.simple_request(314159, bytes(271828))
    call = ch.unary_unary(M + "UnaryCall")(request, timeout=CALL_TIMEOUT, metadata=ECHO_METADATA)
    reply = await call
    assert pb.response_body(reply) == bytes(314159)
    await _check_echoed(call)


async def custom_metadata(ch: Channel, target: str) -> None:
    await custom_metadata_unary(ch, target)
    call = ch.stream_stream(M + "FullDuplexCall")(timeout=CALL_TIMEOUT, metadata=ECHO_METADATA)
    await call.write(pb.streaming_output_request((314159,), bytes(271828)))
    await call.done_writing()
    reply = await call.read()
    assert reply is not EOF
    assert pb.response_body(reply) == bytes(314159)
    assert await call.read() is EOF
    await _check_echoed(call)


async def _unary_status(ch: Channel, message: str) -> None:
    request = pb.simple_request(status=(2, message))
    with pytest.raises(GrpcError) as info:
        await ch.unary_unary(M + "UnaryCall")(request, timeout=CALL_TIMEOUT)
    assert info.value.code() == StatusCode.UNKNOWN
    assert info.value.details() == message


async def status_code_and_message_unary(ch: Channel, target: str) -> None:
    await _unary_status(ch, "test status message")


async def status_code_and_message(ch: Channel, target: str) -> None:
    await _unary_status(ch, "test status message")
    call = ch.stream_stream(M + "FullDuplexCall")(timeout=CALL_TIMEOUT)
    await call.write(pb.streaming_output_request(status=(2, "test status message")))
    await call.done_writing()
    with pytest.raises(GrpcError) as info:
        await call.read()
    assert info.value.code() == StatusCode.UNKNOWN
    assert info.value.details() == "test status message"
    assert await call.code() == StatusCode.UNKNOWN
    assert await call.details() == "test status message"


async def special_status_message(ch: Channel, target: str) -> None:
    await _unary_status(ch, SPECIAL_MESSAGE)


async def edge_spaces_status_message(ch: Channel, target: str) -> None:
    await _unary_status(ch, EDGE_SPACES_MESSAGE)


async def unimplemented_method(ch: Channel, target: str) -> None:
    with pytest.raises(GrpcError) as info:
        await ch.unary_unary(M + "UnimplementedCall")(b"", timeout=CALL_TIMEOUT)
    assert info.value.code() == StatusCode.UNIMPLEMENTED


async def unimplemented_service(ch: Channel, target: str) -> None:
    method = "/grpc.testing.UnimplementedService/UnimplementedCall"
    with pytest.raises(GrpcError) as info:
        await ch.unary_unary(method)(b"", timeout=CALL_TIMEOUT)
    assert info.value.code() == StatusCode.UNIMPLEMENTED


UNARY_CASES: Dict[str, Case] = {
    "empty_unary": empty_unary,
    "large_unary": large_unary,
    "special_status_message": special_status_message,
    "edge_spaces_status_message": edge_spaces_status_message,
    "unimplemented_method": unimplemented_method,
    "unimplemented_service": unimplemented_service,
}
STREAMING_CASES: Dict[str, Case] = {
    "client_streaming": client_streaming,
    "server_streaming": server_streaming,
    "ping_pong": ping_pong,
    "empty_stream": empty_stream,
    "cancel_after_begin": cancel_after_begin,
    "cancel_after_first_response": cancel_after_first_response,
    "timeout_on_sleeping_server": timeout_on_sleeping_server,
    "custom_metadata": custom_metadata,
    "status_code_and_message": status_code_and_message,
}
CASES = {**UNARY_CASES, **STREAMING_CASES}


# ---------------------------------------------------------------------------------------------
# 1. Our Channel -> grpc-js server.


async def _run_case(case: Case, port: int) -> None:
    target = f"127.0.0.1:{port}"
    async with Channel(target) as channel:
        await asyncio.wait_for(case(channel, target), CASE_TIMEOUT)


@pytest.mark.parametrize("name", list(CASES))
async def test_our_channel_against_grpcjs_server(name: str, grpcjs_server: HelperProcess) -> None:
    await _run_case(CASES[name], grpcjs_server.port)


@pytest.mark.parametrize(
    "case",
    [
        custom_metadata_unary,
        status_code_and_message_unary,
    ],
    ids=lambda c: c.__name__,
)
async def test_our_channel_unary_parts_against_grpcjs_server(
    case: Case, grpcjs_server: HelperProcess
) -> None:
    """The unary halves of custom_metadata and status_code_and_message, on their own."""
    await _run_case(case, grpcjs_server.port)


# ---------------------------------------------------------------------------------------------
# 2. grpc-js client -> our Server.


def _parse_results(stdout: str) -> Dict[str, Dict[str, Any]]:
    results = {}
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            result = json.loads(line)
            results[result["case"]] = result
    return results


async def _grpcjs_client(port: int, cases: List[str]) -> Dict[str, Dict[str, Any]]:
    """Run the grpc-js interop client for ``cases`` (bounded); its result per case."""
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(GRPCJS_DIR / "interop_client.js"),
        f"127.0.0.1:{port}",
        *cases,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **_node_env()},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"grpc-js client ({cases}) still running after {CLIENT_TIMEOUT}s")
    results = _parse_results(out.decode())
    missing = [c for c in cases if c not in results]
    assert not missing, (
        f"grpc-js client exited {proc.returncode} without a result for {missing}; "
        f"stdout: {out.decode()!r}; stderr: {err.decode()!r}"
    )
    return results


# edge_spaces_status_message: a status message with leading/trailing spaces reaches grpc-js
# intact only because our grpc-message encoding percent-encodes them (Node's http2 drops a
# field value with edge whitespace, RFC 9113 section 8.2.1).
SERVER_CASE_PARAMS = list(CASES)


@pytest.mark.parametrize("name", SERVER_CASE_PARAMS)
async def test_grpcjs_client_against_our_server(name: str, grpcjs_available: None) -> None:
    server = build_server()
    port = await server.start("127.0.0.1:0")
    try:
        result = (await _grpcjs_client(port, [name]))[name]
    finally:
        await server.stop(grace=1.0)
    assert result["ok"], f"{name}: {result['error']}"


# ---------------------------------------------------------------------------------------------
# 3. grpc-js client -> grpc-js server: the helpers themselves agree with the spec.


def test_grpcjs_client_against_grpcjs_server(grpcjs_server: HelperProcess) -> None:
    assert NODE is not None
    proc = subprocess.run(
        [NODE, str(GRPCJS_DIR / "interop_client.js"), f"127.0.0.1:{grpcjs_server.port}", "all"],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        env={**os.environ, **_node_env()},
    )
    results = _parse_results(proc.stdout)
    assert set(CASES) <= set(results), (proc.stdout, proc.stderr)
    failed = {name: r["error"] for name, r in results.items() if not r["ok"]}
    assert not failed
    assert proc.returncode == 0, proc.stderr


async def test_grpcjs_client_reports_failures(grpcjs_available: None) -> None:
    """The grpc-js client is not vacuous: a server that answers wrongly fails its cases."""

    async def short_unary(request: bytes, context: Any) -> bytes:
        return pb.simple_response(b"\0")  # one byte, whatever was asked

    server = Server({M + "UnaryCall": short_unary})  # EmptyCall left out: UNIMPLEMENTED
    port = await server.start("127.0.0.1:0")
    try:
        results = await _grpcjs_client(port, ["large_unary", "empty_unary"])
    finally:
        await server.stop(grace=1.0)
    assert not results["large_unary"]["ok"]
    assert "314159" in results["large_unary"]["error"]
    assert not results["empty_unary"]["ok"]
    assert "UNIMPLEMENTED" in results["empty_unary"]["error"]
