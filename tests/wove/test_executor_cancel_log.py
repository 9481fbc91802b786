"""What the h2 executor logs when a ``cancel_task`` call fails.

A ``cancel_task`` is its own unary call. When it fails while its run is still open, the
worker may still be running the task: that is worth a WARNING that says so. When the run has
already ended (a wrong secret refuses the run and then each cancel Wove sends for it), the
failure repeats the run's own error, and is logged at DEBUG only. The workers are our
``Server`` (in this process) and ``wove-h2grpc serve`` (a child process); no grpcio.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any, Dict, List

import pytest
import wove
import wove_tasks
from _cli_support import CliProcess
from wove.environment import EnvironmentExecutionError

from wove_h2grpc import H2GrpcExecutor, Server, StatusCode
from wove_h2grpc.wove.codec import decode_command, encode_events

EXECUTOR_LOGGER = "wove_h2grpc.wove.executor"
TASKS = 20


def _run_task(run_id: str) -> Dict[str, Any]:
    return {
        "type": "run_task",
        "run_id": run_id,
        "task_id": "t",
        "callable": wove_tasks.square,
        "args": {"item": 3},
    }


def _cancel_task(run_id: str) -> Dict[str, Any]:
    return {"type": "cancel_task", "run_id": run_id, "task_id": "t"}


def _executor_records(caplog: pytest.LogCaptureFixture, level: int) -> List[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == EXECUTOR_LOGGER and r.levelno == level and "cancel_task" in r.getMessage()
    ]


class _Refusing:
    """A worker that answers ``run_task`` after ``release`` is set and refuses everything
    else, or refuses ``run_task`` too (``refuse_runs``)."""

    def __init__(self, refuse_runs: bool) -> None:
        self.refuse_runs = refuse_runs
        self.release = asyncio.Event()
        self.runs_seen = asyncio.Event()

    async def handler(self, request: bytes, context: Any) -> bytes:
        codec, frame = decode_command(request)
        if frame["type"] == "run_task" and not self.refuse_runs:
            self.runs_seen.set()
            await asyncio.wait_for(self.release.wait(), 20)
            done = {"type": "task_result", "run_id": frame["run_id"], "result": 9}
            return encode_events([done], codec)
        await context.abort(StatusCode.UNAVAILABLE, f"refusing {frame['type']}")
        raise AssertionError("abort() returned")


async def _start(server: Server, handler: Any) -> H2GrpcExecutor:
    server.add_method("/wove.network_executor.WorkerService/Send", handler)
    port = await server.start("127.0.0.1:0")
    executor = H2GrpcExecutor()
    await executor.start(
        environment_name="t",
        environment_config={"target": f"127.0.0.1:{port}", "timeout": 20},
        run_config={},
    )
    return executor


async def test_a_lost_cancel_of_an_open_run_is_a_labelled_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=EXECUTOR_LOGGER)
    worker = _Refusing(refuse_runs=False)
    server = Server()
    executor = await _start(server, worker.handler)
    try:
        await executor.send(_run_task("open:1"))
        await asyncio.wait_for(worker.runs_seen.wait(), 10)
        await executor.send(_cancel_task("open:1"))
        for _ in range(200):
            if _executor_records(caplog, logging.WARNING):
                break
            await asyncio.sleep(0.02)
        (warning,) = _executor_records(caplog, logging.WARNING)
        assert warning.startswith("grpc executor (h2): cancel_task for run open:1 did not reach")
        assert "may still be running it" in warning
        assert "UNAVAILABLE: refusing cancel_task" in warning
        worker.release.set()
        event = await asyncio.wait_for(executor.recv(), 10)
        assert (event["type"], event["run_id"]) == ("task_result", "open:1")
    finally:
        worker.release.set()
        await executor.stop()
        await server.stop()


async def test_a_failed_cancel_after_the_run_ended_is_debug_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=EXECUTOR_LOGGER)
    worker = _Refusing(refuse_runs=True)
    server = Server()
    executor = await _start(server, worker.handler)
    try:
        await executor.send(_run_task("gone:1"))
        event = await asyncio.wait_for(executor.recv(), 10)
        assert (event["type"], event["run_id"]) == ("task_error", "gone:1")
        await executor.send(_cancel_task("gone:1"))
        for _ in range(200):
            if _executor_records(caplog, logging.DEBUG):
                break
            await asyncio.sleep(0.02)
        (debug,) = _executor_records(caplog, logging.DEBUG)
        assert "cancel_task for run gone:1 failed after the run had ended" in debug
        assert _executor_records(caplog, logging.WARNING) == []
    finally:
        await executor.stop()
        await server.stop()


def test_a_weave_with_a_wrong_secret_logs_no_cancel_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The worker is ``wove-h2grpc serve`` in its own process, as a user runs it: its answers
    # arrive while Wove is still reacting to the first failure, so Wove sends cancel_task
    # for runs that have failed by the time those calls fail too.
    caplog.set_level(logging.DEBUG, logger=EXECUTOR_LOGGER)
    cli = CliProcess(
        ["serve", "--bind", "127.0.0.1:0", "--security", "env:WOVE_CANCEL_LOG_SECRET"],
        env={"WOVE_CANCEL_LOG_SECRET": "the-right-secret"},
    )
    try:
        port = cli.wait_for_port()
        wove.config(
            environments={
                "wrong_secret": {
                    "executor": H2GrpcExecutor(),
                    "executor_config": {
                        "target": f"127.0.0.1:{port}",
                        "security": {"type": "signed", "secret": "a-wrong-secret"},
                        "timeout": 20,
                    },
                }
            }
        )

        async def weave() -> None:
            async with wove.weave() as w:
                w.do(range(TASKS), environment="wrong_secret")(wove_tasks.square)
            with pytest.raises(EnvironmentExecutionError, match="UNAUTHENTICATED"):
                w.result.square  # noqa: B018 - Wove raises a task's error when it is read

        asyncio.run(asyncio.wait_for(weave(), 60))
        cancels = _executor_records(caplog, logging.DEBUG)
        deadline = time.monotonic() + 10
        while _refused(cli) < TASKS + len(cancels):
            assert time.monotonic() < deadline, (cli.stderr_lines, cancels)
            time.sleep(0.05)
    finally:
        cli.proc.send_signal(signal.SIGTERM)
        cli.wait(timeout=15)
    # Every call the worker refused beyond the runs was a cancel_task that Wove sent for a
    # run that had already failed: each is a DEBUG line here, none a WARNING.
    assert _refused(cli) == TASKS + len(cancels), (cli.stderr_lines, cancels)
    assert _executor_records(caplog, logging.WARNING) == []


def _refused(cli: CliProcess) -> int:
    return sum("refused a request" in line for line in cli.stderr_lines)
