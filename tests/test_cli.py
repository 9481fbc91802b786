"""The ``wove-h2grpc`` command: serve (starts, answers, refuses unsafe binds, stops on
SIGTERM), demo (exits 0 with correct results), --help everywhere, one-line errors."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import cloudpickle
import pytest
from _cli_support import CliProcess
from _support import REPO_DIR, Certs
from wove.security import NetworkExecutorSecurity

from wove_h2grpc import Channel, GrpcError, StatusCode
from wove_h2grpc.cli import main
from wove_h2grpc.cli.parser import build_parser
from wove_h2grpc.cli.serve import is_local_bind
from wove_h2grpc.worker import DEFAULT_METHOD
from wove_h2grpc.wove.codec import decode_events, encode_command

SECRET = "cli-test-secret"

# The serve process cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _slow_task(seconds: float) -> str:
    time.sleep(seconds)
    return f"finished after {seconds} s"


@pytest.fixture
def processes() -> Iterator[List[CliProcess]]:
    started: List[CliProcess] = []
    yield started
    for process in started:
        process.kill()


def _run_cli(
    args: Sequence[str], timeout: float = 120.0, env_extra: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(env_extra or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "wove_h2grpc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


async def _signed_call(
    port: int,
    frame: Dict[str, object],
    *,
    secure: bool = False,
    certs: Optional[Certs] = None,
    secret: str = SECRET,
) -> bytes:
    body = encode_command(frame)
    security = NetworkExecutorSecurity(mode="signed", secret=secret)
    metadata = security.metadata_for(transport="grpc", target=DEFAULT_METHOD, body=body)
    options: Dict[str, object] = {}
    if secure:
        assert certs is not None
        options = {
            "secure": True,
            "root_certificates": certs.ca_pem,
            "private_key": certs.client_key_pem,
            "certificate_chain": certs.client_cert_pem,
        }
    async with Channel(f"localhost:{port}", **options) as channel:  # type: ignore[arg-type]
        rpc = channel.unary_unary(DEFAULT_METHOD)
        return await asyncio.wait_for(rpc(body, metadata=metadata, timeout=20), 30)


def _run_frame(run_id: str, func: object, args: Dict[str, object]) -> Dict[str, object]:
    return {"type": "run_task", "run_id": run_id, "task_id": "t", "callable": func, "args": args}


# -- help and usage ----------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["demo", "--help"]])
def test_help_everywhere(argv: List[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: wove-h2grpc")
    assert "--help" in out


def test_help_through_python_dash_m() -> None:
    result = _run_cli(["serve", "--help"], timeout=60)
    assert result.returncode == 0
    assert "--bind HOST:PORT" in result.stdout and "--insecure" in result.stdout


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "wove-h2grpc"
    if not script.exists():
        pytest.skip("the wove-h2grpc console script is not installed next to this interpreter")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "serve" in result.stdout and "demo" in result.stdout


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: wove-h2grpc" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["serve"], "--bind"),
        (["demo", "--tasks", "0"], "positive"),
        (["demo", "--codec", "xml"], "invalid choice"),
        (["bogus"], "invalid choice"),
    ],
)
def test_usage_errors_are_one_line(
    argv: List[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


# Each number option with a value it refuses and the message, or a value it takes and the
# number it becomes: NaN is refused by every bound, infinity only by "a positive number".
_SERVE = ["serve", "--bind", "127.0.0.1:0"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--tasks", "x"], "argument --tasks: 'x' is not an integer"),
        (["demo", "--tasks", "1.5"], "argument --tasks: '1.5' is not an integer"),
        (["demo", "--tasks", "-3"], "argument --tasks: '-3' must be positive"),
        (["demo", "--timeout", "soon"], "argument --timeout: 'soon' is not a number"),
        (["demo", "--timeout", "0"], "argument --timeout: '0' must be a positive number"),
        (["demo", "--timeout", "inf"], "argument --timeout: 'inf' must be a positive number"),
        (["demo", "--timeout", "nan"], "argument --timeout: 'nan' must be a positive number"),
        ([*_SERVE, "--grace", "-1"], "argument --grace: '-1' must be zero or more"),
        ([*_SERVE, "--grace", "nan"], "argument --grace: 'nan' must be zero or more"),
        ([*_SERVE, "--summary-interval", "x"], "argument --summary-interval: 'x' is not a number"),
        ([*_SERVE, "--threads", "0"], "argument --threads: '0' must be positive"),
        (
            [*_SERVE, "--max-buffered-bytes", "-1"],
            "argument --max-buffered-bytes: '-1' must be zero or more",
        ),
    ],
)
def test_number_options_refuse_out_of_range_values(
    argv: List[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f"error: {message} (see wove-h2grpc {argv[0]} --help)\n"), err


@pytest.mark.parametrize(
    ("argv", "name", "value"),
    [
        (["demo", "--tasks", "7"], "tasks", 7),
        (["demo", "--timeout", "0.5"], "timeout", 0.5),
        ([*_SERVE, "--grace", "0"], "grace", 0.0),
        ([*_SERVE, "--grace", "inf"], "grace", float("inf")),
        ([*_SERVE, "--summary-interval", "2.5"], "summary_interval", 2.5),
        ([*_SERVE, "--max-concurrent-streams", "1"], "max_concurrent_streams", 1),
        ([*_SERVE, "--max-buffered-bytes", "0"], "max_buffered_bytes", 0),
        (_SERVE, "max_buffered_bytes", 256 * 1024 * 1024),
    ],
)
def test_number_options_take_values_in_range(argv: List[str], name: str, value: float) -> None:
    parsed = getattr(build_parser().parse_args(argv), name)
    assert parsed == value and type(parsed) is type(value)


# -- serve refusals ----------------------------------------------------------------------


def test_is_local_bind() -> None:
    for local in ("127.0.0.1:0", "localhost:9000", "[::1]:0", "127.0.0.2:1", "unix:/tmp/x.sock"):
        assert is_local_bind(local), local
    for remote in ("0.0.0.0:0", "[::]:0", "192.0.2.1:9000", "workers.internal:9000"):
        assert not is_local_bind(remote), remote


# 192.0.2.1 is TEST-NET-1 (RFC 5737), never a local address: even a broken refusal could
# not bind it, so this test never listens beyond loopback.
@pytest.mark.parametrize(
    ("extra", "missing"),
    [
        ([], "without TLS (--tls-cert/--tls-key) and --security"),
        (["--security", "env:WOVE_CLI_TEST_SECRET"], "without TLS"),
    ],
)
def test_serve_refuses_a_non_loopback_bind_without_tls_and_security(
    extra: List[str],
    missing: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WOVE_CLI_TEST_SECRET", SECRET)
    assert main(["serve", "--bind", "192.0.2.1:9000", *extra]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "refusing to serve on non-loopback address 192.0.2.1:9000" in err
    assert missing in err and "--insecure" in err


def test_serve_refuses_tls_without_security(
    certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--bind", "192.0.2.1:9000"]
    argv += ["--tls-cert", certs.server_cert_file, "--tls-key", certs.server_key_file]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without --security" in err, err


def test_unsafe_bind_exits_non_zero_as_a_process() -> None:
    result = _run_cli(["serve", "--bind", "192.0.2.1:9000"], timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("wove-h2grpc serve: error: refusing")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["serve", "--bind", "nonsense"], "--bind"),
        (["serve", "--bind", "127.0.0.1:0", "--tls-cert", "x.pem"], "together"),
        (["serve", "--bind", "127.0.0.1:0", "--client-ca", "ca.pem"], "--client-ca needs TLS"),
        (["serve", "--bind", "127.0.0.1:0", "--security", "env:WOVE_CLI_UNSET_VAR"], "not set"),
        (["serve", "--bind", "127.0.0.1:0", "--security", "{oops"], "invalid JSON"),
        (
            ["serve", "--bind", "127.0.0.1:0", "--tls-cert", "/nope.pem", "--tls-key", "/no.key"],
            "cannot load TLS file --tls-cert /nope.pem: No such file or directory",
        ),
        (["serve", "--bind", "unix:relative.sock"], "--bind: unix socket path 'relative.sock'"),
    ],
)
def test_serve_configuration_errors_are_one_line(
    argv: List[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ.pop("WOVE_CLI_UNSET_VAR", None)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


def _tls_argv(cert: str, key: str, client_ca: Optional[str] = None) -> List[str]:
    argv = ["serve", "--bind", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key]
    return argv + (["--client-ca", client_ca] if client_ca else [])


def test_missing_tls_files_are_named(
    certs: Certs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.pem")
    cases = [
        (_tls_argv(certs.server_cert_file, missing), f"--tls-key {missing}: No such file"),
        (_tls_argv(missing, certs.server_key_file), f"--tls-cert {missing}: No such file"),
        (
            _tls_argv(certs.server_cert_file, certs.server_key_file, missing),
            f"--client-ca {missing}: No such file",
        ),
        (_tls_argv(str(tmp_path), certs.server_key_file), f"--tls-cert {tmp_path}: Is a directory"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith(f"wove-h2grpc serve: error: cannot load TLS file {fragment}"), err


def test_unusable_tls_files_are_named(
    certs: Certs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    # The client's key does not belong to the server's certificate.
    for argv, fragment in [
        (
            _tls_argv(str(garbage), certs.server_key_file),
            f"--tls-cert {garbage} and --tls-key {certs.server_key_file}",
        ),
        (
            _tls_argv(certs.server_cert_file, certs.client_key_file),
            f"--tls-cert {certs.server_cert_file} and --tls-key {certs.client_key_file}",
        ),
        (
            _tls_argv(certs.server_cert_file, certs.server_key_file, str(garbage)),
            f"--client-ca {garbage}",
        ),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert fragment in err, err


def test_serve_help_lists_every_security_form(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for form in ("env:VARIABLE", "none", '{"type": "bearer", "token_env": "TOKEN"}'):
        assert form in text, form


def test_security_none_serves_unsigned_requests_on_loopback(processes: List[CliProcess]) -> None:
    cli = CliProcess(["serve", "--bind", "127.0.0.1:0", "--security", "none"])
    processes.append(cli)
    port = cli.wait_for_port()
    assert "security: none" in cli.lines[0]
    body = encode_command(_run_frame("n1", pow, {"base": 2, "exp": 5}))

    async def call() -> bytes:
        async with Channel(f"127.0.0.1:{port}") as channel:
            return await channel.unary_unary(DEFAULT_METHOD)(body, timeout=20)

    assert decode_events(asyncio.run(call()))[-1]["result"] == 32
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=15) == 0


def test_unsigned_warning_names_the_bound_port(processes: List[CliProcess]) -> None:
    cli = CliProcess(["serve", "--bind", "localhost:0"])
    processes.append(cli)
    port = cli.wait_for_port()
    assert port != 0
    deadline = time.monotonic() + 10
    while not any("unsigned" in line for line in cli.stderr_lines):
        assert time.monotonic() < deadline, cli.stderr_lines
        time.sleep(0.05)
    warning = next(line for line in cli.stderr_lines if "unsigned" in line)
    assert f"anyone who can connect to localhost:{port} can run code here" in warning, warning
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=15) == 0


# -- serve: answering and stopping -------------------------------------------------------


def test_serve_answers_a_signed_call_and_stops_on_sigterm(processes: List[CliProcess]) -> None:
    cli = CliProcess(
        ["serve", "--bind", "127.0.0.1:0", "--security", "env:WOVE_CLI_TEST_SECRET"],
        env={"WOVE_CLI_TEST_SECRET": SECRET},
    )
    processes.append(cli)
    port = cli.wait_for_port()
    assert "security: signed" in cli.lines[0]
    events = decode_events(
        asyncio.run(_signed_call(port, _run_frame("r1", pow, {"base": 3, "exp": 4})))
    )
    assert [e["type"] for e in events] == ["task_started", "task_result"]
    assert events[1]["result"] == 81

    with pytest.raises(GrpcError) as info:
        asyncio.run(_signed_call(port, _run_frame("r2", pow, {"base": 1, "exp": 1}), secret="bad"))
    assert info.value.code() == StatusCode.UNAUTHENTICATED

    started = time.monotonic()
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert cli.lines[-1] == "wove-h2grpc: stopped"


def test_serve_sigterm_lets_an_in_flight_task_finish(processes: List[CliProcess]) -> None:
    cli = CliProcess(["serve", "--bind", "127.0.0.1:0", "--grace", "10"])
    processes.append(cli)
    port = cli.wait_for_port()

    async def scenario() -> bytes:
        # Unsigned requests are accepted on a loopback bind without --security.
        body = encode_command(_run_frame("slow", _slow_task, {"seconds": 1.0}))
        async with Channel(f"127.0.0.1:{port}") as channel:
            call = asyncio.ensure_future(channel.unary_unary(DEFAULT_METHOD)(body, timeout=20))
            await asyncio.sleep(0.3)
            cli.proc.send_signal(signal.SIGTERM)
            return await asyncio.wait_for(call, 20)

    events = decode_events(asyncio.run(scenario()))
    assert events[-1]["type"] == "task_result"
    assert events[-1]["result"] == "finished after 1.0 s"
    assert cli.wait(timeout=15) == 0


def test_serve_tls_with_client_certificates(certs: Certs, processes: List[CliProcess]) -> None:
    cli = CliProcess(
        [
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--tls-cert",
            certs.server_cert_file,
            "--tls-key",
            certs.server_key_file,
            "--client-ca",
            certs.ca_file,
            "--security",
            "env:WOVE_CLI_TEST_SECRET",
        ],
        env={"WOVE_CLI_TEST_SECRET": SECRET},
    )
    processes.append(cli)
    port = cli.wait_for_port()
    assert "(mTLS, security: signed)" in cli.lines[0]
    frame = _run_frame("tls", divmod, {})
    events = decode_events(asyncio.run(_signed_call(port, frame, secure=True, certs=certs)))
    assert events[-1]["type"] == "task_error"  # divmod() without arguments: a TypeError
    assert events[-1]["error"]["kind"] == "TypeError"
    cli.proc.send_signal(signal.SIGINT)
    assert cli.wait(timeout=15) == 0


# -- serve: progress logs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "level", "log_format", "log_h2"),
    [
        (["serve", "--bind", "x:1"], None, None, False),
        (["--log-level", "debug", "serve", "--bind", "x:1"], "debug", None, False),
        (["serve", "--log-level", "info", "--bind", "x:1"], "info", None, False),
        (["serve", "--bind", "x:1", "--log-format", "json", "--log-h2"], None, "json", True),
        (["--log-level", "error", "demo", "--log-level", "debug"], "debug", None, False),
        (["--log-format", "json", "--log-h2", "demo"], None, "json", True),
    ],
)
def test_logging_options_before_or_after_the_command(
    argv: List[str], level: Optional[str], log_format: Optional[str], log_h2: bool
) -> None:
    args = build_parser().parse_args(argv)
    assert (args.log_level, args.log_format, args.log_h2) == (level, log_format, log_h2)


def _wait_for(lines: List[str], predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for line in list(lines):
            if predicate(line):
                return line
        assert time.monotonic() < deadline, lines[-20:]
        time.sleep(0.05)


def test_serve_logs_one_line_per_run_and_says_how_to_stop(processes: List[CliProcess]) -> None:
    cli = CliProcess(
        ["serve", "--bind", "127.0.0.1:0", "--security", "env:WOVE_CLI_TEST_SECRET"],
        env={"WOVE_CLI_TEST_SECRET": SECRET},
    )
    processes.append(cli)
    port = cli.wait_for_port()
    assert cli.lines[0].endswith(f"; stop with Ctrl+C or kill -TERM {cli.proc.pid}"), cli.lines
    asyncio.run(_signed_call(port, _run_frame("logged:1", pow, {"base": 2, "exp": 3})))
    asyncio.run(_signed_call(port, _run_frame("logged:2", divmod, {})))
    ok = _wait_for(cli.stderr_lines, lambda line: "run logged:1 " in line)
    assert re.search(
        r" INFO wove_h2grpc\.wove\.worker: run logged:1 task t from ipv4:127\.0\.0\.1:\d+: "
        r"result in [0-9.]+ ms$",
        ok,
    ), ok
    failed = _wait_for(cli.stderr_lines, lambda line: "run logged:2 " in line)
    assert ": error (TypeError: " in failed, failed
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=15) == 0
    final = _wait_for(cli.stderr_lines, lambda line: "served " in line)
    assert final.endswith("served 2 runs (1 result, 1 error, 0 cancelled), 0 refused"), final
    assert not any(" hpack" in line or " h2." in line for line in cli.stderr_lines)


def test_serve_json_logs_with_periodic_summaries(processes: List[CliProcess]) -> None:
    cli = CliProcess(
        [
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--security",
            "env:WOVE_CLI_TEST_SECRET",
            "--log-format",
            "json",
            "--summary-interval",
            "0.3",
        ],
        env={"WOVE_CLI_TEST_SECRET": SECRET},
    )
    processes.append(cli)
    port = cli.wait_for_port()
    asyncio.run(_signed_call(port, _run_frame("json:1", pow, {"base": 3, "exp": 2})))
    with pytest.raises(GrpcError):
        asyncio.run(_signed_call(port, _run_frame("json:2", pow, {}), secret="wrong"))
    summary = json.loads(
        _wait_for(
            cli.stderr_lines,
            lambda line: '"summary": "interval"' in line and '"runs_total": 1' in line,
        )
    )
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=15) == 0
    records = [json.loads(line) for line in cli.stderr_lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    (run,) = [r for r in records if r.get("run_id") == "json:1"]
    assert run["level"] == "INFO" and run["logger"] == "wove_h2grpc.wove.worker"
    assert (run["task"], run["outcome"]) == ("t", "result")
    assert run["peer"].startswith("ipv4:127.0.0.1:") and run["duration_ms"] >= 0
    (refused,) = [r for r in records if r.get("outcome") == "refused"]
    assert refused["status"] == "UNAUTHENTICATED" and refused["level"] == "WARNING"
    assert summary["logger"] == "wove_h2grpc.cli" and summary["interval_s"] == 0.3
    assert summary["message"].startswith("summary of the last 0.3 s: ")
    assert summary["refused_total"] == 1 and summary["running"] == 0
    (final,) = [r for r in records if r.get("summary") == "final"]
    assert (final["runs_total"], final["results"], final["refused_total"]) == (1, 1, 1)


@pytest.mark.parametrize("log_h2", [False, True])
def test_debug_logs_leave_out_h2_internals_unless_asked(
    log_h2: bool, processes: List[CliProcess]
) -> None:
    argv = ["serve", "--bind", "127.0.0.1:0", "--log-level", "debug"]
    cli = CliProcess(argv + (["--log-h2"] if log_h2 else []))
    processes.append(cli)
    port = cli.wait_for_port()
    body = encode_command(_run_frame("dbg:1", pow, {"base": 2, "exp": 2}))

    async def call() -> bytes:
        async with Channel(f"127.0.0.1:{port}") as channel:
            return await channel.unary_unary(DEFAULT_METHOD)(body, timeout=20)

    asyncio.run(call())
    _wait_for(cli.stderr_lines, lambda line: "run dbg:1 " in line)
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=15) == 0
    h2_lines = [line for line in cli.stderr_lines if re.search(r" DEBUG (h2|hpack)[.:]", line)]
    if log_h2:
        assert len(h2_lines) > 10, cli.stderr_lines
    else:
        assert h2_lines == [], h2_lines
        assert len(cli.stderr_lines) < 30, cli.stderr_lines


# -- demo --------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_demo_exits_zero_with_correct_results(codec: str) -> None:
    result = _run_cli(["demo", "--tasks", "7", "--codec", codec])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "square: [0, 1, 4, 9, 16, 25, 36] (7 results)" in out
    assert "total: 91 (expected 91)" in out
    assert re.search(r"timing: 8 tasks in [0-9.]+ ms over h2 .*codec " + codec, out), out
    assert out.rstrip().endswith("demo OK")


@pytest.mark.parametrize("maker", ["openssl", "trustme"])
def test_demo_tls_with_throwaway_certificates(maker: str, tmp_path: Path) -> None:
    env = {"TMPDIR": str(tmp_path)}
    if maker == "openssl":
        if shutil.which("openssl") is None:
            pytest.skip("no openssl command on PATH here")
    else:
        env["PATH"] = str(tmp_path / "no-openssl-here")  # the interpreter's path is absolute
    result = _run_cli(["demo", "--tls", "--tasks", "4"], env_extra=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"(TLS with throwaway certificates from {maker}, signed requests, random secret)" in out
    assert "square: [0, 1, 4, 9] (4 results)" in out
    assert re.search(r"timing: 5 tasks in [0-9.]+ ms over h2 with TLS ", out), out
    assert out.rstrip().endswith("demo OK")
    assert list(tmp_path.glob("wove-h2grpc-demo-*")) == []  # the certificates are gone


def test_demo_tls_without_openssl_or_trustme_is_a_one_line_error(tmp_path: Path) -> None:
    hidden = tmp_path / "hide"
    (hidden / "trustme").mkdir(parents=True)
    (hidden / "trustme" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {"PATH": str(tmp_path / "empty"), "PYTHONPATH": str(hidden)}
    result = _run_cli(["demo", "--tls"], env_extra=env)
    assert result.returncode == 1
    assert result.stderr == (
        "wove-h2grpc demo: error: --tls makes throwaway certificates with the openssl command, "
        "which is not on PATH, or with the trustme package, which is not installed "
        "(pip install trustme)\n"
    )


def test_demo_certificates_are_verified_for_127_0_0_1(tmp_path: Path) -> None:
    import ssl

    from wove_h2grpc.cli.certs import demo_certificates

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command on PATH here")
    cert, key, ca_pem, maker = demo_certificates(str(tmp_path))
    assert maker == "openssl"
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    # The client's defaults, strict X.509 checks on Python 3.13 included.
    client = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    for name in ("127.0.0.1", "localhost"):
        peer = _handshake(client, server, name)
        assert peer["subject"] == ((("commonName", "localhost"),),)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(client, server, "example.com")


def _handshake(client: Any, server: Any, name: str) -> Any:
    """A TLS handshake between two in-memory SSLObjects (no socket); the server's cert."""
    import ssl

    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_hostname=name)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    finished = set()
    for _ in range(20):
        for side in (client_side, server_side):
            if side in finished:
                continue
            try:
                side.do_handshake()
                finished.add(side)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(finished) == 2:
            return client_side.getpeercert()
    raise AssertionError("TLS handshake did not finish")


