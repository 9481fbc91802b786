"""Shared test plumbing: helper processes (grpcio lives only there), certificates, ports.

grpcio is never imported in the test process itself: every grpcio server or client runs
in a separate process whose interpreter is ``$WOVE_H2GRPC_GRPCIO_PYTHON`` (default: the
current interpreter). That lets a PyPy lane run our code on PyPy against grpcio on CPython.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Dict, List, Optional, Sequence

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent


def grpcio_python() -> str:
    """Interpreter that runs grpcio helper processes (servers and clients)."""
    return os.environ.get("WOVE_H2GRPC_GRPCIO_PYTHON") or sys.executable


def grpcio_importable_here() -> bool:
    """True when grpcio can be imported by the *test* interpreter (never on PyPy lanes)."""
    import importlib.util

    return importlib.util.find_spec("grpc") is not None


@dataclasses.dataclass
class HelperProcess:
    """A child process that printed ``READY <info>`` on stdout once it was serving."""

    proc: subprocess.Popen[str]
    info: str
    lines: List[str]
    pump: Optional[threading.Thread] = None

    def _reap(self) -> None:
        """Join the stdout pump and close the pipe (no ResourceWarning left behind)."""
        if self.pump is not None:
            self.pump.join(timeout=5)
        if self.proc.stdout is not None and (self.pump is None or not self.pump.is_alive()):
            self.proc.stdout.close()

    @property
    def port(self) -> int:
        return int(self.info.split()[0])

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self._reap()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reap()


def _pump(stream: IO[str], lines: List[str], ready: threading.Event, box: List[str]) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))
        if not ready.is_set() and line.startswith("READY"):
            box.append(line[len("READY") :].strip())
            ready.set()
    ready.set()


def start_helper(
    script: str,
    args: Sequence[str] = (),
    *,
    python: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    timeout: float = 30.0,
) -> HelperProcess:
    """Start ``tests/<script>`` and wait (bounded) until it prints ``READY ...``.

    stderr is inherited so that a helper's traceback shows in the pytest output.
    """
    cmd = [python or grpcio_python(), str(TESTS_DIR / script), *args]
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    # The helper must find the repository (for the wove_h2grpc/worker helpers) even when the
    # package is not installed in the helper's interpreter.
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_DIR), full_env.get("PYTHONPATH", "")) if p
    )
    if env:
        full_env.update(env)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=full_env)
    assert proc.stdout is not None
    lines: List[str] = []
    box: List[str] = []
    ready = threading.Event()
    thread = threading.Thread(target=_pump, args=(proc.stdout, lines, ready, box), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            break
    if not box:
        proc.kill()
        proc.wait(timeout=10)
        thread.join(timeout=5)
        proc.stdout.close()
        raise RuntimeError(
            f"helper {script} {' '.join(args)} did not become ready within {timeout}s "
            f"(exit code {proc.returncode}); stdout: {lines[-20:]}"
        )
    return HelperProcess(proc, box[0], lines, thread)


@dataclasses.dataclass
class Certs:
    """PEM files from a trustme CA: server cert for localhost/127.0.0.1/::1, a client cert."""

    ca_pem: bytes
    ca_file: str
    server_cert_file: str  # chain: leaf + CA
    server_key_file: str
    client_cert_pem: bytes
    client_key_pem: bytes
    client_cert_file: str
    client_key_file: str
    other_ca_pem: bytes  # a CA that signed nothing here (wrong-CA tests)


def make_certs(directory: Path) -> Certs:
    """Issue certificates with trustme into ``directory``."""
    import trustme

    ca = trustme.CA()
    other = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1", "server.test")
    client = ca.issue_cert("client.test")
    files = {
        "ca.pem": ca.cert_pem.bytes(),
        "server.pem": b"".join(b.bytes() for b in server.cert_chain_pems),
        "server.key": server.private_key_pem.bytes(),
        "client.pem": b"".join(b.bytes() for b in client.cert_chain_pems),
        "client.key": client.private_key_pem.bytes(),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return Certs(
        ca_pem=files["ca.pem"],
        ca_file=str(directory / "ca.pem"),
        server_cert_file=str(directory / "server.pem"),
        server_key_file=str(directory / "server.key"),
        client_cert_pem=files["client.pem"],
        client_key_pem=files["client.key"],
        client_cert_file=str(directory / "client.pem"),
        client_key_file=str(directory / "client.key"),
        other_ca_pem=other.cert_pem.bytes(),
    )


class TracedMemory:
    """``tracemalloc`` figures for a block, or ``None`` where the interpreter has no
    tracemalloc (PyPy): memory bounds are then checked on the CPython lanes only, while
    the behaviour around them is checked everywhere."""

    def __init__(self) -> None:
        try:
            import tracemalloc
        except ImportError:
            self._tm = None
        else:
            self._tm = tracemalloc
        self.peak: Optional[int] = None

    def __enter__(self) -> TracedMemory:
        if self._tm is not None:
            import gc

            gc.collect()
            self._tm.start()
        return self

    def current(self) -> Optional[int]:
        return self._tm.get_traced_memory()[0] if self._tm is not None else None

    def __exit__(self, *exc: object) -> None:
        if self._tm is not None:
            self.peak = self._tm.get_traced_memory()[1]
            self._tm.stop()


def doc_python_blocks(doc: str) -> List[str]:
    """The ``python`` code blocks of ``docs/<doc>``, each a complete script."""
    import re

    text = (REPO_DIR / "docs" / doc).read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def run_doc_example(code: str, directory: Path, name: str) -> subprocess.CompletedProcess[str]:
    """Run one docs example as a script in ``directory`` (the repository on PYTHONPATH)."""
    script = directory / f"{name}.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
