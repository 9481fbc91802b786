"""Interop (c): stock Wove with its own grpcio executor -> WorkerService on our Server.

The worker is ``wove-h2grpc serve`` (our pure-asyncio Server, TLS, signed security); the client
is unmodified Wove (``executor="grpc"`` without ``wove_h2grpc.install()``) running in a helper
process under ``grpcio_python()``, so grpcio never loads in the pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Dict, Iterator, List

import pytest
from _cli_support import CliProcess
from _support import REPO_DIR, TESTS_DIR, Certs, grpcio_python

SECRET = "interop-c-secret"
SECRET_ENV = "WOVE_INTEROP_C_SECRET"


@pytest.fixture(scope="module")
def tls_worker(certs: Certs) -> Iterator[int]:
    cli = CliProcess(
        [
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--tls-cert",
            certs.server_cert_file,
            "--tls-key",
            certs.server_key_file,
            "--security",
            f"env:{SECRET_ENV}",
        ],
        # The worker imports the tasks (tests/worker_tasks.py) that Wove sends by reference.
        env={
            SECRET_ENV: SECRET,
            "PYTHONPATH": os.pathsep.join((str(REPO_DIR), str(TESTS_DIR))),
        },
    )
    try:
        yield cli.wait_for_port()
    finally:
        cli.kill()


def _run_stock_wove(port: int, certs: Certs, *extra: str) -> Dict[str, Any]:
    env = dict(os.environ)
    env[SECRET_ENV] = SECRET
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
    argv: List[str] = [
        grpcio_python(),
        str(TESTS_DIR / "wove_grpcio_tls_runner.py"),
        "--target",
        f"localhost:{port}",
        "--ca",
        certs.ca_file,
        "--secret-env",
        SECRET_ENV,
        *extra,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: Dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise AssertionError(f"no RESULT line: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")


def test_stock_wove_grpcio_executor_against_our_worker(tls_worker: int, certs: Certs) -> None:
    result = _run_stock_wove(tls_worker, certs, "--items", "30")
    assert result["grpc_imported"] is True  # really Wove's grpcio executor
    assert result["doubled"] == [i * 2 for i in range(30)]
    assert result["total"] == sum(i * 2 for i in range(30))
    # The task's own exception type comes back through the pickled exception.
    assert result["error"] == {"type": "Refused", "message": "no thanks"}
    assert result["payload_size"] == 8 * 1024 * 1024


def test_stock_wove_with_the_wrong_secret_is_refused(tls_worker: int, certs: Certs) -> None:
    result = _run_stock_wove(tls_worker, certs, "--wrong-secret")
    assert result["outcome"] == "refused", result
    payload = result["payload"]
    assert payload["source"] == "transport", payload
    assert "StatusCode.UNAUTHENTICATED" in payload["message"]
    assert "Invalid Wove network executor signature." in payload["message"]
