"""Client deadlines: the connection's ordered list under one timer, and calls out of order.

Calls of one timeout started one after another share the connection's single deadline
timer; a call whose deadline falls before the last one listed gets a timer of its own.
Either way every call ends with DEADLINE_EXCEEDED at its own deadline, and calls that ended
do not pile up in the list behind a long-lived one.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, List

from fault_server import FaultServer, FaultStream

from wove_h2grpc import Channel, GrpcError, StatusCode


def _live_timers(loop: asyncio.AbstractEventLoop, name: str) -> List[Any]:
    handles = getattr(loop, "_scheduled", [])
    return [
        h
        for h in handles
        if not h.cancelled() and getattr(getattr(h, "_callback", None), "__name__", "") == name
    ]


async def _hang_or_echo(stream: FaultStream) -> None:
    if stream.path.endswith("/Hang"):
        await stream.wait_reset(10)
    else:
        await stream.respond(stream.request)


async def _elapsed_until_error(rpc: Any, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        await rpc(b"x", timeout=timeout)
    except GrpcError as exc:
        assert exc.code() is StatusCode.DEADLINE_EXCEEDED, exc
        return loop.time() - start
    raise AssertionError("the call did not fail")


async def test_every_deadline_fires_on_time_in_and_out_of_order() -> None:
    async with FaultServer(_hang_or_echo) as server, Channel(server.target) as channel:
        await channel.channel_ready()
        rpc = channel.unary_unary("/t.S/Hang")
        # 0.6 joins the list, 0.3 falls before it (a timer of its own), 0.9 joins the
        # list behind 0.6, 0.45 falls before 0.9.
        timeouts = [0.6, 0.3, 0.9, 0.45]
        tasks = []
        for timeout in timeouts:
            tasks.append(asyncio.ensure_future(_elapsed_until_error(rpc, timeout)))
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        (conn,) = channel._pool.connections()
        assert len(conn._deadlines) == 2
        assert len(_live_timers(asyncio.get_running_loop(), "_fire_one")) == 2
        elapsed = await asyncio.gather(*tasks)
        for timeout, took in zip(timeouts, elapsed):
            assert timeout - 0.01 <= took < timeout + 0.25, (timeout, took)
        assert not conn._deadlines and not conn._streams


async def test_calls_of_one_timeout_share_the_connection_timer() -> None:
    loop = asyncio.get_running_loop()
    async with FaultServer(_hang_or_echo) as server:
        async with Channel(server.target) as channel:
            rpc = channel.unary_unary("/t.S/Hang")
            calls = [rpc(b"x", timeout=30) for _ in range(20)]
            tasks = [asyncio.ensure_future(_ended(call)) for call in calls]
            await asyncio.sleep(0.1)
            (conn,) = channel._pool.connections()
            assert len(conn._deadlines) == 20
            assert not _live_timers(loop, "_fire_one")
            assert len(_live_timers(loop, "_fire")) == 1
            for call in calls:
                call.cancel()
            await asyncio.gather(*tasks)
            assert not conn._deadlines and not conn._streams
        assert not _live_timers(loop, "_fire")  # closing the channel stops it


async def _ended(call: Any) -> None:
    with contextlib.suppress(GrpcError, asyncio.CancelledError):
        await call


async def test_ended_calls_do_not_pile_up_behind_a_long_lived_one() -> None:
    async with FaultServer(_hang_or_echo) as server, Channel(server.target) as channel:
        hang = channel.unary_unary("/t.S/Hang")
        echo = channel.unary_unary("/t.S/Echo")
        first = asyncio.ensure_future(_elapsed_until_error(hang, 2.0))
        await asyncio.sleep(0.05)
        (conn,) = channel._pool.connections()
        largest = 0
        for _ in range(300):
            assert await echo(b"y", timeout=30) == b"y"
            largest = max(largest, len(conn._deadlines))
        # The first call stays at the front; the ended ones behind it are compacted.
        assert largest <= 2 * 64 + 2, largest
        await first
        assert not conn._deadlines


async def test_a_call_that_ends_last_in_the_list_leaves_it_at_once() -> None:
    loop = asyncio.get_running_loop()
    async with FaultServer(_hang_or_echo) as server, Channel(server.target) as channel:
        hang = channel.unary_unary("/t.S/Hang")
        echo = channel.unary_unary("/t.S/Echo")
        first = asyncio.ensure_future(_elapsed_until_error(hang, 0.3))
        await asyncio.sleep(0.05)
        (conn,) = channel._pool.connections()
        assert await echo(b"y", timeout=30) == b"y"  # listed behind the first, then gone
        assert len(conn._deadlines) == 1
        # A deadline between the two joins the list instead of taking a timer of its own.
        second = asyncio.ensure_future(_elapsed_until_error(hang, 0.6))
        await asyncio.sleep(0.05)
        assert len(conn._deadlines) == 2
        assert not _live_timers(loop, "_fire_one")
        await first
        took = await second
        assert 0.59 <= took < 0.85, took
        assert not conn._deadlines
