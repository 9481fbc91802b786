"""A server-wide memory budget: the bytes every connection holds for its calls, one limit.

Each server connection counts, as plain integers at points where the bytes already pass,
the request bytes it holds for handlers that have not taken them yet (the message in
progress in a call's decoder, and complete messages queued for the handler) and the
response bytes it has not yet written to the socket (a message waiting for the client's
flow-control window or for a paused transport, and the transport's own buffer while it is
paused). Both sums live here: ``total`` for the server, each connection's ``held`` for it.
A unary request whose last DATA frame ends its stream is handed to its handler in the same
turn and never counted: the common call costs a few attribute checks, nothing more.

When ``total`` goes over ``limit``, the connections holding the most are shed, largest
first, until it is back under: each sheds its calls (their bytes are released at once) and
closes with GOAWAY. Shedding runs at the next turn of the event loop, never inside the code
that counted the bytes, so no connection is closed under its own feet; what can still
arrive meanwhile is one socket read per connection. While ``total`` is over the limit
(bytes a shed connection's transport still holds until its peer reads them or it is
aborted), new streams are refused.

Memory freed is not returned by itself: glibc keeps freed heap memory mapped (a
partial-body attack left the process 200 MiB larger after it ended). Once connections that
are shed or closed have held ``TRIM_AFTER`` bytes between them, the budget asks glibc to
hand free memory back (``malloc_trim``: a few milliseconds for hundreds of MiB), at most
once a second; on other C libraries it does nothing.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Callable, Optional, Protocol, Set

__all__ = ["TRIM_AFTER", "BudgetHolder", "MemoryBudget"]

#: Bytes that connections held when they were shed or closed, summed, after which the
#: budget returns free memory to the operating system.
TRIM_AFTER = 16 * 1024 * 1024
_TRIM_DELAY = 0.1  # seconds: cancelled handlers finish and drop what they held first
_TRIM_INTERVAL = 1.0  # seconds between two trims at least

_malloc_trim: Optional[Callable[[int], int]] = None
_looked_up = False


def malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's ``malloc_trim(pad)``, looked up once; None on other C libraries."""
    global _malloc_trim, _looked_up
    if not _looked_up:
        _looked_up = True
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                trim = ctypes.CDLL(None).malloc_trim
            except (ImportError, OSError, AttributeError):
                pass  # not glibc (musl has no malloc_trim), or no ctypes
            else:
                trim.argtypes = [ctypes.c_size_t]
                trim.restype = ctypes.c_int
                _malloc_trim = trim
    return _malloc_trim


class BudgetHolder(Protocol):
    """What the budget needs of a connection: the bytes it holds and a way to shed them."""

    @property
    def held(self) -> int:
        """Bytes this connection holds under the budget now."""

    @property
    def going_away(self) -> bool:
        """True once the connection is being shed or closed (shedding it again would free
        nothing)."""

    def shed(self) -> None:
        """Release every call's bytes and close the connection (GOAWAY ENHANCE_YOUR_CALM)."""


class MemoryBudget:
    """The bytes a server's connections hold, against ``limit`` (None: counted, not enforced).

    Connections add to ``total`` themselves (``total`` and ``ceiling`` are plain attributes
    so the hot path is an integer add and a compare) and call :meth:`exceeded` when a
    charge took it over ``ceiling``.
    """

    __slots__ = (
        "_freed",
        "_holders",
        "_last_trim",
        "_relief",
        "_trim",
        "ceiling",
        "limit",
        "shed_count",
        "total",
    )

    def __init__(self, limit: Optional[int]) -> None:
        self.limit = limit
        # No limit: a ceiling no total reaches, so the check stays one integer compare.
        self.ceiling = sys.maxsize if limit is None else limit
        self.total = 0
        self.shed_count = 0  # connections closed for the budget, for tests and logs
        self._holders: Set[BudgetHolder] = set()
        self._relief: Optional[asyncio.Handle] = None
        self._trim: Optional[asyncio.TimerHandle] = None
        self._last_trim = -_TRIM_INTERVAL
        self._freed = 0  # bytes released by connections that went away since the last trim

    @property
    def over(self) -> bool:
        """True while the total is above the limit (new streams are refused)."""
        return self.total > self.ceiling

    def join(self, holder: BudgetHolder) -> None:
        """Count ``holder`` among the connections that may be shed."""
        self._holders.add(holder)

    def leave(self, holder: BudgetHolder) -> None:
        """``holder`` is gone (its bytes were released by itself)."""
        self._holders.discard(holder)

    def released(self, amount: int, loop: asyncio.AbstractEventLoop) -> None:
        """A connection that held ``amount`` bytes was shed or closed: once that adds up to
        a lot, return free memory to the operating system soon (once a second at most)."""
        if not amount:
            return
        self._freed += amount
        if self._freed < TRIM_AFTER or self._trim is not None or malloc_trim() is None:
            return
        delay = max(_TRIM_DELAY, self._last_trim + _TRIM_INTERVAL - loop.time())
        self._trim = loop.call_later(delay, self._trim_now, loop)

    def _trim_now(self, loop: asyncio.AbstractEventLoop) -> None:
        self._trim = None
        self._freed = 0
        self._last_trim = loop.time()
        trim = malloc_trim()
        if trim is not None:
            trim(0)

    def exceeded(self, loop: asyncio.AbstractEventLoop) -> None:
        """A charge took the total over the limit: shed connections at the next loop turn."""
        if self._relief is None:
            self._relief = loop.call_soon(self.relieve)

    def relieve(self) -> None:
        """Shed the connection holding the most bytes, then the next, until the total is
        back under the limit (or only connections going away hold bytes)."""
        self._relief = None
        while self.total > self.ceiling:
            victim: Optional[BudgetHolder] = None
            most = 0
            for holder in self._holders:
                held = holder.held
                if held > most and not holder.going_away:
                    victim, most = holder, held
            if victim is None:
                return
            self.shed_count += 1
            victim.shed()
