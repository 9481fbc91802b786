"""WorkerService progress: one INFO line per finished run, counts for summaries."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, List, Tuple

import pytest
from wove.security import NetworkExecutorSecurity

from wove_h2grpc import Channel, GrpcError, Server, StatusCode
from wove_h2grpc.wove.codec import decode_events, encode_command
from wove_h2grpc.wove.worker import DEFAULT_METHOD, WorkerPermissionError, WorkerService

SECRET = "worker-log-secret"
LOGGER = "wove_h2grpc.wove.worker"


def _square(x: int) -> int:
    return x * x


def _fails() -> None:
    raise KeyError("no such thing")


async def _sleeps() -> None:
    await asyncio.sleep(3600)


def _frame(func: Any, args: Dict[str, Any], run_id: str, task_id: str = "t") -> Dict[str, Any]:
    return {
        "type": "run_task",
        "run_id": run_id,
        "task_id": task_id,
        "callable": func,
        "args": args,
    }


def _metadata(body: bytes, secret: str = SECRET) -> Tuple[Tuple[str, str], ...]:
    security = NetworkExecutorSecurity(mode="signed", secret=secret)
    return security.metadata_for(transport="grpc", target=DEFAULT_METHOD, body=body)


async def _handle(
    service: WorkerService, frame: Dict[str, Any], peer: str = "ipv4:1.2.3.4:5"
) -> Any:
    body = encode_command(frame)
    return decode_events(
        await asyncio.wait_for(service.handle(body, _metadata(body), peer=peer), 10)
    )


def _runs(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and hasattr(r, "run_id")]


async def test_each_finished_run_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    service = WorkerService({"type": "signed", "secret": SECRET})
    await _handle(service, _frame(_square, {"x": 4}, "square:1", "square"))
    await _handle(service, _frame(_fails, {}, "fails:1", "fails"), peer="ipv6:[::1]:7")
    (ok, failed) = _runs(caplog)
    assert ok.levelno == logging.INFO
    assert (ok.run_id, ok.task, ok.peer, ok.outcome) == (  # type: ignore[attr-defined]
        "square:1",
        "square",
        "ipv4:1.2.3.4:5",
        "result",
    )
    assert isinstance(ok.duration_ms, float) and ok.duration_ms >= 0  # type: ignore[attr-defined]
    message = ok.getMessage()
    assert message.startswith("run square:1 task square from ipv4:1.2.3.4:5: result in ")
    assert message.endswith(" ms")
    assert failed.outcome == "error"  # type: ignore[attr-defined]
    assert failed.error == "KeyError: 'no such thing'"  # type: ignore[attr-defined]
    assert "run fails:1 task fails from ipv6:[::1]:7: error (KeyError: 'no such thing') in" in (
        failed.getMessage()
    )


async def test_cancelled_runs_are_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    service = WorkerService({"type": "signed", "secret": SECRET})
    run = asyncio.ensure_future(_handle(service, _frame(_sleeps, {}, "slow:1", "slow")))
    for _ in range(500):
        if service.active_runs():
            break
        await asyncio.sleep(0.01)
    assert service.stats().running == 1
    await _handle(service, {"type": "cancel_task", "run_id": "slow:1"})
    assert (await asyncio.wait_for(run, 10))[-1]["type"] == "task_cancelled"
    # A cancel that overtakes its run: the run is answered cancelled without running.
    await _handle(service, {"type": "cancel_task", "run_id": "early:1"})
    await _handle(service, _frame(_square, {"x": 1}, "early:1"))
    outcomes = [(r.run_id, r.outcome) for r in _runs(caplog)]  # type: ignore[attr-defined]
    assert outcomes == [("slow:1", "cancelled"), ("early:1", "cancelled")]
    assert "cancelled (by cancel_task)" in _runs(caplog)[0].getMessage()
    assert "cancelled (cancel_task arrived before the run)" in _runs(caplog)[1].getMessage()
    stats = service.stats()
    assert (stats.runs, stats.cancelled, stats.running) == (2, 2, 0)


async def test_stats_count_outcomes_and_refusals() -> None:
    service = WorkerService({"type": "signed", "secret": SECRET})
    before = service.stats()
    assert (before.runs, before.refused, before.running, before.run_seconds) == (0, 0, 0, 0.0)
    for i in range(3):
        await _handle(service, _frame(_square, {"x": i}, f"ok:{i}"))
    await _handle(service, _frame(_fails, {}, "bad:1"))
    body = encode_command(_frame(_square, {"x": 2}, "forged:1"))
    with pytest.raises(WorkerPermissionError):
        await service.handle(body, _metadata(body, secret="wrong"))
    middle = service.stats()
    assert (middle.runs, middle.results, middle.errors, middle.cancelled) == (4, 3, 1, 0)
    assert middle.refused == 1 and middle.run_seconds > 0
    await _handle(service, _frame(_square, {"x": 5}, "ok:9"))
    recent = service.stats().since(middle)
    assert (recent.runs, recent.results, recent.errors, recent.refused) == (1, 1, 0, 0)


async def test_logging_off_still_counts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    service = WorkerService({"type": "signed", "secret": SECRET})
    await _handle(service, _frame(_square, {"x": 3}, "quiet:1"))
    assert _runs(caplog) == []
    assert service.stats().results == 1


async def test_attached_service_logs_the_callers_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    service = WorkerService({"type": "signed", "secret": SECRET})
    server = Server()
    service.attach(server)
    port = await server.start("127.0.0.1:0")
    body = encode_command(_frame(_square, {"x": 6}, "peer:1", "square"))
    try:
        async with Channel(f"127.0.0.1:{port}", timeout=10) as channel:
            rpc = channel.unary_unary(DEFAULT_METHOD)
            assert decode_events(await rpc(body, metadata=_metadata(body)))[-1]["result"] == 36
            with pytest.raises(GrpcError) as info:
                await rpc(body, metadata=_metadata(body, secret="wrong"))
            assert info.value.code() == StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(grace=1.0)
    (run,) = _runs(caplog)
    assert run.peer.startswith("ipv4:127.0.0.1:")  # type: ignore[attr-defined]
    (refusal,) = [r for r in caplog.records if getattr(r, "outcome", None) == "refused"]
    assert refusal.levelno == logging.WARNING
    assert refusal.status == "UNAUTHENTICATED"  # type: ignore[attr-defined]
    assert refusal.peer == run.peer  # type: ignore[attr-defined]
    assert service.stats().refused == 1
