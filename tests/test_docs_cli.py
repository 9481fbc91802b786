"""The command-line output shown in the docs is what the commands print.

Every ``text`` block of ``docs/*.md`` that starts with ``$ wove-h2grpc demo ...`` is run as
written and compared line by line with what it prints (stdout and stderr together), after
the parts that differ from run to run (times, ports, process and run ids, durations) are
replaced. The ``serve`` log sample of docs/worker.md is replayed against a real ``serve``
process: two runs, one refused request, a summary, SIGTERM. The worker page's option tables
list every option the parsers accept.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Dict, List, Tuple

import pytest
import wove
import wove_tasks
from _cli_support import CliProcess
from _support import REPO_DIR, TESTS_DIR

from wove_h2grpc import H2GrpcExecutor
from wove_h2grpc.cli.logs import JsonFormatter
from wove_h2grpc.cli.parser import build_parser
from wove_h2grpc.wove.codec import encode_command
from wove_h2grpc.wove.worker import WorkerService

DOCS = REPO_DIR / "docs"
PROMPT = "$ "


def _text_blocks() -> List[Tuple[str, List[str]]]:
    """(page, lines) of every ``text`` block in the docs that starts with a ``$`` command."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r"^```text\n(.*?)^```", text, re.S | re.M):
            lines = block.rstrip("\n").split("\n")
            if lines[0].startswith(PROMPT):
                found.append((page.name, lines))
    return found


BLOCKS = _text_blocks()
DEMO_BLOCKS = [(page, lines) for page, lines in BLOCKS if lines[0].startswith("$ wove-h2grpc demo")]
(SERVE_BLOCK,) = [lines for page, lines in BLOCKS if " wove-h2grpc serve " in lines[0]]


def normalize(line: str) -> str:
    """A line with what differs between runs replaced: times, ids, then every number."""
    line = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d{3}Z?", "<time>", line)
    line = re.sub(r"\b[0-9a-f]{32}\b", "<id>", line)
    # Which maker --tls used depends on the machine (openssl, else trustme).
    line = line.replace("certificates from trustme", "certificates from openssl")
    return re.sub(r"\d+(\.\d+)?", "<n>", line)


def _argv(command: str) -> Tuple[Dict[str, str], List[str]]:
    """``$ [VAR=value ...] wove-h2grpc ARGS`` -> (environment, ARGS)."""
    words = shlex.split(command[len(PROMPT) :])
    env: Dict[str, str] = {}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[0] == "wove-h2grpc", command
    return env, words[1:]


def _cli_env(extra: Dict[str, str]) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def test_the_docs_show_the_demo_outputs() -> None:
    pages = {(page, lines[0]) for page, lines in DEMO_BLOCKS}
    assert ("quickstart.md", "$ wove-h2grpc demo") in pages
    assert ("wove.md", "$ wove-h2grpc demo --tls --tasks 5") in pages
    assert ("worker.md", "$ wove-h2grpc demo --tasks 2 --log-level info") in pages


@pytest.mark.parametrize(("page", "lines"), DEMO_BLOCKS, ids=[b[1][0] for b in DEMO_BLOCKS])
def test_demo_output_in_the_docs_is_what_it_prints(page: str, lines: List[str]) -> None:
    env, args = _argv(lines[0])
    done = subprocess.run(
        [sys.executable, "-m", "wove_h2grpc", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        env=_cli_env(env),
    )
    assert done.returncode == 0, done.stdout
    shown = [normalize(line) for line in lines[1:]]
    printed = [normalize(line) for line in done.stdout.rstrip("\n").split("\n")]
    assert printed == shown, f"{page}: {lines[0]}\n{done.stdout}"


def test_serve_log_sample_in_the_docs_is_what_serve_logs() -> None:
    env, args = _argv(SERVE_BLOCK[0])
    secret_var = next(iter(env))
    env[secret_var] = "docs-sample-secret"
    # The sample's fixed port, any free one here (numbers are compared as shapes).
    args = [re.sub(r":\d+$", ":0", a) if a.startswith("127.0.0.1:") else a for a in args]
    # The serve process imports the sample's task module (tests/wove_tasks.py) by name.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_DIR), str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p
    )
    cli = CliProcess(args, env=env)
    try:
        port = cli.wait_for_port()
        _weave(port, "docs-sample-secret", 2, expect_error=False)
        _weave(port, "another-secret", 1, expect_error=True)
        # Stop right after the first summary, as in the sample (the next is 2 s later).
        deadline = time.monotonic() + 15
        while not any("summary of the last" in line for line in cli.stderr_lines):
            assert time.monotonic() < deadline, cli.stderr_lines
            time.sleep(0.02)
        cli.proc.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=15) == 0
    finally:
        cli.kill()
    shown = sorted(normalize(line) for line in SERVE_BLOCK[1:])
    printed = sorted(normalize(line) for line in cli.lines + cli.stderr_lines)
    assert printed == shown, "\n".join(cli.lines + cli.stderr_lines)


def _weave(port: int, secret: str, items: int, *, expect_error: bool) -> None:
    wove.config(
        environments={
            "docs_sample": {
                "executor": H2GrpcExecutor(),
                "executor_config": {
                    "target": f"127.0.0.1:{port}",
                    "security": {"type": "signed", "secret": secret},
                    "timeout": 20,
                },
            }
        }
    )

    async def run() -> None:
        async with wove.weave() as w:
            w.do(range(items), environment="docs_sample")(wove_tasks.square)
        try:
            assert w.result.square == [i * i for i in range(items)]
        except Exception as exc:
            assert expect_error, exc
            assert "UNAUTHENTICATED" in str(exc)
        else:
            assert not expect_error

    asyncio.run(asyncio.wait_for(run(), 60))


async def test_json_log_sample_in_the_docs_has_the_fields_of_a_run_line() -> None:
    text = (DOCS / "worker.md").read_text(encoding="utf-8")
    (sample,) = re.findall(r"^```text\n(\{.*?\})\n```", text, re.S | re.M)
    shown = json.loads(sample)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    worker_logger = logging.getLogger("wove_h2grpc.wove.worker")
    old_level = worker_logger.level
    worker_logger.addHandler(handler)
    worker_logger.setLevel(logging.INFO)
    try:
        service = WorkerService(allow_unsigned=True)
        frame = {
            "type": "run_task",
            "run_id": "square:" + "0" * 32,
            "task_id": "square",
            "callable": wove_tasks.square,
            "args": {"item": 3},
        }
        await service.handle(encode_command(frame), peer="ipv4:127.0.0.1:34140")
    finally:
        worker_logger.removeHandler(handler)
        worker_logger.setLevel(old_level)
    (line,) = stream.getvalue().splitlines()
    logged = json.loads(line)
    assert list(logged) == list(shown)
    assert normalize(logged["message"]) == normalize(shown["message"])
    assert {k: v for k, v in logged.items() if isinstance(v, str) and k != "time"}.keys() == {
        k for k, v in shown.items() if isinstance(v, str) and k != "time"
    }


def test_worker_page_lists_every_command_line_option() -> None:
    text = (DOCS / "worker.md").read_text(encoding="utf-8")
    parser = build_parser()
    assert parser._subparsers is not None
    commands = parser._subparsers._group_actions[0].choices
    parsers = {"": parser, **commands}  # type: ignore[dict-item]
    missing = []
    for name, command in parsers.items():
        for action in command._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and f"`{option}" not in text:
                    missing.append(f"{name} {option}".strip())
    assert missing == []
