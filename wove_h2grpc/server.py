"""A pure-asyncio gRPC server on ``h2``: generic handlers by method path.

``Server`` accepts TCP (IPv4/IPv6), unix-socket and TLS (ALPN ``h2``) connections, each an
``aio.server_conn.ServerConnection``. Every call runs its handler as a task with a
``ServicerContext`` (metadata, peer, deadline, abort, status, metadata to send), mirroring
``grpc.aio.ServicerContext``; the context is a thin view of the connection's call object,
and the call's final status is written by the connection alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Mapping, NoReturn, Optional, Set

from .aio.driver import CLOSE_ABORT_DELAY
from .aio.options import ServerOptions
from .aio.server_conn import ServedCall, ServerConnection
from .errors import Metadata
from .protocol.metadata import MetadataLike, normalize_metadata
from .protocol.status import StatusCode
from .protocol.target import parse_bind_address

__all__ = ["Handler", "Server", "ServicerContext"]

logger = logging.getLogger(__name__)

Handler = Callable[[bytes, "ServicerContext"], Awaitable[bytes]]
"""A unary handler: ``async (request: bytes, context: ServicerContext) -> bytes``."""


class _AbortError(Exception):
    """Raised by ``ServicerContext.abort()``; the call's status has already been sent."""


class ServicerContext:
    """Per-call view handed to a handler, shaped like ``grpc.aio.ServicerContext``.

    It reads the request's metadata, peer and deadline, sets trailing metadata or a
    status, and aborts the call. The state lives in the call itself.
    """

    __slots__ = ("_call", "_conn")

    def __init__(self, conn: ServerConnection, call: ServedCall) -> None:
        self._conn = conn
        self._call = call

    def invocation_metadata(self) -> Metadata:
        """The request's metadata as ``(key, value)`` pairs (``-bin`` values are bytes)."""
        return self._call.metadata()

    def method(self) -> str:
        """The called method path, e.g. ``/pkg.Service/Method``."""
        return self._call.method

    def peer(self) -> str:
        """The client's address, formatted as grpcio does (``ipv4:127.0.0.1:5000``)."""
        return self._conn.peer

    def time_remaining(self) -> Optional[float]:
        """Seconds left before the deadline from ``grpc-timeout``; None without a deadline."""
        deadline = self._call.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - self._conn.loop.time())

    def cancelled(self) -> bool:
        """True once the client cancelled the call, its deadline passed or the server stopped it."""
        return self._call.cancelled

    def done(self) -> bool:
        """True once the call's status has been sent or the stream is gone."""
        return self._call.done

    def set_trailing_metadata(self, trailing_metadata: MetadataLike) -> None:
        """Metadata to send in the trailers; validated here (ValueError/TypeError)."""
        self._call.trailing_metadata = normalize_metadata(trailing_metadata)

    def trailing_metadata(self) -> Metadata:
        """The trailing metadata set so far."""
        return self._call.trailing_metadata

    def set_code(self, code: StatusCode) -> None:
        """The status to end with when the handler returns; non-OK drops the response."""
        self._call.code = StatusCode(code)

    def set_details(self, details: str) -> None:
        """The status message sent with a non-OK ``set_code``."""
        self._call.details = str(details)

    def code(self) -> StatusCode:
        """The status set with ``set_code`` (OK by default)."""
        return self._call.code

    def details(self) -> str:
        """The status message set with ``set_details``."""
        return self._call.details

    async def send_initial_metadata(self, initial_metadata: MetadataLike) -> None:
        """Send response headers with this metadata now (before the response)."""
        call = self._call
        if call.headers_sent or call.done:
            raise RuntimeError("initial metadata was already sent for this call")
        call.initial_metadata = normalize_metadata(initial_metadata)
        self._conn.send_headers(call)

    async def abort(
        self, code: StatusCode, details: str = "", trailing_metadata: MetadataLike = ()
    ) -> NoReturn:
        """End the call now with ``code`` and ``details``; raises to unwind the handler.

        As in grpcio, aborting with OK is a mistake and is reported as UNKNOWN.
        """
        code = StatusCode(code)
        if code is StatusCode.OK:
            logger.error(
                "abort() called with StatusCode.OK on %s; sending UNKNOWN", self._call.method
            )
            code = StatusCode.UNKNOWN
        if trailing_metadata:
            self._call.trailing_metadata = normalize_metadata(trailing_metadata)
        self._conn.finish(self._call, code, str(details))
        raise _AbortError(f"call aborted with {code.name}: {details}")


