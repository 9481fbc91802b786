"""Benchmark wove_h2grpc against grpc.aio and grpclib: ``python -m benchmarks [--quick]``.

Servers run as separate processes; every client runs in its own process per measurement
(so CPU time and peak RSS belong to that client), interleaved round by round, and the
median of the rounds is reported. See docs/benchmarks.md for what each figure means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.util
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as ``python benchmarks/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _env, _load, report

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DOCS_FILE = REPO_DIR / "docs" / "benchmarks.md"
ECHO_METHOD = "/bench.Echo/Echo"

CLIENTS = ("wove_h2grpc", "grpc.aio", "grpclib")
# Our client run by the PyPy interpreter given with --pypy, in the scenarios that set a
# ``pypy_warmup``; a column of the client tables like the others.
PYPY_CLIENT = "wove_h2grpc (PyPy)"
# The floor: a raw asyncio TCP echo (plain Protocols, length-prefixed 100 B messages), run by
# each interpreter in the rounds of the first server, beside the 100 B sequential scenario.
FLOOR_SCENARIO = "seq_100b"
FLOOR_TITLE = "raw asyncio TCP echo, 100 B sequential"
SERVERS = {"grpcio": "grpcio-echo", "h2": "h2-echo"}
SERVER_TITLES = {"grpcio": "grpcio aio echo server", "h2": "wove_h2grpc.Server echo server"}


STREAM_KINDS = ("bidi", "server_stream", "slow_consumer")
#: The sections ``--skip`` can leave out.
SECTIONS = ("clients", "floor", "imports", "wove", "load", "loops")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One client workload: a payload size, a call pattern and how many calls to time.

    For the streaming kinds ``calls`` counts round trips (``bidi``) or messages of one
    server stream (``server_stream``, ``slow_consumer``), and ``warmup`` is the length of
    the warm-up exchange. ``window`` asks each client for that stream receive window;
    the slow consumer waits ``stall_s`` after its first message, then sleeps ``pause_s``
    after every ``pause_every`` messages. ``pypy_warmup``: the warm-up of our client under
    PyPy (whose JIT needs more calls to compile the hot paths); ``None``: no PyPy row.
    """

    key: str
    title: str
    kind: str  # sequential | concurrent | burst | bidi | server_stream | slow_consumer
    size: int
    calls: int
    quick_calls: int
    warmup: int
    concurrency: int = 64
    window: Optional[int] = None
    stall_s: float = 0.2
    pause_every: int = 8
    pause_s: float = 0.001
    pypy_warmup: Optional[int] = None

    @property
    def streaming(self) -> bool:
        return self.kind in STREAM_KINDS

    @property
    def unit(self) -> str:
        """What ``calls`` counts, for the table's label."""
        return {
            "bidi": "round trips",
            "server_stream": "messages",
            "slow_consumer": "messages",
        }.get(self.kind, "calls")


KIB, MIB = 1024, 1024 * 1024
SCENARIOS = (
    Scenario("seq_100b", "100 B sequential", "sequential", 100, 3000, 60, 200, pypy_warmup=2000),
    Scenario(
        "conc64_100b", "100 B, 64 in flight", "concurrent", 100, 10000, 256, 640, pypy_warmup=4000
    ),
    Scenario(
        "seq_64kib", "64 KiB sequential", "sequential", 64 * KIB, 1000, 20, 50, pypy_warmup=500
    ),
    Scenario("seq_1mib", "1 MiB sequential", "sequential", MIB, 150, 6, 10, pypy_warmup=100),
    Scenario("burst_10k", "10,000-call burst (100 B)", "burst", 100, 10000, 500, 640),
    Scenario("bidi_pingpong_100b", "bidi ping-pong, 100 B", "bidi", 100, 3000, 200, 200),
    Scenario(
        "server_stream_100b",
        "server stream, 100 B messages",
        "server_stream",
        100,
        100000,
        5000,
        1000,
    ),
    # 1 GiB (quick: 64 MiB) of 64 KiB messages, read slowly.
    Scenario(
        "slow_consumer",
        "slow consumer, 64 KiB messages, default window",
        "slow_consumer",
        64 * KIB,
        16384,
        1024,
        16,
    ),
    Scenario(
        "slow_consumer_1mib_window",
        "slow consumer, 64 KiB messages, 1 MiB stream window",
        "slow_consumer",
        64 * KIB,
        16384,
        1024,
        16,
        window=MIB,
    ),
)
PROFILE_SCENARIOS = (
    "seq_100b",
    "conc64_100b",
    "seq_1mib",
    "bidi_pingpong_100b",
    "server_stream_100b",
)

