"""One benchmark measurement, run in a fresh interpreter: ``python _client.py '<json spec>'``.

Each (client, scenario, round) gets its own process so that the CPU time (``getrusage``,
which counts every thread, grpcio's core threads included) and the peak RSS belong to one
client alone. The process connects, warms up, then measures; only the measured section is
counted in the CPU figure. The result is one JSON object on the last line of stdout.

Spec keys: ``client`` (``wove_h2grpc`` | ``grpc.aio`` | ``grpclib``), ``port``, ``method``,
``scenario`` (``sequential`` | ``concurrent`` | ``burst``), ``size`` (payload bytes),
``calls``, ``concurrency``, ``warmup``, optional ``profile`` (path prefix for cProfile output).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List, Tuple

Call = Callable[[bytes], Awaitable[bytes]]
MAX_MESSAGE = 64 * 1024 * 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sys_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


async def _open_client(
    name: str, port: int, method: str
) -> Tuple[Call, Callable[[], Awaitable[None]]]:
    """Return ``(call, close)`` for one client library, bytes in and bytes out."""
    target = f"127.0.0.1:{port}"
    if name == "grpc.aio":
        import grpc.aio

        channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        rpc = channel.unary_unary(method)

        async def close_grpc() -> None:
            await channel.close()

        return rpc, close_grpc
    if name == "grpclib":
        from grpclib.client import Channel as GrpclibChannel
        from grpclib.const import Cardinality
        from grpclib.encoding.base import CodecBase

        class RawCodec(CodecBase):
            """Bytes in, bytes out: grpclib's codec hook without protobuf."""

            __content_subtype__ = "proto"  # plain "application/grpc" on the wire

            def encode(self, message: Any, message_type: Any) -> bytes:
                return message  # type: ignore[no-any-return]

            def decode(self, data: bytes, message_type: Any) -> Any:
                return data

        gchannel = GrpclibChannel("127.0.0.1", port, codec=RawCodec())

        async def call_grpclib(request: bytes) -> bytes:
            async with gchannel.request(method, Cardinality.UNARY_UNARY, bytes, bytes) as stream:
                await stream.send_message(request, end=True)
                reply = await stream.recv_message()
            return reply  # type: ignore[return-value]

        async def close_grpclib() -> None:
            gchannel.close()

        return call_grpclib, close_grpclib
    if name == "wove_h2grpc":
        from wove_h2grpc import Channel

        channel_h2 = Channel(target, max_receive_message_length=MAX_MESSAGE)
        rpc_h2 = channel_h2.unary_unary(method)

        async def close_h2() -> None:
            await channel_h2.close()

        return rpc_h2, close_h2
    raise SystemExit(f"unknown client {name!r}")


async def _sequential(call: Call, payload: bytes, calls: int) -> List[int]:
    latencies = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        start = clock()
        reply = await call(payload)
        latencies.append(clock() - start)
        if len(reply) != len(payload):
            raise RuntimeError(f"echo returned {len(reply)} bytes, sent {len(payload)}")
    return latencies


async def _concurrent(call: Call, payload: bytes, calls: int, concurrency: int) -> List[int]:
    latencies: List[int] = []
    remaining = [calls]
    clock = time.perf_counter_ns

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            start = clock()
            reply = await call(payload)
            latencies.append(clock() - start)
            if len(reply) != len(payload):
                raise RuntimeError("short echo")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def _burst(call: Call, payload: bytes, calls: int, failures: Dict[str, int]) -> List[int]:
    """All calls at once. A call that fails is counted by error (the server may shed load)."""
    latencies: List[int] = []
    clock = time.perf_counter_ns

    async def one() -> None:
        start = clock()
        try:
            reply = await call(payload)
        except Exception as exc:
            key = _describe_error(exc)
            failures[key] = failures.get(key, 0) + 1
            return
        latencies.append(clock() - start)
        if len(reply) != len(payload):
            raise RuntimeError("short echo")

    await asyncio.gather(*(one() for _ in range(calls)))
    return latencies


