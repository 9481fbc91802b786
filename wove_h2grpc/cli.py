"""The ``wove-h2grpc`` command (also ``python -m wove_h2grpc``).

``serve`` runs a Wove worker service (:class:`~wove_h2grpc.worker.WorkerService` on our
pure-asyncio :class:`~wove_h2grpc.server.Server`); ``demo`` starts such a service on loopback
and runs a sample weave whose tasks travel to it over ``transport="h2"``, so a new user sees
the whole path work with one command. Errors are one line on stderr and a non-zero exit;
logging goes to stderr (``--log-level``, ``--log-format text|json``, given before or after
the command); results and the ready line go to stdout. ``serve`` logs one INFO line per run
and a periodic summary; the h2, hpack and hyperframe libraries stay silent unless
``--log-h2`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

from ._version import __version__
from .protocol.target import format_host_port, parse_bind_address

__all__ = ["main"]

logger = logging.getLogger(__name__)

PROG = "wove-h2grpc"
_EXIT_ERROR = 1
_EXIT_USAGE = 2

_LOG_LEVELS = ("debug", "info", "warning", "error")
#: Threshold when --log-level is not given: serve reports its runs, demo keeps its output clean.
_DEFAULT_LOG_LEVEL = {"serve": "info", "demo": "warning"}
#: Libraries whose DEBUG lines (every HPACK header, every frame) only --log-h2 lets through.
_H2_LOGGERS = ("h2", "hpack", "hyperframe")


class CliError(Exception):
    """A user-facing error: printed as one line on stderr, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``prog: error: ... (see --help)``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(_EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Wove worker service and demo on a pure-asyncio gRPC transport (h2).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_logging_options(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

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
            "--summary-interval seconds on stderr."
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
        "--grace",
        type=_non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, let in-flight tasks finish this long (default: 10)",
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
        "--summary-interval",
        type=_non_negative_float,
        default=60.0,
        metavar="SECONDS",
        help="log a summary of the runs at INFO this often; 0 turns it off (default: 60)",
    )
    _add_logging_options(serve, top_level=False)

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
    _add_logging_options(demo, top_level=False)
    return parser


def _add_logging_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """The logging options, accepted before the command and after it (the later one wins).

    A subcommand's copies default to SUPPRESS, so that they never overwrite a value given
    before the command with their own default.
    """
    unset: Any = None if top_level else argparse.SUPPRESS
    parser.add_argument(
        "--log-level",
        default=unset,
        choices=_LOG_LEVELS,
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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or more")
    return value


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# -- serve -------------------------------------------------------------------------------


def _is_local_bind(address: str) -> bool:
    """True for loopback addresses and unix sockets: reachable only from this machine."""
    target = parse_bind_address(address)
    if target.kind != "tcp":
        return True
    host = target.host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_security(spec: Optional[str]) -> Any:
    """``--security`` value -> a NetworkExecutorSecurity, or None for unsigned requests."""
    if spec is None:
        return None
    from wove.security import NetworkExecutorSecurity

    config: Any = spec
    if spec.lstrip().startswith("{"):
        try:
            config = json.loads(spec)
        except ValueError as exc:
            raise CliError(f"--security: invalid JSON: {exc}") from None
    try:
        security = NetworkExecutorSecurity.from_config(config)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CliError(f"--security: {exc}") from None
    return None if security.mode == "none" else security


def _server_ssl_context(
    cert: Optional[str], key: Optional[str], client_ca: Optional[str]
) -> Optional[ssl.SSLContext]:
    if not cert and not key:
        if client_ca:
            raise CliError("--client-ca needs TLS: give --tls-cert and --tls-key too")
        return None
    if not cert or not key:
        raise CliError("--tls-cert and --tls-key must be given together")
    files = [("--tls-cert", cert), ("--tls-key", key)]
    if client_ca:
        files.append(("--client-ca", client_ca))
    for option, path in files:
        _check_readable(option, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # gRPC over HTTP/2 requires TLS 1.2 or newer and ALPN "h2" (RFC 9113 section 9.2).
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(
            f"cannot load TLS files --tls-cert {cert} and --tls-key {key} "
            f"(a PEM certificate chain and its private key): {exc}"
        ) from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(
                f"cannot load TLS file --client-ca {client_ca} (PEM CA certificates): {exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _check_readable(option: str, path: str) -> None:
    """A TLS file that cannot be opened is an error naming the option and the file.

    ``ssl`` reports a missing file as a bare ``[Errno 2]`` without the file's name.
    """
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CliError(f"cannot load TLS file {option} {path}: {reason}") from None


def _display_address(bind: str, port: int) -> str:
    target = parse_bind_address(bind)
    if target.kind != "tcp":
        return bind
    return format_host_port(target.host, port)


def _install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError):
            # No add_signal_handler (Windows): a plain handler hops onto the loop.
            signal.signal(sig, lambda _signo, _frame: loop.call_soon_threadsafe(stop))


async def _serve(args: argparse.Namespace) -> int:
    from .wove.worker import DEFAULT_METHOD, WorkerService

    try:
        local = _is_local_bind(args.bind)
    except ValueError as exc:
        raise CliError(f"--bind: {exc}") from None
    ssl_context = _server_ssl_context(args.tls_cert, args.tls_key, args.client_ca)
    security = _parse_security(args.security)
    if not local and not args.insecure:
        missing = [
            what
            for what, ok in (("TLS (--tls-cert/--tls-key)", ssl_context), ("--security", security))
            if ok is None
        ]
        if missing:
            raise CliError(
                f"refusing to serve on non-loopback address {args.bind} without "
                f"{' and '.join(missing)}; pass --insecure for development"
            )
    method = args.method or DEFAULT_METHOD
    try:
        service = WorkerService(security, method=method, allow_unsigned=security is None)
    except ValueError as exc:
        raise CliError(str(exc)) from None

    from .server import Server

    server = Server(
        max_receive_message_length=args.max_receive_message_length,
        max_concurrent_streams=args.max_concurrent_streams,
    )
    service.attach(server)
    try:
        port = await server.start(args.bind, ssl_context=ssl_context)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.bind}: {exc}") from None
    address = _display_address(args.bind, port)
    if security is None:
        logger.warning(
            "running unsigned requests: anyone who can connect to %s can run code here",
            address,
        )

    loop = asyncio.get_running_loop()
    pool = _TaskThreadPool(args.threads)
    loop.set_default_executor(pool)  # sync tasks run here (WorkerService uses to_thread)
    stopping = asyncio.Event()
    _install_stop_handlers(loop, stopping.set)
    tls = "plaintext" if ssl_context is None else ("mTLS" if args.client_ca else "TLS")
    _out(
        f"{PROG}: serving {method} on {address} ({tls}, security: {service.security_mode}); "
        f"stop with Ctrl+C or kill -TERM {os.getpid()}"
    )
    summaries: Optional[asyncio.Task[None]] = None
    if args.summary_interval > 0:
        summaries = asyncio.ensure_future(_log_summaries(service, args.summary_interval))
    try:
        await stopping.wait()
        logger.info("stopping: in-flight tasks get %.1f s", args.grace)
        await server.stop(grace=args.grace)
    finally:
        if summaries is not None:
            summaries.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=args.grace + 5.0)
    pool.shutdown(wait=False, cancel_futures=True)
    _log_final_summary(service.stats())
    _out(f"{PROG}: stopped")
    busy = pool.busy
    if busy:
        # Their calls were cancelled, but a thread cannot be interrupted, and both asyncio.run
        # and the interpreter would wait for it: a SIGTERM must stop the worker in bounded
        # time, so leave now (output flushed) instead of waiting for the stuck task code.
        logger.warning("exiting with %d sync task thread(s) still running", busy)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


async def _log_summaries(service: Any, interval: float) -> None:
    """Every ``interval`` seconds, one INFO line with the runs of that interval."""
    previous = service.stats()
    while True:
        await asyncio.sleep(interval)
        now = service.stats()
        _log_summary(now.since(previous), now, interval)
        previous = now


def _outcomes(stats: Any) -> str:
    return f"{stats.results} result, {stats.errors} error, {stats.cancelled} cancelled"


def _log_summary(recent: Any, total: Any, interval: float) -> None:
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


def _log_final_summary(total: Any) -> None:
    logger.info(
        "served %d runs (%s), %d refused",
        total.runs,
        _outcomes(total),
        total.refused,
        extra={
            "summary": "final",
            "runs_total": total.runs,
            "results": total.results,
            "errors": total.errors,
            "cancelled": total.cancelled,
            "refused_total": total.refused,
        },
    )


class _TaskThreadPool(concurrent.futures.ThreadPoolExecutor):
    """The worker's thread pool for sync tasks, counting work that has not finished."""

    def __init__(self, max_workers: Optional[int]) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="wove-task")
        self._busy = 0
        self._busy_lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        future = super().submit(fn, *args, **kwargs)
        with self._busy_lock:
            self._busy += 1
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Any) -> None:
        with self._busy_lock:
            self._busy -= 1

    @property
    def busy(self) -> int:
        """Submitted calls that have not finished (running or queued)."""
        with self._busy_lock:
            return self._busy


