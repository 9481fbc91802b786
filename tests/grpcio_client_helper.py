"""grpcio aio client cases against a server under test; prints one JSON line of results.

Runs in its own process (interpreter: ``grpcio_python()``) so the pytest process never
imports grpc. Cases: ``all`` (echo, every abort code, metadata, deadline, unknown method,
handler exception, 8 MiB, too big, gzip) or ``burst`` (N concurrent calls on one channel).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
from typing import Any, Dict, List

import grpc
import grpc.aio

DETAILS = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"


def _md(pairs: Any) -> List[List[str]]:
    out = []
    for key, value in pairs or ():
        out.append([key, "bin:" + value.hex() if isinstance(value, bytes) else value])
    return out


async def _call(channel: grpc.aio.Channel, method: str, request: bytes, **kw: Any) -> Any:
    return await channel.unary_unary(method)(request, **kw)


async def _status(coro: Any) -> Dict[str, Any]:
    try:
        reply = await coro
    except grpc.aio.AioRpcError as err:
        return {"code": err.code().name, "details": err.details() or ""}
    return {"code": "OK", "reply": reply}


async def run_all(channel: grpc.aio.Channel) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    echo = await _status(_call(channel, "/test.S/Echo", b"hello", timeout=10))
    if echo["code"] == "OK":
        echo["reply"] = echo["reply"].decode()
    out["echo"] = echo

    aborts = {}
    for code in grpc.StatusCode:
        if code is grpc.StatusCode.OK:
            continue
        spec = json.dumps({"code": code.value[0], "details": DETAILS}).encode()
        aborts[code.name] = await _status(_call(channel, "/test.S/Abort", spec, timeout=10))
    out["abort"] = aborts

    call = channel.unary_unary("/test.S/Meta")(
        b"",
        timeout=10,
        metadata=(("x-plain", "plain value"), ("x-data-bin", bytes(range(256)))),
    )
    reply = await call
    out["metadata"] = {
        "code": (await call.code()).name,
        "server_saw": json.loads(reply),
        "trailing": _md(await call.trailing_metadata()),
    }

    start = time.monotonic()
    res = await _status(_call(channel, "/test.S/Sleep", b"30", timeout=0.3))
    res["elapsed"] = time.monotonic() - start
    out["deadline"] = res

    out["unknown_method"] = await _status(_call(channel, "/test.S/Missing", b"x", timeout=10))
    out["raise"] = await _status(_call(channel, "/test.S/Raise", b"x", timeout=10))

    size = 8 << 20
    request = b"%d|" % size
    request += b"q" * (size - len(request))
    big = await _status(_call(channel, "/test.S/Big", request, timeout=60))
    if big["code"] == "OK":
        big = {"code": "OK", "reply_len": len(big.pop("reply"))}
    out["big"] = big
    out["too_big"] = await _status(_call(channel, "/test.S/Echo", b"t" * (17 << 20), timeout=60))
    out["too_big"].pop("reply", None)

    payload = b"gzip me " * 1000
    gz = await _status(
        _call(channel, "/test.S/Echo", payload, timeout=10, compression=grpc.Compression.Gzip)
    )
    if gz["code"] == "OK":
        gz = {"code": "OK", "reply_ok": gz.pop("reply") == payload}
    out["gzip"] = gz
    return out


async def run_burst(channel: grpc.aio.Channel, count: int) -> Dict[str, Any]:
    rpc = channel.unary_unary("/test.S/Echo")
    errors: Dict[str, int] = collections.Counter()

    async def one(i: int) -> bool:
        body = b"%d" % i
        try:
            return await rpc(body, timeout=120) == body
        except grpc.aio.AioRpcError as err:
            errors[f"{err.code().name}: {err.details()}"] += 1
            return False

    start = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(count)))
    return {"ok": sum(results), "errors": dict(errors), "seconds": time.monotonic() - start}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--cases", default="all", choices=["all", "burst"])
    parser.add_argument("--burst", type=int, default=10000)
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--server-name")
    args = parser.parse_args()
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    channel: grpc.aio.Channel
    if args.ca:
        key = _read(args.key) if args.key else None
        cert = _read(args.cert) if args.cert else None
        creds = grpc.ssl_channel_credentials(_read(args.ca), key, cert)
        if args.server_name:
            options.append(("grpc.ssl_target_name_override", args.server_name))
        channel = grpc.aio.secure_channel(args.target, creds, options=options)
    else:
        channel = grpc.aio.insecure_channel(args.target, options=options)
    async with channel:
        if args.cases == "all":
            result = await run_all(channel)
        else:
            result = {"burst": await run_burst(channel, args.burst)}
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
