"""The attack suite's well-behaved client, run as a separate process beside an attack.

Started through ``_support.start_helper("attack_probe.py", [...], python=sys.executable)``:
connects one ``Channel`` to ``--port``, makes one call to warm the connection, prints
``READY``, then for ``--duration`` seconds calls ``/test.Test/Echo`` with 100 bytes every
``--interval`` seconds (each call with a 2 s timeout) and prints ``RESULT <json>``:
``{"latencies_ms": [...], "lost": n, "errors": [...]}``. A process of its own so that
the attacker's CPU use does not delay the probe's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import List

from wove_h2grpc import Channel, GrpcError


async def probe(args: argparse.Namespace) -> None:
    latencies: List[float] = []
    errors: List[str] = []
    async with Channel(f"127.0.0.1:{args.port}") as channel:
        echo = channel.unary_unary("/test.Test/Echo")
        await echo(b"warm", timeout=10)
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        payload = b"p" * 100
        end = time.monotonic() + args.duration
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                reply = await echo(payload, timeout=2.0)
            except GrpcError as exc:
                errors.append(f"{exc.code.name}: {exc.details}")
            else:
                if reply == payload:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors.append(f"wrong reply of {len(reply)} bytes")
            await asyncio.sleep(args.interval)
    result = {"latencies_ms": latencies, "lost": len(errors), "errors": errors[:5]}
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--interval", type=float, default=0.01)
    asyncio.run(probe(parser.parse_args()))


if __name__ == "__main__":
    main()
