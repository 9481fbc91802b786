"""The connection pool without sockets: fake connections from an injected ``connect``.

pick_first and round_robin, reconnect backoff, failing fast and on permanent errors,
deadlines while waiting, re-resolution, close, and the reset for a new event loop or a
forked child. Every wait is bounded; the backoff is shortened and its jitter removed so
that the timings asserted are exact multiples of a known delay.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, TypeVar

import pytest

import wove_h2grpc.aio.pool as pool_mod
import wove_h2grpc.aio.resolver as resolver_mod
from wove_h2grpc import GrpcError, StatusCode
from wove_h2grpc.aio.dial import ConnectError
from wove_h2grpc.aio.pool import Backoff, Pool, SubchannelState

Address = Tuple[str, int]
T = TypeVar("T")

FAST = Backoff(initial=0.05, multiplier=2.0, jitter=0.0, maximum=0.4)
A, B, C = ("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)
HANG = "hang"


class FakeConn:
    """A connection as the pool sees it: flags a test flips, no socket."""

    def __init__(self, address: Optional[Address], loop: asyncio.AbstractEventLoop) -> None:
        self.address = address
        self.usable = True
        self.error: Optional[GrpcError] = None
        self.proven = False
        self.goaway_reason = ""
        self.on_idle: Optional[Any] = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.abandoned = False
        self.drained = False
        self.pending: List[asyncio.Future[Any]] = []
        # What reading the unread input will do (None: nothing unread); asked for -> counted.
        self.unread_input: Optional[Callable[[], None]] = None
        self.input_checks = 0

    def close(self) -> None:
        self.usable = False
        if not self.closed.done():
            self.closed.set_result(None)

    def abandon(self) -> None:
        self.abandoned = True
        self.usable = False

    def pending_futures(self) -> List[asyncio.Future[Any]]:
        return [f for f in self.pending if not f.done()]

    def goaway_and_drain(self) -> None:
        self.drained = True
        self.usable = False
        self.goaway_reason = "drained"

    def input_pending(self) -> bool:
        self.input_checks += 1
        reveal = self.unread_input
        if reveal is None:
            return False
        self.unread_input = None
        asyncio.get_running_loop().call_soon(reveal)  # the loop reads it on its next turn
        return True

    def lose(self) -> None:
        """The peer hung up: a sticky error, then the idle callback (as on connection_lost)."""
        self.usable = False
        self.error = GrpcError(StatusCode.UNAVAILABLE, "connection lost")
        if self.on_idle is not None:
            self.on_idle(self)

    def goaway(self) -> None:
        """The server sent GOAWAY and the last call on the connection ended."""
        self.usable = False
        self.goaway_reason = "GOAWAY NO_ERROR"
        if self.on_idle is not None:
            self.on_idle(self)


class Network:
    """``connect`` and ``resolve`` of a fake network, answering as each test says."""

    def __init__(self) -> None:
        # Per address (None: the whole target): absent = connects, HANG, or an error to raise.
        self.behaviour: Dict[Optional[Address], Any] = {}
        self.attempts: List[Tuple[float, Optional[Address]]] = []
        self.conns: List[FakeConn] = []
        self.resolved: List[Address] = []
        self.dns_error: Optional[GrpcError] = None
        self.lookups: List[float] = []

    async def connect(self, addresses: Optional[List[Address]]) -> FakeConn:
        loop = asyncio.get_running_loop()
        address = addresses[0] if addresses else None
        self.attempts.append((loop.time(), address))
        answer = self.behaviour.get(address)
        if answer == HANG:
            await asyncio.sleep(3600)
        if isinstance(answer, Exception):
            raise answer
        conn = FakeConn(address, loop)
        self.conns.append(conn)
        return conn

    async def resolve(self) -> List[Address]:
        self.lookups.append(asyncio.get_running_loop().time())
        if self.dns_error is not None:
            raise self.dns_error
        return list(self.resolved)

    def tries(self, address: Optional[Address]) -> List[float]:
        return [when for when, where in self.attempts if where == address]

    def refuse(self, address: Optional[Address], *, permanent: bool = False) -> None:
        self.behaviour[address] = ConnectError(
            f"failed to connect to {address}: refused", permanent=permanent
        )


def pick_first(net: Network, **kwargs: Any) -> Pool[FakeConn]:
    kwargs.setdefault("connect_timeout", 1.0)
    return Pool(net.connect, target="svc:1", backoff=FAST, **kwargs)


def round_robin(net: Network, *addresses: Address, **kwargs: Any) -> Pool[FakeConn]:
    net.resolved = list(addresses)
    kwargs.setdefault("connect_timeout", 1.0)
    return Pool(
        net.connect,
        target="svc:1",
        lb_policy="round_robin",
        resolve=net.resolve,
        backoff=FAST,
        **kwargs,
    )


async def bounded(awaitable: Awaitable[T], seconds: float = 5.0) -> T:
    return await asyncio.wait_for(awaitable, seconds)


async def until(condition: Any, seconds: float = 3.0) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not condition():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def in_(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


# ---------------------------------------------------------------- backoff


def test_backoff_grows_by_the_multiplier_up_to_the_maximum() -> None:
    assert [FAST.delay(n) for n in range(1, 6)] == [0.05, 0.1, 0.2, 0.4, 0.4]
    jittered = Backoff(initial=1.0, multiplier=1.6, jitter=0.2, maximum=30.0)
    for _ in range(200):
        assert 0.8 <= jittered.delay(1) <= 1.2
        assert 1.6 * 0.8 <= jittered.delay(2) <= 1.6 * 1.2
        assert 30 * 0.8 <= jittered.delay(50) <= 30 * 1.2


# ---------------------------------------------------------------- pick_first


async def test_pick_first_connects_once_and_reuses_the_connection() -> None:
    net = Network()
    pool = pick_first(net)
    assert pool.subchannels == ()
    conns = [await bounded(pool.assign()) for _ in range(20)]
    assert len({id(c) for c in conns}) == 1
    assert net.attempts == [(net.attempts[0][0], None)]  # one attempt, for the whole target
    (sub,) = pool.subchannels
    assert sub.state is SubchannelState.READY
    assert pool.connections() == (conns[0],)
    await pool.close()


async def test_pick_first_reconnects_at_once_after_a_proven_connection_is_lost() -> None:
    net = Network()
    pool = pick_first(net)
    first = await bounded(pool.assign())
    first.proven = True  # it served calls
    first.lose()
    assert first not in pool.connections()
    lost_at = asyncio.get_running_loop().time()
    second = await bounded(pool.assign())
    assert second is not first
    # No backoff after a connection that served calls: the attempt was not counted.
    assert pool.subchannels[0].failures == 0
    assert net.tries(None)[1] - lost_at < 0.5
    await pool.close()


async def test_unproven_connection_lost_counts_as_a_failed_attempt() -> None:
    # A server that completes the preface and hangs up at once must not cause a storm.
    net = Network()
    pool = pick_first(net)
    first = await bounded(pool.assign())
    first.lose()
    lost_at = asyncio.get_running_loop().time()
    await bounded(pool.assign())
    assert pool.subchannels[0].failures == 1
    assert net.tries(None)[1] - lost_at >= FAST.initial * 0.9
    await pool.close()


async def test_waiting_call_gets_the_connection_when_the_server_comes_up() -> None:
    net = Network()
    net.refuse(None)
    pool = pick_first(net)
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, net.behaviour.clear)
    started = loop.time()
    conn = await bounded(pool.assign(in_(3.0)))
    assert conn.usable
    assert 0.2 <= loop.time() - started < 1.5
    tries = net.tries(None)
    assert len(tries) >= 3
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    # Exponential backoff between attempts (no jitter here): 0.05, 0.1, 0.2, ...
    for n, gap in enumerate(gaps, start=1):
        assert gap >= FAST.delay(n) * 0.9, gaps
    await pool.close()


async def test_pick_first_stops_reconnecting_when_nobody_waits() -> None:
    net = Network()
    net.refuse(None)
    pool = pick_first(net)
    with pytest.raises(GrpcError):
        await bounded(pool.assign(in_(0.2)))
    attempts = len(net.attempts)
    await asyncio.sleep(0.7)  # past the next two attempts, were the loop to go on
    assert len(net.attempts) <= attempts + 1  # at most the attempt that was in backoff
    await pool.close()


# ---------------------------------------------------------------- errors while waiting


async def test_a_call_waits_until_its_deadline_then_gets_the_last_connect_error() -> None:
    net = Network()
    net.refuse(None)
    pool = pick_first(net)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(GrpcError) as info:
        await bounded(pool.assign(in_(0.3)))
    assert loop.time() - started >= 0.29
    assert info.value.code() is StatusCode.UNAVAILABLE
    assert info.value.details() == (
        "no connection to svc:1; last connect error: failed to connect to None: refused"
    )
    assert info.value.request_sent is False
    await pool.close()


async def test_fail_fast_call_fails_at_the_first_failed_attempt() -> None:
    net = Network()
    net.refuse(None)
    pool = pick_first(net)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(GrpcError) as info:
        await bounded(pool.assign(in_(5.0), fail_fast=True))
    assert len(net.attempts) == 1  # did not wait for a second attempt
    assert loop.time() - started < 0.5
    assert info.value.code() is StatusCode.UNAVAILABLE
    assert "last connect error" in info.value.details()
    assert info.value.request_sent is False
    await pool.close()


async def test_an_unexpected_error_while_connecting_is_a_failed_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The connect loop survives a bug of ours: the waiting call fails at once, the error
    is logged, and the next attempt is made as after any failure."""
    net = Network()
    net.behaviour[None] = ValueError("negative file descriptor")
    pool = pick_first(net)
    with pytest.raises(GrpcError) as info:
        await bounded(pool.assign(in_(5.0), fail_fast=True))
    assert info.value.code() is StatusCode.UNAVAILABLE
    assert "internal error: ValueError: negative file descriptor" in info.value.details()
    assert "internal error while connecting to svc:1" in caplog.text
    del net.behaviour[None]
    conn = await bounded(pool.assign(in_(5.0)))
    assert conn is net.conns[0] and len(net.attempts) >= 2
    await pool.close()


