"""A worker's record of finished runs: counts for :class:`WorkerStats`, one INFO line each.

The line names the run id, task, peer, outcome and duration, and carries them as the record
attributes ``run_id``, ``task``, ``peer``, ``outcome``, ``duration_ms`` (and ``error`` for a
failed run) for structured log handlers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Dict

__all__ = ["RunLedger", "WorkerStats"]


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    """Counts of a :class:`~wove_h2grpc.worker.WorkerService` since it was created (see
    :meth:`since`).

    ``runs`` is the number of finished ``run_task`` commands, split by outcome into
    ``results``, ``errors`` (the task raised, or the worker could not run or answer it) and
    ``cancelled``; ``run_seconds`` is their summed duration. ``refused`` counts calls refused
    before anything ran (credentials, permission, not a Wove command). ``duplicates`` counts
    ``run_task`` commands whose ``run_id`` was running or had finished recently: they got
    that run's events and ran nothing. ``running`` is the number of runs executing when the
    snapshot was taken.
    """

    runs: int = 0
    results: int = 0
    errors: int = 0
    cancelled: int = 0
    refused: int = 0
    run_seconds: float = 0.0
    running: int = 0
    duplicates: int = 0

    def since(self, earlier: WorkerStats) -> WorkerStats:
        """The counts between ``earlier`` and this snapshot (``running`` stays this one's)."""
        return WorkerStats(
            runs=self.runs - earlier.runs,
            results=self.results - earlier.results,
            errors=self.errors - earlier.errors,
            cancelled=self.cancelled - earlier.cancelled,
            refused=self.refused - earlier.refused,
            run_seconds=self.run_seconds - earlier.run_seconds,
            running=self.running,
            duplicates=self.duplicates - earlier.duplicates,
        )


# Outcome of a run -> the WorkerStats counter it adds to.
_OUTCOME_FIELD = {"result": "results", "error": "errors", "cancelled": "cancelled"}


class RunLedger:
    """Counts finished runs (by outcome, with their time) and refusals; each finished run is
    one INFO line on ``logger``."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._counts: Dict[str, int] = {
            "results": 0,
            "errors": 0,
            "cancelled": 0,
            "refused": 0,
            "duplicates": 0,
        }
        self._run_seconds = 0.0

    def refused(self) -> None:
        """Count a call refused before anything ran."""
        self._counts["refused"] += 1

    def duplicate(self, run_id: str, peer: str, running: bool) -> None:
        """Count a ``run_task`` for a run already running or finished; it runs nothing."""
        self._counts["duplicates"] += 1
        self._logger.info(
            "run %s from %s: already %s; answering with that run's events",
            run_id,
            peer,
            "running" if running else "finished",
            extra={"run_id": run_id, "peer": peer, "outcome": "duplicate"},
        )

    def finished(
        self, frame: Dict[str, Any], peer: str, began: float, outcome: str, detail: str = ""
    ) -> None:
        """Count a run of ``frame`` that began at ``began`` (monotonic) and log its line.

        ``outcome`` is ``"result"``, ``"error"`` or ``"cancelled"``; ``detail`` says why.
        """
        seconds = time.monotonic() - began
        self._counts[_OUTCOME_FIELD[outcome]] += 1
        self._run_seconds += seconds
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        run_id = frame.get("run_id")
        task = _task_name(frame)
        duration_ms = round(seconds * 1000.0, 1)
        extra: Dict[str, Any] = {
            "run_id": run_id,
            "task": task,
            "peer": peer,
            "outcome": outcome,
            "duration_ms": duration_ms,
        }
        if outcome == "error":
            extra["error"] = detail
        shown = f"{outcome} ({detail})" if detail else outcome
        logger.info(
            "run %s task %s from %s: %s in %.1f ms",
            run_id,
            task,
            peer,
            shown,
            duration_ms,
            extra=extra,
        )

    def stats(self, running: int) -> WorkerStats:
        """A snapshot of the counts, with ``running`` runs executing now."""
        counts = self._counts
        return WorkerStats(
            runs=counts["results"] + counts["errors"] + counts["cancelled"],
            results=counts["results"],
            errors=counts["errors"],
            cancelled=counts["cancelled"],
            refused=counts["refused"],
            run_seconds=self._run_seconds,
            running=running,
            duplicates=counts["duplicates"],
        )


def _task_name(frame: Dict[str, Any]) -> str:
    """Wove's task name (the frame's ``task_id``), else the callable's qualified name."""
    task_id = frame.get("task_id")
    if isinstance(task_id, str) and task_id:
        return task_id
    func = frame.get("callable")
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return str(name) if name else "?"
