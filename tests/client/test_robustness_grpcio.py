"""Robustness of the Channel: restarts, reconnect, fork, load, keepalive.

Against the grpcio test server (a separate process, see ``grpcio_server.py``) for restarts,
fork and load; against a small raw-``h2`` server in this file for keepalive, where the peer
must answer PINGs, stop reading, or ask us to calm down.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import resource
import signal
import socket
import sys
import time
from typing import AsyncIterator, Counter, Dict, Iterator, List, Optional, Tuple

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from _support import HelperProcess, grpcio_python, start_helper

from wove_h2grpc import Channel, GrpcError, StatusCode

CALL_TIMEOUT = 10.0


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(*args: str) -> HelperProcess:
    return start_helper("grpcio_server.py", list(args), python=grpcio_python())


@pytest.fixture()
def server() -> Iterator[HelperProcess]:
    proc = _start("--bind", "127.0.0.1:0")
    yield proc
    proc.stop()


async def _echo(channel: Channel, payload: bytes, timeout: float = CALL_TIMEOUT) -> bytes:
    rpc = channel.unary_unary("/test.Test/Echo")
    return await asyncio.wait_for(rpc(payload, timeout=timeout), timeout + 5.0)


async def _peer(channel: Channel) -> str:
    """The client address the server saw: differs between two connections."""
    rpc = channel.unary_unary("/test.Test/Metadata")
    reply = await asyncio.wait_for(rpc(b"", timeout=CALL_TIMEOUT), CALL_TIMEOUT + 5.0)
    return str(json.loads(reply)["peer"])


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# --- restart and reconnect ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_server_restart_mid_run_costs_only_calls_in_flight(how: str) -> None:
    """SIGTERM: grpcio stops gracefully (GOAWAY); SIGKILL: the connection just drops.

    With ``wait_for_ready=True`` calls made while the server is away wait for it.
    """
    port = _unused_port()
    bind = f"127.0.0.1:{port}"
    box: Dict[str, HelperProcess] = {"server": _start("--bind", bind)}

    def restart() -> None:
        if how == "sigkill":
            box["server"].kill()
        else:
            box["server"].stop()
        box["server"] = _start("--bind", bind)

    loop = asyncio.get_running_loop()
    failures: List[Tuple[int, str, str]] = []
    restarting: Optional[asyncio.Future[None]] = None
    try:
        async with Channel(bind, wait_for_ready=True) as ch:
            started = time.monotonic()
            for i in range(10_000):
                if i == 2_000:
                    restarting = loop.run_in_executor(None, restart)
                payload = b"%d" % i
                try:
                    assert await _echo(ch, payload, timeout=5.0) == payload
                except GrpcError as err:
                    failures.append((i, err.code().name, err.details()))
            elapsed = time.monotonic() - started
            assert restarting is not None
            await asyncio.wait_for(restarting, 30)
            # The new server process served part of the run: the restart happened mid-run.
            stats = json.loads(
                await asyncio.wait_for(ch.unary_unary("/test.Test/Stats")(b"", timeout=5), 10)
            )
    finally:
        if restarting is not None:
            await asyncio.wait_for(asyncio.shield(restarting), 30)
        box["server"].stop()
    print(
        f"\nrestart ({how}) mid-run: {len(failures)} failed of 10000 in {elapsed:.1f}s: {failures}"
    )
    assert stats.get("Echo", 0) > 0, "the restart finished only after the run"
    assert len(failures) <= 2, failures


async def test_call_while_server_down_fails_fast_by_default(server: HelperProcess) -> None:
    """wait_for_ready=False (the default, grpcio's fail-fast): a refused connect fails the
    call with UNAVAILABLE at once, not at its deadline."""
    async with Channel(f"127.0.0.1:{server.port}") as ch:
        assert await _echo(ch, b"up") == b"up"
        server.kill()
        await asyncio.sleep(0.2)  # the loop sees the connection close
        started = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await _echo(ch, b"down", timeout=5.0)
        elapsed = time.monotonic() - started
        assert info.value.code() == StatusCode.UNAVAILABLE, info.value
        assert info.value.request_sent is False
        assert elapsed < 1.5, elapsed  # one connect attempt, not the 5 s deadline
        details = info.value.details().lower()
        assert "refused" in details or "connect call failed" in details, info.value.details()
        # Per call, wait_for_ready=True overrides the channel's default: it waits.
        started = time.monotonic()
        with pytest.raises(GrpcError) as waited:
            rpc = ch.unary_unary("/test.Test/Echo")
            await asyncio.wait_for(rpc(b"down", timeout=1.0, wait_for_ready=True), 6.0)
        assert waited.value.code() == StatusCode.UNAVAILABLE
        assert 0.8 <= time.monotonic() - started < 2.5


async def test_call_while_server_down_waits_then_unavailable_with_connect_error(
    server: HelperProcess,
) -> None:
    async with Channel(f"127.0.0.1:{server.port}", wait_for_ready=True) as ch:
        assert await _echo(ch, b"up") == b"up"
        server.kill()
        # Let the loop see the connection close. (A call made in the instant before that
        # goes onto the dying connection and fails "connection lost", like any in-flight
        # call: nothing proves the server never saw it.)
        await asyncio.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await _echo(ch, b"down", timeout=1.0)
        elapsed = time.monotonic() - started
    err = info.value
    assert err.code() == StatusCode.UNAVAILABLE, err
    assert 0.8 <= elapsed < 2.5, elapsed  # waited for its deadline, no longer
    details = err.details().lower()
    assert "refused" in details or "connect call failed" in details, err.details()


async def test_never_connected_channel_fails_unavailable_with_connect_error() -> None:
    async with Channel(f"127.0.0.1:{_unused_port()}") as ch:
        started = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await _echo(ch, b"nobody", timeout=1.0)
        elapsed = time.monotonic() - started
    assert info.value.code() == StatusCode.UNAVAILABLE, info.value
    assert elapsed < 2.5, elapsed
    details = info.value.details().lower()
    assert "refused" in details or "connect call failed" in details, info.value.details()


async def test_call_queued_while_down_succeeds_when_server_returns_within_deadline() -> None:
    port = _unused_port()
    bind = f"127.0.0.1:{port}"
    first = _start("--bind", bind)
    second: Optional[HelperProcess] = None
    try:
        async with Channel(bind, wait_for_ready=True) as ch:
            assert await _echo(ch, b"before") == b"before"
            first.kill()
            await asyncio.sleep(0.2)  # the channel notices the loss, as above
            call = asyncio.ensure_future(_echo(ch, b"queued", timeout=15.0))
            await asyncio.sleep(0.5)
            assert not call.done(), call
            second = await asyncio.get_running_loop().run_in_executor(
                None, lambda: _start("--bind", bind)
            )
            assert await asyncio.wait_for(call, 20) == b"queued"
    finally:
        first.stop()
        if second is not None:
            second.stop()


# --- fork safety --------------------------------------------------------------


def _child_after_fork(ch: Channel, write_fd: int) -> None:
    """Runs in the forked child: use the inherited channel on a new loop, report, exit."""
    code = 1
    try:
        # The parent's loop is "running" in this thread as far as asyncio knows; the child
        # starts its own (Python < 3.12 does not reset this at fork).
        asyncio.events._set_running_loop(None)

        async def use() -> Dict[str, str]:
            reply = await _echo(ch, b"from child")
            return {"echo": reply.decode(), "peer": await _peer(ch)}

        result = asyncio.run(asyncio.wait_for(use(), 20))
        os.write(write_fd, json.dumps(result).encode())
        code = 0
    except BaseException as exc:  # report anything to the parent, never run its code
        os.write(write_fd, json.dumps({"error": repr(exc)}).encode())
    finally:
        os._exit(code)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Python 3.12+ warns about fork() with threads alive (the helper-output pump threads here);
# the child only runs asyncio code that never touches those threads' locks.
@pytest.mark.filterwarnings("ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning")
async def test_fork_child_gets_fresh_connection_parent_untouched(server: HelperProcess) -> None:
    async with Channel(f"127.0.0.1:{server.port}") as ch:
        assert await _echo(ch, b"parent before") == b"parent before"
        parent_peer = await _peer(ch)

        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child_after_fork(ch, write_fd)
        os.close(write_fd)

        def read_all() -> bytes:
            chunks = []
            while True:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)

        loop = asyncio.get_running_loop()
        try:
            raw = await asyncio.wait_for(loop.run_in_executor(None, read_all), 30)
        finally:
            exit_code = _wait_child(pid, 10)
            os.close(read_fd)
        report = json.loads(raw)
        assert "error" not in report, report
        assert report["echo"] == "from child"
        assert exit_code == 0
        assert report["peer"] != parent_peer, "the child reused the parent's connection"

        # The parent's connection was not touched: same connection, still working.
        assert await _echo(ch, b"parent after") == b"parent after"
        assert await _peer(ch) == parent_peer


def _wait_child(pid: int, seconds: float) -> int:
    """Reap the child within ``seconds`` (killing it if it hangs); its exit code."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# --- load ---------------------------------------------------------------------


async def _burst(channel: Channel, calls: int, timeout: float = 60.0) -> Counter[str]:
    rpc = channel.unary_unary("/test.Test/Echo")
    payload = b"x" * 100

    async def one() -> str:
        try:
            reply = await rpc(payload, timeout=timeout)
        except GrpcError as err:
            return err.code().name
        return "OK" if reply == payload else "WRONG_REPLY"

    outcomes = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(calls))), timeout + 30)
    return collections.Counter(outcomes)


