"""The worker side of Wove's grpc executor: ``WorkerService``.

``WorkerService.handle(request, metadata)`` is transport-agnostic: it takes the raw request
bytes of one unary call and the call's metadata, and returns the raw response bytes. It
verifies the request (``wove.security`` signed or bearer metadata, over the raw bytes) before
anything is unpickled, runs the task (a sync callable in a thread, an async one on the event
loop) and answers ``task_started`` plus exactly one terminal event (``task_result``,
``task_error`` or ``task_cancelled``) in the request's codec. A ``cancel_task`` command
cancels the matching in-flight run, which then answers ``task_cancelled``.

``WorkerService.handle_stream(request, metadata)`` serves the same command over a server
stream (the ``Stream`` method): each event is one message, sent as it happens
(``task_started`` at once, a ``heartbeat`` every ``heartbeat_interval`` seconds while the
task runs, then the terminal event), and closing the stream cancels the run. Either way a
``run_task`` whose ``run_id`` is running or finished recently runs nothing: the caller gets
that run's events (:mod:`wove_h2grpc.wove.runs`).

The same service attaches to our pure-asyncio :class:`~wove_h2grpc.server.Server`
(:meth:`WorkerService.attach`) and to a ``grpc.aio`` server
(:meth:`WorkerService.grpcio_handler`; grpcio is imported only there).

Every finished run is one INFO line on this module's logger (``wove_h2grpc.wove.worker``):
run id, task, peer, outcome and duration, also attached to the record as the attributes
``run_id``, ``task``, ``peer``, ``outcome``, ``duration_ms`` (and ``error`` for a failed
run) for structured log handlers. :meth:`WorkerService.stats` counts runs and refusals for
summaries. The counting and the line are :mod:`wove_h2grpc.wove.stats`'s; the credentials
check is :mod:`wove_h2grpc.wove.credentials`'s.

Status codes a refused call ends with (decided here and in the credentials check,
documented in ``docs/worker.md``):

* ``UNAUTHENTICATED``: the request's credentials are missing or wrong (no or bad signature,
  unknown key, expired timestamp, replayed nonce, wrong bearer token).
* ``PERMISSION_DENIED``: the worker has no security configured and was not allowed to run
  unsigned requests (``security=None`` and ``allow_unsigned=False``), so it runs nothing.
* ``INVALID_ARGUMENT``: a verified request that is not a Wove command frame at all.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple

from wove.environment import normalize_exception

from ..protocol.status import StatusCode
from .codec import (
    DEFAULT_METHOD,
    decode_command,
    dump_event,
    dump_events,
    encode_events,
    load_raw,
    serialize_event,
    stream_method_for,
)
from .credentials import MetadataInput, RequestVerifier, WorkerPermissionError
from .runs import Run, RunRegistry
from .stats import RunLedger, WorkerStats

__all__ = [
    "DEFAULT_METHOD",
    "InvalidRequestError",
    "WorkerPermissionError",
    "WorkerService",
    "WorkerStats",
]

logger = logging.getLogger(__name__)

# Requests above this size are decoded (unpickled) in a thread so that a large pickle does
# not stall every other call served by the same event loop.
_OFFLOAD_BYTES = 256 * 1024

# A cancel_task may overtake its run_task (they are two independent unary calls, possibly
# on different connections). Remember such run ids for a while so the run, when it does
# arrive, is answered task_cancelled instead of running. Bounded in count and age.
_EARLY_CANCEL_LIMIT = 4096
_EARLY_CANCEL_TTL = 300.0


class InvalidRequestError(ValueError):
    """A verified request that is not a Wove command frame (answered ``INVALID_ARGUMENT``)."""


class _TaskExited(Exception):
    """Carries a task's SystemExit or KeyboardInterrupt out of its asyncio task."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


def _exception_survives_pickle(exc: BaseException) -> bool:
    # An exception whose class needs extra __init__ arguments pickles fine but fails to
    # unpickle on the client, which would turn a task error into a transport error there.
    import cloudpickle

    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
    except Exception:
        return False
    return True


def _is_async_callable(func: Any) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _check_method(name: str, method: Any) -> str:
    if not isinstance(method, str) or not method.startswith("/") or method.count("/") < 2:
        raise ValueError(
            f"{name} must be a fully-qualified gRPC method path like {DEFAULT_METHOD!r}, "
            f"not {method!r}"
        )
    return method


