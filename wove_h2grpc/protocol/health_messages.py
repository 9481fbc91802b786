"""The two messages of ``grpc.health.v1.Health``, hand-encoded (no protobuf dependency).

From ``grpc/health/v1/health.proto`` (proto3)::

    message HealthCheckRequest { string service = 1; }
    message HealthCheckResponse { ServingStatus status = 1; }
    enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }

Encoding follows the protobuf wire format as the generated classes write it: a field at its
default ("" or 0) is not written at all (proto3 implicit presence), so the request for the
overall server status and the UNKNOWN response are both empty messages. Decoding accepts
what a protobuf parser accepts: fields in any order, the last occurrence of a field wins,
unknown fields (every wire type, groups included) are skipped, a known field with another
wire type is treated as unknown, and an enum value outside the table is kept as its number
(proto3 enums are open). Malformed input (a truncated field, a varint longer than 10 bytes,
a length past the end, invalid UTF-8 in the string, an unmatched group) raises
:class:`HealthMessageError`, which the service answers with INVALID_ARGUMENT.
"""

from __future__ import annotations

import enum
from typing import Optional, Tuple, Union

__all__ = [
    "HealthMessageError",
    "ServingStatus",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]


class ServingStatus(enum.IntEnum):
    """``grpc.health.v1.HealthCheckResponse.ServingStatus``, with the wire values."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    #: Sent by Watch for a service the server does not know (Check answers NOT_FOUND).
    SERVICE_UNKNOWN = 3


class HealthMessageError(ValueError):
    """Bytes that are not a valid health message."""


# Wire types (protobuf encoding guide, "Message Structure").
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
# Field 1 of each message: tag = field number << 3 | wire type.
_SERVICE_TAG = bytes([1 << 3 | _LEN])
_STATUS_TAG = bytes([1 << 3 | _VARINT])
_MAX_VARINT_BYTES = 10  # a 64-bit value in 7-bit groups
_MAX_FIELD_NUMBER = (1 << 29) - 1
_MAX_GROUP_DEPTH = 100  # protobuf's default recursion limit


def _encode_varint(value: int) -> bytes:
    """An unsigned varint; ``value`` is already reduced to 0 <= value < 2**64."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> Tuple[int, int]:
    """The varint at ``pos`` (as an unsigned 64-bit value) and the position after it."""
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        if pos >= len(data):
            raise HealthMessageError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
    raise HealthMessageError("varint longer than 10 bytes")


def _read_tag(data: bytes, pos: int) -> Tuple[int, int, int]:
    """(field number, wire type, position after the tag)."""
    tag, pos = _read_varint(data, pos)
    field, wire_type = tag >> 3, tag & 7
    if field == 0 or field > _MAX_FIELD_NUMBER:
        raise HealthMessageError(f"invalid field number {field}")
    return field, wire_type, pos


def _skip(data: bytes, pos: int, field: int, wire_type: int, depth: int = 0) -> int:
    """The position after the value of a field that is not read (an unknown field)."""
    if wire_type == _VARINT:
        return _read_varint(data, pos)[1]
    if wire_type in (_I64, _I32):
        end = pos + (8 if wire_type == _I64 else 4)
    elif wire_type == _LEN:
        length, pos = _read_varint(data, pos)
        end = pos + length
    elif wire_type == _SGROUP:
        # A group runs to the END_GROUP tag of the same field number; groups nest.
        if depth >= _MAX_GROUP_DEPTH:
            raise HealthMessageError("groups nested too deeply")
        while True:
            inner, inner_type, pos = _read_tag(data, pos)
            if inner_type == _EGROUP:
                if inner != field:
                    raise HealthMessageError(f"group {field} ended by field {inner}")
                return pos
            pos = _skip(data, pos, inner, inner_type, depth + 1)
    elif wire_type == _EGROUP:
        raise HealthMessageError(f"end of group {field} outside a group")
    else:
        raise HealthMessageError(f"invalid wire type {wire_type}")
    if end > len(data):
        raise HealthMessageError("field runs past the end of the message")
    return end


def _last_field_one(data: bytes, wire_type: int) -> Optional[int]:
    """Where the value of the last field 1 with ``wire_type`` starts, or None.

    Every field is walked, so a malformed one anywhere fails the message, as in protobuf.
    """
    found: Optional[int] = None
    pos = 0
    while pos < len(data):
        field, got_type, pos = _read_tag(data, pos)
        if field == 1 and got_type == wire_type:
            found = pos
        pos = _skip(data, pos, field, got_type)
    return found


def encode_request(service: str) -> bytes:
    """``HealthCheckRequest{service}``; the overall server status (``""``) is ``b""``."""
    if not isinstance(service, str):
        raise TypeError(f"service must be a str, not {type(service).__name__}")
    if not service:
        return b""
    raw = service.encode("utf-8")
    return _SERVICE_TAG + _encode_varint(len(raw)) + raw


def decode_request(data: bytes) -> str:
    """The ``service`` of a ``HealthCheckRequest`` (``""`` when absent)."""
    data = bytes(data)
    start = _last_field_one(data, _LEN)
    if start is None:
        return ""
    length, start = _read_varint(data, start)
    try:
        return data[start : start + length].decode("utf-8")
    except UnicodeDecodeError:
        # proto3 strings must be valid UTF-8; protobuf's parser refuses the message too.
        raise HealthMessageError("service is not valid UTF-8") from None


def encode_response(status: int) -> bytes:
    """``HealthCheckResponse{status}``; UNKNOWN (0) is ``b""``.

    ``status`` is a :class:`ServingStatus` or any int32 (a negative one takes ten bytes, as
    protobuf writes a negative enum).
    """
    value = int(status)
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"status {value} is outside int32")
    if value == 0:
        return b""
    return _STATUS_TAG + _encode_varint(value & 0xFFFFFFFFFFFFFFFF)


def decode_response(data: bytes) -> Union[ServingStatus, int]:
    """The ``status`` of a ``HealthCheckResponse``: a :class:`ServingStatus`, or the plain
    number of a value outside the enum (proto3 enums are open)."""
    data = bytes(data)
    start = _last_field_one(data, _VARINT)
    if start is None:
        return ServingStatus.UNKNOWN
    value = _read_varint(data, start)[0]
    # An enum is an int32 on the wire: the low 32 bits, two's complement.
    value &= 0xFFFFFFFF
    if value >= 2**31:
        value -= 2**32
    try:
        return ServingStatus(value)
    except ValueError:
        return value
