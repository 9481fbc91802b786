"""One Wove-level measurement in a fresh interpreter: ``python _wove_client.py '<json spec>'``.

Maps ``tasks`` items of ``size`` bytes through ``executor="grpc"`` with the given
``transport`` (``grpcio`` = Wove's own grpcio executor, ``h2`` = wove_h2grpc) and ``codec``,
against a worker service on ``port``. A warm-up weave runs first (connects, imports the
worker's callable); the second weave is measured. Prints one JSON object on stdout.

``delivery`` (h2 only, default ``"unary"``) is the executor's ``delivery`` setting: with
``"stream"`` every run_task is a server-streaming call to the worker's ``Stream`` method.
The result names the delivery the executor used, so a silent fallback would show.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
from typing import Any, Dict, List

SECRET_ENV = "WOVE_H2GRPC_BENCH_SECRET"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _weave_once(items: List[bytes], environment: str) -> int:
    import wove

    async with wove.weave() as w:

        @w.do(items, environment=environment)
        def measure(item: bytes) -> int:
            return len(item)

    results = w.result.measure
    if len(results) != len(items) or any(r != len(items[0]) for r in results):
        raise RuntimeError("worker returned unexpected results")
    return len(results)


async def _run(spec: Dict[str, Any]) -> Dict[str, Any]:
    import wove

    import wove_h2grpc

    wove_h2grpc.install()
    config: Dict[str, Any] = {
        "target": f"127.0.0.1:{spec['port']}",
        "transport": spec["transport"],
        "security": f"env:{SECRET_ENV}",
        "timeout": 120.0,
    }
    if spec["transport"] == "h2":
        config["codec"] = spec["codec"]
        config["max_receive_message_length"] = 64 * 1024 * 1024
        config["delivery"] = spec.get("delivery", "unary")
    wove.config(environments={"bench": {"executor": "grpc", "executor_config": config}})

    payload = os.urandom(spec["size"])
    await _weave_once([payload] * min(spec["tasks"], 16), "bench")
    gc.collect()
    items = [payload] * spec["tasks"]
    cpu0 = _cpu_seconds()
    wall0 = time.perf_counter()
    done = await _weave_once(items, "bench")
    wall = time.perf_counter() - wall0
    cpu = _cpu_seconds() - cpu0
    return {
        "tasks": done,
        "wall_s": wall,
        "tasks_per_s": done / wall,
        "cpu_us_per_task": cpu * 1e6 / done,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "delivery": spec.get("delivery", "unary") if spec["transport"] == "h2" else "unary",
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    os.environ.setdefault(SECRET_ENV, "bench-secret")
    result = asyncio.run(_run(spec))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
