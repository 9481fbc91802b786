"""The one place that knows about ``h2`` internals and version differences.

Everything here is a configuration choice or workaround measured to matter on the hot
path; tests in ``tests/test_h2compat.py`` check it against the h2 versions we allow.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection

__all__ = ["H2_VERSION", "GrpcH2Connection", "make_h2_connection"]

try:
    from importlib.metadata import version as _version

    H2_VERSION = _version("h2")
except Exception:  # pragma: no cover - metadata missing in odd installs
    H2_VERSION = "unknown"


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


class GrpcH2Connection(h2.connection.H2Connection):
    """``H2Connection`` that keeps draining streams after receiving GOAWAY.

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
