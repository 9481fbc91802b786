"""``wove-h2grpc demo``: a sample weave over ``transport="h2"`` against a loopback worker.

The worker gets a random shared secret, so the weave's requests are signed; with ``--tls`` it
serves throwaway certificates that the weave verifies. The demo exits 0 only when every
result is right and every task went over gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import ssl
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from .certs import demo_certificates
from .console import CliError, out
from .tls import server_ssl_context

__all__ = ["run"]


def _demo_square(item: int) -> int:
    """A sync demo task: runs in a worker thread on the worker side."""
    return item * item


async def _demo_total(squares: List[int]) -> int:
    """An async demo task: runs on the worker's event loop."""
    await asyncio.sleep(0)
    return sum(squares)


async def _run_demo_weave(environment: str, count: int) -> Tuple[List[int], int]:
    import wove

    async with wove.weave(environment=environment) as w:

        @w.do(range(count))
        def square(item: int) -> int:
            return _demo_square(item)

        @w.do
        async def total(square: List[int]) -> int:
            return await _demo_total(square)

    return list(w.result.square), int(w.result.total)


async def run(args: argparse.Namespace) -> int:
    """Run the demo (over TLS with ``--tls``, its certificates deleted afterwards)."""
    if not args.tls:
        return await _run_demo(args, None)
    with tempfile.TemporaryDirectory(prefix="wove-h2grpc-demo-") as directory:
        cert_file, key_file, ca_pem, maker = demo_certificates(directory)
        ssl_context = server_ssl_context(cert_file, key_file, None)
        assert ssl_context is not None  # both files given
        return await _run_demo(args, (ssl_context, ca_pem, maker))


async def _run_demo(
    args: argparse.Namespace, tls: Optional[Tuple[ssl.SSLContext, bytes, str]]
) -> int:
    import wove
    from wove.security import NetworkExecutorSecurity

    from ..server import Server
    from ..wove.executor import H2GrpcExecutor
    from ..wove.worker import WorkerService

    secret = secrets.token_hex(32)
    service = WorkerService(NetworkExecutorSecurity(mode="signed", secret=secret))
    calls = 0

    async def counting_handler(request: bytes, context: Any) -> bytes:
        nonlocal calls
        calls += 1
        return await service.server_handler(request, context)

    server = Server({service.method: counting_handler})
    port = await server.start("127.0.0.1:0", ssl_context=tls[0] if tls else None)
    environment = "wove_h2grpc_demo"
    config: Dict[str, Any] = {
        "target": f"127.0.0.1:{port}",
        "transport": "h2",
        "security": {"type": "signed", "secret": secret},
        "codec": args.codec,
        # No per-call deadline: with many tasks the last calls queue behind the first
        # ones; --timeout bounds the whole weave instead.
    }
    if tls is not None:
        # Trust only the throwaway CA; the certificate names 127.0.0.1, which is verified.
        config.update(secure=True, root_certificates=tls[1])
    how = f"TLS with throwaway certificates from {tls[2]}, " if tls else ""
    try:
        wove.config(
            environments={environment: {"executor": H2GrpcExecutor(), "executor_config": config}}
        )
        out(
            f"worker service on 127.0.0.1:{port} ({how}signed requests, random secret); "
            f"running {args.tasks} mapped tasks over h2 ({args.codec})"
        )
        started = time.perf_counter()
        try:
            squares, total = await asyncio.wait_for(
                _run_demo_weave(environment, args.tasks), timeout=args.timeout
            )
        except asyncio.TimeoutError:
            raise CliError(f"the demo weave did not finish within {args.timeout:g} s") from None
        elapsed = time.perf_counter() - started
    finally:
        await server.stop(grace=1.0)

    expected = [i * i for i in range(args.tasks)]
    shown = ", ".join(str(v) for v in squares[:10]) + (", ..." if len(squares) > 10 else "")
    out(f"square: [{shown}] ({len(squares)} results)")
    out(f"total: {total} (expected {sum(expected)})")
    tasks_run = args.tasks + 1
    over = "h2 with TLS" if tls else "h2"
    # The loop is named only when it is not asyncio's own (--loop uvloop).
    loop = getattr(args, "loop", "asyncio")
    on = "" if loop == "asyncio" else f", on {loop}"
    out(
        f"timing: {tasks_run} tasks in {elapsed * 1000:.1f} ms over {over} "
        f"({tasks_run / elapsed:.0f} tasks/s, {calls} gRPC calls served, codec {args.codec}{on})"
    )
    if squares != expected or total != sum(expected):
        raise CliError("demo results are wrong")
    if calls < tasks_run:
        raise CliError(f"expected at least {tasks_run} gRPC calls, the worker served {calls}")
    out("demo OK")
    return 0
