"""The one place that knows about ``h2`` internals and version differences.

Everything here is a configuration choice or workaround measured to matter on the hot
path; tests in ``tests/test_h2compat.py`` check it against the h2 versions we allow.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection

__all__ = ["make_h2_connection", "H2_VERSION"]

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
        logger=_NULL_LOGGER,
    )
    return h2.connection.H2Connection(config=config)
