"""A pure-asyncio gRPC server on ``h2``: generic handlers of the four kinds by method path.

``Server`` accepts TCP (IPv4/IPv6), unix-socket and TLS (ALPN ``h2``) connections, each an
``aio.server_conn.ServerConnection``. Every call runs its handler as a task with a
``ServicerContext`` (``servicer.py``, mirroring ``grpc.aio.ServicerContext``); the context is
a thin view of the connection's call object, and the call's final status is written by the
connection alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Set

from .aio.budget import MemoryBudget
from .aio.driver import CLOSE_ABORT_DELAY
from .aio.options import DEFAULT_MAX_BUFFERED, ServerOptions
from .aio.server_conn import ServedCall, ServerConnection
from .protocol.kinds import RpcKind
from .protocol.target import parse_bind_address
from .servicer import Handler, Runner, ServicerContext, run_stream, run_unary

__all__ = ["Handler", "Server", "ServicerContext"]

logger = logging.getLogger(__name__)


@dataclass
class _Listener:
    server: asyncio.AbstractServer
    unix_path: Optional[str]


class Server:
    """A gRPC server for generic methods (bytes in, bytes out) on asyncio and h2.

    ``handlers`` maps method paths (``/pkg.Service/Method``) to unary handlers
    ``async (request: bytes, context: ServicerContext) -> bytes``; :meth:`add_method` serves
    the streaming kinds too. Keyword options:

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
    - ``initial_window_size``, ``connection_window_size``: the HTTP/2 receive windows we
      advertise per stream and per connection (bytes). A request stream's window reopens
      only as its handler reads, so a handler that stops reading holds its client to this.
    - ``max_buffered_bytes``: request bytes not yet taken by handlers plus response bytes
      not yet written to the socket, summed over every connection. Over it, new streams
      get REFUSED_STREAM and the connections holding the most are closed with GOAWAY
      ENHANCE_YOUR_CALM (their calls end with RESOURCE_EXHAUSTED) until the sum is back
      under it (None: no limit).
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
        initial_window_size: int = 8 * 1024 * 1024,
        connection_window_size: int = 32 * 1024 * 1024,
        max_buffered_bytes: Optional[int] = DEFAULT_MAX_BUFFERED,
    ) -> None:
        self._options = ServerOptions(
            max_receive_message_length=max_receive_message_length,
            max_concurrent_streams=max_concurrent_streams,
            debug=bool(debug),
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            max_header_list_size=max_header_list_size,
            max_client_resets=max_client_resets,
            initial_window_size=initial_window_size,
            connection_window_size=connection_window_size,
            max_buffered_bytes=max_buffered_bytes,
        ).checked()
        # One budget for every connection of this server, whichever listener accepted it.
        self._budget = MemoryBudget(self._options.max_buffered_bytes)
        self._handlers: Dict[str, Handler] = {}
        self._kinds: Dict[str, RpcKind] = {}
        self._runners: Dict[str, Runner] = {}
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

    def add_method(self, path: str, handler: Handler, *, kind: str = "unary_unary") -> None:
        """Serve ``path`` (``/pkg.Service/Method``) with ``handler``; replaces an earlier one.

        ``kind`` and the handler's shape (``request_iterator`` is an async iterator of
        ``bytes``; ``context.read()`` takes the next request too, or ``EOF``):

        - ``"unary_unary"``: ``async def h(request, context) -> bytes``;
        - ``"unary_stream"``: ``async def h(request, context)`` that yields replies,
          or writes them with ``await context.write(reply)`` and returns None;
        - ``"stream_unary"``: ``async def h(request_iterator, context) -> bytes``;
        - ``"stream_stream"``: an async generator over ``request_iterator`` (or
          ``context.read()`` / ``context.write()``).
        """
        if not isinstance(path, str):
            raise TypeError(f"method path must be a str, not {type(path).__name__}")
        if not path.startswith("/") or len(path) < 2:
            raise ValueError(f"method path must start with '/', got {path!r}")
        if not callable(handler):
            raise TypeError(f"handler for {path} is not callable")
        rpc_kind = RpcKind.parse(kind)
        self._handlers[path] = handler
        self._kinds[path] = rpc_kind
        self._runners[path] = run_unary if rpc_kind is RpcKind.UNARY_UNARY else run_stream

    def _start_call(self, conn: ServerConnection, call: ServedCall) -> None:
        """Run a call's handler as a task (its request is complete, or it is a stream)."""
        method = call.method
        runner = self._runners[method]
        call.task = conn.loop.create_task(
            runner(conn, call, self._handlers[method], self._options.debug)
        )

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
                budget=self._budget,
                tls=tls,
                kind_of=self._kinds.get,
                on_call=self._start_call,
                on_open=self._connections.add,
                on_closed=self._connections.discard,
            )

        if target.kind in ("unix", "unix-abstract"):
            path = target.path
            if path.startswith("\0"):
                # An abstract name (Linux): bound here, as uvloop (libuv) cannot bind one
                # from its name; asyncio's loop takes the bound socket alike.
                sock = _bound_abstract(path)
                try:
                    server = await loop.create_unix_server(
                        factory, sock=sock, ssl=ssl_context, ssl_handshake_timeout=handshake
                    )
                except BaseException:
                    sock.close()
                    raise
            else:
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


def _bound_abstract(path: str) -> socket.socket:
    """A non-blocking unix socket bound to the abstract name ``path`` (starting with NUL)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _unlink_socket(path: str) -> None:
    # Already gone, or not ours to remove: nothing to clean up.
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
