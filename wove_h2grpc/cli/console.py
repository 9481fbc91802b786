"""What the command shows its user: its name, exit statuses, one-line errors, stdout lines.

Errors a user can act on are :class:`CliError`, printed by :func:`wove_h2grpc.cli.main` as
one line on stderr. Results and the ready line go to stdout through :func:`out`; logging
goes to stderr, from :data:`logger` for the command's own lines.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["EXIT_ERROR", "EXIT_PROBE_FAILED", "EXIT_USAGE", "PROG", "CliError", "logger", "out"]

#: The command's name, as users type it and as its messages start.
PROG = "wove-h2grpc"
#: Exit status of a failed command (a :class:`CliError` or an unexpected failure).
EXIT_ERROR = 1
#: Exit status of a usage error (argparse's own).
EXIT_USAGE = 2
#: Exit status of a failed ``health`` check (no status to report): 1 there means "answered,
#: but not SERVING", so its errors exit 2, like its usage errors.
EXIT_PROBE_FAILED = 2

#: The command's own log lines (serve's stop line and summaries, main's debug trace): one
#: logger named after the package, whichever of its modules writes the line.
logger = logging.getLogger("wove_h2grpc.cli")


class CliError(Exception):
    """A user-facing error: printed as one line on stderr, exit status 1 (2 for ``health``)."""


def out(line: str) -> None:
    """Write one line to stdout at once (the ready line is read by whoever started us)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
