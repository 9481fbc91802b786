"""The worker side of Wove's grpc executor: ``WorkerService``.

``WorkerService.handle(request, metadata)`` is transport-agnostic: it takes the raw request
bytes of one unary call and the call's metadata, and returns the raw response bytes. It
verifies the request (``wove.security`` signed or bearer metadata, over the raw bytes) before
anything is unpickled, runs the task (a sync callable in a thread, an async one on the event
loop) and answers ``task_started`` plus exactly one terminal event (``task_result``,
``task_error`` or ``task_cancelled``) in the request's codec. A ``cancel_task`` command
cancels the matching in-flight run, which then answers ``task_cancelled``.

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
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from wove.environment import normalize_exception

from ..protocol.status import StatusCode
from .codec import DEFAULT_METHOD, decode_command, encode_events, load_raw
from .credentials import MetadataInput, RequestVerifier, WorkerPermissionError
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


class WorkerService:
    """Serves Wove's grpc executor method: verifies, runs and answers Wove task frames.

    ``security`` is a :class:`wove.security.NetworkExecutorSecurity` or any value its
    ``from_config`` accepts (``"env:VARIABLE"``, a ``{"type": "signed" | "bearer", ...}``
    dict); every request must then carry valid metadata for it. With ``security=None`` the
    service runs unsigned requests only when ``allow_unsigned=True`` and refuses every
    request otherwise, so a forgotten secret never turns into remote code execution.
    """

    def __init__(
        self,
        security: Any = None,
        *,
        method: str = DEFAULT_METHOD,
        allow_unsigned: bool = False,
    ) -> None:
        if not isinstance(method, str) or not method.startswith("/") or method.count("/") < 2:
            raise ValueError(
                f"method must be a fully-qualified gRPC method path like {DEFAULT_METHOD!r}, "
                f"not {method!r}"
            )
        self._verifier = RequestVerifier(security, allow_unsigned=allow_unsigned)
        self._method = method
        self._active: Dict[str, Set[asyncio.Future[Any]]] = {}
        self._early_cancels: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._ledger = RunLedger(logger)
        if self._verifier.security_mode == "none" and not allow_unsigned:
            logger.warning(
                "WorkerService has no security and allow_unsigned=False: every request will "
                "be refused with PERMISSION_DENIED"
            )

    @property
    def method(self) -> str:
        """The gRPC method path this service answers (and that signatures cover)."""
        return self._method

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
        return tuple(self._active)

    def stats(self) -> WorkerStats:
        """A snapshot of the runs and refusals counted since this service was created."""
        return self._ledger.stats(running=len(self._active))

    # -- verification ------------------------------------------------------------------

    def verify(self, request: bytes, metadata: MetadataInput) -> None:
        """Check the request's credentials over its raw bytes; raise ``WorkerPermissionError``.

        ``metadata`` is the call's metadata as ``(key, value)`` pairs or a mapping.

        Runs before anything is unpickled: an unverified request never reaches cloudpickle.
        """
        self._verifier.verify(request, metadata, self._method)

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
            return await self._answer_undecodable(request, exc, peer, started)
        frame_type = frame.get("type")
        if frame_type == "run_task":
            return await self._run_task(frame, codec, peer, started)
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
        """Register this service's method on a :class:`wove_h2grpc.Server`."""
        server.add_method(self._method, self.server_handler)

    async def server_handler(self, request: bytes, context: Any) -> bytes:
        """Handler for :class:`wove_h2grpc.Server`: refusals become gRPC statuses."""
        try:
            return await self.handle(request, context.invocation_metadata(), peer=_peer(context))
        except WorkerPermissionError as exc:
            _log_refusal("refused a request", context, exc, exc.code.name)
            await context.abort(exc.code, str(exc))
        except InvalidRequestError as exc:
            _log_refusal("invalid request", context, exc, StatusCode.INVALID_ARGUMENT.name)
            await context.abort(StatusCode.INVALID_ARGUMENT, str(exc))
        # context.abort() ends the call by raising; this is never reached.
        raise RuntimeError("ServicerContext.abort() returned instead of raising")

    def grpcio_handler(self) -> Any:
        """A ``grpc.GenericRpcHandler`` serving this method on a ``grpc.aio`` server.

        Usage: ``server = grpc.aio.server(); server.add_generic_rpc_handlers(
        (service.grpcio_handler(),))``. grpcio is imported here and nowhere else.
        """
        import grpc

        service = self

        async def behavior(request: bytes, context: Any) -> bytes:
            try:
                metadata = context.invocation_metadata()
                return await service.handle(request, metadata, peer=_peer(context))
            except WorkerPermissionError as exc:
                _log_refusal("refused a request", context, exc, exc.code.name)
                await context.abort(grpc.StatusCode[exc.code.name], str(exc))
            except InvalidRequestError as exc:
                _log_refusal("invalid request", context, exc, StatusCode.INVALID_ARGUMENT.name)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise RuntimeError("grpc.aio ServicerContext.abort() returned instead of raising")

        rpc_handler = grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=None, response_serializer=None
        )
        method = self._method

        class _WoveWorkerHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, handler_call_details: Any) -> Any:
                if handler_call_details.method == method:
                    return rpc_handler
                return None

        return _WoveWorkerHandler()

    # -- running a task ----------------------------------------------------------------

    async def _run_task(self, frame: Dict[str, Any], codec: str, peer: str, began: float) -> bytes:
        run_id = frame.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            raise InvalidRequestError("run_task frame without a run_id")
        started = {"type": "task_started", "run_id": run_id, "task_id": frame.get("task_id")}
        if self._take_early_cancel(run_id):
            self._ledger.finished(
                frame, peer, began, "cancelled", "cancel_task arrived before the run"
            )
            return await self._encode([started, self._cancelled_event(frame)], codec)
        func = frame.get("callable")
        args = frame.get("args")
        if args is None:
            args = {}
        if not callable(func) or not isinstance(args, dict):
            error = InvalidRequestError(
                "run_task needs a callable and a dict of keyword arguments, got "
                f"{type(func).__name__} and {type(args).__name__}"
            )
            self._ledger.finished(frame, peer, began, "error", f"worker: {error}")
            return await self._encode([started, self._error_event(frame, error, "worker")], codec)

        run = asyncio.ensure_future(self._invoke(func, args))
        runs = self._active.setdefault(run_id, set())
        runs.add(run)
        try:
            # asyncio.wait never raises the run's outcome: a CancelledError here means this
            # call itself was cancelled (client reset, deadline, server stop), not the run.
            await asyncio.wait({run})
        except asyncio.CancelledError:
            run.cancel()
            self._ledger.finished(frame, peer, began, "cancelled", "the call was cancelled")
            raise
        finally:
            runs.discard(run)
            if not runs and self._active.get(run_id) is runs:
                del self._active[run_id]

        detail = ""
        if run.cancelled():
            outcome = "cancelled"
            detail = "by cancel_task"
            terminal = self._cancelled_event(frame)
        else:
            exc = run.exception()
            if exc is not None:
                outcome = "error"
                shown = exc.original if isinstance(exc, _TaskExited) else exc
                detail = f"{type(shown).__name__}: {shown}"
                terminal = self._error_event(frame, exc, source="task")
            else:
                outcome = "result"
                terminal = {
                    "type": "task_result",
                    "run_id": run_id,
                    "task_id": frame.get("task_id"),
                    "result": run.result(),
                }
        try:
            answer = await self._encode([started, terminal], codec)
        except Exception as exc:
            # The result (or, rarely, an exception) could not be pickled: the client must
            # still get exactly one terminal event, so report the serialization failure.
            logger.warning("run %s: cannot serialize the answer: %r", run_id, exc)
            error_event = self._error_event(frame, exc, source="worker")
            outcome, detail = "error", f"worker: cannot serialize the answer: {exc!r}"
            answer = await self._encode([started, error_event], codec)
        self._ledger.finished(frame, peer, began, outcome, detail)
        return answer

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
        runs = self._active.get(run_id)
        if runs:
            logger.debug("cancelling run %s", run_id)
            for run in runs:
                run.cancel()
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

    async def _answer_undecodable(
        self, request: bytes, error: ValueError, peer: str, began: float
    ) -> bytes:
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
        return await self._encode([started, self._error_event(frame, error, "worker")], codec)


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
