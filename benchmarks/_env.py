"""Machine description, import cost and installed size of each client library.

Installed size rule: a client's size is the sum of the files of its distribution and of
every distribution it requires at run time, transitively (extras excluded, environment
markers evaluated), minus Wove itself and Wove's ``dispatch`` extra (cloudpickle), which
every Wove transport needs alike. Files are counted as listed in each distribution's
RECORD, without ``__pycache__`` byte code (pip compiles it at install time, so it would
count twice); an editable install is counted from its package source directory instead.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

# Distribution that provides each client, and the statements timed for its import cost.
CLIENT_DISTRIBUTIONS = {"wove_h2grpc": "wove_h2grpc", "grpc.aio": "grpcio", "grpclib": "grpclib"}
IMPORT_STATEMENTS = {
    "wove_h2grpc": ("import wove_h2grpc", "from wove_h2grpc import Channel"),
    "grpc.aio": ("import grpc", "import grpc.aio"),
    "grpclib": ("import grpclib", "from grpclib.client import Channel"),
}
SHARED_BY_EVERY_TRANSPORT = {"wove", "cloudpickle"}

_IMPORT_PROBE = r"""
import json, os, sys, time
def rss_kib():
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stmt = sys.argv[1]
rss0 = rss_kib()
t0 = time.perf_counter()
exec(stmt)
elapsed = time.perf_counter() - t0
sys.stdout.write(json.dumps({"seconds": elapsed, "rss_delta_kib": rss_kib() - rss0}) + "\n")
"""


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def version_of(dist_name: str) -> Optional[str]:
    """Installed version of a distribution, or ``None``."""
    try:
        return md.version(dist_name)
    except md.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> Dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load_average_at_start": _load_average(),
        "versions": {
            name: version_of(name)
            for name in ("wove_h2grpc", "grpcio", "grpclib", "h2", "hpack", "hyperframe", "wove")
        },
    }


def _load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _requirements(dist: md.Distribution) -> List[str]:
    names = []
    for req in dist.requires or []:
        spec, _, marker = req.partition(";")
        marker = marker.strip()
        if "extra" in marker:
            continue
        if marker and not _marker_holds(marker):
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if match:
            names.append(match.group(1))
    return names


def _marker_holds(marker: str) -> bool:
    try:
        from packaging.markers import Marker
    except ImportError:  # no packaging: count the requirement, the conservative choice
        return True
    return bool(Marker(marker).evaluate())


def dependency_closure(dist_name: str) -> List[str]:
    """The distribution and its transitive run-time requirements (installed ones)."""
    seen: Set[str] = set()
    order: List[str] = []
    stack = [dist_name]
    while stack:
        name = stack.pop()
        key = _normalize(name)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        order.append(dist.metadata["Name"])
        stack.extend(_requirements(dist))
    return order


def _is_editable(dist: md.Distribution) -> bool:
    text = dist.read_text("direct_url.json")
    if not text:
        return False
    try:
        return bool(json.loads(text).get("dir_info", {}).get("editable"))
    except ValueError:
        return False


def _tree_size(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        total += path.stat().st_size
    return total


def distribution_size(dist_name: str) -> int:
    """Bytes on disk of one distribution (rule in the module docstring)."""
    dist = md.distribution(dist_name)
    if _is_editable(dist):
        total = 0
        top_level = (dist.read_text("top_level.txt") or dist_name).split()
        for package in top_level:
            spec = importlib.util.find_spec(package)
            if spec is not None and spec.submodule_search_locations:
                for location in spec.submodule_search_locations:
                    total += _tree_size(Path(location))
            elif spec is not None and spec.origin:
                total += Path(spec.origin).stat().st_size
        return total
    total = 0
    for entry in dist.files or []:
        if "__pycache__" in entry.parts or entry.suffix == ".pyc":
            continue
        path = Path(str(entry.locate()))
        if path.is_file():
            total += path.stat().st_size
    return total


def installed_size(client: str) -> Dict[str, Any]:
    """Installed size of one client's distribution closure, with the per-package split."""
    dist_name = CLIENT_DISTRIBUTIONS[client]
    if version_of(dist_name) is None:
        return {"error": f"{dist_name} is not installed"}
    packages = [
        name
        for name in dependency_closure(dist_name)
        if _normalize(name) not in SHARED_BY_EVERY_TRANSPORT
    ]
    sizes = {name: distribution_size(name) for name in packages}
    return {"bytes": sum(sizes.values()), "packages": sizes}


def _probe_import(python: str, statement: str, env: Dict[str, str]) -> Dict[str, float]:
    proc = subprocess.run(
        [python, "-c", _IMPORT_PROBE, statement],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def import_cost(
    clients: Sequence[str], repeats: int, env: Dict[str, str], python: str = sys.executable
) -> Dict[str, Any]:
    """Median import time and RSS growth per statement, each in a fresh interpreter.

    One discarded run first writes the byte-code caches; the repeats then alternate
    between clients so that a noisy moment hits all of them alike.
    """
    # PYTHONDONTWRITEBYTECODE would keep that run from writing them: a source checkout would
    # then be compiled in every probe while installed packages load their byte code.
    env = {key: value for key, value in env.items() if key != "PYTHONDONTWRITEBYTECODE"}
    out: Dict[str, Any] = {}
    samples: Dict[str, Dict[str, List[Dict[str, float]]]] = {}
    for client in clients:
        samples[client] = {}
        for statement in IMPORT_STATEMENTS[client]:
            try:
                _probe_import(python, statement, env)
                samples[client][statement] = []
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                out.setdefault(client, {})[statement] = {"error": str(exc)}
    for _ in range(repeats):
        for client in clients:
            for statement in samples[client]:
                samples[client][statement].append(_probe_import(python, statement, env))
    for client, per_statement in samples.items():
        for statement, runs in per_statement.items():
            out.setdefault(client, {})[statement] = {
                "ms": statistics.median(r["seconds"] for r in runs) * 1000.0,
                "rss_delta_kib": statistics.median(r["rss_delta_kib"] for r in runs),
                "runs": len(runs),
            }
    return out
