"""A worker's runs by ``run_id``: the ones running and the ones finished recently.

A Wove command may reach a worker twice: a balancer or a client retry re-sends it, or a
caller switches from a unary to a streaming call. :class:`RunRegistry` makes a second
``run_task`` with a known ``run_id`` join the run instead of starting another one: while
it runs, every caller waits for the same outcome; once it has finished, a caller gets its
events at once. Finished runs are kept for a bounded time and count; running ones always.

A :class:`Run` holds its terminal event already pickled for the request's codec, so a
result that cannot be pickled is found once, when the run ends, and every caller gets the
same ``task_error`` for it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Dict, Optional, Tuple

__all__ = ["Run", "RunRegistry"]


class Run:
    """One ``run_task`` execution and the calls waiting for it."""

    __slots__ = (
        "callers",
        "cancel_reason",
        "codec",
        "finished",
        "finished_at",
        "run_id",
        "task",
        "task_id",
        "terminal",
        "wire_terminal",
    )

    def __init__(self, run_id: str, task_id: Any, codec: str) -> None:
        self.run_id = run_id
        self.task_id = task_id
        self.codec = codec
        self.callers = 0  # calls waiting for this run's outcome
        self.cancel_reason = ""  # why the run was cancelled, for the worker's log line
        self.task: Optional[asyncio.Future[Any]] = None  # the task's invocation, while it runs
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finished_at: Optional[float] = None
        self.terminal: Optional[Dict[str, Any]] = None
        self.wire_terminal: Optional[Dict[str, Any]] = None  # terminal, pickled for ``codec``

    @property
    def done(self) -> bool:
        return self.terminal is not None

    def started_event(self) -> Dict[str, Any]:
        return {"type": "task_started", "run_id": self.run_id, "task_id": self.task_id}

    def heartbeat_event(self) -> Dict[str, Any]:
        return {"type": "heartbeat", "run_id": self.run_id, "task_id": self.task_id}

    def finish(self, terminal: Dict[str, Any], wire_terminal: Dict[str, Any]) -> None:
        """Record the one terminal event and wake every waiting caller; once."""
        if self.terminal is not None:
            return
        self.terminal = terminal
        self.wire_terminal = wire_terminal
        self.finished_at = time.monotonic()
        self.task = None
        if not self.finished.done():
            self.finished.set_result(None)

    def cancel(self, reason: str) -> None:
        """Cancel the task's invocation (its terminal event becomes ``task_cancelled``)."""
        task = self.task
        if task is not None and not task.done():
            self.cancel_reason = reason
            task.cancel()


class RunRegistry:
    """Runs by ``run_id``: every running one, and finished ones up to ``limit`` and ``ttl``."""

    def __init__(self, *, limit: int, ttl: float) -> None:
        self.limit = limit
        self.ttl = ttl
        self._running: Dict[str, Run] = {}
        # In the order they finished, so the oldest is evicted first (O(1) per run).
        self._finished: collections.OrderedDict[str, Run] = collections.OrderedDict()

    def get(self, run_id: str) -> Optional[Run]:
        """The run with this id if it is running or finished less than ``ttl`` ago."""
        run = self._running.get(run_id)
        if run is not None:
            return run
        self._evict()
        return self._finished.get(run_id)

    def add(self, run: Run) -> None:
        """Register a new run; one that is already done counts as finished now."""
        if run.done:
            self._keep(run)
        else:
            self._running[run.run_id] = run

    def finished(self, run: Run) -> None:
        """``run`` has ended: it is kept among the finished runs, for callers that re-send it."""
        if self._running.get(run.run_id) is run:
            del self._running[run.run_id]
            self._keep(run)

    def running(self) -> Tuple[str, ...]:
        return tuple(self._running)

    def __len__(self) -> int:
        return len(self._running) + len(self._finished)

    def _keep(self, run: Run) -> None:
        self._finished.pop(run.run_id, None)
        self._finished[run.run_id] = run
        self._evict()

    def _evict(self) -> None:
        """Drop the finished runs older than ``ttl``, and the oldest beyond ``limit``."""
        finished = self._finished
        now = time.monotonic()
        while finished:
            run = next(iter(finished.values()))
            ended = run.finished_at if run.finished_at is not None else now
            if len(finished) <= self.limit and now - ended <= self.ttl:
                break
            finished.popitem(last=False)
