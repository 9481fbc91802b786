"""Task functions for the Wove end-to-end tests, importable by the worker process.

cloudpickle pickles module-level functions of an importable module *by reference*, so the
worker (whose ``sys.path[0]`` is ``tests/``) imports them instead of receiving bytecode:
that keeps the tests valid when the test process and the grpcio worker run on different
interpreters (PyPy against CPython). For the same reason the tests put tasks, not whole
weaves, on the remote environment: a weave's seed task is a lambda inside Wove, which
cloudpickle sends by value. Only the standard library is imported at top level.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, Dict, List


def square(item: int) -> int:
    return item * item


async def cube(item: int) -> int:
    await asyncio.sleep(0)
    return item**3


def total(square: List[int], cube: List[int]) -> int:
    return sum(square) + sum(cube)


def text() -> Dict[str, Any]:
    return {"unicode": "ünïcode ☃", "tuple": (1, 2), "none": None, "bytes": b"\x00\xff"}


def fails() -> None:
    raise ValueError("boom from the worker")


def sleepy() -> str:
    time.sleep(30)
    return "woke"


async def async_sleepy() -> str:
    await asyncio.sleep(30)
    return "woke"


def standard_weave(environment: str, items: int) -> Dict[str, Any]:
    """The weave both transports run: mapped sync + async tasks, a join, odd values, an error."""
    import wove

    # Each task names the environment; the weave itself (and its seed task, a lambda that
    # cloudpickle would send by value) stays local.
    with wove.weave() as w:
        w.do(range(items), environment=environment)(square)
        w.do(range(items), environment=environment)(cube)
        w.do(environment=environment)(total)
        w.do(environment=environment)(text)
    out: Dict[str, Any] = {
        "square": w.result.square,
        "cube": w.result.cube,
        "total": w.result.total,
        "text": repr(w.result.text),
    }
    with wove.weave() as w2:
        w2.do(environment=environment)(fails)
    try:
        out["error"] = repr(w2.result.fails)  # raises the task's exception
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


async def nap(item: int) -> int:
    """A mapped task that holds its call open for a moment (to pile calls up on a worker)."""
    await asyncio.sleep(0.5)
    return item


def mapped_nap(environment: str, items: int) -> Dict[str, Any]:
    """``nap`` over ``items`` on ``environment``; the count of correct results, or the error."""
    import wove

    with wove.weave() as w:
        w.do(range(items), environment=environment)(nap)
    try:
        return {"correct": sum(1 for i, v in enumerate(w.result.nap) if i == v), "error": None}
    except Exception as exc:
        return {"correct": 0, "error": f"{type(exc).__name__}: {exc}"}


def double(x: int) -> int:
    return 2 * x


async def async_slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


def raise_key_error(x: int) -> None:
    raise KeyError(f"missing {x}")


def slow(seconds: float) -> str:
    """A sync task that blocks its thread for ``seconds`` (longer than a heartbeat timeout)."""
    time.sleep(seconds)
    return "slept"


def slow_item(item: int) -> int:
    """A mapped sync task that sleeps 5 s: longer than a 1 s ``delivery_heartbeat_seconds``."""
    time.sleep(5.0)
    return item


def mapped_slow(environment: str, items: int, heartbeat: float) -> Dict[str, Any]:
    """``slow_item`` over ``items`` with Wove's ``delivery_heartbeat_seconds``: the results,
    or the error the weave raised, and how long it took."""
    import wove

    began = time.monotonic()
    with wove.weave() as w:
        w.do(range(items), environment=environment, delivery_heartbeat_seconds=heartbeat)(slow_item)
    try:
        results = list(w.result.slow_item)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        return {"results": None, "error": error, "seconds": time.monotonic() - began}
    return {"results": results, "error": None, "seconds": time.monotonic() - began}


RUNS: Dict[str, int] = {}  # key -> times ``counted`` ran (in this process)


async def counted(key: str, seconds: float = 0.0) -> str:
    """Counts its runs per ``key`` in this process (for the nothing-runs-twice tests)."""
    RUNS[key] = RUNS.get(key, 0) + 1
    await asyncio.sleep(seconds)
    return key


CANCELS: List[Any] = []  # (started, cancelled) monotonic times of ``cancel_marker`` runs


async def cancel_marker() -> str:
    """Sleeps until cancelled and records when it started and when it was cancelled."""
    started = time.monotonic()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        CANCELS.append((started, time.monotonic()))
        raise
    return "not cancelled"


async def announced_nap(item: int) -> int:
    """Prints ``STARTED <item>`` on the worker's stdout, naps 0.3 s, returns ``item``."""
    sys.stdout.write(f"STARTED {item}\n")
    sys.stdout.flush()
    await asyncio.sleep(0.3)
    return item
