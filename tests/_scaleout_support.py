"""Shared by the scale-out and balancer tests: replica processes and a call driver.

A replica is ``h2_replica.py`` (our ``wove_h2grpc.Server``) in its own process, so a test can
SIGKILL it and restart it on the same address. ``Run`` keeps N calls of ``/test.Test/Who`` in
flight and counts the replies per replica name and the failures per status code.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from _support import HelperProcess, start_helper

from wove_h2grpc import Channel, GrpcError

WHO = "/test.Test/Who"
CALL_TIMEOUT = 5.0
RUN_BOUND = 40.0  # seconds any one driven run may take before the test fails


class Replicas:
    """Replica processes started by one test; all stopped at its end."""

    def __init__(self) -> None:
        self.procs: Dict[str, HelperProcess] = {}

    def start(self, name: str, bind: str = "127.0.0.1:0", *extra: str) -> HelperProcess:
        proc = start_helper(
            "h2_replica.py",
            ["--bind", bind, "--name", name, *extra],
            python=sys.executable,
            timeout=30,
        )
        self.procs[name] = proc
        return proc

    def start_many(self, specs: Sequence[Tuple[str, ...]]) -> List[HelperProcess]:
        """Start several replicas in parallel (process start-up dominates)."""
        with concurrent.futures.ThreadPoolExecutor(len(specs)) as pool:
            return list(pool.map(lambda spec: self.start(*spec), specs))

    async def restart(self, name: str, bind: str) -> HelperProcess:
        """Start ``name`` again (same address) without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.start, name, bind)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop(timeout=5)


class Run:
    """Drives ``total`` calls of ``/test.Test/Who`` with ``concurrency`` in flight.

    Each call is tagged with ``phase`` as it was when the call *started*; ``split`` counts
    OK replies per phase and replica, ``failures`` failed calls per phase and status code.
    """

    def __init__(self, channel: Channel, request: bytes = b"") -> None:
        self.rpc = channel.unary_unary(WHO)
        self.request = request
        self.phase = "run"
        self.started = 0
        self.done = 0
        self.in_flight = 0
        self.split: Dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.failures: Dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.details: List[str] = []  # "CODE: details" of every failed call

    async def _one(self) -> None:
        phase = self.phase
        self.started += 1
        self.in_flight += 1
        try:
            who = await asyncio.wait_for(
                self.rpc(self.request, timeout=CALL_TIMEOUT), CALL_TIMEOUT + 2.0
            )
        except GrpcError as exc:
            self.failures[phase][exc.code().name] += 1
            self.details.append(f"{exc.code().name}: {exc.details()}")
        else:
            self.split[phase][who.decode()] += 1
        finally:
            self.in_flight -= 1
            self.done += 1

    async def drive(self, concurrency: int, more: Callable[[], bool]) -> None:
        """Keep ``concurrency`` calls in flight while ``more()`` says so (bounded in time)."""

        async def worker() -> None:
            while more():
                await self._one()

        workers = [worker() for _ in range(concurrency)]
        await asyncio.wait_for(asyncio.gather(*workers), RUN_BOUND)

    async def calls(self, total: int, concurrency: int) -> None:
        """Exactly ``total`` calls."""
        await self.drive(concurrency, lambda: self.started < total)

    def ok(self, phase: Optional[str] = None) -> collections.Counter[str]:
        if phase is not None:
            return self.split[phase]
        out: collections.Counter[str] = collections.Counter()
        for counts in self.split.values():
            out.update(counts)
        return out

    def failed(self) -> int:
        return sum(sum(c.values()) for c in self.failures.values())


def assert_share(counts: collections.Counter[str], names: Sequence[str], total: int) -> None:
    share = total / len(names)
    for name in names:
        assert abs(counts[name] - share) <= 0.05 * share, (
            f"{name} got {counts[name]} of {total} calls, expected {share:.0f} +- 5%: "
            f"{dict(counts)}"
        )
    assert sum(counts.values()) == total, dict(counts)


async def wait_for(predicate: Callable[[], bool], bound: float, what: str) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {bound}s waiting for {what}")
        await asyncio.sleep(0.01)
