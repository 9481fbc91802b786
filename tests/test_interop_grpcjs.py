"""Interop with grpc-js (Node's @grpc/grpc-js), a third gRPC implementation, both directions.

- our ``Channel`` against a grpc-js ``TestService`` server (``tests/grpcjs/interop_server.js``,
  a helper process printing ``READY <port>``), one test per official interop case;
- the grpc-js interop client (``tests/grpcjs/interop_client.js``) against our ``Server``
  hosting ``TestService`` (``tests/grpcjs/our_server.py``), one test per case;
- the grpc-js client against the grpc-js server: the reference both sides are measured by.

Cases and server features are those of grpc/grpc doc/interop-test-descriptions.md; our side
of the cases is ``tests/interop_cases.py`` (shared with the grpcio interop tests); messages
are grpc.testing's, encoded here by the hand-made codec of ``tests/grpcjs/messages.py``.

grpc-js is installed into tests/grpcjs/node_modules by ``.ci/install-grpcjs.sh``. Without it
the module is skipped, unless ``WOVE_H2GRPC_REQUIRE_GRPCJS`` is set (CI's tests-grpcjs lane):
then anything missing (node, node_modules, the protos) fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from _support import TESTS_DIR, HelperProcess, start_helper
from grpcjs import messages as pb
from grpcjs.our_server import build_server
from interop_cases import (
    CASES,
    Case,
    M,
    custom_metadata_unary,
    parse_results,
    run_case,
    run_interop_client,
    status_code_and_message_unary,
)

from wove_h2grpc import Server

GRPCJS_DIR = TESTS_DIR / "grpcjs"
NODE_MODULES = GRPCJS_DIR / "node_modules"
PROTO_ROOT = Path(os.environ.get("WOVE_H2GRPC_INTEROP_PROTOS") or TESTS_DIR / "interop" / "protos")
REQUIRED = bool(os.environ.get("WOVE_H2GRPC_REQUIRE_GRPCJS"))
NODE = shutil.which("node")

CLIENT_TIMEOUT = 60.0  # one run of the grpc-js client process


def _missing() -> Optional[str]:
    """What the grpc-js tests lack on this machine, or None."""
    if not NODE_MODULES.is_dir():
        return f"{NODE_MODULES} is absent (run .ci/install-grpcjs.sh)"
    if NODE is None:
        return "node is not on PATH (run .ci/install-grpcjs.sh)"
    if not (PROTO_ROOT / "grpc" / "testing" / "test.proto").is_file():
        return f"the interop protos are absent from {PROTO_ROOT}"
    return None


@pytest.fixture(scope="module", autouse=True)
def grpcjs_available() -> None:
    reason = _missing()
    if reason is None:
        return
    if REQUIRED or NODE_MODULES.is_dir():
        pytest.fail(f"grpc-js interop cannot run: {reason}", pytrace=False)
    pytest.skip(f"grpc-js not installed: {reason}; WOVE_H2GRPC_REQUIRE_GRPCJS unset")


def _node_env() -> Dict[str, str]:
    return {"WOVE_H2GRPC_INTEROP_PROTOS": str(PROTO_ROOT)}


@pytest.fixture(scope="module")
def grpcjs_server(grpcjs_available: None) -> Iterator[HelperProcess]:
    assert NODE is not None
    proc = start_helper("grpcjs/interop_server.js", python=NODE, env=_node_env())
    yield proc
    proc.stop()


# ---------------------------------------------------------------------------------------------
# 1. Our Channel -> grpc-js server.


@pytest.mark.parametrize("name", list(CASES))
async def test_our_channel_against_grpcjs_server(name: str, grpcjs_server: HelperProcess) -> None:
    await run_case(CASES[name], grpcjs_server.port)


@pytest.mark.parametrize(
    "case",
    [
        custom_metadata_unary,
        status_code_and_message_unary,
    ],
    ids=lambda c: c.__name__,
)
async def test_our_channel_unary_parts_against_grpcjs_server(
    case: Case, grpcjs_server: HelperProcess
) -> None:
    """The unary halves of custom_metadata and status_code_and_message, on their own."""
    await run_case(case, grpcjs_server.port)


# ---------------------------------------------------------------------------------------------
# 2. grpc-js client -> our Server.


async def _grpcjs_client(port: int, cases: List[str]) -> Dict[str, Dict[str, Any]]:
    """Run the grpc-js interop client for ``cases`` (bounded); its result per case."""
    assert NODE is not None
    argv = [NODE, str(GRPCJS_DIR / "interop_client.js"), f"127.0.0.1:{port}"]
    env = {**os.environ, **_node_env()}
    return await run_interop_client(argv, cases, CLIENT_TIMEOUT, "grpc-js client", env=env)


# edge_spaces_status_message: a status message with leading/trailing spaces reaches grpc-js
# intact only because our grpc-message encoding percent-encodes them (Node's http2 drops a
# field value with edge whitespace, RFC 9113 section 8.2.1).
SERVER_CASE_PARAMS = list(CASES)


@pytest.mark.parametrize("name", SERVER_CASE_PARAMS)
async def test_grpcjs_client_against_our_server(name: str, grpcjs_available: None) -> None:
    server = build_server()
    port = await server.start("127.0.0.1:0")
    try:
        result = (await _grpcjs_client(port, [name]))[name]
    finally:
        await server.stop(grace=1.0)
    assert result["ok"], f"{name}: {result['error']}"


# ---------------------------------------------------------------------------------------------
# 3. grpc-js client -> grpc-js server: the helpers themselves agree with the spec.


def test_grpcjs_client_against_grpcjs_server(grpcjs_server: HelperProcess) -> None:
    assert NODE is not None
    proc = subprocess.run(
        [NODE, str(GRPCJS_DIR / "interop_client.js"), f"127.0.0.1:{grpcjs_server.port}", "all"],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        env={**os.environ, **_node_env()},
    )
    results = parse_results(proc.stdout)
    assert set(CASES) <= set(results), (proc.stdout, proc.stderr)
    failed = {name: r["error"] for name, r in results.items() if not r["ok"]}
    assert not failed
    assert proc.returncode == 0, proc.stderr


async def test_grpcjs_client_reports_failures(grpcjs_available: None) -> None:
    """The grpc-js client is not vacuous: a server that answers wrongly fails its cases."""

    async def short_unary(request: bytes, context: Any) -> bytes:
        return pb.simple_response(b"\0")  # one byte, whatever was asked

    server = Server({M + "UnaryCall": short_unary})  # EmptyCall left out: UNIMPLEMENTED
    port = await server.start("127.0.0.1:0")
    try:
        results = await _grpcjs_client(port, ["large_unary", "empty_unary"])
    finally:
        await server.stop(grace=1.0)
    assert not results["large_unary"]["ok"]
    assert "314159" in results["large_unary"]["error"]
    assert not results["empty_unary"]["ok"]
    assert "UNIMPLEMENTED" in results["empty_unary"]["error"]
