"""Benchmark servers, each run as its own process:
``python _servers.py KIND [--port N] [--loop asyncio|uvloop]``.

Kinds: ``grpcio-echo`` (grpc.aio generic echo handler), ``grpcio-load-echo`` (the same with
grpcio's pending-call limits raised for the load section), ``h2-echo`` (``wove_h2grpc.Server``),
``grpclib-echo`` (a ``grpclib`` server with a generic bytes handler, unary echo only),
``grpcio-worker`` and ``h2-worker`` (``wove_h2grpc.worker.WorkerService`` on either server),
and ``raw-echo``: the floor's server, a plain ``asyncio.Protocol`` that echoes each
length-prefixed message (``RawEcho``; no HTTP/2, no gRPC). Each prints ``READY <port>``
once serving and runs until SIGTERM or SIGINT.

Every echo server counts the unary echo calls its handler completed (the handler has the
request and hands back the echo). On SIGUSR1 the server prints ``COUNT <n>`` (``n`` since
it started) on stdout; the load section compares that count with what the load generator
asked for. With ``WOVE_H2GRPC_BENCH_PROFILE=<prefix>`` in the environment, the server runs
under cProfile (CPU time) from READY to SIGTERM and then writes ``<prefix>-<kind>.prof``
and a top-20 text ``<prefix>-<kind>.txt``.

The grpcio and h2 echo servers serve, besides the unary ``/bench.Echo/Echo``:

- ``/bench.Echo/Bidi`` (stream-stream): every request message is echoed back as it arrives;
- ``/bench.Echo/Stream`` (unary-stream): the request is ``b"<count> <size>"`` (ASCII
  decimals, see ``parse_stream_request``); the reply is ``count`` messages of ``size`` bytes
  (one prebuilt payload sent again and again, so the server allocates nothing per message).
  The slow-consumer scenario is this method with a large count of 64 KiB messages.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence, Tuple

ECHO_METHOD = "/bench.Echo/Echo"
BIDI_METHOD = "/bench.Echo/Bidi"
STREAM_METHOD = "/bench.Echo/Stream"
SECRET_ENV = "WOVE_H2GRPC_BENCH_SECRET"
PROFILE_ENV = "WOVE_H2GRPC_BENCH_PROFILE"
MAX_MESSAGE = 64 * 1024 * 1024

#: Unary echo calls completed by this process's handler (see ``count_line``).
_completed = 0


def count_line(completed: int) -> str:
    """The line a server prints on SIGUSR1: ``COUNT <completed>``."""
    return f"COUNT {completed}\n"


def parse_count(line: str) -> int:
    """The number of a ``COUNT <n>`` line; ValueError for anything else."""
    words = line.split()
    if len(words) != 2 or words[0] != "COUNT" or not words[1].isdigit():
        raise ValueError(f"not a COUNT line: {line!r}")
    return int(words[1])


async def _echo(request: bytes, context: Any) -> bytes:
    """The unary echo of the grpcio and h2 servers; counts each completed call."""
    global _completed
    _completed += 1
    return request


def parse_stream_request(data: bytes) -> Tuple[int, int]:
    """``b"<count> <size>"`` -> ``(count, size)``; ValueError unless both are decimals with
    ``count >= 0`` and ``0 <= size <= MAX_MESSAGE``."""
    parts = data.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"stream request must be b'<count> <size>', got {data[:40]!r}")
    count, size = int(parts[0]), int(parts[1])
    if size > MAX_MESSAGE:
        raise ValueError(f"message size {size} is over {MAX_MESSAGE}")
    return count, size


async def _echo_each(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    """The bidi handler of both servers: echo each request as it arrives."""
    async for request in requests:
        yield request


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    """The server-stream handler of both servers: ``count`` messages of ``size`` bytes (a
    malformed request fails the call with UNKNOWN)."""
    count, size = parse_stream_request(request)
    payload = os.urandom(size)
    for _ in range(count):
        yield payload


RAW_PREFIX = 4  # the raw echo's message prefix: a 4-byte big-endian length


def raw_frame(payload: bytes) -> bytes:
    """One raw echo message: the 4-byte big-endian length, then ``payload``."""
    return len(payload).to_bytes(RAW_PREFIX, "big") + payload


class RawMessages:
    """Splits a byte stream of ``raw_frame`` messages back into the messages, across any
    chunk boundaries: ``feed(chunk)`` returns the messages that chunk completes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> List[bytes]:
        buffer = self._buffer
        buffer += data
        out: List[bytes] = []
        while len(buffer) >= RAW_PREFIX:
            end = RAW_PREFIX + int.from_bytes(buffer[:RAW_PREFIX], "big")
            if len(buffer) < end:
                break
            out.append(bytes(buffer[RAW_PREFIX:end]))
            del buffer[:end]
        return out


class RawEcho(asyncio.Protocol):
    """The floor's server: every complete message goes back as it came, prefix and all."""

    def __init__(self) -> None:
        self.messages = RawMessages()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for message in self.messages.feed(data):
            self.transport.write(raw_frame(message))