async def test_fail_fast_call_still_waits_while_the_first_attempt_runs() -> None:
    net = Network()
    net.behaviour[None] = HANG
    pool = pick_first(net)
    waiting = asyncio.ensure_future(pool.assign(in_(5.0), fail_fast=True))
    await asyncio.sleep(0.1)
    assert not waiting.done()  # connecting: held, as in both modes
    assert pool.subchannels[0].state is SubchannelState.CONNECTING
    await pool.close()
    with pytest.raises(GrpcError) as info:
        await bounded(waiting)
    assert info.value.code() is StatusCode.CANCELLED


async def test_permanent_connect_error_fails_a_waiting_call_at_once() -> None:
    net = Network()
    net.refuse(None, permanent=True)  # e.g. the server's certificate is not trusted
    pool = pick_first(net)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(GrpcError) as info:
        await bounded(pool.assign(in_(5.0)))
    assert loop.time() - started < 0.5
    assert len(net.attempts) == 1
    assert info.value.code() is StatusCode.UNAVAILABLE
    assert info.value.request_sent is False
    await pool.close()


async def test_deadline_while_connecting_is_deadline_exceeded_and_never_sent() -> None:
    net = Network()
    net.behaviour[None] = HANG
    pool = pick_first(net)
    with pytest.raises(GrpcError) as info:
        await bounded(pool.assign(in_(0.2)))
    assert info.value.code() is StatusCode.DEADLINE_EXCEEDED
    assert info.value.details() == "Deadline Exceeded while waiting for a connection to svc:1"
    assert info.value.request_sent is False
    await pool.close()


