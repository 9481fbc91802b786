"""Raw HTTP/2 frames for tests that speak to a peer below h2: any contents, valid or not."""

from __future__ import annotations

import struct

__all__ = ["frame"]


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame's bytes (RFC 9113 section 4.1): the 9-byte header, then ``payload``
    as given (the reserved bit of the stream id is left clear)."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id & 0x7FFFFFFF)
        + payload
    )
