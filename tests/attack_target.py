"""Our ``wove_h2grpc.Server`` as the attack suite's target, run as a separate process.

Started through ``_support.start_helper("attack_target.py", args, python=sys.executable)``;
prints ``READY <port>`` once serving. A process of its own, so that the suite can read its
resident memory from /proc and its event loop is not shared with the attacker's.

Methods (the same paths and requests as ``tests/grpcio_server.py``, so one attack drives
both servers):

- ``/test.Test/Echo``: returns the request.
- ``/test.Test/Size``: request ``{"size": n}`` -> a response of ``n`` bytes.
- ``/test.Test/Collect`` (stream_unary): returns JSON ``{"count": n, "bytes": b}`` of the
  request stream.

Options: ``--bind`` (``127.0.0.1:0``), ``--handshake-timeout`` (seconds, the Server's
``handshake_timeout``). Everything else is the Server's default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import AsyncIterator

from wove_h2grpc import Server, ServicerContext


async def echo(request: bytes, context: ServicerContext) -> bytes:
    return request


async def size(request: bytes, context: ServicerContext) -> bytes:
    return b"x" * int(json.loads(request)["size"])


async def collect(requests: AsyncIterator[bytes], context: ServicerContext) -> bytes:
    count = total = 0
    async for message in requests:
        count += 1
        total += len(message)
    return json.dumps({"count": count, "bytes": total}).encode()


async def serve(args: argparse.Namespace) -> None:
    server = Server(handshake_timeout=args.handshake_timeout)
    server.add_method("/test.Test/Echo", echo)
    server.add_method("/test.Test/Size", size)
    server.add_method("/test.Test/Collect", collect, kind="stream_unary")
    port = await server.start(args.bind)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1:0")
    parser.add_argument("--handshake-timeout", type=float, default=10.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