async def test_without_a_deadline_a_call_waits_connect_timeout() -> None:
    net = Network()
    net.behaviour[None] = HANG
    pool = pick_first(net, connect_timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(GrpcError) as info:
        await bounded(pool.assign())
    # connect_timeout plus the moment an attempt gets to report its own error.
    assert 0.2 + pool_mod._CONNECT_REPORT_GRACE - 0.01 <= loop.time() - started < 2.0
    assert info.value.code() is StatusCode.UNAVAILABLE
    assert info.value.details() == "no connection to svc:1 within connect_timeout 0.2s"
    assert info.value.request_sent is False
    await pool.close()


# ---------------------------------------------------------------- round_robin


async def test_round_robin_spreads_calls_over_every_address() -> None:
    net = Network()
    pool = round_robin(net, A, B, C)
    await bounded(pool.ready())
    assert [s.state for s in pool.subchannels] == [SubchannelState.READY] * 3
    picked = collections.Counter([(await bounded(pool.assign())).address for _ in range(30)])
    assert picked == {A: 10, B: 10, C: 10}
    assert sorted(where for _, where in net.attempts) == [A, B, C]
    await pool.close()


async def test_round_robin_skips_a_failing_address_and_retries_it_with_backoff() -> None:
    net = Network()
    net.refuse(B)
    pool = round_robin(net, A, B, C)
    await bounded(pool.ready())
    assert pool.subchannels[1].state is SubchannelState.TRANSIENT_FAILURE
    picked = collections.Counter([(await bounded(pool.assign())).address for _ in range(20)])
    assert picked == {A: 10, C: 10}
    await until(lambda: len(net.tries(B)) >= 4)  # kept trying with nobody waiting
    tries = net.tries(B)
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    for n, gap in enumerate(gaps, start=1):
        assert gap >= FAST.delay(n) * 0.9, gaps
    del net.behaviour[B]  # the replica is back
    await until(lambda: pool.subchannels[1].state is SubchannelState.READY)
    picked = collections.Counter([(await bounded(pool.assign())).address for _ in range(30)])
    assert picked == {A: 10, B: 10, C: 10}
    await pool.close()


async def test_round_robin_reconnects_an_address_drained_by_goaway() -> None:
    net = Network()
    pool = round_robin(net, A, B)
    await bounded(pool.ready())
    first_b = pool.subchannels[1].conn
    assert first_b is not None
    first_b.proven = True
    first_b.goaway()
    assert first_b.closed.done()  # drained and idle: the pool closed it
    assert first_b not in pool.connections()
    # Two picks pass B at least once: the picker sees it unusable and reconnects it (at
    # once: that connection had served calls), while A takes the calls.
    assert (await bounded(pool.assign())).address == A
    await bounded(pool.assign())
    await until(lambda: pool.subchannels[1].usable() is not None)
    assert pool.subchannels[1].conn is not first_b
    assert len(net.tries(B)) == 2
    await pool.close()


async def test_ready_raises_when_every_address_fails() -> None:
    net = Network()
    for address in (A, B):
        net.refuse(address)
    pool = round_robin(net, A, B)
    with pytest.raises(GrpcError) as info:
        await bounded(pool.ready())
    assert info.value.code() is StatusCode.UNAVAILABLE
    assert info.value.request_sent is False
    assert {where for _, where in net.attempts} == {A, B}
    await pool.close()


async def test_ready_waits_until_every_address_was_tried() -> None:
    net = Network()
    net.behaviour[B] = HANG
    pool = round_robin(net, A, B, connect_timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    conn = await bounded(pool.ready())
    # A connected at once, but B was still connecting: ready() waited for it, bounded by
    # connect_timeout (and the moment an attempt gets to report its error).
    assert conn.address == A
    assert loop.time() - started >= 0.2 + pool_mod._CONNECT_REPORT_GRACE - 0.01
    await pool.close()


async def test_resolution_failure_is_reported_and_never_sent() -> None:
    net = Network()
    net.dns_error = GrpcError(StatusCode.UNAVAILABLE, "DNS resolution failed for svc:1: NXDOMAIN")
    pool = round_robin(net)
    with pytest.raises(GrpcError) as fast:
        await bounded(pool.assign(in_(5.0), fail_fast=True))
    assert fast.value.details() == "DNS resolution failed for svc:1: NXDOMAIN"
    assert fast.value.request_sent is False
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(GrpcError) as waited:
        await bounded(pool.assign(in_(0.3)))
    assert loop.time() - started >= 0.29  # kept resolving until the deadline
    assert len(net.lookups) >= 2
    assert waited.value.request_sent is False
    await pool.close()


async def test_reresolution_adds_new_addresses_and_drains_the_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resolver_mod, "_RESOLVE_INTERVAL", 0.05)
    net = Network()
    pool = round_robin(net, A, reresolve=True)
    old = await bounded(pool.assign())
    assert old.address == A
    net.resolved = [B]
    await until(lambda: [s.addresses for s in pool.subchannels] == [[B]])
    assert old.drained  # it finishes its calls, takes no new ones
    await until(lambda: pool.subchannels[0].usable() is not None)
    assert (await bounded(pool.assign())).address == B
    await pool.close()


async def test_failed_connections_trigger_rate_limited_reresolution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resolver_mod, "_RESOLVE_MIN_INTERVAL", 0.1)
    net = Network()
    net.refuse(A)
    pool = round_robin(net, A, reresolve=True)
    with pytest.raises(GrpcError):
        await bounded(pool.assign(in_(0.5)))
    lookups = net.lookups
    assert len(lookups) >= 3  # the first, then after failures (the interval is 30 s)
    gaps = [b - a for a, b in zip(lookups, lookups[1:])]
    assert min(gaps) >= 0.1 * 0.9, gaps
    await pool.close()


