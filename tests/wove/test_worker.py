"""WorkerService.handle(): verification before unpickling, running, cancelling, codecs."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from typing import Any, Dict, List, Tuple

import pytest
from wove.environment import EnvironmentExecutionError
from wove.security import NetworkExecutorSecurity

from wove_h2grpc.protocol.status import StatusCode
from wove_h2grpc.wove.codec import decode_events, encode_command, load_raw
from wove_h2grpc.wove.worker import (
    DEFAULT_METHOD,
    InvalidRequestError,
    WorkerPermissionError,
    WorkerService,
)

SECRET = "s3cret-for-tests"

# Every unpickling of a _Tripwire appends here: proof that a request was (not) unpickled.
UNPICKLED: List[str] = []
# Every call of _record_call appends here: proof that a task did (not) run.
CALLS: List[Any] = []


def _tripwire_loaded(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class _Tripwire:
    """Pickles to a call of _tripwire_loaded: unpickling it leaves a trace in UNPICKLED."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:
        return (_tripwire_loaded, (self.tag,))


def _record_call(**kwargs: Any) -> str:
    CALLS.append(kwargs)
    return "ran"


def _square(x: int) -> int:
    return x * x


async def _async_square(x: int) -> int:
    await asyncio.sleep(0)
    return x * x


def _thread_name() -> str:
    return threading.current_thread().name


async def _loop_thread_name() -> str:
    return threading.current_thread().name


class TaskFailed(Exception):
    pass


def _boom(message: str) -> None:
    raise TaskFailed(message)


class NeedsTwoArgs(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def _boom_unpicklable() -> None:
    raise NeedsTwoArgs("x", "y")


def _returns_socket() -> Any:
    # A socket refuses to pickle on every interpreter (a lock or a generator pickles on
    # PyPy and only fails to unpickle).
    sock = socket.socket()
    sock.close()
    return sock


async def _sleep_forever() -> str:
    await asyncio.sleep(3600)
    return "never"


async def _watched_sleep() -> None:
    try:
        await asyncio.sleep(3600)
    finally:
        CALLS.append("cleaned up")


def _sync_sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def _run_frame(func: Any, args: Dict[str, Any], run_id: str = "r1") -> Dict[str, Any]:
    return {
        "type": "run_task",
        "run_id": run_id,
        "task_id": "t",
        "callable": func,
        "args": args,
        "delivery": {},
    }


def _signed(security: NetworkExecutorSecurity, body: bytes) -> Tuple[Tuple[str, str], ...]:
    return security.metadata_for(transport="grpc", target=DEFAULT_METHOD, body=body)


def _signed_security(secret: str = SECRET) -> NetworkExecutorSecurity:
    return NetworkExecutorSecurity(mode="signed", secret=secret)


async def _call(
    service: WorkerService, frame: Dict[str, Any], codec: str = "json", secret: str = SECRET
) -> Tuple[Dict[str, Any], ...]:
    body = encode_command(frame, codec)
    reply = await asyncio.wait_for(
        service.handle(body, _signed(_signed_security(secret), body)), 10
    )
    return decode_events(reply)


@pytest.fixture(autouse=True)
def _clear_traces() -> None:
    UNPICKLED.clear()
    CALLS.clear()


async def test_signed_request_runs_and_answers_started_then_result() -> None:
    service = WorkerService(_signed_security())
    events = await _call(service, _run_frame(_square, {"x": 7}))
    assert [e["type"] for e in events] == ["task_started", "task_result"]
    assert events[1]["result"] == 49
    assert events[0]["run_id"] == events[1]["run_id"] == "r1"
    assert events[1]["task_id"] == "t"


async def test_security_from_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WOVE_TEST_WORKER_SECRET", SECRET)
    service = WorkerService("env:WOVE_TEST_WORKER_SECRET")
    assert service.security_mode == "signed"
    events = await _call(service, _run_frame(_square, {"x": 3}))
    assert events[-1]["result"] == 9


async def test_wrong_secret_is_refused_before_anything_is_unpickled() -> None:
    service = WorkerService(_signed_security())
    frame = _run_frame(_record_call, {"marker": _Tripwire("args")})
    frame["callable"] = _Tripwire("callable")
    body = encode_command(frame)
    with pytest.raises(WorkerPermissionError) as info:
        await service.handle(body, _signed(_signed_security("wrong secret"), body))
    assert info.value.code == StatusCode.UNAUTHENTICATED
    assert isinstance(info.value, PermissionError)
    assert UNPICKLED == [] and CALLS == []

    # Unsigned and tampered requests are refused the same way, still unpickling nothing.
    with pytest.raises(WorkerPermissionError):
        await service.handle(body, ())
    good = _signed(_signed_security(), body)
    with pytest.raises(WorkerPermissionError):
        await service.handle(body + b" ", good)
    assert UNPICKLED == [] and CALLS == []

    # Control: the same bytes, correctly signed, are unpickled (both tripwires fire).
    events = decode_events(await service.handle(body, good))
    assert sorted(UNPICKLED) == ["args", "callable"]
    assert events[-1]["type"] == "task_error"  # "callable" unpickled to a str, not callable


async def test_replayed_signature_is_refused() -> None:
    service = WorkerService(_signed_security())
    body = encode_command(_run_frame(_record_call, {}))
    metadata = _signed(_signed_security(), body)
    await service.handle(body, metadata)
    with pytest.raises(WorkerPermissionError, match="Replayed"):
        await service.handle(body, metadata)
    assert len(CALLS) == 1


async def test_bearer_token() -> None:
    service = WorkerService({"type": "bearer", "token": "tok"})
    body = encode_command(_run_frame(_square, {"x": 4}))
    events = decode_events(await service.handle(body, [("authorization", "Bearer tok")]))
    assert events[-1]["result"] == 16
    with pytest.raises(WorkerPermissionError):
        await service.handle(body, [("authorization", "Bearer nope")])
    # A mapping works too, and -bin (bytes) metadata takes no part in verification.
    metadata = {"authorization": "Bearer tok", "x-trace-bin": b"\x00\xff"}
    assert decode_events(await service.handle(body, metadata))[-1]["result"] == 16


async def test_unsigned_requests_need_allow_unsigned() -> None:
    body = encode_command(_run_frame(_record_call, {"marker": _Tripwire("args")}))
    refusing = WorkerService()
    with pytest.raises(WorkerPermissionError) as info:
        await refusing.handle(body, ())
    assert info.value.code == StatusCode.PERMISSION_DENIED
    assert UNPICKLED == [] and CALLS == []

    open_service = WorkerService(allow_unsigned=True)
    events = decode_events(await open_service.handle(body, ()))
    assert events[-1]["result"] == "ran"
    assert UNPICKLED == ["args"]


def test_allow_unsigned_with_security_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="allow_unsigned"):
        WorkerService(_signed_security(), allow_unsigned=True)
    with pytest.raises(ValueError, match="method"):
        WorkerService(_signed_security(), method="no-slash")


