"""Interop: our ``Channel`` runs the official gRPC interop cases against a grpcio server.

The server is grpc.testing.TestService on grpc.aio (``tests/grpcio_interop.py server``), in its
own process on ``grpcio_python()`` so grpcio never loads here; its messages are protobuf's own,
generated at its start-up by grpc_tools.protoc. Our side of each case is the same code the
grpc-js interop runs (``tests/interop_cases.py``): the streaming cases (client_streaming,
server_streaming, ping_pong, empty_stream, cancel_after_begin, cancel_after_first_response,
timeout_on_sleeping_server, the streaming halves of custom_metadata and
status_code_and_message) and the cheap unary ones (empty_unary, large_unary,
special_status_message, unimplemented_method/service), one test per case.

The grpcio interop client against the same server checks that the helper itself implements the
server features as the reference client expects (so a failure above is ours, not the helper's).
"""

from __future__ import annotations

from typing import Iterator

import pytest
from _support import HelperProcess, grpcio_python, start_helper
from interop_cases import (
    CASES,
    Case,
    custom_metadata_unary,
    grpcio_interop_client,
    run_case,
    status_code_and_message_unary,
)


@pytest.fixture(scope="module")
def grpcio_server() -> Iterator[HelperProcess]:
    """grpc.testing.TestService on grpc.aio, 127.0.0.1, its own process."""
    proc = start_helper("grpcio_interop.py", ["server", "--port", "0"], python=grpcio_python())
    yield proc
    proc.stop()


@pytest.mark.parametrize("name", list(CASES))
async def test_our_channel_against_grpcio_server(name: str, grpcio_server: HelperProcess) -> None:
    await run_case(CASES[name], grpcio_server.port)


@pytest.mark.parametrize(
    "case",
    [custom_metadata_unary, status_code_and_message_unary],
    ids=lambda c: c.__name__,
)
async def test_our_channel_unary_parts_against_grpcio_server(
    case: Case, grpcio_server: HelperProcess
) -> None:
    """The unary halves of custom_metadata and status_code_and_message, on their own."""
    await run_case(case, grpcio_server.port)


async def test_grpcio_client_against_grpcio_server(grpcio_server: HelperProcess) -> None:
    """The reference: grpcio's client passes every case against the helper server."""
    results = await grpcio_interop_client(grpcio_server.port, list(CASES))
    failed = {name: r["error"] for name, r in results.items() if not r["ok"]}
    assert not failed
