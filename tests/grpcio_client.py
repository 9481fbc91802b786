"""A grpc.aio client burst, run as a separate process (grpcio never loads in pytest).

Connects to ``--target``, prints ``READY 0`` once the channel is ready, then starts
``--calls`` concurrent unary calls of ``--method`` with a ``--size``-byte request and prints
``RESULT {"OK": n, "CANCELLED": m, ...}`` (status code name -> count), then exits 0.
Used to measure what grpcio's own client sees against a grpcio server (under load).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys

import grpc


async def burst(args: argparse.Namespace) -> None:
    async with grpc.aio.insecure_channel(args.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        sys.stdout.write("READY 0\n")
        sys.stdout.flush()
        rpc = channel.unary_unary(args.method)
        payload = b"x" * args.size

        async def one() -> str:
            try:
                await rpc(payload, timeout=args.timeout)
            except grpc.aio.AioRpcError as err:
                return str(err.code().name)
            return "OK"

        outcomes = await asyncio.gather(*(one() for _ in range(args.calls)))
    sys.stdout.write("RESULT " + json.dumps(collections.Counter(outcomes)) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--method", default="/test.Test/Echo")
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=60.0)
    asyncio.run(burst(parser.parse_args()))


if __name__ == "__main__":
    main()
