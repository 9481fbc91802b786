"""One Wove-level measurement in a fresh interpreter: ``python _wove_client.py '<json spec>'``.

Maps ``tasks`` items of ``size`` bytes through ``executor="grpc"`` with the given
``transport`` (``grpcio`` = Wove's own grpcio executor, ``h2`` = wove_h2grpc) and ``codec``,
against a worker service on ``port``. A warm-up weave runs first (connects, imports the
worker's callable); the second weave is measured. Prints one JSON object on stdout.

``delivery`` (h2 only, default ``"unary"``) is the executor's ``delivery`` setting: with
``"stream"`` every run_task is a server-streaming call to the worker's ``Stream`` method.
The result names the delivery the executor used, so a silent fallback would show.

It also counts, during the measured weave, the event loop's turns and (for ``transport="h2"``)
our connections' socket reads, per task: ``turns_per_task`` and ``reads_per_task``. Each read
and the turns it takes cost a wake-up of the process, so a delivery whose events arrive in
more reads costs more CPU per task; the counts show that cause in every run. Counting adds
one Python call per turn and per read, well under 1% of the CPU per task measured here.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
from typing import Any, Callable, Dict, List, Optional

SECRET_ENV = "WOVE_H2GRPC_BENCH_SECRET"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class IoCounts:
    """Event-loop turns and our client connections' socket reads, while ``counting``.

    Turns are asyncio's ``_run_once`` calls (a loop without one, such as uvloop's, has no
    turn count); reads are ``ClientConnection.data_received`` calls, one per socket read of
    a plaintext connection.
    """

    def __init__(self) -> None:
        self.counting = False
        self.counts_turns = False
        self.turns = 0
        self.reads = 0
        self._loop: Any = None
        self._own_read: Any = None  # ClientConnection's own data_received, if it had one
        self._installed = False

    def install(self, loop: Any) -> None:
        """Count this loop's turns and every client connection's reads until ``uninstall``."""
        from wove_h2grpc.aio.connection import ClientConnection

        run_once: Optional[Callable[[], None]] = getattr(loop, "_run_once", None)
        if run_once is not None:
            self.counts_turns = True
            self._loop = loop

            def counted_turn() -> None:
                self.turns += self.counting
                run_once()

            loop._run_once = counted_turn
        received = ClientConnection.data_received
        self._own_read = vars(ClientConnection).get("data_received")
        self._installed = True

        def counted_read(conn: ClientConnection, data: Any) -> None:
            self.reads += self.counting
            received(conn, data)

        setattr(ClientConnection, "data_received", counted_read)  # noqa: B010

    def uninstall(self) -> None:
        from wove_h2grpc.aio.connection import ClientConnection

        if self._installed:
            if self._own_read is not None:
                setattr(ClientConnection, "data_received", self._own_read)  # noqa: B010
            else:
                delattr(ClientConnection, "data_received")  # the driver's own again
            self._installed = False
        if self._loop is not None:
            del self._loop._run_once
            self._loop = None

    def start(self) -> None:
        self.turns = self.reads = 0
        self.counting = True

    def stop(self) -> None:
        self.counting = False

    def per_task(self, tasks: int, *, reads: bool) -> Dict[str, float]:
        """The counts per task; ``reads`` only where our client made the connections."""
        out: Dict[str, float] = {}
        if self.counts_turns:
            out["turns_per_task"] = self.turns / tasks
        if reads:
            out["reads_per_task"] = self.reads / tasks
        return out


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
    counts = IoCounts()
    counts.install(asyncio.get_running_loop())
    counts.start()
    cpu0 = _cpu_seconds()
    wall0 = time.perf_counter()
    done = await _weave_once(items, "bench")
    wall = time.perf_counter() - wall0
    cpu = _cpu_seconds() - cpu0
    counts.stop()
    counts.uninstall()
    return {
        **counts.per_task(done, reads=spec["transport"] == "h2"),
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
