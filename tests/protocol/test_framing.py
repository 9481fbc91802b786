"""Length-prefixed message framing, the incremental decoder, limits and gzip."""

from __future__ import annotations

import gzip
import io
import os
import zlib

import pytest
from _support import TracedMemory

from wove_h2grpc import GrpcError, StatusCode
from wove_h2grpc.protocol.framing import (
    ACCEPT_ENCODING,
    MessageDecoder,
    decompress,
    encode_message_prefix,
    gzip_compress,
    gzip_decompress,
)

MESSAGES = [b"", b"a", b"hello world", bytes(range(256)) * 3, b"", b"\x00" * 70]


def _frame(payload: bytes, compressed: bool = False) -> bytes:
    return encode_message_prefix(len(payload), compressed) + payload


def _wire(messages: list[bytes]) -> bytes:
    return b"".join(_frame(m) for m in messages)


def test_prefix_layout() -> None:
    assert encode_message_prefix(0) == b"\x00\x00\x00\x00\x00"
    assert encode_message_prefix(5) == b"\x00\x00\x00\x00\x05"
    assert encode_message_prefix(0x01020304, compressed=True) == b"\x01\x01\x02\x03\x04"
    assert encode_message_prefix(0xFFFFFFFF) == b"\x00\xff\xff\xff\xff"


def test_prefix_too_long_for_four_bytes() -> None:
    with pytest.raises(ValueError, match="does not fit a gRPC length prefix"):
        encode_message_prefix(0x100000000)


def test_decode_whole_input() -> None:
    decoder = MessageDecoder()
    out = decoder.feed(_wire(MESSAGES))
    assert out == [(False, m) for m in MESSAGES]
    assert decoder.buffered == 0
    assert decoder.incomplete_error() is None


def test_decode_every_single_split_point() -> None:
    wire = _wire(MESSAGES)
    for cut in range(len(wire) + 1):
        decoder = MessageDecoder()
        out = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
        assert out == [(False, m) for m in MESSAGES], cut
        assert decoder.incomplete_error() is None


def test_decode_every_pair_of_split_points() -> None:
    # Two cuts over a smaller multi-message input: covers prefix split + body split together.
    messages = [b"ab", b"", b"cdefg", b"h"]
    wire = _wire(messages)
    for first in range(len(wire) + 1):
        for second in range(first, len(wire) + 1):
            decoder = MessageDecoder()
            out = (
                decoder.feed(wire[:first])
                + decoder.feed(wire[first:second])
                + decoder.feed(wire[second:])
            )
            assert out == [(False, m) for m in messages], (first, second)


def test_decode_byte_at_a_time() -> None:
    wire = _wire(MESSAGES)
    decoder = MessageDecoder()
    out = []
    for i in range(len(wire)):
        out.extend(decoder.feed(wire[i : i + 1]))
    assert out == [(False, m) for m in MESSAGES]


def test_decode_accepts_memoryview_and_bytearray() -> None:
    wire = _wire([b"xyz", b"uvw"])
    assert MessageDecoder().feed(memoryview(wire)) == [(False, b"xyz"), (False, b"uvw")]  # type: ignore[arg-type]
    out = MessageDecoder().feed(bytearray(wire))  # type: ignore[arg-type]
    assert out == [(False, b"xyz"), (False, b"uvw")]
    assert all(type(payload) is bytes for _, payload in out)


def test_decode_compressed_flag_reported() -> None:
    wire = _frame(b"zz", compressed=True) + _frame(b"plain")
    assert MessageDecoder().feed(wire) == [(True, b"zz"), (False, b"plain")]


def test_buffered_and_incomplete_error_track_partial_message() -> None:
    decoder = MessageDecoder()
    assert decoder.feed(b"\x00\x00") == []
    assert decoder.incomplete_error() is not None
    assert decoder.buffered == 2
    assert decoder.feed(b"\x00\x00\x04ab") == []
    assert decoder.incomplete_error() is not None
    assert decoder.buffered == 2
    assert decoder.feed(b"cd") == [(False, b"abcd")]
    assert decoder.incomplete_error() is None
    assert decoder.buffered == 0


def test_limit_checked_from_prefix_before_buffering() -> None:
    decoder = MessageDecoder(max_length=1024)
    # A prefix claiming 3 GiB arrives with the first body bytes: refused at once,
    # nothing of the body kept.
    with pytest.raises(GrpcError) as info:
        decoder.feed(encode_message_prefix(3 * 1024**3) + b"x" * 100)
    assert info.value.code() is StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == "Received message larger than max (3221225472 vs. 1024)"
    assert decoder.buffered <= 5


def test_limit_checked_when_prefix_split() -> None:
    decoder = MessageDecoder(max_length=10)
    prefix = encode_message_prefix(11)
    assert decoder.feed(prefix[:3]) == []
    assert decoder.buffered == 3
    with pytest.raises(GrpcError) as info:
        decoder.feed(prefix[3:])
    assert info.value.code() is StatusCode.RESOURCE_EXHAUSTED
    assert "11 vs. 10" in info.value.details()
    assert decoder.buffered <= 5


def test_limit_boundary_and_direction() -> None:
    assert MessageDecoder(max_length=3).feed(_frame(b"abc")) == [(False, b"abc")]
    assert MessageDecoder(max_length=0).feed(_frame(b"")) == [(False, b"")]
    decoder = MessageDecoder(max_length=2, direction="Sent")
    with pytest.raises(GrpcError, match=r"Sent message larger than max \(3 vs. 2\)"):
        decoder.feed(_frame(b"abc"))


