"""Logging for the command: one stderr handler, text or JSON lines, h2 libraries silenced.

The h2, hpack and hyperframe loggers stay at WARNING unless ``--log-h2`` is given: their DEBUG
output is a line per HPACK header and per frame.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Dict

__all__ = ["JsonFormatter", "configure_logging"]

#: Libraries whose DEBUG lines (every HPACK header, every frame) only --log-h2 lets through.
_H2_LOGGERS = ("h2", "hpack", "hyperframe")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, and the record's
    ``extra`` fields (for a run: run_id, task, peer, outcome, duration_ms, error)."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        entry: Dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _RECORD_ATTRIBUTES or key.startswith("_") or key in entry:
                continue
            plain = isinstance(value, (str, int, float, bool)) or value is None
            entry[key] = value if plain else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text", log_h2: bool = False) -> None:
    """Send every log line to stderr at ``level`` (a --log-level value) in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    for name in _H2_LOGGERS:
        # Their DEBUG output is a line per HPACK header and frame: only on request.
        logging.getLogger(name).setLevel(logging.NOTSET if log_h2 else logging.WARNING)
