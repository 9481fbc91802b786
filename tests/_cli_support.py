"""``python -m wove_h2grpc`` as a child process, for the CLI and worker interop tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from typing import IO, Dict, List, Optional, Sequence

from _support import REPO_DIR

# The line ``wove-h2grpc serve`` prints on stdout once it is listening.
SERVING = re.compile(r"serving \S+ on (\S+):(\d+) ")


class CliProcess:
    """``python -m wove_h2grpc ARGS`` with its stdout collected line by line."""

    def __init__(self, args: Sequence[str], env: Optional[Dict[str, str]] = None) -> None:
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_DIR), full_env.get("PYTHONPATH", "")) if p
        )
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wove_h2grpc", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.lines: List[str] = []
        self.stderr_lines: List[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(
                target=self._pump, args=(self.proc.stderr, self.stderr_lines), daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream: Optional[IO[str]], sink: List[str]) -> None:
        if stream is None:
            return
        for line in stream:
            sink.append(line.rstrip("\n"))

    def wait_for_port(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = SERVING.search(line)
                if match:
                    return int(match.group(2))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(
            f"serve did not become ready (exit {self.proc.returncode}); "
            f"stdout {self.lines[-10:]}, stderr {self.stderr_lines[-10:]}"
        )

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
