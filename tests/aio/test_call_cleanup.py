"""Every way a call ends releases everything it armed: no timer, task, waiter or slot is left.

Client side against the fault server (an independent raw-h2 peer), server side against our
``Server`` with a real ``Channel``: success, error status, deadline, caller cancel,
connection loss and GOAWAY. After each path the event loop holds no timer of the call and
no task but the test's own, and the connection's call tables are empty.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Awaitable, Callable, List

import h2.errors
import pytest
from fault_server import FaultServer, FaultStream

from wove_h2grpc import Channel, GrpcError, Server, StatusCode


def _live_timers(loop: asyncio.AbstractEventLoop, *names: str) -> List[Any]:
    """Scheduled, not cancelled timer handles whose callback is one of ``names``."""
    handles = getattr(loop, "_scheduled", [])
    out = []
    for handle in handles:
        if handle.cancelled():
            continue
        callback = getattr(handle, "_callback", None)
        if getattr(callback, "__name__", "") in names:
            out.append(handle)
    return out


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


def _other_tasks() -> List[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not current and not t.done()]


async def _ended(coro: Awaitable[Any]) -> BaseException | Any:
    try:
        return await asyncio.wait_for(coro, 5)
    except (GrpcError, asyncio.CancelledError) as exc:
        return exc


async def _call_and_check(rpc: Any, mode: Any, expected: Any, reply: bytes) -> None:
    """One call ended the way ``mode`` says (a timeout, or "cancel" by the caller), with
    ``expected`` (None: ``reply``; "cancelled"; or a status code); then let the loop settle."""
    if mode == "cancel":
        task = asyncio.ensure_future(rpc(b"x", timeout=5.0))
        await asyncio.sleep(0.2)
        task.cancel()
        result = await _ended(task)
    else:
        result = await _ended(rpc(b"x", timeout=mode if mode else 5.0))
    if expected is None:
        assert result == reply
    elif expected == "cancelled":
        assert isinstance(result, asyncio.CancelledError)
    else:
        assert isinstance(result, GrpcError) and result.code() is expected, result
    await _settle()


# ------------------------------------------------------------------------------ client side


async def _hang(stream: FaultStream) -> None:
    await stream.wait_reset(3)


async def _respond(stream: FaultStream) -> None:
    await stream.respond(b"ok")


async def _error(stream: FaultStream) -> None:
    await stream.respond(status=5, message="nope")


async def _reset(stream: FaultStream) -> None:
    stream.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)


async def _drop(stream: FaultStream) -> None:
    stream.send_headers()
    stream.conn.abort()


async def _goaway(stream: FaultStream) -> None:
    stream.conn.goaway(last_stream_id=0)


CLIENT_PATHS: List[tuple] = [
    ("success", _respond, None, None),
    ("error status", _error, None, StatusCode.NOT_FOUND),
    ("RST_STREAM", _reset, None, StatusCode.INTERNAL),
    ("deadline", _hang, 0.2, StatusCode.DEADLINE_EXCEEDED),
    ("cancel", _hang, "cancel", "cancelled"),
    ("connection loss", _drop, None, StatusCode.UNAVAILABLE),
    ("GOAWAY, retried on a new connection", _goaway, None, StatusCode.UNAVAILABLE),
]


@pytest.mark.parametrize(
    ("handler", "mode", "expected"),
    [p[1:] for p in CLIENT_PATHS],
    ids=[p[0] for p in CLIENT_PATHS],
)
async def test_client_call_leaves_nothing_behind(
    handler: Callable[[FaultStream], Awaitable[None]], mode: Any, expected: Any
) -> None:
    loop = asyncio.get_running_loop()
    async with FaultServer(handler) as server:
        channel = Channel(server.target, connect_timeout=2.0, transparent_retry=False)
        try:
            await _call_and_check(channel.unary_unary("/t.S/M"), mode, expected, b"ok")
            assert not _live_timers(loop, "_fire_one")
            for conn in channel._pool.connections():
                assert not conn._streams and not conn._queue and not conn._blocked
                # The connection's deadline timer may stay armed (until the deadline it
                # was set for), but holds no call.
                assert not conn._deadlines
            assert not _other_tasks() or all(
                "_connect_loop" in repr(t) or "FaultServer" in repr(t) or "_accept" in repr(t)
                for t in _other_tasks()
            ), _other_tasks()
        finally:
            await channel.close()
    await _settle()
    assert not _live_timers(loop, "_fire_one", "_fire", "_check", "_on_expired")


# ------------------------------------------------------------------------------ server side


def _handlers() -> Any:
    release = asyncio.Event()

    async def slow(request: bytes, context: Any) -> bytes:
        await release.wait()
        return request

    async def fail(request: bytes, context: Any) -> bytes:
        raise RuntimeError("boom")

    async def abort(request: bytes, context: Any) -> bytes:
        await context.abort(StatusCode.NOT_FOUND, "gone")

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    return {"/t.S/Slow": slow, "/t.S/Fail": fail, "/t.S/Abort": abort, "/t.S/Echo": echo}


SERVER_PATHS = [
    ("success", "/t.S/Echo", None, None),
    ("handler raised", "/t.S/Fail", None, StatusCode.UNKNOWN),
    ("abort", "/t.S/Abort", None, StatusCode.NOT_FOUND),
    ("deadline", "/t.S/Slow", 0.2, StatusCode.DEADLINE_EXCEEDED),
    ("client cancel", "/t.S/Slow", "cancel", "cancelled"),
    ("unknown method", "/t.S/Nope", None, StatusCode.UNIMPLEMENTED),
]


@pytest.mark.parametrize(
    ("method", "mode", "expected"),
    [p[1:] for p in SERVER_PATHS],
    ids=[p[0] for p in SERVER_PATHS],
)
async def test_server_call_leaves_nothing_behind(method: str, mode: Any, expected: Any) -> None:
    loop = asyncio.get_running_loop()
    server = Server(_handlers())
    port = await server.start("127.0.0.1:0")
    try:
        async with Channel(f"127.0.0.1:{port}") as channel:
            await _call_and_check(channel.unary_unary(method), mode, expected, b"x")
            (conn,) = server._connections
            assert not conn.calls, conn.calls
            # No call's timer left; the deadline list's timer may stay armed (until the
            # deadline it was set for), but the list holds no call.
            assert not _live_timers(loop, "_fire_one")
            assert not len(conn._deadlines)
            handler_tasks = [t for t in _other_tasks() if "_run_unary" in repr(t)]
            assert not handler_tasks, handler_tasks
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.stop(), 5)


async def test_server_stop_and_connection_loss_cancel_running_handlers() -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    async def slow(request: bytes, context: Any) -> bytes:
        started.set()
        await asyncio.sleep(30)
        return request

    server = Server({"/t.S/Slow": slow})
    port = await server.start("127.0.0.1:0")
    channel = Channel(f"127.0.0.1:{port}")
    try:
        call = asyncio.ensure_future(channel.unary_unary("/t.S/Slow")(b"x", timeout=10))
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.wait_for(server.stop(grace=None), 10)
        result = await _ended(call)
        assert isinstance(result, GrpcError), result
        await _settle()
        assert not [t for t in _other_tasks() if "_run_unary" in repr(t)]
        assert not _live_timers(loop, "_deadline_expired", "_handshake_expired", "_idle_check")
    finally:
        await channel.close()