async def test_sync_callable_runs_in_a_thread_async_on_the_loop() -> None:
    service = WorkerService(_signed_security())
    loop_thread = threading.current_thread().name
    sync_events = await _call(service, _run_frame(_thread_name, {}))
    assert sync_events[-1]["result"] != loop_thread
    async_events = await _call(service, _run_frame(_loop_thread_name, {}, run_id="r2"))
    assert async_events[-1]["result"] == loop_thread
    async_square = await _call(service, _run_frame(_async_square, {"x": 5}, run_id="r3"))
    assert async_square[-1]["result"] == 25


async def test_sync_task_does_not_block_the_loop() -> None:
    service = WorkerService(_signed_security())
    slow = asyncio.ensure_future(_call(service, _run_frame(_sync_sleep, {"seconds": 2.0})))
    started = time.monotonic()
    fast = await _call(service, _run_frame(_square, {"x": 2}, run_id="r2"))
    assert time.monotonic() - started < 1.5
    assert fast[-1]["result"] == 4
    assert (await asyncio.wait_for(slow, 10))[-1]["result"] == "slept"


async def test_raising_task_answers_a_normalized_task_error() -> None:
    service = WorkerService(_signed_security())
    events = await _call(service, _run_frame(_boom, {"message": "it broke"}))
    assert [e["type"] for e in events] == ["task_started", "task_error"]
    error = events[1]["error"]
    assert error["kind"] == "TaskFailed"
    assert error["message"] == "it broke"
    assert error["retryable"] is False
    assert error["source"] == "task"
    assert "TaskFailed: it broke" in error["traceback"]
    assert "_boom" in error["traceback"]
    exc = events[1]["exception"]
    assert isinstance(exc, TaskFailed) and str(exc) == "it broke"


async def test_exception_that_cannot_round_trip_is_sent_as_payload_only() -> None:
    service = WorkerService(_signed_security())
    events = await _call(service, _run_frame(_boom_unpicklable, {}))
    assert events[1]["type"] == "task_error"
    assert "exception" not in events[1]
    assert events[1]["error"]["kind"] == "NeedsTwoArgs"
    # Wove turns such a frame into EnvironmentExecutionError carrying the payload.
    assert EnvironmentExecutionError(events[1]["error"]).payload["message"] == "x/y"


async def test_unpicklable_result_still_ends_in_one_terminal_event() -> None:
    service = WorkerService(_signed_security())
    events = await _call(service, _run_frame(_returns_socket, {}))
    assert [e["type"] for e in events] == ["task_started", "task_error"]
    assert events[1]["error"]["source"] == "worker"


