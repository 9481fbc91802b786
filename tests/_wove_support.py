"""Plumbing for the Wove executor tests: grpcio worker processes and Wove environments.

The worker (``tests/wove_grpcio_worker.py``) runs under ``grpcio_python()`` as a separate
process; the pytest process never imports grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import wove
from _support import REPO_DIR, TESTS_DIR, Certs, HelperProcess, start_helper

SECRET_ENV = "WOVE_H2GRPC_TEST_SECRET"
SECRET = "s3cret-for-tests"

_names = itertools.count()


@dataclasses.dataclass
class Worker:
    """A running grpcio Wove worker and the file it logs executions to."""

    helper: HelperProcess
    executions: Path

    @property
    def port(self) -> int:
        return self.helper.port

    def lines(self) -> List[str]:
        if not self.executions.exists():
            return []
        return self.executions.read_text(encoding="utf-8").splitlines()

    def ran(self) -> List[str]:
        """run_ids of tasks the worker started executing."""
        return [line.split(" ", 1)[1] for line in self.lines() if line.startswith("run ")]

    def wait_for_line(self, prefix: str, timeout: float = 10.0) -> List[str]:
        """Lines starting with ``prefix`` once there is at least one (bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines() if line.startswith(prefix)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    async def wait_line(self, prefix: str, timeout: float = 10.0) -> List[str]:
        """:meth:`wait_for_line` for async tests (does not block the event loop)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines() if line.startswith(prefix)]
            if found or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self.helper.stop()


def start_worker(
    tmp_path: Path,
    *args: str,
    secret: Optional[str] = None,
    certs: Optional[Certs] = None,
    client_ca: bool = False,
) -> Worker:
    """Start a grpcio worker on 127.0.0.1 (TLS when ``certs``; signed when ``secret``)."""
    executions = tmp_path / f"executions-{next(_names)}.log"
    argv = ["--executions", str(executions), *args]
    env: Dict[str, str] = {}
    if secret is not None:
        env[SECRET_ENV] = secret
        argv += ["--secret-env", SECRET_ENV]
    if certs is not None:
        argv += ["--tls-cert", certs.server_cert_file, "--tls-key", certs.server_key_file]
        if client_ca:
            argv += ["--client-ca", certs.ca_file]
    return Worker(start_helper("wove_grpcio_worker.py", argv, env=env), executions)


def closed_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def environment(executor: Any, config: Dict[str, Any], **definition: Any) -> Iterator[str]:
    """A uniquely named Wove environment, removed again afterwards."""
    name = f"grpc_test_{os.getpid()}_{next(_names)}"
    wove.config(
        environments={name: {"executor": executor, "executor_config": config, **definition}}
    )
    try:
        yield name
    finally:
        wove.config(environments={name: None})  # type: ignore[dict-item]


def run_weave_script(
    args: Sequence[str],
    *,
    python: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    timeout: float = 120.0,
    flags: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``tests/wove_weave_runner.py`` (bounded) in a fresh interpreter."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_DIR), full_env.get("PYTHONPATH", "")) if p
    )
    if env:
        full_env.update(env)
    cmd = [python or sys.executable, *flags, str(TESTS_DIR / "wove_weave_runner.py"), *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=full_env, timeout=timeout, check=False
    )


def runner_result(proc: subprocess.CompletedProcess[str]) -> Dict[str, Any]:
    """The ``RESULT {...}`` line a runner printed (asserting it exited 0)."""
    assert proc.returncode == 0, f"runner failed ({proc.returncode}): {proc.stderr[-3000:]}"
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            value: Dict[str, Any] = json.loads(line[len("RESULT ") :])
            return value
    raise AssertionError(f"runner printed no RESULT line: {proc.stdout[-2000:]}")
