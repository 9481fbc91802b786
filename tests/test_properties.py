"""Property-based tests (hypothesis) of the wire codecs: arbitrary input never raises
anything but the documented errors, and encode/decode round-trips hold."""

from __future__ import annotations

import math
import os
from typing import List, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wove_h2grpc import GrpcError, StatusCode
from wove_h2grpc.protocol.framing import (
    MessageDecoder,
    encode_message,
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


@FAST
@given(
    chunks=st.lists(st.binary(max_size=64), max_size=20),
    limit=st.sampled_from([-1, 0, 1, 16, 1024]),
)
def test_decoder_arbitrary_bytes_only_grpc_errors(chunks: List[bytes], limit: int) -> None:
    decoder = MessageDecoder(max_length=limit)
    try:
        for chunk in chunks:
            for _compressed, payload in decoder.feed(chunk):
                assert limit < 0 or len(payload) <= limit
            # Nothing beyond the limit (plus a partial prefix) is ever held.
            assert limit < 0 or decoder.buffered <= max(limit, 0) + 5
    except GrpcError:
        return
    err = decoder.incomplete_error()
    assert err is None or isinstance(err, GrpcError)
    assert (err is None) == (not decoder.pending)


@FAST
@given(
    messages=st.lists(st.tuples(st.booleans(), st.binary(max_size=300)), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_decoder_round_trip_any_chunking(
    messages: List[Tuple[bool, bytes]], cuts: List[int]
) -> None:
    wire = b"".join(encode_message(payload, compressed) for compressed, payload in messages)
    decoder = MessageDecoder()
    out: List[Tuple[bool, bytes]] = []
    for piece in _split(wire, cuts):
        out.extend(decoder.feed(piece))
    assert out == messages
    assert not decoder.pending
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

_KEY = st.from_regex(r"[0-9a-z_.\-]{1,20}", fullmatch=True).filter(
    lambda k: (
        not k.startswith("grpc-")
        and k
        not in {
            "content-type",
            "te",
            "user-agent",
            "host",
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "content-length",
        }
    )
)
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
@given(pairs=st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=5))
def test_normalize_arbitrary_text_only_value_or_type_error(pairs: List[Tuple[str, str]]) -> None:
    try:
        normalize_metadata(pairs)
    except (ValueError, TypeError) as exc:
        assert str(exc)


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


@FAST
@given(
    text=st.from_regex(r"[0-9]{1,10}[HMSmunhsx]?", fullmatch=True),
)
def test_grpc_timeout_parse_near_valid(text: str) -> None:
    try:
        parse_grpc_timeout(text)
    except ValueError as exc:
        assert "malformed grpc-timeout" in str(exc)


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
