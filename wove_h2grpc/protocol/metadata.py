"""Metadata, grpc-message and grpc-timeout codecs (no IO).

PROTOCOL-HTTP2 "Requests"/"Responses": custom metadata keys are lowercase
``[0-9a-z_.-]``, keys ending in ``-bin`` carry base64 bytes (emitted unpadded,
accepted padded or not), other values are printable ASCII; ``grpc-message`` is
percent-encoded UTF-8; ``grpc-timeout`` is at most 8 digits and a unit.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any, Iterable, List, Mapping, Tuple, Union

from ..errors import Metadata, MetadataValue

__all__ = [
    "MetadataLike",
    "decode_grpc_message",
    "decode_metadata",
    "encode_grpc_message",
    "encode_grpc_timeout",
    "encode_metadata",
    "normalize_metadata",
    "parse_grpc_timeout",
]

MetadataLike = Union[Mapping[str, Any], Iterable[Tuple[str, Any]], None]

_KEY_RE = re.compile(r"[0-9a-z_.\-]+\Z")
# Headers the transport owns; a caller may not set them as metadata.
_RESERVED = frozenset(
    {
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
# Headers the transport consumes; not reported back as metadata.
_TRANSPORT_HEADERS = frozenset(
    {
        b"content-type",
        b"grpc-status",
        b"grpc-message",
        b"grpc-encoding",
        b"grpc-accept-encoding",
        b"grpc-timeout",
        b"te",
        b"content-length",
    }
)


def _validate_pair(key: object, value: object) -> Tuple[str, MetadataValue]:
    if not isinstance(key, str):
        raise TypeError(f"metadata key must be str, not {type(key).__name__}: {key!r}")
    if not key:
        raise ValueError("metadata key must not be empty")
    if key[0] == ":":
        raise ValueError(f"metadata key {key!r} is an HTTP/2 pseudo-header and cannot be set")
    if not _KEY_RE.match(key):
        if key.lower() != key and _KEY_RE.match(key.lower()):
            raise ValueError(f"metadata key {key!r} must be lowercase")
        raise ValueError(
            f"metadata key {key!r} has characters outside lowercase a-z, 0-9, '-', '_' and '.'"
        )
    if key.startswith("grpc-") or key in _RESERVED:
        raise ValueError(f"metadata key {key!r} is reserved for the gRPC transport")
    if key.endswith("-bin"):
        if isinstance(value, str):
            return key, value.encode("utf-8")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return key, bytes(value)
        raise TypeError(f"value of binary metadata key {key!r} must be bytes or str")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(
                f"value of metadata key {key!r} is not ASCII; use a key ending in '-bin' for bytes"
            ) from None
    if not isinstance(value, str):
        raise TypeError(f"value of metadata key {key!r} must be str, not {type(value).__name__}")
    if value.isascii() and value.isprintable():  # exactly 0x20-0x7E, checked in C
        return key, value
    for ch in value:
        if not " " <= ch <= "~":
            raise ValueError(
                f"value of metadata key {key!r} has a non-printable or non-ASCII character "
                f"{ch!r}; use a key ending in '-bin' for binary values"
            )
    return key, value


def normalize_metadata(metadata: MetadataLike) -> Metadata:
    """Validate caller metadata (a mapping or pairs) into a tuple of ``(key, value)``.

    Raises ValueError / TypeError naming the offending key.
    """
    if metadata is None:
        return ()
    if isinstance(metadata, Mapping):
        items: Iterable[Any] = metadata.items()
    elif isinstance(metadata, (str, bytes)):
        raise TypeError("metadata must be a mapping or a sequence of (key, value) pairs")
    else:
        items = metadata
    out: List[Tuple[str, MetadataValue]] = []
    for item in items:
        if isinstance(item, (str, bytes)):
            # A 2-character string would otherwise unpack as a (key, value) pair.
            raise TypeError(f"metadata entries must be (key, value) pairs, got {item!r}")
        try:
            key, value = item
        except (TypeError, ValueError):
            raise TypeError(f"metadata entries must be (key, value) pairs, got {item!r}") from None
        out.append(_validate_pair(key, value))
    return tuple(out)


def _b64encode(value: bytes) -> bytes:
    return base64.b64encode(value).rstrip(b"=")


def encode_metadata(metadata: Metadata) -> List[Tuple[bytes, bytes]]:
    """Encode validated metadata as HTTP/2 header pairs (``-bin`` values base64, unpadded)."""
    out = []
    for key, value in metadata:
        if isinstance(value, bytes):
            out.append((key.encode("ascii"), _b64encode(value)))
        else:
            out.append((key.encode("ascii"), value.encode("ascii")))
    return out


def decode_bin_value(value: bytes) -> bytes:
    """Decode a ``-bin`` value, padded or not; ValueError when it is not base64."""
    value = value.strip()
    pad = -len(value) % 4
    if pad == 3:
        raise ValueError(f"invalid base64 in binary metadata value: {value[:40]!r}")
    try:
        return base64.b64decode(value + b"=" * pad, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"invalid base64 in binary metadata value: {value[:40]!r}") from None


def decode_metadata(headers: Iterable[Tuple[bytes, bytes]]) -> Metadata:
    """Turn received header pairs into metadata, leaving out pseudo and transport headers.

    A ``-bin`` value that is not valid base64 is kept as its raw bytes rather than
    failing the call (the status is worth more than one broken header).
    """
    out: List[Tuple[str, MetadataValue]] = []
    for raw_key, raw_value in headers:
        if raw_key[:1] == b":" or raw_key in _TRANSPORT_HEADERS:
            continue
        key = raw_key.decode("ascii", "replace")
        if key.endswith("-bin"):
            try:
                out.append((key, decode_bin_value(raw_value)))
            except ValueError:
                out.append((key, bytes(raw_value)))
        else:
            out.append((key, raw_value.decode("latin-1")))
    return tuple(out)


# grpc-message: percent-encode everything outside printable ASCII, and '%' itself.
_UNRESERVED = frozenset(range(0x20, 0x7F)) - {0x25}
_PCT_RE = re.compile(rb"%([0-9A-Fa-f]{2})")


def encode_grpc_message(message: str) -> bytes:
    """Percent-encode a status message (UTF-8) for the ``grpc-message`` header.

    A space at either end is encoded too (``%20``): RFC 9113 section 8.2.1 forbids leading
    and trailing whitespace in a field value, and peers that enforce it (Node's http2, so
    grpc-js) drop the whole header otherwise.
    """
    raw = message.encode("utf-8", "surrogatepass")
    if all(b in _UNRESERVED for b in raw) and raw[:1] != b" " and raw[-1:] != b" ":
        return raw
    last = len(raw) - 1
    return b"".join(
        bytes((b,)) if b in _UNRESERVED and not (b == 0x20 and i in (0, last)) else b"%%%02X" % b
        for i, b in enumerate(raw)
    )


def decode_grpc_message(value: bytes) -> str:
    """Decode a ``grpc-message`` value; malformed escapes are kept literally, bad UTF-8 replaced."""
    if b"%" not in value:
        return value.decode("utf-8", "replace")
    return _PCT_RE.sub(lambda m: bytes((int(m.group(1), 16),)), value).decode("utf-8", "replace")


# grpc-timeout: TimeoutValue is 1-8 digits; units from finest to coarsest.
_TIMEOUT_UNITS = (("n", 1e9), ("u", 1e6), ("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600))
_UNIT_SECONDS = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "S": 1.0, "M": 60.0, "H": 3600.0}
_MAX_TIMEOUT_VALUE = 99_999_999
_TIMEOUT_RE = re.compile(r"([0-9]{1,8})([HMSmun])\Z")  # ASCII digits only


def encode_grpc_timeout(seconds: float) -> str:
    """Encode a positive timeout in the finest unit whose value fits in 8 digits.

    Rounds up, so the server never sees a shorter deadline than the client's.
    """
    if seconds != seconds or seconds < 0:
        raise ValueError(f"timeout must be a non-negative number of seconds, got {seconds!r}")
    if seconds == math.inf:
        return f"{_MAX_TIMEOUT_VALUE}H"
    for unit, per_second in _TIMEOUT_UNITS:
        value = math.ceil(seconds * per_second)
        # The product can round down (0.1 * 1e9); bump so the parsed value is never shorter.
        if value * _UNIT_SECONDS[unit] < seconds:
            value += 1
        if value <= _MAX_TIMEOUT_VALUE:
            return f"{value}{unit}"
    return f"{_MAX_TIMEOUT_VALUE}H"


def parse_grpc_timeout(value: str) -> float:
    """Parse a ``grpc-timeout`` value into seconds; ValueError when malformed."""
    match = _TIMEOUT_RE.match(value)
    if match is None:
        raise ValueError(
            f"malformed grpc-timeout {value!r}: expected 1-8 digits and a unit of H, M, S, m, u, n"
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