@pytest.mark.slow
async def test_ten_thousand_concurrent_calls_one_channel(server: HelperProcess) -> None:
    rss_before = _peak_rss_mib()
    async with Channel(f"127.0.0.1:{server.port}") as ch:
        started = time.monotonic()
        outcomes = await _burst(ch, 10_000)
        elapsed = time.monotonic() - started
    rss_after = _peak_rss_mib()
    print(
        f"\n10,000 concurrent calls: {dict(outcomes)} in {elapsed:.2f}s; client peak RSS "
        f"{rss_after:.1f} MiB (was {rss_before:.1f} MiB before the burst)"
    )
    assert outcomes == {"OK": 10_000}, outcomes


def _grpcio_burst(target: str, calls: int) -> Dict[str, int]:
    """Run grpcio's own aio client burst in a helper process; its outcome counts."""
    client = start_helper(
        "grpcio_client.py", ["--target", target, "--calls", str(calls)], python=grpcio_python()
    )
    try:
        client.proc.wait(timeout=120)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for line in client.lines:
                if line.startswith("RESULT "):
                    return dict(json.loads(line[len("RESULT ") :]))
            time.sleep(0.05)
        raise AssertionError(f"grpcio client printed no RESULT: {client.lines[-10:]}")
    finally:
        client.kill()


