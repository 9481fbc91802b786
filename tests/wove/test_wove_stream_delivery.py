"""Wove over a server stream (``delivery="stream"`` / ``"auto"``) and nothing run twice.

The executor against our ``WorkerService`` on our ``Server`` in this process (events as they
happen, heartbeats, cancellation by resetting the stream, exactly one terminal event on every
way a call can end), against our worker on a grpcio server and against a stock grpcio worker
without ``Stream`` (``auto`` falls back), and the worker's memory of recent runs (a re-sent
``run_task`` gets the run's events, unary or streamed, and runs nothing).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Dict, Iterator, List, Tuple

import pytest
import wove_tasks
from _support import HelperProcess, grpcio_python, start_helper
from _wove_support import SECRET, Worker, start_worker
from wove.security import NetworkExecutorSecurity

from wove_h2grpc import Channel, GrpcError, H2GrpcExecutor, Server, StatusCode
from wove_h2grpc.worker import WorkerService
from wove_h2grpc.wove.codec import DEFAULT_STREAM_METHOD, decode_events, encode_command

T = 10.0  # bound for anything that should happen promptly
TERMINAL = ("task_result", "task_error", "task_cancelled")
SEND = "/wove.network_executor.WorkerService/Send"


class Served:
    """Our WorkerService on our Server on a loopback port."""

    def __init__(self, service: WorkerService, server: Server, port: int) -> None:
        self.service = service
        self.server = server
        self.port = port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


async def _serve(**options: Any) -> Served:
    options.setdefault("allow_unsigned", True)
    service = WorkerService(**options)
    server = Server()
    service.attach(server)
    return Served(service, server, await server.start("127.0.0.1:0"))


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    s = await _serve(heartbeat_interval=0.2)
    yield s
    await s.server.stop(grace=0)


async def _executor(target: str, **config: Any) -> H2GrpcExecutor:
    executor = H2GrpcExecutor()
    await executor.start(
        environment_name="stream-tests",
        environment_config={"target": target, **config},
        run_config={},
    )
    return executor


def _run(run_id: str, func: Any, args: Dict[str, Any], **delivery: Any) -> Dict[str, Any]:
    return {
        "type": "run_task",
        "run_id": run_id,
        "task_id": getattr(func, "__name__", "task"),
        "callable": func,
        "args": args,
        "delivery": delivery,
    }


async def _events_until_terminal(
    executor: H2GrpcExecutor, timeout: float = T, settle: float = 0.3
) -> List[Tuple[float, Dict[str, Any]]]:
    """(seconds since the call, event) up to the terminal event, and anything that follows
    within ``settle`` seconds (a second terminal event would show there)."""
    began = time.monotonic()
    out: List[Tuple[float, Dict[str, Any]]] = []
    while not any(e["type"] in TERMINAL for _, e in out):
        event = await asyncio.wait_for(executor.recv(), timeout)
        out.append((time.monotonic() - began, event))
    while True:
        try:
            event = await asyncio.wait_for(executor.recv(), settle)
        except asyncio.TimeoutError:
            return out
        out.append((time.monotonic() - began, event))


def _types(events: List[Tuple[float, Dict[str, Any]]]) -> List[str]:
    return [e["type"] for _, e in events]


def _one_terminal(events: List[Tuple[float, Dict[str, Any]]]) -> Dict[str, Any]:
    terminals = [e for _, e in events if e["type"] in TERMINAL]
    assert len(terminals) == 1, _types(events)
    return terminals[0]


# ------------------------------------------------------------------- events as they happen


async def test_stream_hands_wove_each_event_as_it_happens(served: Served) -> None:
    executor = await _executor(served.target, delivery="stream")
    try:
        await executor.send(_run("r-stream", wove_tasks.async_slow, {"seconds": 1.0}))
        events = await _events_until_terminal(executor)
    finally:
        await executor.stop()
    types = _types(events)
    assert types[0] == "task_started" and events[0][0] < 0.5, events[:2]
    assert 3 <= types.count("heartbeat") <= 6, types  # one per 0.2 s while the task runs
    assert _one_terminal(events)["result"] == "slept"
    assert events[-1][0] >= 0.9


async def test_unary_delivers_the_events_when_the_task_has_ended(served: Served) -> None:
    executor = await _executor(served.target)  # delivery="unary", the default
    try:
        assert executor.delivery == "unary"
        await executor.send(_run("r-unary", wove_tasks.async_slow, {"seconds": 0.6}))
        events = await _events_until_terminal(executor)
    finally:
        await executor.stop()
    assert _types(events) == ["task_started", "task_result"]
    assert events[0][0] >= 0.5  # task_started arrives with the result, at the end


async def test_heartbeat_follows_wove_delivery_heartbeat_seconds() -> None:
    """A command asking for delivery_heartbeat_seconds=0.3 gets a heartbeat every 0.1 s,
    although the worker's own interval is 5 s."""
    served = await _serve()  # heartbeat_interval 5.0
    executor = await _executor(served.target, delivery="stream")
    try:
        frame = _run(
            "r-hb", wove_tasks.async_slow, {"seconds": 0.65}, delivery_heartbeat_seconds=0.3
        )
        await executor.send(frame)
        events = await _events_until_terminal(executor)
    finally:
        await executor.stop()
        await served.server.stop(grace=0)
    gaps = [b[0] - a[0] for a, b in zip(events, events[1:])]
    assert _types(events).count("heartbeat") >= 4, _types(events)
    assert max(gaps) < 0.3, gaps


