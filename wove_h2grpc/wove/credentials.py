"""A worker's check of a request's credentials, over its raw bytes, before it is unpickled.

:class:`RequestVerifier` applies ``wove.security`` (signed or bearer metadata) and refuses
with :class:`WorkerPermissionError`, whose ``code`` is the gRPC status to answer with:
``UNAUTHENTICATED`` for missing or wrong credentials (including a replayed nonce),
``PERMISSION_DENIED`` when no security is configured and unsigned requests are not allowed.
"""

from __future__ import annotations

import copy
import heapq
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from wove.security import NetworkExecutorSecurity

from ..protocol.status import StatusCode

__all__ = ["MetadataInput", "RequestVerifier", "WorkerPermissionError"]

#: Call metadata as ``(key, value)`` pairs (grpcio and our Server give tuples) or a mapping.
MetadataInput = Union[Iterable[Tuple[str, Any]], Mapping[str, Any]]

# wove.security's signed-request headers, as lowercase gRPC metadata keys.
_NONCE_HEADER = "x-wove-nonce"
_TIMESTAMP_HEADER = "x-wove-timestamp"


class WorkerPermissionError(PermissionError):
    """A request the worker refuses to run; ``code`` is the gRPC status to answer with."""

    def __init__(self, message: str, code: StatusCode = StatusCode.UNAUTHENTICATED) -> None:
        super().__init__(message)
        self.code = code


def _security_from(security: Any) -> Optional[NetworkExecutorSecurity]:
    if security is None:
        return None
    if isinstance(security, NetworkExecutorSecurity):
        resolved = security
    else:
        resolved = NetworkExecutorSecurity.from_config(security)
    # mode "none" verifies nothing: treat it exactly like "no security configured".
    return None if resolved.mode == "none" else resolved


class RequestVerifier:
    """Verifies requests with ``security`` (anything ``NetworkExecutorSecurity.from_config``
    takes), or, with ``security=None``, lets them through only when ``allow_unsigned``.

    Raises ``ValueError`` when both are given: a worker with security verifies every request.
    """

    def __init__(self, security: Any, *, allow_unsigned: bool) -> None:
        resolved = _security_from(security)
        if resolved is not None and allow_unsigned:
            raise ValueError(
                "allow_unsigned=True conflicts with security: a worker with security verifies "
                "every request; pass security=None to run unsigned requests"
            )
        self._nonces: Optional[_NonceRegistry] = None
        if resolved is not None and resolved.mode == "signed" and resolved.remember_nonces:
            # Wove's replay check scans every remembered nonce on each request (quadratic
            # over a large mapped task: 2.5 s of 7.5 s for 2,000 calls). Verify with a copy
            # that skips it and keep the same rule here in O(log n).
            self._nonces = _NonceRegistry(resolved.clock_skew_seconds)
            resolved = copy.copy(resolved)
            resolved.remember_nonces = False
        self._security = resolved
        self._allow_unsigned = bool(allow_unsigned)

    @property
    def security_mode(self) -> str:
        """``"signed"``, ``"bearer"`` or ``"none"`` (no security configured)."""
        return "none" if self._security is None else str(self._security.mode)

    @property
    def allow_unsigned(self) -> bool:
        """Whether requests without credentials pass (only possible without security)."""
        return self._allow_unsigned

    def verify(self, request: bytes, metadata: MetadataInput, target: str) -> None:
        """Check the credentials for ``target`` (the method path signatures cover)."""
        if self._security is None:
            if self._allow_unsigned:
                return
            raise WorkerPermissionError(
                "this worker has no security configured and does not accept unsigned "
                "requests (start it with a security secret, or allow_unsigned=True)",
                StatusCode.PERMISSION_DENIED,
            )
        pairs = _text_metadata(metadata.items() if isinstance(metadata, Mapping) else metadata)
        try:
            self._security.verify_metadata(
                metadata=pairs, transport="grpc", target=target, body=bytes(request)
            )
        except PermissionError as exc:
            raise WorkerPermissionError(str(exc), StatusCode.UNAUTHENTICATED) from None
        if self._nonces is not None:
            # Only reached with a valid signature, so nonce and timestamp are present.
            values = {key.lower(): value for key, value in pairs}
            if not self._nonces.check_and_remember(
                values.get(_NONCE_HEADER, ""), float(values.get(_TIMESTAMP_HEADER, "0"))
            ):
                raise WorkerPermissionError(
                    "Replayed Wove network executor signature.", StatusCode.UNAUTHENTICATED
                )


class _NonceRegistry:
    """Wove's replay rule (``NetworkExecutorSecurity._check_nonce``) in O(log n) per request.

    A nonce is refused if it was seen with a timestamp inside the clock-skew window; entries
    older than the window are forgotten (the timestamp check refuses those requests anyway).
    Timestamps come from clients, not in order, hence a heap for expiry.
    """

    def __init__(self, window: float) -> None:
        self._window = float(window)
        self._seen: Dict[str, float] = {}
        self._expiry: List[Tuple[float, str]] = []

    def check_and_remember(self, nonce: str, timestamp: float) -> bool:
        cutoff = time.time() - self._window
        expiry = self._expiry
        while expiry and expiry[0][0] < cutoff:
            seen_at, old = heapq.heappop(expiry)
            if self._seen.get(old) == seen_at:
                del self._seen[old]
        if nonce in self._seen:
            return False
        self._seen[nonce] = timestamp
        heapq.heappush(expiry, (timestamp, nonce))
        return True


def _text_metadata(metadata: Iterable[Tuple[str, Any]]) -> List[Tuple[str, str]]:
    # Signature headers are ASCII text; -bin values (bytes) take no part in verification.
    pairs: List[Tuple[str, str]] = []
    for key, value in metadata:
        if isinstance(value, (bytes, bytearray)):
            continue
        pairs.append((str(key), str(value)))
    return pairs
