"""The command line's grammar: ``serve``, ``demo`` and ``health`` with their options, and the
logging options accepted before the command and after it."""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable, NoReturn, TypeVar

from .._version import __version__
from .console import EXIT_USAGE, PROG
from .loops import LOOPS

__all__ = ["DEFAULT_LOG_LEVEL", "LOG_LEVELS", "build_parser"]

#: Values of --log-level.
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Threshold when --log-level is not given: serve reports its runs, demo keeps its output clean.
DEFAULT_LOG_LEVEL = {"serve": "info", "demo": "warning", "health": "warning"}


_Number = TypeVar("_Number", int, float)


def _number_type(
    convert: Callable[[str], _Number], noun: str, accept: Callable[[_Number], bool], bound: str
) -> Callable[[str], _Number]:
    """An argparse ``type=``: ``convert`` the text, refuse it unless ``accept`` holds.

    The messages read ``'TEXT' is not NOUN`` and ``'TEXT' must be BOUND``.
    """

    def parse(text: str) -> _Number:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
        return value

    return parse


# NaN fails every comparison, so each bound refuses it; only "a positive number" refuses inf.
_positive_float = _number_type(float, "a number", lambda v: 0 < v < math.inf, "a positive number")
_positive_int = _number_type(int, "an integer", lambda v: v > 0, "positive")
_non_negative_int = _number_type(int, "an integer", lambda v: v >= 0, "zero or more")
_non_negative_float = _number_type(float, "a number", lambda v: v >= 0, "zero or more")


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``prog: error: ... (see --help)``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``wove-h2grpc`` parser; ``command`` is ``"serve"``, ``"demo"``, ``"health"`` or None."""
    parser = _Parser(
        prog=PROG,
        description=(
            "Wove worker service, demo and health probe on a pure-asyncio gRPC transport (h2)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_logging_options(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_serve(commands)
    _add_demo(commands)
    _add_health(commands)
    return parser


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run a Wove worker service",
        description=(
            "Run a Wove worker service (the grpc executor's method) on a pure-asyncio gRPC "
            "server. A bind address other than loopback or a unix socket requires TLS "
            "(--tls-cert/--tls-key) and --security, unless --insecure is given. Without "
            "--security the worker runs unsigned requests. SIGTERM or SIGINT stops it "
            "gracefully. Prints 'serving ... on HOST:PORT ...' on stdout once ready. Logs one "
            "INFO line per run (run id, task, peer, outcome, duration) and a summary every "
            "--summary-interval seconds on stderr. Answers the gRPC health service "
            "(grpc.health.v1.Health): SERVING once listening, NOT_SERVING from the stop "
            "signal on."
        ),
    )
    serve.add_argument(
        "--bind",
        required=True,
        metavar="HOST:PORT",
        help="address to listen on: HOST:PORT, [IPv6]:PORT or unix:/path (port 0 = any free)",
    )
    serve.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain (enables TLS)")
    serve.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    serve.add_argument(
        "--client-ca",
        metavar="FILE",
        help="PEM CA bundle: require client certificates signed by it (mutual TLS)",
    )
    serve.add_argument(
        "--security",
        metavar="SPEC",
        help=(
            "request authentication, as Wove's executor_config.security: env:VARIABLE "
            "(HMAC-signed with the secret in that variable), none (unsigned requests, as "
            "without --security), or a JSON object such as "
            '\'{"type": "bearer", "token_env": "TOKEN"}\''
        ),
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback bind without TLS and/or --security (development only)",
    )
    serve.add_argument(
        "--method",
        default=None,
        metavar="PATH",
        help="gRPC method path (default: /wove.network_executor.WorkerService/Send)",
    )
    serve.add_argument(
        "--heartbeat-interval",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help=(
            "longest gap between two events of a streamed task (delivery='stream'); a third "
            "of the task's delivery_heartbeat_seconds when that is shorter (default: 5)"
        ),
    )
    serve.add_argument(
        "--grace",
        type=_non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, let in-flight tasks finish this long (default: 10)",
    )
    serve.add_argument(
        "--drain-delay",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help=(
            "on SIGTERM/SIGINT, answer health checks NOT_SERVING but keep serving this long "
            "before draining, so that readiness probes and balancers move traffic away "
            "first; a second signal ends the wait (default: 0)"
        ),
    )
    serve.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="threads running sync tasks at once (default: Python's, min(32, CPUs + 4))",
    )
    serve.add_argument(
        "--max-receive-message-length",
        type=_positive_int,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="largest request accepted (default: 64 MiB)",
    )
    serve.add_argument(
        "--max-concurrent-streams",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="concurrent calls per connection advertised to clients (default: 1000)",
    )
    serve.add_argument(
        "--max-buffered-bytes",
        type=_non_negative_int,
        default=256 * 1024 * 1024,
        metavar="BYTES",
        help=(
            "memory budget: request and response bytes all connections together may hold "
            "for their calls; over it the heaviest connections are closed; 0 turns it off "
            "(default: 256 MiB)"
        ),
    )
    serve.add_argument(
        "--summary-interval",
        type=_non_negative_float,
        default=60.0,
        metavar="SECONDS",
        help="log a summary of the runs at INFO this often; 0 turns it off (default: 60)",
    )
    _add_loop_option(serve)
    _add_logging_options(serve, top_level=False)


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="run a sample weave over h2 against a loopback worker",
        description=(
            "Start a loopback worker service with a random shared secret, run a weave whose "
            "mapped tasks travel to it over transport='h2' (signed requests), print the "
            "results and the timing, and exit 0 when the results are right. With --tls the "
            "worker serves TLS with throwaway certificates and the weave verifies them."
        ),
    )
    demo.add_argument(
        "--tasks",
        type=_positive_int,
        default=20,
        metavar="N",
        help="number of mapped tasks (default: 20)",
    )
    demo.add_argument(
        "--codec",
        choices=["json", "msgpack"],
        default="json",
        help="wire codec of the Wove frames (default: json, Wove's own format)",
    )
    demo.add_argument(
        "--tls",
        action="store_true",
        help=(
            "serve TLS with a throwaway CA and server certificate, made with the openssl "
            "command (or the trustme package) and deleted afterwards; the weave trusts only "
            "that CA"
        ),
    )
    demo.add_argument(
        "--timeout",
        type=_positive_float,
        default=300.0,
        metavar="SECONDS",
        help="give up (exit 1) if the weave has not finished by then (default: 300)",
    )
    _add_loop_option(demo)
    _add_logging_options(demo, top_level=False)


def _add_health(commands: Any) -> None:
    health = commands.add_parser(
        "health",
        help="check a server's gRPC health service (a Kubernetes exec probe)",
        description=(
            "Call grpc.health.v1.Health/Check on TARGET and print 'status: STATUS'. Exit "
            "status 0 when SERVING, 1 when NOT_SERVING, UNKNOWN or SERVICE_UNKNOWN, 2 when "
            "the check fails (cannot connect, unknown service (NOT_FOUND), deadline, TLS "
            "error, bad options), with a one-line error on stderr. TLS is used when "
            "--tls, --tls-ca or --tls-cert is given."
        ),
    )
    health.add_argument(
        "target",
        metavar="TARGET",
        help="server address: HOST:PORT, [IPv6]:PORT, unix:/path, dns:///HOST:PORT ...",
    )
    health.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help="service to check, e.g. pkg.Service (default: '', the server as a whole)",
    )
    health.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="for connecting and the call together (default: 5)",
    )
    health.add_argument(
        "--tls",
        action="store_true",
        help="use TLS, trusting the system's certificate store (unless --tls-ca)",
    )
    health.add_argument(
        "--tls-ca", metavar="FILE", help="PEM CA bundle trusted for the server (enables TLS)"
    )
    health.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM client certificate chain for mutual TLS (enables TLS; needs --tls-key)",
    )
    health.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    health.add_argument(
        "--server-hostname",
        metavar="NAME",
        help="name checked against the server certificate and sent as SNI (default: the "
        "target's host)",
    )
    _add_logging_options(health, top_level=False)


def _add_loop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help=(
            "event loop to run on: asyncio's own, or uvloop (faster; an optional install: "
            "pip install 'wove_h2grpc[speed]') (default: asyncio)"
        ),
    )


def _add_logging_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """The logging options, accepted before the command and after it (the later one wins).

    A subcommand's copies default to SUPPRESS, so that they never overwrite a value given
    before the command with their own default.
    """
    unset: Any = None if top_level else argparse.SUPPRESS
    parser.add_argument(
        "--log-level",
        default=unset,
        choices=LOG_LEVELS,
        help="logging threshold; logs go to stderr (default: info for serve, warning for demo)",
    )
    parser.add_argument(
        "--log-format",
        default=unset,
        choices=("text", "json"),
        help="text lines, or one JSON object per line for log shippers (default: text)",
    )
    parser.add_argument(
        "--log-h2",
        action="store_true",
        default=False if top_level else argparse.SUPPRESS,
        help="also log the h2, hpack and hyperframe libraries (silent otherwise)",
    )