# ------------------------------------------------------------------------- cancellation


async def test_cancel_task_resets_the_stream_and_the_worker_cancels_at_once(
    served: Served,
) -> None:
    executor = await _executor(served.target, delivery="stream")
    try:
        await executor.send(_run("r-cancel", wove_tasks.async_sleepy, {}))
        first = await asyncio.wait_for(executor.recv(), T)
        assert first["type"] == "task_started"
        assert served.service.active_runs() == ("r-cancel",)
        sent = time.monotonic()
        await executor.send({"type": "cancel_task", "run_id": "r-cancel", "task_id": "x"})
        while served.service.active_runs():
            assert time.monotonic() - sent < T
            await asyncio.sleep(0.002)
        reached = time.monotonic() - sent
        events = await _events_until_terminal(executor)
    finally:
        await executor.stop()
    assert reached < 0.1, f"the worker cancelled the run {reached * 1000:.0f} ms after cancel_task"
    assert _one_terminal(events)["type"] == "task_cancelled"
    stats = served.service.stats()
    assert stats.cancelled == 1 and stats.results == 0


async def test_stop_while_streaming_cancels_with_one_terminal_event(served: Served) -> None:
    executor = await _executor(served.target, delivery="stream")
    await executor.send(_run("r-stop", wove_tasks.async_sleepy, {}))
    assert (await asyncio.wait_for(executor.recv(), T))["type"] == "task_started"
    queue = executor._events  # what Wove would still read after stop()
    await asyncio.wait_for(executor.stop(), T)
    assert queue is not None
    rest = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [e["type"] for e in rest if e["type"] in TERMINAL] == ["task_cancelled"]
    for _ in range(100):
        if not served.service.active_runs():
            break
        await asyncio.sleep(0.02)
    assert served.service.active_runs() == ()


# --------------------------------------------- exactly one terminal event when a call fails


async def test_deadline_mid_stream_is_one_task_error(served: Served) -> None:
    executor = await _executor(served.target, delivery="stream", timeout=0.5)
    try:
        await executor.send(_run("r-deadline", wove_tasks.async_sleepy, {}))
        events = await _events_until_terminal(executor)
    finally:
        await executor.stop()
    assert _types(events)[0] == "task_started"
    terminal = _one_terminal(events)
    assert terminal["type"] == "task_error"
    assert terminal["error"]["grpc_status"] == "DEADLINE_EXCEEDED"
    await asyncio.sleep(0.1)
    assert served.service.active_runs() == ()  # the worker cancelled the run too


@pytest.mark.parametrize("grace", [0.0, 0.3], ids=["reset", "goaway-then-reset"])
async def test_server_stopping_mid_stream_is_one_task_error(grace: float) -> None:
    served = await _serve(heartbeat_interval=0.1)
    executor = await _executor(served.target, delivery="stream")
    try:
        await executor.send(_run("r-goaway", wove_tasks.async_sleepy, {}))
        assert (await asyncio.wait_for(executor.recv(), T))["type"] == "task_started"
        await asyncio.wait_for(served.server.stop(grace=grace), T)
        events = await _events_until_terminal(executor)
    finally:
        await executor.stop()
    terminal = _one_terminal(events)
    assert terminal["type"] == "task_error", _types(events)
    assert terminal["error"]["grpc_status"] in ("CANCELLED", "UNAVAILABLE")
    assert terminal["error"]["source"] == "transport"


