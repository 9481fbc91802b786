"""Metadata validation/encoding, grpc-message percent-encoding, grpc-timeout."""

from __future__ import annotations

import base64
import re
from urllib.parse import quote, unquote

import pytest

from wove_h2grpc.protocol.metadata import (
    decode_bin_value,
    decode_grpc_message,
    decode_metadata,
    encode_grpc_message,
    encode_grpc_timeout,
    encode_metadata,
    normalize_metadata,
    parse_grpc_timeout,
)

TRICKY = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"


# --- validation ---------------------------------------------------------------


def test_normalize_pairs_mapping_and_none() -> None:
    assert normalize_metadata(None) == ()
    assert normalize_metadata([]) == ()
    assert normalize_metadata({"x-a": "1", "x-b-bin": b"\x00"}) == (
        ("x-a", "1"),
        ("x-b-bin", b"\x00"),
    )
    pairs = [("x-a", "1"), ("x-a", "2"), ("k.y_z-0", "v")]
    assert normalize_metadata(pairs) == tuple(pairs)
    assert normalize_metadata(iter(pairs)) == tuple(pairs)
    assert normalize_metadata((("x-a", "1"),)) == (("x-a", "1"),)


def test_bin_values_become_bytes() -> None:
    got = normalize_metadata(
        [("a-bin", "text"), ("b-bin", bytearray(b"\x01")), ("c-bin", memoryview(b"\x02"))]
    )
    assert got == (("a-bin", b"text"), ("b-bin", b"\x01"), ("c-bin", b"\x02"))
    assert all(type(v) is bytes for _, v in got)


def test_ascii_bytes_value_becomes_str() -> None:
    assert normalize_metadata([("x-a", b"abc")]) == (("x-a", "abc"),)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("X-Upper", "must be lowercase"),
        ("Authorization", "must be lowercase"),
        ("has space", "characters outside lowercase"),
        ("x/y", "characters outside lowercase"),
        ("caf\u00e9", "characters outside lowercase"),
        ("x:y", "characters outside lowercase"),
    ],
)
def test_bad_keys(key: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        normalize_metadata([(key, "v")])
    assert repr(key) in str(info.value)


def test_empty_key_refused() -> None:
    with pytest.raises(ValueError) as info:
        normalize_metadata([("x-ok", "v"), ("", "v")])
    assert str(info.value) == "metadata key must not be empty"


@pytest.mark.parametrize("key", [":authority", ":path", ":method", ":status", ":scheme"])
def test_pseudo_headers_refused(key: str) -> None:
    with pytest.raises(ValueError, match="pseudo-header"):
        normalize_metadata([(key, "v")])


@pytest.mark.parametrize(
    "key",
    [
        "grpc-timeout",
        "grpc-status",
        "grpc-message",
        "grpc-encoding",
        "grpc-accept-encoding",
        "grpc-anything",
        "content-type",
        "te",
        "user-agent",
        "host",
        "connection",
        "transfer-encoding",
        "content-length",
        "upgrade",
        "keep-alive",
        "proxy-connection",
    ],
)
def test_reserved_headers_refused(key: str) -> None:
    with pytest.raises(ValueError, match="reserved for the gRPC transport") as info:
        normalize_metadata([(key, "v")])
    assert repr(key) in str(info.value)


@pytest.mark.parametrize(
    "value", ["tab\there", "new\nline", "del\x7f", "caf\u00e9", "\u263a", "\x00"]
)
def test_non_printable_ascii_values_refused(value: str) -> None:
    with pytest.raises(ValueError, match="non-printable or non-ASCII") as info:
        normalize_metadata([("x-k", value)])
    assert "'x-k'" in str(info.value)
    assert "-bin" in str(info.value)  # tells the caller what to do instead


def test_non_ascii_bytes_value_refused() -> None:
    with pytest.raises(ValueError, match="not ASCII"):
        normalize_metadata([("x-k", b"\xff")])


def test_printable_ascii_values_accepted() -> None:
    value = "".join(chr(c) for c in range(0x20, 0x7F))
    assert normalize_metadata([("x-k", value)]) == (("x-k", value),)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([(1, "v")], "key must be str"),
        ([("x-k", 1)], "must be str, not int"),
        ([("x-k-bin", 1)], "must be bytes or str"),
        ([("x-k", "v", "extra")], r"\(key, value\) pairs"),
        (["ab"], r"\(key, value\) pairs"),
        ("x-k=v", "mapping or a sequence"),
        (b"x-k", "mapping or a sequence"),
    ],
)
def test_wrong_types(metadata: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        normalize_metadata(metadata)  # type: ignore[arg-type]


# --- wire encoding ------------------------------------------------------------


def test_encode_metadata_bin_unpadded() -> None:
    md = normalize_metadata(
        [("x-a", "v"), ("x-b-bin", b"\x00\x01"), ("x-c-bin", b"abc"), ("x-d-bin", b"")]
    )
    wire = encode_metadata(md)
    assert wire == [
        (b"x-a", b"v"),
        (b"x-b-bin", b"AAE"),  # base64 "AAE=" without padding
        (b"x-c-bin", b"YWJj"),
        (b"x-d-bin", b""),
    ]
    assert all(b"=" not in v for _, v in wire)


@pytest.mark.parametrize("n", range(0, 8))
def test_bin_decode_padded_or_not(n: int) -> None:
    raw = bytes(range(200, 200 + n))
    padded = base64.b64encode(raw)
    assert decode_bin_value(padded) == raw
    assert decode_bin_value(padded.rstrip(b"=")) == raw


@pytest.mark.parametrize("bad", [b"A", b"AAAAA", b"!!!!", b"AA=A", b"A===", b"\xff\xfe"])
def test_bin_decode_invalid(bad: bytes) -> None:
    with pytest.raises(ValueError, match="invalid base64 in binary metadata value"):
        decode_bin_value(bad)


def test_decode_metadata_skips_pseudo_and_transport_headers() -> None:
    headers = [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"0"),
        (b"grpc-message", b"ok"),
        (b"grpc-encoding", b"gzip"),
        (b"grpc-accept-encoding", b"gzip"),
        (b"te", b"trailers"),
        (b"content-length", b"0"),
        (b"x-a", b"1"),
        (b"x-b-bin", b"AAE"),
        (b"x-c-bin", b"AAE="),
        (b"x-a", b"2"),
    ]
    assert decode_metadata(headers) == (
        ("x-a", "1"),
        ("x-b-bin", b"\x00\x01"),
        ("x-c-bin", b"\x00\x01"),
        ("x-a", "2"),
    )