async def test_missing_module_in_pickle_answers_task_error_for_that_run() -> None:
    service = WorkerService(_signed_security())
    body = encode_command(_run_frame(_square, {"x": 1}))
    _codec, raw = load_raw(body)
    # A pickle that imports a module the worker does not have.
    raw["callable_pickle"] = base64.b64encode(b"cno_such_module_xyz\nfunc\n.").decode("ascii")
    body = json.dumps(raw, separators=(",", ":")).encode()
    events = decode_events(await service.handle(body, _signed(_signed_security(), body)))
    assert [e["type"] for e in events] == ["task_started", "task_error"]
    assert events[1]["run_id"] == "r1"
    assert events[1]["error"]["source"] == "worker"
    assert "no_such_module_xyz" in events[1]["error"]["message"]


async def test_garbage_after_verification_is_invalid_request() -> None:
    service = WorkerService(_signed_security())
    body = b"\x00 not a frame"
    with pytest.raises(InvalidRequestError):
        await service.handle(body, _signed(_signed_security(), body))
    body = encode_command({"type": "mystery"})
    with pytest.raises(InvalidRequestError, match="mystery"):
        await service.handle(body, _signed(_signed_security(), body))


async def test_cancel_task_cancels_the_running_task() -> None:
    service = WorkerService(_signed_security())
    run = asyncio.ensure_future(_call(service, _run_frame(_sleep_forever, {}, run_id="slow")))
    for _ in range(200):
        if "slow" in service.active_runs():
            break
        await asyncio.sleep(0.01)
    assert service.active_runs() == ("slow",)
    started = time.monotonic()
    cancel_reply = await _call(service, {"type": "cancel_task", "run_id": "slow", "task_id": "t"})
    assert cancel_reply == ()
    events = await asyncio.wait_for(run, 5)
    assert time.monotonic() - started < 2
    assert [e["type"] for e in events] == ["task_started", "task_cancelled"]
    assert events[1]["run_id"] == "slow"
    assert service.active_runs() == ()


async def test_cancel_of_a_sync_task_answers_at_once() -> None:
    service = WorkerService(_signed_security())
    run = asyncio.ensure_future(_call(service, _run_frame(_sync_sleep, {"seconds": 2.0})))
    for _ in range(200):
        if service.active_runs():
            break
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await _call(service, {"type": "cancel_task", "run_id": "r1", "task_id": "t"})
    events = await asyncio.wait_for(run, 5)
    assert time.monotonic() - started < 1.5  # the thread sleeps on for up to 2 s
    assert events[-1]["type"] == "task_cancelled"


async def test_cancel_before_the_run_arrives_cancels_the_run() -> None:
    service = WorkerService(_signed_security())
    assert await _call(service, {"type": "cancel_task", "run_id": "early"}) == ()
    events = await _call(service, _run_frame(_record_call, {}, run_id="early"))
    assert [e["type"] for e in events] == ["task_started", "task_cancelled"]
    assert CALLS == []


async def test_cancelling_the_call_cancels_the_task() -> None:
    service = WorkerService(_signed_security())
    body = encode_command(_run_frame(_watched_sleep, {}))
    call = asyncio.ensure_future(service.handle(body, _signed(_signed_security(), body)))
    for _ in range(200):
        if service.active_runs():
            break
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, 5)
    for _ in range(100):
        if CALLS:
            break
        await asyncio.sleep(0.01)
    assert CALLS == ["cleaned up"]
    assert service.active_runs() == ()


async def test_msgpack_request_is_answered_in_msgpack() -> None:
    service = WorkerService(_signed_security())
    body = encode_command(_run_frame(_square, {"x": 9}), "msgpack")
    reply = await service.handle(body, _signed(_signed_security(), body))
    codec, raw = load_raw(reply)
    assert codec == "msgpack"
    assert isinstance(raw["events"][1]["result_pickle"], bytes)
    assert decode_events(reply)[-1]["result"] == 81
    cancel = encode_command({"type": "cancel_task", "run_id": "x"}, "msgpack")
    assert load_raw(await service.handle(cancel, _signed(_signed_security(), cancel)))[0] == (
        "msgpack"
    )


async def test_json_answer_is_what_wove_parses() -> None:
    from wove.environment import _load_network_executor_events

    service = WorkerService(_signed_security())
    body = encode_command(_run_frame(_boom, {"message": "m"}))
    reply = await service.handle(body, _signed(_signed_security(), body))
    events = _load_network_executor_events(reply, reason="test")
    assert [e["type"] for e in events] == ["task_started", "task_error"]
    assert isinstance(events[1]["exception"], TaskFailed)


