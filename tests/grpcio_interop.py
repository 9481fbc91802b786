"""grpc.testing.TestService with grpcio (grpc.aio), run as a helper process: server and client.

The official interop roles of grpc/grpc doc/interop-test-descriptions.md, on grpcio, so our
``Server`` and ``Channel`` are measured against the reference implementation itself. Started
through ``_support.grpcio_python()``: grpcio and protobuf never load in the pytest process.

The protobuf classes are generated at start-up with ``grpc_tools.protoc`` from the interop
protos (``tests/interop/protos``, or ``$WOVE_H2GRPC_INTEROP_PROTOS``) into a temporary
directory: no generated code is checked in, and the messages are protobuf's own, independent
of the hand-made codec the test process uses (``grpcjs/messages.py``). The three protos are
copied flat (``grpc/testing/x.proto`` -> ``x.proto``, imports rewritten) so that the generated
modules do not collide with the installed ``grpc`` package; the proto package, hence every
method's path (``/grpc.testing.TestService/...``), is unchanged.

Modes:

- ``server [--port 0]``: a grpc.aio server on 127.0.0.1 with the interop server features:
  EmptyCall, UnaryCall, StreamingOutputCall (ResponseParameters size and interval_us),
  StreamingInputCall, FullDuplexCall, HalfDuplexCall, Echo Metadata
  (``x-grpc-test-echo-initial`` back in the headers, ``x-grpc-test-echo-trailing-bin`` in the
  trailers) and Echo Status (``response_status``). UnimplementedCall is not registered, so
  grpcio itself answers it UNIMPLEMENTED. Prints ``READY <port>``; runs until SIGTERM.
- ``client --target HOST:PORT CASE...`` (``all`` = every case): runs the interop client cases
  with a grpc.aio stub, a fresh channel per case, each bounded by ``CASE_TIMEOUT`` (seconds,
  ``$WOVE_H2GRPC_GRPCIO_CASE_TIMEOUT``). Prints one JSON line per case, ``{"case": ...,
  "ok": true|false, "error": null|"..."}`` (as ``grpcjs/interop_client.js`` does); exits 0
  when every case passed, 1 if any failed, 2 on a usage error. An attempt whose outcome
  grpcio's own write race hid (grpc/grpc#36066: a write failing as the call ends replaces the
  status the server sent with INTERNAL) is inconclusive and tried again, a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import traceback
import types
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Sequence, Tuple

import grpc

TESTS_DIR = Path(__file__).resolve().parent
PROTO_ROOT = Path(os.environ.get("WOVE_H2GRPC_INTEROP_PROTOS") or TESTS_DIR / "interop" / "protos")
PROTOS = ("empty", "messages", "test")

CASE_TIMEOUT = float(os.environ.get("WOVE_H2GRPC_GRPCIO_CASE_TIMEOUT") or 15.0)
CALL_TIMEOUT = 10.0  # every call of a case that should succeed promptly
SERVICE = "grpc.testing.TestService"
ECHO_INITIAL = "x-grpc-test-echo-initial"
ECHO_TRAILING = "x-grpc-test-echo-trailing-bin"
INITIAL_VALUE = "test_initial_metadata_value"
TRAILING_VALUE = b"\xab\xab\xab"
SPECIAL_MESSAGE = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"
# Not an official case's: an HTTP/2 field value may not start or end with a space unencoded.
EDGE_SPACES_MESSAGE = "  leading and trailing spaces  "
# (request payload size, response payload size) of client_streaming/server_streaming/ping_pong
SIZES = ((27182, 31415), (8, 9), (1828, 2653), (45904, 58979))
WRITE_RACE_ATTEMPTS = 5  # tries of a case whose outcome grpcio's write race made inconclusive
STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def load_messages(directory: Path) -> types.SimpleNamespace:
    """Generate the grpc.testing modules into ``directory`` with grpc_tools.protoc; import them."""
    try:
        from grpc_tools import protoc
    except ImportError as err:
        raise SystemExit(
            f"grpcio_interop.py: grpc_tools is not importable by {sys.executable} ({err}); "
            "install grpcio-tools there (it is in the test extra: pip install '.[test]')"
        ) from err

    for name in PROTOS:
        text = (PROTO_ROOT / "grpc" / "testing" / f"{name}.proto").read_text(encoding="utf-8")
        text = text.replace('import "grpc/testing/', 'import "')
        (directory / f"{name}.proto").write_text(text, encoding="utf-8")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{directory}",
            f"--python_out={directory}",
            f"--grpc_python_out={directory}",
            *(str(directory / f"{name}.proto") for name in PROTOS),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc exited {rc} on {PROTO_ROOT}")
    sys.path.insert(0, str(directory))
    import empty_pb2
    import messages_pb2
    import test_pb2_grpc

    return types.SimpleNamespace(empty=empty_pb2, pb=messages_pb2, rpc=test_pb2_grpc)


# ---------------------------------------------------------------------------------------------
# Server.


def _handlers(m: types.SimpleNamespace) -> grpc.GenericRpcHandler:
    """TestService's method handlers (UnimplementedCall left out: grpcio answers it)."""
    pb, empty = m.pb, m.empty

    async def echo_metadata(context: Any) -> None:
        metadata = list(context.invocation_metadata() or ())
        initial = [(k, v) for k, v in metadata if k == ECHO_INITIAL]
        trailing = [(k, v) for k, v in metadata if k == ECHO_TRAILING]
        if initial:
            await context.send_initial_metadata(initial[:1])
        if trailing:
            context.set_trailing_metadata(trailing[:1])

    async def check_request(request: Any, context: Any) -> None:
        """Echo Status (ends the call with the requested status) and the payload type."""
        status = request.response_status
        if request.HasField("response_status") and status.code != 0:
            await context.abort(STATUS_BY_NUMBER[status.code], status.message)
        if request.response_type != pb.COMPRESSABLE:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"response_type {request.response_type}"
            )

    async def responses(request: Any) -> AsyncIterator[Any]:
        for parameters in request.response_parameters:
            if parameters.interval_us > 0:
                await asyncio.sleep(parameters.interval_us / 1e6)
            body = bytes(parameters.size)
            yield pb.StreamingOutputCallResponse(payload=pb.Payload(body=body))

    async def empty_call(request: Any, context: Any) -> Any:
        await echo_metadata(context)
        return empty.Empty()

    async def unary_call(request: Any, context: Any) -> Any:
        await echo_metadata(context)
        await check_request(request, context)
        return pb.SimpleResponse(payload=pb.Payload(body=bytes(request.response_size)))

    async def streaming_output_call(request: Any, context: Any) -> AsyncIterator[Any]:
        await echo_metadata(context)
        await check_request(request, context)
        async for reply in responses(request):
            yield reply

    async def streaming_input_call(requests: AsyncIterator[Any], context: Any) -> Any:
        await echo_metadata(context)
        total = 0
        async for request in requests:
            total += len(request.payload.body)
        return pb.StreamingInputCallResponse(aggregated_payload_size=total)

    async def full_duplex_call(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        await echo_metadata(context)
        async for request in requests:
            await check_request(request, context)
            async for reply in responses(request):
                yield reply

    async def half_duplex_call(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        await echo_metadata(context)
        received = [request async for request in requests]
        for request in received:
            await check_request(request, context)
            async for reply in responses(request):
                yield reply

    def codec(request_cls: Any, response_cls: Any) -> Dict[str, Any]:
        return {
            "request_deserializer": request_cls.FromString,
            "response_serializer": response_cls.SerializeToString,
        }

    out = pb.StreamingOutputCallRequest, pb.StreamingOutputCallResponse
    methods = {
        "EmptyCall": grpc.unary_unary_rpc_method_handler(
            empty_call, **codec(empty.Empty, empty.Empty)
        ),
        "UnaryCall": grpc.unary_unary_rpc_method_handler(
            unary_call, **codec(pb.SimpleRequest, pb.SimpleResponse)
        ),
        "StreamingOutputCall": grpc.unary_stream_rpc_method_handler(
            streaming_output_call, **codec(*out)
        ),
        "StreamingInputCall": grpc.stream_unary_rpc_method_handler(
            streaming_input_call,
            **codec(pb.StreamingInputCallRequest, pb.StreamingInputCallResponse),
        ),
        "FullDuplexCall": grpc.stream_stream_rpc_method_handler(full_duplex_call, **codec(*out)),
        "HalfDuplexCall": grpc.stream_stream_rpc_method_handler(half_duplex_call, **codec(*out)),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def run_server(m: types.SimpleNamespace, port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(m),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    _say(f"READY {bound}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


# ---------------------------------------------------------------------------------------------
# Client.


class CaseFailure(Exception):
    """A case's check failed (the message says which and how)."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CaseFailure(message)


def _describe(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"status {err.code().name}: {err.details()!r}"
    return repr(err)


def _values(metadata: Any, key: str) -> List[Any]:
    return [v for k, v in (metadata or ()) if k == key]


def _check_body(reply: Any, size: int, what: str) -> None:
    body = reply.payload.body
    check(len(body) == size, f"{what}: payload body is {len(body)} bytes, expected {size}")
    check(body == bytes(size), f"{what}: payload body is not all zeros")


async def _expect_error(awaitable: Awaitable[Any], code: grpc.StatusCode, what: str) -> Any:
    """Await ``awaitable``; it must fail with ``code``. Returns the AioRpcError."""
    try:
        await awaitable
    except grpc.aio.AioRpcError as err:
        check(err.code() == code, f"{what}: ended with {_describe(err)}, expected {code.name}")
        return err
    raise CaseFailure(f"{what}: succeeded, expected {code.name}")


def _is_write_race(err: grpc.aio.AioRpcError) -> bool:
    """True for the status grpc.aio makes up when a write fails as the call ends.

    grpcio's own bug (grpc/grpc#36066, open): a ``write()`` that Core fails because the call
    has just ended (the server sent its status, or the deadline passed) overwrites the call's
    status with ``INTERNAL: Internal error from Core`` (debug string ``Failed "execute_batch":
    (SendMessageOperation,)``), so the status the server sent is lost to the client.
    """
    return (
        err.code() == grpc.StatusCode.INTERNAL
        and err.details() == "Internal error from Core"
        and "SendMessageOperation" in (err.debug_error_string() or "")
    )


class Client:
    """One case's stubs: ``TestService`` and ``UnimplementedService`` on one channel."""

    def __init__(self, m: types.SimpleNamespace, channel: grpc.aio.Channel) -> None:
        self.m, self.pb = m, m.pb
        self.stub = m.rpc.TestServiceStub(channel)
        self.unimplemented = m.rpc.UnimplementedServiceStub(channel)
        self.write_race = False  # grpcio lost the call's status to a failed write

    async def write(self, call: Any, request: Any) -> None:
        """``call.write(request)``, noting grpcio's write race (``_is_write_race``)."""
        try:
            await call.write(request)
        except grpc.aio.AioRpcError as err:
            self.write_race = self.write_race or _is_write_race(err)
            raise

    def payload(self, size: int) -> Any:
        return self.pb.Payload(type=self.pb.COMPRESSABLE, body=bytes(size))

    def output_request(self, sizes: Sequence[int] = (), body: int = 0, **kwargs: Any) -> Any:
        return self.pb.StreamingOutputCallRequest(
            response_parameters=[self.pb.ResponseParameters(size=n) for n in sizes],
            payload=self.payload(body),
            **kwargs,
        )

    def echo_metadata(self) -> Tuple[Tuple[str, Any], ...]:
        return ((ECHO_INITIAL, INITIAL_VALUE), (ECHO_TRAILING, TRAILING_VALUE))

    async def check_echoed(self, call: Any, what: str) -> None:
        initial = _values(await call.initial_metadata(), ECHO_INITIAL)
        check(initial == [INITIAL_VALUE], f"{what}: initial {ECHO_INITIAL} is {initial!r}")
        trailing = _values(await call.trailing_metadata(), ECHO_TRAILING)
        check(trailing == [TRAILING_VALUE], f"{what}: trailing {ECHO_TRAILING} is {trailing!r}")

    # The cases (doc/interop-test-descriptions.md, "Client").

    async def empty_unary(self) -> None:
        reply = await self.stub.EmptyCall(self.m.empty.Empty(), timeout=CALL_TIMEOUT)
        check(isinstance(reply, self.m.empty.Empty), f"EmptyCall: reply {reply!r}")

    async def large_unary(self) -> None:
        request = self.pb.SimpleRequest(response_size=314159, payload=self.payload(271828))
        reply = await self.stub.UnaryCall(request, timeout=CALL_TIMEOUT)
        _check_body(reply, 314159, "UnaryCall")

    async def client_streaming(self) -> None:
        async def requests() -> AsyncIterator[Any]:
            for size, _ in SIZES:
                yield self.pb.StreamingInputCallRequest(payload=self.payload(size))

        call = self.stub.StreamingInputCall(requests(), timeout=CALL_TIMEOUT)
        reply = await call
        total = reply.aggregated_payload_size
        check(total == 74922, f"aggregated_payload_size is {total}, expected 74922")
        check(await call.code() == grpc.StatusCode.OK, f"code {await call.code()}")

    async def server_streaming(self) -> None:
        request = self.output_request(sizes=[n for _, n in SIZES])
        call = self.stub.StreamingOutputCall(request, timeout=CALL_TIMEOUT)
        replies = [reply async for reply in call]
        check(len(replies) == len(SIZES), f"{len(replies)} responses, expected {len(SIZES)}")
        for i, (reply, (_, size)) in enumerate(zip(replies, SIZES)):
            _check_body(reply, size, f"response {i}")
        check(await call.code() == grpc.StatusCode.OK, f"code {await call.code()}")

    async def ping_pong(self) -> None:
        call = self.stub.FullDuplexCall(timeout=CALL_TIMEOUT)
        for i, (request_size, response_size) in enumerate(SIZES):
            await self.write(call, self.output_request((response_size,), request_size))
            reply = await call.read()
            check(reply is not grpc.aio.EOF, f"response {i}: the stream ended")
            _check_body(reply, response_size, f"response {i}")
        await call.done_writing()
        check(await call.read() is grpc.aio.EOF, "a response after the last one")
        check(await call.code() == grpc.StatusCode.OK, f"code {await call.code()}")

    async def empty_stream(self) -> None:
        call = self.stub.FullDuplexCall(timeout=CALL_TIMEOUT)
        await call.done_writing()
        check(await call.read() is grpc.aio.EOF, "FullDuplexCall: a response to no request")
        check(await call.code() == grpc.StatusCode.OK, f"code {await call.code()}")

    async def cancel_after_begin(self) -> None:
        # The echo header makes the server send its headers at once: once they are here, the
        # handler is running on the server, and no request message has been sent.
        call = self.stub.StreamingInputCall(timeout=CALL_TIMEOUT, metadata=self.echo_metadata())
        initial = _values(await call.initial_metadata(), ECHO_INITIAL)
        check(initial == [INITIAL_VALUE], f"initial {ECHO_INITIAL} is {initial!r}")
        check(call.cancel(), "cancel() returned False")
        try:
            await call
        except asyncio.CancelledError:
            pass
        else:
            raise CaseFailure("StreamingInputCall completed after cancel()")
        code = await call.code()
        check(code == grpc.StatusCode.CANCELLED, f"code {code}, expected CANCELLED")

    async def cancel_after_first_response(self) -> None:
        call = self.stub.FullDuplexCall(timeout=CALL_TIMEOUT)
        await self.write(call, self.output_request((31415,), 27182))
        reply = await call.read()
        check(reply is not grpc.aio.EOF, "the stream ended before its first response")
        _check_body(reply, 31415, "response 0")
        check(call.cancel(), "cancel() returned False")
        code = await call.code()
        check(code == grpc.StatusCode.CANCELLED, f"code {code}, expected CANCELLED")

    async def timeout_on_sleeping_server(self) -> None:
        call = self.stub.FullDuplexCall(timeout=0.001)
        # The deadline may already have passed.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self.write(call, self.output_request(body=27182))
        code = await call.code()
        check(code == grpc.StatusCode.DEADLINE_EXCEEDED, f"code {code}, expected DEADLINE_EXCEEDED")

    async def custom_metadata(self) -> None:
        request = self.pb.SimpleRequest(response_size=314159, payload=self.payload(271828))
        unary = self.stub.UnaryCall(request, timeout=CALL_TIMEOUT, metadata=self.echo_metadata())
        _check_body(await unary, 314159, "UnaryCall")
        await self.check_echoed(unary, "UnaryCall")

        call = self.stub.FullDuplexCall(timeout=CALL_TIMEOUT, metadata=self.echo_metadata())
        await self.write(call, self.output_request((314159,), 271828))
        await call.done_writing()
        reply = await call.read()
        check(reply is not grpc.aio.EOF, "FullDuplexCall: no response")
        _check_body(reply, 314159, "FullDuplexCall")
        check(await call.read() is grpc.aio.EOF, "FullDuplexCall: a second response")
        await self.check_echoed(call, "FullDuplexCall")

    async def _unary_status(self, message: str) -> None:
        status = self.pb.EchoStatus(code=2, message=message)
        call = self.stub.UnaryCall(
            self.pb.SimpleRequest(response_status=status), timeout=CALL_TIMEOUT
        )
        err = await _expect_error(call, grpc.StatusCode.UNKNOWN, "UnaryCall")
        check(err.details() == message, f"UnaryCall: details {err.details()!r}, not {message!r}")

    async def status_code_and_message(self) -> None:
        message = "test status message"
        await self._unary_status(message)
        call = self.stub.FullDuplexCall(timeout=CALL_TIMEOUT)
        status = self.pb.EchoStatus(code=2, message=message)
        await self.write(call, self.output_request(response_status=status))
        await call.done_writing()
        err = await _expect_error(call.read(), grpc.StatusCode.UNKNOWN, "FullDuplexCall")
        details = err.details()
        check(details == message, f"FullDuplexCall: details {details!r}, not {message!r}")

    async def special_status_message(self) -> None:
        await self._unary_status(SPECIAL_MESSAGE)

    async def edge_spaces_status_message(self) -> None:
        await self._unary_status(EDGE_SPACES_MESSAGE)

    async def unimplemented_method(self) -> None:
        call = self.stub.UnimplementedCall(self.m.empty.Empty(), timeout=CALL_TIMEOUT)
        await _expect_error(call, grpc.StatusCode.UNIMPLEMENTED, "TestService/UnimplementedCall")

    async def unimplemented_service(self) -> None:
        call = self.unimplemented.UnimplementedCall(self.m.empty.Empty(), timeout=CALL_TIMEOUT)
        what = "UnimplementedService/UnimplementedCall"
        await _expect_error(call, grpc.StatusCode.UNIMPLEMENTED, what)


CASES: Dict[str, Callable[[Client], Awaitable[None]]] = {
    name: getattr(Client, name)
    for name in (
        "empty_unary",
        "large_unary",
        "client_streaming",
        "server_streaming",
        "ping_pong",
        "empty_stream",
        "cancel_after_begin",
        "cancel_after_first_response",
        "timeout_on_sleeping_server",
        "custom_metadata",
        "status_code_and_message",
        "special_status_message",
        "edge_spaces_status_message",
        "unimplemented_method",
        "unimplemented_service",
    )
}


async def run_case(m: types.SimpleNamespace, target: str, name: str) -> Tuple[Any, bool]:
    """One attempt at a case on a fresh channel: (error or None, whether grpcio's write race
    hid the call's status during it)."""
    error = None
    # A channel per attempt: one case's broken connection cannot fail the next.
    async with grpc.aio.insecure_channel(target) as channel:
        client = Client(m, channel)
        try:
            await asyncio.wait_for(CASES[name](client), CASE_TIMEOUT)
        except CaseFailure as err:
            error = str(err)
        except asyncio.TimeoutError:
            error = f"timed out after {CASE_TIMEOUT} s"
        except Exception as err:  # any other failure is the case's result too
            error = f"{_describe(err)}\n{traceback.format_exc()}"
    return error, client.write_race


async def run_client(m: types.SimpleNamespace, target: str, names: List[str]) -> int:
    """Run the cases in order, one JSON line each; the number that failed.

    A failed attempt during which grpcio lost the call's status to its write race (grpcio's
    bug, not the server's: ``_is_write_race``) says nothing about the server, so the case is
    tried again, up to ``WRITE_RACE_ATTEMPTS`` times; only a conclusive attempt passes it.
    """
    failed = 0
    for name in names:
        for attempt in range(1, WRITE_RACE_ATTEMPTS + 1):
            error, raced = await run_case(m, target, name)
            if error is None or not raced:
                break
            print(f"{name}: attempt {attempt} inconclusive (grpcio write race)", file=sys.stderr)
            error += (
                f" [attempt {attempt}: grpcio's write race (grpc/grpc#36066) replaced the"
                " call's status with INTERNAL]"
            )
        failed += error is not None
        _say(json.dumps({"case": name, "ok": error is None, "error": error}))
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    server = modes.add_parser("server")
    server.add_argument("--port", type=int, default=0)
    client = modes.add_parser("client")
    client.add_argument("--target", required=True)
    client.add_argument("cases", nargs="+", metavar="CASE")
    args = parser.parse_args()
    if args.mode == "client":
        names = list(CASES) if "all" in args.cases else args.cases
        unknown = [n for n in names if n not in CASES]
        if unknown:
            print(f"unknown case(s) {unknown}; known: {list(CASES)}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="grpcio-interop-") as directory:
        m = load_messages(Path(directory))
        if args.mode == "server":
            asyncio.run(run_server(m, args.port))
            return 0
        return 1 if asyncio.run(run_client(m, args.target, names)) else 0


if __name__ == "__main__":
    sys.exit(main())
