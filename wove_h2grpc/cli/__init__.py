"""The ``wove-h2grpc`` command (also ``python -m wove_h2grpc``).

``serve`` runs a Wove worker service (:class:`~wove_h2grpc.worker.WorkerService` on our
pure-asyncio :class:`~wove_h2grpc.server.Server`, with the gRPC health service); ``demo``
starts such a service on loopback and runs a sample weave whose tasks travel to it over
``transport="h2"``, so a new user sees the whole path work with one command; ``health``
checks a server's ``grpc.health.v1.Health`` and exits 0 when it is SERVING (a Kubernetes exec
probe). ``serve`` and ``demo`` run on asyncio's event loop, or on uvloop with ``--loop
uvloop`` (an optional install). Errors are one line on stderr and a non-zero exit;
logging goes to stderr (``--log-level``, ``--log-format text|json``, given before or after
the command); results and the ready line go to stdout. ``serve`` logs one INFO line per run
and a periodic summary; the h2, hpack and hyperframe libraries stay silent unless
``--log-h2`` is given.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from . import demo, health, serve
from .console import EXIT_ERROR, EXIT_PROBE_FAILED, EXIT_USAGE, PROG, CliError, logger
from .logs import configure_logging
from .loops import loop_label, run_on
from .parser import DEFAULT_LOG_LEVEL, build_parser

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``wove-h2grpc`` command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    configure_logging(
        args.log_level or DEFAULT_LOG_LEVEL[args.command],
        args.log_format or "text",
        args.log_h2,
    )
    runner = {"serve": serve.run, "demo": demo.run, "health": health.run}[args.command]
    # For health, 1 means "answered NOT_SERVING": a check that could not be made exits 2.
    failed = EXIT_PROBE_FAILED if args.command == "health" else EXIT_ERROR
    loop = getattr(args, "loop", "asyncio")
    try:
        if loop != "asyncio":
            logger.info("event loop: %s", loop_label(loop))
        return run_on(loop, lambda: runner(args))
    except CliError as exc:
        sys.stderr.write(f"{PROG} {args.command}: error: {exc}\n")
        return failed
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG} {args.command}: interrupted\n")
        return 130
    except Exception as exc:
        logger.debug("unexpected failure", exc_info=True)
        message = str(exc).splitlines()[0] if str(exc) else ""
        sys.stderr.write(f"{PROG} {args.command}: error: {type(exc).__name__}: {message}\n")
        return failed