def test_replay_rule_matches_wove_without_mutating_the_callers_security() -> None:
    from wove_h2grpc.wove.credentials import _NonceRegistry

    security = _signed_security()
    service = WorkerService(security)
    assert security.remember_nonces is True  # the caller's object is left alone

    registry = _NonceRegistry(window=300.0)
    now = time.time()
    assert registry.check_and_remember("n1", now)
    assert not registry.check_and_remember("n1", now)  # replay inside the window
    assert registry.check_and_remember("n2", now - 10)
    # Entries older than the window are forgotten, like Wove's _check_nonce purge.
    old = _NonceRegistry(window=1.0)
    assert old.check_and_remember("stale", now - 5)
    assert old.check_and_remember("fresh", now)
    assert "stale" not in old._seen and "fresh" in old._seen
    assert service.security_mode == "signed"


async def test_many_signed_requests_verify_in_linear_time() -> None:
    service = WorkerService(_signed_security())
    body = encode_command({"type": "cancel_task", "run_id": "none"})
    signer = _signed_security()
    metadata = [_signed(signer, body) for _ in range(5000)]
    started = time.perf_counter()
    for pairs in metadata:
        service.verify(body, pairs)
    elapsed = time.perf_counter() - started
    # Wove's own replay check scans every remembered nonce per request: ~12.5M steps here.
    assert elapsed < 5.0, elapsed
    with pytest.raises(WorkerPermissionError, match="Replayed"):
        service.verify(body, metadata[1234])


def _exits() -> None:
    raise SystemExit(3)


async def _exits_async() -> None:
    raise SystemExit("bye")


async def test_sys_exit_in_a_task_fails_the_task_not_the_worker() -> None:
    service = WorkerService(_signed_security())
    for run_id, func in (("exit-sync", _exits), ("exit-async", _exits_async)):
        events = await _call(service, _run_frame(func, {}, run_id=run_id))
        assert [e["type"] for e in events] == ["task_started", "task_error"]
        assert events[1]["error"]["kind"] == "SystemExit"
        assert events[1]["error"]["source"] == "task"
        assert "exception" not in events[1]  # never re-raised in the caller's process
    assert (await _call(service, _run_frame(_square, {"x": 6}, run_id="after")))[-1]["result"] == 36


# -- attached to our Server, called through our Channel (in-process, loopback) -----------


async def _serve(service: WorkerService) -> Tuple[Any, int]:
    from wove_h2grpc import Server

    server = Server()
    service.attach(server)
    port = await server.start("127.0.0.1:0")
    return server, port


async def test_attached_service_maps_refusals_to_grpc_statuses() -> None:
    from wove_h2grpc import Channel, GrpcError

    signed = WorkerService(_signed_security())
    closed = WorkerService()  # no security, unsigned not allowed
    server, port = await _serve(signed)
    closed_server, closed_port = await _serve(closed)
    body = encode_command(_run_frame(_square, {"x": 11}))
    try:
        async with Channel(f"127.0.0.1:{port}", timeout=10) as channel:
            rpc = channel.unary_unary(DEFAULT_METHOD)
            reply = await rpc(body, metadata=_signed(_signed_security(), body))
            assert decode_events(reply)[-1]["result"] == 121
            with pytest.raises(GrpcError) as info:
                await rpc(body, metadata=_signed(_signed_security("wrong"), body))
            assert info.value.code() == StatusCode.UNAUTHENTICATED
            assert info.value.details() == "Invalid Wove network executor signature."
            garbage = b"\x07garbage"
            with pytest.raises(GrpcError) as info:
                await rpc(garbage, metadata=_signed(_signed_security(), garbage))
            assert info.value.code() == StatusCode.INVALID_ARGUMENT
        async with Channel(f"127.0.0.1:{closed_port}", timeout=10) as channel:
            with pytest.raises(GrpcError) as info:
                await channel.unary_unary(DEFAULT_METHOD)(body)
            assert info.value.code() == StatusCode.PERMISSION_DENIED
    finally:
        await server.stop(grace=1.0)
        await closed_server.stop(grace=1.0)
    assert CALLS == []


async def test_deadline_cancels_the_running_task() -> None:
    from wove_h2grpc import Channel, GrpcError

    service = WorkerService(_signed_security())
    server, port = await _serve(service)
    body = encode_command(_run_frame(_watched_sleep, {}, run_id="deadline"))
    try:
        async with Channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(GrpcError) as info:
                await asyncio.wait_for(
                    channel.unary_unary(DEFAULT_METHOD)(
                        body, metadata=_signed(_signed_security(), body), timeout=0.3
                    ),
                    10,
                )
            assert info.value.code() == StatusCode.DEADLINE_EXCEEDED
        for _ in range(200):
            if CALLS:
                break
            await asyncio.sleep(0.01)
        assert CALLS == ["cleaned up"]
        assert service.active_runs() == ()
    finally:
        await server.stop(grace=1.0)
