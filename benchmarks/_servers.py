"""Benchmark servers, each run as its own process:
``python _servers.py KIND [--port N] [--loop asyncio|uvloop]``.

Kinds: ``grpcio-echo`` (grpc.aio generic echo handler), ``h2-echo`` (``wove_h2grpc.Server``),
``grpcio-worker`` and ``h2-worker`` (``wove_h2grpc.worker.WorkerService`` on either server).
Each prints ``READY <port>`` once serving and runs until SIGTERM or SIGINT.

The echo servers serve, besides the unary ``/bench.Echo/Echo``:

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
from typing import Any, AsyncIterator, Tuple

ECHO_METHOD = "/bench.Echo/Echo"
BIDI_METHOD = "/bench.Echo/Bidi"
STREAM_METHOD = "/bench.Echo/Stream"
SECRET_ENV = "WOVE_H2GRPC_BENCH_SECRET"
MAX_MESSAGE = 64 * 1024 * 1024


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


def _ready(port: int) -> None:
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _grpcio_server(port: int, handler: Any) -> None:
    import grpc.aio

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    _ready(bound)
    await _wait_for_signal()
    await server.stop(grace=1.0)


async def _grpcio_echo(port: int) -> None:
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    service = ECHO_METHOD.lstrip("/").split("/")[0]
    handler = grpc.method_handlers_generic_handler(
        service,
        {
            _name(ECHO_METHOD): grpc.unary_unary_rpc_method_handler(echo),
            _name(BIDI_METHOD): grpc.stream_stream_rpc_method_handler(_echo_each),
            _name(STREAM_METHOD): grpc.unary_stream_rpc_method_handler(_stream),
        },
    )
    await _grpcio_server(port, handler)


def _name(path: str) -> str:
    return path.rsplit("/", 1)[1]


async def _h2_server(port: int, server: Any) -> None:
    bound = await server.start(f"127.0.0.1:{port}")
    _ready(bound)
    await _wait_for_signal()
    await server.stop(grace=1.0)


async def _h2_echo(port: int) -> None:
    from wove_h2grpc import Server

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server = Server({ECHO_METHOD: echo}, max_receive_message_length=MAX_MESSAGE)
    server.add_method(BIDI_METHOD, _echo_each, kind="stream_stream")
    server.add_method(STREAM_METHOD, _stream, kind="unary_stream")
    await _h2_server(port, server)


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
    "h2-echo": _h2_echo,
    "grpcio-worker": _grpcio_worker,
    "h2-worker": _h2_worker,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    os.environ.setdefault(SECRET_ENV, "bench-secret")
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(KINDS[args.kind](args.port))
    else:
        asyncio.run(KINDS[args.kind](args.port))


if __name__ == "__main__":
    main()
