"""End to end with stock Wove (the PyPI release) against a grpcio Wove worker process.

Tasks come from ``tests/wove_tasks.py`` so that cloudpickle sends them by reference and
the worker imports them (valid across interpreters). grpcio is never imported here: the
``transport="grpcio"`` weave runs in a subprocess (``tests/wove_weave_runner.py``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import wove
import wove_tasks
from _support import grpcio_python
from _wove_support import (
    SECRET,
    SECRET_ENV,
    Worker,
    closed_port,
    environment,
    run_weave_script,
    runner_result,
    start_worker,
)
from wove import DeliveryTimeoutError
from wove.environment import EnvironmentExecutionError

import wove_h2grpc
from wove_h2grpc import H2GrpcExecutor

ITEMS = 1000


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = start_worker(tmp_path_factory.mktemp("plain"))
    yield w
    w.stop()


@pytest.fixture(scope="module")
def tls_worker(tmp_path_factory: pytest.TempPathFactory, certs: Any) -> Iterator[Worker]:
    w = start_worker(tmp_path_factory.mktemp("tls"), secret=SECRET, certs=certs)
    yield w
    w.stop()


@pytest.fixture
def installed() -> Iterator[None]:
    wove_h2grpc.install()
    yield
    wove_h2grpc.uninstall()


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return SECRET


def mapped_weave(env: str, items: int = ITEMS) -> Dict[str, Any]:
    """Two mapped tasks (sync, async) and a join, all on ``env``; the weave itself is local."""
    with wove.weave() as w:
        w.do(range(items), environment=env)(wove_tasks.square)
        w.do(range(items), environment=env)(wove_tasks.cube)
        w.do(environment=env)(wove_tasks.total)
    return {"square": w.result.square, "cube": w.result.cube, "total": w.result.total}


def check_mapped(result: Dict[str, Any], items: int = ITEMS) -> None:
    assert result["square"] == [i * i for i in range(items)]
    assert result["cube"] == [i**3 for i in range(items)]
    assert result["total"] == sum(i * i + i**3 for i in range(items))


# ---------------------------------------------------------------- the happy paths


def test_tls_and_signed_security_1000_items_sync_and_async(
    tls_worker: Worker, certs: Any, secret: str, installed: None
) -> None:
    config = {
        "target": f"localhost:{tls_worker.port}",
        "transport": "h2",
        "secure": True,
        "root_certificates": certs.ca_pem,
        "security": f"env:{SECRET_ENV}",
        "metadata": {"x-project": "reports"},
        "timeout": 60.0,
    }
    before = len(tls_worker.ran())
    with environment("grpc", config) as env:
        check_mapped(mapped_weave(env))
    assert len(tls_worker.ran()) - before == 2 * ITEMS + 1


def test_plaintext_loopback_without_security(worker: Worker) -> None:
    config = {"target": f"127.0.0.1:{worker.port}", "timeout": 60.0}
    with environment(H2GrpcExecutor(), config) as env:  # without install()
        check_mapped(mapped_weave(env))


async def test_async_weave_1000_items_msgpack(worker: Worker) -> None:
    config = {"target": f"127.0.0.1:{worker.port}", "codec": "msgpack", "timeout": 60.0}
    with environment(H2GrpcExecutor(), config) as env:
        async with wove.weave() as w:
            w.do(range(ITEMS), environment=env)(wove_tasks.square)
            w.do(range(ITEMS), environment=env)(wove_tasks.cube)
            w.do(environment=env)(wove_tasks.total)
        check_mapped({"square": w.result.square, "cube": w.result.cube, "total": w.result.total})


def test_one_executor_instance_serves_many_weaves(worker: Worker) -> None:
    executor = H2GrpcExecutor()
    with environment(executor, {"target": f"127.0.0.1:{worker.port}"}) as env:
        for _ in range(3):
            check_mapped(mapped_weave(env, 20), 20)
            assert executor.transport is None  # stopped after each weave


# ---------------------------------------------------------------- failures


def test_raising_task_surfaces_with_its_message(worker: Worker) -> None:
    with environment(H2GrpcExecutor(), {"target": f"127.0.0.1:{worker.port}"}) as env:
        with wove.weave() as w:
            w.do(environment=env)(wove_tasks.fails)
        with pytest.raises(ValueError, match=r"^boom from the worker$"):
            w.result.fails  # noqa: B018


def test_wrong_secret_errors_and_nothing_executes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = start_worker(tmp_path, secret=SECRET)
    monkeypatch.setenv(SECRET_ENV, "wrong-" + SECRET)
    try:
        config = {"target": f"127.0.0.1:{w.port}", "security": f"env:{SECRET_ENV}"}
        with environment(H2GrpcExecutor(), config) as env:
            with wove.weave() as weave:
                weave.do(range(20), environment=env)(wove_tasks.square)
            with pytest.raises(EnvironmentExecutionError) as info:
                weave.result.square  # noqa: B018
        payload = info.value.payload
        assert payload["source"] == "transport"
        assert payload["grpc_status"] == "UNAUTHENTICATED"
        assert "UNAUTHENTICATED: Invalid Wove network executor signature." in str(info.value)
        assert w.ran() == []
        # the same worker runs the same weave with the right secret
        monkeypatch.setenv(SECRET_ENV, SECRET)
        with environment(H2GrpcExecutor(), config) as env:
            with wove.weave() as weave:
                weave.do(range(20), environment=env)(wove_tasks.square)
            assert weave.result.square == [i * i for i in range(20)]
        assert len(w.ran()) == 20
    finally:
        w.stop()


def test_unsigned_call_to_signed_worker_runs_nothing(tmp_path: Path) -> None:
    w = start_worker(tmp_path, secret=SECRET)
    try:
        with environment(H2GrpcExecutor(), {"target": f"127.0.0.1:{w.port}"}) as env:
            with wove.weave() as weave:
                weave.do(environment=env)(wove_tasks.text)
            with pytest.raises(EnvironmentExecutionError, match="Missing Wove network executor"):
                weave.result.text  # noqa: B018
        assert w.ran() == []
    finally:
        w.stop()


def test_worker_down_is_a_transport_error_within_the_timeout() -> None:
    config = {"target": f"127.0.0.1:{closed_port()}", "timeout": 1.0}
    with environment(H2GrpcExecutor(), config) as env:
        began = time.monotonic()
        with wove.weave() as weave:
            weave.do(environment=env)(wove_tasks.text)
        elapsed = time.monotonic() - began
        with pytest.raises(EnvironmentExecutionError) as info:
            weave.result.text  # noqa: B018
    assert elapsed < 5.0
    assert info.value.payload["source"] == "transport"
    assert info.value.payload["grpc_status"] == "UNAVAILABLE"
    assert info.value.payload["retryable"] is True  # the request never left the process
    assert "Connect call failed" in str(info.value) or "refused" in str(info.value)


def test_config_error_raises_before_any_task_is_sent(worker: Worker) -> None:
    before = len(worker.ran())
    config = {"target": f"127.0.0.1:{worker.port}", "transport": "h2", "codec": "yaml"}
    with environment(H2GrpcExecutor(), config) as env:  # noqa: SIM117 (3.9: no parenthesized with)
        with pytest.raises(ValueError, match=r"executor_config\.codec"), wove.weave() as weave:
            weave.do(range(5), environment=env)(wove_tasks.square)
    assert len(worker.ran()) == before


# ---------------------------------------------------------------- delivery_timeout, cancellation


def test_delivery_timeout_cancels_the_remote_task(tmp_path: Path) -> None:
    w = start_worker(tmp_path)
    try:
        with environment(H2GrpcExecutor(), {"target": f"127.0.0.1:{w.port}"}) as env:
            began = time.monotonic()
            with wove.weave() as weave:
                weave.do(environment=env, delivery_timeout=0.5)(wove_tasks.async_sleepy)
            with pytest.raises(DeliveryTimeoutError, match="async_sleepy"):
                weave.result.async_sleepy  # noqa: B018
            assert time.monotonic() - began < 5.0
        run_id = w.wait_for_line("run async_sleepy:")[0].split(" ", 1)[1]
        assert w.wait_for_line(f"cancel {run_id}")  # cancel_task arrived as its own call
        assert w.wait_for_line(f"cancelled {run_id}")
    finally:
        w.stop()


async def test_cancelling_the_weave_cancels_the_remote_task(tmp_path: Path) -> None:
    w = start_worker(tmp_path)
    try:
        with environment(H2GrpcExecutor(), {"target": f"127.0.0.1:{w.port}"}) as env:

            async def run() -> None:
                async with wove.weave() as weave:
                    weave.do(environment=env)(wove_tasks.async_sleepy)

            task = asyncio.ensure_future(run())
            assert await w.wait_line("run async_sleepy:")
            began = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
            assert time.monotonic() - began < 5.0
        run_id = (await w.wait_line("run async_sleepy:"))[0].split(" ", 1)[1]
        assert await w.wait_line(f"cancel {run_id}")
        assert await w.wait_line(f"cancelled {run_id}")
    finally:
        w.stop()


# ---------------------------------------------------------------- scale


@pytest.mark.slow
def test_10000_item_mapped_task(worker: Worker) -> None:
    config = {"target": f"127.0.0.1:{worker.port}", "timeout": 120.0}
    with environment(H2GrpcExecutor(), config) as env:
        with wove.weave() as w:
            w.do(range(10_000), environment=env)(wove_tasks.square)
        assert w.result.square == [i * i for i in range(10_000)]


# ---------------------------------------------------------------- grpcio vs h2, auto


def test_grpcio_and_h2_transports_give_identical_results(worker: Worker) -> None:
    target = f"127.0.0.1:{worker.port}"
    grpcio = runner_result(
        run_weave_script(
            ["--target", target, "--transport", "grpcio", "--items", "200"], python=grpcio_python()
        )
    )
    assert grpcio["grpc_imported"] is True  # it really was Wove's grpcio executor
    wove_h2grpc.install()
    try:
        with environment(
            "grpc", {"target": target, "transport": "h2", "metadata": {"x-project": "runner"}}
        ) as env:
            h2 = wove_tasks.standard_weave(env, 200)
    finally:
        wove_h2grpc.uninstall()
    assert "grpc" not in sys.modules
    for key in ("square", "cube", "total", "text", "error"):
        assert h2[key] == grpcio[key], key
    assert h2["error"] == "ValueError: boom from the worker"


def test_h2_weave_in_a_fresh_process_matches_and_leaves_no_resource_warning(worker: Worker) -> None:
    target = f"127.0.0.1:{worker.port}"
    proc = run_weave_script(
        ["--target", target, "--transport", "h2", "--items", "200", "--reuse-instance"],
        flags=["-X", "dev", "-W", "error::ResourceWarning"],
    )
    result = runner_result(proc)
    assert result["grpc_imported"] is False
    assert result["total"] == sum(i * i + i**3 for i in range(200))
    assert "Warning" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


def test_security_metadata_same_keys_as_stock_wove(tmp_path: Path) -> None:
    w = start_worker(tmp_path, "--respond", "echo", secret=SECRET)
    try:
        target = f"127.0.0.1:{w.port}"
        env = {SECRET_ENV: SECRET}
        common = ["--target", target, "--scenario", "echo", "--secret-env", SECRET_ENV]
        stock = runner_result(
            run_weave_script([*common, "--transport", "grpcio"], python=grpcio_python(), env=env)
        )
        ours = runner_result(run_weave_script([*common, "--transport", "h2"], env=env))
        assert (
            ours["metadata_keys"]
            == stock["metadata_keys"]
            == [
                "x-project",
                "x-wove-key",
                "x-wove-timestamp",
                "x-wove-nonce",
                "x-wove-signature",
            ]
        )
        assert ours["body_first_byte"] == stock["body_first_byte"] == ord("{")
    finally:
        w.stop()


def test_auto_uses_grpcio_where_it_imports_and_h2_where_it_does_not(worker: Worker) -> None:
    target = f"127.0.0.1:{worker.port}"
    with_grpc = runner_result(
        run_weave_script(["--target", target, "--transport", "auto"], python=grpcio_python())
    )
    assert with_grpc["grpc_imported"] is True
    blocked = runner_result(
        run_weave_script(["--target", target, "--block-grpc"], python=grpcio_python())
    )
    assert blocked["grpc_imported"] is False
    assert blocked["total"] == with_grpc["total"]
