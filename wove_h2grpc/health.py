"""The standard gRPC health service, ``grpc.health.v1.Health``, for :class:`~wove_h2grpc.Server`.

``Check`` (unary) answers a service's current status, or NOT_FOUND for a service never set;
``Watch`` (server streaming) sends the current status at once and then every change, and
SERVICE_UNKNOWN for a service never set (it keeps watching: a later ``set`` is delivered).
Both behave as grpcio-health-checking's servicer, so any gRPC health client (grpcio's stub,
``grpc_health_probe``, Kubernetes' gRPC probe, a load balancer's health check) works
against it. The messages are hand-encoded (:mod:`wove_h2grpc.protocol.health_messages`):
no protobuf dependency.

A watcher keeps only the newest status it has not sent yet, so a client that reads slowly
(or not at all) costs one slot, however often the status changes; it gets the latest status
once it reads again, never a backlog. ``set`` may be called from any thread.

Usage::

    from wove_h2grpc import Server
    from wove_h2grpc.health import HealthService, ServingStatus

    health = HealthService()          # the overall status "" starts SERVING, as in grpcio
    server = Server()
    health.attach(server)
    health.set("pkg.Service", ServingStatus.SERVING)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, AsyncIterator, Dict, Mapping, Optional, Set, Union

from .protocol.health_messages import (
    HealthMessageError,
    ServingStatus,
    decode_request,
    encode_response,
)
from .protocol.status import StatusCode

__all__ = [
    "CHECK_METHOD",
    "OVERALL_HEALTH",
    "SERVICE_NAME",
    "WATCH_METHOD",
    "HealthService",
    "ServingStatus",
]

#: The service's full name, as in grpcio-health-checking's ``SERVICE_NAME``.
SERVICE_NAME = "grpc.health.v1.Health"
#: The method paths.
CHECK_METHOD = f"/{SERVICE_NAME}/Check"
WATCH_METHOD = f"/{SERVICE_NAME}/Watch"
#: The service name of the server's overall status.
OVERALL_HEALTH = ""

StatusLike = Union[ServingStatus, int, str]
"""A :class:`ServingStatus`, its number (a protobuf enum value works) or its name."""


def _status(status: StatusLike) -> ServingStatus:
    """``status`` as a ServingStatus; ValueError/TypeError name what was wrong."""
    if isinstance(status, bool):
        raise TypeError("status must be a ServingStatus, its number or its name, not a bool")
    if isinstance(status, str):
        try:
            return ServingStatus[status.strip().upper()]
        except KeyError:
            names = ", ".join(s.name for s in ServingStatus)
            raise ValueError(f"status must be one of {names}, got {status!r}") from None
    if isinstance(status, int):
        try:
            return ServingStatus(status)
        except ValueError:
            raise ValueError(f"status must be 0..3 (a ServingStatus), got {status}") from None
    raise TypeError(
        f"status must be a ServingStatus, its number or its name, not {type(status).__name__}"
    )


def _service(service: object) -> str:
    if not isinstance(service, str):
        raise TypeError(f"service must be a str, not {type(service).__name__}")
    return service


class _Watcher:
    """One Watch call: the newest status it has not sent, and the event that wakes it."""

    __slots__ = ("closed", "loop", "pending", "wake")

    def __init__(self, loop: asyncio.AbstractEventLoop, status: ServingStatus) -> None:
        self.loop = loop
        self.pending: Optional[ServingStatus] = status
        self.closed = False
        self.wake = asyncio.Event()

    def offer(self, status: Optional[ServingStatus]) -> None:
        """A new status (None: end the watch), from any thread; replaces an unsent one."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self.loop:
            # asyncio.Event is not thread-safe: hop onto the watcher's own loop.
            with contextlib.suppress(RuntimeError):  # that loop is already closed
                self.loop.call_soon_threadsafe(self.offer, status)
            return
        if status is None:
            self.closed = True
        else:
            self.pending = status
        self.wake.set()


