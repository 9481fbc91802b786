"""gRPC status codes and the mapping of HTTP/2 outcomes onto them.

Pure tables, no IO: the gRPC PROTOCOL-HTTP2 spec and ``http-grpc-status-mapping.md``
fix how a non-gRPC HTTP status, a RST_STREAM code or a GOAWAY code becomes a status.
"""

from __future__ import annotations

import enum

__all__ = [
    "StatusCode",
    "parse_grpc_status",
    "status_from_h2_error",
    "status_from_http",
]


class StatusCode(enum.IntEnum):
    """gRPC status codes, named as grpcio names them, with their wire values."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# http-grpc-status-mapping.md: used only when the response carries no grpc-status.
_HTTP_TO_STATUS = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}

# HTTP/2 error codes (RFC 9113 section 7) by value, for messages.
H2_ERROR_NAMES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}

# PROTOCOL-HTTP2 "Errors": RST_STREAM / GOAWAY code -> status; the rest -> INTERNAL.
_H2_TO_STATUS = {
    0x7: StatusCode.UNAVAILABLE,  # REFUSED_STREAM: the server did not process the stream
    0x8: StatusCode.CANCELLED,  # CANCEL
    0xB: StatusCode.RESOURCE_EXHAUSTED,  # ENHANCE_YOUR_CALM
    0xC: StatusCode.PERMISSION_DENIED,  # INADEQUATE_SECURITY
}


def status_from_http(http_status: int) -> StatusCode:
    """Map an HTTP status of a response without ``grpc-status`` to a gRPC status."""
    return _HTTP_TO_STATUS.get(http_status, StatusCode.UNKNOWN)


def status_from_h2_error(error_code: int) -> StatusCode:
    """Map a RST_STREAM or GOAWAY error code to the gRPC status the caller sees."""
    return _H2_TO_STATUS.get(int(error_code), StatusCode.INTERNAL)


def h2_error_name(error_code: int) -> str:
    """Name of an HTTP/2 error code, or its hex value when the code is unknown."""
    return H2_ERROR_NAMES.get(int(error_code), f"0x{int(error_code):x}")


_BY_VALUE = tuple(sorted(StatusCode, key=int))  # wire values 0-16, in order


def parse_grpc_status(value: str) -> StatusCode:
    """Parse a ``grpc-status`` header value; ValueError when it is not a decimal code.

    Codes outside 0-16 become UNKNOWN, as grpcio does for unknown codes.
    """
    # ASCII digits only: str.isdigit() also accepts '²' and other scripts' digits.
    if not value or len(value) > 10 or not value.isascii() or not value.isdigit():
        raise ValueError(f"grpc-status is not a decimal status code: {value!r}")
    code = int(value)
    # A tuple index, not StatusCode(code): the enum call costs more than the whole parse.
    return _BY_VALUE[code] if code < len(_BY_VALUE) else StatusCode.UNKNOWN
