"""Options validated once, at construction, into frozen objects every layer above reuses.

Each error names the keyword it is about (ValueError for a bad value, TypeError for a bad
type), so ``Channel``, ``Server``, the Wove executor and the CLI report the same mistakes
the same way. A caller whose users know the options by other names (the Wove executor's
``executor_config.<key>``) passes ``field_name`` to spell them its way.

``Channel``'s signature needs this module, so it stays cheap to import: no asyncio, no ssl
(it loads in :func:`build_ssl_context` and the ``ssl_context`` check, for TLS options only)
and NamedTuples rather than dataclasses (whose import, with inspect, would cost more than
the rest of ``from wove_h2grpc import Channel``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Tuple, Union

from .._version import __version__
from ..protocol.metadata import MetadataLike, encode_metadata, normalize_metadata
from ..protocol.target import Target, parse_target

if TYPE_CHECKING:
    import ssl

__all__ = [
    "DEFAULT_CONNECTION_WINDOW",
    "DEFAULT_MAX_BUFFERED",
    "DEFAULT_MAX_RECEIVE",
    "DEFAULT_STREAM_WINDOW",
    "LB_POLICIES",
    "ChannelOptions",
    "ServerOptions",
    "build_ssl_context",
    "check_compression",
    "check_int",
    "check_window",
    "pem_bytes",
]

#: The default of ``max_receive_message_length`` for channels and servers (grpcio's).
DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024

#: The default of a server's ``max_buffered_bytes``: request and response bytes all its
#: connections together may hold for their calls before the largest holders are shed.
DEFAULT_MAX_BUFFERED = 256 * 1024 * 1024

#: Receive windows a channel advertises by default (RFC 9113 section 6.9): per stream, what
#: a reader that stops reading may still be sent; per connection, the sum over its streams.
DEFAULT_STREAM_WINDOW = 16 * 1024 * 1024
DEFAULT_CONNECTION_WINDOW = 64 * 1024 * 1024
_MAX_WINDOW = 2**31 - 1
_MIN_WINDOW = 65535

#: The load-balancing policies a channel knows.
LB_POLICIES = ("pick_first", "round_robin")

FieldName = Callable[[str], str]


class ChannelOptions(NamedTuple):
    """Validated ``Channel`` options (see ``Channel``): build them with :meth:`build`.

    Values are stored as the wire uses them: ``authority``, ``scheme``, ``user_agent`` and
    ``metadata`` are encoded header bytes, ``compression`` is ``"gzip"`` or None.
    """

    target: Target
    ssl_context: Optional[ssl.SSLContext]
    server_hostname: Optional[str]
    authority: bytes
    scheme: bytes
    metadata: Tuple[Tuple[bytes, bytes], ...]
    timeout: Optional[float]
    connect_timeout: float
    keepalive_time: Optional[float]
    keepalive_timeout: float
    max_send_message_length: int
    max_receive_message_length: int
    compression: Optional[str]
    user_agent: bytes
    lb_policy: str
    transparent_retry: bool
    wait_for_ready: bool = False
    initial_window_size: int = DEFAULT_STREAM_WINDOW
    connection_window_size: int = DEFAULT_CONNECTION_WINDOW

    @classmethod
    def build(
        cls,
        target: Union[str, Target],
        *,
        secure: bool = False,
        root_certificates: Optional[Union[bytes, str]] = None,
        private_key: Optional[Union[bytes, str]] = None,
        certificate_chain: Optional[Union[bytes, str]] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        authority: Optional[str] = None,
        metadata: MetadataLike = None,
        timeout: Optional[float] = None,
        connect_timeout: float = 20.0,
        keepalive_time: Optional[float] = None,
        keepalive_timeout: float = 20.0,
        max_send_message_length: int = -1,
        max_receive_message_length: int = DEFAULT_MAX_RECEIVE,
        compression: Optional[str] = None,
        user_agent: Optional[str] = None,
        lb_policy: str = "pick_first",
        transparent_retry: bool = True,
        wait_for_ready: bool = False,
        initial_window_size: int = DEFAULT_STREAM_WINDOW,
        connection_window_size: int = DEFAULT_CONNECTION_WINDOW,
        field_name: FieldName = str,
    ) -> ChannelOptions:
        """Check every option once and return them frozen; the first mistake raises.

        ``target`` may be a string or an already parsed :class:`Target` (parsed with the
        same ``secure``). ``ssl_context`` implies ``secure=True``; otherwise ``secure``
        builds a verifying context from the PEM options. ``field_name`` maps an option's
        keyword to the name the error message uses.
        """
        name = field_name
        if ssl_context is not None:
            import ssl  # TLS only (and imported already by whoever built the context)

            if not isinstance(ssl_context, ssl.SSLContext):
                raise TypeError(f"{name('ssl_context')} must be an ssl.SSLContext")
        secure = bool(secure) or ssl_context is not None
        parsed = target if isinstance(target, Target) else parse_target(target, secure=secure)
        pems = {
            key: None if value is None else pem_bytes(value, name(key))
            for key, value in (
                ("root_certificates", root_certificates),
                ("private_key", private_key),
                ("certificate_chain", certificate_chain),
            )
        }
        key, chain = pems["private_key"], pems["certificate_chain"]
        if (key is None) != (chain is None):
            raise ValueError(
                f"{name('private_key')} and {name('certificate_chain')} must be given "
                "together (mutual TLS)"
            )
        given = [option for option, value in pems.items() if value is not None]
        if given and ssl_context is not None:
            raise ValueError(
                f"{name(given[0])} cannot be combined with {name('ssl_context')}: "
                "load it into the context"
            )
        if given and not secure:
            raise ValueError(f"{name(given[0])} needs {name('secure')}=True")
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2"])
        elif secure:
            ssl_context = build_ssl_context(
                root_certificates=pems["root_certificates"],
                client_identity=None if key is None or chain is None else (key, chain),
                field_name=name,
            )
        server_hostname = _optional_text("server_hostname", server_hostname, name)
        authority = _optional_text("authority", authority, name, ascii_only=True)
        if authority is None:
            authority = parsed.authority
            if server_hostname and parsed.kind == "tcp":
                # grpcio's ssl_target_name_override also names the :authority.
                authority = server_hostname
        user_agent = _optional_text("user_agent", user_agent, name, ascii_only=True)
        agent = f"wove_h2grpc/{__version__}"
        if user_agent is not None:
            agent = f"{user_agent} {agent}"
        if lb_policy not in LB_POLICIES:
            raise ValueError(
                f"{name('lb_policy')} must be 'pick_first' or 'round_robin', not {lb_policy!r}"
            )
        if not isinstance(transparent_retry, bool):
            raise TypeError(f"{name('transparent_retry')} must be True or False")
        if not isinstance(wait_for_ready, bool):
            raise TypeError(f"{name('wait_for_ready')} must be True or False")
        return cls(
            target=parsed,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
            authority=authority.encode("ascii"),
            scheme=b"https" if secure else b"http",
            metadata=tuple(encode_metadata(normalize_metadata(metadata))),
            timeout=_optional_seconds("timeout", timeout, name),
            connect_timeout=_seconds("connect_timeout", connect_timeout, name),
            keepalive_time=_optional_seconds("keepalive_time", keepalive_time, name),
            keepalive_timeout=_seconds("keepalive_timeout", keepalive_timeout, name),
            max_send_message_length=_length(
                "max_send_message_length", max_send_message_length, name, low=0
            ),
            max_receive_message_length=_length(
                "max_receive_message_length", max_receive_message_length, name, low=1
            ),
            compression=check_compression(compression, name("compression")),
            user_agent=agent.encode("ascii"),
            lb_policy=lb_policy,
            transparent_retry=transparent_retry,
            wait_for_ready=wait_for_ready,
            initial_window_size=check_window("initial_window_size", initial_window_size, name),
            connection_window_size=check_window(
                "connection_window_size", connection_window_size, name
            ),
        )


def pem_bytes(value: object, name: str) -> bytes:
    """PEM given as bytes or (ASCII) str, as bytes; the error names the option ``name``."""
    if isinstance(value, str):
        if not value.isascii():
            raise ValueError(f"{name} must be ASCII PEM text")
        return value.encode("ascii")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise TypeError(f"{name} must be PEM bytes or str, not {type(value).__name__}")


def build_ssl_context(
    *,
    root_certificates: Optional[bytes] = None,
    client_identity: Optional[Tuple[bytes, bytes]] = None,
    field_name: Callable[[str], str] = str,
) -> ssl.SSLContext:
    """A client SSLContext: verification on, TLS 1.2 or newer, ALPN ``h2``.

    ``root_certificates=None`` trusts the system store; ``client_identity`` is the PEM
    ``(private_key, certificate_chain)`` pair for mutual TLS. PEM that does not load raises
    ValueError naming the option (as ``field_name`` spells it).
    """
    import ssl  # TLS only: a plaintext channel never loads it

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if root_certificates is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cadata=root_certificates.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"{field_name('root_certificates')} is not valid PEM: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_identity is not None:
        key, chain = client_identity
        # ssl only loads certificates from files: write both to a private temp dir briefly.
        import tempfile  # only here: it costs import time every other user would pay

        with tempfile.TemporaryDirectory(prefix="wove-h2grpc-") as tmp:
            key_path = os.path.join(tmp, "key.pem")
            chain_path = os.path.join(tmp, "chain.pem")
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key)
            with open(chain_path, "wb") as fh:
                fh.write(chain)
            try:
                context.load_cert_chain(chain_path, key_path)
            except ssl.SSLError as exc:
                raise ValueError(
                    f"{field_name('private_key')} / {field_name('certificate_chain')} could "
                    f"not be loaded: {exc}"
                ) from None
    context.set_alpn_protocols(["h2"])
    return context


def check_window(field: str, value: Any, name: FieldName = str) -> int:
    """An HTTP/2 receive window: 64 KiB - 1 (the protocol's initial window) to 2**31 - 1."""
    message = f"{name(field)} must be a number of bytes from {_MIN_WINDOW} to {_MAX_WINDOW}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{message}, not {value!r}")
    if not _MIN_WINDOW <= value <= _MAX_WINDOW:
        raise ValueError(f"{message}, not {value!r}")
    return value


