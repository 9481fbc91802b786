"""The public client: ``Channel`` and its unary callable.

A channel validates its options once (``aio.options.ChannelOptions``), leaves its
connections to an ``aio.pool.Pool`` (one per address under ``round_robin``, one in all under
``pick_first``; reconnect with backoff, DNS re-resolution, a fresh start in a forked child or
on another event loop) and dials them itself (``Channel._connect``). A call retries where
the server provably never processed it and enforces its deadline locally; the wire work
happens in ``aio.connection.ClientConnection``.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Any, Callable, Generic, List, Optional, Tuple, TypeVar

from .aio.connection import ClientConnection, WireCall
from .aio.dial import ConnectError, dial, resolve
from .aio.keepalive import ConnectionSettings
from .aio.options import DEFAULT_MAX_RECEIVE, ChannelOptions, check_compression
from .aio.pool import Pool
from .errors import GrpcError
from .protocol.call import REFUSED, UNSENT, Outcome, with_debug
from .protocol.framing import frame_message, too_large
from .protocol.metadata import (
    MetadataLike,
    encode_grpc_timeout,
    encode_metadata,
    normalize_metadata,
)
from .protocol.status import StatusCode
from .protocol.target import format_host_port

__all__ = ["Channel", "UnaryUnaryMultiCallable"]

_OK = StatusCode.OK  # a module constant: cheaper than the enum lookup on every call

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_MAX_REFUSED_RETRIES = 3  # bounded transparent retries of refused streams (gRFC A6)


class Channel:
    """A gRPC channel over one HTTP/2 connection per address.

    ``Channel(target, *, ...)`` validates every option now (ValueError / TypeError naming
    the option); connecting happens on the first call or ``channel_ready()``.
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
        self._setup(
            ChannelOptions.build(
                target,
                secure=secure,
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
                ssl_context=ssl_context,
                server_hostname=server_hostname,
                authority=authority,
                metadata=metadata,
                timeout=timeout,
                connect_timeout=connect_timeout,
                keepalive_time=keepalive_time,
                keepalive_timeout=keepalive_timeout,
                max_send_message_length=max_send_message_length,
                max_receive_message_length=max_receive_message_length,
                compression=compression,
                user_agent=user_agent,
                lb_policy=lb_policy,
                transparent_retry=transparent_retry,
            )
        )

    @classmethod
    def _from_options(cls, options: ChannelOptions) -> Channel:
        """A channel on options that were validated already (the Wove executor's)."""
        channel = cls.__new__(cls)
        channel._setup(options)
        return channel

    def _setup(self, options: ChannelOptions) -> None:
        self._opts = options
        self._conn_settings = ConnectionSettings(
            max_receive_message_length=options.max_receive_message_length,
            keepalive_time=options.keepalive_time,
            keepalive_timeout=options.keepalive_timeout,
        )
        target = options.target
        self._pool: Pool[ClientConnection] = Pool(
            self._connect,
            target=target.original,
            lb_policy=options.lb_policy,
            resolve=functools.partial(resolve, target) if target.kind == "tcp" else None,
            reresolve=target.needs_resolution,
            connect_timeout=options.connect_timeout,
        )

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
        """Connect now, trying every address once (bounded by connect_timeout).

        Raises GrpcError(UNAVAILABLE) when no address connected.
        """
        await self._pool.ready()

    async def close(self, grace: Optional[float] = None) -> None:
        """Refuse new calls; let in-flight calls finish within ``grace``, then cancel them."""
        await self._pool.close(grace)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --------------------------------------------------------------- internals

    async def _connect(self, addresses: Optional[List[Tuple[str, int]]]) -> ClientConnection:
        """Dial the addresses in order until one completes the HTTP/2 preface.

        ``addresses=None`` dials the target itself (its unix path, or every address it
        resolves to). Injected into the pool; raises GrpcError(UNAVAILABLE) (a
        ``ConnectError`` with ``permanent`` set when the TLS handshake or HTTP/2 failed).
        """
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
                last = ConnectError(
                    f"failed to connect to {peer}: no HTTP/2 SETTINGS from the server within "
                    f"connect_timeout {opts.connect_timeout:g}s (is it an HTTP/2 gRPC server?)"
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
            if not conn.usable:
                # GOAWAY (or an error) arrived with the server's SETTINGS.
                reason = conn.goaway_reason or (conn.error.details() if conn.error else "")
                conn.close()
                last = ConnectError(f"failed to connect to {peer}: {reason}")
                continue
            return conn
        if last is None:
            last = ConnectError(
                f"failed to connect to {target.original}: connect_timeout "
                f"{opts.connect_timeout:g}s elapsed"
            )
        raise last


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
        pool = channel._pool
        if pool._closed:
            closed = GrpcError(StatusCode.CANCELLED, "channel is closed", request_sent=False)
            raise with_debug(closed, method=self._method, target=opts.target.original, elapsed=0.0)
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
        algo = opts.compression if compression is None else check_compression(compression)
        if algo is not None:
            headers = [*headers, (b"grpc-encoding", b"gzip")]
        prefix, payload = frame_message(payload, algo is not None)
        loop = asyncio.get_running_loop()
        if timeout is None:
            timeout = opts.timeout
        elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        start = loop.time()
        deadline = None if timeout is None else start + timeout
        refused = 0
        where = opts.target.original
        while True:
            try:
                conn = pool.pick_now(loop) or await pool.assign(deadline)
            except GrpcError as exc:
                raise with_debug(
                    exc, method=self._method, target=where, elapsed=loop.time() - start
                ) from None
            call_headers = headers
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    late = GrpcError(
                        StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", request_sent=False
                    )
                    raise with_debug(
                        late, method=self._method, target=where, elapsed=loop.time() - start
                    )
                call_headers = [
                    *headers,
                    (b"grpc-timeout", encode_grpc_timeout(remaining).encode()),
                ]
            future: asyncio.Future[Outcome] = loop.create_future()
            # Positional: a class call with keywords builds a dict on every call.
            call = WireCall(
                self._method,
                call_headers,
                prefix,
                payload,
                future,
                deadline,
                opts.max_receive_message_length,
            )
            conn.start(call)
            try:
                outcome = await future
            except asyncio.CancelledError:
                conn.cancel(call)
                raise
            if outcome.retry is REFUSED:
                # gRFC A6: the server refused the stream unprocessed; a bounded retry.
                if not opts.transparent_retry:
                    why = "not retried because transparent_retry=False"
                    raise _not_retried(call, outcome, why, where, loop.time() - start)
                refused += 1
                if refused > _MAX_REFUSED_RETRIES:
                    why = f"gave up after {_MAX_REFUSED_RETRIES} transparent retries"
                    raise _not_retried(call, outcome, why, where, loop.time() - start)
                continue
            if outcome.retry is UNSENT:
                continue  # never left this process: send it on another connection
            if outcome.code is not _OK:
                raise call.error(outcome, target=where, elapsed=loop.time() - start)
            response = outcome.message or b""  # set on every OK unary outcome
            if self._deserializer is not None:
                return self._deserializer(response)
            return response  # type: ignore[return-value]


def _not_retried(
    call: WireCall, outcome: Outcome, why: str, target: str, elapsed: float
) -> GrpcError:
    """The refused call's error when it is not sent again; it provably never ran."""
    error = call.error(outcome, target=target, elapsed=elapsed)
    return GrpcError(
        error.code(),
        f"{error.details()}; {why}",
        debug_error_string=error.debug_error_string(),
        request_sent=False,
        h2_error_code=outcome.h2_error_code,
    )
