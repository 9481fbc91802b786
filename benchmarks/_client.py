"""One benchmark measurement, run in a fresh interpreter: ``python _client.py '<json spec>'``.

Each (client, scenario, round) gets its own process so that the CPU time (``getrusage``,
which counts every thread, grpcio's core threads included) and the peak RSS belong to one
client alone. The process connects, warms up, then measures; only the measured section is
counted in the CPU figure. The result is one JSON object on the last line of stdout.

Spec keys: ``client`` (``wove_h2grpc`` | ``grpc.aio`` | ``grpclib``, or ``raw``: the floor, a
plain ``asyncio.Protocol`` exchanging length-prefixed messages with the ``raw-echo`` server,
no HTTP/2 and no gRPC), ``port``, ``method`` (unused by ``raw``),
``scenario`` (``sequential`` | ``concurrent`` | ``burst`` | ``bidi`` | ``server_stream`` |
``slow_consumer``), ``size`` (payload bytes), ``calls`` (calls; round trips for ``bidi``,
messages for the two server streams), ``concurrency``, ``warmup``, optional ``profile``
(path prefix for cProfile output). The streaming scenarios (``_measure_stream``) also take
``window`` (the stream receive window to ask the client for, bytes; absent = the client's
default), ``server_pid`` (whose RSS the slow consumer samples too), and for
``slow_consumer`` ``stall_s`` (seconds it waits after the first message), ``pause_every``
and ``pause_s`` (it sleeps ``pause_s`` after every ``pause_every`` messages). Any scenario
takes ``loop`` (``asyncio``, the default, or ``uvloop``: the event loop the client runs on);
the unary ones take ``server_pid`` too, whose CPU time over the measured section gives
``server_cpu_us_per_call``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
from typing import (
    Any,
    AsyncContextManager,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
)

Call = Callable[[bytes], Awaitable[bytes]]
MAX_MESSAGE = 64 * 1024 * 1024
STREAM_SCENARIOS = ("bidi", "server_stream", "slow_consumer")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sys_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def proc_cpu_seconds(pid: int) -> Optional[float]:
    """CPU time (user + system) process ``pid`` has used so far (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_on_loop(loop: str, main: Callable[[], Any]) -> Any:
    """``asyncio.run(main())`` on asyncio's loop, or on uvloop's (``loop="uvloop"``)."""
    if loop == "asyncio":
        return asyncio.run(main())
    if loop != "uvloop":
        raise SystemExit(f"unknown loop {loop!r}")
    import uvloop

    return uvloop.run(main())


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

        gchannel = GrpclibChannel("127.0.0.1", port, codec=_grpclib_codec())

        async def call_grpclib(request: bytes) -> bytes:
            async with gchannel.request(method, Cardinality.UNARY_UNARY, bytes, bytes) as stream:
                await stream.send_message(request, end=True)
                reply = await stream.recv_message()
            return reply  # type: ignore[return-value]

        async def close_grpclib() -> None:
            gchannel.close()

        return call_grpclib, close_grpclib
    if name == "raw":
        return await _open_raw(port)
    if name == "wove_h2grpc":
        from wove_h2grpc import Channel

        channel_h2 = Channel(target, max_receive_message_length=MAX_MESSAGE)
        rpc_h2 = channel_h2.unary_unary(method)

        async def close_h2() -> None:
            await channel_h2.close()

        return rpc_h2, close_h2
    raise SystemExit(f"unknown client {name!r}")


def _raw_framing() -> Any:
    """The raw echo's framing (``_servers.raw_frame``, ``_servers.RawMessages``)."""
    try:
        from benchmarks import _servers
    except ImportError:  # run as a script with only benchmarks/ on the path
        import _servers  # type: ignore[no-redef]
    return _servers


class RawClient(asyncio.Protocol):
    """The floor's client: one TCP connection, each reply resolves the oldest waiting call
    (the echo answers in order)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        import collections

        framing = _raw_framing()
        self.loop = loop
        self.frame = framing.raw_frame
        self.messages = framing.RawMessages()
        self.waiters: Any = collections.deque()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        waiters = self.waiters
        for message in self.messages.feed(data):
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(message)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("the raw echo connection was lost"))

    async def call(self, payload: bytes) -> bytes:
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        self.transport.write(self.frame(payload))
        reply: bytes = await waiter
        return reply


async def _open_raw(port: int) -> Tuple[Call, Callable[[], Awaitable[None]]]:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: RawClient(loop), "127.0.0.1", port)

    async def close_raw() -> None:
        protocol.transport.close()

    return protocol.call, close_raw


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
        server_pid = spec.get("server_pid")
        server0 = proc_cpu_seconds(server_pid) if server_pid else None
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
        server1 = proc_cpu_seconds(server_pid) if server_pid else None
    finally:
        await close()

    if profiler is not None:
        _write_profile(profiler, spec["profile"])
    if not latencies:
        return {"error": f"every call failed: {failures}"}
    latencies.sort()
    extra: Dict[str, Any] = {}
    if server0 is not None and server1 is not None:
        # The server's CPU over the same section (its clock ticks are 10 ms: long runs).
        extra["server_cpu_us_per_call"] = (server1 - server0) * 1e6 / calls
    return {
        **extra,
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


# ----------------------------------------------------------------- streaming scenarios

BIDI_METHOD = "/bench.Echo/Bidi"
STREAM_METHOD = "/bench.Echo/Stream"
Send = Callable[[bytes], Awaitable[None]]
Recv = Callable[[], Awaitable[Optional[bytes]]]  # None once the stream has ended
Bidi = Callable[[], AsyncContextManager[Tuple[Send, Recv]]]
ServerStream = Callable[[bytes], AsyncContextManager[AsyncIterator[bytes]]]


def stream_request(count: int, size: int) -> bytes:
    """The ``/bench.Echo/Stream`` request: ``count`` messages of ``size`` bytes, please
    (``_servers.parse_stream_request`` reads it)."""
    return b"%d %d" % (count, size)


async def _open_streams(
    name: str, port: int, window: Optional[int]
) -> Tuple[Bidi, ServerStream, Callable[[], Awaitable[None]]]:
    """``(bidi, server_stream, close)`` for one client library, each in its own idiom:
    ``async with bidi() as (send, recv)`` is one open bidi call (leaving the block half-closes
    it and reads it to its end); ``async with server_stream(request) as messages`` gives an
    async iterator over the replies. ``window``: the stream receive window to ask for."""
    import contextlib

    target = f"127.0.0.1:{port}"
    if name == "grpc.aio":
        import grpc.aio

        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        if window:
            # The C core's initial stream window; BDP probing would grow it, so it is off.
            options += [("grpc.http2.lookahead_bytes", window), ("grpc.http2.bdp_probe", 0)]
        channel = grpc.aio.insecure_channel(target, options=options)
        bidi_rpc = channel.stream_stream(BIDI_METHOD)
        stream_rpc = channel.unary_stream(STREAM_METHOD)
        eof: Any = grpc.aio.EOF
    elif name == "wove_h2grpc":
        from wove_h2grpc import EOF, Channel

        kwargs: Dict[str, Any] = {"max_receive_message_length": MAX_MESSAGE}
        if window:
            kwargs["initial_window_size"] = window
        channel = Channel(target, **kwargs)
        bidi_rpc = channel.stream_stream(BIDI_METHOD)
        stream_rpc = channel.unary_stream(STREAM_METHOD)
        eof = EOF
    elif name == "grpclib":
        return _grpclib_streams(port, window)
    else:
        raise SystemExit(f"unknown client {name!r}")

    @contextlib.asynccontextmanager
    async def bidi() -> AsyncIterator[Tuple[Send, Recv]]:
        call = bidi_rpc()

        async def recv() -> Optional[bytes]:
            message = await call.read()
            return None if message is eof else message

        try:
            yield call.write, recv
            await call.done_writing()
            while await recv() is not None:
                pass
        finally:
            call.cancel()  # a no-op once the call has ended

    @contextlib.asynccontextmanager
    async def server_stream(request: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        call = stream_rpc(request)
        try:
            yield call.__aiter__()
        finally:
            call.cancel()

    async def close() -> None:
        await channel.close()

    return bidi, server_stream, close


def _grpclib_streams(
    port: int, window: Optional[int]
) -> Tuple[Bidi, ServerStream, Callable[[], Awaitable[None]]]:
    import contextlib

    from grpclib.client import Channel as GrpclibChannel
    from grpclib.config import Configuration
    from grpclib.const import Cardinality

    config = Configuration(http2_stream_window_size=window) if window else None
    channel = GrpclibChannel("127.0.0.1", port, codec=_grpclib_codec(), config=config)

    @contextlib.asynccontextmanager
    async def bidi() -> AsyncIterator[Tuple[Send, Recv]]:
        async with channel.request(BIDI_METHOD, Cardinality.STREAM_STREAM, bytes, bytes) as st:
            yield st.send_message, st.recv_message
            await st.end()
            while await st.recv_message() is not None:
                pass

    @contextlib.asynccontextmanager
    async def server_stream(request: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        async with channel.request(STREAM_METHOD, Cardinality.UNARY_STREAM, bytes, bytes) as st:
            await st.send_message(request, end=True)
            yield st.__aiter__()

    async def close() -> None:
        channel.close()

    return bidi, server_stream, close


def _grpclib_codec() -> Any:
    from grpclib.encoding.base import CodecBase

    class RawCodec(CodecBase):
        """Bytes in, bytes out: grpclib's codec hook without protobuf."""

        __content_subtype__ = "proto"  # plain "application/grpc" on the wire

        def encode(self, message: Any, message_type: Any) -> bytes:
            return message  # type: ignore[no-any-return]

        def decode(self, data: bytes, message_type: Any) -> Any:
            return data

    return RawCodec()


def rss_kib(pid: Any = "self") -> Optional[int]:
    """Resident set size of a process now (``/proc/<pid>/statm``), or ``None`` (not Linux,
    or the process is gone)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return None


def rss_growth_kib(
    baseline: Optional[int], samples: Sequence[Optional[int]], maxrss_before: int, maxrss_after: int
) -> Optional[int]:
    """Peak RSS during a section minus the RSS at its start, in KiB.

    ``samples`` are RSS readings taken during the section; ``ru_maxrss`` (the process's
    lifetime peak, before and after the section) adds the peak between samples, but only
    when the section raised it: otherwise the lifetime peak is older than the section.
    """
    if baseline is None:
        return None
    peak = max((s for s in samples if s is not None), default=baseline)
    if maxrss_after > maxrss_before:
        peak = max(peak, maxrss_after)
    return max(0, peak - baseline)


def rates(count: int, wall_s: float, cpu_s: float, size: int) -> Dict[str, float]:
    """Messages/s, MiB/s and CPU µs per message of a stream of ``count`` ``size``-byte
    messages received in ``wall_s`` seconds using ``cpu_s`` seconds of CPU."""
    if count <= 0 or wall_s <= 0:
        raise ValueError("no messages or no time: nothing to rate")
    return {
        "messages_per_s": count / wall_s,
        "mib_per_s": count * size / wall_s / (1024 * 1024),
        "cpu_us_per_message": cpu_s * 1e6 / count,
    }


class _Section:
    """The measured section: CPU (user + system), wall time, optional cProfile."""

    def __init__(self, profile: Optional[str]) -> None:
        self.profile = profile
        self.profiler: Any = None
        if profile:
            import cProfile

            self.profiler = cProfile.Profile(time.process_time)

    def __enter__(self) -> _Section:
        gc.collect()
        self.maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.cpu0, self.sys0, self.wall0 = _cpu_seconds(), _sys_seconds(), time.perf_counter()
        if self.profiler is not None:
            self.profiler.enable()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.profiler is not None:
            self.profiler.disable()
        self.wall = time.perf_counter() - self.wall0
        self.cpu = _cpu_seconds() - self.cpu0
        self.system = _sys_seconds() - self.sys0
        self.maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if self.profiler is not None and self.profile:
            _write_profile(self.profiler, self.profile)


async def _pingpong(send: Send, recv: Recv, payload: bytes, n: int) -> List[int]:
    latencies = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        await send(payload)
        reply = await recv()
        latencies.append(clock() - start)
        if reply is None or len(reply) != len(payload):
            raise RuntimeError("bidi echo ended early or returned a different size")
    return latencies


async def _drain(messages: AsyncIterator[bytes], size: int) -> int:
    count = 0
    async for message in messages:
        if len(message) != size:
            raise RuntimeError(f"stream message of {len(message)} bytes, expected {size}")
        count += 1
    return count


async def _measure_stream(spec: Dict[str, Any]) -> Dict[str, Any]:
    scenario, size, count = spec["scenario"], spec["size"], spec["calls"]
    bidi, server_stream, close = await _open_streams(
        spec["client"], spec["port"], spec.get("window")
    )
    payload = os.urandom(size)
    result: Dict[str, Any] = {}
    try:
        if scenario == "bidi":
            async with bidi() as (send, recv):
                await _pingpong(send, recv, payload, spec["warmup"])  # connects, warms up
                with _Section(spec.get("profile")) as section:
                    latencies = await _pingpong(send, recv, payload, count)
            latencies.sort()
            result = {
                "calls": count,
                "calls_per_s": count / section.wall,
                "p50_us": _percentile(latencies, 50),
                "p99_us": _percentile(latencies, 99),
                "cpu_us_per_call": section.cpu * 1e6 / count,
                "cpu_sys_us_per_call": section.system * 1e6 / count,
                "latency_quantiles_us": _quantiles(latencies),
            }
        elif scenario == "server_stream":
            async with server_stream(stream_request(spec["warmup"], size)) as messages:
                await _drain(messages, size)
            with _Section(spec.get("profile")) as section:
                async with server_stream(stream_request(count, size)) as messages:
                    received = await _drain(messages, size)
            if received != count:
                raise RuntimeError(f"received {received} of {count} messages")
            result = rates(count, section.wall, section.cpu, size)
            result["cpu_sys_us_per_message"] = section.system * 1e6 / count
        elif scenario == "slow_consumer":
            result = await _slow_consumer(spec, server_stream, size, count)
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
    finally:
        await close()
    result["messages"] = count
    result["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result


async def _slow_consumer(
    spec: Dict[str, Any], server_stream: ServerStream, size: int, count: int
) -> Dict[str, Any]:
    """Read ``count`` messages of ``size`` bytes slowly: wait ``stall_s`` after the first
    (the sender fills the receive window meanwhile), then sleep ``pause_s`` after every
    ``pause_every`` messages. The figures are the RSS growth of this process (and of the
    server's) over its RSS when the call started: about the window if reading applies flow
    control, about the whole stream if it does not."""
    server_pid = spec.get("server_pid")
    stall, every, pause = spec.get("stall_s", 0.2), spec.get("pause_every", 8), spec["pause_s"]
    async with server_stream(stream_request(spec["warmup"], size)) as messages:
        await _drain(messages, size)  # connects; the allocator has seen messages this size
    ours: List[Optional[int]] = []
    theirs: List[Optional[int]] = []
    received = 0
    with _Section(spec.get("profile")) as section:
        base, server_base = rss_kib(), rss_kib(server_pid) if server_pid else None
        async with server_stream(stream_request(count, size)) as messages:
            async for message in messages:
                if len(message) != size:
                    raise RuntimeError(f"stream message of {len(message)} bytes")
                received += 1
                if received == 1:
                    await asyncio.sleep(stall)
                elif received % every == 0:
                    ours.append(rss_kib())
                    if server_pid:
                        theirs.append(rss_kib(server_pid))
                    await asyncio.sleep(pause)
    if received != count:
        raise RuntimeError(f"received {received} of {count} messages")
    growth = rss_growth_kib(base, ours, section.maxrss0, section.maxrss)
    server_growth = rss_growth_kib(server_base, theirs, 0, 0)
    out: Dict[str, Any] = rates(count, section.wall, section.cpu, size)
    out["stream_mib"] = count * size / (1024 * 1024)
    if spec.get("window"):
        out["window_mib"] = spec["window"] / (1024 * 1024)
    if growth is not None:
        out["rss_growth_mib"] = growth / 1024
    if server_growth is not None:
        out["server_rss_growth_mib"] = server_growth / 1024
    return out


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
    measure = _measure_stream if spec.get("scenario") in STREAM_SCENARIOS else _measure
    try:
        result = run_on_loop(spec.get("loop", "asyncio"), lambda: measure(spec))
    except Exception as exc:
        result = {"error": _describe_error(exc)}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
