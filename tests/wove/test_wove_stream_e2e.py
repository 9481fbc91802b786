"""Stock Wove (the PyPI release) over ``delivery="stream"``, end to end.

Two workers, each in its own process: ``wove-h2grpc serve`` (our Server) and our
``WorkerService`` on a grpcio server. A weave whose tasks sleep 5 s with Wove's
``delivery_heartbeat_seconds=1`` succeeds over ``stream`` and ``auto`` and fails over
``unary``, as it fails with Wove's own grpcio executor; a task Wove cancels (its
``delivery_timeout``) is cancelled on the worker within 100 ms; 10,000 mapped tasks over
``stream`` all succeed.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any, Dict, Iterator, List

import pytest
import wove
import wove_tasks
from _cli_support import CliProcess
from _support import REPO_DIR, TESTS_DIR, HelperProcess, grpcio_python, start_helper
from _wove_support import environment, run_weave_script, runner_result
from wove import DeliveryTimeoutError

from wove_h2grpc import H2GrpcExecutor, Server
from wove_h2grpc.worker import WorkerService

HEARTBEAT_TIMEOUT = "Delivery heartbeat timed out"


@pytest.fixture(scope="module")
def serve_worker() -> Iterator[int]:
    """``wove-h2grpc serve`` (our Server), importing the tasks Wove sends by reference."""
    cli = CliProcess(
        ["serve", "--bind", "127.0.0.1:0", "--security", "none"],
        env={"PYTHONPATH": os.pathsep.join((str(REPO_DIR), str(TESTS_DIR)))},
    )
    try:
        yield cli.wait_for_port()
    finally:
        cli.kill()


@pytest.fixture(scope="module")
def grpcio_worker() -> Iterator[HelperProcess]:
    """Our WorkerService on a grpcio server (``grpcio_handler()``)."""
    helper = start_helper("grpcio_worker_host.py", ["--allow-unsigned"], python=grpcio_python())
    yield helper
    helper.stop()


def _port(request: pytest.FixtureRequest, which: str) -> int:
    if which == "serve":
        return int(request.getfixturevalue("serve_worker"))
    return request.getfixturevalue("grpcio_worker").port


def _slow_weave(port: int, *args: str, python: str = "") -> Dict[str, Any]:
    """Three 5 s tasks with delivery_heartbeat_seconds=1, in a fresh process."""
    proc = run_weave_script(
        [
            "--target",
            f"127.0.0.1:{port}",
            "--scenario",
            "slow",
            "--items",
            "3",
            "--heartbeat",
            "1",
            *args,
        ],
        python=python or None,
        timeout=90,
    )
    return runner_result(proc)


@pytest.mark.parametrize("worker", ["serve", "grpcio"])
@pytest.mark.parametrize("delivery", ["stream", "auto"])
def test_long_tasks_keep_their_heartbeat_over_a_stream(
    request: pytest.FixtureRequest, worker: str, delivery: str
) -> None:
    result = _slow_weave(_port(request, worker), "--transport", "h2", "--delivery", delivery)
    assert result["error"] is None, result
    assert result["results"] == [0, 1, 2]
    assert result["seconds"] >= 5.0


@pytest.mark.parametrize("worker", ["serve", "grpcio"])
def test_long_tasks_time_out_over_unary(request: pytest.FixtureRequest, worker: str) -> None:
    """The failure the streaming delivery removes: Wove sees no heartbeat until the call ends."""
    result = _slow_weave(_port(request, worker), "--transport", "h2", "--delivery", "unary")
    assert result["results"] is None
    assert HEARTBEAT_TIMEOUT in result["error"], result
    assert result["seconds"] < 5.0  # it failed at the heartbeat timeout, not at the end


def test_long_tasks_time_out_with_woves_own_grpcio_executor(serve_worker: int) -> None:
    """Wove's own executor (transport="grpcio") fails the same weave the same way."""
    result = _slow_weave(serve_worker, "--transport", "grpcio", python=grpcio_python())
    assert result["results"] is None
    assert HEARTBEAT_TIMEOUT in result["error"], result


class ThreadWorker:
    """Our WorkerService on our Server, on an event loop in a thread of this process, so
    that a sync weave here and the worker's view of the task share one clock."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.service = WorkerService(allow_unsigned=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = Server()
        self.service.attach(self.server)
        self.port = self.loop.run_until_complete(self.server.start("127.0.0.1:0"))
        self.ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self.server.stop(grace=0), self.loop)
        future.result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def thread_worker() -> Iterator[ThreadWorker]:
    worker = ThreadWorker()
    yield worker
    worker.stop()


def test_a_task_wove_cancels_is_cancelled_on_the_worker_within_100_ms(
    thread_worker: ThreadWorker,
) -> None:
    wove_tasks.CANCELS.clear()
    config = {"target": f"127.0.0.1:{thread_worker.port}", "delivery": "stream"}
    with environment(H2GrpcExecutor(), config) as env:
        began = time.monotonic()
        with wove.weave() as w:
            w.do(environment=env, delivery_timeout=0.5)(wove_tasks.cancel_marker)
        with pytest.raises(DeliveryTimeoutError):
            w.result.cancel_marker  # noqa: B018 - reading the result raises the task's error
    # The worker runs in its own thread: the weave may end before that thread has handled
    # the reset. Wait (bounded) for it; how late it came is checked below.
    waited_until = time.monotonic() + 5.0
    while time.monotonic() < waited_until and not (
        wove_tasks.CANCELS and thread_worker.service.stats().cancelled
    ):
        time.sleep(0.005)
    assert len(wove_tasks.CANCELS) == 1, wove_tasks.CANCELS
    started, cancelled = wove_tasks.CANCELS[0]
    # Wove gives up 0.5 s after it sent the task (a moment before the worker started it).
    late = cancelled - max(began, started) - 0.5
    assert late < 0.1, f"the worker cancelled the task {late * 1000:.0f} ms after Wove gave up"
    assert thread_worker.service.stats().cancelled == 1


def test_ten_thousand_mapped_tasks_over_a_stream(serve_worker: int) -> None:
    config = {"target": f"127.0.0.1:{serve_worker}", "delivery": "stream", "timeout": 120.0}
    with environment(H2GrpcExecutor(), config) as env:
        with wove.weave() as w:
            w.do(range(10_000), environment=env)(wove_tasks.square)
        results: List[int] = list(w.result.square)
    assert results == [i * i for i in range(10_000)]
