"""``wove-h2grpc health``: the probe against grpcio's own health servicer (helper process) and
against ``wove-h2grpc serve`` (plaintext, TLS, mutual TLS), its exit statuses and one-line
errors, and serve's health while it starts and stops."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import pytest
from _cli_support import CliProcess
from _support import REPO_DIR, Certs, HelperProcess, start_helper

from wove_h2grpc import Channel, StatusCode
from wove_h2grpc.cli import main
from wove_h2grpc.health import WATCH_METHOD
from wove_h2grpc.protocol.health_messages import decode_response
from wove_h2grpc.worker import DEFAULT_METHOD
from wove_h2grpc.wove.codec import decode_events, encode_command

WORKER_SERVICE = DEFAULT_METHOD.split("/")[1]


def _probe(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> Tuple[int, str, str]:
    """``main(["health", *argv])`` in this process: exit status, stdout, stderr."""
    code = main(["health", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _probe_process(argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "wove_h2grpc", "health", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def _one_error_line(err: str, fragment: str) -> None:
    assert err.count("\n") == 1 and err.startswith("wove-h2grpc health: error: "), err
    assert fragment in err, err


@pytest.fixture(scope="module")
def grpcio_health() -> Iterator[HelperProcess]:
    """grpcio's own HealthServicer: the server SERVING, pkg.Up, pkg.Down and pkg.Unknown."""
    helper = start_helper(
        "grpcio_health.py",
        [
            *("server", "--status", "pkg.Up=SERVING", "--status", "pkg.Down=NOT_SERVING"),
            *("--status", "pkg.Unknown=UNKNOWN"),
        ],
    )
    yield helper
    helper.stop()


@pytest.fixture
def processes() -> Iterator[List[CliProcess]]:
    started: List[CliProcess] = []
    yield started
    for process in started:
        process.kill()


# -- against grpcio's health servicer -----------------------------------------------------


