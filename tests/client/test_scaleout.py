"""Scale-out (issue 8): round_robin and pick_first over several replicas, multi-address targets.

Every replica is our ``wove_h2grpc.Server`` in its own process (``h2_replica.py``), so a test
can SIGKILL one and restart it on the same port. ``/test.Test/Who`` answers the replica's
name, which is how the client counts the per-replica split. DNS names that resolve to several
addresses (a Kubernetes headless service) are emulated by patching the event loop's
``getaddrinfo`` for one made-up name; ``localhost`` itself is also resolved for real.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from _scaleout_support import RUN_BOUND, WHO, Replicas, Run, assert_share, wait_for
from _support import HelperProcess

import wove_h2grpc.aio.resolver as resolver_mod
from wove_h2grpc import Channel, GrpcError, StatusCode


@pytest.fixture()
def replicas() -> Iterator[Replicas]:
    """Replicas a test may kill: started by the test, stopped at its end."""
    pool = Replicas()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def trio() -> Iterator[List[HelperProcess]]:
    """Replicas a, b, c on 127.0.0.1 (three ports), shared by the tests that kill none."""
    pool = Replicas()
    try:
        yield pool.start_many([("a", "127.0.0.1:0"), ("b", "127.0.0.1:0"), ("c", "127.0.0.1:0")])
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def headless() -> Iterator[Tuple[int, List[str]]]:
    """One port on several loopback IPs, a replica on each (named by its IP), like the pods
    behind a headless service: 127.0.0.1-3, plus any other loopback address of localhost.
    """
    pool = Replicas()
    try:
        port = pool.start("127.0.0.1", "127.0.0.1:0").port
        hosts = ["127.0.0.2", "127.0.0.3"]
        hosts += [h for h in _loopback_addresses_of_localhost() if h not in [*hosts, "127.0.0.1"]]
        pool.start_many([(h, f"{_bracket(h)}:{port}") for h in hosts])
        yield port, ["127.0.0.1", *hosts]
    finally:
        pool.stop_all()


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------ round_robin


async def test_round_robin_spreads_3000_calls_evenly(trio: List[HelperProcess]) -> None:
    target = "ipv4:" + ",".join(f"127.0.0.1:{p.port}" for p in trio)
    async with Channel(target, lb_policy="round_robin") as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        run = Run(channel)
        await run.calls(3000, concurrency=100)
    print(f"\nround_robin 3 replicas, 3000 calls / 100 in flight: {dict(run.ok())}")
    assert run.failed() == 0, run.details[:5]
    assert_share(run.ok(), ["a", "b", "c"], 3000)


async def test_round_robin_replica_killed_and_restarted(replicas: Replicas) -> None:
    """3,000+ calls; one replica SIGKILLed after 1,000 and restarted on its port later.

    Only calls in flight on the killed replica may fail (UNAVAILABLE); queued and refused
    ones are retried on the others. After the restart the replica gets calls again.
    """
    procs = replicas.start_many([("a", "127.0.0.1:0"), ("b", "127.0.0.1:0"), ("c", "127.0.0.1:0")])
    b_bind = f"127.0.0.1:{procs[1].port}"
    target = "ipv4:" + ",".join(f"127.0.0.1:{p.port}" for p in procs)
    concurrency = 60
    async with Channel(target, lb_policy="round_robin") as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        run = Run(channel, request=b"0.002")  # 2 ms in the handler: calls are in flight
        run.phase = "before-kill"
        marks: Dict[str, Any] = {}

        async def conductor() -> None:
            await wait_for(lambda: run.done >= 1000, RUN_BOUND, "1000 calls")
            marks["in_flight_at_kill"] = run.in_flight
            killed = replicas.procs["b"].proc
            killed.kill()  # SIGKILL; the event loop keeps running meanwhile
            # Calls started before the client has read the connection's end still go to b
            # (nothing tells it b is gone): they count as in flight on b at the kill.
            run.phase = "b-killed"
            await asyncio.sleep(0.1)
            run.phase = "b-down"
            # At least 300 calls while b is down, however fast the first 0.1 s went.
            down_from = run.done
            await wait_for(
                lambda: run.done >= max(1500, down_from + 300), RUN_BOUND, "calls while b is down"
            )
            run.phase = "b-restarting"
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, killed.wait, 10)
            await replicas.restart("b", b_bind)
            restarted = time.monotonic()
            run.phase = "b-restarted"
            await wait_for(lambda: run.ok("b-restarted")["b"] > 0, RUN_BOUND, "b's first reply")
            marks["rejoin_seconds"] = time.monotonic() - restarted
            run.phase = "b-rejoined"

        def more() -> bool:
            return run.started < 3000 or run.ok("b-rejoined")["b"] < 200

        conduct = asyncio.ensure_future(conductor())
        await run.drive(concurrency, more)
        await asyncio.wait_for(conduct, RUN_BOUND)

    total = run.done
    print(f"\nround_robin kill/restart: {total} calls, {concurrency} in flight")
    for phase in ("before-kill", "b-killed", "b-down", "b-restarting", "b-restarted", "b-rejoined"):
        print(
            f"  {phase:13s} ok per replica {dict(sorted(run.ok(phase).items()))} "
            f"failures {dict(run.failures[phase])}"
        )
    print(
        f"  b answered again {marks['rejoin_seconds']:.2f}s after its restart; "
        f"failed {run.failed()} (in flight at the kill: {marks['in_flight_at_kill']}); "
        f"first details: {run.details[:2]}"
    )
    assert total >= 3000
    # Only calls in flight when b died may fail, and only as UNAVAILABLE.
    assert run.failed() <= marks["in_flight_at_kill"], run.details[:5]
    for phase, codes in run.failures.items():
        assert set(codes) <= {"UNAVAILABLE"}, (phase, run.details[:5])
        if phase not in ("before-kill", "b-killed"):
            assert sum(codes.values()) == 0, (phase, run.details[:5])
    # While b was down nothing was answered by b; a and c took every call.
    assert run.ok("b-down")["b"] == 0
    assert run.ok("b-down")["a"] > 0 and run.ok("b-down")["c"] > 0
    # b rejoined and received its share of calls again.
    rejoined = run.ok("b-rejoined")
    assert rejoined["b"] >= 200
    assert rejoined["b"] > 0.25 * sum(rejoined.values()), dict(rejoined)
    before = run.ok("before-kill")
    assert min(before.values()) > 0.25 * sum(before.values()), dict(before)


async def test_round_robin_skips_a_dead_address_and_fails_only_when_none_ready(
    replicas: Replicas,
) -> None:
    live = replicas.start("live")
    dead = _dead_port()
    target = f"ipv4:127.0.0.1:{dead},127.0.0.1:{live.port}"
    async with Channel(target, lb_policy="round_robin", connect_timeout=2.0) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        run = Run(channel)
        await run.calls(300, concurrency=20)
        assert run.failed() == 0, run.details[:5]
        assert run.ok() == {"live": 300}
        live.kill()
        rpc = channel.unary_unary(WHO)
        started = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(rpc(b"", timeout=1.0), 5.0)
        assert time.monotonic() - started < 3.0
        assert info.value.code() in (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED)


async def test_round_robin_channel_ready_fails_when_every_address_is_down() -> None:
    target = f"ipv4:127.0.0.1:{_dead_port()},127.0.0.1:{_dead_port()}"
    async with Channel(target, lb_policy="round_robin", connect_timeout=5.0) as channel:
        started = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(channel.channel_ready(), 10)
        assert info.value.code() == StatusCode.UNAVAILABLE
        assert "failed to connect to 127.0.0.1:" in info.value.details()
        assert time.monotonic() - started < 2.0  # every address was tried once: no need to wait


# ------------------------------------------------------------------------- pick_first


async def test_pick_first_fails_over_to_the_next_address(trio: List[HelperProcess]) -> None:
    target = f"ipv4:127.0.0.1:{_dead_port()},127.0.0.1:{trio[1].port}"
    async with Channel(target) as channel:  # pick_first is the default
        run = Run(channel)
        await run.calls(200, concurrency=20)
    assert run.failed() == 0, run.details[:5]
    assert run.ok() == {"b": 200}


async def test_pick_first_sticks_to_one_address_then_moves_when_it_dies(
    replicas: Replicas, trio: List[HelperProcess]
) -> None:
    first = replicas.start("first")
    target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{trio[2].port}"
    async with Channel(target, lb_policy="pick_first") as channel:
        run = Run(channel)
        await run.calls(300, concurrency=20)
        assert run.ok() == {"first": 300}, run.details[:5]
        first.kill()
        run.phase = "after"
        await run.calls(600, concurrency=20)
    assert run.ok("after") == {"c": 300}, (dict(run.ok("after")), run.details[:5])
    assert run.failed() == 0, run.details[:5]


# --------------------------------------------------------------- multi-address targets


async def test_ipv6_target_with_two_addresses_round_robin(replicas: Replicas) -> None:
    procs = replicas.start_many([("v6a", "[::1]:0"), ("v6b", "[::1]:0")])
    target = "ipv6:" + ",".join(f"[::1]:{p.port}" for p in procs)
    async with Channel(target, lb_policy="round_robin") as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        run = Run(channel)
        await run.calls(1000, concurrency=50)
    assert run.failed() == 0, run.details[:5]
    assert_share(run.ok(), ["v6a", "v6b"], 1000)


async def test_ipv4_target_with_several_addresses_pick_first_uses_the_first(
    trio: List[HelperProcess],
) -> None:
    target = "ipv4:" + ",".join(f"127.0.0.1:{p.port}" for p in trio)
    async with Channel(target) as channel:
        run = Run(channel)
        await run.calls(100, concurrency=10)
    assert run.ok() == {"a": 100}, run.details[:5]


def _loopback_addresses_of_localhost() -> List[str]:
    infos = socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)
    out: List[str] = []
    for info in infos:
        host = str(info[4][0])
        if host not in out and (host.startswith("127.") or host == "::1"):
            out.append(host)
    return out


async def test_localhost_name_round_robin_over_every_address_it_resolves_to(
    headless: Tuple[int, List[str]],
) -> None:
    """``localhost:PORT``: every address the system resolves localhost to gets calls."""
    port, _ = headless
    hosts = _loopback_addresses_of_localhost()
    assert hosts, "localhost resolves to no loopback address"
    async with Channel(f"localhost:{port}", lb_policy="round_robin") as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        run = Run(channel)
        await run.calls(300 * len(hosts), concurrency=30)
    assert run.failed() == 0, run.details[:5]
    assert_share(run.ok(), hosts, 300 * len(hosts))


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class FakeDns:
    """Makes the event loop resolve ``name`` to ``addresses`` (a headless service)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.name = name
        self.addresses: List[str] = []
        self.lookups = 0
        loop = asyncio.get_running_loop()
        original = type(loop).getaddrinfo

        async def getaddrinfo(self_loop: Any, host: Any, port: Any, *args: Any, **kw: Any) -> Any:
            if host != name:
                return await original(self_loop, host, port, *args, **kw)
            fake.lookups += 1
            out = []
            for addr in fake.addresses:
                if ":" in addr:
                    out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, port, 0, 0)))
                else:
                    out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port)))
            if not out:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return out

        fake = self
        monkeypatch.setattr(type(loop), "getaddrinfo", getaddrinfo)