# -- demo --------------------------------------------------------------------------------


def _demo_square(item: int) -> int:
    """A sync demo task: runs in a worker thread on the worker side."""
    return item * item


async def _demo_total(squares: List[int]) -> int:
    """An async demo task: runs on the worker's event loop."""
    await asyncio.sleep(0)
    return sum(squares)


async def _run_demo_weave(environment: str, count: int) -> Tuple[List[int], int]:
    import wove

    async with wove.weave(environment=environment) as w:

        @w.do(range(count))
        def square(item: int) -> int:
            return _demo_square(item)

        @w.do
        async def total(square: List[int]) -> int:
            return await _demo_total(square)

    return list(w.result.square), int(w.result.total)


#: The names the demo's throwaway server certificate is valid for.
_DEMO_HOSTS = ("localhost", "127.0.0.1")

# Extensions of the demo certificates: what a verifying client, Python 3.13's strict X.509
# checks included, expects of a CA and of a TLS server certificate (RFC 5280 4.2.1).
_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = wove-h2grpc demo
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def _demo_certificates(directory: str) -> Tuple[str, str, bytes, str]:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1 in ``directory``.

    Returns the server chain and key files, the CA's PEM and what made them. The openssl
    command is tried first (it comes with the system almost everywhere, and the package
    needs no dependency for it), then the ``trustme`` package (the test extra).
    """
    openssl = shutil.which("openssl")
    if openssl is not None:
        return (*_openssl_certificates(openssl, directory), "openssl")
    try:
        import trustme
    except ImportError:
        raise CliError(
            "--tls makes throwaway certificates with the openssl command, which is not on "
            "PATH, or with the trustme package, which is not installed (pip install trustme)"
        ) from None
    ca = trustme.CA()
    issued = ca.issue_cert(*_DEMO_HOSTS)
    cert_file = os.path.join(directory, "server.pem")
    key_file = os.path.join(directory, "server.key")
    with open(cert_file, "wb") as chain:
        chain.write(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(key_file)
    return cert_file, key_file, ca.cert_pem.bytes(), "trustme"


def _openssl_certificates(openssl: str, directory: str) -> Tuple[str, str, bytes]:
    def path(name: str) -> str:
        return os.path.join(directory, name)

    with open(path("openssl.cnf"), "w", encoding="ascii") as config:
        config.write(_OPENSSL_CONFIG)
    serial = f"0x{secrets.randbits(63):x}"
    # EC P-256 keys from a parameter file: quick, and the form every OpenSSL and LibreSSL
    # release accepts (-pkeyopt for -newkey ec is not in LibreSSL).
    ec = f"ec:{path('ec.pem')}"
    conf = path("openssl.cnf")
    steps = [
        ["ecparam", "-name", "prime256v1", "-out", path("ec.pem")],
        [
            *("req", "-x509", "-new", "-nodes", "-newkey", ec, "-days", "2", "-config", conf),
            *("-keyout", path("ca.key"), "-out", path("ca.pem"), "-extensions", "ca"),
            *("-subj", "/CN=wove-h2grpc demo CA"),
        ],
        [
            *("req", "-new", "-nodes", "-newkey", ec, "-config", conf, "-subj", "/CN=localhost"),
            *("-keyout", path("server.key"), "-out", path("server.csr")),
        ],
        [
            *("x509", "-req", "-in", path("server.csr"), "-days", "2", "-set_serial", serial),
            *("-CA", path("ca.pem"), "-CAkey", path("ca.key"), "-out", path("server.pem")),
            *("-extfile", conf, "-extensions", "server"),
        ],
    ]
    for step in steps:
        try:
            done = subprocess.run(
                [openssl, *step], capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CliError(f"--tls: cannot run {openssl} {step[0]}: {exc}") from None
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise CliError(f"--tls: {openssl} {step[0]} failed: {reason}")
    with open(path("ca.pem"), "rb") as ca_file:
        ca_pem = ca_file.read()
    return path("server.pem"), path("server.key"), ca_pem


async def _demo(args: argparse.Namespace) -> int:
    if not args.tls:
        return await _run_demo(args, None)
    with tempfile.TemporaryDirectory(prefix="wove-h2grpc-demo-") as directory:
        cert_file, key_file, ca_pem, maker = _demo_certificates(directory)
        ssl_context = _server_ssl_context(cert_file, key_file, None)
        assert ssl_context is not None  # both files given
        return await _run_demo(args, (ssl_context, ca_pem, maker))


async def _run_demo(
    args: argparse.Namespace, tls: Optional[Tuple[ssl.SSLContext, bytes, str]]
) -> int:
    import wove
    from wove.security import NetworkExecutorSecurity

    from .server import Server
    from .wove.executor import H2GrpcExecutor
    from .wove.worker import WorkerService

    secret = secrets.token_hex(32)
    service = WorkerService(NetworkExecutorSecurity(mode="signed", secret=secret))
    calls = 0

    async def counting_handler(request: bytes, context: Any) -> bytes:
        nonlocal calls
        calls += 1
        return await service.server_handler(request, context)

    server = Server({service.method: counting_handler})
    port = await server.start("127.0.0.1:0", ssl_context=tls[0] if tls else None)
    environment = "wove_h2grpc_demo"
    config: Dict[str, Any] = {
        "target": f"127.0.0.1:{port}",
        "transport": "h2",
        "security": {"type": "signed", "secret": secret},
        "codec": args.codec,
        # No per-call deadline: with many tasks the last calls queue behind the first
        # ones; --timeout bounds the whole weave instead.
    }
    if tls is not None:
        # Trust only the throwaway CA; the certificate names 127.0.0.1, which is verified.
        config.update(secure=True, root_certificates=tls[1])
    how = f"TLS with throwaway certificates from {tls[2]}, " if tls else ""
    try:
        wove.config(
            environments={environment: {"executor": H2GrpcExecutor(), "executor_config": config}}
        )
        _out(
            f"worker service on 127.0.0.1:{port} ({how}signed requests, random secret); "
            f"running {args.tasks} mapped tasks over h2 ({args.codec})"
        )
        started = time.perf_counter()
        try:
            squares, total = await asyncio.wait_for(
                _run_demo_weave(environment, args.tasks), timeout=args.timeout
            )
        except asyncio.TimeoutError:
            raise CliError(f"the demo weave did not finish within {args.timeout:g} s") from None
        elapsed = time.perf_counter() - started
    finally:
        await server.stop(grace=1.0)

    expected = [i * i for i in range(args.tasks)]
    shown = ", ".join(str(v) for v in squares[:10]) + (", ..." if len(squares) > 10 else "")
    _out(f"square: [{shown}] ({len(squares)} results)")
    _out(f"total: {total} (expected {sum(expected)})")
    tasks_run = args.tasks + 1
    over = "h2 with TLS" if tls else "h2"
    _out(
        f"timing: {tasks_run} tasks in {elapsed * 1000:.1f} ms over {over} "
        f"({tasks_run / elapsed:.0f} tasks/s, {calls} gRPC calls served, codec {args.codec})"
    )
    if squares != expected or total != sum(expected):
        raise CliError("demo results are wrong")
    if calls < tasks_run:
        raise CliError(f"expected at least {tasks_run} gRPC calls, the worker served {calls}")
    _out("demo OK")
    return 0


# -- entry point -------------------------------------------------------------------------


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _JsonFormatter(logging.Formatter):
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


def _configure_logging(level: str, log_format: str = "text", log_h2: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    for name in _H2_LOGGERS:
        # Their DEBUG output is a line per HPACK header and frame: only on request.
        logging.getLogger(name).setLevel(logging.NOTSET if log_h2 else logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``wove-h2grpc`` command line; returns the process exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return _EXIT_USAGE
    _configure_logging(
        args.log_level or _DEFAULT_LOG_LEVEL[args.command],
        args.log_format or "text",
        args.log_h2,
    )
    runner = _serve if args.command == "serve" else _demo
    try:
        return asyncio.run(runner(args))
    except CliError as exc:
        sys.stderr.write(f"{PROG} {args.command}: error: {exc}\n")
        return _EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG} {args.command}: interrupted\n")
        return 130
    except Exception as exc:
        logger.debug("unexpected failure", exc_info=True)
        message = str(exc).splitlines()[0] if str(exc) else ""
        sys.stderr.write(f"{PROG} {args.command}: error: {type(exc).__name__}: {message}\n")
        return _EXIT_ERROR
