"""A tiny hand-made protobuf codec for the grpc.testing messages the interop cases use.

No protobuf package: the test process must run on PyPy without grpcio/protobuf. Only what
the cases need (proto3 scalars, bytes, strings, nested and repeated messages; unknown fields
skipped). Field numbers are those of grpc/testing/messages.proto.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple, Union

Value = Union[int, bytes]

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int32/int64 negatives are ten-byte varints
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | _VARINT) + _varint(value) if value else b""


def _len_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(data)) + data


def parse(data: bytes) -> Dict[int, List[Value]]:
    """Field number -> values in wire order (varints as int, length-delimited as bytes)."""
    fields: Dict[int, List[Value]] = {}
    pos, end = 0, len(data)

    def read_varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            if pos >= end:
                raise ValueError("truncated varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    while pos < end:
        key = read_varint()
        number, wire = key >> 3, key & 7
        value: Value
        if wire == _VARINT:
            value = read_varint()
        elif wire == _LEN:
            length = read_varint()
            if pos + length > end:
                raise ValueError("truncated length-delimited field")
            value = bytes(data[pos : pos + length])
            pos += length
        elif wire == _I64:
            value, pos = bytes(data[pos : pos + 8]), pos + 8
        elif wire == _I32:
            value, pos = bytes(data[pos : pos + 4]), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _int(fields: Dict[int, List[Value]], number: int, signed32: bool = True) -> int:
    values = fields.get(number)
    if not values:
        return 0
    value = values[-1]
    assert isinstance(value, int)
    if signed32 and value >= 1 << 63:
        value -= 1 << 64
    return value


def _bytes(fields: Dict[int, List[Value]], number: int) -> Optional[bytes]:
    values = fields.get(number)
    if not values:
        return None
    value = values[-1]
    assert isinstance(value, bytes)
    return value


# --- Payload, EchoStatus, ResponseParameters -----------------------------------------------


def payload(body: bytes) -> bytes:
    """``Payload{type: COMPRESSABLE, body}`` (type 0 is the default, so not on the wire)."""
    return _len_field(2, body)


def payload_body(data: Optional[bytes]) -> Optional[bytes]:
    """The body of an encoded Payload (``None`` when the Payload itself is absent)."""
    if data is None:
        return None
    return _bytes(parse(data), 2) or b""


def echo_status(code: int, message: str) -> bytes:
    return _int_field(1, code) + (_len_field(2, message.encode()) if message else b"")


@dataclasses.dataclass
class EchoStatus:
    code: int
    message: str


def _decode_status(data: Optional[bytes]) -> Optional[EchoStatus]:
    if data is None:
        return None
    fields = parse(data)
    return EchoStatus(_int(fields, 1), (_bytes(fields, 2) or b"").decode("utf-8"))


def response_parameters(size: int, interval_us: int = 0) -> bytes:
    return _int_field(1, size) + _int_field(2, interval_us)


# --- Requests and responses ------------------------------------------------------------------


def simple_request(
    response_size: int = 0,
    body: Optional[bytes] = None,
    status: Optional[Tuple[int, str]] = None,
    response_type: int = 0,
) -> bytes:
    out = _int_field(1, response_type) + _int_field(2, response_size)
    if body is not None:
        out += _len_field(3, payload(body))
    if status is not None:
        out += _len_field(7, echo_status(*status))
    return out


@dataclasses.dataclass
class SimpleRequest:
    response_type: int
    response_size: int
    body: Optional[bytes]
    status: Optional[EchoStatus]


def decode_simple_request(data: bytes) -> SimpleRequest:
    f = parse(data)
    return SimpleRequest(
        _int(f, 1), _int(f, 2), payload_body(_bytes(f, 3)), _decode_status(_bytes(f, 7))
    )


def simple_response(body: bytes) -> bytes:
    return _len_field(1, payload(body))


def response_body(data: bytes) -> Optional[bytes]:
    """Body of a SimpleResponse or StreamingOutputCallResponse (field 1 is the Payload)."""
    return payload_body(_bytes(parse(data), 1))


def streaming_input_request(body: bytes) -> bytes:
    return _len_field(1, payload(body))


def decode_streaming_input_request(data: bytes) -> Optional[bytes]:
    """The request's payload body."""
    return payload_body(_bytes(parse(data), 1))


def streaming_input_response(aggregated_payload_size: int) -> bytes:
    return _int_field(1, aggregated_payload_size)


def decode_streaming_input_response(data: bytes) -> int:
    return _int(parse(data), 1)


def streaming_output_request(
    sizes: Tuple[int, ...] = (),
    body: Optional[bytes] = None,
    status: Optional[Tuple[int, str]] = None,
    interval_us: int = 0,
    response_type: int = 0,
) -> bytes:
    out = _int_field(1, response_type)
    for size in sizes:
        out += _len_field(2, response_parameters(size, interval_us))
    if body is not None:
        out += _len_field(3, payload(body))
    if status is not None:
        out += _len_field(7, echo_status(*status))
    return out


@dataclasses.dataclass
class StreamingOutputCallRequest:
    response_type: int
    parameters: List[Tuple[int, int]]  # (size, interval_us)
    body: Optional[bytes]
    status: Optional[EchoStatus]


def decode_streaming_output_request(data: bytes) -> StreamingOutputCallRequest:
    f = parse(data)
    params = []
    for raw in f.get(2, []):
        assert isinstance(raw, bytes)
        p = parse(raw)
        params.append((_int(p, 1), _int(p, 2)))
    return StreamingOutputCallRequest(
        _int(f, 1), params, payload_body(_bytes(f, 3)), _decode_status(_bytes(f, 7))
    )


def streaming_output_response(body: bytes) -> bytes:
    return _len_field(1, payload(body))
