"""gRPC message framing: the 5-byte length prefix, an incremental decoder, gzip.

No IO. PROTOCOL-HTTP2 "Length-Prefixed-Message": one compressed-flag byte, a 4-byte
big-endian length, then the message. The decoder checks the length against the
receive limit from the prefix alone, so an oversized message is refused before any
of its bytes are buffered.
"""

from __future__ import annotations

import zlib
from typing import List, Optional, Tuple

from ..errors import GrpcError
from .status import StatusCode

__all__ = [
    "ACCEPT_ENCODING",
    "MessageDecoder",
    "decompress",
    "encode_message_prefix",
    "frame_message",
    "gzip_compress",
    "gzip_decompress",
]

ACCEPT_ENCODING = "identity,gzip"
_MAX_LENGTH = 0xFFFFFFFF


def too_large(direction: str, length: int, limit: int) -> GrpcError:
    """The RESOURCE_EXHAUSTED error for a message over a limit, worded as grpcio words it."""
    return GrpcError(
        StatusCode.RESOURCE_EXHAUSTED,
        f"{direction} message larger than max ({length} vs. {limit})",
    )


def encode_message_prefix(length: int, compressed: bool = False) -> bytes:
    """The 5-byte prefix for a message of ``length`` bytes."""
    if length > _MAX_LENGTH:
        raise ValueError(f"message of {length} bytes does not fit a gRPC length prefix")
    return (b"\x01" if compressed else b"\x00") + length.to_bytes(4, "big")


def frame_message(payload: bytes, gzip: bool = False) -> Tuple[bytes, bytes]:
    """One message for the wire as (5-byte prefix, body), gzip-compressed when asked.

    Kept as two parts so a large message is never copied just to prepend five bytes.
    """
    if gzip:
        payload = gzip_compress(payload)
    return encode_message_prefix(len(payload), gzip), payload


class MessageDecoder:
    """Incremental decoder of length-prefixed messages across arbitrary chunk boundaries.

    ``feed(chunk)`` returns the messages completed by that chunk as
    ``(compressed, payload)`` pairs. A message longer than ``max_length`` (``-1`` for no
    limit) raises RESOURCE_EXHAUSTED as soon as its prefix is seen. ``pending`` is the
    number of body bytes held for the message in progress (0 between messages), kept as
    a plain counter so that memory accounting can read it for free.
    """

    __slots__ = (
        "_chunks",
        "_compressed",
        "_header",
        "_max_length",
        "_need",
        "direction",
        "pending",
    )

    def __init__(self, max_length: int = -1, *, direction: str = "Received") -> None:
        self._max_length = max_length
        self._header = b""  # partial prefix bytes
        self._chunks: List[bytes] = []  # body bytes of the current message
        self._need = -1  # body bytes still missing; -1 while reading a prefix
        self._compressed = False
        self.direction = direction
        self.pending = 0

    @property
    def buffered(self) -> int:
        """Bytes held for the message in progress (bounded by the limit)."""
        return len(self._header) + self.pending

    def feed(self, data: bytes) -> List[Tuple[bool, bytes]]:
        """Consume ``data``; return the messages it completes."""
        out: List[Tuple[bool, bytes]] = []
        pos = 0
        end = len(data)
        while pos < end:
            need = self._need
            if need < 0:
                # Reading the 5-byte prefix, possibly split across chunks.
                if not self._header and end - pos >= 5:
                    head = data[pos : pos + 5]
                    pos += 5
                else:
                    take = 5 - len(self._header)
                    self._header += data[pos : pos + take]
                    pos += take
                    if len(self._header) < 5:
                        break
                    head = self._header
                    self._header = b""
                flag = head[0]
                if flag > 1:
                    raise GrpcError(
                        StatusCode.INTERNAL,
                        f"invalid gRPC message prefix: compressed-flag byte is {flag}, not 0 or 1",
                    )
                length = int.from_bytes(head[1:5], "big")
                if 0 <= self._max_length < length:
                    raise too_large(self.direction, length, self._max_length)
                self._compressed = flag == 1
                if length == 0:
                    out.append((self._compressed, b""))
                    continue
                self._need = length
                need = length
            avail = end - pos
            if not self._chunks and avail >= need:
                # Fast path: the whole body is in this chunk; at most one copy.
                body = data if (pos == 0 and need == end) else data[pos : pos + need]
                pos += need
                self._need = -1
                out.append((self._compressed, bytes(body)))
                continue
            take = need if avail >= need else avail
            self._chunks.append(bytes(data[pos : pos + take]))
            self.pending += take
            pos += take
            need -= take
            if need:
                self._need = need
                break
            self._need = -1
            self.pending = 0
            chunks = self._chunks
            self._chunks = []
            out.append((self._compressed, chunks[0] if len(chunks) == 1 else b"".join(chunks)))
        return out

    def incomplete_error(self) -> Optional[GrpcError]:
        """The INTERNAL error for a stream that ended inside a message, or None."""
        if self._header:
            return GrpcError(
                StatusCode.INTERNAL,
                f"stream ended inside a gRPC message prefix ({len(self._header)} of 5 bytes)",
            )
        if self._need >= 0:
            got = self.pending
            return GrpcError(
                StatusCode.INTERNAL,
                f"stream ended inside a gRPC message: got {got} of {got + self._need} bytes "
                "(truncated message)",
            )
        return None


def gzip_compress(payload: bytes) -> bytes:
    """gzip-frame ``payload`` (RFC 1952, as ``grpc-encoding: gzip`` requires)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    return comp.compress(payload) + comp.flush()


def gzip_decompress(payload: bytes, max_length: int = -1, *, direction: str = "Received") -> bytes:
    """Inflate a gzip message, refusing output over ``max_length`` without inflating it all."""
    decomp = zlib.decompressobj(31)
    try:
        if max_length < 0:
            out = decomp.decompress(payload)
        else:
            out = decomp.decompress(payload, max_length + 1)
            if len(out) > max_length or decomp.unconsumed_tail:
                # Inflation stopped at the limit: the true size is unknown, only "more".
                raise GrpcError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"{direction} message larger than max after gzip decompression "
                    f"(more than {max_length} bytes vs. {max_length})",
                )
        out += decomp.flush()
    except zlib.error as exc:
        raise GrpcError(StatusCode.INTERNAL, f"failed to decompress gzip message: {exc}") from None
    if not decomp.eof:
        raise GrpcError(StatusCode.INTERNAL, "failed to decompress gzip message: truncated data")
    return out


def decompress(
    compressed: bool,
    payload: bytes,
    encoding: Optional[str],
    max_length: int = -1,
    *,
    direction: str = "Received",
) -> bytes:
    """Undo message compression per ``grpc-encoding``; INTERNAL when it cannot be undone."""
    if not compressed:
        return payload
    if encoding is None or encoding == "identity":
        raise GrpcError(
            StatusCode.INTERNAL,
            "received a compressed message but no grpc-encoding header says how it was compressed",
        )
    if encoding == "gzip":
        return gzip_decompress(payload, max_length, direction=direction)
    raise GrpcError(
        StatusCode.INTERNAL,
        f"received a message compressed with unsupported grpc-encoding {encoding!r} "
        f"(supported: {ACCEPT_ENCODING})",
    )
