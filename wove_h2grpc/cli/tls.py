"""TLS from files: the server's (``serve``: ``--tls-cert``, ``--tls-key``, ``--client-ca``)
and the health probe's Channel options (``health``: ``--tls``, ``--tls-ca``, ``--tls-cert``,
``--tls-key``, ``--server-hostname``).

Every file problem is a :class:`~wove_h2grpc.cli.console.CliError` naming the option and the
file.
"""

from __future__ import annotations

import ssl
from typing import Any, Dict, Optional

from .console import CliError

__all__ = ["client_tls_options", "server_ssl_context"]


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


def client_tls_options(
    tls: bool,
    ca: Optional[str],
    cert: Optional[str],
    key: Optional[str],
    server_hostname: Optional[str],
) -> Dict[str, Any]:
    """:class:`~wove_h2grpc.Channel` keyword arguments for a client's TLS options.

    TLS is on with ``tls``, a CA file or a client certificate; the PEM files are read here,
    so a missing or unreadable one is an error naming the option and the file.
    """
    if bool(cert) != bool(key):
        raise CliError("--tls-cert and --tls-key must be given together")
    if not (tls or ca or cert):
        if server_hostname:
            raise CliError("--server-hostname needs TLS: give --tls or --tls-ca")
        return {}
    options: Dict[str, Any] = {"secure": True}
    for option, path, keyword in (
        ("--tls-ca", ca, "root_certificates"),
        ("--tls-cert", cert, "certificate_chain"),
        ("--tls-key", key, "private_key"),
    ):
        if path:
            options[keyword] = _read_pem(option, path)
    if server_hostname:
        options["server_hostname"] = server_hostname
    return options


def _read_pem(option: str, path: str) -> bytes:
    _check_readable(option, path)
    try:
        with open(path, "rb") as pem:
            data = pem.read()
    except OSError as exc:
        raise CliError(f"cannot load TLS file {option} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise CliError(f"cannot load TLS file {option} {path}: not a PEM file")
    return data
