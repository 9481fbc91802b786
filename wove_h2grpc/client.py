"""The public client: ``Channel``, which makes the multicallables of ``calls`` for a target.

A channel validates its options once (``aio.options.ChannelOptions``), leaves its
connections to an ``aio.pool.Pool`` (one per address under ``round_robin``, one in all under
``pick_first``; reconnect with backoff, DNS re-resolution, a fresh start in a forked child or
on another event loop) and dials them itself (``Channel._connect``). A call retries where
the server provably never processed it and enforces its deadline locally; the wire work
happens in ``aio.connection.ClientConnection``.

Importing this module loads only what ``Channel``'s signature needs (the options), so that
``from wove_h2grpc import Channel`` stays cheap: the rest loads where it is first needed,
asyncio and the pool with the first ``Channel`` (``_setup``), the call classes with the
first multicallable, h2 with the first connection (``_connect``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple, Type, TypeVar

from .aio.options import (
    DEFAULT_CONNECTION_WINDOW,
    DEFAULT_MAX_RECEIVE,
    DEFAULT_STREAM_WINDOW,
    ChannelOptions,
)
from .errors import GrpcError
from .protocol.metadata import MetadataLike
from .protocol.target import format_host_port

if TYPE_CHECKING:
    import ssl

    from .aio.connection import ClientConnection
    from .aio.pool import Pool
    from .calls import (
        StreamStreamMultiCallable,
        StreamUnaryMultiCallable,
        UnaryStreamMultiCallable,
        UnaryUnaryMultiCallable,
        _MultiCallable,
    )

__all__ = [
    "Channel",
    "StreamStreamMultiCallable",
    "StreamUnaryMultiCallable",
    "UnaryStreamMultiCallable",
    "UnaryUnaryMultiCallable",
]

M = TypeVar("M", bound="_MultiCallable")


def __getattr__(name: str) -> Any:
    """The multicallable classes, re-exported from ``calls`` when first asked for."""
    if name in __all__:
        from . import calls

        value = getattr(calls, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        wait_for_ready: bool = False,
        transparent_retry: bool = True,
        initial_window_size: int = DEFAULT_STREAM_WINDOW,
        connection_window_size: int = DEFAULT_CONNECTION_WINDOW,
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
                wait_for_ready=wait_for_ready,
                transparent_retry=transparent_retry,
                initial_window_size=initial_window_size,
                connection_window_size=connection_window_size,
            )
        )

    @classmethod
    def _from_options(cls, options: ChannelOptions) -> Channel:
        """A channel on options that were validated already (the Wove executor's)."""
        channel = cls.__new__(cls)
        channel._setup(options)
        return channel

    def _setup(self, options: ChannelOptions) -> None:
        from .aio.dial import resolve  # asyncio loads here, with the first channel
        from .aio.keepalive import ConnectionSettings
        from .aio.pool import Pool

        self._opts = options
        self._conn_settings = ConnectionSettings(
            max_receive_message_length=options.max_receive_message_length,
            keepalive_time=options.keepalive_time,
            keepalive_timeout=options.keepalive_timeout,
            initial_window_size=options.initial_window_size,
            connection_window_size=options.connection_window_size,
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
        """A callable for a unary method: ``await rpc(request)`` -> the response
        (bytes in, bytes out unless serializers are given)."""
        from .calls import UnaryUnaryMultiCallable

        return self._multicallable(
            UnaryUnaryMultiCallable, method, request_serializer, response_deserializer
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Optional[Callable[[Any], bytes]] = None,
        response_deserializer: Optional[Callable[[bytes], Any]] = None,
    ) -> UnaryStreamMultiCallable[Any, Any]:
        """A callable for a server-streaming method: ``async for reply in rpc(request)``."""
        from .calls import UnaryStreamMultiCallable

        return self._multicallable(
            UnaryStreamMultiCallable, method, request_serializer, response_deserializer
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Optional[Callable[[Any], bytes]] = None,
        response_deserializer: Optional[Callable[[bytes], Any]] = None,
    ) -> StreamUnaryMultiCallable[Any, Any]:
        """A callable for a client-streaming method: write the requests, ``await`` the reply."""
        from .calls import StreamUnaryMultiCallable

        return self._multicallable(
            StreamUnaryMultiCallable, method, request_serializer, response_deserializer
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Optional[Callable[[Any], bytes]] = None,
        response_deserializer: Optional[Callable[[bytes], Any]] = None,
    ) -> StreamStreamMultiCallable[Any, Any]:
        """A callable for a bidirectional-streaming method: write and read, interleaved."""
        from .calls import StreamStreamMultiCallable

        return self._multicallable(
            StreamStreamMultiCallable, method, request_serializer, response_deserializer
        )

    def _multicallable(
        self,
        cls: Type[M],
        method: str,
        serializer: Optional[Callable[[Any], bytes]],
        deserializer: Optional[Callable[[bytes], Any]],
    ) -> M:
        if not isinstance(method, str) or not method.startswith("/"):
            raise ValueError(f"method must be a path starting with '/', got {method!r}")
        for name, value in (
            ("request_serializer", serializer),
            ("response_deserializer", deserializer),
        ):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None")
        return cls(self, method, serializer, deserializer)

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
        import asyncio

        from .aio.connection import ClientConnection  # h2 loads here, with the first connection
        from .aio.dial import ConnectError, dial, resolve, speaks_tls

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
                details, permanent = exc.details(), conn.permanent_failure
                if conn.closed_silently and address is not None and opts.ssl_context is None:
                    probe = max(0.0, min(2.0, deadline - loop.time()))
                    if probe and await speaks_tls(address, opts.server_hostname, probe):
                        details = (
                            f"the server closed the plaintext connection without a byte and "
                            f"answers TLS at {peer}: connect with secure=True (and "
                            "root_certificates for a private CA)"
                        )
                        permanent = True
                last = ConnectError(f"failed to connect to {peer}: {details}", permanent=permanent)
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
