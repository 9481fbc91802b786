"""Keep a target's address list fresh, off the hot path: one resolution at a time.

A DNS target is resolved again every ``_RESOLVE_INTERVAL`` seconds and soon after a
connection attempt fails, but never more often than ``_RESOLVE_MIN_INTERVAL`` (gRPC's
resolvers re-resolve on failure too). The resolving itself is injected, so the pool and
its tests need no DNS.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, List, Optional, Tuple

from ..errors import GrpcError

__all__ = ["Resolver"]

logger = logging.getLogger(__name__)

Address = Tuple[str, int]

_RESOLVE_INTERVAL = 30.0
_RESOLVE_MIN_INTERVAL = 2.0


class Resolver:
    """Runs ``resolve()`` and hands each non-empty answer to ``on_addresses``.

    ``periodic`` (a DNS name, whose answer may change) re-resolves at the interval and on
    :meth:`request`. After every resolution, failed or not, ``on_done`` is called (the pool
    wakes the calls waiting for a connection). A failure is kept in :attr:`error`.
    """

    def __init__(
        self,
        resolve: Callable[[], Awaitable[List[Address]]],
        *,
        target: str,
        periodic: bool,
        on_addresses: Callable[[List[Address]], None],
        on_done: Callable[[], None],
    ) -> None:
        self._resolve = resolve
        self._target = target
        self._periodic = periodic
        self._on_addresses = on_addresses
        self._on_done = on_done
        self.error: Optional[GrpcError] = None
        self._answered = False
        self._stopped = False
        self._resolved_at = 0.0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._timer: Optional[asyncio.TimerHandle] = None

    def start(self) -> asyncio.Task[None]:
        """Resolve now, or join the resolution that is running."""
        task = self._task
        if task is None or task.done():
            loop = self._loop = asyncio.get_running_loop()
            task = self._task = loop.create_task(self._run())
        return task

    def request(self) -> None:
        """A connection attempt failed: resolve again soon (periodic targets, rate limited)."""
        loop = self._loop
        if self._periodic and loop is not None:
            self._schedule(max(self._resolved_at + _RESOLVE_MIN_INTERVAL - loop.time(), 0))

    def reset(self, loop: Optional[asyncio.AbstractEventLoop]) -> None:
        """Forget the task and timer of another event loop (or of the parent, after a fork).

        On ``loop`` (the one in use from now on), a periodic target that had an answer is
        re-resolved at the interval again.
        """
        self._task = None
        self._timer = None
        self._loop = loop
        if loop is not None and self._periodic and self._answered:
            self._schedule(_RESOLVE_INTERVAL)

    def stop(self) -> None:
        """Cancel the running resolution and the next one; no answer is applied after this."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()

    async def _run(self) -> None:
        """Resolve and apply the answer; never raises (a failure is kept in ``error``)."""
        try:
            addresses = await self._resolve()
        except GrpcError as exc:
            self.error = exc
            if self._answered:
                logger.warning(
                    "re-resolving %s failed (%s); keeping the addresses it had",
                    self._target,
                    exc.details(),
                )
            addresses = []
        else:
            self.error = None
        self._resolved_at = asyncio.get_running_loop().time()
        if addresses and not self._stopped:
            self._answered = True
            self._on_addresses(addresses)
        if self._periodic and not self._stopped:
            self._schedule(_RESOLVE_INTERVAL if addresses else _RESOLVE_MIN_INTERVAL)
        self._on_done()

    def _schedule(self, delay: float) -> None:
        """Resolve again after ``delay`` seconds, unless a resolution is due sooner."""
        loop = self._loop
        if loop is None or self._stopped:
            return
        timer = self._timer
        if timer is not None:
            if timer.when() <= loop.time() + delay:
                return
            timer.cancel()
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._stopped:
            self.start()
