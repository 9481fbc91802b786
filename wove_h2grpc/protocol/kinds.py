"""The four RPC kinds and the end-of-stream sentinel, shared by the client and the server.

A kind says whether each direction carries one message or a stream of them (PROTOCOL-HTTP2
makes no difference on the wire: every call is one HTTP/2 stream of length-prefixed
messages); the call state machines read ``request_streaming`` / ``response_streaming`` to
apply the "exactly one message" rules of the unary directions.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["EOF", "RpcKind"]


class RpcKind(enum.Enum):
    """``unary_unary``, ``unary_stream``, ``stream_unary`` or ``stream_stream``."""

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    @property
    def request_streaming(self) -> bool:
        """True when the client sends any number of messages (else exactly one)."""
        return self is RpcKind.STREAM_UNARY or self is RpcKind.STREAM_STREAM

    @property
    def response_streaming(self) -> bool:
        """True when the server sends any number of messages (else exactly one)."""
        return self is RpcKind.UNARY_STREAM or self is RpcKind.STREAM_STREAM

    @classmethod
    def parse(cls, kind: object) -> RpcKind:
        """``kind`` as an RpcKind: a member or its name (ValueError/TypeError otherwise)."""
        if isinstance(kind, RpcKind):
            return kind
        if not isinstance(kind, str):
            raise TypeError(f"kind must be a str, not {type(kind).__name__}")
        try:
            return cls(kind)
        except ValueError:
            names = ", ".join(repr(k.value) for k in cls)
            raise ValueError(f"kind must be one of {names}, got {kind!r}") from None


class _EOFType:
    """The type of :data:`EOF`; one instance, which survives copy and pickle as itself."""

    _instance: _EOFType | None = None

    def __new__(cls) -> _EOFType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "EOF"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "EOF"


EOF: Final = _EOFType()
"""Returned by ``read()`` on a call or a servicer context when the other side has ended its
stream of messages (grpc.aio's ``grpc.aio.EOF``)."""