async def test_without_reresolve_the_addresses_are_resolved_once() -> None:
    net = Network()
    net.refuse(A)
    pool = round_robin(net, A)  # e.g. ipv4:10.0.0.1:1, literal addresses
    with pytest.raises(GrpcError):
        await bounded(pool.assign(in_(0.3)))
    assert len(net.lookups) == 1
    await pool.close()


# ---------------------------------------------------------------- picking details


async def test_idle_connection_with_unread_input_gets_a_loop_turn_first() -> None:
    net = Network()
    pool = pick_first(net)
    first = await bounded(pool.assign())
    first.proven = True
    first.unread_input = first.lose  # the peer had closed it: reading reveals the EOF
    checks = first.input_checks
    second = await bounded(pool.assign())
    assert first.input_checks == checks + 1
    assert second is not first
    assert second.usable
    await pool.close()


async def test_unread_input_on_a_healthy_connection_keeps_it() -> None:
    net = Network()
    pool = pick_first(net)
    first = await bounded(pool.assign())
    first.unread_input = lambda: None  # e.g. a PING: reading it changes nothing
    checks = first.input_checks
    assert await bounded(pool.assign()) is first
    assert first.input_checks == checks + 1
    assert len(net.attempts) == 1
    await pool.close()


async def test_subchannel_states_follow_the_attempts() -> None:
    net = Network()
    net.refuse(None)
    pool = pick_first(net)
    with pytest.raises(GrpcError):
        await bounded(pool.assign(in_(5.0), fail_fast=True))
    (sub,) = pool.subchannels
    assert sub.state is SubchannelState.TRANSIENT_FAILURE
    net.behaviour.clear()
    conn = await bounded(pool.assign(in_(1.0)))
    assert sub.state is SubchannelState.READY
    conn.lose()
    net.behaviour[None] = HANG
    waiting = asyncio.ensure_future(pool.assign(in_(0.3)))
    await until(lambda: len(net.attempts) == 3)  # refused, connected, now hanging
    assert sub.state is SubchannelState.CONNECTING
    with pytest.raises(GrpcError):
        await bounded(waiting)
    await pool.close()
    assert sub.state is SubchannelState.SHUTDOWN


