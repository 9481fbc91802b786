"""A channel's connections: subchannels, picking, reconnect with backoff, re-resolution.

The pool never opens a socket itself. It is handed ``connect(addresses)``, a coroutine
function that returns a connection which has completed the HTTP/2 preface (``addresses``
is None for "the whole target"), and, under round_robin, ``resolve()``. Under
``pick_first`` one subchannel dials the target; under ``round_robin`` there is one per
resolved address (``aio.resolver`` keeps a DNS answer fresh). :meth:`Pool.assign` is the
one place a call gets its connection.

Per-event-loop and per-process state (connections, tasks, timers, futures) is reset in one
place, :meth:`Pool._reset`: when the pool is used from another event loop (a new
``asyncio.run()``) and in a forked child, whose inherited connections belong to the parent
and are dropped without touching their sockets.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, List, Optional, Protocol, Set, Tuple, TypeVar

from ..errors import GrpcError
from ..protocol.status import StatusCode
from .dial import ConnectError
from .resolver import Resolver

__all__ = ["Backoff", "Connection", "Pool", "Subchannel", "SubchannelState"]

logger = logging.getLogger(__name__)

Address = Tuple[str, int]

# A call without a deadline waits connect_timeout for a connection, plus this moment so
# that the attempt it joined can finish and report its own error first.
_CONNECT_REPORT_GRACE = 0.5

# Bumped in a forked child: every connection made before the fork belongs to the parent.
_fork_generation = [0]


def _after_fork_in_child() -> None:
    _fork_generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# Connections a fork orphaned, kept referenced for the child's lifetime: garbage collection
# must never close (or write to) their sockets from the child, the parent still uses them.
_fork_orphans: List[Any] = []


class Connection(Protocol):
    """What the pool uses of a connection (``aio.connection.ClientConnection`` has it)."""

    closed: asyncio.Future[None]  # resolves once the transport is gone
    proven: bool  # the server answered a request on it
    goaway_reason: str
    on_idle: Optional[Callable[[Any], None]]  # called when its last call ends

    @property
    def usable(self) -> bool:
        """True while new calls may start on it (no GOAWAY, no fatal error)."""

    @property
    def error(self) -> Optional[GrpcError]:
        """Its sticky fatal error, if it failed."""

    def close(self) -> None:
        """Send GOAWAY and close; calls still open on it fail."""

    def abandon(self) -> None:
        """Forget it without touching its socket (it belongs to another loop or process)."""

    def pending_futures(self) -> List[asyncio.Future[Any]]:
        """Futures of the calls open or queued on it."""

    def goaway_and_drain(self) -> None:
        """Take no more calls; close once the open ones finish."""

    def input_pending(self) -> bool:
        """True when it is idle and its socket has unread input (EOF or GOAWAY, likely)."""


C = TypeVar("C", bound=Connection)


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: gRPC's connection backoff, with a shorter start for fast restarts."""

    initial: float = 0.25
    multiplier: float = 1.6
    jitter: float = 0.2
    maximum: float = 30.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt in a row (1 or more)."""
        base = min(self.initial * self.multiplier ** (failures - 1), self.maximum)
        return base * (1 + random.uniform(-self.jitter, self.jitter))


class SubchannelState(enum.Enum):
    """What the load balancer knows of a subchannel."""

    IDLE = "idle"  # never tried (or reset for a new event loop or process)
    CONNECTING = "connecting"  # an attempt is running, or about to after backoff
    READY = "ready"  # connected; the connection's ``usable`` says whether it takes calls
    TRANSIENT_FAILURE = "transient_failure"  # the last attempt failed
    SHUTDOWN = "shutdown"  # the address left the resolver's answer, or the pool closed


class Subchannel(Generic[C]):
    """One connection slot: its addresses, its live connection and its reconnect loop."""

    def __init__(self, pool: Pool[C], addresses: Optional[List[Address]]) -> None:
        self.pool = pool
        self.addresses = addresses  # None: dial the whole target on each attempt
        self.state = SubchannelState.IDLE
        self.conn: Optional[C] = None
        self.task: Optional[asyncio.Task[None]] = None
        self.last_error: Optional[GrpcError] = None
        self.failures = 0
        self.next_attempt = 0.0
        self.waiters = 0  # calls waiting in Pool.assign() while this subchannel is tried
        self.keep_trying = False  # round_robin reconnects its addresses with nobody waiting

    def usable(self) -> Optional[C]:
        """The connection, if it takes calls now."""
        conn = self.conn
        return conn if conn is not None and conn.usable else None

    def connect_soon(self) -> None:
        """Start the reconnect loop unless it runs (or sleeps in backoff) already."""
        task = self.task
        if (task is None or task.done()) and self.state is not SubchannelState.SHUTDOWN:
            self.state = SubchannelState.CONNECTING
            self.task = asyncio.get_running_loop().create_task(self._connect_loop())

    def shutdown(self) -> None:
        """Stop reconnecting; the connection finishes its calls, then closes."""
        self.state = SubchannelState.SHUTDOWN
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.conn is not None:
            self.conn.goaway_and_drain()

    def reset(self) -> None:
        """Forget the connection and loop of another event loop or process."""
        self.conn = None
        self.task = None
        self.failures = 0
        self.next_attempt = 0.0
        if self.state is not SubchannelState.SHUTDOWN:
            self.state = SubchannelState.IDLE

    def _count_failure(self) -> float:
        self.failures += 1
        delay = self.pool.backoff.delay(self.failures)
        self.next_attempt = time.monotonic() + delay
        return delay

    async def _connect_loop(self) -> None:
        pool = self.pool
        previous = self.conn
        if previous is not None and not previous.proven:
            # The last connection died before the server answered anything on it (e.g. a
            # server that completes the preface, then hangs up): count it as a failed
            # attempt, or a reconnect storm follows.
            self._count_failure()
        elif previous is not None:
            self.failures = 0  # it served calls: reconnect at once
            self.next_attempt = 0.0
        while not pool.closed and self.state is not SubchannelState.SHUTDOWN:
            delay = self.next_attempt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.state = SubchannelState.CONNECTING
            try:
                try:
                    conn = await pool._connect(self.addresses)
                except (GrpcError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    # A bug of ours (or of the event loop's transports) must cost this
                    # attempt only, and be visible; the calls waiting for a connection must
                    # not wait out their deadlines on a connect loop that died.
                    logger.exception("internal error while connecting to %s", pool._target)
                    raise ConnectError(
                        f"failed to connect to {pool._target}: internal error: "
                        f"{type(exc).__name__}: {exc}"
                    ) from None
            except GrpcError as exc:
                self.last_error = exc
                delay = self._count_failure()
                self.state = SubchannelState.TRANSIENT_FAILURE
                logger.debug("connect failed (%s); next attempt in %.2fs", exc.details(), delay)
                if pool._resolver is not None:
                    pool._resolver.request()
                pool._notify()
                if self.waiters == 0 and not self.keep_trying:
                    return
                continue
            if pool.closed or self.state is SubchannelState.SHUTDOWN:
                conn.close()
                return
            conn.on_idle = pool._close_when_drained
            pool._conns.add(conn)
            self.conn = conn
            self.next_attempt = 0.0
            self.last_error = None
            self.state = SubchannelState.READY
            pool._notify()
            return


def _permanent(sub: Subchannel[Any]) -> bool:
    """The subchannel's last attempt failed in a way reconnecting cannot fix."""
    error = sub.last_error
    return isinstance(error, ConnectError) and error.permanent