def test_demo_without_arguments() -> None:
    result = _run_cli(["demo"])
    assert result.returncode == 0, result.stderr
    assert "total: 2470 (expected 2470)" in result.stdout  # sum of squares 0..19


def test_serve_on_a_busy_port_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--bind", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"wove-h2grpc serve: error: cannot listen on 127.0.0.1:{port}")


def test_sigterm_stops_in_bounded_time_even_with_a_stuck_sync_task(
    processes: List[CliProcess],
) -> None:
    cli = CliProcess(["serve", "--bind", "127.0.0.1:0", "--grace", "0.5", "--threads", "2"])
    processes.append(cli)
    port = cli.wait_for_port()

    async def scenario() -> StatusCode:
        body = encode_command(_run_frame("stuck", _slow_task, {"seconds": 120.0}))
        async with Channel(f"127.0.0.1:{port}") as channel:
            call = asyncio.ensure_future(channel.unary_unary(DEFAULT_METHOD)(body, timeout=60))
            await asyncio.sleep(0.5)
            cli.proc.send_signal(signal.SIGTERM)
            with pytest.raises(GrpcError) as info:
                await asyncio.wait_for(call, 20)
            return info.value.code()

    started = time.monotonic()
    code = asyncio.run(scenario())
    assert code in {StatusCode.CANCELLED, StatusCode.UNAVAILABLE}
    assert cli.wait(timeout=20) == 0
    assert time.monotonic() - started < 15
    assert cli.lines[-1] == "wove-h2grpc: stopped"
    assert any("still running" in line for line in cli.stderr_lines), cli.stderr_lines