def check_compression(value: Any, name: str = "compression") -> Optional[str]:
    """``"gzip"``, or None for no compression (``"identity"`` is accepted as None)."""
    if value is None or value == "identity":
        return None
    if value != "gzip":
        raise ValueError(f"{name} must be 'gzip' or None, not {value!r}")
    return "gzip"


def _seconds(field: str, value: Any, name: FieldName) -> float:
    message = f"{name(field)} must be a positive number of seconds, not {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise (ValueError if value is None else TypeError)(message)
    if not value > 0:  # also refuses NaN
        raise ValueError(message)
    return float(value)


def _optional_seconds(field: str, value: Any, name: FieldName) -> Optional[float]:
    return None if value is None else _seconds(field, value, name)


def _length(field: str, value: Any, name: FieldName, *, low: int) -> int:
    """A message size limit: ``low`` bytes or more, or -1 for unlimited."""
    what = "a positive number of bytes" if low == 1 else f"a number of bytes >= {low}"
    message = f"{name(field)} must be {what} or -1 (unlimited), not {value!r}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(message)
    if value < low and value != -1:
        raise ValueError(message)
    return value


def _optional_text(
    field: str, value: Any, name: FieldName, *, ascii_only: bool = False
) -> Optional[str]:
    """None, or a non-empty string (printable ASCII when it goes into a header)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name(field)} must be a non-empty string")
    if not value:
        raise ValueError(f"{name(field)} must be a non-empty string")
    if ascii_only and not (value.isascii() and value.isprintable()):
        raise ValueError(f"{name(field)} must be printable ASCII, not {value!r}")
    return value


class ServerOptions(NamedTuple):
    """``Server`` options, validated once by :meth:`checked` (each error names the keyword)."""

    max_receive_message_length: int
    max_concurrent_streams: int
    debug: bool
    handshake_timeout: Optional[float]
    idle_timeout: Optional[float]
    max_header_list_size: int
    max_client_resets: Optional[int]
    # A default-sized (4 MiB) request fits the stream window whole: no WINDOW_UPDATE round
    # trip per call (grpcio servers advertise 4-8 MiB too).
    initial_window_size: int = 8 << 20
    connection_window_size: int = 32 << 20
    max_buffered_bytes: Optional[int] = DEFAULT_MAX_BUFFERED

    def checked(self) -> ServerOptions:
        """These options, once every one is checked: the first mistake raises."""
        check_window("initial_window_size", self.initial_window_size)
        check_window("connection_window_size", self.connection_window_size)
        check_int("max_receive_message_length", self.max_receive_message_length, -1)
        if self.max_receive_message_length == 0:
            raise ValueError("max_receive_message_length must be positive or -1 (unlimited)")
        check_int("max_concurrent_streams", self.max_concurrent_streams, 1, 2**31 - 1)
        check_int("max_header_list_size", self.max_header_list_size, 1024, 2**31 - 1)
        if self.max_client_resets is not None:
            check_int("max_client_resets", self.max_client_resets, 1)
        if self.max_buffered_bytes is not None:
            check_int("max_buffered_bytes", self.max_buffered_bytes, 1)
        for name in ("handshake_timeout", "idle_timeout"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number of seconds or None")
            if not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value!r}")
        return self


def check_int(name: str, value: object, low: int, high: Optional[int] = None) -> None:
    """An int in ``[low, high]`` (no upper bound when ``high`` is None), else an error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bound}, got {value}")
