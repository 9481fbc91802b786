"""``wove-h2grpc serve``: a Wove worker service on our Server until SIGTERM or SIGINT.

A bind beyond this machine needs TLS and request security unless ``--insecure`` is given;
the ready line goes to stdout once the server listens. The server also answers the gRPC
health service (:class:`~wove_h2grpc.health.HealthService`): SERVING once it listens, for the
whole server (``""``) and for the worker's service name; NOT_SERVING from the stop signal
on, through ``--drain-delay`` (still accepting calls, so that probes and balancers move
traffic away) and the drain itself.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Optional

from ..protocol.target import format_host_port, parse_bind_address
from .console import PROG, CliError, logger, out
from .summaries import log_final_summary, log_summaries
from .tls import server_ssl_context

__all__ = ["is_local_bind", "run"]


#: Loop turns after Server.stop() is called by which its GOAWAY has gone out.
_TURNS_TO_GOAWAY = 3


def is_local_bind(address: str) -> bool:
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


async def run(args: argparse.Namespace) -> int:
    """Serve until a stop signal, then drain for ``--grace`` seconds; the exit status."""
    from ..wove.worker import DEFAULT_METHOD, WorkerService

    try:
        local = is_local_bind(args.bind)
    except ValueError as exc:
        raise CliError(f"--bind: {exc}") from None
    ssl_context = server_ssl_context(args.tls_cert, args.tls_key, args.client_ca)
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
        service = WorkerService(
            security,
            method=method,
            allow_unsigned=security is None,
            heartbeat_interval=args.heartbeat_interval,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None

    from ..health import OVERALL_HEALTH, HealthService, ServingStatus
    from ..server import Server

    server = Server(
        max_receive_message_length=args.max_receive_message_length,
        max_concurrent_streams=args.max_concurrent_streams,
        max_buffered_bytes=args.max_buffered_bytes or None,
    )
    service.attach(server)
    # The worker's service name, as health checks name it: /pkg.Service/Method -> pkg.Service.
    health_names = (OVERALL_HEALTH, method.split("/")[1])
    health = HealthService(dict.fromkeys(health_names, ServingStatus.NOT_SERVING))
    health.attach(server)
    try:
        port = await server.start(args.bind, ssl_context=ssl_context)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.bind}: {exc}") from None
    for name in health_names:
        health.set(name, ServingStatus.SERVING)
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
    out(
        f"{PROG}: serving {method} on {address} ({tls}, security: {service.security_mode}); "
        f"stop with Ctrl+C or kill -TERM {os.getpid()}"
    )
    summaries: Optional[asyncio.Task[None]] = None
    if args.summary_interval > 0:
        summaries = asyncio.ensure_future(log_summaries(service, args.summary_interval))
    try:
        await stopping.wait()
        health.enter_graceful_shutdown()
        if args.drain_delay > 0:
            logger.info(
                "stopping: health NOT_SERVING, still serving for %.1f s (a second signal "
                "skips this)",
                args.drain_delay,
            )
            stopping.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), args.drain_delay)
        logger.info("stopping: in-flight tasks get %.1f s", args.grace)
        stop = asyncio.ensure_future(server.stop(grace=args.grace))
        # The Watch calls end (after their NOT_SERVING), or a watcher would hold the drain
        # for the whole grace period; first the stop sends its GOAWAY (its drain starts two
        # loop turns in; one spare), so that a watcher that watches again is refused here.
        for _ in range(_TURNS_TO_GOAWAY):
            await asyncio.sleep(0)
        health.close_watches()
        await stop
    finally:
        if summaries is not None:
            summaries.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=args.grace + 5.0)
    pool.shutdown(wait=False, cancel_futures=True)
    log_final_summary(service.stats())
    out(f"{PROG}: stopped")
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