def test_demo_gives_up_at_its_timeout() -> None:
    result = _run_cli(["demo", "--tasks", "3000", "--timeout", "0.05"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "wove-h2grpc demo: error: the demo weave did not finish within 0.05 s"
    )


# -- --loop uvloop -----------------------------------------------------------------------

_HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
needs_uvloop = pytest.mark.skipif(not _HAS_UVLOOP, reason="uvloop is not installed")


@needs_uvloop
def test_demo_on_uvloop_says_so_in_its_timing_line() -> None:
    result = _run_cli(["demo", "--loop", "uvloop", "--tasks", "3"])
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"timing: 4 tasks in [0-9.]+ ms over h2 .*codec json, on uvloop\)", result.stdout
    )
    assert result.stdout.rstrip().endswith("demo OK")


@needs_uvloop
def test_serve_on_uvloop_answers_and_stops_on_sigterm(processes: List[CliProcess]) -> None:
    cli = CliProcess(
        [
            "serve",
            "--loop",
            "uvloop",
            "--bind",
            "127.0.0.1:0",
            "--security",
            "env:WOVE_CLI_TEST_SECRET",
        ],
        env={"WOVE_CLI_TEST_SECRET": SECRET},
    )
    processes.append(cli)
    port = cli.wait_for_port()
    events = decode_events(
        asyncio.run(_signed_call(port, _run_frame("uv1", pow, {"base": 2, "exp": 5})))
    )
    assert events[-1]["result"] == 32
    cli.proc.send_signal(signal.SIGTERM)  # uvloop's own signal handling stops it
    assert cli.wait(timeout=15) == 0
    assert cli.lines[-1] == "wove-h2grpc: stopped"


