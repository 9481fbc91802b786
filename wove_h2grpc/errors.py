"""The error a failed call raises: GrpcError (as grpc.aio.AioRpcError), its cause as data."""

from __future__ import annotations

from typing import Optional, Tuple, Union

from .protocol.status import StatusCode

__all__ = ["GrpcError", "Metadata", "MetadataValue"]

MetadataValue = Union[str, bytes]
Metadata = Tuple[Tuple[str, MetadataValue], ...]


class GrpcError(Exception):
    """A call that ended with a non-OK status (from the server or from the client side)."""

    def __init__(
        self,
        code: StatusCode,
        details: str = "",
        *,
        initial_metadata: Metadata = (),
        trailing_metadata: Metadata = (),
        debug_error_string: str = "",
        request_sent: Optional[bool] = None,
        h2_error_code: Optional[int] = None,
    ) -> None:
        super().__init__(code, details)
        self.request_sent = request_sent
        """Whether the request reached the server's application, as data for retry decisions.

        False: provably never processed (no connection, still queued, stream refused or
        above a GOAWAY's last stream id), so sending it again cannot run it twice. True:
        the server answered it (response headers arrived). None: unknown, it may have run.
        """
        self.h2_error_code = h2_error_code
        """The HTTP/2 error code (RFC 9113 section 7) of the RST_STREAM or GOAWAY that ended
        the call, or None when the call did not end that way."""
        self._code = StatusCode(code)
        self._details = details
        self._initial_metadata = tuple(initial_metadata)
        self._trailing_metadata = tuple(trailing_metadata)
        self._debug = debug_error_string

    def code(self) -> StatusCode:
        """The gRPC status code."""
        return self._code

    def details(self) -> str:
        """The human-readable status message (percent-decoded ``grpc-message``)."""
        return self._details

    def initial_metadata(self) -> Metadata:
        """Response headers of the call, as ``(key, value)`` pairs (empty if none arrived)."""
        return self._initial_metadata

    def trailing_metadata(self) -> Metadata:
        """Trailers of the call, as ``(key, value)`` pairs; ``-bin`` values are bytes."""
        return self._trailing_metadata

    def debug_error_string(self) -> str:
        """Where the status came from (peer, stream, underlying error), for logs."""
        return self._debug or f"{self._code.name}: {self._details}"

    def __str__(self) -> str:
        return f"<GrpcError {self._code.name}: {self._details}>"

    def __repr__(self) -> str:
        return f"GrpcError(StatusCode.{self._code.name}, {self._details!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the error picklable (Wove ships errors between processes).
        return (
            _rebuild,
            (
                int(self._code),
                self._details,
                self._initial_metadata,
                self._trailing_metadata,
                self._debug,
                self.request_sent,
                self.h2_error_code,
            ),
        )


def _rebuild(
    code: int,
    details: str,
    initial: Metadata,
    trailing: Metadata,
    debug: str,
    request_sent: Optional[bool] = None,
    h2_error_code: Optional[int] = None,
) -> GrpcError:
    return GrpcError(
        StatusCode(code),
        details,
        initial_metadata=initial,
        trailing_metadata=trailing,
        debug_error_string=debug,
        request_sent=request_sent,
        h2_error_code=h2_error_code,
    )
