"""Host ``WorkerService.grpcio_handler()`` on a grpc.aio server, as a separate process.

Interop case: our h2 transport talks to the Wove worker service running on a
*grpcio* server. Started by the tests through ``_support.start_helper("grpcio_worker_host.py",
args, python=grpcio_python())``; prints ``READY <port>`` once serving and stops on SIGTERM.

Options: ``--bind`` (``127.0.0.1:0``), ``--tls-cert``/``--tls-key`` (PEM chain and key),
``--client-ca`` (require and verify a client certificate), ``--security`` (any value
``NetworkExecutorSecurity.from_config`` takes, e.g. ``env:WOVE_WORKER_SECRET``; a JSON object
is parsed), ``--allow-unsigned``, ``--method``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

import grpc

from wove_h2grpc.worker import DEFAULT_METHOD, WorkerService


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def serve(args: argparse.Namespace) -> None:
    security: Any = args.security
    if security and security.lstrip().startswith("{"):
        security = json.loads(security)
    service = WorkerService(
        security,
        method=args.method,
        allow_unsigned=args.allow_unsigned,
        heartbeat_interval=args.heartbeat_interval,
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    server.add_generic_rpc_handlers((service.grpcio_handler(),))
    if args.tls_cert:
        client_ca = _read(args.client_ca) if args.client_ca else None
        creds = grpc.ssl_server_credentials(
            [(_read(args.tls_key), _read(args.tls_cert))],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(args.bind, creds)
    else:
        port = server.add_insecure_port(args.bind)
    if port == 0:
        raise SystemExit(f"could not bind {args.bind}")
    await server.start()
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
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--client-ca")
    parser.add_argument("--security")
    parser.add_argument("--allow-unsigned", action="store_true")
    parser.add_argument("--method", default=DEFAULT_METHOD)
    parser.add_argument("--heartbeat-interval", type=float, default=5.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
