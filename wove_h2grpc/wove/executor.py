"""Wove's ``executor="grpc"`` over our pure-asyncio :class:`~wove_h2grpc.client.Channel`.

:class:`H2GrpcExecutor` implements Wove's ``EnvironmentExecutor`` contract (``start``,
``send``, ``recv``, ``stop``) with the same wire format, signing and configuration rules as
Wove's own ``GrpcEnvironmentExecutor``, so a worker written for Wove's grpc executor serves
it unchanged (see ``docs/protocol.md``). It picks the transport from
``executor_config["transport"]``: ``"h2"`` (this module), ``"grpcio"`` (Wove's executor,
untouched) or ``"auto"`` (grpcio when it imports, else h2); :func:`wove_h2grpc.install` makes
Wove's ``executor="grpc"`` build one.

Delivery (``executor_config["delivery"]``): ``"unary"`` sends each command as one unary call
(Wove's own wire behaviour: the events arrive when the task has ended); ``"stream"`` sends a
``run_task`` as a server-streaming call and hands Wove each event as it arrives
(``task_started`` at once, heartbeats, the terminal event), and a ``cancel_task`` resets
that stream; ``"auto"`` streams until a worker answers UNIMPLEMENTED, then uses unary calls
for the channel's life (the task that found out is sent again as a unary call).

Delivery guarantee: every ``run_task`` ends in exactly one terminal event
(``task_result``, ``task_error`` or ``task_cancelled``). A failed call becomes a
``task_error`` with ``source="transport"`` whose message names the gRPC status.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Set
from uuid import uuid4

from wove.environment import (
    EnvironmentExecutor,
    GrpcEnvironmentExecutor,
    normalize_exception,
)
from wove.serialization import require_dispatch

from ..calls import UnaryStreamMultiCallable
from ..client import Channel
from ..errors import GrpcError
from ..protocol.status import StatusCode
from .codec import DEFAULT_METHOD, decode_events, encode_command
from .config import (
    CONFIG_KEYS,
    H2_ONLY_KEYS,
    TRANSPORTS,
    ConfigKeyWarning,
    Settings,
    parse_settings,
    resolve_transport,
    warn_unknown_keys,
)

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_METHOD",
    "H2_ONLY_KEYS",
    "TRANSPORTS",
    "ConfigKeyWarning",
    "H2GrpcExecutor",
]

logger = logging.getLogger(__name__)

# Seconds stop() lets in-flight cancel_task calls finish before resetting them.
_CANCEL_GRACE = 1.0
_TERMINAL = frozenset({"task_result", "task_error", "task_cancelled"})
_DISPATCH_REASON = "the grpc network executor serializes task frames for a remote worker service."


def _is_retryable(exc: BaseException) -> bool:
    """True only where the request provably never reached the worker's application.

    That is ``GrpcError.request_sent is False`` (no connection, still queued, stream
    refused, above a GOAWAY's last stream id): sending it again cannot run the task twice.
    Anything else (sent, or unknown) may have run, whatever its status code.
    """
    return isinstance(exc, GrpcError) and exc.request_sent is False


def _error_frame(
    command: Mapping[str, Any], exc: BaseException, message: str, *, retryable: bool
) -> Dict[str, Any]:
    error = normalize_exception(exc, source="transport", retryable=retryable)
    error["message"] = message
    if isinstance(exc, GrpcError):
        error["grpc_status"] = exc.code().name
        error["grpc_details"] = exc.details()
    return {
        "type": "task_error",
        "run_id": command.get("run_id"),
        "task_id": command.get("task_id"),
        "error": error,
    }


class H2GrpcExecutor(EnvironmentExecutor):
    """Wove's grpc executor on the h2 transport; dispatches on ``executor_config["transport"]``.

    ``transport`` is used when the config has no ``"transport"`` key: a bare
    ``H2GrpcExecutor()`` means h2, the executor :func:`wove_h2grpc.install` builds for ``"grpc"``
    means ``"auto"``. With ``"grpcio"`` every call goes to Wove's own
    ``GrpcEnvironmentExecutor``, unchanged. One instance may be started again after
    ``stop()`` (Wove reuses an executor instance for every weave).
    """

    def __init__(self, *, transport: str = "h2") -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of 'h2', 'grpcio', 'auto', not {transport!r}")
        self._default_transport = transport
        self._delegate: Optional[EnvironmentExecutor] = None
        self._settings: Optional[Settings] = None
        self._channel: Optional[Channel] = None
        self._rpc: Optional[Callable[..., Any]] = None
        self._stream_rpc: Optional[UnaryStreamMultiCallable[Any, Any]] = None
        # "unary", "stream" or "auto" ("auto" becomes "unary" on a worker without Stream).
        self._delivery = "unary"
        self._streams: Dict[str, Any] = {}  # run_id -> its open stream call
        self._cancelled_streams: Set[str] = set()  # runs whose stream cancel_task reset
        self._events: Optional[asyncio.Queue[Dict[str, Any]]] = None
        self._calls: Dict[str, asyncio.Task[None]] = {}
        # run_id -> True once its terminal event went to Wove; present while run_task is open.
        self._runs: Dict[str, bool] = {}
        self._transport: Optional[str] = None

    @property
    def transport(self) -> Optional[str]:
        """The transport in use since ``start()`` (``"h2"`` or ``"grpcio"``), else None."""
        return self._transport

    async def start(
        self,
        *,
        environment_name: str,
        environment_config: Dict[str, Any],
        run_config: Dict[str, Any],
    ) -> None:
        """Validate the config (raising before any task is sent) and open the channel."""
        if self._transport is not None:
            raise RuntimeError("grpc executor is already started; stop() it first.")
        config = environment_config or {}
        if not isinstance(config, Mapping):
            raise TypeError("executor_config must be a dictionary.")
        warn_unknown_keys(config)
        transport = resolve_transport(config.get("transport", self._default_transport))
        if transport == "grpcio":
            ignored = [key for key in H2_ONLY_KEYS if key in config]
            if ignored:
                warnings.warn(
                    f"executor_config keys {ignored} are read only by transport='h2'; Wove's "
                    "grpcio executor ignores them.",
                    ConfigKeyWarning,
                    stacklevel=2,
                )
            delegate = GrpcEnvironmentExecutor()
            await delegate.start(
                environment_name=environment_name,
                environment_config=dict(config),
                run_config=run_config,
            )
            self._delegate = delegate
            self._transport = "grpcio"
            return

        require_dispatch(_DISPATCH_REASON)
        settings = parse_settings(config)
        channel = Channel._from_options(settings.channel_options)
        self._settings = settings
        self._channel = channel
        self._rpc = channel.unary_unary(settings.method)
        self._delivery = settings.delivery
        if settings.delivery != "unary":
            self._stream_rpc = channel.unary_stream(settings.stream_method)
        self._events = asyncio.Queue()
        self._transport = "h2"
        logger.debug(
            "grpc executor %r started: h2 transport to %s%s (codec %s, delivery %s)",
            environment_name,
            settings.target,
            settings.method,
            settings.codec,
            settings.delivery,
        )

    @property
    def delivery(self) -> Optional[str]:
        """How run_task commands travel now: ``"unary"``, ``"stream"`` or ``"auto"`` (which
        becomes ``"unary"`` once a worker answered UNIMPLEMENTED); None before ``start()``
        and on the grpcio transport."""
        return self._delivery if self._transport == "h2" else None

    async def send(self, frame: Dict[str, Any]) -> None:
        """Start one unary call for ``run_task`` / ``cancel_task``; ``shutdown`` cancels calls."""
        if self._delegate is not None:
            await self._delegate.send(frame)
            return
        if self._rpc is None:
            raise RuntimeError("grpc executor is not started.")
        frame_type = frame.get("type")
        if frame_type == "cancel_task":
            stream = self._streams.get(frame.get("run_id"))  # type: ignore[arg-type]
            if stream is not None:
                # A streamed run is cancelled by resetting its stream: the worker cancels
                # the run at once, and no second call is needed.
                self._cancelled_streams.add(str(frame.get("run_id")))
                stream.cancel()
                return
        if frame_type in ("run_task", "cancel_task"):
            run_id = frame.get("run_id")
            if frame_type == "run_task" and isinstance(run_id, str) and run_id not in self._runs:
                tracking_id = run_id
                self._runs[run_id] = False
            else:
                tracking_id = f"{frame_type}:{run_id or uuid4().hex}:{uuid4().hex}"
            self._calls[tracking_id] = asyncio.create_task(self._call(frame, tracking_id))
            return
        if frame_type == "shutdown":
            for call in list(self._calls.values()):
                call.cancel()
            return
        raise ValueError(f"Unsupported frame type: {frame_type}")

    async def recv(self) -> Dict[str, Any]:
        """The next event frame for Wove."""
        if self._delegate is not None:
            return await self._delegate.recv()
        if self._rpc is None or self._events is None:
            raise RuntimeError("grpc executor is not started.")
        return await self._events.get()

    async def stop(self) -> None:
        """Reset in-flight calls (``cancel_task`` calls get up to a second), close the channel."""
        delegate, self._delegate = self._delegate, None
        channel, self._channel = self._channel, None
        calls = list(self._calls.values())
        try:
            if delegate is not None:
                await delegate.stop()
            # Wove sends cancel_task for the runs it gives up on and then stops the executor
            # at once: give those calls a moment to reach the worker before the run_task
            # streams are reset, so the worker cancels the run the way it was asked to (a
            # worker that detaches work from the call relies on cancel_task alone).
            cancels = [t for tid, t in self._calls.items() if tid not in self._runs]
            if cancels:
                await asyncio.wait(cancels, timeout=_CANCEL_GRACE)
            for call in calls:
                call.cancel()
            if calls:
                await asyncio.gather(*calls, return_exceptions=True)
            if channel is not None:
                await channel.close()
        finally:
            self._calls.clear()
            self._runs.clear()
            self._streams.clear()
            self._cancelled_streams.clear()
            self._rpc = None
            self._stream_rpc = None
            self._settings = None
            self._events = None
            self._transport = None

    def _emit(self, event: Dict[str, Any]) -> None:
        if self._events is None:
            return
        run_id = event.get("run_id")
        if event.get("type") in _TERMINAL:
            # Exactly one terminal event per run: a cancel_task answer and the run_task
            # answer may both carry one; Wove gets the first.
            if self._runs.get(run_id) is not False:  # type: ignore[arg-type]
                return
            self._runs[run_id] = True  # type: ignore[index]
        self._events.put_nowait(event)

    async def _call(self, frame: Dict[str, Any], tracking_id: str) -> None:
        is_run = frame.get("type") == "run_task" and tracking_id == frame.get("run_id")
        settings = self._settings
        rpc = self._rpc
        try:
            if settings is None or rpc is None:
                raise RuntimeError("grpc executor is not started.")
            try:
                request = encode_command(frame, settings.codec)
            except Exception as exc:
                self._emit(
                    _error_frame(
                        frame,
                        exc,
                        f"could not serialize the {frame.get('type')} frame: "
                        f"{type(exc).__name__}: {exc}",
                        retryable=False,
                    )
                )
                return
            streamed = is_run and self._delivery != "unary"
            if streamed and await self._stream(frame, request, settings):
                return
            metadata = self._metadata(settings, settings.method, request)
            try:
                response = await rpc(request, timeout=settings.timeout, metadata=metadata or None)
            except GrpcError as exc:
                message = (
                    f"gRPC call {settings.method} to {settings.target} failed: "
                    f"{exc.code().name}: {exc.details()}"
                )
                if is_run:
                    self._emit(_error_frame(frame, exc, message, retryable=_is_retryable(exc)))
                else:
                    self._lost_cancel(frame, message)
                return
            self._deliver(frame, response, is_run, settings)
        except asyncio.CancelledError:
            # shutdown / stop: the call's stream was reset; the run still ends, cancelled.
            if is_run:
                self._emit(
                    {
                        "type": "task_cancelled",
                        "run_id": frame.get("run_id"),
                        "task_id": frame.get("task_id"),
                    }
                )
            raise
        except Exception as exc:
            logger.exception("grpc executor call for %s failed", frame.get("run_id"))
            if is_run:
                self._emit(
                    _error_frame(frame, exc, f"{type(exc).__name__}: {exc}", retryable=False)
                )
        finally:
            self._calls.pop(tracking_id, None)
            if is_run:
                self._runs.pop(str(frame.get("run_id")), None)

    @staticmethod
    def _metadata(settings: Settings, method: str, request: bytes) -> Any:
        """The call's metadata: the configured pairs and the request's signature for
        ``method`` (a signature covers the method path it is sent to)."""
        signed = settings.security.metadata_for(transport="grpc", target=method, body=request)
        metadata = (*settings.metadata, *signed)
        return metadata or None

    async def _stream(self, frame: Dict[str, Any], request: bytes, settings: Settings) -> bool:
        """Send a run_task as a server stream, handing Wove each event as it arrives.

        Returns False (nothing emitted) when ``delivery="auto"`` finds a worker without the
        streaming method: the caller sends the command as a unary call instead.
        """
        stream_rpc = self._stream_rpc
        assert stream_rpc is not None
        run_id = str(frame.get("run_id"))
        where = f"gRPC worker service at {settings.target}{settings.stream_method}"
        metadata = self._metadata(settings, settings.stream_method, request)
        call = stream_rpc._prepare(request, timeout=settings.timeout, metadata=metadata)
        self._streams[run_id] = call
        received = False
        malformed = False

        def on_message(message: bytes) -> None:
            # Runs as each message arrives (in the connection's read path): decode it and
            # hand its events to Wove at once.
            nonlocal received, malformed
            received = True
            try:
                events = decode_events(message)
            except Exception as exc:  # raising here would break the connection's read
                text = f"{where} sent a malformed event ({len(message)} bytes): {exc}"
                self._emit(_error_frame(frame, exc, text, retryable=False))
                malformed = True
                call.cancel()
                return
            for event in events:
                self._emit(event)

        try:
            await call._deliver_to(on_message)
        except GrpcError as exc:
            if exc.code() is StatusCode.UNIMPLEMENTED and not received and self._delivery == "auto":
                logger.info(
                    "grpc executor (h2): %s answered UNIMPLEMENTED; delivery='auto' sends "
                    "unary calls to %s from now on",
                    where,
                    settings.method,
                )
                self._delivery = "unary"
                return False
            text = (
                f"gRPC call {settings.stream_method} to {settings.target} failed: "
                f"{exc.code().name}: {exc.details()}"
            )
            self._emit(_error_frame(frame, exc, text, retryable=_is_retryable(exc)))
            return True
        except asyncio.CancelledError:
            if malformed:
                return True  # reported as the malformed event; the stream was reset
            if run_id not in self._cancelled_streams:
                raise  # this task itself was cancelled (shutdown, stop): _call reports it
            # cancel_task reset the stream: the worker cancels the run; so does Wove.
            self._emit(
                {"type": "task_cancelled", "run_id": run_id, "task_id": frame.get("task_id")}
            )
            return True
        finally:
            self._streams.pop(run_id, None)
            self._cancelled_streams.discard(run_id)
        if self._runs.get(run_id) is False:
            missing = RuntimeError(f"{where} ended the stream without a terminal event.")
            self._emit(_error_frame(frame, missing, str(missing), retryable=False))
        return True

    def _lost_cancel(self, frame: Dict[str, Any], reason: str) -> None:
        # A lost cancel_task does not end the run: its run_task call still will. Once the run
        # has ended (typically the same failure, e.g. a wrong secret, refused both calls)
        # there was nothing left to cancel, and the line would only repeat the run's error.
        run_id = frame.get("run_id")
        if self._runs.get(run_id) is False:  # type: ignore[arg-type]
            logger.warning(
                "grpc executor (h2): cancel_task for run %s did not reach the worker, which "
                "may still be running it; its run_task call reports how it ends: %s",
                run_id,
                reason,
            )
        else:
            logger.debug(
                "grpc executor (h2): cancel_task for run %s failed after the run had ended: %s",
                run_id,
                reason,
            )

    def _deliver(
        self, frame: Dict[str, Any], response: Any, is_run: bool, settings: Settings
    ) -> None:
        where = f"gRPC worker service at {settings.target}{settings.method}"
        if not response:
            if is_run:
                exc: BaseException = RuntimeError("gRPC worker service returned an empty response.")
                self._emit(_error_frame(frame, exc, str(exc), retryable=False))
            return
        try:
            events = decode_events(bytes(response))
        except (TypeError, ValueError) as exc:
            message = f"{where} returned a malformed response ({len(response)} bytes): {exc}"
            if is_run:
                self._emit(_error_frame(frame, exc, message, retryable=False))
            else:
                self._lost_cancel(frame, message)
            return
        for event in events:
            self._emit(event)
        if is_run and self._runs.get(str(frame.get("run_id"))) is False:
            missing = RuntimeError(f"{where} answered run_task without a terminal event.")
            self._emit(_error_frame(frame, missing, str(missing), retryable=False))
