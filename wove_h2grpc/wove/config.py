"""``executor_config`` for the h2 transport: its keys, and their validation into :class:`Settings`.

The rules and messages are those of Wove's own grpc executor for Wove's keys (checked first,
in Wove's order); the Channel options among the h2-only keys are checked once, by
:meth:`~wove_h2grpc.aio.options.ChannelOptions.build`. An unknown key is a
:class:`ConfigKeyWarning`, not an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import sys
import warnings
from typing import Any, Mapping, Optional, Tuple

from wove.security import (
    NetworkExecutorSecurity,
    _ensure_network_executor_security,
    _is_local_grpc_target,
)

from ..aio.options import ChannelOptions
from ..protocol.metadata import normalize_metadata
from ..protocol.target import parse_target
from .codec import CODECS, DEFAULT_METHOD, DEFAULT_STREAM_METHOD, stream_method_for

__all__ = [
    "CONFIG_KEYS",
    "DELIVERIES",
    "H2_ONLY_KEYS",
    "TRANSPORTS",
    "WOVE_KEYS",
    "ConfigKeyWarning",
    "Settings",
    "parse_settings",
    "resolve_transport",
    "warn_unknown_keys",
]

#: Values of ``executor_config["transport"]``.
TRANSPORTS = ("h2", "grpcio", "auto")

#: The keys of Wove's own grpc executor, with Wove's meaning.
WOVE_KEYS = ("target", "method", "secure", "root_certificates", "security", "metadata", "timeout",
             "insecure")  # fmt: skip

#: Keys only the h2 transport reads (Wove's grpcio executor ignores them).
H2_ONLY_KEYS = (
    "private_key",
    "certificate_chain",
    "server_hostname",
    "authority",
    "connect_timeout",
    "keepalive_time",
    "max_receive_message_length",
    "compression",
    "lb_policy",
    "transparent_retry",
    "wait_for_ready",
    "codec",
    "delivery",
    "stream_method",
)

#: Values of ``executor_config["delivery"]``: one unary call per command (Wove's own wire
#: behaviour), a server stream per command, or a stream that falls back to unary calls for
#: the channel's life when the worker answers UNIMPLEMENTED.
DELIVERIES = ("unary", "stream", "auto")

#: Every key ``executor_config`` may hold; anything else draws a warning.
CONFIG_KEYS = (*WOVE_KEYS, "transport", *H2_ONLY_KEYS)

# The keys that are Channel options of the same name, validated by ChannelOptions.build.
_NOT_CHANNEL_KEYS = ("codec", "delivery", "stream_method")
_CHANNEL_KEYS = ("root_certificates", *(k for k in H2_ONLY_KEYS if k not in _NOT_CHANNEL_KEYS))


class ConfigKeyWarning(UserWarning):
    """An ``executor_config`` key the grpc executor does not know (likely misspelt)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated ``executor_config`` for the h2 transport."""

    target: str
    method: str
    timeout: Optional[float]
    metadata: Tuple[Tuple[str, Any], ...]
    security: NetworkExecutorSecurity
    codec: str
    channel_options: ChannelOptions
    delivery: str = "unary"
    stream_method: str = DEFAULT_STREAM_METHOD


def warn_unknown_keys(config: Mapping[str, Any]) -> None:
    """Warn (:class:`ConfigKeyWarning`) of each key that is not in :data:`CONFIG_KEYS`."""
    for key in config:
        if key in CONFIG_KEYS:
            continue
        close = difflib.get_close_matches(str(key), CONFIG_KEYS, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(CONFIG_KEYS)}"
        warnings.warn(
            f"executor_config key {key!r} is not a grpc executor option and is ignored; {hint}",
            ConfigKeyWarning,
            stacklevel=4,
        )


def _grpcio_importable() -> bool:
    # "auto" means: what Wove's grpcio executor would get from ``import grpc``.
    if sys.modules.get("grpc") is not None:
        return True
    try:
        importlib.import_module("grpc")
    except ImportError:
        return False
    return True


def resolve_transport(value: Any) -> str:
    """``"h2"`` or ``"grpcio"`` for a ``transport`` value (``"auto"`` looks for grpcio)."""
    if value not in TRANSPORTS:
        raise ValueError(
            f"executor_config.transport must be one of 'h2', 'grpcio', 'auto', not {value!r}."
        )
    if value == "auto":
        return "grpcio" if _grpcio_importable() else "h2"
    return str(value)


def _config_key(option: str) -> str:
    """How an option is named in errors: Wove's ``executor_config.<key>``."""
    return f"executor_config.{option}"