# ---------------------------------------------------------------- close and resets


async def test_close_lets_open_calls_finish_within_grace_then_closes() -> None:
    net = Network()
    pool = pick_first(net)
    conn = await bounded(pool.assign())
    loop = asyncio.get_running_loop()
    call = loop.create_future()
    conn.pending.append(call)
    loop.call_later(0.1, call.set_result, b"reply")
    started = loop.time()
    await bounded(pool.close(grace=2.0))
    assert call.done()
    assert 0.09 <= loop.time() - started < 1.0
    assert conn.closed.done()
    assert pool.connections() == ()
    with pytest.raises(GrpcError) as info:
        await bounded(pool.assign())
    assert info.value.code() is StatusCode.CANCELLED
    assert info.value.request_sent is False
    await pool.close()  # idempotent


async def test_close_ends_calls_waiting_for_a_connection() -> None:
    net = Network()
    net.behaviour[None] = HANG
    pool = pick_first(net)
    waiting = asyncio.ensure_future(pool.assign(in_(10.0)))
    await until(lambda: bool(net.attempts))
    await bounded(pool.close())
    with pytest.raises(GrpcError) as info:
        await bounded(waiting)
    assert info.value.code() is StatusCode.CANCELLED
    assert info.value.request_sent is False


def test_a_new_event_loop_drops_the_old_loops_connections() -> None:
    net = Network()
    pool = pick_first(net)

    async def use() -> FakeConn:
        return await bounded(pool.assign())

    first = asyncio.run(use())
    second = asyncio.run(use())
    assert second is not first
    assert first.abandoned  # never closed from the wrong loop
    assert not first.closed.done()
    assert pool.connections() == (second,)
    asyncio.run(pool.close())  # from a third loop: drops, never touches
    assert second.abandoned
    assert not second.closed.done()