@pytest.mark.parametrize("command", [["demo"], ["serve", "--bind", "127.0.0.1:0"]])
def test_loop_uvloop_without_uvloop_is_a_one_line_error(command: List[str], tmp_path: Path) -> None:
    hidden = tmp_path / "hide"
    (hidden / "uvloop").mkdir(parents=True)
    (hidden / "uvloop" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    result = _run_cli([*command, "--loop", "uvloop"], env_extra={"PYTHONPATH": str(hidden)})
    assert result.returncode == 1
    assert result.stdout == ""  # nothing started
    assert result.stderr == (
        f"wove-h2grpc {command[0]}: error: --loop uvloop: uvloop is not installed (hidden by "
        "the test); pip install 'wove_h2grpc[speed]' (CPython on Linux or macOS)\n"
    )


def test_loop_choices_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--loop", "trio"])
    assert info.value.code == 2
    assert "invalid choice: 'trio'" in capsys.readouterr().err
    assert build_parser().parse_args(["demo"]).loop == "asyncio"


def test_nothing_imports_uvloop_unless_asked() -> None:
    code = (
        "import sys\n"
        "import wove_h2grpc, wove_h2grpc.server, wove_h2grpc.worker, wove_h2grpc.health\n"
        "from wove_h2grpc.cli import main\n"
        "assert main(['demo', '--tasks', '2']) == 0\n"
        "assert 'uvloop' not in sys.modules, 'uvloop was imported'\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
