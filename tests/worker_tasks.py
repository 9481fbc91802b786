"""Task functions for the worker interop tests, importable by every process involved.

cloudpickle sends functions of an importable module by reference (module and name), which
stays valid across interpreters (PyPy client, CPython worker and the reverse); functions sent
by value carry code objects that only the same Python version can load. Helper scripts in
tests/ have this directory on sys.path; ``wove-h2grpc serve`` gets it through PYTHONPATH.
"""

from __future__ import annotations

import asyncio
from typing import List


def cube(x: int) -> int:
    return x * x * x


def cube_item(item: int) -> int:
    """A mapped Wove task (Wove passes each item as ``item``)."""
    return item * item * item


def doubled(item: int) -> int:
    """A mapped Wove task."""
    return item * 2


async def total(doubled: List[int]) -> int:
    """An async Wove task depending on ``doubled``."""
    await asyncio.sleep(0)
    return sum(doubled)


async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


def size_of(data: bytes) -> int:
    return len(data)


def payload_size(payload: bytes) -> int:
    """A Wove task whose 8 MiB argument travels in the request."""
    return len(payload)


def make_bytes(size: int) -> bytes:
    return b"\xab" * size


class Refused(Exception):
    """Raised by a task on the worker; comes back to the caller as this very type."""


def refuse(reason: str) -> None:
    raise Refused(reason)


def fails() -> None:
    """A Wove task that always fails."""
    raise Refused("no thanks")


def never() -> str:
    """A Wove task that a worker with another secret must never run."""
    return "ran"
