"""grpcio-health-checking in a helper process: its real generated classes, client and server.

Runs on ``grpcio_python()`` so that the pytest process never imports grpc (nor protobuf).

Modes:

- ``codec``: reads one JSON object from stdin, ``{"encode_requests": [str...],
  "encode_responses": [int...], "parse_requests": [hex...], "parse_responses": [hex...]}``,
  and prints one JSON line: the ``SerializeToString()`` bytes (hex) of
  ``HealthCheckRequest(service=s)`` and ``HealthCheckResponse(status=n)``, and for each parsed
  input ``{"ok": service_or_status}`` or ``{"error": "DecodeError"}`` from ``FromString``.
- ``check --target T --service S``: one ``HealthStub.Check``; prints ``STATUS NAME`` or
  ``ERROR CODE details``.
- ``watch --target T --service S --count N``: ``HealthStub.Watch``; prints ``READY NAME``
  for the first message, then ``STATUS NAME`` for each next one, ``END OK`` or
  ``ERROR CODE details`` when the stream ends, and exits after N messages in all.
- ``server --bind HOST:PORT [--status SERVICE=STATUS ...] [--tls-cert F --tls-key F]``: a
  grpcio server with ``grpc_health.v1.health.HealthServicer`` (its overall status starts
  SERVING); ``--status =NOT_SERVING`` sets the overall one. Prints ``READY <port>``; runs
  until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from concurrent import futures
from typing import Any, Dict, List

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _name(status: int) -> str:
    try:
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
    except ValueError:
        return str(status)


def _parse(cls: Any, hex_data: str, field: str) -> Dict[str, Any]:
    try:
        message = cls.FromString(bytes.fromhex(hex_data))
    except DecodeError:
        return {"error": "DecodeError"}
    return {"ok": getattr(message, field)}


def run_codec() -> None:
    spec = json.load(sys.stdin)
    request, response = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
    result = {
        "encode_requests": [
            request(service=s).SerializeToString().hex() for s in spec["encode_requests"]
        ],
        "encode_responses": [
            response(status=n).SerializeToString().hex() for n in spec["encode_responses"]
        ],
        "parse_requests": [_parse(request, h, "service") for h in spec["parse_requests"]],
        "parse_responses": [_parse(response, h, "status") for h in spec["parse_responses"]],
    }
    _say(json.dumps(result))


def _error_line(err: grpc.RpcError) -> str:
    return f"ERROR {err.code().name} {err.details() or ''}"


def run_check(args: argparse.Namespace) -> None:
    with grpc.insecure_channel(args.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=10)
        except grpc.RpcError as err:
            _say(_error_line(err))
            return
        _say(f"STATUS {_name(reply.status)}")


def run_watch(args: argparse.Namespace) -> None:
    with grpc.insecure_channel(args.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=args.service), timeout=30)
        seen = 0
        try:
            for reply in stream:
                _say(f"{'READY' if seen == 0 else 'STATUS'} {_name(reply.status)}")
                seen += 1
                if seen >= args.count:
                    stream.cancel()
                    return
        except grpc.RpcError as err:
            if seen == 0:
                _say("READY none")
            _say(_error_line(err))
            return
        if seen == 0:
            _say("READY none")
        _say("END OK")


def run_server(args: argparse.Namespace) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    statuses: List[str] = args.status or []
    for item in statuses:
        service, _, status = item.partition("=")
        servicer.set(service, health_pb2.HealthCheckResponse.ServingStatus.Value(status))
    if args.tls_cert:
        with open(args.tls_cert, "rb") as cert, open(args.tls_key, "rb") as key:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        port = server.add_secure_port(args.bind, credentials)
    else:
        port = server.add_insecure_port(args.bind)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _say(f"READY {port}")
    stop.wait(600)  # bounded: a forgotten helper ends by itself
    server.stop(grace=None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["codec", "check", "watch", "server"])
    parser.add_argument("--target")
    parser.add_argument("--service", default="")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--bind", default="127.0.0.1:0")
    parser.add_argument("--status", action="append")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    if args.mode == "codec":
        run_codec()
    elif args.mode == "check":
        run_check(args)
    elif args.mode == "watch":
        run_watch(args)
    else:
        run_server(args)


if __name__ == "__main__":
    main()