async def test_a_forked_child_drops_the_parents_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_mod, "_fork_generation", [0])
    monkeypatch.setattr(pool_mod, "_fork_orphans", [])
    net = Network()
    pool = pick_first(net)
    parents = await bounded(pool.assign())
    pool.subchannels[0].failures = 5  # the parent's backoff does not carry over
    pool_mod._after_fork_in_child()  # what os.register_at_fork runs in the child
    childs = await bounded(pool.assign())
    assert childs is not parents
    assert parents.abandoned
    assert not parents.closed.done()  # the parent still uses its socket
    assert pool_mod._fork_orphans == [parents]  # kept alive: never garbage-collected here
    assert pool.subchannels[0].failures == 0
    pool_mod._after_fork_in_child()
    await bounded(pool.close())  # closing in a (grand)child drops without touching
    assert childs.abandoned
    assert not childs.closed.done()


def test_periodic_resolution_resumes_on_a_new_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver_mod, "_RESOLVE_INTERVAL", 0.05)
    net = Network()
    pool = round_robin(net, A, reresolve=True)

    async def use(wait: float) -> int:
        await bounded(pool.assign())
        before = len(net.lookups)
        await asyncio.sleep(wait)
        return len(net.lookups) - before

    assert asyncio.run(use(0.01)) == 0  # resolved once, the next is 50 ms away
    assert asyncio.run(use(0.3)) >= 2  # the old loop's timer is gone; a new one runs here
    asyncio.run(pool.close())
