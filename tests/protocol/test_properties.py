"""Property-based tests (hypothesis) of the wire codecs: arbitrary input never raises
anything but the documented errors, and encode/decode round-trips hold."""

from __future__ import annotations

import math
import os
from typing import List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wove_h2grpc import GrpcError, StatusCode
from wove_h2grpc.protocol.framing import (
    MessageDecoder,
    encode_message_prefix,
    gzip_compress,
    gzip_decompress,
)
from wove_h2grpc.protocol.metadata import (
    decode_grpc_message,
    decode_metadata,
    encode_grpc_message,
    encode_grpc_timeout,
    encode_metadata,
    normalize_metadata,
    parse_grpc_timeout,
)
from wove_h2grpc.protocol.target import parse_bind_address, parse_target

# 200 examples keeps the file at a few seconds; raise it for a deeper local run.
FAST = settings(
    max_examples=int(os.environ.get("WOVE_H2GRPC_HYPOTHESIS_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _split(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


# --- MessageDecoder -------------------------------------------------------------


def _reference_parse(wire: bytes, limit: int) -> Tuple[List[Tuple[bool, bytes]], str]:
    """PROTOCOL-HTTP2 "Length-Prefixed-Message", read the plain way: the messages, and how
    the bytes end: "complete", "partial" (inside a prefix or body), "bad flag" (a
    Compressed-Flag other than 0 or 1) or "too large" (a length over ``limit``)."""
    messages: List[Tuple[bool, bytes]] = []
    pos = 0
    while pos < len(wire):
        if len(wire) - pos < 5:
            return messages, "partial"
        flag, length = wire[pos], int.from_bytes(wire[pos + 1 : pos + 5], "big")
        if flag not in (0, 1):
            return messages, "bad flag"
        if 0 <= limit < length:
            return messages, "too large"
        if len(wire) - pos - 5 < length:
            return messages, "partial"
        messages.append((flag == 1, wire[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return messages, "complete"


_PREFIXED = st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.binary(max_size=40)), max_size=4).map(
    lambda parts: b"".join(bytes([f]) + len(p).to_bytes(4, "big") + p for f, p in parts)
)


@FAST
@given(
    wire=st.one_of(st.binary(max_size=400), _PREFIXED, _PREFIXED.map(lambda w: w[:-3])),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    limit=st.sampled_from([-1, 0, 1, 16, 1024]),
)
def test_decoder_reads_any_bytes_as_the_framing_rule_says(
    wire: bytes, cuts: List[int], limit: int
) -> None:
    expected, ending = _reference_parse(wire, limit)
    decoder = MessageDecoder(max_length=limit)
    got: List[Tuple[bool, bytes]] = []
    try:
        for chunk in _split(wire, cuts):
            got.extend(decoder.feed(chunk))
            # Nothing beyond the limit (plus a partial prefix) is ever held.
            assert limit < 0 or decoder.buffered <= max(limit, 0) + 5
    except GrpcError as exc:
        # The messages of the chunk that raised are lost with it: a prefix of the rest.
        assert got == expected[: len(got)]
        code = StatusCode.INTERNAL if ending == "bad flag" else StatusCode.RESOURCE_EXHAUSTED
        assert ending in ("bad flag", "too large")
        assert exc.code() is code
        return
    assert got == expected
    assert ending in ("complete", "partial")
    err = decoder.incomplete_error()
    if ending == "complete":
        assert err is None
    else:
        assert err is not None and err.code() is StatusCode.INTERNAL


@FAST
@given(
    messages=st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_decoder_round_trip_any_chunking(
    messages: List[Tuple[bool, bytes]], cuts: List[int]
) -> None:
    wire = b"".join(
        encode_message_prefix(len(payload), compressed) + payload
        for compressed, payload in messages
    )
    decoder = MessageDecoder()
    out: List[Tuple[bool, bytes]] = []
    for piece in _split(wire, cuts):
        out.extend(decoder.feed(piece))
    assert out == messages
    assert decoder.buffered == 0
    assert decoder.incomplete_error() is None


@FAST
@given(payload=st.binary(max_size=2000), limit=st.integers(min_value=0, max_value=2500))
def test_gzip_round_trip_and_limit(payload: bytes, limit: int) -> None:
    wire = gzip_compress(payload)
    assert gzip_decompress(wire) == payload
    try:
        assert gzip_decompress(wire, limit) == payload
        assert len(payload) <= limit
    except GrpcError:
        assert len(payload) > limit


@FAST
@given(data=st.binary(max_size=200), limit=st.sampled_from([-1, 0, 100]))
def test_gzip_arbitrary_bytes_only_grpc_errors(data: bytes, limit: int) -> None:
    try:
        out = gzip_decompress(data, limit)
    except GrpcError as exc:
        assert exc.code() in (StatusCode.INTERNAL, StatusCode.RESOURCE_EXHAUSTED)
        return
    assert limit < 0 or len(out) <= limit


# --- metadata -----------------------------------------------------------------

# Names a caller may not send as metadata, from the specifications (not from the code):
# gRPC PROTOCOL-HTTP2 "Requests": fields of the call definition the transport writes.
_GRPC_CALL_FIELDS = ("te", "content-type", "user-agent")
# RFC 9113 section 8.2.2: connection-specific fields, which HTTP/2 messages must not carry.
_CONNECTION_SPECIFIC = (
    "connection",
    "proxy-connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
)
# RFC 9113 section 8.3.1 (:authority stands for Host) and 8.1.1 (content-length must match
# the DATA the transport frames).
_HTTP_FRAMING = ("host", "content-length")
SPEC_RESERVED = frozenset(_GRPC_CALL_FIELDS + _CONNECTION_SPECIFIC + _HTTP_FRAMING)
# PROTOCOL-HTTP2: names starting with "grpc-" are reserved for gRPC, listed or not.
SPEC_RESERVED_PREFIX = "grpc-"

_ANY_KEY = st.from_regex(r"[0-9a-z_.\-]{1,20}", fullmatch=True)
_KEY = _ANY_KEY.filter(lambda k: not k.startswith(SPEC_RESERVED_PREFIX) and k not in SPEC_RESERVED)
_ASCII_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_PAIR = st.one_of(
    st.tuples(_KEY.filter(lambda k: not k.endswith("-bin")), _ASCII_VALUE),
    st.tuples(_KEY.map(lambda k: k + "-bin"), st.binary(max_size=40)),
)


@FAST
@given(pairs=st.lists(_PAIR, max_size=10))
def test_metadata_round_trip(pairs: List[Tuple[str, object]]) -> None:
    md = normalize_metadata(pairs)
    wire = encode_metadata(md)
    assert all(b"=" not in value for key, value in wire if key.endswith(b"-bin"))
    assert decode_metadata(wire) == md


@FAST
@given(
    key=st.one_of(
        st.sampled_from(sorted(SPEC_RESERVED)),
        st.from_regex(r"grpc-[0-9a-z_.\-]{0,10}", fullmatch=True),
        _ANY_KEY,
    ),
    binary=st.booleans(),
)
def test_reserved_keys_are_exactly_the_specs(key: str, binary: bool) -> None:
    if binary:
        key += "-bin"
    value: object = b"\x00" if binary else "v"
    if key.startswith(SPEC_RESERVED_PREFIX) or key in SPEC_RESERVED:
        with pytest.raises(ValueError, match="reserved for the gRPC transport"):
            normalize_metadata([(key, value)])
    else:
        assert normalize_metadata([(key, value)]) == ((key, value),)


@FAST
@given(pairs=st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=5))
def test_normalize_arbitrary_text_only_value_or_type_error(pairs: List[Tuple[str, str]]) -> None:
    try:
        md = normalize_metadata(pairs)
    except (ValueError, TypeError) as exc:
        assert str(exc)
        return
    # What passes is what PROTOCOL-HTTP2 allows: a lowercase name outside the reserved
    # ones, and a printable ASCII value (0x20-0x7E) unless the name ends in -bin.
    assert md == tuple((k, v.encode() if k.endswith("-bin") else v) for k, v in pairs)
    for key, value in pairs:
        assert key and all(c in "0123456789abcdefghijklmnopqrstuvwxyz_.-" for c in key)
        assert not key.startswith(SPEC_RESERVED_PREFIX) and key not in SPEC_RESERVED
        assert key.endswith("-bin") or all(" " <= c <= "~" for c in value)


@FAST
@given(headers=st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=10))
def test_decode_metadata_arbitrary_headers(headers: List[Tuple[bytes, bytes]]) -> None:
    try:
        md = decode_metadata(headers)
    except ValueError:
        return
    for key, value in md:
        assert isinstance(key, str)
        assert isinstance(value, bytes) if key.endswith("-bin") else isinstance(value, str)


@FAST
@given(message=st.text(max_size=200))
def test_grpc_message_round_trip(message: str) -> None:
    wire = encode_grpc_message(message)
    assert all(0x20 <= b < 0x7F for b in wire)
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates have no UTF-8 form to round-trip
    assert decode_grpc_message(wire) == message


@FAST
@given(value=st.binary(max_size=100))
def test_grpc_message_decode_arbitrary_bytes(value: bytes) -> None:
    assert isinstance(decode_grpc_message(value), str)


# --- grpc-timeout -------------------------------------------------------------


@FAST
@given(
    seconds=st.one_of(
        st.floats(min_value=0, max_value=99_999_999 * 3600.0, allow_nan=False),
        st.floats(min_value=0, max_value=10.0, allow_nan=False),
        st.integers(min_value=0, max_value=10**6).map(lambda n: n / 1000),
    )
)
def test_grpc_timeout_round_trip(seconds: float) -> None:
    wire = encode_grpc_timeout(seconds)
    assert 2 <= len(wire) <= 9
    back = parse_grpc_timeout(wire)
    assert back >= seconds  # never a shorter deadline for the server
    # Close: one unit of the chosen unit at most, and the unit keeps >= 5 digits.
    assert back - seconds <= max(seconds * 2e-5, 1e-9), (seconds, wire)


@FAST
@given(text=st.text(max_size=12))
def test_grpc_timeout_parse_arbitrary_text(text: str) -> None:
    try:
        value = parse_grpc_timeout(text)
    except ValueError as exc:
        assert "malformed grpc-timeout" in str(exc)
        return
    assert value >= 0 and math.isfinite(value)


# PROTOCOL-HTTP2 "Timeout": TimeoutValue is at most 8 ASCII digits, TimeoutUnit one of these.
_SPEC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


@FAST
@given(
    text=st.from_regex(r"[0-9]{1,10}[HMSmunhsx]?", fullmatch=True),
)
def test_grpc_timeout_parse_near_valid(text: str) -> None:
    digits, unit = text.rstrip("HMSmunhsx"), text[len(text.rstrip("HMSmunhsx")) :]
    if len(digits) <= 8 and unit in _SPEC_UNITS:
        assert parse_grpc_timeout(text) == int(digits) * _SPEC_UNITS[unit]
    else:
        with pytest.raises(ValueError, match="malformed grpc-timeout"):
            parse_grpc_timeout(text)


# --- targets ------------------------------------------------------------------


@FAST
@given(text=st.text(max_size=40), secure=st.booleans())
def test_parse_target_arbitrary_text(text: str, secure: bool) -> None:
    try:
        target = parse_target(text, secure=secure)
    except (ValueError, TypeError) as exc:
        assert str(exc)
        return
    assert target.kind in ("tcp", "unix", "unix-abstract")
    for _host, port in target.addresses:
        assert 0 < port < 65536


_TARGETISH = st.builds(
    lambda scheme, body: scheme + body,
    st.sampled_from(
        ["", "dns:", "dns:///", "dns://a/", "ipv4:", "ipv6:", "unix:", "unix-abstract:"]
    ),
    st.text(alphabet="0123456789abcdef.:[]/,@ %", max_size=30),
)


@FAST
@given(text=_TARGETISH, secure=st.booleans())
def test_parse_target_near_valid(text: str, secure: bool) -> None:
    try:
        parse_target(text, secure=secure)
    except ValueError as exc:
        assert str(exc)


@FAST
@given(text=st.one_of(st.text(max_size=30), _TARGETISH))
def test_parse_bind_address_arbitrary_text(text: str) -> None:
    try:
        parse_bind_address(text)
    except (ValueError, TypeError) as exc:
        assert str(exc)


@FAST
@given(value=st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text())))
def test_parse_target_non_str(value: object) -> None:
    try:
        parse_target(value)  # type: ignore[arg-type]
    except TypeError as exc:
        assert "target must be a str" in str(exc)
