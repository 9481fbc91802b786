"""Smoke check: Debian's nginx and HAProxy start as foreground processes on loopback.

Run by ``.ci/run`` after ``.ci/install-balancers.sh`` (python: the CI venv, which has trustme).
Each balancer gets its own prefix directory, a TLS certificate from trustme, an HTTP/2
(gRPC-shaped) config in front of two loopback upstream ports, and is started the way the
balancer tests start it (see ``.ci/balancers.md``). The check passes when each one
accepts a TLS connection on 127.0.0.1 and selects ALPN ``h2``, then stops on SIGTERM.
Nothing listens on the upstream ports: only the balancers themselves are checked here.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, List

import trustme

NGINX_CONF = """\
{user_line}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream workers {{
        server 127.0.0.1:{up1} max_fails=1 fail_timeout=2s;
        server 127.0.0.1:{up2} max_fails=1 fail_timeout=2s;
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {prefix}/server.pem;
        ssl_certificate_key {prefix}/server.key;
        keepalive_requests 1000;
        location / {{ grpc_pass grpc://workers; }}
    }}
}}
"""

HAPROXY_CONF = """\
global
    maxconn 1000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend grpc_in
    bind 127.0.0.1:{port} ssl crt {prefix}/haproxy.pem alpn h2
    default_backend workers
backend workers
    balance roundrobin
    server w1 127.0.0.1:{up1} proto h2
    server w2 127.0.0.1:{up2} proto h2
"""


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alpn_h2(port: int, ca_pem: bytes, deadline: float) -> str:
    """Connect with TLS until ``deadline``; return the ALPN protocol the balancer selected."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    last: Exception = RuntimeError("never tried")
    while time.monotonic() < deadline:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=2)
            with raw, ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.selected_alpn_protocol() or "(none)"
        except OSError as exc:
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"no TLS connection to 127.0.0.1:{port}: {last}")


def run_one(name: str, cmd: List[str], port: int, ca_pem: bytes, prefix: Path) -> bool:
    """Start one balancer in the foreground, check it, stop it; True when it passed."""
    with open(prefix / f"{name}.out", "w+") as log:
        return _run_logged(name, cmd, port, ca_pem, prefix, log)


def _run_logged(
    name: str, cmd: List[str], port: int, ca_pem: bytes, prefix: Path, log: IO[str]
) -> bool:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    ok = False
    try:
        alpn = alpn_h2(port, ca_pem, time.monotonic() + 15)
        ok = alpn == "h2" and proc.poll() is None
        print(f"balancers: {name} on 127.0.0.1:{port} as uid {os.geteuid()}: ALPN {alpn}")
    except RuntimeError as exc:
        print(f"balancers: {name} FAILED: {exc}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.seek(0)
        output = log.read().strip()
    if not ok:
        print(f"balancers: {name} exit code {proc.returncode}; output:\n{output}")
        err = prefix / "error.log"
        if name == "nginx" and err.exists():
            print(err.read_text())
    return ok


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ci-balancers-") as tmp:
        prefix = Path(tmp)
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        chain = b"".join(b.bytes() for b in cert.cert_chain_pems)
        key = cert.private_key_pem.bytes()
        (prefix / "server.pem").write_bytes(chain)
        (prefix / "server.key").write_bytes(key)
        (prefix / "haproxy.pem").write_bytes(chain + key)  # HAProxy wants cert + key in one file
        up1, up2 = free_port(), free_port()

        nginx_port = free_port()
        # As root, nginx would switch its workers to 'nobody', who cannot enter a 0700 temp
        # directory; keep them as the current user (the directive is only valid for root).
        user_line = "user root;" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(
            NGINX_CONF.format(prefix=prefix, port=nginx_port, up1=up1, up2=up2, user_line=user_line)
        )
        nginx_cmd = [
            "nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
            "-e", "stderr", "-g", "daemon off;",
        ]  # fmt: skip
        ok_nginx = run_one("nginx", nginx_cmd, nginx_port, ca.cert_pem.bytes(), prefix)

        haproxy_port = free_port()
        (prefix / "haproxy.cfg").write_text(
            HAPROXY_CONF.format(prefix=prefix, port=haproxy_port, up1=up1, up2=up2)
        )
        haproxy_cmd = ["haproxy", "-f", str(prefix / "haproxy.cfg"), "-db"]
        ok_haproxy = run_one("haproxy", haproxy_cmd, haproxy_port, ca.cert_pem.bytes(), prefix)
    return 0 if ok_nginx and ok_haproxy else 1


if __name__ == "__main__":
    sys.exit(main())