def test_decode_metadata_broken_bin_kept_raw() -> None:
    assert decode_metadata([(b"x-bin", b"!!")]) == (("x-bin", b"!!"),)


def test_decode_metadata_non_ascii_value_does_not_fail() -> None:
    ((key, value),) = decode_metadata([(b"x-k", b"caf\xc3\xa9")])
    assert key == "x-k"
    assert isinstance(value, str)


def test_metadata_round_trip() -> None:
    md = normalize_metadata(
        [("x-a", "hello world"), ("x-b-bin", bytes(range(256))), ("x-a", "again"), ("e-bin", b"")]
    )
    assert decode_metadata(encode_metadata(md)) == md


# --- grpc-message -------------------------------------------------------------


def test_grpc_message_plain_ascii_unchanged() -> None:
    assert encode_grpc_message("simple message: ok!") == b"simple message: ok!"
    assert decode_grpc_message(b"simple message: ok!") == "simple message: ok!"


def test_grpc_message_tricky_round_trip() -> None:
    wire = encode_grpc_message(TRICKY)
    assert all(0x20 <= b < 0x7F for b in wire)
    assert wire.startswith(b"%09%0Atest with whitespace%0D%0Aand Unicode BMP %E2%98%BA")
    assert b"%F0%9F%98%88" in wire
    assert decode_grpc_message(wire) == TRICKY


def test_grpc_message_percent_itself_encoded() -> None:
    assert encode_grpc_message("100% done") == b"100%25 done"
    assert decode_grpc_message(b"100%25 done") == "100% done"


