"""A Wove grpc worker service on grpcio (grpc.aio), written independently of wove_h2grpc.

Used by the end-to-end tests as "any worker written for Wove's grpc executor": it verifies
the signed metadata with ``NetworkExecutorSecurity.verify_metadata`` over the raw request
bytes BEFORE unpickling anything, runs the task (sync in a thread, async on the loop),
and answers ``{"events": [task_started, <terminal>]}`` in the request's codec (JSON with
Wove's own frame helpers; msgpack with raw pickles). Every executed task appends its
``run_id`` to ``--executions FILE`` so a test can prove that nothing ran.

Prints ``READY <port>`` when serving. Never imported by the pytest process.

    python tests/wove_grpcio_worker.py [--bind 127.0.0.1] [--port 0] [--secret-env VAR]
        [--tls-cert F --tls-key F [--client-ca F]] [--executions FILE]
        [--max-pending N (0 = grpcio's default)] [--method /pkg.Svc/M]
        [--respond MODE (see RESPOND_MODES; metadata ``x-test-respond`` overrides per call)]

``--executions`` lines: ``run <run_id>`` when a task starts executing, ``cancel <run_id>``
when a ``cancel_task`` call arrives, ``cancelled <run_id>`` when a running
task was cancelled (by ``cancel_task`` or because the client reset the call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import traceback
from typing import Any, Dict, List, Optional, Tuple

import cloudpickle
import grpc
import msgpack
from wove.environment import (
    _deserialize_network_executor_frame,
    _serialize_network_executor_frame,
    normalize_exception,
)
from wove.security import NetworkExecutorSecurity

REASON = "test grpcio worker"
PICKLED = (
    ("callable", "callable_pickle"),
    ("args", "args_pickle"),
    ("result", "result_pickle"),
    ("exception", "exception_pickle"),
    ("error", "error_pickle"),
)


def decode(data: bytes) -> Tuple[str, Dict[str, Any]]:
    """Parse (only after verification): JSON by Wove's helpers, msgpack by hand."""
    if (data[:1] and 0x80 <= data[0] <= 0x8F) or data[:1] in (b"\xde", b"\xdf"):
        payload = msgpack.unpackb(data, raw=False)
        frame = dict(payload)
        for key, field in PICKLED:
            if field in frame:
                frame[key] = cloudpickle.loads(frame.pop(field))
        return "msgpack", frame
    payload = json.loads(data.decode("utf-8"))
    return "json", _deserialize_network_executor_frame(payload, reason=REASON)


def encode(events: List[Dict[str, Any]], codec: str) -> bytes:
    if codec == "msgpack":
        out = []
        for event in events:
            payload = dict(event)
            for key, field in PICKLED:
                if key in payload:
                    payload[field] = cloudpickle.dumps(payload.pop(key))
            out.append(payload)
        return msgpack.packb({"events": out}, use_bin_type=True)
    body = {"events": [_serialize_network_executor_frame(e, reason=REASON) for e in events]}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


# --respond modes: how run_task is answered (tests of the executor's response handling).
RESPOND_MODES = (
    "events",  # {"events": [task_started, terminal]} (default)
    "list",  # [task_started, terminal]
    "single",  # terminal (one event object)
    "empty",  # b""
    "garbage",  # bytes that are neither JSON nor msgpack
    "text",  # UTF-8 text that is not JSON
    "notdict",  # [1, 2]
    "noterminal",  # {"events": [task_started]}
    "twice",  # {"events": [task_started, terminal, task_cancelled]}
    "echo",  # task_result whose result is {"metadata": [...], "body": request bytes}
)


def encode_shape(events: List[Dict[str, Any]], codec: str, shape: str) -> bytes:
    """The other two response shapes Wove accepts: a bare list, or one event object."""
    body = encode(events, codec)
    value = msgpack.unpackb(body, raw=False) if codec == "msgpack" else json.loads(body)
    value = value["events"] if shape == "list" else value["events"][0]
    if codec == "msgpack":
        return msgpack.packb(value, use_bin_type=True)
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


