"""The server's TLS from ``--tls-cert``, ``--tls-key`` and ``--client-ca`` files.

Every file problem is a :class:`~wove_h2grpc.cli.console.CliError` naming the option and the
file.
"""

from __future__ import annotations

import ssl
from typing import Optional

from .console import CliError

__all__ = ["server_ssl_context"]


def server_ssl_context(
    cert: Optional[str], key: Optional[str], client_ca: Optional[str]
) -> Optional[ssl.SSLContext]:
    """A TLS 1.2+ server context with ALPN ``h2``, or None when no certificate is given.

    ``client_ca`` makes client certificates signed by it required (mutual TLS).
    """
    if not cert and not key:
        if client_ca:
            raise CliError("--client-ca needs TLS: give --tls-cert and --tls-key too")
        return None
    if not cert or not key:
        raise CliError("--tls-cert and --tls-key must be given together")
    files = [("--tls-cert", cert), ("--tls-key", key)]
    if client_ca:
        files.append(("--client-ca", client_ca))
    for option, path in files:
        _check_readable(option, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # gRPC over HTTP/2 requires TLS 1.2 or newer and ALPN "h2" (RFC 9113 section 9.2).
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(
            f"cannot load TLS files --tls-cert {cert} and --tls-key {key} "
            f"(a PEM certificate chain and its private key): {exc}"
        ) from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(
                f"cannot load TLS file --client-ca {client_ca} (PEM CA certificates): {exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _check_readable(option: str, path: str) -> None:
    """A TLS file that cannot be opened is an error naming the option and the file.

    ``ssl`` reports a missing file as a bare ``[Errno 2]`` without the file's name.
    """
    try:
        open(path, "rb").close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CliError(f"cannot load TLS file {option} {path}: {reason}") from None
