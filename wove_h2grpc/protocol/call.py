"""A gRPC call from the client's side as an IO-free state machine, which alone decides its outcome.

The HTTP/2 driver feeds it what arrived for the call's stream (response headers, DATA,
trailers, end of stream, RST_STREAM) and what happened around it (deadline, cancel,
connection loss, GOAWAY); each input returns ``None`` while the call goes on, or its one
:class:`Outcome`, after which every further input is ignored. Received messages queue up in
``messages`` in order, so unary is the case of one response message and the streaming kinds
share the same rules (PROTOCOL-HTTP2 "Responses"; status mapping per
``http-grpc-status-mapping.md`` and the RST_STREAM/GOAWAY table of PROTOCOL-HTTP2 "Errors").
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Deque, List, Optional, Sequence, Tuple

from h2.errors import ErrorCodes

from ..errors import GrpcError, Metadata
from .framing import MessageDecoder, decompress
from .metadata import decode_grpc_message, decode_metadata
from .status import (
    StatusCode,
    h2_error_name,
    parse_grpc_status,
    status_from_h2_error,
    status_from_http,
)

__all__ = [
    "CallState",
    "ClientCall",
    "Headers",
    "Outcome",
    "Retry",
    "header",
    "initial_metadata_of",
    "is_grpc_content_type",
]

Headers = List[Tuple[bytes, bytes]]


class CallState(enum.Enum):
    """Where a client call is; every input is checked against it."""

    QUEUED = "queued"  # created, no frame of it sent yet
    OPEN = "open"  # request headers sent, no response headers yet
    RECEIVING = "receiving"  # gRPC response headers arrived: messages may follow
    NOT_GRPC = "not_grpc"  # response headers arrived but are not gRPC: body is discarded
    DONE = "done"  # the outcome is decided


class Retry(enum.Enum):
    """Whether a failed call may be sent again, because the server provably never ran it."""

    NO = "no"
    UNSENT = "unsent"  # no byte of it left the client: always safe, not counted
    REFUSED = "refused"  # sent, refused before processing (gRFC A6 transparent retry)


# Enum members as module constants for the per-call path: before Python 3.12 every
# ``CallState.X`` lookup goes through ``EnumMeta.__getattr__``, which costs more than the
# rest of a state check.
QUEUED, OPEN, RECEIVING, NOT_GRPC, DONE = (
    CallState.QUEUED,
    CallState.OPEN,
    CallState.RECEIVING,
    CallState.NOT_GRPC,
    CallState.DONE,
)
NO_RETRY, UNSENT, REFUSED = Retry.NO, Retry.UNSENT, Retry.REFUSED
_OK = StatusCode.OK


class Outcome:
    """How a call ended: status, metadata, the cause as data, and what the driver must do.

    ``reset`` is the RST_STREAM code the driver sends for the stream (None when the stream
    is over on the wire or was never opened). ``message`` is the single response message of
    an OK call that expects one.
    """

    __slots__ = (
        "_headers",
        "_trailers",
        "code",
        "details",
        "h2_error_code",
        "message",
        "request_sent",
        "reset",
        "retry",
    )

    def __init__(
        self,
        code: StatusCode,
        details: str = "",
        headers: Optional[Headers] = None,
        trailers: Optional[Headers] = None,
        request_sent: Optional[bool] = None,
        h2_error_code: Optional[int] = None,
        reset: Optional[int] = None,
        retry: Retry = NO_RETRY,
        message: Optional[bytes] = None,
    ) -> None:
        self.code = code
        self.details = details
        # The received header blocks; decoded into metadata only when asked for (a unary
        # success never needs them).
        self._headers = headers
        self._trailers = trailers
        self.request_sent = False if retry is not NO_RETRY else request_sent
        self.h2_error_code = h2_error_code
        self.reset = reset
        self.retry = retry
        self.message = message

    @property
    def initial_metadata(self) -> Metadata:
        """Metadata of the response headers (empty for a Trailers-Only response)."""
        return initial_metadata_of(self._headers, self._trailers)

    @property
    def trailing_metadata(self) -> Metadata:
        """Metadata of the trailers, or of the only HEADERS block of a Trailers-Only response."""
        if self._trailers is not None:
            return decode_metadata(self._trailers)
        headers = self._headers
        if headers is not None and header(headers, b"grpc-status") is not None:
            return decode_metadata(headers)  # Trailers-Only
        return ()

    def __repr__(self) -> str:
        return f"Outcome({self.code.name}, {self.details!r}, retry={self.retry.name})"


def initial_metadata_of(headers: Optional[Headers], trailers: Optional[Headers]) -> Metadata:
    """The initial metadata of a response so far: none before its headers, none when the
    only HEADERS block is a Trailers-Only status."""
    if headers is None or (trailers is None and header(headers, b"grpc-status") is not None):
        return ()
    return decode_metadata(headers)


def header(headers: Sequence[Tuple[bytes, bytes]], name: bytes) -> Optional[bytes]:
    """The first value of header ``name``, or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def is_grpc_content_type(value: Optional[bytes]) -> bool:
    """``application/grpc``, optionally followed by ``+proto``-style or ``;`` parameters."""
    if value is None or not value.startswith(b"application/grpc"):
        return False
    rest = value[16:]
    return not rest or rest[:1] in (b"+", b";")