class Worker:
    def __init__(
        self,
        security: NetworkExecutorSecurity,
        method: str,
        executions: Optional[str],
        respond: str = "events",
    ):
        self.security = security
        self.method = method
        self.executions = executions
        self.respond = respond
        self.lock = threading.Lock()
        self.running: Dict[str, asyncio.Task[Any]] = {}
        self.cancel_requested: set = set()

    def record(self, what: str, run_id: str) -> None:
        """Append ``run <run_id>`` (a task started executing) or ``cancel <run_id>``."""
        if self.executions:
            with self.lock, open(self.executions, "a", encoding="utf-8") as fh:
                fh.write(f"{what} {run_id}\n")

    async def handle(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            self.security.verify_metadata(
                metadata=context.invocation_metadata() or (),
                transport="grpc",
                target=self.method,
                body=request,
            )
        except PermissionError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        try:
            codec, frame = decode(request)
        except Exception as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad frame: {exc}")
        ids = {"run_id": frame.get("run_id"), "task_id": frame.get("task_id")}
        kind = frame.get("type")
        if kind == "cancel_task":
            self.record("cancel", str(frame.get("run_id")))
            task = self.running.get(str(frame.get("run_id")))
            if task is not None:
                self.cancel_requested.add(str(frame.get("run_id")))
                task.cancel()
            return b""
        if kind != "run_task":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported frame {kind!r}")
        run_id = str(frame["run_id"])
        started = {"type": "task_started", **ids}
        mode = self.respond
        for key, value in context.invocation_metadata() or ():
            if key == "x-test-respond" and value in RESPOND_MODES:
                mode = value  # per-call override, so one worker process serves every mode
        if mode == "echo":
            echo = {
                "metadata": [(k, v) for k, v in (context.invocation_metadata() or ())],
                "body": request,
            }
            return encode([started, {"type": "task_result", **ids, "result": echo}], codec)
        if mode == "empty":
            return b""
        if mode == "garbage":
            return b"\xff\x00\x13 not a frame"
        if mode == "text":
            return b"Internal Server Error"
        if mode == "notdict":
            return b"[1,2]"
        task = asyncio.ensure_future(self.execute(frame))
        self.running[run_id] = task
        try:
            terminal = await task
        except asyncio.CancelledError:
            # Our own cancel_task cancelled the task before it ran: answer task_cancelled.
            # Otherwise the call itself was cancelled (client reset): let grpcio end it.
            if run_id in self.cancel_requested and task.cancelled():
                terminal = {"type": "task_cancelled", **ids}
            else:
                raise
        finally:
            self.running.pop(run_id, None)
            self.cancel_requested.discard(run_id)
        if mode == "list":
            return encode_shape([started, terminal], codec, "list")
        if mode == "single":
            return encode_shape([terminal], codec, "single")
        if mode == "noterminal":
            return encode([started], codec)
        if mode == "twice":
            return encode([started, terminal, {"type": "task_cancelled", **ids}], codec)
        return encode([started, terminal], codec)

    async def execute(self, frame: Dict[str, Any]) -> Dict[str, Any]:
        ids = {"run_id": frame.get("run_id"), "task_id": frame.get("task_id")}
        func = frame["callable"]
        args = frame.get("args") or {}
        self.record("run", str(frame["run_id"]))
        try:
            if asyncio.iscoroutinefunction(func):
                result = await func(**args)
            else:
                result = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: func(**args)
                )
                if asyncio.iscoroutine(result):
                    result = await result
        except asyncio.CancelledError:
            self.record("cancelled", str(frame["run_id"]))
            return {"type": "task_cancelled", **ids}
        except Exception as exc:
            return {
                "type": "task_error",
                **ids,
                "exception": exc,
                "error": normalize_exception(exc, source="task"),
            }
        return {"type": "task_result", **ids, "result": result}


async def serve(args: argparse.Namespace) -> None:
    if args.secret_env:
        security = NetworkExecutorSecurity.from_config(f"env:{args.secret_env}")
    else:
        security = NetworkExecutorSecurity()
    worker = Worker(security, args.method, args.executions, args.respond)
    options: List[Tuple[str, Any]] = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if args.max_pending > 0:
        options.append(("grpc.server.max_pending_requests", args.max_pending))
    server = grpc.aio.server(options=options)
    service, method = args.method.rsplit("/", 1)
    handler = grpc.method_handlers_generic_handler(
        service.lstrip("/"),
        {
            method: grpc.unary_unary_rpc_method_handler(
                worker.handle,
                request_deserializer=None,
                response_serializer=None,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    address = f"{args.bind}:{args.port}"
    if args.tls_cert:
        with open(args.tls_cert, "rb") as fh:
            chain = fh.read()
        with open(args.tls_key, "rb") as fh:
            key = fh.read()
        client_ca = None
        if args.client_ca:
            with open(args.client_ca, "rb") as fh:
                client_ca = fh.read()
        creds = grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    await server.start()
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--method", default="/wove.network_executor.WorkerService/Send")
    parser.add_argument("--secret-env", default="")
    parser.add_argument("--tls-cert", default="")
    parser.add_argument("--tls-key", default="")
    parser.add_argument("--client-ca", default="")
    parser.add_argument("--executions", default="")
    parser.add_argument("--max-pending", type=int, default=100_000)
    parser.add_argument("--respond", choices=RESPOND_MODES, default="events")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args))
    except Exception:
        traceback.print_exc()
        os._exit(1)


if __name__ == "__main__":
    main()