# (transport, codec, delivery); the row's key is wove_case_key(...).
WOVE_CASES = (
    ("grpcio", "json", "unary"),
    ("h2", "json", "unary"),
    ("h2", "msgpack", "unary"),
    ("h2", "json", "stream"),
    ("h2", "msgpack", "stream"),
)
WOVE_SIZES = (("small", 100), ("1mib", 1024 * 1024))

# The event-loop comparison: these scenarios, with our client on each loop against the grpcio
# echo server, and with our Server on each loop (our client on asyncio's) as the echo server.
LOOPS = ("asyncio", "uvloop")
LOOP_SCENARIOS = ("seq_100b", "conc64_100b", "seq_1mib")


def wove_case_key(transport: str, codec: str, delivery: str = "unary") -> str:
    """A Wove row's key: ``"h2/json"`` for unary delivery, ``"h2/json stream"`` streamed."""
    key = f"{transport}/{codec}"
    return key if delivery == "unary" else f"{key} {delivery}"


def wove_spec(
    port: int, transport: str, codec: str, delivery: str, size: int, tasks: int
) -> Dict[str, Any]:
    """The JSON spec of one ``_wove_client.py`` measurement."""
    spec: Dict[str, Any] = {
        "port": port,
        "transport": transport,
        "codec": codec,
        "size": size,
        "tasks": tasks,
    }
    if delivery != "unary":
        spec["delivery"] = delivery
    return spec


def log(message: str) -> None:
    """Progress goes to stderr so stdout carries only the table."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def child_env(tree: Optional[Path] = None) -> Dict[str, str]:
    """Environment of every child: the repo (or another checkout, ``tree``) importable first,
    no output buffering surprises."""
    env = dict(os.environ)
    first = str(tree or REPO_DIR)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (first, env.get("PYTHONPATH", "")) if p)
    env.setdefault("WOVE_H2GRPC_BENCH_SECRET", "bench-secret")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def parse_ready(line: str) -> int:
    """The port of a server's ``READY <port>`` line."""
    words = line.split()
    if len(words) < 2 or words[0] != "READY" or not words[1].isdigit():
        raise ValueError(f"not a READY line: {line!r}")
    return int(words[1])