async def test_worker_killed_mid_stream_is_one_task_error(tmp_path: Any) -> None:
    """Our worker on a grpcio server in its own process, SIGKILLed while the task runs."""
    helper = start_helper(
        "grpcio_worker_host.py",
        ["--allow-unsigned", "--heartbeat-interval", "0.1"],
        python=grpcio_python(),
    )
    executor = await _executor(f"127.0.0.1:{helper.port}", delivery="stream")
    try:
        await executor.send(_run("r-kill", wove_tasks.async_sleepy, {}))
        types = []
        while "heartbeat" not in types:
            types.append((await asyncio.wait_for(executor.recv(), T))["type"])
        helper.proc.kill()
        events = await _events_until_terminal(executor)
    finally:
        await executor.stop()
        helper.stop()
    terminal = _one_terminal(events)
    assert terminal["type"] == "task_error"
    assert terminal["error"]["grpc_status"] == "UNAVAILABLE"


# ------------------------------------------------------------- peers: grpcio server, auto


@pytest.fixture(scope="module")
def grpcio_host() -> Iterator[HelperProcess]:
    helper = start_helper(
        "grpcio_worker_host.py",
        ["--allow-unsigned", "--heartbeat-interval", "0.1"],
        python=grpcio_python(),
    )
    yield helper
    helper.stop()


@pytest.mark.parametrize("delivery", ["stream", "auto"])
async def test_stream_through_grpcio_handler(grpcio_host: HelperProcess, delivery: str) -> None:
    executor = await _executor(f"127.0.0.1:{grpcio_host.port}", delivery=delivery)
    try:
        await executor.send(_run(f"r-grpcio-{delivery}", wove_tasks.async_slow, {"seconds": 0.5}))
        events = await _events_until_terminal(executor)
        assert executor.delivery == delivery  # the worker serves Stream: auto stays streaming
    finally:
        await executor.stop()
    types = _types(events)
    assert types[0] == "task_started" and types.count("heartbeat") >= 3, types
    assert _one_terminal(events)["result"] == "slept"


@pytest.fixture(scope="module")
def stock_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A grpcio worker written for Wove's grpc executor: it serves Send only."""
    worker = start_worker(tmp_path_factory.mktemp("stock"))
    yield worker
    worker.stop()


async def test_auto_falls_back_to_unary_on_a_worker_without_stream(stock_worker: Worker) -> None:
    executor = await _executor(f"127.0.0.1:{stock_worker.port}", delivery="auto")
    try:
        await executor.send(_run("r-auto-1", wove_tasks.double, {"x": 21}))
        first = await _events_until_terminal(executor)
        assert executor.delivery == "unary"  # for the channel's life
        await executor.send(_run("r-auto-2", wove_tasks.double, {"x": 4}))
        second = await _events_until_terminal(executor)
    finally:
        await executor.stop()
    assert _one_terminal(first)["result"] == 42  # the task that found out did not fail
    assert _one_terminal(second)["result"] == 8
    assert stock_worker.ran() == ["r-auto-1", "r-auto-2"]  # each ran once


async def test_stream_against_a_worker_without_stream_fails_the_task(stock_worker: Worker) -> None:
    executor = await _executor(f"127.0.0.1:{stock_worker.port}", delivery="stream")
    try:
        await executor.send(_run("r-nostream", wove_tasks.double, {"x": 1}))
        events = await _events_until_terminal(executor)
    finally:
        await executor.stop()
    terminal = _one_terminal(events)
    assert terminal["type"] == "task_error"
    assert terminal["error"]["grpc_status"] == "UNIMPLEMENTED"
    assert "r-nostream" not in stock_worker.ran()


# ---------------------------------------------------------------------- nothing runs twice


async def _unary(channel: Channel, frame: Dict[str, Any]) -> Tuple[Dict[str, Any], ...]:
    reply = await asyncio.wait_for(channel.unary_unary(SEND)(encode_command(frame)), T)
    return decode_events(reply)


async def _streamed(channel: Channel, frame: Dict[str, Any]) -> List[Dict[str, Any]]:
    call = channel.unary_stream(DEFAULT_STREAM_METHOD)(encode_command(frame), timeout=T)
    out: List[Dict[str, Any]] = []
    async for message in call:
        out.extend(decode_events(message))
    return out


