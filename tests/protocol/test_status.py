"""StatusCode values and the HTTP / HTTP/2 error-code mappings the gRPC HTTP/2 spec fixes."""

from __future__ import annotations

import pytest

from wove_h2grpc import StatusCode
from wove_h2grpc.protocol.status import (
    h2_error_name,
    parse_grpc_status,
    status_from_h2_error,
    status_from_http,
)

GRPCIO_NAMES = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
]


def test_status_codes_have_grpcio_names_and_wire_values() -> None:
    assert [code.name for code in StatusCode] == GRPCIO_NAMES
    assert [int(code) for code in StatusCode] == list(range(17))
    assert StatusCode(14) is StatusCode.UNAVAILABLE
    assert StatusCode.UNAVAILABLE == 14  # IntEnum: compares with the wire value


@pytest.mark.parametrize(
    ("http_status", "expected"),
    [
        (400, StatusCode.INTERNAL),
        (401, StatusCode.UNAUTHENTICATED),
        (403, StatusCode.PERMISSION_DENIED),
        (404, StatusCode.UNIMPLEMENTED),
        (429, StatusCode.UNAVAILABLE),
        (502, StatusCode.UNAVAILABLE),
        (503, StatusCode.UNAVAILABLE),
        (504, StatusCode.UNAVAILABLE),
        (418, StatusCode.UNKNOWN),
        (500, StatusCode.UNKNOWN),
        (301, StatusCode.UNKNOWN),
        (200, StatusCode.UNKNOWN),  # only consulted when grpc-status is missing
    ],
)
def test_status_from_http(http_status: int, expected: StatusCode) -> None:
    assert status_from_http(http_status) is expected


H2_CODES = {
    0x0: ("NO_ERROR", StatusCode.INTERNAL),
    0x1: ("PROTOCOL_ERROR", StatusCode.INTERNAL),
    0x2: ("INTERNAL_ERROR", StatusCode.INTERNAL),
    0x3: ("FLOW_CONTROL_ERROR", StatusCode.INTERNAL),
    0x4: ("SETTINGS_TIMEOUT", StatusCode.INTERNAL),
    0x5: ("STREAM_CLOSED", StatusCode.INTERNAL),
    0x6: ("FRAME_SIZE_ERROR", StatusCode.INTERNAL),
    0x7: ("REFUSED_STREAM", StatusCode.UNAVAILABLE),
    0x8: ("CANCEL", StatusCode.CANCELLED),
    0x9: ("COMPRESSION_ERROR", StatusCode.INTERNAL),
    0xA: ("CONNECT_ERROR", StatusCode.INTERNAL),
    0xB: ("ENHANCE_YOUR_CALM", StatusCode.RESOURCE_EXHAUSTED),
    0xC: ("INADEQUATE_SECURITY", StatusCode.PERMISSION_DENIED),
    0xD: ("HTTP_1_1_REQUIRED", StatusCode.INTERNAL),
}


@pytest.mark.parametrize("code", sorted(H2_CODES))
def test_status_from_h2_error(code: int) -> None:
    name, expected = H2_CODES[code]
    assert status_from_h2_error(code) is expected
    assert h2_error_name(code) == name


def test_h2_error_codes_accept_h2_enum_and_unknown_values() -> None:
    import h2.errors

    assert status_from_h2_error(h2.errors.ErrorCodes.REFUSED_STREAM) is StatusCode.UNAVAILABLE
    assert h2_error_name(h2.errors.ErrorCodes.CANCEL) == "CANCEL"
    assert status_from_h2_error(0x99) is StatusCode.INTERNAL
    assert h2_error_name(0x99) == "0x99"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", StatusCode.OK),
        ("14", StatusCode.UNAVAILABLE),
        ("16", StatusCode.UNAUTHENTICATED),
        ("016", StatusCode.UNAUTHENTICATED),
        ("17", StatusCode.UNKNOWN),  # out of range: as grpcio, UNKNOWN
        ("4294967295", StatusCode.UNKNOWN),
    ],
)
def test_parse_grpc_status(value: str, expected: StatusCode) -> None:
    assert parse_grpc_status(value) is expected


@pytest.mark.parametrize(
    "value", ["", "-1", " 0", "0 ", "1.0", "OK", "0x1", "12345678901", "²", "٣"]
)
def test_parse_grpc_status_malformed(value: str) -> None:
    with pytest.raises(ValueError, match="grpc-status is not a decimal status code"):
        parse_grpc_status(value)