class ServerProcess:
    """A benchmark server in its own process; ``port`` is known once it printed READY.

    ``tree`` runs another checkout's server script on that checkout's package (the
    comparison of two trees' servers)."""

    def __init__(
        self,
        kind: str,
        timeout: float = 30.0,
        *,
        tree: Optional[Path] = None,
        loop: str = "asyncio",
    ) -> None:
        self.kind = kind
        self.lines: List[str] = []
        self._counts: queue.Queue[str] = queue.Queue()
        script = (tree / "benchmarks" if tree is not None else BENCH_DIR) / "_servers.py"
        # --loop only when it is not the default: another tree's script may not know it.
        on_loop = [] if loop == "asyncio" else ["--loop", loop]
        self.proc = subprocess.Popen(
            [sys.executable, str(script), kind, *on_loop],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(tree),
            cwd=str(tree or REPO_DIR),
        )
        ready = threading.Event()
        box: List[str] = []

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if not ready.is_set() and line.startswith("READY"):
                    box.append(line)
                    ready.set()
                elif line.startswith("COUNT"):
                    self._counts.put(line)
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or not box:
            self.stop()
            tail = "\n".join(self.lines[-15:])
            raise RuntimeError(f"server {kind} did not start:\n{tail}")
        self.port = parse_ready(box[0])

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far (Linux /proc)."""
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def completed_calls(self, timeout: float = 10.0) -> int:
        """The echo calls the server's handler has completed so far: SIGUSR1 asks, the
        server answers with a ``COUNT <n>`` line (RuntimeError if none comes in time)."""
        while not self._counts.empty():
            self._counts.get_nowait()  # a stale answer to an earlier, timed-out ask
        if self.proc.poll() is not None:
            raise RuntimeError(f"server {self.kind} exited with status {self.proc.returncode}")
        self.proc.send_signal(signal.SIGUSR1)
        try:
            line = self._counts.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"server {self.kind} sent no COUNT within {timeout:.0f} s") from None
        from benchmarks._servers import parse_count

        return parse_count(line)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def client_spec(
    scenario: Scenario,
    client: str,
    port: int,
    *,
    quick: bool = False,
    server_pid: Optional[int] = None,
) -> Dict[str, Any]:
    """The JSON spec of one ``_client.py`` measurement (quick mode: the short counts)."""
    spec: Dict[str, Any] = {
        "client": client,
        "port": port,
        "method": ECHO_METHOD,
        "scenario": scenario.kind,
        "size": scenario.size,
        "calls": scenario.quick_calls if quick else scenario.calls,
        "warmup": min(scenario.warmup, 64) if quick else scenario.warmup,
        "concurrency": scenario.concurrency,
    }
    if scenario.streaming:
        if scenario.window:
            spec["window"] = scenario.window
        if server_pid:
            spec["server_pid"] = server_pid
        if scenario.kind == "slow_consumer":
            spec.update(
                stall_s=scenario.stall_s, pause_every=scenario.pause_every, pause_s=scenario.pause_s
            )
    return spec


def pypy_spec(scenario: Scenario, port: int, *, quick: bool = False) -> Dict[str, Any]:
    """The spec of our client's PyPy measurement: ``client_spec`` with the PyPy warm-up."""
    spec = client_spec(scenario, "wove_h2grpc", port, quick=quick)
    warmup = scenario.pypy_warmup or scenario.warmup
    spec["warmup"] = min(warmup, 64) if quick else warmup
    return spec


def floor_spec(
    scenario: Scenario, port: int, *, quick: bool = False, pypy: bool = False
) -> Dict[str, Any]:
    """The spec of one floor measurement (the raw echo), warmed up like our client on the
    same interpreter."""
    spec = (
        pypy_spec(scenario, port, quick=quick)
        if pypy
        else client_spec(scenario, "raw", port, quick=quick)
    )
    spec["client"] = "raw"
    return spec


