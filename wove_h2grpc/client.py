"""The public client: ``Channel`` and its unary callable (API.md "Client").

The channel owns connections (one per address under ``round_robin``, one in all under
``pick_first``), reconnects them with exponential backoff, retries calls the server
provably never processed (gRFC A6), enforces deadlines locally and starts afresh in a
forked child. The wire work happens in ``connection.ClientConnection``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import random
import ssl
import time
from typing import Any, Callable, Generic, List, Optional, Set, Tuple, TypeVar

from ._version import __version__
from .aio.connection import Call, ClientConnection, ConnectionSettings, RetryCall
from .aio.dial import ConnectError, build_ssl_context, dial, resolve
from .errors import GrpcError
from .protocol.framing import encode_message_prefix, gzip_compress, too_large
from .protocol.metadata import (
    MetadataLike,
    encode_grpc_timeout,
    encode_metadata,
    normalize_metadata,
)
from .protocol.status import StatusCode
from .protocol.target import Target, format_host_port, parse_target

__all__ = ["Channel", "UnaryUnaryMultiCallable"]

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024
_MAX_REFUSED_RETRIES = 3  # bounded transparent retries of refused streams (gRFC A6)
# Reconnect backoff (gRPC connection-backoff.md, with a shorter start for fast restarts).
_BACKOFF_INITIAL = 0.25
_BACKOFF_MULTIPLIER = 1.6
_BACKOFF_JITTER = 0.2
_BACKOFF_MAX = 30.0
_CONNECT_REPORT_GRACE = 0.5
# DNS targets under round_robin: re-resolved this often, and after a connection fails, but
# never more often than _RESOLVE_MIN_INTERVAL (grpc re-resolves on failure too).
_RESOLVE_INTERVAL = 30.0
_RESOLVE_MIN_INTERVAL = 2.0

# Bumped in a forked child: every connection made before the fork belongs to the parent.
_fork_generation = [0]


def _after_fork_in_child() -> None:
    _fork_generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# Connections orphaned by a fork: kept referenced so their sockets are never closed or
# written from the child (the parent still uses them).
_fork_orphans: List[ClientConnection] = []


@dataclasses.dataclass(frozen=True)
class _Options:
    """Validated channel options (API.md table); built once, at construction."""

    target: Target
    ssl_context: Optional[ssl.SSLContext]
    server_hostname: Optional[str]
    authority: bytes
    scheme: bytes
    metadata: Tuple[Tuple[bytes, bytes], ...]
    timeout: Optional[float]
    connect_timeout: float
    keepalive_time: Optional[float]
    keepalive_timeout: float
    max_send_message_length: int
    max_receive_message_length: int
    compression: Optional[str]
    user_agent: bytes
    lb_policy: str
    transparent_retry: bool


def _positive(name: str, value: Any, *, allow_none: bool) -> Optional[float]:
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be a positive number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def _required(name: str, value: Any) -> float:
    seconds = _positive(name, value, allow_none=False)
    if seconds is None:  # unreachable: _positive refuses None here
        raise ValueError(f"{name} is required")
    return seconds


def _length(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (-1 for unlimited), not {type(value).__name__}")
    if value < -1:
        raise ValueError(f"{name} must be >= 0, or -1 for unlimited; got {value}")
    return value


def _compression(value: Any) -> Optional[str]:
    if value is None or value == "identity":
        return None
    if value != "gzip":
        raise ValueError(f"compression must be 'gzip' or None, got {value!r}")
    return "gzip"


class _Subchannel:
    """A connection slot: its addresses, its live connection and its reconnect loop.

    ``state`` is what the load balancer knows of it: ``idle`` (never tried), ``connecting``,
    ``ready`` (a connection was made; check ``usable()`` for whether it still takes calls)
    or ``failed`` (the last attempt failed; under round_robin the loop retries after backoff).
    """

    def __init__(self, channel: Channel, addresses: Optional[List[Tuple[str, int]]]) -> None:
        self.channel = channel
        self.addresses = addresses  # None: resolve the target on each connect
        self.conn: Optional[ClientConnection] = None
        self.task: Optional[asyncio.Task[None]] = None
        self.last_error: Optional[GrpcError] = None
        self.failures = 0
        self.next_attempt = 0.0
        self.waiters = 0
        self.keep_trying = False  # round_robin keeps reconnecting failed addresses
        self.retired = False  # the address left the resolver's answer
        self.state = "idle"

    def usable(self) -> Optional[ClientConnection]:
        conn = self.conn
        if conn is not None and conn.usable:
            return conn
        return None

    def _backoff(self) -> float:
        """Count a failed attempt; the next one waits an exponential, jittered delay."""
        self.failures += 1
        backoff = min(_BACKOFF_INITIAL * _BACKOFF_MULTIPLIER ** (self.failures - 1), _BACKOFF_MAX)
        backoff *= 1 + random.uniform(-_BACKOFF_JITTER, _BACKOFF_JITTER)
        self.next_attempt = time.monotonic() + backoff
        return backoff

    def ensure_connecting(self) -> asyncio.Task[None]:
        task = self.task
        if task is None or task.done():
            self.state = "connecting"
            task = self.task = asyncio.get_running_loop().create_task(self._connect_loop())
        return task

    def kick(self) -> None:
        """Reconnect a round_robin address whose connection failed or got GOAWAY.

        Called by the picker when it skips this address; a no-op while a reconnect loop
        (possibly sleeping in backoff) is already running, or from another event loop.
        """
        channel = self.channel
        if self.retired or channel._closed or not self.keep_trying:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if channel._loop is loop:
            self.ensure_connecting()

    def retire(self) -> None:
        """The address is gone from DNS: stop reconnecting, drain and close its connection."""
        self.retired = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        conn = self.conn
        if conn is not None:
            conn.on_idle = self.channel._close_when_drained
            conn.goaway_and_drain()

    async def _connect_loop(self) -> None:
        channel = self.channel
        previous = self.conn
        if previous is not None and not previous.proven:
            # The last connection died before the server answered anything on it (e.g. a
            # server that completes the preface, then hangs up): count it as a failed
            # attempt, or a reconnect storm follows.
            self._backoff()
        elif previous is not None:
            self.failures = 0  # it served calls: reconnect at once
            self.next_attempt = 0.0
        while not channel._closed and not self.retired:
            delay = self.next_attempt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.state = "connecting"
            try:
                self.conn = await channel._connect(self.addresses)
            except GrpcError as exc:
                self.last_error = exc
                backoff = self._backoff()
                self.state = "failed"
                logger.debug("connect failed (%s); next attempt in %.2fs", exc.details(), backoff)
                channel._request_resolution()
                channel._notify_lb()
                if self.waiters == 0 and not self.keep_trying:
                    return
                continue
            self.next_attempt = 0.0
            self.last_error = None
            self.state = "ready"
            channel._notify_lb()
            return


class Channel:
    """A gRPC channel over one HTTP/2 connection per address (API.md ``Channel``).

    ``Channel(target, *, ...)`` validates every option now (ValueError / TypeError);
    connecting happens on the first call or ``channel_ready()``.
    """

    def __init__(
        self,
        target: str,
        *,
        secure: bool = False,
        root_certificates: Optional[bytes | str] = None,
        private_key: Optional[bytes | str] = None,
        certificate_chain: Optional[bytes | str] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        authority: Optional[str] = None,
        metadata: MetadataLike = None,
        timeout: Optional[float] = None,
        connect_timeout: float = 20.0,
        keepalive_time: Optional[float] = None,
        keepalive_timeout: float = 20.0,
        max_send_message_length: int = -1,
        max_receive_message_length: int = DEFAULT_MAX_RECEIVE,
        compression: Optional[str] = None,
        user_agent: Optional[str] = None,
        lb_policy: str = "pick_first",
        transparent_retry: bool = True,
    ) -> None:
        if ssl_context is not None:
            if not isinstance(ssl_context, ssl.SSLContext):
                raise TypeError("ssl_context must be an ssl.SSLContext")
            secure = True
            ssl_context.set_alpn_protocols(["h2"])
        elif secure:
            ssl_context = build_ssl_context(
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
            )
        elif root_certificates is not None or private_key is not None or certificate_chain:
            raise ValueError("root_certificates / private_key / certificate_chain need secure=True")
        parsed = parse_target(target, secure=bool(secure))
        if lb_policy not in ("pick_first", "round_robin"):
            raise ValueError(f"lb_policy must be 'pick_first' or 'round_robin', got {lb_policy!r}")
        if server_hostname is not None and not isinstance(server_hostname, str):
            raise TypeError("server_hostname must be a str")
        if authority is not None and (not isinstance(authority, str) or not authority):
            raise ValueError("authority must be a non-empty str")
        ua = f"wove_h2grpc/{__version__}"
        if user_agent is not None:
            if not isinstance(user_agent, str) or not user_agent.isprintable():
                raise ValueError("user_agent must be a printable str")
            ua = f"{user_agent} {ua}"
        if not isinstance(transparent_retry, bool):
            raise TypeError("transparent_retry must be a bool")
        default_authority = authority or parsed.authority
        if authority is None and server_hostname and parsed.kind == "tcp":
            # grpcio's ssl_target_name_override also names the :authority.
            default_authority = server_hostname
        self._opts = _Options(
            target=parsed,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            authority=default_authority.encode("ascii"),
            scheme=b"https" if secure else b"http",
            metadata=tuple(encode_metadata(normalize_metadata(metadata))),
            timeout=_positive("timeout", timeout, allow_none=True),
            connect_timeout=_required("connect_timeout", connect_timeout),
            keepalive_time=_positive("keepalive_time", keepalive_time, allow_none=True),
            keepalive_timeout=_required("keepalive_timeout", keepalive_timeout),
            max_send_message_length=_length("max_send_message_length", max_send_message_length),
            max_receive_message_length=_length(
                "max_receive_message_length", max_receive_message_length
            ),
            compression=_compression(compression),
            user_agent=ua.encode("ascii"),
            lb_policy=lb_policy,
            transparent_retry=transparent_retry,
        )
        self._conn_settings = ConnectionSettings(
            max_receive_message_length=self._opts.max_receive_message_length,
            keepalive_time=self._opts.keepalive_time,
            keepalive_timeout=self._opts.keepalive_timeout,
        )
        self._closed = False
        self._subchannels: List[_Subchannel] = []
        self._resolved_at = 0.0
        self._rr_index = 0
        # Load-balancing state bound to the event loop in self._loop (reset when it changes).
        self._resolving: Optional[asyncio.Task[None]] = None
        self._resolve_timer: Optional[asyncio.TimerHandle] = None
        self._resolve_error: Optional[GrpcError] = None
        self._lb_changed: Optional[asyncio.Future[None]] = None
        self._conns: Set[ClientConnection] = set()
        self._fork_gen = _fork_generation[0]
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    # ------------------------------------------------------------- public API

    def unary_unary(
        self,
        method: str,
        request_serializer: Optional[Callable[[Any], bytes]] = None,
        response_deserializer: Optional[Callable[[bytes], Any]] = None,
    ) -> UnaryUnaryMultiCallable[Any, Any]:
        """A callable for one unary method (bytes in, bytes out unless serializers are given)."""
        if not isinstance(method, str) or not method.startswith("/"):
            raise ValueError(f"method must be a path starting with '/', got {method!r}")
        return UnaryUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    async def channel_ready(self) -> None:
        """Connect now (bounded by connect_timeout); GrpcError(UNAVAILABLE) on failure."""
        await self._wait_conn(None, fail_fast=True)

    async def close(self, grace: Optional[float] = None) -> None:
        """Refuse new calls; let in-flight calls finish within ``grace``, then cancel them."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not asyncio.get_running_loop() or self._fork_gen != _fork_generation[0]:
            # Connections, timers and tasks of another event loop (a finished asyncio.run(),
            # or the parent before a fork) cannot be touched from this one: drop them.
            for conn in self._conns:
                conn.abandon()
            self._conns.clear()
            self._subchannels = []
            self._resolve_timer = self._resolving = self._lb_changed = None
            return
        self._stop_lb()
        for sub in self._subchannels:
            if sub.task is not None and not sub.task.done():
                sub.task.cancel()
        conns = [c for c in self._conns if c.pid == os.getpid()]
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

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --------------------------------------------------------------- internals

    def _ready_conn(self) -> Optional[ClientConnection]:
        """The connection for the next call, or None (hot path: no awaits, no allocations)."""
        if self._fork_gen != _fork_generation[0]:
            self._after_fork()
        subs = self._subchannels
        if self._opts.lb_policy == "pick_first":
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
            task = sub.task
            if task is None or task.done():
                sub.kick()  # failed or drained by GOAWAY: reconnect it while the others serve
        return None

    def _after_fork(self) -> None:
        """In a forked child: drop the parent's connections without touching them."""
        self._fork_gen = _fork_generation[0]
        for conn in self._conns:
            conn.abandon()
            _fork_orphans.append(conn)
        self._conns = set()
        for sub in self._subchannels:
            sub.conn = None
            sub.task = None
            sub.failures = 0
            sub.next_attempt = 0.0
        self._loop = None

    async def _ensure_subchannels(self) -> None:
        """Make sure there are subchannels: one for pick_first, one per address for round_robin.

        round_robin resolves the target once here; afterwards a timer (``_RESOLVE_INTERVAL``)
        and failed connections (``_request_resolution``) keep the address list fresh.
        """
        opts = self._opts
        if opts.lb_policy == "pick_first" or opts.target.kind != "tcp":
            if not self._subchannels:
                self._subchannels = [_Subchannel(self, None)]
            return
        if self._subchannels:
            return
        task = self._start_resolution()
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # the caller was cancelled
            raise GrpcError(StatusCode.CANCELLED, "channel is closed") from None
        if not self._subchannels:
            raise self._resolve_error or GrpcError(
                StatusCode.UNAVAILABLE, f"{opts.target.original} resolved to no address"
            )

    def _start_resolution(self) -> asyncio.Task[None]:
        """Resolve the target now (one resolution at a time, shared by every waiter)."""
        task = self._resolving
        if task is None or task.done():
            task = self._resolving = asyncio.get_running_loop().create_task(self._resolve_now())
        return task

    async def _resolve_now(self) -> None:
        """Resolve off the hot path and apply the answer; never raises (errors are kept)."""
        target = self._opts.target
        try:
            addresses = await resolve(target)
        except GrpcError as exc:
            self._resolve_error = exc
            if self._subchannels:
                logger.warning(
                    "re-resolving %s failed (%s); keeping its %d known addresses",
                    target.original,
                    exc.details(),
                    len(self._subchannels),
                )
            addresses = []
        else:
            self._resolve_error = None
        loop = asyncio.get_running_loop()
        self._resolved_at = loop.time()
        if addresses and not self._closed:
            self._set_addresses(addresses)
        if target.needs_resolution and not self._closed:
            self._schedule_resolution(_RESOLVE_INTERVAL if addresses else _RESOLVE_MIN_INTERVAL)
        self._notify_lb()

    def _set_addresses(self, addresses: List[Tuple[str, int]]) -> None:
        """One subchannel per address: keep known ones, start new ones, retire the gone."""
        known = {tuple(s.addresses or ()): s for s in self._subchannels}
        subs = []
        for addr in addresses:
            sub = known.pop((addr,), None) or _Subchannel(self, [addr])
            sub.keep_trying = True
            subs.append(sub)
        for stale in known.values():
            logger.info("an address of %s left its DNS answer", self._opts.target.original)
            stale.retire()
        had = bool(self._subchannels)
        self._subchannels = subs
        if had:
            # Connect new addresses now (round_robin keeps every address connected).
            for sub in subs:
                if sub.task is None and sub.conn is None:
                    sub.ensure_connecting()

    def _schedule_resolution(self, delay: float) -> None:
        """Resolve again after ``delay`` seconds, unless a resolution is due sooner."""
        loop = self._loop
        if loop is None or self._closed:
            return
        timer = self._resolve_timer
        if timer is not None:
            if timer.when() <= loop.time() + delay:
                return
            timer.cancel()
        self._resolve_timer = loop.call_later(delay, self._on_resolve_timer)

    def _on_resolve_timer(self) -> None:
        self._resolve_timer = None
        if not self._closed:
            self._start_resolution()

    def _request_resolution(self) -> None:
        """A connection attempt failed: re-resolve a DNS target soon (rate limited)."""
        opts = self._opts
        loop = self._loop
        if opts.lb_policy != "round_robin" or not opts.target.needs_resolution or loop is None:
            return
        self._schedule_resolution(max(self._resolved_at + _RESOLVE_MIN_INTERVAL - loop.time(), 0))

    def _notify_lb(self) -> None:
        """Wake the calls waiting for a connection: a subchannel or the address list changed."""
        changed = self._lb_changed
        if changed is not None:
            self._lb_changed = None
            if not changed.done():
                changed.set_result(None)

    def _stop_lb(self) -> None:
        """Cancel resolution (channel closed or moved to another event loop); wake waiters."""
        if self._resolve_timer is not None:
            self._resolve_timer.cancel()
            self._resolve_timer = None
        task = self._resolving
        self._resolving = None
        if task is not None and not task.done():
            task.cancel()
        self._notify_lb()

    async def _wait_conn(
        self, deadline: Optional[float], *, fail_fast: bool = False
    ) -> ClientConnection:
        """Wait (bounded) for a usable connection; connect or reconnect as needed.

        A call waits until its deadline, or ``connect_timeout`` when it has none, so a
        restarting server costs only the calls that were in flight; then it fails with
        UNAVAILABLE carrying the last connect error (or DEADLINE_EXCEEDED if none).
        ``fail_fast`` (``channel_ready()``) waits until every address was tried once: it
        returns when one of them is ready, else raises UNAVAILABLE.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                # The channel moved to another event loop (e.g. a new asyncio.run()):
                # connections of the old loop cannot be used from this one.
                for conn in self._conns:
                    conn.abandon()
                self._conns = set()
            # Timers, tasks and futures of the old loop (or of the parent before a fork).
            self._resolve_timer = None
            self._resolving = None
            self._lb_changed = None
            for sub in self._subchannels:
                sub.conn = None
                sub.task = None
                sub.state = "idle"
            self._loop = loop
        # Without a deadline a call waits connect_timeout, plus a moment so that the
        # attempt it joined can finish and report its own error first.
        limit = (
            deadline
            if deadline is not None
            else loop.time() + self._opts.connect_timeout + _CONNECT_REPORT_GRACE
        )
        while True:
            if self._closed:
                raise GrpcError(StatusCode.CANCELLED, "channel is closed")
            ready = self._ready_conn()
            if ready is not None and not fail_fast:
                return ready
            try:
                await self._ensure_subchannels()
            except GrpcError:
                if fail_fast or loop.time() >= limit:
                    raise
                await asyncio.sleep(min(_BACKOFF_INITIAL, max(limit - loop.time(), 0)))
                continue
            subs = self._subchannels
            for sub in subs:
                if sub.usable() is None:
                    sub.ensure_connecting()
            ready = self._ready_conn()
            if fail_fast:
                tried = all(s.state == "failed" or s.usable() is not None for s in subs)
                if tried or loop.time() >= limit:
                    if ready is not None:
                        return ready
                    raise self._unavailable(False)
            elif ready is not None:
                return ready
            elif subs and all(
                s.state == "failed"
                and isinstance(s.last_error, ConnectError)
                and s.last_error.permanent
                for s in subs
            ):
                raise self._unavailable(False)  # TLS or protocol failure: waiting cannot help
            remaining = limit - loop.time()
            if remaining <= 0:
                raise self._unavailable(deadline is not None)
            changed = self._lb_changed
            if changed is None:
                changed = self._lb_changed = loop.create_future()
            for sub in subs:
                sub.waiters += 1
            try:
                await asyncio.wait((changed,), timeout=remaining)
            finally:
                for sub in subs:
                    sub.waiters -= 1

    def _unavailable(self, had_deadline: bool) -> GrpcError:
        errors = [s.last_error for s in self._subchannels if s.last_error is not None]
        where = self._opts.target.original
        if errors:
            return GrpcError(
                StatusCode.UNAVAILABLE,
                f"no connection to {where}; last connect error: {errors[-1].details()}",
                request_sent=False,
            )
        if had_deadline:
            return GrpcError(
                StatusCode.DEADLINE_EXCEEDED,
                f"Deadline Exceeded while waiting for a connection to {where}",
                request_sent=False,
            )
        return GrpcError(
            StatusCode.UNAVAILABLE,
            f"no connection to {where} within connect_timeout {self._opts.connect_timeout:g}s",
            request_sent=False,
        )

    async def _connect(self, addresses: Optional[List[Tuple[str, int]]]) -> ClientConnection:
        """Dial the addresses in order until one completes the HTTP/2 preface."""
        opts = self._opts
        target = opts.target
        loop = asyncio.get_running_loop()
        deadline = loop.time() + opts.connect_timeout
        if target.kind != "tcp":
            candidates: List[Optional[Tuple[str, int]]] = [None]
        else:
            candidates = list(addresses if addresses is not None else await resolve(target))
        last: Optional[GrpcError] = None
        for address in candidates:
            peer = target.original if address is None else format_host_port(*address)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                transport, protocol = await dial(
                    target,
                    address,
                    functools.partial(ClientConnection, loop, self._conn_settings, peer),
                    ssl_context=opts.ssl_context,
                    server_hostname=opts.server_hostname,
                    timeout=remaining,
                )
            except GrpcError as exc:
                last = exc
                continue
            conn = protocol
            if not isinstance(conn, ClientConnection):  # pragma: no cover - factory contract
                transport.close()
                raise TypeError("unexpected protocol")
            try:
                await asyncio.wait_for(asyncio.shield(conn.ready), deadline - loop.time())
            except asyncio.TimeoutError:
                conn.close()
                last = GrpcError(
                    StatusCode.UNAVAILABLE,
                    f"failed to connect to {peer}: no HTTP/2 SETTINGS from the server within "
                    f"connect_timeout {opts.connect_timeout:g}s (is it an HTTP/2 gRPC server?)",
                )
                continue
            except GrpcError as exc:
                last = ConnectError(
                    f"failed to connect to {peer}: {exc.details()}",
                    permanent=conn.permanent_failure,
                )
                continue
            except asyncio.CancelledError:
                conn.close()
                raise
            if self._closed:
                conn.close()
                raise GrpcError(StatusCode.CANCELLED, "channel is closed")
            if not conn.usable:
                # GOAWAY (or an error) arrived with the server's SETTINGS.
                reason = conn.goaway_reason or (conn.error.details() if conn.error else "")
                conn.close()
                last = GrpcError(StatusCode.UNAVAILABLE, f"failed to connect to {peer}: {reason}")
                continue
            conn.on_idle = self._close_when_drained
            self._conns.add(conn)
            return conn
        if last is None:
            last = GrpcError(
                StatusCode.UNAVAILABLE,
                f"failed to connect to {target.original}: connect_timeout "
                f"{opts.connect_timeout:g}s elapsed",
            )
        raise last

    def _close_when_drained(self, conn: ClientConnection) -> None:
        """A connection with no calls left that can take no more (GOAWAY, error) is closed."""
        if not conn.usable:
            self._conns.discard(conn)
            if conn.error is None:
                conn.close()


class UnaryUnaryMultiCallable(Generic[Req, Resp]):
    """``await rpc(request, *, timeout=None, metadata=None, compression=None)`` -> response."""

    __slots__ = ("_base_headers", "_channel", "_deserializer", "_method", "_serializer")

    def __init__(
        self,
        channel: Channel,
        method: str,
        serializer: Optional[Callable[[Req], bytes]],
        deserializer: Optional[Callable[[bytes], Resp]],
    ) -> None:
        opts = channel._opts
        self._channel = channel
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._base_headers: List[Tuple[bytes, bytes]] = [
            (b":method", b"POST"),
            (b":scheme", opts.scheme),
            (b":path", method.encode("ascii")),
            (b":authority", opts.authority),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"user-agent", opts.user_agent),
            (b"grpc-accept-encoding", b"identity,gzip"),
            *opts.metadata,
        ]

    async def __call__(
        self,
        request: Req,
        *,
        timeout: Optional[float] = None,
        metadata: MetadataLike = None,
        compression: Optional[str] = None,
    ) -> Resp:
        channel = self._channel
        opts = channel._opts
        if channel._closed:
            raise GrpcError(StatusCode.CANCELLED, "channel is closed")
        payload = self._serializer(request) if self._serializer is not None else request
        if not isinstance(payload, bytes):
            if isinstance(payload, (bytearray, memoryview)):
                payload = bytes(payload)
            else:
                raise TypeError(
                    f"request must be bytes (or give a request_serializer), "
                    f"not {type(payload).__name__}"
                )
        limit = opts.max_send_message_length
        if limit >= 0 and len(payload) > limit:
            raise too_large("Sent", len(payload), limit)
        headers = self._base_headers
        if metadata is not None:
            headers = headers + encode_metadata(normalize_metadata(metadata))
        algo = opts.compression if compression is None else _compression(compression)
        if algo is not None:
            payload = gzip_compress(payload)
            headers = [*headers, (b"grpc-encoding", b"gzip")]
            prefix = encode_message_prefix(len(payload), True)
        else:
            prefix = encode_message_prefix(len(payload))
        loop = asyncio.get_running_loop()
        if timeout is None:
            timeout = opts.timeout
        elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        deadline = None if timeout is None else loop.time() + timeout
        refused = 0
        yielded = False
        while True:
            ready = channel._ready_conn()
            if ready is None or ready._loop is not loop:
                ready = await channel._wait_conn(deadline)
            if not yielded and ready.input_pending():
                yielded = True
                # Let the loop read what the idle connection received (EOF, GOAWAY) first.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                continue
            conn = ready
            call_headers = headers
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise GrpcError(
                        StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", request_sent=False
                    )
                call_headers = [
                    *headers,
                    (b"grpc-timeout", encode_grpc_timeout(remaining).encode()),
                ]
            future: asyncio.Future[bytes] = loop.create_future()
            call = Call(future, call_headers, prefix, payload, deadline, self._method)
            conn.start(call)
            try:
                response = await future
            except RetryCall as retry:
                if retry.sent:
                    if not opts.transparent_retry:
                        raise GrpcError(
                            StatusCode.UNAVAILABLE,
                            f"{retry.reason}; not retried because transparent_retry=False",
                            request_sent=False,
                        ) from None
                    refused += 1
                    if refused > _MAX_REFUSED_RETRIES:
                        raise GrpcError(
                            StatusCode.UNAVAILABLE,
                            f"{retry.reason}; gave up after {_MAX_REFUSED_RETRIES} "
                            "transparent retries",
                            request_sent=False,
                        ) from None
                continue
            except asyncio.CancelledError:
                conn.cancel(call)
                raise
            if self._deserializer is not None:
                return self._deserializer(response)
            return response  # type: ignore[return-value]