def _wove_metadata(metadata: Any) -> Tuple[Tuple[str, str], ...]:
    # Wove's own normalisation (wove.environment._normalize_metadata), same messages.
    if metadata is None:
        return ()
    if isinstance(metadata, dict):
        return tuple((str(key), str(value)) for key, value in metadata.items())
    if isinstance(metadata, (list, tuple)):
        return tuple((str(key), str(value)) for key, value in metadata)
    raise TypeError("executor_config.metadata must be a dictionary or sequence of pairs.")


def parse_settings(config: Mapping[str, Any]) -> Settings:
    """Validate ``executor_config`` for the h2 transport, Wove's checks first, in Wove's order.

    The target is parsed before the security rule, so a malformed target is reported as
    such; the Channel options are checked last, once, by ``ChannelOptions.build``.
    """
    target = config.get("target")
    if not isinstance(target, str) or not target:
        raise TypeError("executor_config.target must be a non-empty gRPC target.")
    secure = bool(config.get("secure"))
    try:
        parsed = parse_target(target, secure=secure)
    except ValueError as exc:
        raise ValueError(f"executor_config: {exc}") from None
    method = config.get("method", DEFAULT_METHOD)
    if not isinstance(method, str) or not method.startswith("/"):
        raise TypeError("executor_config.method must be a fully-qualified gRPC method path.")
    raw_timeout = config.get("timeout")
    timeout = float(raw_timeout) if raw_timeout is not None else None
    try:
        metadata = normalize_metadata(_wove_metadata(config.get("metadata")))
    except ValueError as exc:
        raise ValueError(f"executor_config.metadata: {exc}") from None
    security = NetworkExecutorSecurity.from_config(config.get("security"))
    _ensure_network_executor_security(
        executor_name="grpc",
        security=security,
        secure_transport=secure,
        local_target=_is_local_grpc_target(target),
        insecure=bool(config.get("insecure", False)),
    )

    codec = config.get("codec", "json")
    if codec not in CODECS:
        raise ValueError(f"executor_config.codec must be 'json' or 'msgpack', not {codec!r}.")
    delivery = config.get("delivery", "unary")
    if delivery not in DELIVERIES:
        raise ValueError(
            f"executor_config.delivery must be 'unary', 'stream' or 'auto', not {delivery!r}."
        )
    stream_method = config.get("stream_method")
    if stream_method is None:
        stream_method = stream_method_for(method)
    elif not isinstance(stream_method, str) or not stream_method.startswith("/"):
        raise TypeError("executor_config.stream_method must be a fully-qualified gRPC method path.")
    options = {key: config[key] for key in _CHANNEL_KEYS if key in config}
    if "connect_timeout" in options and options["connect_timeout"] is None:
        del options["connect_timeout"]  # None reads as "not set" here, as Wove's keys do
    # A task sent while its worker restarts waits for it (within the call's timeout, or
    # connect_timeout) instead of failing at once: a restart costs only the calls in flight.
    if options.get("wait_for_ready") is None:
        options["wait_for_ready"] = True
    try:
        channel_options = ChannelOptions.build(
            parsed, secure=secure, field_name=_config_key, **options
        )
    except TypeError as exc:
        raise TypeError(f"{exc}.") from None
    except ValueError as exc:
        raise ValueError(f"{exc}.") from None
    return Settings(
        target=target,
        method=method,
        timeout=timeout,
        metadata=metadata,
        security=security,
        codec=str(codec),
        channel_options=channel_options,
        delivery=str(delivery),
        stream_method=stream_method,
    )