async def _raw_echo(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RawEcho, "127.0.0.1", port)
    await _serve_until_signal(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


def _report_count() -> None:
    sys.stdout.write(count_line(_completed))
    sys.stdout.flush()


async def _serve_until_signal(port: int) -> None:
    """Install the signal handlers, print ``READY <port>``, wait for SIGTERM or SIGINT.

    The handlers come first: a SIGUSR1 sent as soon as READY is read must find its
    handler (SIGUSR1's default action ends the process). Profiling, when asked for,
    covers READY to the stop signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _report_count)
    profiler = _start_profile()
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    await stop.wait()
    if profiler is not None:
        profiler.disable()
        _write_server_profile(profiler)


_kind = ""


def _start_profile() -> Optional[Any]:
    if not os.environ.get(PROFILE_ENV):
        return None
    import cProfile
    import time

    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    return profiler


def _write_server_profile(profiler: Any) -> None:
    from benchmarks._client import _write_profile

    prefix = f"{os.environ[PROFILE_ENV]}-{_kind}"
    _write_profile(profiler, prefix)
    sys.stderr.write(f"profile written to {prefix}.prof and {prefix}.txt\n")


#: The load echo server's pending-call limits: four times the 5,000 calls in flight at the
#: load section's top level (grpcio's defaults, 1,000 and a hard limit of 3,000, make its
#: server cancel most of them before its Python application takes them).
LOAD_PENDING_REQUESTS = 20_000


async def _grpcio_server(port: int, handler: Any, options: Sequence[Tuple[str, Any]] = ()) -> None:
    import grpc.aio

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
            *options,
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await _serve_until_signal(bound)
    await server.stop(grace=1.0)


async def _grpcio_echo(port: int, options: Sequence[Tuple[str, Any]] = ()) -> None:
    import grpc

    service = ECHO_METHOD.lstrip("/").split("/")[0]
    handler = grpc.method_handlers_generic_handler(
        service,
        {
            _name(ECHO_METHOD): grpc.unary_unary_rpc_method_handler(_echo),
            _name(BIDI_METHOD): grpc.stream_stream_rpc_method_handler(_echo_each),
            _name(STREAM_METHOD): grpc.unary_stream_rpc_method_handler(_stream),
        },
    )
    await _grpcio_server(port, handler, options)


async def _grpcio_load_echo(port: int) -> None:
    """The grpcio echo server with room for the load section's 5,000 calls in flight."""
    await _grpcio_echo(
        port,
        (
            ("grpc.server.max_pending_requests", LOAD_PENDING_REQUESTS),
            ("grpc.server.max_pending_requests_hard_limit", 3 * LOAD_PENDING_REQUESTS),
        ),
    )


def _name(path: str) -> str:
    return path.rsplit("/", 1)[1]


async def _h2_server(port: int, server: Any) -> None:
    bound = await server.start(f"127.0.0.1:{port}")
    await _serve_until_signal(bound)
    await server.stop(grace=1.0)


async def _h2_echo(port: int) -> None:
    from wove_h2grpc import Server

    server = Server({ECHO_METHOD: _echo}, max_receive_message_length=MAX_MESSAGE)
    server.add_method(BIDI_METHOD, _echo_each, kind="stream_stream")
    server.add_method(STREAM_METHOD, _stream, kind="unary_stream")
    await _h2_server(port, server)


class _GrpclibEcho:
    """A grpclib servable with one generic unary method, bytes in and bytes out (the
    server's codec passes bytes through)."""

    def __mapping__(self) -> Dict[str, Any]:
        from grpclib.const import Cardinality, Handler

        return {ECHO_METHOD: Handler(self.echo, Cardinality.UNARY_UNARY, None, None)}

    async def echo(self, stream: Any) -> None:
        global _completed
        request = await stream.recv_message()
        await stream.send_message(request)
        _completed += 1


async def _grpclib_echo(port: int) -> None:
    import socket

    from grpclib.server import Server as GrpclibServer

    from benchmarks._client import _grpclib_codec

    # IPPROTO_TCP, not 0: asyncio (and grpclib) set TCP_NODELAY only on sockets whose
    # ``proto`` says TCP, and an accepted socket inherits the listening one's. With 0 the
    # three writes of each response (headers, message, trailers) wait for delayed ACKs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = GrpclibServer([_GrpclibEcho()], codec=_grpclib_codec())
    await server.start(sock=sock, backlog=1024)
    await _serve_until_signal(sock.getsockname()[1])
    server.close()
    await asyncio.wait_for(server.wait_closed(), timeout=5.0)


def _worker_service() -> Any:
    from wove_h2grpc.worker import WorkerService

    return WorkerService(security=f"env:{SECRET_ENV}")


async def _grpcio_worker(port: int) -> None:
    await _grpcio_server(port, _worker_service().grpcio_handler())


async def _h2_worker(port: int) -> None:
    from wove_h2grpc import Server

    server = Server(max_receive_message_length=MAX_MESSAGE)
    _worker_service().attach(server)
    await _h2_server(port, server)


KINDS = {
    "grpcio-echo": _grpcio_echo,
    "grpcio-load-echo": _grpcio_load_echo,
    "h2-echo": _h2_echo,
    "grpclib-echo": _grpclib_echo,
    "grpcio-worker": _grpcio_worker,
    "h2-worker": _h2_worker,
    "raw-echo": _raw_echo,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    global _kind
    _kind = args.kind
    os.environ.setdefault(SECRET_ENV, "bench-secret")
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(KINDS[args.kind](args.port))
    else:
        asyncio.run(KINDS[args.kind](args.port))


if __name__ == "__main__":
    main()