def _describe_error(exc: BaseException) -> str:
    """One line: the gRPC status and details where the library has them."""
    code = getattr(exc, "code", None)
    if callable(code):
        details = getattr(exc, "details", lambda: "")
        return f"{type(exc).__name__} {getattr(code(), 'name', code())}: {details()}"
    status = getattr(exc, "status", None)  # grpclib.GRPCError
    if status is not None:
        return f"{type(exc).__name__} {getattr(status, 'name', status)}: {exc}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _quantiles(sorted_ns: List[int]) -> List[float]:
    """101 points (0th..100th percentile) in microseconds, enough for a CDF plot."""
    n = len(sorted_ns)
    return [sorted_ns[min(n - 1, (n * q) // 100)] / 1000.0 for q in range(101)]


def _percentile(sorted_ns: List[int], q: float) -> float:
    """Nearest-rank percentile in microseconds."""
    n = len(sorted_ns)
    rank = max(1, min(n, int(-(-q * n // 100))))
    return sorted_ns[rank - 1] / 1000.0


async def _measure(spec: Dict[str, Any]) -> Dict[str, Any]:
    call, close = await _open_client(spec["client"], spec["port"], spec["method"])
    payload = os.urandom(spec["size"])
    scenario = spec["scenario"]
    calls = spec["calls"]
    concurrency = spec.get("concurrency", 64)
    failures: Dict[str, int] = {}
    try:
        # Warm up: connects, fills caches, lets flow-control windows open.
        first = await call(payload)
        if first != payload:
            raise RuntimeError("echo reply differs from the request")
        if scenario == "sequential":
            await _sequential(call, payload, spec["warmup"])
        else:
            await _concurrent(call, payload, spec["warmup"], min(concurrency, spec["warmup"]))
        gc.collect()

        profiler = None
        if spec.get("profile"):
            import cProfile

            # CPU time, not wall time: waiting in epoll is not a hot spot.
            profiler = cProfile.Profile(time.process_time)
        cpu0 = _cpu_seconds()
        sys0 = _sys_seconds()
        wall0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        if scenario == "sequential":
            latencies = await _sequential(call, payload, calls)
        elif scenario == "concurrent":
            latencies = await _concurrent(call, payload, calls, concurrency)
        elif scenario == "burst":
            latencies = await _burst(call, payload, calls, failures)
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - wall0
        cpu = _cpu_seconds() - cpu0
        system = _sys_seconds() - sys0
    finally:
        await close()

    if profiler is not None:
        _write_profile(profiler, spec["profile"])
    if not latencies:
        return {"error": f"every call failed: {failures}"}
    latencies.sort()
    return {
        "calls": len(latencies),
        "failed_calls": sum(failures.values()),
        "failures": failures,
        "wall_s": wall,
        "calls_per_s": len(latencies) / wall,
        "p50_us": _percentile(latencies, 50),
        "p99_us": _percentile(latencies, 99),
        # Per call attempted: failed calls cost CPU too.
        "cpu_us_per_call": cpu * 1e6 / calls,
        "cpu_sys_us_per_call": system * 1e6 / calls,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "latency_quantiles_us": _quantiles(latencies),
    }


def _write_profile(profiler: Any, prefix: str) -> None:
    """Write ``prefix.prof`` and ``prefix.txt``: top 20 by cumulative and by own time, in %."""
    import pstats

    profiler.dump_stats(prefix + ".prof")
    stats = pstats.Stats(profiler)
    total = stats.total_tt or 1e-9  # type: ignore[attr-defined]
    table = stats.stats  # type: ignore[attr-defined]
    lines = [f"total profiled CPU time {total:.3f} s (cProfile inflates Python-heavy code)", ""]
    for title, index in (("cumulative", 3), ("own time", 2)):
        lines.append(f"top 20 by {title}:  cum%   own%   calls  function")
        ranked = sorted(table.items(), key=lambda item: item[1][index], reverse=True)[:20]
        for (filename, line, name), (_cc, calls, own, cum, _callers) in ranked:
            where = f"{_short(filename)}:{line}({name})"
            lines.append(f"  {100 * cum / total:6.1f} {100 * own / total:6.1f} {calls:7d}  {where}")
        lines.append("")
    with open(prefix + ".txt", "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))


def _short(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = asyncio.run(_measure(spec))
    except Exception as exc:
        result = {"error": _describe_error(exc)}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
