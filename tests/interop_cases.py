"""The official gRPC interop cases as our ``Channel`` runs them, shared by the interop tests.

grpc/grpc doc/interop-test-descriptions.md, "Client" section, written against our public
client API (docs API.md, "Streaming and call objects"): ``tests/test_interop_grpcjs.py`` runs
them against a grpc-js server and ``tests/client/test_interop_streams_grpcio.py`` against a
grpcio one, so both peers are measured by the same code. Messages go through the hand-made
codec of ``grpcjs/messages.py`` (no protobuf package in the test process).

Each case is ``async def case(channel, target)``, raising (an ``AssertionError`` or
``pytest.raises`` failure) when the peer does not behave as the case requires;
``run_case(case, port)`` runs one on a fresh plaintext channel to ``127.0.0.1:port``, bounded
by ``CASE_TIMEOUT``.

The other direction's driver is here too: ``grpcio_interop_client(port, names)`` runs the
grpcio interop client (``tests/grpcio_interop.py client``, on ``grpcio_python()``) and returns
its result per case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from typing import Any, Awaitable, Callable, Dict, List, Optional

import pytest
from _support import TESTS_DIR, grpcio_python
from grpcjs import messages as pb

from wove_h2grpc import EOF, Channel, GrpcError, StatusCode

CALL_TIMEOUT = 10.0  # every call of a case that should succeed promptly
CASE_TIMEOUT = 20.0  # one case, all its calls
GRPCIO_CLIENT_TIMEOUT = 60.0  # one run of the grpcio interop client process

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


async def run_case(case: Case, port: int) -> None:
    """Run ``case`` on a fresh plaintext channel to ``127.0.0.1:port``, bounded in time."""
    target = f"127.0.0.1:{port}"
    async with Channel(target) as channel:
        await asyncio.wait_for(case(channel, target), CASE_TIMEOUT)


def parse_results(stdout: str) -> Dict[str, Dict[str, Any]]:
    """An interop client's JSON lines (``{"case", "ok", "error"}``), by case name."""
    results = {}
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            result = json.loads(line)
            results[result["case"]] = result
    return results


async def run_interop_client(
    argv: List[str],
    names: List[str],
    timeout: float,
    what: str,
    env: Optional[Dict[str, str]] = None,
) -> Dict[str, Dict[str, Any]]:
    """Run an interop client process (``argv``, then the case ``names``), bounded by
    ``timeout``; each case's result. Fails the test when the client prints no result for
    a case (it crashed, or ran past ``timeout``)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, *names, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{what} ({names}) still running after {timeout}s")
    results = parse_results(out.decode())
    missing = [name for name in names if name not in results]
    assert not missing, (
        f"{what} exited {proc.returncode} without a result for {missing}; "
        f"stdout: {out.decode()!r}; stderr: {err.decode()!r}"
    )
    return results


async def grpcio_interop_client(port: int, names: List[str]) -> Dict[str, Dict[str, Any]]:
    """Run the grpcio interop client on ``names`` against ``127.0.0.1:port`` (bounded)."""
    argv = [grpcio_python(), str(TESTS_DIR / "grpcio_interop.py"), "client"]
    argv += ["--target", f"127.0.0.1:{port}"]
    return await run_interop_client(argv, names, GRPCIO_CLIENT_TIMEOUT, "grpcio client")
