"""Throwaway certificates for ``demo --tls``: a CA and a server certificate for loopback.

The openssl command makes them when it is on PATH, else the ``trustme`` package; neither is
a dependency of the package.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from typing import Tuple

from .console import CliError

__all__ = ["demo_certificates"]

#: The names the demo's throwaway server certificate is valid for.
_DEMO_HOSTS = ("localhost", "127.0.0.1")

# Extensions of the demo certificates: what a verifying client, Python 3.13's strict X.509
# checks included, expects of a CA and of a TLS server certificate (RFC 5280 4.2.1).
_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = wove-h2grpc demo
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def demo_certificates(directory: str) -> Tuple[str, str, bytes, str]:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1 in ``directory``.

    Returns the server chain and key files, the CA's PEM and what made them. The openssl
    command is tried first (it comes with the system almost everywhere, and the package
    needs no dependency for it), then the ``trustme`` package (the test extra).
    """
    openssl = shutil.which("openssl")
    if openssl is not None:
        return (*_openssl_certificates(openssl, directory), "openssl")
    try:
        import trustme
    except ImportError:
        raise CliError(
            "--tls makes throwaway certificates with the openssl command, which is not on "
            "PATH, or with the trustme package, which is not installed (pip install trustme)"
        ) from None
    ca = trustme.CA()
    issued = ca.issue_cert(*_DEMO_HOSTS)
    cert_file = os.path.join(directory, "server.pem")
    key_file = os.path.join(directory, "server.key")
    with open(cert_file, "wb") as chain:
        chain.write(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(key_file)
    return cert_file, key_file, ca.cert_pem.bytes(), "trustme"


def _openssl_certificates(openssl: str, directory: str) -> Tuple[str, str, bytes]:
    def path(name: str) -> str:
        return os.path.join(directory, name)

    with open(path("openssl.cnf"), "w", encoding="ascii") as config:
        config.write(_OPENSSL_CONFIG)
    serial = f"0x{secrets.randbits(63):x}"
    # EC P-256 keys from a parameter file: quick, and the form every OpenSSL and LibreSSL
    # release accepts (-pkeyopt for -newkey ec is not in LibreSSL).
    ec = f"ec:{path('ec.pem')}"
    conf = path("openssl.cnf")
    steps = [
        ["ecparam", "-name", "prime256v1", "-out", path("ec.pem")],
        [
            *("req", "-x509", "-new", "-nodes", "-newkey", ec, "-days", "2", "-config", conf),
            *("-keyout", path("ca.key"), "-out", path("ca.pem"), "-extensions", "ca"),
            *("-subj", "/CN=wove-h2grpc demo CA"),
        ],
        [
            *("req", "-new", "-nodes", "-newkey", ec, "-config", conf, "-subj", "/CN=localhost"),
            *("-keyout", path("server.key"), "-out", path("server.csr")),
        ],
        [
            *("x509", "-req", "-in", path("server.csr"), "-days", "2", "-set_serial", serial),
            *("-CA", path("ca.pem"), "-CAkey", path("ca.key"), "-out", path("server.pem")),
            *("-extfile", conf, "-extensions", "server"),
        ],
    ]
    for step in steps:
        try:
            done = subprocess.run(
                [openssl, *step], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CliError(f"--tls: cannot run {openssl} {step[0]}: {exc}") from None
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise CliError(f"--tls: {openssl} {step[0]} failed: {reason}")
    with open(path("ca.pem"), "rb") as ca_file:
        ca_pem = ca_file.read()
    return path("server.pem"), path("server.key"), ca_pem