@pytest.mark.parametrize(
    ("service", "code", "line"),
    [
        ("", 0, "status: SERVING"),
        ("pkg.Up", 0, "status: SERVING"),
        ("pkg.Down", 1, "status: NOT_SERVING"),
        ("pkg.Unknown", 1, "status: UNKNOWN"),
    ],
)
def test_probe_reads_grpcio_health_statuses(
    grpcio_health: HelperProcess,
    service: str,
    code: int,
    line: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [f"127.0.0.1:{grpcio_health.port}", "--service", service]
    assert _probe(argv, capsys) == (code, line + "\n", "")


def test_probe_unknown_service_is_a_failed_check(
    grpcio_health: HelperProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _probe([f"127.0.0.1:{grpcio_health.port}", "--service", "pkg.Nope"], capsys)
    assert code == 2 and out == ""
    _one_error_line(err, f"127.0.0.1:{grpcio_health.port}: NOT_FOUND")


def test_probe_as_a_process(grpcio_health: HelperProcess) -> None:
    result = _probe_process([f"localhost:{grpcio_health.port}", "--service", "pkg.Down"])
    assert (result.returncode, result.stdout, result.stderr) == (1, "status: NOT_SERVING\n", "")


# -- failures -----------------------------------------------------------------------------


def test_probe_nothing_listening(capsys: pytest.CaptureFixture[str]) -> None:
    # A bound socket that does not listen refuses connections, and nobody else gets the port.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        started = time.monotonic()
        code, out, err = _probe([f"127.0.0.1:{port}", "--timeout", "5"], capsys)
    assert code == 2 and out == ""
    _one_error_line(err, f"127.0.0.1:{port}: UNAVAILABLE")
    assert time.monotonic() - started < 5


def test_probe_silent_server_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    # Accepts TCP connections and never says a word (no HTTP/2 preface).
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: List[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not done.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        port = listener.getsockname()[1]
        code, out, err = _probe([f"127.0.0.1:{port}", "--timeout", "0.5"], capsys)
        elapsed = time.monotonic() - started
    finally:
        done.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and ("DEADLINE_EXCEEDED" in err or "UNAVAILABLE" in err), err
    assert elapsed < 4, elapsed


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["127.0.0.1:1", "--tls-cert", "c.pem"], "--tls-cert and --tls-key must be given together"),
        (["127.0.0.1:1", "--server-hostname", "x"], "--server-hostname needs TLS"),
        (["127.0.0.1:1", "--tls-ca", "/nope/ca.pem"], "--tls-ca /nope/ca.pem: No such file"),
        (["bad target::"], "bad target::"),
    ],
)
def test_probe_option_errors_exit_2_on_one_line(
    argv: List[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _probe(argv, capsys)
    assert code == 2 and out == ""
    _one_error_line(err, fragment)


def test_probe_not_pem_file(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    code, _, err = _probe(["127.0.0.1:1", "--tls-ca", str(garbage)], capsys)
    assert code == 2
    _one_error_line(err, f"--tls-ca {garbage}: not a PEM file")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "TARGET"),
        (["127.0.0.1:1", "--timeout", "0"], "'0' must be a positive number"),
        (["127.0.0.1:1", "--timeout", "nan"], "'nan' must be a positive number"),
    ],
)
def test_probe_usage_errors(
    argv: List[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["health", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


def test_probe_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["health", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("TARGET", "--service", "--timeout", "--tls-ca", "--tls-cert", "--tls-key"):
        assert option in text, option
    assert "--server-hostname" in text and "Exit status 0 when SERVING" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "health" in capsys.readouterr().out


# -- against wove-h2grpc serve ------------------------------------------------------------


def _serve(processes: List[CliProcess], *extra: str) -> Tuple[CliProcess, int]:
    cli = CliProcess(["serve", "--bind", "127.0.0.1:0", *extra])
    processes.append(cli)
    return cli, cli.wait_for_port()


def test_serve_answers_health_over_mutual_tls(
    certs: Certs, processes: List[CliProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    tls = ["--tls-cert", certs.server_cert_file, "--tls-key", certs.server_key_file]
    cli, port = _serve(processes, *tls, "--client-ca", certs.ca_file)
    client = ["--tls-ca", certs.ca_file, "--tls-cert", certs.client_cert_file]
    client += ["--tls-key", certs.client_key_file]
    ok = (0, "status: SERVING\n", "")
    assert _probe([f"localhost:{port}", *client], capsys) == ok
    assert _probe([f"localhost:{port}", *client, "--service", WORKER_SERVICE], capsys) == ok
    # The certificate names server.test, not 127.0.0.1's reverse name: checked against the
    # name given.
    named = [f"127.0.0.1:{port}", *client, "--server-hostname", "server.test"]
    assert _probe(named, capsys) == ok
    for argv in (
        [f"localhost:{port}", *client, "--server-hostname", "wrong.test"],  # name mismatch
        [f"localhost:{port}", "--tls-ca", certs.ca_file],  # no client certificate
        [f"localhost:{port}", "--tls"],  # the system store does not trust the test CA
        [f"localhost:{port}"],  # plaintext against TLS
    ):
        code, out, err = _probe([*argv, "--timeout", "5"], capsys)
        assert code == 2 and out == "", argv
        _one_error_line(err, f"localhost:{port}: UNAVAILABLE")
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=15) == 0


def test_serve_health_through_start_and_stop(processes: List[CliProcess]) -> None:
    cli, port = _serve(processes, "--drain-delay", "30")
    target = f"127.0.0.1:{port}"
    for argv in ([target], [target, "--service", WORKER_SERVICE]):
        result = _probe_process(argv)
        assert (result.returncode, result.stdout) == (0, "status: SERVING\n"), result.stderr
    cli.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    while not any("health NOT_SERVING" in line for line in cli.stderr_lines):
        assert time.monotonic() < deadline, cli.stderr_lines
        time.sleep(0.05)
    # Draining has not begun: health says NOT_SERVING, and the worker still answers.
    for argv in ([target], [target, "--service", WORKER_SERVICE]):
        result = _probe_process(argv)
        assert (result.returncode, result.stdout) == (1, "status: NOT_SERVING\n"), result.stderr
    body = encode_command(
        {
            "type": "run_task",
            "run_id": "d1",
            "task_id": "t",
            "callable": pow,
            "args": {"base": 2, "exp": 3},
        }
    )

    async def call() -> bytes:
        async with Channel(target) as channel:
            return await channel.unary_unary(DEFAULT_METHOD)(body, timeout=20)

    assert decode_events(asyncio.run(call()))[-1]["result"] == 8
    # A second signal skips the rest of the 30 s delay.
    started = time.monotonic()
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert cli.lines[-1] == "wove-h2grpc: stopped"
    assert _probe_process([target, "--timeout", "2"]).returncode == 2


def test_serve_without_drain_delay_stops_at_once(processes: List[CliProcess]) -> None:
    cli, port = _serve(processes)
    assert _probe_process([f"127.0.0.1:{port}"]).returncode == 0
    started = time.monotonic()
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=15) == 0
    assert time.monotonic() - started < 5


def test_serve_watchers_see_not_serving_and_do_not_hold_the_stop(
    processes: List[CliProcess],
) -> None:
    cli, port = _serve(processes, "--grace", "30")

    async def scenario() -> List[Optional[int]]:
        async with Channel(f"127.0.0.1:{port}") as channel:
            call: Any = channel.unary_stream(WATCH_METHOD)(b"", timeout=60)
            seen: List[Optional[int]] = [decode_response(await asyncio.wait_for(call.read(), 10))]
            cli.proc.send_signal(signal.SIGTERM)
            async for message in call:
                seen.append(decode_response(message))
            seen.append(None if await call.code() is StatusCode.OK else -1)
            return seen

    started = time.monotonic()
    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == [1, 2, None]
    assert cli.wait(timeout=15) == 0
    assert time.monotonic() - started < 10  # not the 30 s grace