@pytest.mark.slow
async def test_burst_against_default_max_pending_both_clients() -> None:
    """Measure, for docs/reliability.md, what a default grpcio server does to a 10,000 burst.

    grpcio's server cancels calls beyond ``grpc.server.max_pending_requests`` (default
    1000); both clients see that, and no call may hang or end with another status.
    """
    loop = asyncio.get_running_loop()
    default = _start("--bind", "127.0.0.1:0", "--max-pending", "0")
    raised = _start("--bind", "127.0.0.1:0", "--max-pending", "100000")
    try:
        grpcio_default = await loop.run_in_executor(
            None, _grpcio_burst, f"127.0.0.1:{default.port}", 10_000
        )
        grpcio_raised = await loop.run_in_executor(
            None, _grpcio_burst, f"127.0.0.1:{raised.port}", 10_000
        )
        async with Channel(f"127.0.0.1:{default.port}") as ch:
            ours_default = dict(await _burst(ch, 10_000))
        async with Channel(f"127.0.0.1:{raised.port}") as ch:
            ours_raised = dict(await _burst(ch, 10_000))
    finally:
        default.stop()
        raised.stop()
    print(
        "\n10,000-call burst, grpcio server default max_pending_requests (1000): "
        f"grpc.aio client {grpcio_default}, wove_h2grpc {ours_default}; "
        f"raised to 100000: grpc.aio {grpcio_raised}, wove_h2grpc {ours_raised}"
    )
    for counts in (grpcio_default, ours_default, grpcio_raised, ours_raised):
        assert sum(counts.values()) == 10_000, counts
    for counts in (grpcio_default, ours_default):
        assert set(counts) <= {"OK", "CANCELLED"}, counts
    assert grpcio_raised == {"OK": 10_000}
    assert ours_raised == {"OK": 10_000}


# --- keepalive ----------------------------------------------------------------


