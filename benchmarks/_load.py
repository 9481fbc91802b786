"""The server-load section: h2load drives each echo server with unary 100 B gRPC calls.

h2load (from nghttp2) sends the same framed gRPC request (5-byte prefix + payload) on
``connections`` connections with up to ``streams`` concurrent streams each, ``requests`` in
all, and reports how many ended with an HTTP 2xx status. A gRPC failure also has HTTP
status 200 (the failure is in the ``grpc-status`` trailer, which h2load does not read), so
a call counts as OK only when three independent counts agree with the number asked for:

- h2load's ``succeeded`` (and none failed, errored or timed out),
- the response bytes h2load received (its ``data`` figure): one framed echo per call, as a
  failed call (a trailers-only response) carries no message,
- the server's own count of echo handler calls it completed (``COUNT`` on SIGUSR1, see
  ``_servers.py``), read before and after the measured run.

The server's CPU time (user + system, ``/proc/<pid>/stat``) is read around the run too.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: Payload bytes of one echo request (and response).
LOAD_SIZE = 100

#: The load section's servers: key -> (``_servers.py`` kind, title).
LOAD_SERVERS = {
    "h2": ("h2-echo", "wove_h2grpc.Server"),
    "grpcio": ("grpcio-load-echo", "grpc.aio server"),
    "grpclib": ("grpclib-echo", "grpclib server"),
}
#: The server every ratio is taken to.
LOAD_BASELINE = "grpcio"


@dataclasses.dataclass(frozen=True)
class LoadLevel:
    """One load level: ``connections`` x ``streams`` concurrent streams per connection;
    ``requests`` calls measured (``quick_requests`` in quick mode) after a warm-up of
    ``warmup`` (``quick_warmup``) calls at the same level."""

    key: str
    connections: int
    streams: int
    requests: int
    quick_requests: int
    warmup: int
    quick_warmup: int

    @property
    def title(self) -> str:
        conn = "connection" if self.connections == 1 else "connections"
        stream = "stream" if self.streams == 1 else "streams"
        return f"{self.connections} {conn} \N{MULTIPLICATION SIGN} {self.streams} {stream}"

    def counts(self, quick: bool) -> Tuple[int, int]:
        """``(requests, warmup)`` for a full or a quick run."""
        if quick:
            return self.quick_requests, self.quick_warmup
        return self.requests, self.warmup


LOAD_LEVELS = (
    LoadLevel("c1_m1", 1, 1, 8_000, 200, 1_000, 100),
    LoadLevel("c10_m10", 10, 10, 30_000, 1_000, 3_000, 500),
    LoadLevel("c50_m100", 50, 100, 50_000, 5_000, 10_000, 5_000),
)


def find_h2load() -> Optional[str]:
    """The h2load executable on PATH, or None."""
    return shutil.which("h2load")


def h2load_version(path: str) -> str:
    """``h2load nghttp2/1.52.0`` (or what the executable says first)."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"h2load (version unknown: {exc})"
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "h2load"


def grpc_frame(size: int = LOAD_SIZE) -> bytes:
    """One uncompressed gRPC message of ``size`` bytes: flag 0, big-endian length, body."""
    return b"\x00" + struct.pack(">I", size) + b"x" * size


def h2load_command(
    h2load: str, port: int, method: str, data_file: Path, connections: int, streams: int, n: int
) -> List[str]:
    """The h2load command of one run: ``n`` POSTs of the framed message in ``data_file``."""
    return [
        h2load,
        "-n",
        str(n),
        "-c",
        str(connections),
        "-m",
        str(streams),
        "-t",
        "1",
        "-d",
        str(data_file),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        f"http://127.0.0.1:{port}{method}",
    ]


_DURATION = re.compile(r"finished in ([0-9.]+)(us|ms|s),")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_DATA = re.compile(r"traffic: .*?, [0-9.]+\w* \((\d+)\) data")
_SCALE = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_h2load(text: str) -> Dict[str, Any]:
    """The figures of h2load's summary: wall seconds, request counts, status classes and
    the response body bytes received. ValueError if a line is missing."""
    found = {
        name: pattern.search(text)
        for name, pattern in (
            ("finished", _DURATION),
            ("requests", _REQUESTS),
            ("status", _STATUS),
            ("data", _DATA),
        )
    }
    missing = [name for name, match in found.items() if match is None]
    if missing:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise ValueError(f"h2load output has no {', '.join(missing)} line: {tail!r}")
    duration, requests, status, data = (
        found[k] for k in ("finished", "requests", "status", "data")
    )
    assert duration and requests and status and data
    names = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    out: Dict[str, Any] = {"wall_s": float(duration.group(1)) * _SCALE[duration.group(2)]}
    out.update({name: int(value) for name, value in zip(names, requests.groups())})
    out.update(
        {f"status_{cls}": int(v) for cls, v in zip(("2xx", "3xx", "4xx", "5xx"), status.groups())}
    )
    out["data_bytes"] = int(data.group(1))
    return out


def load_figures(
    parsed: Dict[str, Any], requested: int, completed: int, cpu_s: float, size: int = LOAD_SIZE
) -> Dict[str, Any]:
    """One measured run's figures from h2load's summary, the server's completed-call count
    and its CPU seconds during the run.

    ``calls_ok`` is the smallest of h2load's successes, the echoes whose bytes arrived and
    the server's completed calls (never more than ``requested``); ``problems`` names every
    count that disagrees with ``requested``, so a run is OK exactly when it is empty.
    ``requests_per_s`` is ``calls_ok`` over the wall time (h2load's own rate, which counts
    a failed gRPC call as a success, is ``h2load_requests_per_s``); the server's CPU is per
    call asked for.
    """
    frame = 5 + size
    echoed = parsed["data_bytes"] // frame
    problems: List[str] = []
    if parsed["total"] != requested:
        problems.append(f"h2load ran {parsed['total']:,} requests, not {requested:,}")
    if parsed["succeeded"] != requested:
        problems.append(f"h2load: {parsed['succeeded']:,} of {requested:,} succeeded")
    for name in ("failed", "errored", "timeout"):
        if parsed[name]:
            problems.append(f"h2load: {parsed[name]:,} {name}")
    if parsed["data_bytes"] != requested * frame:
        problems.append(
            f"{parsed['data_bytes']:,} response bytes, not {requested * frame:,} "
            f"({requested:,} echoes of {frame} B)"
        )
    if completed != requested:
        problems.append(f"server completed {completed:,} calls, not {requested:,}")
    wall = parsed["wall_s"]
    ok = max(0, min(parsed["succeeded"], echoed, completed, requested))
    return {
        "requests": requested,
        "calls_ok": ok,
        "requests_per_s": ok / wall if wall > 0 else 0.0,
        "h2load_requests_per_s": parsed["succeeded"] / wall if wall > 0 else 0.0,
        "cpu_us_per_request": cpu_s * 1e6 / requested,
        "server_cpu_s": cpu_s,
        "server_completed": completed,
        **{f"h2load_{key}": value for key, value in parsed.items()},
        "problems": problems,
    }


def run_h2load(command: Sequence[str], timeout: float) -> Dict[str, Any]:
    """Run h2load; its parsed summary, or ``{"error": ...}``."""
    try:
        proc = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"h2load timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": f"h2load exit status {proc.returncode}: {lines[-1] if lines else ''}"}
    try:
        return parse_h2load(proc.stdout)
    except ValueError as exc:
        return {"error": str(exc)}


def round_ok(result: Dict[str, Any]) -> bool:
    """A measured run counts as OK: it ran, and every count matched the request count."""
    return "error" not in result and not result.get("problems")
