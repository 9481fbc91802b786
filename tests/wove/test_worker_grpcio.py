"""Interop (d): our h2 transport -> WorkerService.grpcio_handler() on a grpcio server.

The grpcio server runs in a helper process (tests/grpcio_worker_host.py under
grpcio_python()); this process only speaks h2, through our Channel and through stock Wove
with ``H2GrpcExecutor`` (``transport="h2"``). TLS and signed security throughout.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import worker_tasks
from _support import Certs, HelperProcess, grpcio_python, start_helper
from worker_tasks import cube, make_bytes, refuse, size_of, slow
from wove.security import NetworkExecutorSecurity

from wove_h2grpc import Channel, GrpcError, StatusCode
from wove_h2grpc.worker import DEFAULT_METHOD
from wove_h2grpc.wove.codec import decode_events, encode_command

SECRET = "interop-d-secret"


# Tasks come from tests/worker_tasks.py so that they travel by reference: the worker may run
# on another interpreter (the PyPy lane runs grpcio helpers on CPython).
@pytest.fixture(scope="module")
def grpcio_worker(certs: Certs) -> Iterator[HelperProcess]:
    helper = start_helper(
        "grpcio_worker_host.py",
        [
            "--tls-cert",
            certs.server_cert_file,
            "--tls-key",
            certs.server_key_file,
            "--security",
            "env:WOVE_TEST_WORKER_SECRET",
        ],
        python=grpcio_python(),
        env={"WOVE_TEST_WORKER_SECRET": SECRET},
    )
    yield helper
    helper.stop()


@pytest.fixture(scope="module")
def grpcio_mtls_worker(certs: Certs) -> Iterator[HelperProcess]:
    helper = start_helper(
        "grpcio_worker_host.py",
        [
            "--tls-cert",
            certs.server_cert_file,
            "--tls-key",
            certs.server_key_file,
            "--client-ca",
            certs.ca_file,
            "--security",
            "env:WOVE_TEST_WORKER_SECRET",
        ],
        python=grpcio_python(),
        env={"WOVE_TEST_WORKER_SECRET": SECRET},
    )
    yield helper
    helper.stop()


def _channel(helper: HelperProcess, certs: Certs, **options: Any) -> Channel:
    return Channel(
        f"localhost:{helper.port}",
        secure=True,
        root_certificates=certs.ca_pem,
        timeout=20.0,
        **options,
    )


def _frame(func: Any, args: Dict[str, Any], run_id: str) -> Dict[str, Any]:
    return {"type": "run_task", "run_id": run_id, "task_id": "t", "callable": func, "args": args}


async def _send(
    channel: Channel,
    frame: Dict[str, Any],
    codec: str = "json",
    secret: str = SECRET,
    extra_metadata: Tuple[Tuple[str, Any], ...] = (),
    timeout: float = 20.0,
) -> bytes:
    body = encode_command(frame, codec)
    security = NetworkExecutorSecurity(mode="signed", secret=secret)
    metadata = security.metadata_for(transport="grpc", target=DEFAULT_METHOD, body=body)
    rpc = channel.unary_unary(DEFAULT_METHOD)
    call = rpc(body, metadata=(*extra_metadata, *metadata), timeout=timeout)
    return await asyncio.wait_for(call, 30)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_channel_runs_a_signed_task_over_tls(
    grpcio_worker: HelperProcess, certs: Certs, codec: str
) -> None:
    async with _channel(grpcio_worker, certs) as channel:
        events = decode_events(await _send(channel, _frame(cube, {"x": 3}, "c1"), codec))
    assert [e["type"] for e in events] == ["task_started", "task_result"]
    assert events[1]["result"] == 27


async def test_task_error_travels_back(grpcio_worker: HelperProcess, certs: Certs) -> None:
    async with _channel(grpcio_worker, certs) as channel:
        events = decode_events(await _send(channel, _frame(refuse, {"reason": "no"}, "e1")))
    assert events[1]["type"] == "task_error"
    assert events[1]["error"]["kind"] == "Refused"
    assert events[1]["error"]["source"] == "task"
    assert str(events[1]["exception"]) == "no"


async def test_wrong_secret_is_unauthenticated(grpcio_worker: HelperProcess, certs: Certs) -> None:
    async with _channel(grpcio_worker, certs) as channel:
        with pytest.raises(GrpcError) as info:
            await _send(channel, _frame(cube, {"x": 1}, "w1"), secret="not the secret")
    assert info.value.code() == StatusCode.UNAUTHENTICATED
    assert "signature" in info.value.details()


async def test_garbage_is_invalid_argument(grpcio_worker: HelperProcess, certs: Certs) -> None:
    body = b"\x01garbage"
    security = NetworkExecutorSecurity(mode="signed", secret=SECRET)
    metadata = security.metadata_for(transport="grpc", target=DEFAULT_METHOD, body=body)
    async with _channel(grpcio_worker, certs) as channel:
        with pytest.raises(GrpcError) as info:
            await channel.unary_unary(DEFAULT_METHOD)(body, metadata=metadata, timeout=20)
    assert info.value.code() == StatusCode.INVALID_ARGUMENT


async def test_cancel_task_over_the_wire(grpcio_worker: HelperProcess, certs: Certs) -> None:
    async with _channel(grpcio_worker, certs) as channel:
        run = asyncio.ensure_future(_send(channel, _frame(slow, {"seconds": 30}, "slow-1")))
        await asyncio.sleep(0.5)
        cancel = {"type": "cancel_task", "run_id": "slow-1", "task_id": "t"}
        assert decode_events(await _send(channel, cancel)) == ()
        events = decode_events(await asyncio.wait_for(run, 10))
    assert [e["type"] for e in events] == ["task_started", "task_cancelled"]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_8_mib_each_way_with_binary_metadata(
    grpcio_worker: HelperProcess, certs: Certs, codec: str
) -> None:
    size = 8 * 1024 * 1024
    trace = (("x-trace-bin", bytes(range(256))), ("x-project", "interop-d"))
    async with _channel(grpcio_worker, certs, max_receive_message_length=32 << 20) as channel:
        up = _frame(size_of, {"data": b"\x01" * size}, "big-up")
        events = decode_events(await _send(channel, up, codec, extra_metadata=trace))
        assert events[-1]["result"] == size
        down = _frame(make_bytes, {"size": size}, "big-down")
        events = decode_events(await _send(channel, down, codec, extra_metadata=trace))
        assert events[-1]["result"] == b"\xab" * size


async def test_deadline_exceeded_while_the_task_runs(
    grpcio_worker: HelperProcess, certs: Certs
) -> None:
    async with _channel(grpcio_worker, certs) as channel:
        with pytest.raises(GrpcError) as info:
            await _send(channel, _frame(slow, {"seconds": 30}, "late-1"), timeout=0.5)
        assert info.value.code() == StatusCode.DEADLINE_EXCEEDED
        # The worker is still healthy afterwards.
        events = decode_events(await _send(channel, _frame(cube, {"x": 2}, "after-1")))
        assert events[-1]["result"] == 8


async def test_mutual_tls(grpcio_mtls_worker: HelperProcess, certs: Certs) -> None:
    client_cert = {
        "private_key": certs.client_key_pem,
        "certificate_chain": certs.client_cert_pem,
    }
    async with _channel(grpcio_mtls_worker, certs, **client_cert) as channel:
        events = decode_events(await _send(channel, _frame(cube, {"x": 4}, "mtls-1")))
    assert events[-1]["result"] == 64
    async with _channel(grpcio_mtls_worker, certs, connect_timeout=5.0) as channel:
        with pytest.raises(GrpcError) as info:
            await _send(channel, _frame(cube, {"x": 4}, "mtls-2"), timeout=2.0)
    assert info.value.code() == StatusCode.UNAVAILABLE


async def test_stock_wove_over_h2_against_grpcio_worker(
    grpcio_worker: HelperProcess, certs: Certs
) -> None:
    import wove

    from wove_h2grpc import H2GrpcExecutor

    wove.config(
        environments={
            "interop_d": {
                "executor": H2GrpcExecutor(),
                "executor_config": {
                    "target": f"localhost:{grpcio_worker.port}",
                    "transport": "h2",
                    "secure": True,
                    "root_certificates": certs.ca_pem,
                    "security": {"type": "signed", "secret": SECRET},
                    "timeout": 30.0,
                },
            }
        }
    )

    async def weave() -> List[int]:
        # Only the mapped task goes to the worker; the weave's own seed task (a lambda,
        # which cloudpickle would send by value) stays local.
        async with wove.weave() as w:
            w.do(range(12), environment="interop_d")(worker_tasks.cube_item)
        return list(w.result.cube_item)

    assert await asyncio.wait_for(weave(), 60) == [i**3 for i in range(12)]