async def _run_unary(
    conn: ServerConnection, call: ServedCall, handler: Handler, debug: bool
) -> None:
    """Run a unary handler and end its call: the response and OK, or the error's status."""
    context = ServicerContext(conn, call)
    try:
        result: Any = handler(call.requests.popleft(), context)
        if inspect.isawaitable(result):
            result = await result
    except asyncio.CancelledError:
        conn.finish(call, StatusCode.CANCELLED, "handler was cancelled")
        return
    except _AbortError:
        return
    except Exception as exc:
        logger.exception("handler for %s (peer %s) raised", call.method, conn.peer)
        if debug:
            details = f"Exception calling application: {type(exc).__name__}: {exc}"
        else:
            details = "Exception calling application"
        conn.finish(call, StatusCode.UNKNOWN, details)
        return
    except BaseException:
        conn.finish(call, StatusCode.UNKNOWN, "Exception calling application")
        raise
    if call.done:
        return
    if call.code is not StatusCode.OK:
        conn.finish(call, call.code, call.details)
        return
    if not isinstance(result, (bytes, bytearray, memoryview)):
        logger.error("handler for %s returned %s, not bytes", call.method, type(result).__name__)
        conn.finish(
            call, StatusCode.INTERNAL, f"handler returned {type(result).__name__}, not bytes"
        )
        return
    try:
        sent = await conn.send_message(call, bytes(result))
    except asyncio.CancelledError:
        conn.finish(call, StatusCode.CANCELLED, "call was cancelled")
        return
    if sent:
        conn.finish(call, StatusCode.OK)


@dataclass
class _Listener:
    server: asyncio.AbstractServer
    unix_path: Optional[str]