def run_child(
    script: str,
    spec: Dict[str, Any],
    timeout: float,
    *,
    tree: Optional[Path] = None,
    python: Optional[str] = None,
) -> Dict[str, Any]:
    """Run one measurement process (importing ``tree``'s package if given) with ``python``
    (default: this interpreter); its last stdout line is the JSON result."""
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [python or sys.executable, str(BENCH_DIR / script), json.dumps(spec)],
            capture_output=True,
            text=True,
            env=child_env(tree),
            cwd=str(REPO_DIR),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not proc.stdout.strip():
        lines = (proc.stderr or "").strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    result: Dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def median_of(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Median of every numeric figure over the successful runs (errors reported if none)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"] if runs else "no runs"}
    out: Dict[str, Any] = {"rounds_ok": len(ok)}
    for key, value in ok[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in ok)
        elif key == "latency_quantiles_us":
            out[key] = [statistics.median(r[key][i] for r in ok) for i in range(len(value))]
    if len(ok) < len(runs):
        out["errors"] = [r["error"] for r in runs if "error" in r]
    return out


def available_clients(requested: Sequence[str]) -> Dict[str, Optional[str]]:
    """Each requested client -> ``None`` if usable, else the reason it is skipped."""
    needs = {"wove_h2grpc": "wove_h2grpc.client", "grpc.aio": "grpc", "grpclib": "grpclib"}
    out: Dict[str, Optional[str]] = {}
    for client in requested:
        module = needs[client]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        out[client] = None if found else f"{module} is not importable"
    return out


def probe_pypy(python: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """``(version, None)`` if ``python`` is a PyPy that imports the client (this tree's
    package first, as every child does), else ``(None, why not)``."""
    if not python:
        return None, (
            "no --pypy PYTHON given (a PyPy venv with the package's dependencies: "
            ".ci/install-pypy.sh DIR, then --pypy DIR/bin/python)"
        )
    probe = (
        "import platform, sys, wove_h2grpc.client; "
        "print(sys.implementation.name, platform.python_version(), "
        "'.'.join(map(str, sys.pypy_version_info[:3])) if hasattr(sys, 'pypy_version_info') "
        "else '')"
    )
    try:
        proc = subprocess.run(
            [python, "-c", probe],
            capture_output=True,
            text=True,
            env=child_env(),
            cwd=str(REPO_DIR),
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{python} did not run: {exc}"
    words = proc.stdout.split()
    if proc.returncode != 0 or len(words) < 2:
        lines = (proc.stderr or "").strip().splitlines()
        return None, f"{python} cannot import wove_h2grpc.client: " + (
            lines[-1] if lines else f"exit status {proc.returncode}"
        )
    if words[0] != "pypy":
        return None, f"{python} is {words[0]}, not PyPy"
    return f"PyPy {words[2]} (Python {words[1]})" if len(words) > 2 else f"PyPy {words[1]}", None


def server_available(server: str) -> Optional[str]:
    """``None`` if the server kind can run, else why not."""
    module = {"grpcio": "grpc", "h2": "wove_h2grpc.server", "grpclib": "grpclib.server"}[server]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return f"{module} is not importable"
    return None


def scenario_clients(scenario: Scenario, clients: Sequence[str], pypy: bool) -> List[str]:
    """The columns measured in a scenario: the clients, plus ours on PyPy where the
    scenario has a PyPy warm-up and a PyPy interpreter was found."""
    out = list(clients)
    if pypy and scenario.pypy_warmup is not None:
        out.insert(out.index("wove_h2grpc") + 1 if "wove_h2grpc" in out else 0, PYPY_CLIENT)
    return out


def bench_clients(
    args: argparse.Namespace,
    clients: Sequence[str],
    skipped: List[str],
    floor: Optional[Dict[str, List[Dict[str, Any]]]] = None,
) -> Dict[str, Any]:
    """Every scenario, every client, every round, against each selected server.

    ``floor``, if given, maps each interpreter (``"CPython"``, and ``"PyPy"`` with
    ``--pypy``) to a list that gets one raw-echo measurement per round of the first server,
    run right after the clients of the 100 B sequential scenario.
    """
    servers = ["grpcio", "h2"] if args.server == "both" else [args.server]
    scenarios = [s for s in SCENARIOS if not args.scenarios or s.key in args.scenarios]
    timeout = 60 if args.quick else 600
    out: Dict[str, Any] = {}
    for server in servers:
        reason = server_available(server)
        if reason:
            skipped.append(f"server {server}: {reason}")
            log(f"skip server {server}: {reason}")
            continue
        proc = ServerProcess(SERVERS[server])
        log(f"server {server} ({SERVERS[server]}) on port {proc.port}")
        raw: Optional[ServerProcess] = None
        if floor is not None and any(s.key == FLOOR_SCENARIO for s in scenarios):
            raw = ServerProcess("raw-echo")
            log(f"floor: raw echo server on port {raw.port}")
        here = list(scenarios)
        columns = {s.key: scenario_clients(s, clients, bool(args.pypy)) for s in here}
        runs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {
            s.key: {c: [] for c in columns[s.key]} for s in here
        }
        try:
            for round_no in range(args.rounds):
                for scenario in here:
                    for client in columns[scenario.key]:
                        python: Optional[str] = None
                        if client == PYPY_CLIENT:
                            spec = pypy_spec(scenario, proc.port, quick=args.quick)
                            python = args.pypy
                        else:
                            spec = client_spec(
                                scenario,
                                client,
                                proc.port,
                                quick=args.quick,
                                server_pid=proc.proc.pid,
                            )
                        result = run_child("_client.py", spec, timeout=timeout, python=python)
                        runs[scenario.key][client].append(result)
                        log(
                            f"  [{server} r{round_no + 1}] {scenario.key:12} {client:12} "
                            + report.one_line(result)
                        )
                    if raw is not None and floor is not None and scenario.key == FLOOR_SCENARIO:
                        for name, runs_of in floor.items():
                            pypy = name == "PyPy"
                            spec = floor_spec(scenario, raw.port, quick=args.quick, pypy=pypy)
                            result = run_child(
                                "_client.py",
                                spec,
                                timeout=timeout,
                                python=args.pypy if pypy else None,
                            )
                            runs_of.append(result)
                            log(
                                f"  [{server} r{round_no + 1}] {'floor':12} {name:12} "
                                + report.one_line(result)
                            )
        finally:
            proc.stop()
            if raw is not None:
                raw.stop()
        floor = None  # measured in the first server's rounds only
        out[server] = {
            "title": SERVER_TITLES[server],
            "scenarios": {
                s.key: {
                    "title": s.title,
                    "size": s.size,
                    "kind": s.kind,
                    "calls": s.quick_calls if args.quick else s.calls,
                    "unit": s.unit,
                    "clients": {
                        c: {"median": median_of(runs[s.key][c]), "rounds": runs[s.key][c]}
                        for c in columns[s.key]
                    },
                }
                for s in here
            },
        }
    return out


def uvloop_available() -> Optional[str]:
    """``None`` if uvloop imports here (the children use this interpreter), else why not."""
    try:
        import uvloop
    except ImportError as exc:
        return f"uvloop is not installed ({exc}; pip install 'wove_h2grpc[speed]')"
    return None if hasattr(uvloop, "run") else "uvloop has no uvloop.run (older than 0.18)"


def loop_spec(
    scenario: Scenario, port: int, *, loop: str, server_pid: int, quick: bool = False
) -> Dict[str, Any]:
    """The spec of one event-loop measurement: our client on ``loop``, the server's CPU
    counted over the measured section."""
    spec = client_spec(scenario, "wove_h2grpc", port, quick=quick)
    spec.update(loop=loop, server_pid=server_pid)
    return spec


def _loop_variants(
    args: argparse.Namespace,
    scenarios: Sequence[Scenario],
    variants: Dict[str, Tuple[ServerProcess, str]],
    label: str,
) -> Dict[str, Any]:
    """Every scenario on every variant (name -> (server, client loop)), round by round."""
    runs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {
        s.key: {v: [] for v in variants} for s in scenarios
    }
    for round_no in range(args.rounds):
        for scenario in scenarios:
            for name, (proc, loop) in variants.items():
                spec = loop_spec(
                    scenario, proc.port, loop=loop, server_pid=proc.proc.pid, quick=args.quick
                )
                result = run_child("_client.py", spec, timeout=60 if args.quick else 600)
                runs[scenario.key][name].append(result)
                log(
                    f"  [{label} r{round_no + 1}] {scenario.key:12} {name:8} "
                    + report.one_line(result)
                )
    return {
        s.key: {
            "title": s.title,
            "calls": s.quick_calls if args.quick else s.calls,
            "variants": {
                v: {"median": median_of(runs[s.key][v]), "rounds": runs[s.key][v]} for v in variants
            },
        }
        for s in scenarios
    }


def bench_loops(args: argparse.Namespace, skipped: List[str]) -> Dict[str, Any]:
    """asyncio's event loop against uvloop: our client on each (grpcio echo server), and our
    Server on each (our client on asyncio). Skipped, with the reason, without uvloop."""
    reason = uvloop_available()
    if reason:
        skipped.append(f"event loops (asyncio vs uvloop): {reason}")
        log(f"skip event loops: {reason}")
        return {}
    import uvloop

    scenarios = [
        s
        for s in SCENARIOS
        if s.key in LOOP_SCENARIOS and (not args.scenarios or s.key in args.scenarios)
    ]
    out: Dict[str, Any] = {"uvloop": getattr(uvloop, "__version__", "?")}
    reason = server_available("grpcio")
    if reason:
        skipped.append(f"event loops, our client: server grpcio: {reason}")
    else:
        proc = ServerProcess(SERVERS["grpcio"])
        log(f"event loops: our client against the grpcio echo server on port {proc.port}")
        try:
            variants = {loop: (proc, loop) for loop in LOOPS}
            out["client"] = _loop_variants(args, scenarios, variants, "client loop")
        finally:
            proc.stop()
    procs = [ServerProcess(SERVERS["h2"], loop=loop) for loop in LOOPS]
    log(
        "event loops: our Server on "
        + ", ".join(f"{loop} (port {p.port})" for loop, p in zip(LOOPS, procs))
    )
    try:
        variants = {loop: (p, "asyncio") for loop, p in zip(LOOPS, procs)}
        out["server"] = _loop_variants(args, scenarios, variants, "server loop")
    finally:
        for p in procs:
            p.stop()
    return out


def bench_wove(args: argparse.Namespace, skipped: List[str]) -> Dict[str, Any]:
    """Wove level: mapped tasks through executor="grpc" over each transport and codec."""
    missing = [
        m
        for m in ("wove_h2grpc.wove.executor", "wove_h2grpc.worker", "wove_h2grpc.server")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        reason = "Wove level skipped: " + ", ".join(missing) + " not importable yet"
        skipped.append(reason)
        log(reason)
        return {}
    servers = ["grpcio", "h2"] if args.server == "both" else [args.server]
    tasks = 24 if args.quick else args.wove_tasks
    out: Dict[str, Any] = {}
    for server in servers:
        if server_available(server):
            continue
        proc = ServerProcess(f"{server}-worker")
        log(f"worker server {server} on port {proc.port}")
        runs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {
            size_key: {wove_case_key(*case): [] for case in WOVE_CASES}
            for size_key, _ in WOVE_SIZES
        }
        try:
            for round_no in range(args.rounds):
                for size_key, size in WOVE_SIZES:
                    for transport, codec, delivery in WOVE_CASES:
                        spec = wove_spec(proc.port, transport, codec, delivery, size, tasks)
                        result = run_child(
                            "_wove_client.py", spec, timeout=60 if args.quick else 900
                        )
                        key = wove_case_key(transport, codec, delivery)
                        runs[size_key][key].append(result)
                        log(
                            f"  [{server}-worker r{round_no + 1}] {size_key:6} "
                            f"{key:18} " + report.one_line(result)
                        )
        finally:
            proc.stop()
        out[server] = {
            "tasks": tasks,
            "sizes": {
                size_key: {
                    case: {"median": median_of(r), "rounds": r} for case, r in per_case.items()
                }
                for size_key, per_case in runs.items()
            },
        }
    return out


def load_run(
    proc: ServerProcess,
    h2load: str,
    data_file: Path,
    level: _load.LoadLevel,
    requests: int,
    timeout: float,
    method: str = ECHO_METHOD,
) -> Dict[str, Any]:
    """One measured h2load run of ``method`` against one server: h2load's figures, the
    server's CPU and completed-call count around it (see ``_load.load_figures``)."""
    command = _load.h2load_command(
        h2load, proc.port, method, data_file, level.connections, level.streams, requests
    )
    try:
        before = proc.completed_calls()
        cpu_before = proc.cpu_seconds()
        parsed = _load.run_h2load(command, timeout)
        # The count is asked before the CPU is read: the server's loop has had a turn
        # after h2load closed its connections, and that closing belongs to the run.
        after = proc.completed_calls()
        cpu_after = proc.cpu_seconds()
    except (RuntimeError, OSError, ValueError) as exc:
        return {"error": str(exc)}
    if "error" in parsed:
        return {**parsed, "server_completed": after - before}
    return _load.load_figures(parsed, requests, after - before, cpu_after - cpu_before)


def bench_load(args: argparse.Namespace, skipped: List[str]) -> Dict[str, Any]:
    """Server load: h2load against each echo server, every level, interleaved rounds."""
    h2load = _load.find_h2load()
    if h2load is None:
        reason = (
            "server load: h2load is not installed (Debian package nghttp2-client), "
            "so no load figures"
        )
        skipped.append(reason)
        log("skip " + reason)
        return {}
    servers: Dict[str, ServerProcess] = {}
    # A server that would not start gets an error for every run: its column says so, and
    # for our server the level's verdicts fail.
    failed: Dict[str, str] = {}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    data_file = args.results_dir / f".h2load-request-{os.getpid()}.bin"
    data_file.write_bytes(_load.grpc_frame(_load.LOAD_SIZE))
    timeout = 60.0 if args.quick else 300.0
    levels = _load.LOAD_LEVELS
    runs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    measured: List[str] = []
    try:
        for key, (kind, _title) in _load.LOAD_SERVERS.items():
            missing = server_available(key)
            if missing:
                skipped.append(f"server load, {key} server: {missing}")
                log(f"skip load server {key}: {missing}")
                continue
            try:
                servers[key] = ServerProcess(kind)
            except RuntimeError as exc:
                # The first line says which server, the last what went wrong.
                lines = [line for line in str(exc).splitlines() if line.strip()] or ["?"]
                failed[key] = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
                log(f"load server {key}: {exc}")
                continue
            log(f"load server {key} ({kind}) on port {servers[key].port}")
        measured = [key for key in _load.LOAD_SERVERS if key in servers or key in failed]
        runs = {level.key: {key: [] for key in measured} for level in levels}
        for key, proc in servers.items():
            for level in levels:
                _, warmup = level.counts(args.quick)
                command = _load.h2load_command(
                    h2load,
                    proc.port,
                    ECHO_METHOD,
                    data_file,
                    level.connections,
                    level.streams,
                    warmup,
                )
                warm = _load.run_h2load(command, timeout)
                if "error" in warm:
                    log(f"  [load warm-up] {key} {level.key}: {warm['error']}")
        for round_no in range(args.rounds):
            for level in levels:
                requests, _ = level.counts(args.quick)
                for key in measured:
                    if key in failed:
                        result = {"error": failed[key]}
                    else:
                        result = load_run(servers[key], h2load, data_file, level, requests, timeout)
                    runs[level.key][key].append(result)
                    log(
                        f"  [load r{round_no + 1}] {level.key:9} {key:8} "
                        + report.load_line(result)
                    )
    finally:
        for proc in servers.values():
            proc.stop()
        data_file.unlink(missing_ok=True)
    return {
        "tool": _load.h2load_version(h2load),
        "size": _load.LOAD_SIZE,
        "method": ECHO_METHOD,
        "servers": {key: _load.LOAD_SERVERS[key][1] for key in measured},
        "levels": {
            level.key: {
                "title": level.title,
                "connections": level.connections,
                "streams": level.streams,
                "requests": level.counts(args.quick)[0],
                "warmup": level.counts(args.quick)[1],
                "servers": {
                    key: {"median": median_of(runs[level.key][key]), "rounds": runs[level.key][key]}
                    for key in measured
                },
            }
            for level in levels
        },
    }


def profile_h2(args: argparse.Namespace, out_dir: Path) -> Dict[str, Any]:
    """cProfile our client at 100 B sequential, 64 in flight and 1 MiB (grpcio server)."""
    proc = ServerProcess(SERVERS["grpcio"])
    summaries: Dict[str, Any] = {}
    try:
        for scenario in SCENARIOS:
            if scenario.key not in PROFILE_SCENARIOS:
                continue
            prefix = out_dir / f"profile-wove_h2grpc-{scenario.key}"
            # Full counts even with --quick: a profile needs them.
            spec = client_spec(scenario, "wove_h2grpc", proc.port)
            spec["profile"] = str(prefix)
            result = run_child("_client.py", spec, timeout=600)
            summaries[scenario.key] = {
                "result": result,
                "prof": str(prefix) + ".prof",
                "text": str(prefix) + ".txt",
            }
            log(f"profile {scenario.key}: {prefix}.txt")
    finally:
        proc.stop()
    return summaries


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny counts, 1 round: proves the harness works (< 60 s)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument("--server", choices=("grpcio", "h2", "both"), default="both")
    parser.add_argument(
        "--clients",
        default=",".join(CLIENTS),
        help="comma-separated subset of " + ", ".join(CLIENTS),
    )
    parser.add_argument(
        "--scenarios",
        default="",
        help="comma-separated subset of " + ", ".join(s.key for s in SCENARIOS),
    )
    parser.add_argument("--wove-tasks", type=int, default=1000)
    parser.add_argument(
        "--import-repeats",
        type=int,
        default=None,
        help="fresh interpreters per import figure (default 7; quick 2)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated sections to skip: " + ", ".join(SECTIONS),
    )
    parser.add_argument(
        "--pypy",
        metavar="PYTHON",
        default=None,
        help="a PyPy interpreter whose environment has the package's dependencies "
        "(.ci/install-pypy.sh DIR makes one: DIR/bin/python): adds our client on PyPy "
        "to the client tables and the PyPy floor",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile our client (writes .prof and top-20 text)",
    )
    parser.add_argument(
        "--no-docs",
        action="store_true",
        help="do not rewrite docs/benchmarks.md (quick mode never does)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.import_repeats = args.import_repeats or (2 if args.quick else 7)
    args.clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    for client in args.clients:
        if client not in CLIENTS:
            parser.error(f"unknown client {client!r}")
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    for section in args.skip:
        if section not in SECTIONS:
            parser.error(f"unknown section {section!r} (sections: {', '.join(SECTIONS)})")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the selected sections, print the Markdown table, write JSON (and docs)."""
    args = parse_args(argv)
    started = time.perf_counter()
    skipped: List[str] = []
    availability = available_clients(args.clients)
    clients = [c for c, reason in availability.items() if reason is None]
    for client, reason in availability.items():
        if reason:
            skipped.append(f"client {client}: {reason}")
            log(f"skip client {client}: {reason}")

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results: Dict[str, Any] = {
        "timestamp": stamp,
        "quick": args.quick,
        "rounds": args.rounds,
        "machine": _env.describe_machine(),
        "clients": clients,
        "skipped": skipped,
    }
    if "clients" in args.skip:
        args.pypy = None
    else:
        pypy_version, reason = probe_pypy(args.pypy)
        if reason:
            args.pypy = None
            skipped.append(f"client {PYPY_CLIENT} and the PyPy floor: {reason}")
            log(f"skip PyPy: {reason}")
        else:
            results["machine"]["pypy"] = pypy_version
            results["clients"] = [*clients, PYPY_CLIENT]
            log(f"PyPy: {args.pypy} ({pypy_version})")
    if "clients" not in args.skip and clients:
        floor: Optional[Dict[str, List[Dict[str, Any]]]] = None
        if "floor" not in args.skip:
            floor = {"CPython": []}
            if args.pypy:
                floor["PyPy"] = []
        results["servers"] = bench_clients(args, clients, skipped, floor)
        if floor and any(floor.values()):
            scenario = next(s for s in SCENARIOS if s.key == FLOOR_SCENARIO)
            results["floor"] = {
                "title": FLOOR_TITLE,
                "server": next(iter(results["servers"]), None),
                "calls": scenario.quick_calls if args.quick else scenario.calls,
                "unit": "round trips",
                "clients": {
                    name: {"median": median_of(r), "rounds": r} for name, r in floor.items()
                },
            }
    if "imports" not in args.skip:
        log("import cost and installed size")
        # Import cost needs only the package, not a working client, so every requested
        # client is measured here.
        results["imports"] = _env.import_cost(args.clients, args.import_repeats, child_env())
        results["sizes"] = {c: _env.installed_size(c) for c in args.clients}
    if "wove" not in args.skip:
        results["wove"] = bench_wove(args, skipped)
    if "load" not in args.skip:
        log("server load (h2load)")
        results["load"] = bench_load(args, skipped)
    if "loops" not in args.skip:
        results["loops"] = bench_loops(args, skipped)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if args.profile and "wove_h2grpc" in clients:
        results["profiles"] = profile_h2(args, args.results_dir)
    results["elapsed_s"] = time.perf_counter() - started

    suffix = "-quick" if args.quick else ""
    json_path = args.results_dir / f"{stamp}{suffix}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    table = report.render(results)
    sys.stdout.write(table + "\n")
    log(f"raw results: {json_path}")
    if not args.quick and not args.no_docs:
        plot = report.plot_latency(results, REPO_DIR / "docs" / "benchmarks-latency.png")
        report.update_docs(DOCS_FILE, table, plot_name=plot)
        log(f"updated {DOCS_FILE}")
    log(f"done in {results['elapsed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
