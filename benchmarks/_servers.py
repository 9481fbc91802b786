"""Benchmark servers, each run as its own process: ``python _servers.py KIND [--port N]``.

Kinds: ``grpcio-echo`` (grpc.aio generic echo handler), ``h2-echo`` (``wove_h2grpc.Server``),
``grpcio-worker`` and ``h2-worker`` (``wove_h2grpc.worker.WorkerService`` on either server).
Each prints ``READY <port>`` once serving and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

ECHO_METHOD = "/bench.Echo/Echo"
SECRET_ENV = "WOVE_H2GRPC_BENCH_SECRET"
MAX_MESSAGE = 64 * 1024 * 1024


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

    service, method = ECHO_METHOD.lstrip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(echo)}
    )
    await _grpcio_server(port, handler)


async def _h2_server(port: int, server: Any) -> None:
    bound = await server.start(f"127.0.0.1:{port}")
    _ready(bound)
    await _wait_for_signal()
    await server.stop(grace=1.0)


async def _h2_echo(port: int) -> None:
    from wove_h2grpc import Server

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    await _h2_server(port, Server({ECHO_METHOD: echo}, max_receive_message_length=MAX_MESSAGE))


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
    args = parser.parse_args()
    os.environ.setdefault(SECRET_ENV, "bench-secret")
    asyncio.run(KINDS[args.kind](args.port))


if __name__ == "__main__":
    main()
