"""Open one HTTP/2 connection: TCP, unix or TLS (ALPN h2), bounded by connect_timeout.

This is the single boundary where ``OSError``, ``ssl.SSLError`` and timeouts from
connecting become ``GrpcError(UNAVAILABLE)`` with a message a person can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Callable, List, Optional, Tuple

from ..errors import GrpcError
from ..protocol.status import StatusCode
from ..protocol.target import Target, format_host_port

__all__ = ["ConnectError", "dial", "resolve", "speaks_tls"]


class ConnectError(GrpcError):
    """UNAVAILABLE from a connect attempt; ``permanent`` when retrying cannot help.

    Permanent: the TLS handshake failed (certificate, host name, client certificate
    refused) or the peer does not speak HTTP/2. A call fails at once on such an error,
    as grpcio does, instead of waiting out its deadline on reconnects.
    """

    def __init__(self, details: str, *, permanent: bool = False) -> None:
        # Nothing of a call is sent before its connection exists.
        super().__init__(StatusCode.UNAVAILABLE, details, request_sent=False)
        self.permanent = permanent


async def resolve(target: Target) -> List[Tuple[str, int]]:
    """Every TCP address a target stands for (DNS names resolved with getaddrinfo)."""
    if not target.needs_resolution:
        return list(target.addresses)
    loop = asyncio.get_running_loop()
    out: List[Tuple[str, int]] = []
    for host, port in target.addresses:
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise GrpcError(
                StatusCode.UNAVAILABLE,
                f"DNS resolution failed for {format_host_port(host, port)}: {exc}",
                request_sent=False,
            ) from None
        for _family, _type, _proto, _name, sockaddr in infos:
            addr = (str(sockaddr[0]), int(sockaddr[1]))
            if addr not in out:
                out.append(addr)
    return out


async def speaks_tls(address: Tuple[str, int], hostname: Optional[str], timeout: float) -> bool:
    """Whether ``address`` completes a TLS handshake (certificate not checked, nothing sent).

    Asked only after a plaintext connection was closed without a byte: a TLS port answers
    an HTTP/2 preface that way, and saying so beats a bare "connection lost".
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(
                address[0], address[1], ssl=context, server_hostname=hostname or address[0]
            ),
            timeout,
        )
    except (OSError, asyncio.TimeoutError):  # ssl.SSLError is an OSError
        return False
    # Close (close_notify) and abort at once: waiting for the peer's close_notify can take
    # the whole timeout (a grpcio server on Python 3.9 never sends it).
    writer.close()
    writer.transport.abort()
    return True


def _describe_ssl_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc}"
    return f"TLS handshake failed: {exc}"


async def dial(
    target: Target,
    address: Optional[Tuple[str, int]],
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    *,
    ssl_context: Optional[ssl.SSLContext],
    server_hostname: Optional[str],
    timeout: float,
) -> Tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """Connect to one address (or the unix path) and check ALPN; UNAVAILABLE on failure.

    The caller bounds the HTTP/2 preface with the rest of ``timeout``.
    """
    loop = asyncio.get_running_loop()
    if target.kind != "tcp":
        where = target.path.lstrip("\0")
    else:
        where = format_host_port(*address) if address is not None else target.original
    hostname = server_hostname
    if ssl_context is not None and hostname is None:
        hostname = target.host if target.kind == "tcp" else "localhost"
    try:
        if target.kind == "tcp":
            if address is None:
                raise ValueError("TCP dial needs an address")
            coro = loop.create_connection(
                protocol_factory,
                address[0],
                address[1],
                ssl=ssl_context,
                server_hostname=hostname if ssl_context is not None else None,
            )
        elif target.path.startswith("\0"):
            coro = _connect_abstract(
                loop,
                protocol_factory,
                target.path,
                ssl_context=ssl_context,
                server_hostname=hostname if ssl_context is not None else None,
            )
        else:
            coro = loop.create_unix_connection(
                protocol_factory,
                target.path,
                ssl=ssl_context,
                server_hostname=hostname if ssl_context is not None else None,
            )
        transport, protocol = await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:
        raise ConnectError(
            f"failed to connect to {where}: timed out after {timeout:g}s (connect_timeout)"
        ) from None
    except ssl.SSLError as exc:
        raise ConnectError(
            f"failed to connect to {where}: {_describe_ssl_error(exc)}", permanent=True
        ) from None
    except OSError as exc:
        raise ConnectError(f"failed to connect to {where}: {exc}") from None
    if ssl_context is not None:
        ssl_object = transport.get_extra_info("ssl_object")
        selected = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if selected != "h2":
            transport.close()
            raise ConnectError(
                f"failed to connect to {where}: the server did not select HTTP/2 via ALPN "
                f"(selected {selected!r}); is it a gRPC server?",
                permanent=True,
            )
    sock = transport.get_extra_info("socket")
    if sock is not None and target.kind == "tcp" and not transport.is_closing():
        # ValueError: uvloop's stand-in for the socket of a transport its peer has already
        # closed has no file descriptor (-1); the connection's own close reports that.
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return transport, protocol


async def _connect_abstract(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    path: str,
    *,
    ssl_context: Optional[ssl.SSLContext],
    server_hostname: Optional[str],
) -> Tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """A Linux abstract-namespace unix socket (``path`` starts with NUL), connected here.

    Given the name, uvloop (libuv) cuts it at its leading NUL and fails with EINVAL; a
    socket connected by ``sock_connect`` works on every loop.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, path)
        return await loop.create_unix_connection(
            protocol_factory, sock=sock, ssl=ssl_context, server_hostname=server_hostname
        )
    except BaseException:
        sock.close()
        raise