def _check_positive(name: str, value: Any, kind: type = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise TypeError(
            f"{name} must be {'a number' if kind is float else 'an int'}, not {value!r}"
        )
    if not value > 0:
        raise ValueError(f"{name} must be positive, not {value!r}")
    return value


class WorkerService:
    """Serves Wove's grpc executor methods: verifies, runs and answers Wove task frames.

    ``security`` is a :class:`wove.security.NetworkExecutorSecurity` or any value its
    ``from_config`` accepts (``"env:VARIABLE"``, a ``{"type": "signed" | "bearer", ...}``
    dict); every request must then carry valid metadata for it. With ``security=None`` the
    service runs unsigned requests only when ``allow_unsigned=True`` and refuses every
    request otherwise, so a forgotten secret never turns into remote code execution.

    ``method`` is the unary method (Wove's ``Send``), ``stream_method`` the server-streaming
    one (default: ``Stream`` of the same service). ``heartbeat_interval`` is the longest gap
    between two events of a stream (shorter when a command asks for Wove's
    ``delivery_heartbeat_seconds``: a third of it). ``recent_runs`` and
    ``recent_run_seconds`` bound how many finished runs, and for how long, are remembered
    so that a re-sent ``run_task`` gets their events instead of running again.
    """

    def __init__(
        self,
        security: Any = None,
        *,
        method: str = DEFAULT_METHOD,
        stream_method: Optional[str] = None,
        allow_unsigned: bool = False,
        heartbeat_interval: float = 5.0,
        recent_runs: int = 10_000,
        recent_run_seconds: float = 600.0,
    ) -> None:
        method = _check_method("method", method)
        stream_method = _check_method(
            "stream_method", stream_method_for(method) if stream_method is None else stream_method
        )
        if stream_method == method:
            raise ValueError("stream_method must differ from method")
        self._heartbeat_interval = float(_check_positive("heartbeat_interval", heartbeat_interval))
        self._runs = RunRegistry(
            limit=_check_positive("recent_runs", recent_runs, int),
            ttl=float(_check_positive("recent_run_seconds", recent_run_seconds)),
        )
        self._verifier = RequestVerifier(security, allow_unsigned=allow_unsigned)
        self._method = method
        self._stream_method = stream_method
        self._early_cancels: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._ledger = RunLedger(logger)
        if self._verifier.security_mode == "none" and not allow_unsigned:
            logger.warning(
                "WorkerService has no security and allow_unsigned=False: every request will "
                "be refused with PERMISSION_DENIED"
            )

    @property
    def method(self) -> str:
        """The unary gRPC method path this service answers (and that its signatures cover)."""
        return self._method

    @property
    def stream_method(self) -> str:
        """The server-streaming method path (each event sent as it happens)."""
        return self._stream_method

    @property
    def heartbeat_interval(self) -> float:
        """The longest gap, in seconds, between two events of a stream while a task runs."""
        return self._heartbeat_interval

    @property
    def security_mode(self) -> str:
        """``"signed"``, ``"bearer"`` or ``"none"`` (unsigned requests, if allowed)."""
        return self._verifier.security_mode

    @property
    def allow_unsigned(self) -> bool:
        """Whether requests without credentials are run (only possible without security)."""
        return self._verifier.allow_unsigned

    def active_runs(self) -> Tuple[str, ...]:
        """Run ids currently executing, for monitoring and tests."""
        return self._runs.running()

    def stats(self) -> WorkerStats:
        """A snapshot of the runs and refusals counted since this service was created."""
        return self._ledger.stats(running=len(self._runs.running()))

    # -- verification ------------------------------------------------------------------

    def verify(self, request: bytes, metadata: MetadataInput, method: Optional[str] = None) -> None:
        """Check the request's credentials over its raw bytes; raise ``WorkerPermissionError``.

        ``metadata`` is the call's metadata as ``(key, value)`` pairs or a mapping; a signature
        covers the method path the request came on (``method``, default the unary one).

        Runs before anything is unpickled: an unverified request never reaches cloudpickle.
        """
        self._verifier.verify(request, metadata, method or self._method)

    # -- the transport-agnostic entry point --------------------------------------------

    async def handle(
        self, request: bytes, metadata: MetadataInput = (), *, peer: Optional[str] = None
    ) -> bytes:
        """Answer one unary call: verify, decode, run or cancel, and encode the events.

        Raises ``WorkerPermissionError`` (a ``PermissionError``) when the request is refused
        and ``InvalidRequestError`` (a ``ValueError``) when it is not a Wove command; a
        failing task is not an exception here but a ``task_error`` event in the answer.
        Cancelling this coroutine (the client went away, the deadline passed) cancels the
        task it runs. ``peer`` names the caller in the run's log line.
        """
        try:
            return await self._handle(request, metadata, peer or "unknown peer")
        except (WorkerPermissionError, InvalidRequestError):
            self._ledger.refused()
            raise

    async def _handle(self, request: bytes, metadata: MetadataInput, peer: str) -> bytes:
        self.verify(request, metadata)
        started = time.monotonic()
        try:
            codec, frame = await self._decode(request)
        except ValueError as exc:
            codec, events = self._undecodable(request, exc, peer, started)
            return await self._encode(events, codec)
        frame_type = frame.get("type")
        if frame_type == "run_task":
            run = self._join(frame, codec, peer, started)
            await self._wait(run)
            return dump_events(
                [serialize_event(run.started_event(), codec), self._wire_terminal(run, codec)],
                codec,
            )
        if frame_type == "cancel_task":
            self._cancel(frame.get("run_id"))
            return encode_events((), codec)
        if frame_type == "shutdown":
            # Wove's grpc executor handles shutdown on its side and never sends it; a peer
            # that does gets an empty answer rather than having this worker stop for it.
            return encode_events((), codec)
        run_id = frame.get("run_id")
        if isinstance(run_id, str) and run_id:
            error = InvalidRequestError(f"unsupported Wove frame type {frame_type!r}")
            events = [self._error_event(frame, error, source="worker")]
            self._ledger.finished(frame, peer, started, "error", f"worker: {error}")
            return await self._encode(events, codec)
        raise InvalidRequestError(f"unsupported Wove frame type {frame_type!r}")

    # -- attaching to servers ----------------------------------------------------------

    def attach(self, server: Any) -> None:
        """Register this service's methods (unary and streaming) on a
        :class:`wove_h2grpc.Server`."""
        server.add_method(self._method, self.server_handler)
        server.add_method(self._stream_method, self.stream_server_handler, kind="unary_stream")

    async def server_handler(self, request: bytes, context: Any) -> bytes:
        """Unary handler for :class:`wove_h2grpc.Server`: refusals become gRPC statuses."""
        try:
            return await self.handle(request, context.invocation_metadata(), peer=_peer(context))
        except (WorkerPermissionError, InvalidRequestError) as exc:
            code, details = _refusal(context, exc)
            await context.abort(code, details)
        # context.abort() ends the call by raising; this is never reached.
        raise RuntimeError("ServicerContext.abort() returned instead of raising")

    async def stream_server_handler(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        """Server-streaming handler for :class:`wove_h2grpc.Server` (each event a message)."""
        events = self.handle_stream(request, context.invocation_metadata(), peer=_peer(context))
        try:
            async for message in events:
                yield message
        except (WorkerPermissionError, InvalidRequestError) as exc:
            code, details = _refusal(context, exc)
            await context.abort(code, details)

    def grpcio_handler(self) -> Any:
        """A ``grpc.GenericRpcHandler`` serving both methods on a ``grpc.aio`` server.

        Usage: ``server = grpc.aio.server(); server.add_generic_rpc_handlers(
        (service.grpcio_handler(),))``. grpcio is imported here and nowhere else.
        """
        import grpc

        service = self

        async def abort(context: Any, exc: Exception) -> None:
            code, details = _refusal(context, exc)
            await context.abort(grpc.StatusCode[code.name], details)

        async def unary(request: bytes, context: Any) -> bytes:
            try:
                metadata = context.invocation_metadata()
                return await service.handle(request, metadata, peer=_peer(context))
            except (WorkerPermissionError, InvalidRequestError) as exc:
                await abort(context, exc)
            raise RuntimeError("grpc.aio ServicerContext.abort() returned instead of raising")

        async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
            metadata = context.invocation_metadata()
            try:
                async for message in service.handle_stream(request, metadata, peer=_peer(context)):
                    yield message
            except (WorkerPermissionError, InvalidRequestError) as exc:
                await abort(context, exc)

        handlers = {
            self._method: grpc.unary_unary_rpc_method_handler(unary),
            self._stream_method: grpc.unary_stream_rpc_method_handler(stream),
        }

        class _WoveWorkerHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, handler_call_details: Any) -> Any:
                return handlers.get(handler_call_details.method)

        return _WoveWorkerHandler()

    # -- running a task ----------------------------------------------------------------

    def _join(self, frame: Dict[str, Any], codec: str, peer: str, began: float) -> Run:
        """The run of a ``run_task``: the one already running or finished recently under its
        ``run_id`` (nothing runs twice), else a new one, started here."""
        run_id = frame.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            raise InvalidRequestError("run_task frame without a run_id")
        known = self._runs.get(run_id)
        if known is not None:
            self._ledger.duplicate(run_id, peer, running=not known.done)
            return known
        run = Run(run_id, frame.get("task_id"), codec)
        if self._take_early_cancel(run_id):
            reason = "cancel_task arrived before the run"
            self._end(run, frame, self._cancelled_event(frame), peer, began, "cancelled", reason)
            self._runs.add(run)
            return run
        func = frame.get("callable")
        args = frame.get("args")
        if args is None:
            args = {}
        if not callable(func) or not isinstance(args, dict):
            error = InvalidRequestError(
                "run_task needs a callable and a dict of keyword arguments, got "
                f"{type(func).__name__} and {type(args).__name__}"
            )
            event = self._error_event(frame, error, "worker")
            self._end(run, frame, event, peer, began, "error", f"worker: {error}")
            self._runs.add(run)
            return run
        self._runs.add(run)
        run.task = asyncio.ensure_future(self._execute(run, func, args, frame, peer, began))
        return run

    async def _execute(
        self,
        run: Run,
        func: Callable[..., Any],
        args: Dict[str, Any],
        frame: Dict[str, Any],
        peer: str,
        began: float,
    ) -> None:
        """Run the task and end ``run`` with its one terminal event."""
        detail = ""
        try:
            result = await self._invoke(func, args)
        except asyncio.CancelledError:
            outcome, detail = "cancelled", run.cancel_reason or "by cancel_task"
            terminal = self._cancelled_event(frame)
        except Exception as exc:
            outcome = "error"
            shown = exc.original if isinstance(exc, _TaskExited) else exc
            detail = f"{type(shown).__name__}: {shown}"
            terminal = self._error_event(frame, exc, source="task")
        else:
            outcome = "result"
            terminal = {
                "type": "task_result",
                "run_id": run.run_id,
                "task_id": frame.get("task_id"),
                "result": result,
            }
        self._end(run, frame, terminal, peer, began, outcome, detail)

    def _end(
        self,
        run: Run,
        frame: Dict[str, Any],
        terminal: Dict[str, Any],
        peer: str,
        began: float,
        outcome: str,
        detail: str,
    ) -> None:
        """The one place a run ends: its terminal event, pickled once for every caller."""
        try:
            wire = serialize_event(terminal, run.codec)
        except Exception as exc:
            # The result (or, rarely, an exception) could not be pickled: the callers must
            # still get exactly one terminal event, so report the serialization failure.
            logger.warning("run %s: cannot serialize the answer: %r", run.run_id, exc)
            terminal = self._error_event(frame, exc, source="worker")
            outcome, detail = "error", f"worker: cannot serialize the answer: {exc!r}"
            wire = serialize_event(terminal, run.codec)
        run.finish(terminal, wire)
        self._runs.finished(run)
        self._ledger.finished(frame, peer, began, outcome, detail)

    @staticmethod
    def _wire_terminal(run: Run, codec: str) -> Dict[str, Any]:
        """The run's terminal event for a caller's codec (a re-sent command may differ)."""
        assert run.terminal is not None and run.wire_terminal is not None
        if codec == run.codec:
            return run.wire_terminal
        try:
            return serialize_event(run.terminal, codec)
        except Exception as exc:
            return serialize_event(
                WorkerService._error_event(
                    {"run_id": run.run_id, "task_id": run.task_id}, exc, "worker"
                ),
                codec,
            )

    @staticmethod
    async def _wait(run: Run) -> None:
        """Wait for ``run`` to end; a caller that goes away (the client reset its call, the
        deadline passed) cancels the run if it was the last one waiting."""
        run.callers += 1
        try:
            await asyncio.shield(run.finished)
        except asyncio.CancelledError:
            if run.callers == 1:
                run.cancel("the call was cancelled")
            raise
        finally:
            run.callers -= 1

    def _heartbeat_for(self, frame: Dict[str, Any]) -> float:
        """Seconds between heartbeats: ``heartbeat_interval``, or a third of the
        ``delivery_heartbeat_seconds`` Wove put in the command, whichever is shorter."""
        interval = self._heartbeat_interval
        delivery = frame.get("delivery")
        wanted = delivery.get("delivery_heartbeat_seconds") if isinstance(delivery, dict) else None
        if isinstance(wanted, (int, float)) and not isinstance(wanted, bool) and wanted > 0:
            interval = min(interval, float(wanted) / 3.0)
        return max(interval, 0.01)

    # -- the streaming entry point -----------------------------------------------------

    async def handle_stream(
        self, request: bytes, metadata: MetadataInput = (), *, peer: Optional[str] = None
    ) -> AsyncIterator[bytes]:
        """Answer one call of the streaming method: each event one message, as it happens.

        Verification, refusals and decoding are those of :meth:`handle` (the exceptions are
        raised before the first message). For a ``run_task``: ``task_started`` at once,
        a ``heartbeat`` while the task runs, then the terminal event; closing the stream
        early (the client reset it) cancels the run unless another call waits for it too.
        """
        peer = peer or "unknown peer"
        try:
            self.verify(request, metadata, self._stream_method)
            began = time.monotonic()
            try:
                codec, frame = await self._decode(request)
            except ValueError as exc:
                codec, events = self._undecodable(request, exc, peer, began)
                for event in events:
                    yield dump_event(serialize_event(event, codec), codec)
                return
            frame_type = frame.get("type")
            if frame_type == "run_task":
                run = self._join(frame, codec, peer, began)
            elif frame_type in ("cancel_task", "shutdown"):
                if frame_type == "cancel_task":
                    self._cancel(frame.get("run_id"))
                return
            else:
                run_id = frame.get("run_id")
                error = InvalidRequestError(f"unsupported Wove frame type {frame_type!r}")
                if not (isinstance(run_id, str) and run_id):
                    raise error
                self._ledger.finished(frame, peer, began, "error", f"worker: {error}")
                event = serialize_event(self._error_event(frame, error, source="worker"), codec)
                yield dump_event(event, codec)
                return
        except (WorkerPermissionError, InvalidRequestError):
            self._ledger.refused()
            raise
        async for message in self._stream_run(run, codec, self._heartbeat_for(frame)):
            yield message

    async def _stream_run(self, run: Run, codec: str, interval: float) -> AsyncIterator[bytes]:
        run.callers += 1
        try:
            yield dump_event(serialize_event(run.started_event(), codec), codec)
            while not run.done:
                finished, _ = await asyncio.wait({run.finished}, timeout=interval)
                if not finished:
                    yield dump_event(serialize_event(run.heartbeat_event(), codec), codec)
            yield dump_event(self._wire_terminal(run, codec), codec)
        except (asyncio.CancelledError, GeneratorExit):
            # The stream ended before the run: the client reset it, or the server stopped.
            if run.callers == 1:
                run.cancel("the stream was closed")
            raise
        finally:
            run.callers -= 1

    async def _invoke(self, func: Callable[..., Any], args: Dict[str, Any]) -> Any:
        try:
            if _is_async_callable(func):
                result = func(**args)
            else:
                # A sync task must not block the loop that serves every other call. A thread
                # cannot be interrupted: on cancel the answer is sent at once and the thread
                # finishes in the background, its result discarded.
                result = await asyncio.to_thread(func, **args)
            if inspect.isawaitable(result):
                result = await result
        except (SystemExit, KeyboardInterrupt) as exc:
            # Raised out of an asyncio task, these would stop the event loop and with it the
            # whole worker. A task calling sys.exit() fails; the worker keeps serving.
            raise _TaskExited(exc) from exc
        return result

    def _cancel(self, run_id: Any) -> None:
        if not isinstance(run_id, str) or not run_id:
            return
        run = self._runs.get(run_id)
        if run is not None:
            if not run.done:
                logger.debug("cancelling run %s", run_id)
                run.cancel("by cancel_task")
            return
        self._remember_early_cancel(run_id)

    def _remember_early_cancel(self, run_id: str) -> None:
        now = time.monotonic()
        early = self._early_cancels
        while early:
            oldest_id, seen = next(iter(early.items()))
            if now - seen <= _EARLY_CANCEL_TTL and len(early) < _EARLY_CANCEL_LIMIT:
                break
            del early[oldest_id]
        early[run_id] = now

    def _take_early_cancel(self, run_id: str) -> bool:
        seen = self._early_cancels.pop(run_id, None)
        return seen is not None and time.monotonic() - seen <= _EARLY_CANCEL_TTL

    # -- events ------------------------------------------------------------------------

    @staticmethod
    def _cancelled_event(frame: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "type": "task_cancelled",
            "run_id": frame.get("run_id"),
            "task_id": frame.get("task_id"),
        }

    @staticmethod
    def _error_event(frame: Dict[str, Any], exc: BaseException, source: str) -> Dict[str, Any]:
        event: Dict[str, Any] = {
            "type": "task_error",
            "run_id": frame.get("run_id"),
            "task_id": frame.get("task_id"),
        }
        if isinstance(exc, _TaskExited):
            # Reported as the SystemExit/KeyboardInterrupt it was, but never re-raised on
            # the client (Wove would raise the pickled exception in the caller's process).
            exc = exc.original
        elif _exception_survives_pickle(exc):
            event["exception"] = exc
        event["error"] = normalize_exception(exc, source=source)
        return event

    # -- codec, offloaded for large payloads -------------------------------------------

    @staticmethod
    async def _decode(request: bytes) -> Tuple[str, Dict[str, Any]]:
        if len(request) > _OFFLOAD_BYTES:
            return await asyncio.to_thread(decode_command, request)
        return decode_command(request)

    @staticmethod
    async def _encode(events: List[Dict[str, Any]], codec: str) -> bytes:
        # Results are pickled inline: a thread hop per answer would cost more than it saves
        # for the small results tasks usually return.
        return encode_events(events, codec)

    def _undecodable(
        self, request: bytes, error: ValueError, peer: str, began: float
    ) -> Tuple[str, List[Dict[str, Any]]]:
        # decode_command failed. If the frame itself parses and names a run, the failure was
        # in a pickle (typically a module the worker lacks): answer that run with a
        # task_error so the client sees why, instead of a bare transport error.
        try:
            codec, raw = load_raw(request)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        if not isinstance(raw, dict) or raw.get("type") != "run_task":
            raise InvalidRequestError(str(error))
        run_id = raw.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            raise InvalidRequestError(str(error))
        frame = {"run_id": run_id, "task_id": raw.get("task_id")}
        logger.warning("run %s: cannot decode the task: %s", run_id, error)
        started = {"type": "task_started", "run_id": run_id, "task_id": raw.get("task_id")}
        self._ledger.finished(
            frame, peer, began, "error", f"worker: cannot decode the task: {error}"
        )
        return codec, [started, self._error_event(frame, error, "worker")]


def _refusal(context: Any, exc: Exception) -> Tuple[StatusCode, str]:
    """The status a refused request ends with (logged once, here)."""
    if isinstance(exc, WorkerPermissionError):
        _log_refusal("refused a request", context, exc, exc.code.name)
        return exc.code, str(exc)
    _log_refusal("invalid request", context, exc, StatusCode.INVALID_ARGUMENT.name)
    return StatusCode.INVALID_ARGUMENT, str(exc)


def _log_refusal(what: str, context: Any, exc: Exception, status: str) -> None:
    peer = _peer(context)
    logger.warning(
        "%s from %s: %s",
        what,
        peer,
        exc,
        extra={"peer": peer, "outcome": "refused", "status": status, "error": str(exc)},
    )


def _peer(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:
        return "unknown peer"