class Server:
    """A gRPC server for generic unary methods (bytes in, bytes out) on asyncio and h2.

    ``handlers`` maps method paths (``/pkg.Service/Method``) to handlers
    ``async (request: bytes, context: ServicerContext) -> bytes``. Keyword options:

    - ``max_receive_message_length``: larger requests end with RESOURCE_EXHAUSTED (-1: no limit).
    - ``max_concurrent_streams``: advertised in SETTINGS; excess streams get REFUSED_STREAM,
      which clients retry.
    - ``debug``: put a handler exception's text in the UNKNOWN status (always logged).
    - ``handshake_timeout``: seconds for TLS plus the client's HTTP/2 preface (None: no limit).
    - ``idle_timeout``: a connection with no call in flight for this long gets GOAWAY and is
      closed; clients reconnect on their next call (None: no limit).
    - ``max_header_list_size``: bytes of decoded request headers; a larger header block is a
      denial-of-service attempt and costs the connection (GOAWAY ENHANCE_YOUR_CALM).
    - ``max_client_resets``: RST_STREAM frames a connection may send per 10 seconds, net of
      calls it completed, before it gets GOAWAY ENHANCE_YOUR_CALM (None: no limit).
    """

    def __init__(
        self,
        handlers: Optional[Mapping[str, Handler]] = None,
        *,
        max_receive_message_length: int = 4 * 1024 * 1024,
        max_concurrent_streams: int = 1000,
        debug: bool = False,
        handshake_timeout: Optional[float] = 10.0,
        idle_timeout: Optional[float] = 300.0,
        max_header_list_size: int = 16 * 1024,
        max_client_resets: Optional[int] = 2000,
    ) -> None:
        self._options = ServerOptions(
            max_receive_message_length=max_receive_message_length,
            max_concurrent_streams=max_concurrent_streams,
            debug=bool(debug),
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            max_header_list_size=max_header_list_size,
            max_client_resets=max_client_resets,
        )
        self._handlers: Dict[str, Handler] = {}
        if handlers is not None:
            if not isinstance(handlers, Mapping):
                raise TypeError("handlers must be a mapping of method path to handler")
            for path, handler in handlers.items():
                self.add_method(path, handler)
        self._listeners: List[_Listener] = []
        self._connections: Set[ServerConnection] = set()
        self._stop_task: Optional[asyncio.Future[None]] = None
        self._closed: Optional[asyncio.Event] = None
        self._stopped = False

    def add_method(self, path: str, handler: Handler) -> None:
        """Serve ``path`` (``/pkg.Service/Method``) with ``handler``; replaces an earlier one."""
        if not isinstance(path, str):
            raise TypeError(f"method path must be a str, not {type(path).__name__}")
        if not path.startswith("/") or len(path) < 2:
            raise ValueError(f"method path must start with '/', got {path!r}")
        if not callable(handler):
            raise TypeError(f"handler for {path} is not callable")
        self._handlers[path] = handler

    def _start_call(self, conn: ServerConnection, call: ServedCall) -> None:
        """A call's request is complete: run its handler as a task."""
        handler = self._handlers[call.method]
        call.task = conn.loop.create_task(_run_unary(conn, call, handler, self._options.debug))

    def _closed_event(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
        return self._closed

    async def start(self, address: str, *, ssl_context: Optional[ssl.SSLContext] = None) -> int:
        """Listen on ``address`` and return the bound port (0 for unix sockets).

        ``address`` is ``host:port``, ``[v6]:port``, ``unix:/path`` or ``unix-abstract:name``;
        port 0 picks a free port (the same one on every address ``host`` resolves to).
        With ``ssl_context`` the server speaks TLS; ALPN is set to ``h2`` on that context
        and connections that do not negotiate h2 are closed. Require client certificates
        (mutual TLS) on the context itself: ``verify_mode = ssl.CERT_REQUIRED`` and
        ``load_verify_locations(client_ca)``. Call ``start`` again to listen on more addresses.
        """
        if self._stopped or self._stop_task is not None:
            raise RuntimeError("server was stopped; create a new Server")
        target = parse_bind_address(address)
        if ssl_context is not None:
            if not isinstance(ssl_context, ssl.SSLContext):
                raise TypeError("ssl_context must be an ssl.SSLContext")
            ssl_context.set_alpn_protocols(["h2"])
        self._closed_event()
        loop = asyncio.get_running_loop()
        tls = ssl_context is not None
        handshake = self._options.handshake_timeout if tls else None

        def factory() -> ServerConnection:
            return ServerConnection(
                self._options,
                tls=tls,
                known=self._handlers.__contains__,
                on_call=self._start_call,
                on_open=self._connections.add,
                on_closed=self._connections.discard,
            )

        if target.kind in ("unix", "unix-abstract"):
            path = target.path
            server = await loop.create_unix_server(
                factory, path, ssl=ssl_context, ssl_handshake_timeout=handshake
            )
            owned = None if path.startswith("\0") else path
            self._listeners.append(_Listener(server, owned))
            logger.info("serving gRPC on unix:%s%s", path.lstrip("\0"), " (TLS)" if tls else "")
            return 0
        host, port = target.addresses[0]
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        addresses: List[str] = []
        for info in infos:
            ip = str(info[4][0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise OSError(f"cannot resolve bind host {host!r}")
        servers: List[asyncio.Server] = []
        try:
            for ip in addresses:
                server = await loop.create_server(
                    factory,
                    ip,
                    port,
                    ssl=ssl_context,
                    ssl_handshake_timeout=handshake,
                    reuse_address=True,
                )
                servers.append(server)
                if port == 0:
                    sockets = server.sockets or ()
                    port = int(sockets[0].getsockname()[1])
        except BaseException:
            for srv in servers:
                srv.close()
            raise
        for srv in servers:
            self._listeners.append(_Listener(srv, None))
        logger.info(
            "serving gRPC on %s port %d%s", ", ".join(addresses), port, " (TLS)" if tls else ""
        )
        return port

    async def stop(self, grace: Optional[float] = None) -> None:
        """Stop: GOAWAY to every client, let in-flight calls finish within ``grace`` seconds,
        then cancel the rest (``None`` or 0: cancel at once, as grpcio does). Idempotent."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._do_stop(grace))
        await asyncio.shield(self._stop_task)

    async def _do_stop(self, grace: Optional[float]) -> None:
        for listener in self._listeners:
            listener.server.close()
        connections = list(self._connections)
        for proto in connections:
            proto.begin_drain()
        if grace is not None and grace > 0:
            pending = [p.closed for p in self._connections if not p.closed.done()]
            if pending:
                await asyncio.wait(pending, timeout=grace)
        tasks = [
            call.task
            for proto in self._connections
            for call in proto.calls.values()
            if call.task is not None
        ]
        for proto in list(self._connections):
            proto.cancel_calls()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        pending = [p.closed for p in self._connections if not p.closed.done()]
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_ABORT_DELAY + 1.0)
        for proto in list(self._connections):
            transport = proto.transport
            if transport is not None:
                transport.abort()
        for listener in self._listeners:
            try:
                await asyncio.wait_for(listener.server.wait_closed(), 5.0)
            except asyncio.TimeoutError:
                logger.warning("listener did not close within 5s")
            if listener.unix_path is not None:
                _unlink_socket(listener.unix_path)
        self._stopped = True
        self._closed_event().set()

    async def wait_closed(self) -> None:
        """Wait until ``stop()`` has finished."""
        await self._closed_event().wait()


def _unlink_socket(path: str) -> None:
    # Already gone, or not ours to remove: nothing to clean up.
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
