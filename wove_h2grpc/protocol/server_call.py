"""A gRPC call from the server's side as an IO-free state machine: request rules in, status out.

``open_call`` checks a stream's request headers (PROTOCOL-HTTP2 "Requests": POST, gRPC
content-type, known method, supported ``grpc-encoding``, valid ``grpc-timeout``) and returns
either a :class:`ServerCall` or the :class:`Finish` that answers the stream at once. A call
decodes its request messages (size limit checked from the prefix, gzip; exactly one for the
kinds with a unary request), frames its response messages, and ends through
:meth:`ServerCall.finish` exactly once: that is the only place a final status block is built.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Callable, Deque, Optional, Tuple, Type, TypeVar, Union

from h2.errors import ErrorCodes

from ..errors import GrpcError, Metadata
from .call import Headers, is_grpc_content_type
from .framing import (
    ACCEPT_ENCODING,
    MessageDecoder,
    decompress,
    frame_message,
)
from .kinds import RpcKind
from .metadata import decode_metadata, encode_grpc_message, encode_metadata, parse_grpc_timeout
from .status import StatusCode

__all__ = ["Finish", "ServerCall", "ServerCallState", "open_call"]

_ACCEPT = ACCEPT_ENCODING.encode("ascii")
_RESPONSE_HEADERS: Headers = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", _ACCEPT),
]
_GZIP_RESPONSE_HEADERS: Headers = [*_RESPONSE_HEADERS, (b"grpc-encoding", b"gzip")]
_STATUS_BYTES = {code: str(int(code)).encode("ascii") for code in StatusCode}
# The kinds whose request is one message, as module constants: compared per call by
# identity (an Enum attribute lookup goes through EnumMeta.__getattr__ before 3.12).
_UNARY_UNARY, _UNARY_STREAM = RpcKind.UNARY_UNARY, RpcKind.UNARY_STREAM


class ServerCallState(enum.Enum):
    RECEIVING = "receiving"  # the request stream is open
    HALF_CLOSED = "half_closed"  # the client ended its request stream
    DONE = "done"  # the final status is decided (or the stream is gone)


# Enum members as module constants for the per-call path (before Python 3.12 every
# ``ServerCallState.X`` lookup goes through ``EnumMeta.__getattr__``).
RECEIVING, HALF_CLOSED, DONE = (
    ServerCallState.RECEIVING,
    ServerCallState.HALF_CLOSED,
    ServerCallState.DONE,
)


class Finish:
    """What ends a stream on the wire: a HEADERS block with END_STREAM, then maybe RST_STREAM.

    ``headers`` is None when the stream is only reset (a request without ``:path``).
    ``reset`` is sent after the block: NO_ERROR when the response is complete before the
    request was (RFC 9113 section 8.1), or the stream error itself.
    """

    __slots__ = ("code", "details", "headers", "reset")

    def __init__(
        self,
        headers: Optional[Headers],
        reset: Optional[int],
        code: StatusCode,
        details: str,
    ) -> None:
        self.headers = headers
        self.reset = reset
        self.code = code
        self.details = details

    def __repr__(self) -> str:
        return f"Finish({self.code.name}, {self.details!r}, reset={self.reset})"


def _status_block(code: StatusCode, details: str) -> Headers:
    block = [(b"grpc-status", _STATUS_BYTES[code])]
    if details:
        block.append((b"grpc-message", encode_grpc_message(details)))
    return block


def _reject(code: StatusCode, details: str, ended: bool, *, http: bytes = b"200") -> Finish:
    """A Trailers-Only answer for a stream no handler will see."""
    headers = [
        (b":status", http),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", _STATUS_BYTES[code]),
        (b"grpc-message", encode_grpc_message(details)),
    ]
    if code is StatusCode.UNIMPLEMENTED:
        headers.append((b"grpc-accept-encoding", _ACCEPT))
    return Finish(headers, None if ended else ErrorCodes.NO_ERROR, code, details)


C = TypeVar("C", bound="ServerCall")


def open_call(
    stream_id: int,
    headers: Headers,
    ended: bool,
    *,
    now: float,
    kind_of: Callable[[str], Optional[RpcKind]],
    max_receive: int,
    call_type: Type[C],
) -> Union[C, Finish]:
    """Check a new stream's request headers: a call to run, or the Finish that answers it.

    ``now`` is the clock the deadline is measured on; ``kind_of(path)`` is the kind of the
    method a handler serves there, None for an unknown method; ``call_type`` is the
    ServerCall class to build (the IO side may add its own fields to it).
    """
    method = path = content_type = timeout = encoding = accept = None
    for key, value in headers:
        if key[:1] == b":":
            if key == b":path":
                path = value
            elif key == b":method":
                method = value
        elif key == b"content-type":
            content_type = value
        elif key == b"grpc-timeout":
            timeout = value
        elif key == b"grpc-encoding":
            encoding = value
        elif key == b"grpc-accept-encoding":
            accept = value
    if path is None or method is None:
        return Finish(None, ErrorCodes.PROTOCOL_ERROR, StatusCode.INTERNAL, "no :path or :method")
    if method != b"POST":
        return _reject(
            StatusCode.INTERNAL,
            f"gRPC requires POST, got {method.decode('latin-1')!r}",
            ended,
            http=b"405",
        )
    if not is_grpc_content_type(content_type):
        # PROTOCOL-HTTP2: a non-gRPC content-type gets HTTP 415.
        return _reject(
            StatusCode.INTERNAL, f"invalid gRPC content-type {content_type!r}", ended, http=b"415"
        )
    name = path.decode("utf-8", "replace")
    kind = kind_of(name)
    if kind is None:
        return _reject(StatusCode.UNIMPLEMENTED, f"Method not found: {name}", ended)
    request_encoding = None
    if encoding is not None and encoding != b"identity":
        request_encoding = encoding.decode("latin-1")
        if request_encoding != "gzip":
            return _reject(
                StatusCode.UNIMPLEMENTED,
                f"grpc-encoding {request_encoding!r} is not supported "
                f"(supported: {ACCEPT_ENCODING})",
                ended,
            )
    deadline = None
    if timeout is not None:
        try:
            deadline = now + parse_grpc_timeout(timeout.decode("latin-1"))
        except ValueError as exc:
            return _reject(StatusCode.INTERNAL, str(exc), ended)
    # Policy: answer gzip only to a gzip request from a client that accepts gzip.
    gzip_reply = request_encoding == "gzip" and accept is not None and b"gzip" in accept
    return call_type(
        stream_id,
        name,
        headers,
        deadline=deadline,
        request_encoding=request_encoding,
        gzip_reply=gzip_reply,
        max_receive=max_receive,
        kind=kind,
    )


class ServerCall:
    """One call being served: request messages in ``requests``, response framing, one finish."""

    __slots__ = (
        "_metadata",
        "buffered",
        "code",
        "deadline",
        "decoder",
        "details",
        "gzip_reply",
        "headers",
        "headers_sent",
        "initial_metadata",
        "kind",
        "max_receive",
        "method",
        "request_encoding",
        "requests",
        "single_request",
        "state",
        "stream_id",
        "trailing_metadata",
    )

    def __init__(
        self,
        stream_id: int,
        method: str,
        headers: Headers,
        *,
        deadline: Optional[float] = None,
        request_encoding: Optional[str] = None,
        gzip_reply: bool = False,
        max_receive: int = -1,
        kind: RpcKind = _UNARY_UNARY,
    ) -> None:
        self.stream_id = stream_id
        self.method = method
        self.headers = headers
        self.deadline = deadline
        self.request_encoding = request_encoding
        self.gzip_reply = gzip_reply
        self.max_receive = max_receive
        self.kind = kind
        self.single_request = kind is _UNARY_UNARY or kind is _UNARY_STREAM
        self.decoder = MessageDecoder(max_receive)
        self.requests: Deque[bytes] = deque()
        self.buffered = 0  # bytes of the messages in ``requests``
        self.state = RECEIVING
        self.headers_sent = False
        self.initial_metadata: Metadata = ()
        self.trailing_metadata: Metadata = ()
        self.code = StatusCode.OK
        self.details = ""
        self._metadata: Optional[Metadata] = None

    @property
    def done(self) -> bool:
        return self.state is DONE

    @property
    def request_complete(self) -> bool:
        return self.state is not RECEIVING

    def metadata(self) -> Metadata:
        """The request's metadata (decoded once, on first use)."""
        if self._metadata is None:
            self._metadata = decode_metadata(self.headers)
        return self._metadata

    # ------------------------------------------------------------ wire inputs

    def on_data(self, data: bytes) -> Optional[Finish]:
        """A DATA payload of the request: messages are queued; a bad one ends the call."""
        if self.state is not RECEIVING:
            return None
        try:
            for compressed, payload in self.decoder.feed(data):
                if self.single_request and self.requests:
                    return self.finish(
                        StatusCode.UNIMPLEMENTED,
                        "received more than one request message for a unary method",
                    )
                message = decompress(compressed, payload, self.request_encoding, self.max_receive)
                self.requests.append(message)
                self.buffered += len(message)
        except GrpcError as exc:
            return self.finish(exc.code(), exc.details())
        return None

    def on_end(self) -> Optional[Finish]:
        """The client ended its request stream (half-closed remote)."""
        if self.state is not RECEIVING:
            return None
        self.state = HALF_CLOSED
        error = self.decoder.incomplete_error()
        if error is not None:
            return self.finish(error.code(), error.details())
        if self.single_request and not self.requests:
            return self.finish(
                StatusCode.INTERNAL, "request stream ended without a request message"
            )
        return None

    def on_reset(self) -> None:
        """The client reset the stream, or it is gone with the connection: nothing more to send."""
        self.state = DONE
        self.requests.clear()
        self.buffered = 0

    def take(self) -> Optional[bytes]:
        """The next request message, or None when none is waiting."""
        requests = self.requests
        if not requests:
            return None
        message = requests.popleft()
        self.buffered -= len(message)
        return message

    # ---------------------------------------------------------------- output

    def response_headers(self) -> Optional[Headers]:
        """The response HEADERS block (with initial metadata) if not sent yet, else None."""
        if self.headers_sent or self.state is DONE:
            return None
        self.headers_sent = True
        headers = _GZIP_RESPONSE_HEADERS if self.gzip_reply else _RESPONSE_HEADERS
        if self.initial_metadata:
            headers = headers + encode_metadata(self.initial_metadata)
        return headers

    def encode_response(self, payload: bytes) -> Tuple[bytes, bytes]:
        """One response message as (5-byte prefix, body), compressed when replying gzip."""
        return frame_message(payload, self.gzip_reply)

    def finish(self, code: StatusCode, details: str = "") -> Optional[Finish]:
        """End the call with ``code``: the status block to send (Trailers-Only when no
        response headers went out), once; None when the call had already ended."""
        if self.state is DONE:
            return None
        request_complete = self.request_complete
        self.state = DONE
        self.requests.clear()
        self.buffered = 0
        status = _status_block(code, details)
        if self.headers_sent:
            block = status
        else:
            block = [(b":status", b"200"), (b"content-type", b"application/grpc"), *status]
            if self.initial_metadata:
                block.extend(encode_metadata(self.initial_metadata))
        if self.trailing_metadata:
            block.extend(encode_metadata(self.trailing_metadata))
        return Finish(block, None if request_complete else ErrorCodes.NO_ERROR, code, details)