def test_no_limit_by_default() -> None:
    big = os.urandom(5 * 1024 * 1024)
    assert MessageDecoder().feed(_frame(big)) == [(False, big)]


def test_invalid_compressed_flag() -> None:
    with pytest.raises(GrpcError) as info:
        MessageDecoder().feed(b"\x02\x00\x00\x00\x00")
    assert info.value.code() is StatusCode.INTERNAL
    assert "compressed-flag byte is 2" in info.value.details()


def test_truncated_message_error() -> None:
    decoder = MessageDecoder()
    decoder.feed(_frame(b"0123456789")[:8])
    err = decoder.incomplete_error()
    assert err is not None
    assert err.code() is StatusCode.INTERNAL
    assert "got 3 of 10 bytes" in err.details()
    assert "truncated" in err.details()


def test_truncated_prefix_error() -> None:
    decoder = MessageDecoder()
    decoder.feed(_frame(b"ok") + b"\x00\x00")
    err = decoder.incomplete_error()
    assert err is not None
    assert err.code() is StatusCode.INTERNAL
    assert "prefix (2 of 5 bytes)" in err.details()


def test_zero_length_prefix_alone_is_complete() -> None:
    decoder = MessageDecoder()
    assert decoder.feed(b"\x00\x00\x00\x00\x00") == [(False, b"")]
    assert decoder.incomplete_error() is None


# --- gzip -------------------------------------------------------------------


def test_encodings_advertised() -> None:
    assert ACCEPT_ENCODING == "identity,gzip"


@pytest.mark.parametrize("payload", [b"", b"x", b"hello " * 1000, os.urandom(70000)])
def test_gzip_round_trip(payload: bytes) -> None:
    assert gzip_decompress(gzip_compress(payload)) == payload
    assert decompress(True, gzip_compress(payload), "gzip") == payload


def test_gzip_is_real_gzip_framing() -> None:
    payload = b"the quick brown fox " * 50
    ours = gzip_compress(payload)
    # RFC 1952 member: magic 1f 8b, method 8 (deflate).
    assert ours[:3] == b"\x1f\x8b\x08"
    # The stdlib reads ours, and we read the stdlib's (with and without a file name/mtime).
    assert gzip.decompress(ours) == payload
    assert gzip_decompress(gzip.compress(payload)) == payload
    buf = io.BytesIO()
    with gzip.GzipFile(filename="named.txt", mode="wb", fileobj=buf, mtime=1234567) as f:
        f.write(payload)
    assert gzip_decompress(buf.getvalue()) == payload


def test_gzip_not_zlib_or_raw_deflate() -> None:
    payload = b"abc" * 100
    with pytest.raises(GrpcError) as info:
        gzip_decompress(zlib.compress(payload))
    assert info.value.code() is StatusCode.INTERNAL
    assert "failed to decompress gzip message" in info.value.details()


def test_gzip_garbage() -> None:
    with pytest.raises(GrpcError) as info:
        gzip_decompress(b"not gzip at all")
    assert info.value.code() is StatusCode.INTERNAL
    assert "failed to decompress gzip message" in info.value.details()


def test_gzip_truncated() -> None:
    data = gzip.compress(b"payload " * 100)
    with pytest.raises(GrpcError) as info:
        gzip_decompress(data[: len(data) // 2])
    assert info.value.code() is StatusCode.INTERNAL
    assert "truncated" in info.value.details()


def test_gzip_within_limit_exactly() -> None:
    payload = b"a" * 1000
    assert gzip_decompress(gzip_compress(payload), 1000) == payload
    assert decompress(True, gzip_compress(payload), "gzip", 1000) == payload


def test_gzip_bomb_bounded_by_limit() -> None:
    # 64 MiB of zeros compresses to ~64 KiB; with a 1 MiB limit we must stop early.
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 128 * 1024
    with TracedMemory() as memory, pytest.raises(GrpcError) as info:
        gzip_decompress(bomb, 1024 * 1024)
    peak = memory.peak
    assert info.value.code() is StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == (
        "Received message larger than max after gzip decompression "
        "(more than 1048576 bytes vs. 1048576)"
    )
    assert "1048576" in info.value.details()
    if peak is not None:  # CPython: tracemalloc
        assert peak < 8 * 1024 * 1024, peak


def test_compressed_without_encoding_is_internal() -> None:
    for encoding in (None, "identity"):
        with pytest.raises(GrpcError) as info:
            decompress(True, gzip_compress(b"x"), encoding)
        assert info.value.code() is StatusCode.INTERNAL
        assert "no grpc-encoding" in info.value.details()


def test_unknown_encoding_is_internal() -> None:
    with pytest.raises(GrpcError) as info:
        decompress(True, b"xx", "snappy")
    assert info.value.code() is StatusCode.INTERNAL
    assert "'snappy'" in info.value.details()
    assert "identity,gzip" in info.value.details()


def test_uncompressed_passes_through_any_encoding() -> None:
    # The flag, not the header, says whether a given message is compressed.
    for encoding in (None, "identity", "gzip", "snappy"):
        assert decompress(False, b"raw", encoding) == b"raw"