class Pool(Generic[C]):
    """The connections of one channel and the policy that picks one for each call.

    ``lb_policy`` is ``"pick_first"`` (one subchannel for the whole target: the first
    address that connects, kept until it fails) or ``"round_robin"`` (with ``resolve``:
    one subchannel per address, calls spread over the ready ones, every address kept
    connected). ``reresolve`` re-runs ``resolve`` at an interval and after failures (for
    DNS names). ``target`` names the target in error messages.
    """

    def __init__(
        self,
        connect: Callable[[Optional[List[Address]]], Awaitable[C]],
        *,
        target: str,
        lb_policy: str = "pick_first",
        resolve: Optional[Callable[[], Awaitable[List[Address]]]] = None,
        reresolve: bool = False,
        connect_timeout: float = 20.0,
        backoff: Optional[Backoff] = None,
    ) -> None:
        self._connect = connect
        self._target = target
        self._round_robin = lb_policy == "round_robin"
        self._resolver: Optional[Resolver] = None
        if resolve is not None and self._round_robin:
            self._resolver = Resolver(
                resolve,
                target=target,
                periodic=reresolve,
                on_addresses=self._set_addresses,
                on_done=self._notify,
            )
        self._connect_timeout = connect_timeout
        self.backoff = backoff or Backoff()
        self._closed = False
        self._subchannels: List[Subchannel[C]] = []
        self._rr_index = 0
        self._conns: Set[C] = set()
        # Bound to the event loop in self._loop, and to this process: see _reset().
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._fork_gen = _fork_generation[0]
        self._changed: Optional[asyncio.Future[None]] = None

    # ------------------------------------------------------------------ public

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def subchannels(self) -> Tuple[Subchannel[C], ...]:
        """The current subchannels (one per address under round_robin)."""
        return tuple(self._subchannels)

    def connections(self) -> Tuple[C, ...]:
        """Every live connection, draining ones included."""
        return tuple(self._conns)

    def pick_now(self, loop: asyncio.AbstractEventLoop) -> Optional[C]:
        """A connection ready for a call right now, or None: then ``await assign()``.

        The hot path of every call: no await, no allocation. None whenever assign() has
        work to do (another event loop or a forked child, no usable connection, unread
        input on an idle connection).
        """
        if self._closed or self._loop is not loop or self._fork_gen != _fork_generation[0]:
            return None
        if self._round_robin:
            conn = self._pick()
        else:  # pick_first, inline: the common case pays for no extra call
            subs = self._subchannels
            conn = subs[0].conn if subs else None
            if conn is not None and not conn.usable:
                return None
        if conn is None or conn.input_pending():
            return None
        return conn

    async def assign(self, deadline: Optional[float] = None, *, fail_fast: bool = False) -> C:
        """The connection for one call, connecting (or reconnecting) as needed.

        Waits until ``deadline`` (event-loop time), or ``connect_timeout`` when None; a
        permanent connect error (TLS, not HTTP/2) on every subchannel fails at once.
        ``fail_fast`` fails as soon as every subchannel's last attempt failed, instead of
        waiting through reconnects. Every error says the request was never sent
        (``request_sent=False``): UNAVAILABLE with the last connect error,
        DEADLINE_EXCEEDED, or CANCELLED once the pool is closed.
        """
        loop = asyncio.get_running_loop()
        if self._stale(loop):
            self._reset(loop)
        conn = self._pick() if not self._closed else None
        if conn is None:
            conn = await self._wait(loop, deadline, fail_fast=fail_fast)
        if conn.input_pending():
            # An idle connection with unread input: let the loop read it (EOF, GOAWAY)
            # before a request is written that would be lost with the connection.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            conn = self._pick() or await self._wait(loop, deadline, fail_fast=fail_fast)
        return conn

    async def ready(self) -> C:
        """Try every subchannel once (within ``connect_timeout``); a ready connection.

        Returns only once each subchannel is ready or has failed, so a burst of calls that
        follows spreads over every address; UNAVAILABLE if none connected.
        """
        loop = asyncio.get_running_loop()
        if self._stale(loop):
            self._reset(loop)
        return await self._wait(loop, None, fail_fast=True, try_all=True)

    async def close(self, grace: Optional[float] = None) -> None:
        """Refuse new calls; let open calls finish within ``grace``; close every connection."""
        if self._closed:
            return
        self._closed = True
        if self._stale(asyncio.get_running_loop()):
            # Connections, timers and tasks of another event loop (a finished asyncio.run(),
            # or the parent before a fork) cannot be touched from this one: drop them.
            self._reset(None)
            self._subchannels = []
            return
        if self._resolver is not None:
            self._resolver.stop()
        self._notify()
        for sub in self._subchannels:
            sub.state = SubchannelState.SHUTDOWN
            if sub.task is not None and not sub.task.done():
                sub.task.cancel()
        conns = list(self._conns)
        if grace is not None and grace > 0:
            pending = [f for c in conns for f in c.pending_futures()]
            if pending:
                await asyncio.wait(pending, timeout=grace)
        for conn in conns:
            conn.close()
        waits = [c.closed for c in conns if not c.closed.done()]
        if waits:
            await asyncio.wait(waits, timeout=1.0)
        tasks = [s.task for s in self._subchannels if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        self._conns.clear()

    # --------------------------------------------------------------- picking

    def _pick(self) -> Optional[C]:
        """A usable connection now, or None (the hot path: no awaits, no allocations)."""
        subs = self._subchannels
        if not self._round_robin:
            if subs:
                conn = subs[0].conn
                if conn is not None and conn.usable:
                    return conn
            return None
        count = len(subs)
        for _ in range(count):
            index = self._rr_index = (self._rr_index + 1) % count
            sub = subs[index]
            conn = sub.conn
            if conn is not None and conn.usable:
                return conn
            if sub.keep_trying:
                sub.connect_soon()  # failed or drained by GOAWAY: reconnect it meanwhile
        return None

    async def _wait(
        self,
        loop: asyncio.AbstractEventLoop,
        deadline: Optional[float],
        *,
        fail_fast: bool,
        try_all: bool = False,
    ) -> C:
        """Wait (bounded) for a usable connection; ``try_all``: until each subchannel was tried."""
        limit = (
            deadline
            if deadline is not None
            else loop.time() + self._connect_timeout + _CONNECT_REPORT_GRACE
        )
        while True:
            if self._closed:
                raise GrpcError(StatusCode.CANCELLED, "channel is closed", request_sent=False)
            ready = self._pick()
            if ready is not None and not try_all:
                return ready
            try:
                await self._ensure_subchannels()
            except GrpcError as exc:
                if fail_fast or loop.time() >= limit:
                    raise GrpcError(exc.code(), exc.details(), request_sent=False) from None
                await asyncio.sleep(min(self.backoff.initial, max(limit - loop.time(), 0)))
                continue
            subs = self._subchannels
            for sub in subs:
                if sub.usable() is None:
                    sub.connect_soon()
            ready = self._pick()
            failed = [s.state is SubchannelState.TRANSIENT_FAILURE for s in subs]
            if try_all:
                tried = all(f or s.usable() is not None for f, s in zip(failed, subs))
                if tried or loop.time() >= limit:
                    if ready is not None:
                        return ready
                    raise self._unavailable(had_deadline=False)
            elif ready is not None:
                return ready
            elif subs and all(failed) and (fail_fast or all(map(_permanent, subs))):
                # Failing fast, or TLS / protocol failures that waiting cannot mend.
                raise self._unavailable(had_deadline=False)
            remaining = limit - loop.time()
            if remaining <= 0:
                raise self._unavailable(had_deadline=deadline is not None)
            changed = self._changed
            if changed is None:
                changed = self._changed = loop.create_future()
            for sub in subs:
                sub.waiters += 1
            try:
                await asyncio.wait((changed,), timeout=remaining)
            finally:
                for sub in subs:
                    sub.waiters -= 1

    def _unavailable(self, *, had_deadline: bool) -> GrpcError:
        errors = [s.last_error for s in self._subchannels if s.last_error is not None]
        where = self._target
        if errors:
            details = f"no connection to {where}; last connect error: {errors[-1].details()}"
            return GrpcError(StatusCode.UNAVAILABLE, details, request_sent=False)
        if had_deadline:
            details = f"Deadline Exceeded while waiting for a connection to {where}"
            return GrpcError(StatusCode.DEADLINE_EXCEEDED, details, request_sent=False)
        details = f"no connection to {where} within connect_timeout {self._connect_timeout:g}s"
        return GrpcError(StatusCode.UNAVAILABLE, details, request_sent=False)

    def _notify(self) -> None:
        """Wake the calls waiting for a connection: a subchannel or the address list changed."""
        changed = self._changed
        if changed is not None:
            self._changed = None
            if not changed.done():
                changed.set_result(None)

    def _close_when_drained(self, conn: C) -> None:
        """A connection with no calls left that can take no more (GOAWAY, error) is closed."""
        if not conn.usable:
            self._conns.discard(conn)
            if conn.error is None:
                conn.close()

    def _stale(self, loop: asyncio.AbstractEventLoop) -> bool:
        """True when the pool's state belongs to another event loop or to the parent process."""
        return self._loop is not loop or self._fork_gen != _fork_generation[0]

    def _reset(self, loop: Optional[asyncio.AbstractEventLoop]) -> None:
        """Drop what belongs to another event loop or, after a fork, to the parent process.

        Connections are abandoned (their sockets untouched), timers, tasks and futures
        forgotten, subchannels back to IDLE with a fresh backoff; the addresses are kept.
        """
        forked = self._fork_gen != _fork_generation[0]
        for conn in self._conns:
            conn.abandon()
            if forked:
                _fork_orphans.append(conn)
        self._conns = set()
        for sub in self._subchannels:
            sub.reset()
        if self._resolver is not None:
            self._resolver.reset(loop)
        self._changed = None
        self._fork_gen = _fork_generation[0]
        self._loop = loop

    # ----------------------------------------------------------- subchannels

    async def _ensure_subchannels(self) -> None:
        """One subchannel for the whole target, or (round_robin) one per resolved address.

        round_robin resolves once here; afterwards the resolver keeps the list fresh.
        """
        resolver = self._resolver
        if resolver is None:
            if not self._subchannels:
                self._subchannels = [Subchannel(self, None)]
            return
        if self._subchannels:
            return
        task = resolver.start()
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # the caller was cancelled
            raise GrpcError(StatusCode.CANCELLED, "channel is closed", request_sent=False) from None
        if not self._subchannels:
            raise resolver.error or GrpcError(
                StatusCode.UNAVAILABLE, f"{self._target} resolved to no address", request_sent=False
            )

    def _set_addresses(self, addresses: List[Address]) -> None:
        """One subchannel per address: keep known ones, start new ones, shut down the gone."""
        if self._closed:
            return
        known = {tuple(s.addresses or ()): s for s in self._subchannels}
        subs = []
        for address in addresses:
            sub = known.pop((address,), None) or Subchannel(self, [address])
            sub.keep_trying = True
            subs.append(sub)
        for stale in known.values():
            logger.info("an address of %s left its DNS answer", self._target)
            stale.shutdown()
        had = bool(self._subchannels)
        self._subchannels = subs
        if had:
            # Connect new addresses now (round_robin keeps every address connected).
            for sub in subs:
                if sub.task is None and sub.conn is None:
                    sub.connect_soon()
