"""Options validated once, at construction, into frozen objects every layer above reuses.

Each error names the keyword it is about (ValueError for a bad value, TypeError for a bad
type), so ``Channel``, ``Server``, the Wove executor and the CLI report the same mistakes
the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["ServerOptions", "check_int"]


@dataclass(frozen=True)
class ServerOptions:
    """Validated ``Server`` options, built once (each error names the keyword)."""

    max_receive_message_length: int
    max_concurrent_streams: int
    debug: bool
    handshake_timeout: Optional[float]
    idle_timeout: Optional[float]
    max_header_list_size: int
    max_client_resets: Optional[int]

    def __post_init__(self) -> None:
        check_int("max_receive_message_length", self.max_receive_message_length, -1)
        if self.max_receive_message_length == 0:
            raise ValueError("max_receive_message_length must be positive or -1 (unlimited)")
        check_int("max_concurrent_streams", self.max_concurrent_streams, 1, 2**31 - 1)
        check_int("max_header_list_size", self.max_header_list_size, 1024, 2**31 - 1)
        if self.max_client_resets is not None:
            check_int("max_client_resets", self.max_client_resets, 1)
        for name in ("handshake_timeout", "idle_timeout"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number of seconds or None")
            if not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value!r}")


def check_int(name: str, value: object, low: int, high: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bound}, got {value}")
