"""The one place that knows about ``h2`` internals and version differences.

Everything here is a configuration choice or workaround measured to matter on the hot
path; tests in ``tests/test_h2compat.py`` check it against the h2 versions we allow.
"""

from __future__ import annotations

import re
from typing import Any, List, Tuple

import h2
import h2.config
import h2.connection
from h2.errors import ErrorCodes
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from hyperframe.frame import RstStreamFrame

__all__ = ["H2_VERSION", "RECEIVE_FRAME_WITHOUT_REPR", "GrpcH2Connection", "make_h2_connection"]

# ``h2.__version__`` rather than importlib.metadata: the latter costs ~15 ms of import time.
H2_VERSION: str = str(getattr(h2, "__version__", "unknown"))


def _version_tuple(version: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


# h2 releases whose ``H2Connection._receive_frame`` was read and found identical, apart from
# the eager ``repr(frame)``, to ``_receive_frame_without_repr`` below (4.1.0 .. 4.4.x; the
# body has not changed since 4.1). Any other release keeps h2's own method.
RECEIVE_FRAME_WITHOUT_REPR = (4, 1) <= _version_tuple(H2_VERSION)[:2] <= (4, 4)


class _NullLogger:
    """h2 logs every frame at debug/trace; we never want that cost on the hot path."""

    __slots__ = ()

    def debug(self, *args: Any, **kwargs: Any) -> None:
        return None

    def trace(self, *args: Any, **kwargs: Any) -> None:
        return None


_NULL_LOGGER = _NullLogger()

_OPEN_STATES = (
    h2.connection.ConnectionState.CLIENT_OPEN,
    h2.connection.ConnectionState.SERVER_OPEN,
)


def _receive_frame_without_repr(self: h2.connection.H2Connection, frame: Any) -> List[Any]:
    """h2's ``H2Connection._receive_frame`` minus its first line, ``logger.trace(repr(frame))``.

    h2 formats ``repr(frame)`` for every received frame before calling the logger, even a
    logger that discards it; for DATA frames hyperframe hexlifies the payload, which was
    about half of the client's CPU time at 1 MiB per message. The rest is h2's code,
    unchanged: same dispatch, same stream-error handling (RFC 9113 section 5.4.2).
    """
    events: List[Any]
    try:
        frames, events = self._frame_dispatch_table[frame.__class__](frame)
    except StreamClosedError as e:
        # Closed by RST_STREAM: answer with RST_STREAM; otherwise a connection error.
        if self._stream_is_closed_by_reset(e.stream_id):
            f = RstStreamFrame(e.stream_id)
            f.error_code = e.error_code
            self._prepare_for_sending([f])
            events = e._events
        else:
            raise
    except StreamIDTooLowError as e:
        # Closed by RST_STREAM is a stream error; by END_STREAM or implicitly, a
        # connection error (STREAM_CLOSED or PROTOCOL_ERROR respectively).
        if self._stream_is_closed_by_reset(e.stream_id):
            f = RstStreamFrame(e.stream_id)
            f.error_code = ErrorCodes.STREAM_CLOSED
            self._prepare_for_sending([f])
            events = []
        elif self._stream_is_closed_by_end(e.stream_id):
            raise StreamClosedError(e.stream_id) from e
        else:
            raise
    else:
        self._prepare_for_sending(frames)
    return events


class GrpcH2Connection(h2.connection.H2Connection):
    """``H2Connection`` that keeps draining streams after receiving GOAWAY.

    It also skips h2's eager ``repr(frame)`` per received frame (see
    ``_receive_frame_without_repr``) on the h2 releases where that was verified.

    RFC 9113 section 6.8: streams at or below a GOAWAY's last-stream-id may still
    complete. h2 moves its connection state machine to CLOSED on any received GOAWAY,
    after which every further frame (the rest of those responses) is a ProtocolError,
    failing calls the server is finishing (grpclib's behaviour). We restore the open
    state; the caller refuses to open new streams on a connection that got GOAWAY.
    """

    def _receive_goaway_frame(self, frame: Any) -> Any:
        previous = self.state_machine.state
        result = super()._receive_goaway_frame(frame)
        if previous in _OPEN_STATES:
            self.state_machine.state = previous
        return result

    if RECEIVE_FRAME_WITHOUT_REPR:
        _receive_frame = _receive_frame_without_repr


def make_h2_connection(*, client_side: bool) -> h2.connection.H2Connection:
    """A fresh ``H2Connection`` configured for gRPC: bytes headers, no per-header validation.

    Header validation and normalisation are off because we build outbound headers
    ourselves (already lowercase and valid) and check inbound gRPC headers explicitly.
    """
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        logger=_NULL_LOGGER,  # type: ignore[arg-type]  # duck-typed logger
    )
    return GrpcH2Connection(config=config)