class HealthService:
    """``grpc.health.v1.Health``: ``Check`` and ``Watch`` over statuses set with :meth:`set`.

    ``statuses`` are the initial statuses by service name; the overall status (service
    ``""``) is SERVING unless given, as in grpcio's ``HealthServicer``.
    """

    def __init__(self, statuses: Optional[Mapping[str, StatusLike]] = None) -> None:
        self._lock = threading.Lock()
        self._statuses: Dict[str, ServingStatus] = {OVERALL_HEALTH: ServingStatus.SERVING}
        for service, status in (statuses or {}).items():
            self._statuses[_service(service)] = _status(status)
        self._watchers: Dict[str, Set[_Watcher]] = {}
        self._shutting_down = False
        self._closed = False

    # -- statuses ------------------------------------------------------------------------

    def set(self, service: str, status: StatusLike) -> None:
        """Set ``service``'s status (``""``: the whole server) and tell its watchers.

        ``status`` is a :class:`ServingStatus`, its number or its name (``"SERVING"``).
        Ignored after :meth:`enter_graceful_shutdown`, as in grpcio.
        """
        service = _service(service)
        value = _status(status)
        with self._lock:
            if self._shutting_down:
                return
            self._statuses[service] = value
            watchers = list(self._watchers.get(service, ()))
        for watcher in watchers:
            watcher.offer(value)

    def get(self, service: str = OVERALL_HEALTH) -> Optional[ServingStatus]:
        """``service``'s status, or None for a service never set (Check's NOT_FOUND)."""
        with self._lock:
            return self._statuses.get(_service(service))

    def enter_graceful_shutdown(self) -> None:
        """Set every service NOT_SERVING for good: later :meth:`set` calls are ignored.

        Call it when the server starts draining, so that health checks send new traffic
        elsewhere while in-flight calls finish (grpcio's ``enter_graceful_shutdown``).
        """
        with self._lock:
            if self._shutting_down:
                return
            self._shutting_down = True
            for service in self._statuses:
                self._statuses[service] = ServingStatus.NOT_SERVING
            # Watchers of a service never set keep SERVICE_UNKNOWN, as in grpcio.
            watchers = [w for s in self._statuses for w in self._watchers.get(s, ())]
        for watcher in watchers:
            watcher.offer(ServingStatus.NOT_SERVING)

    def close_watches(self) -> None:
        """End every Watch call (status OK) once it has sent its newest status, and every
        later one after its first message.

        A server's graceful stop waits for its in-flight calls, and a Watch never ends by
        itself: call this when the server stops, after :meth:`enter_graceful_shutdown`, so
        that the watchers learn NOT_SERVING and the stop does not wait out its grace period.
        """
        with self._lock:
            self._closed = True
            watchers = [w for ws in self._watchers.values() for w in ws]
        for watcher in watchers:
            watcher.offer(None)

    # -- the gRPC methods -----------------------------------------------------------------

    def attach(self, server: Any) -> None:
        """Register ``Check`` and ``Watch`` on a :class:`wove_h2grpc.Server`."""
        server.add_method(CHECK_METHOD, self.check)
        server.add_method(WATCH_METHOD, self.watch, kind="unary_stream")

    add_to_server = attach

    async def check(self, request: bytes, context: Any) -> bytes:
        """``Check``: the service's status; NOT_FOUND for a service never set."""
        service = await _decode(request, context)
        status = self.get(service)
        if status is None:
            await context.abort(StatusCode.NOT_FOUND, f"unknown service {service!r}")
            raise RuntimeError("ServicerContext.abort() returned instead of raising")
        return encode_response(status)

    async def watch(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        """``Watch``: the status now (SERVICE_UNKNOWN for a service never set), then each
        change; the newest status only, when the client reads slower than it changes."""
        service = await _decode(request, context)
        with self._lock:
            watcher = _Watcher(
                asyncio.get_running_loop(),
                self._statuses.get(service, ServingStatus.SERVICE_UNKNOWN),
            )
            watcher.closed = self._closed
            self._watchers.setdefault(service, set()).add(watcher)
        try:
            sent: Optional[ServingStatus] = None
            while True:
                status, watcher.pending = watcher.pending, None
                if status is not None and status is not sent:
                    sent = status
                    yield encode_response(status)
                    continue  # a status may have come while that one was sent
                if watcher.closed:
                    return
                # No await between the check above and the wait: offers run on this loop.
                watcher.wake.clear()
                await watcher.wake.wait()
        finally:
            with self._lock:
                watchers = self._watchers.get(service)
                if watchers is not None:
                    watchers.discard(watcher)
                    if not watchers:
                        del self._watchers[service]

    def watcher_count(self, service: Optional[str] = None) -> int:
        """Watch calls in flight (for ``service``, or all of them)."""
        with self._lock:
            if service is not None:
                return len(self._watchers.get(service, ()))
            return sum(len(ws) for ws in self._watchers.values())


async def _decode(request: bytes, context: Any) -> str:
    """The request's service name; bytes that are no HealthCheckRequest: INVALID_ARGUMENT."""
    try:
        return decode_request(request)
    except HealthMessageError as exc:
        await context.abort(StatusCode.INVALID_ARGUMENT, f"bad HealthCheckRequest: {exc}")
        raise  # abort() raises; this is never reached
