"""grpc.testing.TestService on our ``Server``, written against the public API (docs API.md).

The official interop server features (grpc/grpc doc/interop-test-descriptions.md): EmptyCall,
UnaryCall, StreamingOutputCall, StreamingInputCall, FullDuplexCall, HalfDuplexCall, Echo
Metadata, Echo Status and ResponseParameters.interval_us. Messages go through the hand-made
codec of ``grpcjs/messages.py``.

    server = build_server()          # or add_test_service(existing_server)
    port = await server.start("127.0.0.1:0")

Run as a script it is a helper process: ``python tests/grpcjs/our_server.py [--bind H:P]``
prints ``READY <port>`` and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, AsyncIterator, List, Optional, Tuple

if __package__ in (None, ""):  # run as a script: make ``grpcjs.messages`` importable
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grpcjs import messages as pb

from wove_h2grpc import Server, StatusCode

SERVICE = "/grpc.testing.TestService/"
ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"


async def _echo_metadata(context: Any) -> None:
    """Echo Metadata: the initial key back in the headers, the -bin key in the trailers."""
    metadata = context.invocation_metadata()
    initial = [(k, v) for k, v in metadata if k == ECHO_INITIAL]
    trailing = [(k, v) for k, v in metadata if k == ECHO_TRAILING]
    if initial:
        await context.send_initial_metadata(initial[:1])
    if trailing:
        context.set_trailing_metadata(trailing[:1])


async def _echo_status(context: Any, status: Optional[pb.EchoStatus]) -> None:
    """Echo Status: end the call with the requested code and message (raises)."""
    if status is not None and status.code != 0:
        await context.abort(StatusCode(status.code), status.message)


async def _check_type(context: Any, response_type: int) -> None:
    if response_type != 0:  # only COMPRESSABLE exists
        await context.abort(StatusCode.INVALID_ARGUMENT, f"response_type {response_type}")


async def empty_call(request: bytes, context: Any) -> bytes:
    await _echo_metadata(context)
    return b""


async def unary_call(request: bytes, context: Any) -> bytes:
    await _echo_metadata(context)
    req = pb.decode_simple_request(request)
    await _echo_status(context, req.status)
    await _check_type(context, req.response_type)
    return pb.simple_response(bytes(req.response_size))


async def _responses(parameters: List[Tuple[int, int]]) -> AsyncIterator[bytes]:
    for size, interval_us in parameters:
        if interval_us > 0:
            await asyncio.sleep(interval_us / 1e6)
        yield pb.streaming_output_response(bytes(size))


async def streaming_output_call(request: bytes, context: Any) -> AsyncIterator[bytes]:
    await _echo_metadata(context)
    req = pb.decode_streaming_output_request(request)
    await _echo_status(context, req.status)
    await _check_type(context, req.response_type)
    async for reply in _responses(req.parameters):
        yield reply


async def streaming_input_call(request_iterator: AsyncIterator[bytes], context: Any) -> bytes:
    await _echo_metadata(context)
    total = 0
    async for request in request_iterator:
        body = pb.decode_streaming_input_request(request)
        total += len(body or b"")
    return pb.streaming_input_response(total)


async def full_duplex_call(
    request_iterator: AsyncIterator[bytes], context: Any
) -> AsyncIterator[bytes]:
    await _echo_metadata(context)
    async for request in request_iterator:
        req = pb.decode_streaming_output_request(request)
        await _echo_status(context, req.status)
        await _check_type(context, req.response_type)
        async for reply in _responses(req.parameters):
            yield reply


async def half_duplex_call(
    request_iterator: AsyncIterator[bytes], context: Any
) -> AsyncIterator[bytes]:
    await _echo_metadata(context)
    requests = [pb.decode_streaming_output_request(r) async for r in request_iterator]
    for req in requests:
        await _echo_status(context, req.status)
        async for reply in _responses(req.parameters):
            yield reply


METHODS = (
    ("EmptyCall", empty_call, "unary_unary"),
    ("UnaryCall", unary_call, "unary_unary"),
    ("StreamingOutputCall", streaming_output_call, "unary_stream"),
    ("StreamingInputCall", streaming_input_call, "stream_unary"),
    ("FullDuplexCall", full_duplex_call, "stream_stream"),
    ("HalfDuplexCall", half_duplex_call, "stream_stream"),
)


def add_test_service(server: Server) -> None:
    """Register TestService's methods on ``server`` (UnimplementedCall left out on purpose)."""
    for name, handler, kind in METHODS:
        server.add_method(SERVICE + name, handler, kind=kind)


def build_server() -> Server:
    server = Server()
    add_test_service(server)
    return server


async def _main(bind: str) -> None:
    import signal

    server = build_server()
    port = await server.start(bind)
    print(f"READY {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


if __name__ == "__main__":
    args = sys.argv[1:]
    address = args[args.index("--bind") + 1] if "--bind" in args else "127.0.0.1:0"
    asyncio.run(_main(address))