class ClientCall:
    """One call from the client's side: request framing out, response rules in.

    ``single_response`` is True for unary responses (unary_unary, stream_unary): a second
    message, or none at all with OK, is INTERNAL. ``max_receive`` is the receive limit in
    bytes (-1 unlimited), checked from each message's prefix before it is buffered.
    """

    __slots__ = (
        "buffered",
        "decoder",
        "encoding",
        "headers",
        "http_status",
        "max_receive",
        "messages",
        "method",
        "outcome",
        "peer",
        "request_headers",
        "single_response",
        "state",
        "stream_id",
        "trailers",
    )

    def __init__(
        self,
        method: str,
        request_headers: Headers,
        max_receive: int = -1,
        single_response: bool = True,
    ) -> None:
        self.method = method
        self.request_headers = request_headers
        self.max_receive = max_receive
        self.single_response = single_response
        self.state = QUEUED
        self.stream_id = 0
        self.peer = ""
        self.headers: Optional[Headers] = None
        self.trailers: Optional[Headers] = None
        self.http_status = 0
        self.encoding: Optional[str] = None
        self.decoder: Optional[MessageDecoder] = None
        self.messages: Deque[bytes] = deque()
        self.buffered = 0  # bytes of the messages in ``messages``
        self.outcome: Optional[Outcome] = None

    def take(self) -> Optional[bytes]:
        """The next received message, or None when none is waiting."""
        messages = self.messages
        if not messages:
            return None
        message = messages.popleft()
        self.buffered -= len(message)
        return message

    # ------------------------------------------------------------ wire inputs

    def opened(self, stream_id: int, peer: str) -> None:
        """The request headers went out on ``stream_id`` to ``peer``."""
        if self.state is QUEUED:
            self.state = OPEN
            self.stream_id = stream_id
            self.peer = peer

    def on_headers(self, headers: Headers) -> Optional[Outcome]:
        """Response headers (or a Trailers-Only block, followed by end of stream)."""
        if self.state is not OPEN:
            return None
        self.headers = headers
        status = content_type = encoding = None
        for key, value in headers:  # one pass for the three headers this needs
            if key == b":status":
                status = value
            elif key == b"content-type":
                content_type = value
            elif key == b"grpc-encoding":
                encoding = value
        if status == b"200":
            self.http_status = 200
        else:
            try:
                self.http_status = int(status) if status is not None else 0
            except ValueError:
                self.http_status = 0
        if self.http_status != 200 or not is_grpc_content_type(content_type):
            # Not a gRPC response (an error page, a proxy's answer): its body is not
            # length-prefixed messages; the status comes from the HTTP status.
            self.state = NOT_GRPC
            return None
        self.encoding = encoding.decode("ascii", "replace") if encoding is not None else None
        self.decoder = MessageDecoder(self.max_receive)
        self.state = RECEIVING
        return None

    def on_data(self, data: bytes) -> Optional[Outcome]:
        """A DATA payload: completed messages are queued; a bad one ends the call."""
        decoder = self.decoder
        if self.state is not RECEIVING or decoder is None:
            return None  # not gRPC (dropped), or already decided
        try:
            for compressed, payload in decoder.feed(data):
                if self.single_response and self.messages:
                    raise GrpcError(
                        StatusCode.INTERNAL,
                        f"server sent more than one response message for unary {self.method}",
                    )
                message = decompress(compressed, payload, self.encoding, self.max_receive)
                self.messages.append(message)
                self.buffered += len(message)
        except GrpcError as exc:
            return self._finish(exc.code(), exc.details(), reset=ErrorCodes.CANCEL)
        return None

    def on_trailers(self, trailers: Headers) -> Optional[Outcome]:
        if self.state in (RECEIVING, NOT_GRPC):
            self.trailers = trailers
        return None

    def on_end(self) -> Optional[Outcome]:
        """The server ended the stream: decide the status (PROTOCOL-HTTP2 "Responses")."""
        if self.state is DONE:
            return None
        headers = self.headers or []
        trailers = self.trailers
        # Trailers-Only: the status is in the only HEADERS frame.
        block = trailers if trailers is not None else headers
        raw_status = header(block, b"grpc-status")
        if raw_status is None:
            return self._finish(*self._missing_status(headers, trailers))
        try:
            code = parse_grpc_status(raw_status.decode("ascii", "replace"))
        except ValueError as exc:
            return self._finish(StatusCode.INTERNAL, str(exc))
        if code is not _OK:
            raw_message = header(block, b"grpc-message")
            details = decode_grpc_message(raw_message) if raw_message is not None else ""
            return self._finish(code, details)
        decoder = self.decoder
        if decoder is not None:
            incomplete = decoder.incomplete_error()
            if incomplete is not None:
                return self._finish(incomplete.code(), incomplete.details())
        if not self.single_response:
            return self._finish(_OK)
        if not self.messages:
            return self._finish(
                StatusCode.INTERNAL,
                f"server sent OK but no response message for unary {self.method}",
            )
        return self._finish(_OK, message=self.messages.popleft())

    def _missing_status(
        self, headers: Headers, trailers: Optional[Headers]
    ) -> Tuple[StatusCode, str]:
        http_status = self.http_status
        if http_status != 200:
            code = status_from_http(http_status)
            return code, (
                f"HTTP status {http_status} without grpc-status from {self.peer}"
                f" (mapped to {code.name})"
            )
        content_type = header(headers, b"content-type") or b""
        if not is_grpc_content_type(content_type):
            return StatusCode.UNKNOWN, (
                f"response is not gRPC: content-type {content_type.decode('latin-1')!r}"
            )
        if trailers is None:
            return StatusCode.INTERNAL, (
                "server closed the stream without trailers (grpc-status missing)"
            )
        return StatusCode.INTERNAL, "trailers arrived without grpc-status"

    def on_reset(self, error_code: int) -> Optional[Outcome]:
        """The server reset the stream (RST_STREAM)."""
        if self.state is DONE:
            return None
        name = h2_error_name(error_code)
        if error_code == ErrorCodes.REFUSED_STREAM and self.headers is None:
            # RFC 9113 section 8.7: a refused stream was not processed; safe to retry.
            return self._finish(
                StatusCode.UNAVAILABLE,
                f"stream refused by {self.peer} (RST_STREAM REFUSED_STREAM)",
                retry=REFUSED,
                h2_error_code=error_code,
            )
        return self._finish(
            status_from_h2_error(error_code),
            f"stream reset by server (RST_STREAM {name})",
            h2_error_code=error_code,
        )

    # ----------------------------------------------------------- local inputs

    def on_goaway(self, last_stream_id: int, error_code: int, reason: str) -> Optional[Outcome]:
        """The server sent GOAWAY: streams above its last id never ran (RFC 9113 section 6.8).

        Streams at or below it may still complete; with an error code the connection ends,
        and they fail (they may have run).
        """
        if self.state is DONE:
            return None
        if self.state is QUEUED:
            return self._finish(StatusCode.UNAVAILABLE, reason, retry=UNSENT)
        if self.stream_id > last_stream_id:
            return self._finish(
                StatusCode.UNAVAILABLE,
                f"{reason}: stream {self.stream_id} above last-stream-id {last_stream_id}",
                retry=REFUSED,
                h2_error_code=error_code,
            )
        if error_code != ErrorCodes.NO_ERROR:
            return self._finish(status_from_h2_error(error_code), reason, h2_error_code=error_code)
        return None

    def on_connection_lost(
        self, code: StatusCode, details: str, *, h2_error_code: Optional[int] = None
    ) -> Optional[Outcome]:
        """The connection failed or closed: a queued call was never sent, others may have run."""
        if self.state is DONE:
            return None
        if self.state is QUEUED:
            return self._finish(StatusCode.UNAVAILABLE, details, retry=UNSENT)
        return self._finish(code, details, h2_error_code=h2_error_code)

    def on_deadline(self) -> Optional[Outcome]:
        """The call's deadline passed: DEADLINE_EXCEEDED, stream reset with CANCEL."""
        if self.state is DONE:
            return None
        return self._finish(
            StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            reset=ErrorCodes.CANCEL if self.stream_id else None,
        )

    def on_cancel(
        self,
        details: str = "Locally cancelled by application!",
        code: StatusCode = StatusCode.CANCELLED,
    ) -> Optional[Outcome]:
        """The application gave up on the call (CANCELLED), or the client found it cannot
        go on (``code``: a request message over the size limit, a failing request
        iterator): the stream is reset with CANCEL."""
        if self.state is DONE:
            return None
        return self._finish(
            code,
            details,
            reset=ErrorCodes.CANCEL if self.stream_id else None,
        )

    # ---------------------------------------------------------------- outcome

    def _finish(
        self,
        code: StatusCode,
        details: str = "",
        *,
        reset: Optional[int] = None,
        retry: Retry = NO_RETRY,
        h2_error_code: Optional[int] = None,
        message: Optional[bytes] = None,
    ) -> Outcome:
        """The one exit: record the outcome and move to DONE."""
        headers = self.headers
        if self.state is QUEUED:
            sent: Optional[bool] = False
        elif headers is not None:
            sent = True
        else:
            sent = None
        # Positional: a class call with keywords builds a dict on every call.
        outcome = Outcome(
            code, details, headers, self.trailers, sent, h2_error_code, reset, retry, message
        )
        self.state = DONE
        self.outcome = outcome
        return outcome

    def error(
        self, outcome: Outcome, *, target: str = "", elapsed: Optional[float] = None
    ) -> GrpcError:
        """The GrpcError the application sees for a failed outcome; the debug string says
        which method, where (target and peer), which stream and after how long."""
        return GrpcError(
            outcome.code,
            outcome.details,
            initial_metadata=outcome.initial_metadata,
            trailing_metadata=outcome.trailing_metadata,
            debug_error_string=debug_string(
                outcome.code,
                outcome.details,
                method=self.method,
                target=target,
                peer=self.peer,
                stream_id=self.stream_id,
                elapsed=elapsed,
                h2_error_code=outcome.h2_error_code,
            ),
            request_sent=outcome.request_sent,
            h2_error_code=outcome.h2_error_code,
        )


