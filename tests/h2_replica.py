"""One worker replica for the scale-out and balancer tests: our ``wove_h2grpc.Server``.

Run as a separate process (so a test can SIGKILL it) through ``_support.start_helper(
"h2_replica.py", args, python=sys.executable)``; prints ``READY <port>`` once serving.

Methods (raw bytes):

- ``/test.Test/Who``: returns this replica's ``--name``. The request may be an ASCII float:
  the handler first sleeps that many seconds (so calls are in flight when a test kills it).
- ``/test.Test/Echo``: returns the request.
- ``/test.Test/Stats``: JSON ``{"name": ..., "calls": {method: count}}``.

Options: ``--bind`` (``127.0.0.1:0``, ``[::1]:PORT``; a fixed port lets a test restart the
replica on the same address), ``--name``, ``--tls-cert``/``--tls-key``, ``--log-starts``
(print ``START`` as each ``Who`` call starts, so a test knows what a killed replica had begun),
``--wove`` (also serve Wove's worker methods, unsigned, and print ``DONE <run_id> <outcome>``
as each run ends; tasks from ``tests/wove_tasks.py`` print their own lines).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import signal
import ssl
import sys
from typing import Any, Dict

from wove_h2grpc import Server

COUNTS: Dict[str, int] = collections.Counter()


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM/SIGINT, then stop with a short grace."""
    name = args.name.encode()

    async def who(request: bytes, context: Any) -> bytes:
        COUNTS["Who"] += 1
        if args.log_starts:
            sys.stdout.write("START\n")
            sys.stdout.flush()
        if request:
            await asyncio.sleep(float(request.decode("ascii")))
        return name

    async def echo(request: bytes, context: Any) -> bytes:
        COUNTS["Echo"] += 1
        return request

    async def stats(request: bytes, context: Any) -> bytes:
        return json.dumps({"name": args.name, "calls": dict(COUNTS)}).encode()

    server = Server({"/test.Test/Who": who, "/test.Test/Echo": echo, "/test.Test/Stats": stats})
    if args.wove:
        _attach_wove(server)
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    port = await server.start(args.bind, ssl_context=context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    await stop.wait()
    await server.stop(grace=1.0)


class _RunLines(logging.Handler):
    """``DONE <run_id> <outcome>`` on stdout for each run the worker finishes."""

    def emit(self, record: logging.LogRecord) -> None:
        outcome = getattr(record, "outcome", None)
        if outcome in ("result", "error", "cancelled", "duplicate"):
            sys.stdout.write(f"DONE {getattr(record, 'run_id', '?')} {outcome}\n")
            sys.stdout.flush()


def _attach_wove(server: Server) -> None:
    from wove_h2grpc.worker import WorkerService

    worker_log = logging.getLogger("wove_h2grpc.wove.worker")
    worker_log.setLevel(logging.INFO)
    worker_log.addHandler(_RunLines())
    WorkerService(allow_unsigned=True).attach(server)


def main() -> None:
    """Parse the options and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1:0")
    parser.add_argument("--name", default="replica")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--log-starts", action="store_true")
    parser.add_argument("--wove", action="store_true")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