async def test_dns_name_resolving_to_three_addresses_round_robin(
    headless: Tuple[int, List[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A headless service: one name, three replica IPs on one port."""
    port, _ = headless
    dns = FakeDns(monkeypatch, "workers.headless.test")
    dns.addresses = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    async with Channel(f"dns:///workers.headless.test:{port}", lb_policy="round_robin") as ch:
        await asyncio.wait_for(ch.channel_ready(), 10)
        run = Run(ch)
        await run.calls(1500, concurrency=60)
    assert run.failed() == 0, run.details[:5]
    assert_share(run.ok(), dns.addresses, 1500)


async def test_dns_reresolved_when_connections_fail(
    replicas: Replicas, headless: Tuple[int, List[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only resolved replica dies and the name now points elsewhere: calls move there."""
    monkeypatch.setattr(resolver_mod, "_RESOLVE_MIN_INTERVAL", 0.2)
    port, _ = headless
    old = replicas.start("127.0.0.4", f"127.0.0.4:{port}")
    dns = FakeDns(monkeypatch, "workers.headless.test")
    dns.addresses = ["127.0.0.4"]
    async with Channel(
        f"workers.headless.test:{port}", lb_policy="round_robin", wait_for_ready=True
    ) as channel:
        run = Run(channel)
        await run.calls(100, concurrency=10)
        assert run.ok() == {"127.0.0.4": 100}, run.details[:5]
        lookups = dns.lookups
        dns.addresses = ["127.0.0.2"]  # the replica was rescheduled to a new IP
        old.kill()
        run.phase = "moved"
        await run.drive(10, lambda: run.ok("moved")["127.0.0.2"] < 100)
    assert dns.lookups > lookups
    assert set(run.ok("moved")) == {"127.0.0.2"}
    assert run.failed() <= 10, run.details[:5]  # at most the calls in flight on the dead one


async def test_dns_reresolved_at_an_interval_picks_up_new_replicas(
    headless: Tuple[int, List[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resolver_mod, "_RESOLVE_INTERVAL", 0.3)
    port, _ = headless
    dns = FakeDns(monkeypatch, "workers.headless.test")
    dns.addresses = ["127.0.0.1"]
    async with Channel(
        f"workers.headless.test:{port}", lb_policy="round_robin", wait_for_ready=True
    ) as channel:
        run = Run(channel)
        await run.calls(50, concurrency=5)
        dns.addresses = ["127.0.0.1", "127.0.0.2"]  # scaled out: a second replica
        run.phase = "scaled"
        deadline = time.monotonic() + 10.0
        await run.drive(
            10,
            lambda: run.ok("scaled")["127.0.0.2"] < 50 and time.monotonic() < deadline,
        )
        assert run.ok("scaled")["127.0.0.2"] >= 50, dict(run.ok("scaled"))
        dns.addresses = ["127.0.0.2"]  # scaled in: the first one leaves the answer
        await asyncio.sleep(0.5)
        run.phase = "scaled-in"
        await run.calls(run.started + 100, concurrency=10)
    assert run.failed() == 0, run.details[:5]
    assert run.ok("scaled-in") == {"127.0.0.2": 100}


async def test_dns_failure_fails_calls_at_their_deadline_with_the_resolver_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dns = FakeDns(monkeypatch, "nowhere.headless.test")  # answers nothing: NXDOMAIN
    async with Channel(
        "nowhere.headless.test:9000", lb_policy="round_robin", wait_for_ready=True
    ) as channel:
        rpc = channel.unary_unary(WHO)
        started = time.monotonic()
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(rpc(b"", timeout=0.8), 5.0)
        assert 0.7 < time.monotonic() - started < 3.0
        assert info.value.code() == StatusCode.UNAVAILABLE
        assert "DNS resolution failed for nowhere.headless.test:9000" in info.value.details()
        assert dns.lookups >= 1
        with pytest.raises(GrpcError) as ready:
            await asyncio.wait_for(channel.channel_ready(), 5.0)
        assert ready.value.code() == StatusCode.UNAVAILABLE


async def test_close_during_the_first_resolution_ends_waiting_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    original = type(loop).getaddrinfo

    async def slow_getaddrinfo(self_loop: Any, host: Any, *args: Any, **kw: Any) -> Any:
        if host == "slow.headless.test":
            await asyncio.sleep(30)
        return await original(self_loop, host, *args, **kw)

    monkeypatch.setattr(type(loop), "getaddrinfo", slow_getaddrinfo)
    channel = Channel("slow.headless.test:9000", lb_policy="round_robin")
    rpc = channel.unary_unary(WHO)
    call = asyncio.ensure_future(rpc(b"", timeout=20.0))
    await asyncio.sleep(0.1)
    await asyncio.wait_for(channel.close(), 5.0)
    with pytest.raises(GrpcError) as info:
        await asyncio.wait_for(call, 5.0)
    assert info.value.code() == StatusCode.CANCELLED
