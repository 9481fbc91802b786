"""serve's summaries of the runs: one INFO line per interval and one when it stops.

Each line also carries its numbers as record attributes (``summary``, ``runs``,
``refused_total``, ...) for structured log handlers.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .console import logger

if TYPE_CHECKING:
    from ..wove.worker import WorkerService, WorkerStats

__all__ = ["log_final_summary", "log_summaries"]


async def log_summaries(service: WorkerService, interval: float) -> None:
    """Every ``interval`` seconds, one INFO line with the runs of that interval."""
    previous = service.stats()
    while True:
        await asyncio.sleep(interval)
        now = service.stats()
        _log_summary(now.since(previous), now, interval)
        previous = now


def log_final_summary(total: WorkerStats) -> None:
    """The INFO line with every run and refusal since the service started."""
    duplicates = f", {total.duplicates} re-sent (not run again)" if total.duplicates else ""
    logger.info(
        "served %s (%s), %d refused%s",
        _runs(total.runs),
        _outcomes(total),
        total.refused,
        duplicates,
        extra={
            "summary": "final",
            "runs_total": total.runs,
            "results": total.results,
            "errors": total.errors,
            "cancelled": total.cancelled,
            "refused_total": total.refused,
            "duplicates_total": total.duplicates,
        },
    )


def _runs(count: int) -> str:
    return "1 run" if count == 1 else f"{count} runs"


def _outcomes(stats: WorkerStats) -> str:
    return f"{stats.results} result, {stats.errors} error, {stats.cancelled} cancelled"


def _log_summary(recent: WorkerStats, total: WorkerStats, interval: float) -> None:
    mean_ms = round(recent.run_seconds * 1000.0 / recent.runs, 1) if recent.runs else None
    mean = f"; mean {mean_ms:.1f} ms" if mean_ms is not None else ""
    logger.info(
        "summary of the last %g s: %d runs (%s%s), %d refused, %d running; "
        "since start: %d runs, %d refused",
        interval,
        recent.runs,
        _outcomes(recent),
        mean,
        recent.refused,
        recent.running,
        total.runs,
        total.refused,
        extra={
            "summary": "interval",
            "interval_s": interval,
            "runs": recent.runs,
            "results": recent.results,
            "errors": recent.errors,
            "cancelled": recent.cancelled,
            "refused": recent.refused,
            "running": recent.running,
            "mean_ms": mean_ms,
            "runs_total": total.runs,
            "refused_total": total.refused,
        },
    )