def test_grpc_message_interoperates_with_urllib() -> None:
    # Another implementation percent-encoding more than needed, or in lowercase hex, decodes.
    other = quote(TRICKY, safe="").encode("ascii")
    assert decode_grpc_message(other) == TRICKY
    lower_hex = re.sub(rb"%[0-9A-F]{2}", lambda m: m.group(0).lower(), other)
    assert lower_hex != other
    assert decode_grpc_message(lower_hex) == TRICKY
    assert unquote(encode_grpc_message(TRICKY).decode("ascii")) == TRICKY


def test_grpc_message_malformed_escapes_kept_literally() -> None:
    assert decode_grpc_message(b"50%") == "50%"
    assert decode_grpc_message(b"%zz%4") == "%zz%4"
    assert decode_grpc_message(b"a%41b") == "aAb"


def test_grpc_message_bad_utf8_replaced() -> None:
    assert decode_grpc_message(b"%FF") == "\ufffd"
    assert decode_grpc_message(b"\xff") == "\ufffd"


# --- grpc-timeout -------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "wire"),
    [
        (0, "0n"),
        (1e-9, "1n"),
        (0.5, "500000u"),
        (0.05, "50000000n"),
        (0.099999999, "99999999n"),
        (1.0, "1000000u"),
        (99.999999, "99999999u"),
        (100.0, "100000m"),
        (5.0, "5000000u"),
        (99999.999, "99999999m"),
        (100000.0, "100000S"),
        (99999999.0, "99999999S"),
        (100000000.0, "1666667M"),
        (99999999 * 60.0, "99999999M"),
        (99999999 * 60.0 + 1, "1666667H"),
        (99999999 * 3600.0, "99999999H"),
        (1e30, "99999999H"),
        (float("inf"), "99999999H"),
    ],
)
def test_encode_grpc_timeout_best_unit(seconds: float, wire: str) -> None:
    assert encode_grpc_timeout(seconds) == wire


def test_encode_grpc_timeout_rounds_up_never_shorter() -> None:
    for seconds in (1e-10, 0.1, 0.3, 1 / 3, 2.5e-7, 123.456789, 7200.0000001):
        wire = encode_grpc_timeout(seconds)
        assert len(wire) <= 9
        assert wire[:-1].isdigit() and len(wire[:-1]) <= 8
        back = parse_grpc_timeout(wire)
        assert back >= seconds
        # At most one unit of the chosen unit over, and the unit keeps >= 5 significant digits.
        assert back - seconds <= max(seconds * 2e-5, 1e-9)


@pytest.mark.parametrize("seconds", [-1.0, -1e-9, float("nan"), float("-inf")])
def test_encode_grpc_timeout_invalid(seconds: float) -> None:
    with pytest.raises(ValueError, match="non-negative number of seconds"):
        encode_grpc_timeout(seconds)


@pytest.mark.parametrize(
    ("wire", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("3S", 3.0),
        ("4m", 0.004),
        ("5u", 5e-6),
        ("6n", 6e-9),
        ("99999999H", 99999999 * 3600.0),
        ("00000001S", 1.0),
        ("0n", 0.0),
    ],
)
def test_parse_grpc_timeout(wire: str, seconds: float) -> None:
    assert parse_grpc_timeout(wire) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "wire",
    [
        "",
        "S",
        "1",
        "123456789S",
        "1s",
        "1h",
        "1x",
        "-1S",
        "1.5S",
        " 1S",
        "1S ",
        "1S\n",
        "1 S",
        "\u0663S",
        "\uff11S",
    ],
)
def test_parse_grpc_timeout_malformed(wire: str) -> None:
    with pytest.raises(ValueError, match="malformed grpc-timeout") as info:
        parse_grpc_timeout(wire)
    assert repr(wire) in str(info.value)
    assert "1-8 digits" in str(info.value)


def test_grpc_message_edge_spaces_are_encoded() -> None:
    """No leading or trailing space in the field value (RFC 9113 section 8.2.1)."""
    assert encode_grpc_message(" lead and trail ") == b"%20lead and trail%20"
    assert encode_grpc_message(" ") == b"%20"
    assert encode_grpc_message("in side") == b"in side"
    for text in (" x", "x ", "  two  ", " ☺ "):
        wire = encode_grpc_message(text)
        assert wire[:1] != b" " and wire[-1:] != b" "
        assert decode_grpc_message(wire) == text