def debug_string(
    code: StatusCode,
    details: str,
    *,
    method: str,
    target: str = "",
    peer: str = "",
    stream_id: int = 0,
    elapsed: Optional[float] = None,
    h2_error_code: Optional[int] = None,
) -> str:
    """One line for logs: the status, the method, where (target and peer), which stream
    (``no stream`` when the call never got one) and how long the call had run."""
    where = peer or target or "?"
    if target and peer and target != peer:
        where = f"{target} ({peer})"
    stream = f"stream {stream_id}" if stream_id else "no stream"
    debug = f"{code.name} from {where} {stream} ({method})"
    if elapsed is not None:
        debug += f" after {elapsed:.3f}s"
    if h2_error_code is not None:
        debug += f" [HTTP/2 {h2_error_name(h2_error_code)}]"
    return f"{debug}: {details}"


def with_debug(
    error: GrpcError, *, method: str, target: str, elapsed: Optional[float]
) -> GrpcError:
    """``error`` (raised before the call had a stream) with a debug string naming the call."""
    return GrpcError(
        error.code(),
        error.details(),
        initial_metadata=error.initial_metadata(),
        trailing_metadata=error.trailing_metadata(),
        debug_error_string=debug_string(
            error.code(), error.details(), method=method, target=target, elapsed=elapsed
        ),
        request_sent=error.request_sent,
        h2_error_code=error.h2_error_code,
    )