async def test_a_resent_command_joins_the_running_run(served: Served) -> None:
    wove_tasks.RUNS.pop("join", None)
    frame = _run("r-join", wove_tasks.counted, {"key": "join", "seconds": 0.5})
    async with Channel(served.target) as channel:
        first, second, third = await asyncio.gather(
            _unary(channel, frame), _unary(channel, frame), _streamed(channel, frame)
        )
    assert wove_tasks.RUNS["join"] == 1
    for events in (first, second, third):
        types = [e["type"] for e in events]
        assert types[0] == "task_started" and types[-1] == "task_result", types
        assert events[-1]["result"] == "join"
    assert served.service.stats().duplicates == 2
    assert served.service.stats().runs == 1


async def test_a_resent_command_after_the_run_gets_its_events(served: Served) -> None:
    wove_tasks.RUNS.pop("replay", None)
    frame = _run("r-replay", wove_tasks.counted, {"key": "replay"})
    async with Channel(served.target) as channel:
        first = await _unary(channel, frame)
        again = await _unary(channel, frame)
        streamed = await _streamed(channel, frame)
    assert wove_tasks.RUNS["replay"] == 1
    assert (
        [e["type"] for e in first] == [e["type"] for e in again] == ["task_started", "task_result"]
    )
    assert [e["type"] for e in streamed] == ["task_started", "task_result"]


async def test_recent_runs_are_bounded_by_count_and_age() -> None:
    served = await _serve(recent_runs=1, recent_run_seconds=0.2)
    wove_tasks.RUNS.clear()
    try:
        async with Channel(served.target) as channel:
            a = _run("r-a", wove_tasks.counted, {"key": "a"})
            b = _run("r-b", wove_tasks.counted, {"key": "b"})
            await _unary(channel, a)
            await _unary(channel, b)  # a is now beyond the count: forgotten
            await _unary(channel, a)
            assert wove_tasks.RUNS == {"a": 2, "b": 1}
            await _unary(channel, a)  # remembered (the newest)
            assert wove_tasks.RUNS["a"] == 2
            await asyncio.sleep(0.3)  # older than recent_run_seconds: forgotten
            await _unary(channel, a)
            assert wove_tasks.RUNS["a"] == 3
    finally:
        await served.server.stop(grace=0)


def test_worker_options_are_checked() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        WorkerService(allow_unsigned=True, heartbeat_interval=0)
    with pytest.raises(TypeError, match="recent_runs"):
        WorkerService(allow_unsigned=True, recent_runs=1.5)
    with pytest.raises(ValueError, match="stream_method"):
        WorkerService(allow_unsigned=True, stream_method="nope")
    service = WorkerService(allow_unsigned=True, method="/my.Svc/Run")
    assert service.stream_method == "/my.Svc/Stream"


# ------------------------------------------------------------------------------ security


async def test_stream_requests_are_verified_before_anything_is_unpickled() -> None:
    security = NetworkExecutorSecurity(mode="signed", secret=SECRET)
    served = await _serve(security=security, allow_unsigned=False)
    body = encode_command(_run("r-signed", wove_tasks.double, {"x": 5}))
    garbage = b'{"type":"run_task","run_id":"x","callable_pickle":"bm90IGEgcGlja2xl"}'
    try:
        async with Channel(served.target) as channel:
            stream = channel.unary_stream(DEFAULT_STREAM_METHOD)

            async def read(request: bytes, metadata: Any) -> List[Dict[str, Any]]:
                out: List[Dict[str, Any]] = []
                async for message in stream(request, metadata=metadata, timeout=T):
                    out.extend(decode_events(message))
                return out

            def signed(request: bytes, method: str) -> Any:
                return security.metadata_for(transport="grpc", target=method, body=request)

            # Signed for Send, sent to Stream: the signature covers the method path.
            with pytest.raises(GrpcError) as info:
                await read(body, signed(body, SEND))
            assert info.value.code() is StatusCode.UNAUTHENTICATED
            # Unsigned garbage: refused before its pickle is looked at.
            with pytest.raises(GrpcError) as info:
                await read(garbage, None)
            assert info.value.code() is StatusCode.UNAUTHENTICATED
            events = await read(body, signed(body, DEFAULT_STREAM_METHOD))
            assert events[-1]["result"] == 10
        assert served.service.stats().refused == 2
    finally:
        await served.server.stop(grace=0)