class _RawH2Server:
    """A loopback HTTP/2 server that accepts gRPC requests and never answers them.

    ``mode``: ``"ack"`` keeps reading (h2 acknowledges every PING); ``"stall"`` stops
    reading the socket after the first request (PINGs go unanswered); ``"calm"`` answers the
    first PING of a connection with GOAWAY ENHANCE_YOUR_CALM ``too_many_pings`` and closes,
    as grpcio does to an over-eager client, then behaves like ``"ack"`` on later connections.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self.requests: List[Tuple[int, float]] = []  # (connection number, time)
        self.pings: List[Tuple[int, float]] = []
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: List[asyncio.Task[None]] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        self.connections += 1
        number = self.connections
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                stall = False
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self.requests.append((number, time.monotonic()))
                        stall = self.mode == "stall"
                    elif isinstance(event, h2.events.PingReceived):
                        self.pings.append((number, time.monotonic()))
                        if self.mode == "calm" and number == 1:
                            conn.close_connection(
                                error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                                additional_data=b"too_many_pings",
                            )
                            writer.write(conn.data_to_send())
                            await writer.drain()
                            return
                writer.write(conn.data_to_send())
                if stall:
                    await asyncio.sleep(3600)  # never read again: PINGs pile up unanswered
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture(params=["ack"])
async def raw_h2(request: pytest.FixtureRequest) -> AsyncIterator[Tuple[_RawH2Server, int]]:
    srv = _RawH2Server(request.param)
    port = await srv.start()
    yield srv, port
    await srv.close()


async def test_keepalive_pings_with_call_in_flight(raw_h2: Tuple[_RawH2Server, int]) -> None:
    srv, port = raw_h2
    async with Channel(f"127.0.0.1:{port}", keepalive_time=0.2, keepalive_timeout=2.0) as ch:
        with pytest.raises(GrpcError) as info:
            await _echo(ch, b"silent server", timeout=1.2)
    assert info.value.code() == StatusCode.DEADLINE_EXCEEDED, info.value
    assert len(srv.requests) == 1
    assert len(srv.pings) >= 2, srv.pings  # acknowledged PINGs keep the connection up
    assert srv.connections == 1


async def test_keepalive_no_pings_without_calls(raw_h2: Tuple[_RawH2Server, int]) -> None:
    srv, port = raw_h2
    async with Channel(f"127.0.0.1:{port}", keepalive_time=0.2, keepalive_timeout=2.0) as ch:
        await asyncio.wait_for(ch.channel_ready(), 5)
        await asyncio.sleep(1.0)
    assert srv.pings == []


@pytest.mark.parametrize("raw_h2", ["stall"], indirect=True)
async def test_keepalive_unanswered_ping_fails_calls_unavailable(
    raw_h2: Tuple[_RawH2Server, int],
) -> None:
    srv, port = raw_h2
    async with Channel(f"127.0.0.1:{port}", keepalive_time=0.2, keepalive_timeout=0.3) as ch:
        started = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await _echo(ch, b"stalled", timeout=10.0)
        elapsed = time.monotonic() - started
        assert info.value.code() == StatusCode.UNAVAILABLE, info.value
        assert elapsed < 2.0, elapsed  # keepalive_time + keepalive_timeout, not the deadline
        details = info.value.details().lower()
        assert "keepalive" in details or "ping" in details, info.value.details()
        # The dead connection is dropped: the next call dials a new one.
        with pytest.raises(GrpcError):
            await _echo(ch, b"again", timeout=1.0)
    assert srv.connections == 2


@pytest.mark.parametrize("raw_h2", ["calm"], indirect=True)
async def test_keepalive_too_many_pings_doubles_interval(
    raw_h2: Tuple[_RawH2Server, int],
) -> None:
    srv, port = raw_h2
    async with Channel(f"127.0.0.1:{port}", keepalive_time=0.2, keepalive_timeout=2.0) as ch:
        with pytest.raises(GrpcError):
            await _echo(ch, b"first", timeout=2.0)
        with pytest.raises(GrpcError) as info:
            await _echo(ch, b"second", timeout=1.5)
    assert info.value.code() == StatusCode.DEADLINE_EXCEEDED, info.value
    assert srv.connections == 2
    second_request = [t for n, t in srv.requests if n == 2]
    second_pings = [t for n, t in srv.pings if n == 2]
    assert second_request and second_pings, (srv.requests, srv.pings)
    gaps = [b - a for a, b in zip([second_request[0], *second_pings], second_pings)]
    # The interval is now 0.4 s: no gap close to the original 0.2 s.
    assert min(gaps) >= 0.35, gaps


async def test_keepalive_long_call_against_default_grpcio_server(server: HelperProcess) -> None:
    """A call that outlives several keepalive intervals on a grpcio server with default policy.

    grpcio servers count a PING that arrives while they have sent nothing for under
    5 minutes (``grpc.http2.min_recv_ping_interval_without_data_ms``) as a strike and, past
    ``grpc.http2.max_ping_strikes`` (2), answer GOAWAY ENHANCE_YOUR_CALM too_many_pings,
    ending the connection and its calls. grpcio's own client never gets there: it sends at
    most ``grpc.http2.max_pings_without_data`` (2) PINGs before it sends data again, then
    throttles (measured: PINGs at 0.38 s and 1.38 s of a 3 s call with keepalive_time 0.3 s).
    The same call over our channel must succeed.
    """
    async with Channel(f"127.0.0.1:{server.port}", keepalive_time=0.3, keepalive_timeout=2.0) as ch:
        rpc = ch.unary_unary("/test.Test/Sleep")
        reply = await asyncio.wait_for(rpc(b'{"seconds": 2}', timeout=5.0), 8.0)
        assert reply == b"woke"
        # And again on the same channel (no GOAWAY in between).
        reply = await asyncio.wait_for(rpc(b'{"seconds": 2}', timeout=5.0), 8.0)
        assert reply == b"woke"
