"""A grpc.aio test server (generic handlers, no protobuf), run as a separate process.

Started by the tests through ``_support.start_helper("grpcio_server.py", args,
python=grpcio_python())``; prints ``READY <port>`` once serving (port 0 for unix sockets).

Methods (requests and responses are raw bytes; JSON where a method takes parameters):

- ``/test.Test/Echo``: returns the request. Invocation metadata whose key starts with ``x-``
  is sent back both as initial metadata and as trailing metadata (``-bin`` included).
- ``/test.Test/Status``: request ``{"code": n, "details": "...", "initial": [[k, v], ...],
  "trailing": [[k, v], ...], "echo": bool}`` (``-bin`` values base64) -> the call ends with that
  status and details, after sending that initial metadata, with that trailing metadata; with
  ``"echo": true`` the ``x-`` invocation metadata is added to both.
- ``/test.Test/Sleep``: request ``{"seconds": s}``; sleeps, then returns ``b"woke"``. Prints
  ``SLEEP-START``, then ``SLEEP-WOKE`` or ``SLEEP-CANCELLED`` and counts them (see Stats).
- ``/test.Test/Size``: request ``{"size": n}`` -> a response of ``n`` bytes.
- ``/test.Test/Gzip``: returns the request with gzip compression (``context.set_compression``).
- ``/test.Test/Metadata``: returns JSON ``{"metadata": [[k, v], ...], "peer": "...",
  "time_remaining": float | null}``: the invocation metadata as the server saw it (``-bin``
  values base64), the client's address and the deadline's remaining seconds.
- ``/test.Test/Stats``: returns JSON of the counters: calls seen per method, sleeps started,
  woke and cancelled.

Streaming methods:

- ``/test.Test/Count`` (unary_stream): request ``{"count": n, "size": s, "delay": sec,
  "code": c, "details": "..."}`` -> ``n`` messages, message ``i`` being ``i`` as 8 ASCII digits
  padded with ``x`` to ``s`` bytes (at least 8), ``delay`` seconds apart; then the call ends
  with status ``code`` (OK by default). ``x-`` metadata is echoed as initial and trailing
  metadata. Counts ``count_cancelled`` when the client cancels it.
- ``/test.Test/Collect`` (stream_unary): returns JSON ``{"count": n, "bytes": b}`` of the
  request stream; a request message ``b"fail"`` ends the call with INVALID_ARGUMENT at once.
- ``/test.Test/Bidi`` (stream_stream): answers each request message with the same bytes.
- ``/test.Test/Flood`` (unary_stream): request ``{"total": bytes, "chunk": size}``; sends
  ``chunk``-byte messages as fast as flow control lets it, counting ``flood_sent`` bytes (see
  Stats) so a test can see how far a client that stops reading let it get.

Options: ``--bind`` (``127.0.0.1:0``, ``[::1]:0``, ``unix:/path``), ``--tls-cert``/``--tls-key``,
``--client-ca`` (require and verify a client certificate), ``--max-pending`` (the server's
``grpc.server.max_pending_requests``; 0 leaves grpcio's default), ``--compression gzip``
(server-wide default response compression).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import signal
import sys
from typing import Any, Dict, List, Tuple

import grpc

COUNTS: Dict[str, int] = collections.Counter()


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _echoed_metadata(context: grpc.aio.ServicerContext) -> List[Tuple[str, Any]]:
    return [(k, v) for k, v in context.invocation_metadata() or () if k.startswith("x-")]


def _decode_pairs(pairs: List[List[str]]) -> List[Tuple[str, Any]]:
    return [(k, base64.b64decode(v) if k.endswith("-bin") else v) for k, v in pairs]


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    COUNTS["Echo"] += 1
    echoed = _echoed_metadata(context)
    if echoed:
        await context.send_initial_metadata(echoed)
        context.set_trailing_metadata(echoed)
    return request


async def status(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    COUNTS["Status"] += 1
    spec = json.loads(request)
    code = {c.value[0]: c for c in grpc.StatusCode}[int(spec["code"])]
    initial = _decode_pairs(spec.get("initial", []))
    trailing = _decode_pairs(spec.get("trailing", []))
    if spec.get("echo"):
        initial += _echoed_metadata(context)
        trailing += _echoed_metadata(context)
    if initial:
        await context.send_initial_metadata(initial)
    await context.abort(code, spec.get("details", ""), tuple(trailing))
    return b""  # not reached: abort raises


async def sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    COUNTS["Sleep"] += 1
    COUNTS["sleep_started"] += 1
    _say("SLEEP-START")
    try:
        await asyncio.sleep(float(json.loads(request)["seconds"]))
    except asyncio.CancelledError:
        COUNTS["sleep_cancelled"] += 1
        _say("SLEEP-CANCELLED")
        raise
    COUNTS["sleep_woke"] += 1
    _say("SLEEP-WOKE")
    return b"woke"


async def size(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    COUNTS["Size"] += 1
    return b"x" * int(json.loads(request)["size"])


async def gzip(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    COUNTS["Gzip"] += 1
    context.set_compression(grpc.Compression.Gzip)
    # grpc.aio alone does not act on set_compression (grpc/grpc#34690); this internal
    # metadata key is what grpc core reads to compress the response.
    await context.send_initial_metadata([("grpc-internal-encoding-request", "gzip")])
    return request


async def metadata(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    COUNTS["Metadata"] += 1
    pairs = [
        [k, base64.b64encode(v).decode() if k.endswith("-bin") else v]
        for k, v in context.invocation_metadata() or ()
    ]
    reply = {"metadata": pairs, "peer": context.peer(), "time_remaining": context.time_remaining()}
    return json.dumps(reply).encode()


async def stats(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return json.dumps(dict(COUNTS)).encode()


async def count(request: bytes, context: grpc.aio.ServicerContext) -> Any:
    spec = json.loads(request or b"{}")
    echoed = _echoed_metadata(context)
    if echoed:
        await context.send_initial_metadata(echoed)
        context.set_trailing_metadata(echoed)
    size = max(8, int(spec.get("size", 8)))
    delay = float(spec.get("delay", 0))
    try:
        for i in range(int(spec.get("count", 0))):
            if delay and i:
                await asyncio.sleep(delay)
            yield str(i).zfill(8).encode().ljust(size, b"x")
    except (asyncio.CancelledError, GeneratorExit):
        # grpc.aio ends a reset stream's handler either way: by cancelling its task, or by
        # closing the generator when the next write finds the stream gone.
        COUNTS["count_cancelled"] += 1
        _say("COUNT-CANCELLED")
        raise
    code = int(spec.get("code", 0))
    if code:
        await context.abort(_CODES[code], spec.get("details", ""))


async def collect(request_iterator: Any, context: grpc.aio.ServicerContext) -> bytes:
    n = total = 0
    async for message in request_iterator:
        if message == b"fail":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"failed after {n}")
        n += 1
        total += len(message)
    return json.dumps({"count": n, "bytes": total}).encode()


async def bidi(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
    async for message in request_iterator:
        yield message


async def flood(request: bytes, context: grpc.aio.ServicerContext) -> Any:
    spec = json.loads(request)
    chunk = int(spec["chunk"])
    payload = b"f" * chunk
    sent = 0
    while sent < int(spec["total"]):
        yield payload
        sent += chunk
        COUNTS["flood_sent"] += chunk


_CODES = {code.value[0]: code for code in grpc.StatusCode}

STREAM_HANDLERS = {
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Collect": grpc.stream_unary_rpc_method_handler(collect),
    "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    "Flood": grpc.unary_stream_rpc_method_handler(flood),
}

HANDLERS = {
    "Echo": echo,
    "Status": status,
    "Sleep": sleep,
    "Size": size,
    "Gzip": gzip,
    "Metadata": metadata,
    "Stats": stats,
}


async def serve(args: argparse.Namespace) -> None:
    options = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    if args.max_pending > 0:
        options.append(("grpc.server.max_pending_requests", args.max_pending))
    compression = grpc.Compression.Gzip if args.compression == "gzip" else None
    server = grpc.aio.server(options=options, compression=compression)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Test",
                {
                    **{
                        name: grpc.unary_unary_rpc_method_handler(fn)
                        for name, fn in HANDLERS.items()
                    },
                    **STREAM_HANDLERS,
                },
            ),
        )
    )
    if args.tls_cert:
        with open(args.tls_key, "rb") as f:
            key = f.read()
        with open(args.tls_cert, "rb") as f:
            chain = f.read()
        client_ca = None
        if args.client_ca:
            with open(args.client_ca, "rb") as f:
                client_ca = f.read()
        creds = grpc.ssl_server_credentials(
            [(key, chain)],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(args.bind, creds)
    else:
        port = server.add_insecure_port(args.bind)
    if not args.bind.startswith("unix:") and port == 0:
        raise SystemExit(f"could not bind {args.bind}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _say(f"READY {port}")
    await stop.wait()
    await server.stop(grace=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1:0")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--client-ca")
    parser.add_argument("--max-pending", type=int, default=100_000)
    parser.add_argument("--compression", choices=["gzip"], default=None)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
