"""``--loop asyncio|uvloop``: the event loop ``serve`` and ``demo`` run on.

asyncio's own loop is the default and needs nothing. ``uvloop`` is imported only when it is
asked for (``pip install 'wove_h2grpc[speed]'``); when it does not import, the command fails
with a one-line error naming the install command, before anything starts.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Callable, Coroutine

from .console import CliError

__all__ = ["LOOPS", "loop_label", "run_on"]

#: Values of --loop.
LOOPS = ("asyncio", "uvloop")

_INSTALL_HINT = "pip install 'wove_h2grpc[speed]' (CPython on Linux or macOS)"


def _uvloop() -> Any:
    try:
        import uvloop
    except ImportError as exc:
        raise CliError(f"--loop uvloop: uvloop is not installed ({exc}); {_INSTALL_HINT}") from None
    return uvloop


def loop_label(name: str) -> str:
    """What the command reports of its loop: ``asyncio`` or ``uvloop 0.23.0``."""
    if name != "uvloop":
        return "asyncio"
    return f"uvloop {getattr(_uvloop(), '__version__', '?')}"


def run_on(name: str, main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main()`` to completion on a fresh event loop of the kind ``name`` names.

    ``main`` is called only once the loop exists, so that a missing uvloop leaves no
    coroutine unawaited behind it.
    """
    if name == "asyncio":
        return asyncio.run(main())
    if name != "uvloop":
        raise CliError(f"--loop: unknown event loop {name!r} (choose from {', '.join(LOOPS)})")
    uvloop = _uvloop()
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    # asyncio.Runner and loop factories are 3.11's: before it, a uvloop policy for this run.
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        return asyncio.run(main())
    finally:
        asyncio.set_event_loop_policy(old)
