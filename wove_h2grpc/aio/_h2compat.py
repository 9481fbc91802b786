"""The one place that touches h2, hpack and hyperframe internals, each touch gated by version.

Every patch of a library's internals is a row of ``PATCHES``: the releases whose source it
was read against (side by side with the code here), and why it exists. A patch applies only
when each package it names is installed at one of those releases (and, for the frame buffer
that parses from views, on CPython; for the chunk-list frame buffer and the output kept as
parts, on any other interpreter); with any other release h2's and hpack's own code runs.
``APPLIED`` is the set of patches in force. The rest of the package reaches h2 only through
the public ``H2Connection`` API and the constructors at the bottom of this module.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple, Union

import h2
import h2.config
import h2.connection
import h2.frame_buffer
import h2.settings
import h2.stream
import h2.utilities
import hpack
import hyperframe
from h2.errors import ErrorCodes
from h2.exceptions import (
    StreamClosedError,
    StreamIDTooLowError,
)
from h2.settings import SettingCodes
from hyperframe.frame import DataFrame, RstStreamFrame

from ._h2fast import CachingDecoder, CachingEncoder, ChunkFrameBuffer, ViewFrameBuffer

__all__ = [
    "APPLIED",
    "INSTALLED",
    "PATCHES",
    "GrpcH2Connection",
    "Patch",
    "applied_patches",
    "header_block_problem",
    "make_h2_connection",
    "make_server_h2_connection",
    "pending_frame_problem",
    "pending_input",
    "take_output",
]

# ``__version__`` rather than importlib.metadata: the latter costs ~15 ms of import time.
INSTALLED: Mapping[str, str] = {
    "h2": str(getattr(h2, "__version__", "unknown")),
    "hpack": str(getattr(hpack, "__version__", "unknown")),
    "hyperframe": str(getattr(hyperframe, "__version__", "unknown")),
}

# The releases read for the rows below: every release so far within pyproject.toml's ranges.
_H2 = ("h2", ("4.1.0", "4.2.0", "4.3.0", "4.4.0", "4.4.1"))
# The releases whose H2Stream converts every sent header with utf8_encode_headers (4.1.0 sends
# the headers as given).
_H2_UTF8_HEADERS = ("h2", ("4.2.0", "4.3.0", "4.4.0", "4.4.1"))
_HPACK = ("hpack", ("4.0.0", "4.1.0", "4.2.0"))
_HYPERFRAME = ("hyperframe", ("6.0.0", "6.0.1", "6.1.0"))

# Where each h2 release's FrameBuffer keeps the bytes not yet parsed (read in its source).
_PENDING_ATTRIBUTE = {
    "4.1.0": "data",
    "4.2.0": "data",
    "4.3.0": "_data",
    "4.4.0": "_data",
    "4.4.1": "_data",
}


@dataclass(frozen=True)
class Patch:
    """One patch of a library's internals and the releases it was checked against."""

    name: str
    versions: Tuple[Tuple[str, Tuple[str, ...]], ...]
    """``(package, releases)`` pairs: the patch applies when every package is at one of them."""
    reason: str
    cpython_only: bool = False
    not_cpython: bool = False
    """Applies on every interpreter but CPython (where another patch does the same better)."""


PATCHES: Tuple[Patch, ...] = (
    Patch(
        "frame_size_on_ack",
        (_H2,),
        "h2's receive_data sets its frame buffer's limit (incoming_buffer.max_frame_size) once, "
        "before it parses the data; the SETTINGS ACK that raises our MAX_FRAME_SIZE takes effect "
        "on max_inbound_frame_size only. A peer that sends the ACK and a larger frame in one "
        "read (grpcio does, at 16-64 KiB) then gets FrameTooLargeError and the connection is "
        "lost. The buffer's limit is updated when the ACK is processed.",
    ),
    Patch(
        "goaway_drain",
        (_H2,),
        "h2 moves its connection to CLOSED on any received GOAWAY (the RECV_GOAWAY row of its "
        "state table is CLOSED from every state in each release read), so the rest of the "
        "streams at or below last-stream-id become ProtocolErrors; RFC 9113 section 6.8 lets "
        "them complete. The state before the GOAWAY is restored.",
    ),
    Patch(
        "outbound_stream_count",
        (_H2,),
        "h2 counts open outbound streams by walking every stream (_open_streams, pruning closed "
        "ones) each time send_headers opens a stream: O(streams) per call. The client enforces "
        "the peer's MAX_CONCURRENT_STREAMS itself by queueing, so only the pruning is kept, "
        "done when the stream table has doubled.",
    ),
    Patch(
        "inbound_stream_count",
        (_H2,),
        "The same walk for each received HEADERS that opens a stream (_receive_headers_frame); "
        "the server refuses excess streams itself (REFUSED_STREAM, RFC 9113 section 5.1.2), so "
        "only the pruning is kept. Used only together with server_settings_at_once, which lifts "
        "h2's own limit.",
    ),
    Patch(
        "receive_frame_without_repr",
        (_H2,),
        "h2's _receive_frame formats repr(frame) for its trace logger before anything else, even "
        "when the logger discards it; hyperframe hexlifies DATA payloads for that. The copy "
        "below is h2's body minus that line (identical in each release read, except that 4.1.0 "
        "raises StreamClosedError without 'from').",
    ),
    Patch(
        "prepare_for_sending_without_copies",
        (_H2, _HYPERFRAME),
        "h2 appends b''.join(f.serialize() for f in frames) to its bytearray _data_to_send, and "
        "hyperframe's serialize joins header, padding and payload: three copies of each DATA "
        "payload. An unpadded DATA frame is appended as its 9-byte header and the payload; the "
        "header layout and flag bits are hyperframe's (the same in each release read).",
    ),
    Patch(
        "data_to_send_handover",
        (_H2,),
        "h2's data_to_send() returns bytes(_data_to_send), a copy of everything sent; "
        "_data_to_send is a bytearray that h2 only appends to or replaces (never keeps a "
        "reference to), so the whole buffer is handed over and replaced by a new one.",
    ),
    Patch(
        "view_frame_buffer",
        (_H2, _HYPERFRAME),
        "h2's FrameBuffer slices every frame body out of its buffer and then replaces the buffer "
        "by the rest (a copy per frame, except 4.4.1, which deletes in place). _FrameBuffer "
        "parses each body from a view and deletes consumed bytes in place, with h2's own "
        "validation (_validate_frame_length, _update_header_buffer, the preface check); "
        "hyperframe's parse_body copies what it keeps out of the view in each release read. "
        "CPython only: it relies on a bytearray refusing to resize while a view exists and on "
        "cheap deletion at its front.",
        cpython_only=True,
    ),
    Patch(
        "chunk_frame_buffer",
        (_H2, _HYPERFRAME),
        "Off CPython, ChunkFrameBuffer replaces h2's FrameBuffer: on PyPy a bytearray is a "
        "resizable list of characters, so FrameBuffer's appends (about 2.7 ms per MiB), slices "
        "and the copy of the rest per frame cost far more than a copy of bytes, and every "
        "temporary buffer is fresh memory until a major collection (page faults: most of the "
        "client's CPU at 1 MiB). Reads are kept as bytes chunks, a body spanning them is "
        "joined once, and an unpadded DATA frame gets it as its data (hyperframe's "
        "DataFrame.parse_body copies it again; without padding it sets data and body_len "
        "only, in each release read); h2's own validation (_validate_frame_length, "
        "_update_header_buffer, the preface check) is kept.",
        not_cpython=True,
    ),
    Patch(
        "output_parts",
        (_H2, _HYPERFRAME),
        "Off CPython, with prepare_for_sending_without_copies, the frames to send are kept as "
        "a list of parts (each DATA payload as it was given) instead of appended to h2's "
        "bytearray _data_to_send, and the driver writes a large payload to the transport as "
        "it is (take_output): on PyPy the bytearray append is slow and every grown buffer is "
        "fresh memory. h2 writes _data_to_send itself only in initiate_connection and "
        "initiate_upgrade_connection (each release read); that is moved to the parts in "
        "order, and data_to_send and clear_outbound_data_buffer see the parts too.",
        not_cpython=True,
    ),
    Patch(
        "early_frame_header_check",
        (("h2", tuple(_PENDING_ATTRIBUTE)),),
        "h2 checks a frame's length only once its whole body is buffered; pending_frame_problem "
        "reads the 9-byte header waiting in the FrameBuffer (bytes in .data in 4.1.0 and 4.2.0, "
        "a bytearray in ._data from 4.3.0, ._data in _FrameBuffer). header_block_problem also "
        "reads the FrameBuffer's _headers_buffer (the frames of a header block before "
        "END_HEADERS, a list of frames with .data in each release read).",
    ),
    Patch(
        "cached_hpack",
        (_H2, _HPACK),
        "CachingEncoder and CachingDecoder replace a fresh connection's encoder and decoder. h2 "
        "uses them only through encode(headers), decode(block, raw=True), header_table_size, "
        "max_header_list_size and max_allowed_table_size; hpack's HeaderTable changes only in "
        "add() and the maxsize setter, which _CountingHeaderTable counts.",
    ),
    Patch(
        "plain_config",
        (_H2,),
        "h2 reads its H2Configuration on every frame (normalize_*, validate_*, client_side), "
        "each read a Python-level descriptor (_BooleanConfigOption.__get__, the header_encoding "
        "property) that only type-checks what H2Configuration.__init__ stores. Our connections "
        "get a subclass in which those names are plain class attributes, so __init__ stores "
        "the values in the instance and reads are plain attribute lookups; the values are ours, "
        "fixed and valid.",
    ),
    Patch(
        "bytes_headers_as_given",
        (_H2_UTF8_HEADERS,),
        "h2's H2Stream.send_headers passes every header block through utf8_encode_headers, "
        "two _to_bytes calls and an isinstance per field even when every name and value is "
        "already bytes, as ours are. The module's name is bound to a version with the same "
        "result for every input (a tuple of two bytes is kept as it is: tuples are "
        "immutable), so other users of h2 in the process see no difference.",
    ),
    Patch(
        "server_settings_at_once",
        (_H2,),
        "The server's SETTINGS are installed as a new local Settings(initial_values=...) before "
        "initiate_connection() sends them, so they apply at once (h2's acknowledge() has no "
        "pending value to apply later); then h2's copy of MAX_CONCURRENT_STREAMS is raised to "
        "2**31-1 because h2 treats an excess stream as a connection error where RFC 9113 "
        "section 5.1.2 lets the server refuse just that stream.",
    ),
)


def applied_patches(installed: Mapping[str, str], implementation: str) -> FrozenSet[str]:
    """Names of the ``PATCHES`` that apply to these package versions on this Python.

    ``implementation`` is ``sys.implementation.name`` (``"cpython"``, ``"pypy"``, ...).
    """
    cpython = implementation == "cpython"
    return frozenset(
        patch.name
        for patch in PATCHES
        if (cpython or not patch.cpython_only)
        and not (cpython and patch.not_cpython)
        and all(installed.get(package) in releases for package, releases in patch.versions)
    )


APPLIED: FrozenSet[str] = applied_patches(INSTALLED, sys.implementation.name)


class _NullLogger:
    """h2 logs every frame at debug/trace; we never want that cost on the hot path."""

    __slots__ = ()

    def debug(self, *args: Any, **kwargs: Any) -> None:
        return None

    def trace(self, *args: Any, **kwargs: Any) -> None:
        return None


_NULL_LOGGER = _NullLogger()

_OPEN_STATES = (
    h2.connection.ConnectionState.IDLE,  # GOAWAY before the peer's SETTINGS (RFC 9113 3.4)
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


_FRAME_HEADER = struct.Struct(">HBBBL")  # RFC 9113 section 4.1: 24-bit length, type, flags, id


def _prepare_for_sending_without_copies(
    self: h2.connection.H2Connection, frames: List[Any]
) -> None:
    """h2's ``_prepare_for_sending`` without copying DATA payloads three times.

    hyperframe serializes a DATA frame by joining padding and payload, then header and
    body, and h2 appends the result to its output buffer: three copies of every payload,
    about a tenth of the client's CPU at 1 MiB. An unpadded DATA frame is appended here as
    its 9-byte header and the payload itself (one copy); every other frame as h2 does.
    h2's own check that no frame exceeds the peer's SETTINGS_MAX_FRAME_SIZE is kept (an
    ``assert`` there as here: it guards h2's own framing, not wire input).
    """
    if not frames:
        return
    buffer = self._data_to_send
    limit = self.max_outbound_frame_size
    for frame in frames:
        if type(frame) is DataFrame and "PADDED" not in frame.flags:
            data = frame.data
            size = len(data)
            frame.body_len = size
            buffer += _FRAME_HEADER.pack(
                (size >> 8) & 0xFFFF,
                size & 0xFF,
                0x0,  # DATA
                0x1 if "END_STREAM" in frame.flags else 0x0,
                frame.stream_id & 0x7FFFFFFF,
            )
            buffer += data
        else:
            buffer += frame.serialize()
        assert frame.body_len <= limit


# A part of the output at least this large is written to the transport as it is; smaller
# neighbours are joined into one write.
_DIRECT_WRITE = 64 * 1024


def _prepare_for_sending_as_parts(self: Any, frames: List[Any]) -> None:
    """``_prepare_for_sending_without_copies`` into the list ``_out_parts``: an unpadded DATA
    frame is its 9-byte header and its payload as given (a view of the caller's immutable
    bytes stays a view; anything mutable is copied), every other frame h2's serialization."""
    if not frames:
        return
    parts = self._out_parts
    if self._data_to_send:  # written by h2 itself (initiate_connection): it goes first
        parts.append(bytes(self._data_to_send))
        self._data_to_send = bytearray()
    limit = self.max_outbound_frame_size
    for frame in frames:
        if type(frame) is DataFrame and "PADDED" not in frame.flags:
            data: Any = frame.data
            size = len(data)
            frame.body_len = size
            parts.append(
                _FRAME_HEADER.pack(
                    (size >> 8) & 0xFFFF,
                    size & 0xFF,
                    0x0,  # DATA
                    0x1 if "END_STREAM" in frame.flags else 0x0,
                    frame.stream_id & 0x7FFFFFFF,
                )
            )
            if size:
                if type(data) is not bytes and not (
                    type(data) is memoryview and type(data.obj) is bytes
                ):
                    data = bytes(data)  # the caller may change it before it is written
                parts.append(data)
        else:
            parts.append(frame.serialize())
        assert frame.body_len <= limit


def _take_parts(conn: Any) -> List[Any]:
    """The output kept as parts, in order, for one write each: runs of small parts joined,
    a part of ``_DIRECT_WRITE`` bytes or more on its own. Empties the output."""
    parts: List[Any] = conn._out_parts
    if conn._data_to_send:  # written by h2 itself after the last frame: it goes last
        parts.append(bytes(conn._data_to_send))
        conn._data_to_send = bytearray()
    if len(parts) <= 1:
        if parts:
            conn._out_parts = []
        return parts
    conn._out_parts = []
    out: List[Any] = []
    small: List[Any] = []
    for part in parts:
        if len(part) >= _DIRECT_WRITE:
            if small:
                out.append(small[0] if len(small) == 1 else b"".join(small))
                small = []
            out.append(part)
        else:
            small.append(part)
    if small:
        out.append(small[0] if len(small) == 1 else b"".join(small))
    return out


def take_output(conn: h2.connection.H2Connection) -> List[Any]:
    """Everything queued to send, as the buffers to write in order (empty: nothing).

    With ``output_parts``, a large DATA payload is its own buffer, as the caller gave it;
    otherwise the whole output is one buffer (``data_to_send()``).
    """
    if "output_parts" in APPLIED and isinstance(conn, GrpcH2Connection):
        return _take_parts(conn)
    data = conn.data_to_send()
    return [data] if data else []


class GrpcH2Connection(h2.connection.H2Connection):
    """``H2Connection`` with the patches of ``PATCHES`` that apply to the installed h2.

    Each method below exists only when its patch is in ``APPLIED``; otherwise h2's runs.
    With ``goaway_drain`` it keeps draining streams after receiving GOAWAY (RFC 9113
    section 6.8: streams at or below the last-stream-id may still complete; grpclib's
    behaviour too); the caller refuses to open new streams on a connection that got one.
    """

    if "frame_size_on_ack" in APPLIED:

        def _local_settings_acked(self) -> Any:
            changes = super()._local_settings_acked()
            self.incoming_buffer.max_frame_size = self.max_inbound_frame_size
            return changes

    if "goaway_drain" in APPLIED:

        def _receive_goaway_frame(self, frame: Any) -> Any:
            previous = self.state_machine.state
            result = super()._receive_goaway_frame(frame)
            if previous in _OPEN_STATES:
                self.state_machine.state = previous
            return result

    if "outbound_stream_count" in APPLIED:
        _outbound_prune_at = 64

        @property
        def open_outbound_streams(self) -> int:
            """0 until the stream table has doubled, then h2's count (which prunes)."""
            if len(self.streams) < self._outbound_prune_at:
                return 0
            count = self._open_streams(int(self.config.client_side))
            self._outbound_prune_at = max(64, 2 * len(self.streams))
            return count

    if "receive_frame_without_repr" in APPLIED:
        _receive_frame = _receive_frame_without_repr

    if "output_parts" in APPLIED and "prepare_for_sending_without_copies" in APPLIED:

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._out_parts: List[Any] = []
            super().__init__(*args, **kwargs)

        _prepare_for_sending = _prepare_for_sending_as_parts

        def data_to_send(self, amount: Any = None) -> Any:
            """h2's ``data_to_send`` over the output kept as parts (joined)."""
            data = b"".join(_take_parts(self))
            if amount is None:
                return data
            self._data_to_send = bytearray(data)
            return super().data_to_send(amount)

        def clear_outbound_data_buffer(self) -> None:
            """h2's, for the output kept as parts too."""
            self._out_parts = []
            super().clear_outbound_data_buffer()

    elif "prepare_for_sending_without_copies" in APPLIED:
        _prepare_for_sending = _prepare_for_sending_without_copies

    if "data_to_send_handover" in APPLIED and "output_parts" not in APPLIED:

        def data_to_send(self, amount: Any = None) -> Any:
            """h2's ``data_to_send``; with no ``amount``, hands over the buffer without a copy.

            h2 returns ``bytes(buffer)``: one more copy of everything sent (a 1 MiB message
            costs a fresh 1 MiB allocation and memcpy). The whole buffer is returned as the
            ``bytearray`` itself and h2 gets a new one, so nothing aliases it afterwards.
            ``transport.write`` takes it as it takes bytes.
            """
            if amount is not None:
                return super().data_to_send(amount)
            data = self._data_to_send
            self._data_to_send = bytearray()
            return data


class _ServerH2Connection(GrpcH2Connection):
    """Server-side ``GrpcH2Connection`` without h2's O(open streams) walk per new stream.

    With 1,000 calls in flight that walk was a third of the server's CPU in a 10,000-call
    burst. The server enforces MAX_CONCURRENT_STREAMS itself and h2's own limit is lifted
    (``server_settings_at_once``), so the count is not needed; closed streams are still
    pruned, but only when the table has doubled since the last prune (amortised O(1)).
    """

    if "inbound_stream_count" in APPLIED:
        _inbound_prune_at = 64

        @property
        def open_inbound_streams(self) -> int:
            """0 until the stream table has doubled, then h2's count (which prunes)."""
            if len(self.streams) < self._inbound_prune_at:
                return 0
            count = self._open_streams(1)
            self._inbound_prune_at = max(64, 2 * len(self.streams))
            return count


# Every option H2Configuration checks on assignment (its _BooleanConfigOption descriptors and
# the header_encoding property), shadowed by a plain class attribute: __init__ then stores each
# value in the instance and h2's reads on the hot path are plain lookups.
_PlainH2Configuration: type = type(
    "_PlainH2Configuration",
    (h2.config.H2Configuration,),
    {
        name: None
        for name, value in vars(h2.config.H2Configuration).items()
        if isinstance(value, (h2.config._BooleanConfigOption, property))
    },
)

# h2's own converter (h2.utilities keeps it even once h2.stream's name is rebound).
_UTF8_ENCODE_HEADERS: Any = getattr(h2.utilities, "utf8_encode_headers", None)


def _utf8_encode_headers(headers: Any) -> List[Any]:
    """h2's ``utf8_encode_headers`` with the same result for every input, but no Python
    call for a field that is a plain tuple of two ``bytes`` (kept as it is)."""
    encoded: List[Any] = []
    append = encoded.append
    for header in headers:
        if type(header) is tuple and len(header) == 2:
            name, value = header
            if type(name) is bytes and type(value) is bytes:
                append(header)
                continue
        append(_UTF8_ENCODE_HEADERS((header,))[0])
    return encoded


if "bytes_headers_as_given" in APPLIED:
    h2.stream.utf8_encode_headers = _utf8_encode_headers  # type: ignore[attr-defined]


def _new_connection(cls: type, *, client_side: bool) -> h2.connection.H2Connection:
    config_class = _PlainH2Configuration if "plain_config" in APPLIED else h2.config.H2Configuration
    config = config_class(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        logger=_NULL_LOGGER,  # duck-typed: debug() and trace() only
    )
    connection: h2.connection.H2Connection = cls(config=config)
    if "cached_hpack" in APPLIED:
        # Fresh connection, nothing encoded or decoded yet: swapping the HPACK contexts is safe.
        connection.encoder = CachingEncoder()
        connection.decoder = CachingDecoder(connection.decoder.max_header_list_size)
    frames: Any = None
    if "view_frame_buffer" in APPLIED:
        frames = ViewFrameBuffer(server=not client_side)
    elif "chunk_frame_buffer" in APPLIED:
        frames = ChunkFrameBuffer(server=not client_side)
    if frames is not None:
        frames.max_frame_size = connection.incoming_buffer.max_frame_size
        connection.incoming_buffer = frames
    return connection


def make_h2_connection(*, client_side: bool) -> h2.connection.H2Connection:
    """A fresh ``H2Connection`` configured for gRPC: bytes headers, no per-header validation.

    Header validation and normalisation are off because we build outbound headers
    ourselves (already lowercase and valid) and check inbound gRPC headers explicitly.
    The connection carries the patches in ``APPLIED``.
    """
    return _new_connection(GrpcH2Connection, client_side=client_side)


_H2_STREAM_LIMIT = 2**31 - 1  # what h2 itself enforces when server_settings_at_once applies
_DEFAULT_WINDOW = 65535  # RFC 9113 section 6.9.2: every flow-control window starts here


def make_server_h2_connection(
    *,
    max_concurrent_streams: int,
    max_header_list_size: int,
    initial_window_size: int,
    max_frame_size: int,
    connection_window_size: int,
) -> h2.connection.H2Connection:
    """A server ``H2Connection`` with its SETTINGS and connection WINDOW_UPDATE queued.

    The SETTINGS frame advertises the four values (RFC 9113 section 6.5.2) and the
    connection window is raised to ``connection_window_size`` (section 6.9). Where
    ``server_settings_at_once`` applies, the settings are in force at once and h2's own
    stream limit is lifted, so that the caller can refuse an excess stream with
    REFUSED_STREAM (section 5.1.2) rather than h2 failing the whole connection; elsewhere
    h2's way is used: a second SETTINGS frame via ``update_settings``, in force once the
    client acknowledges it, with h2 enforcing MAX_CONCURRENT_STREAMS itself.
    """
    if connection_window_size < _DEFAULT_WINDOW:
        raise ValueError(
            f"connection_window_size must be at least {_DEFAULT_WINDOW} (a connection window "
            f"starts there and can only grow), got {connection_window_size}"
        )
    advertised: Dict[SettingCodes, int] = {
        SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
        SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size,
        SettingCodes.MAX_FRAME_SIZE: max_frame_size,
        SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
    }
    if "server_settings_at_once" not in APPLIED:
        conn = make_h2_connection(client_side=False)
        conn.initiate_connection()
        update: Dict[Union[SettingCodes, int], int] = {k: v for k, v in advertised.items()}
        conn.update_settings(update)
    else:
        # Our stream accounting only where h2's own limit is lifted (it counts 0 open streams
        # until the table has doubled, which h2's limit check must not read).
        cls = _ServerH2Connection if "inbound_stream_count" in APPLIED else GrpcH2Connection
        conn = _new_connection(cls, client_side=False)
        # Installed as initial values (the pattern hypercorn uses), so they apply at once; the
        # inbound frame size and header-list size are then aligned by hand because
        # H2Connection.__init__ read the defaults.
        conn.local_settings = h2.settings.Settings(client=False, initial_values=advertised)
        conn.max_inbound_frame_size = max_frame_size
        conn.decoder.max_header_list_size = max_header_list_size
        conn.initiate_connection()
        enforced = dict(advertised)
        enforced[SettingCodes.MAX_CONCURRENT_STREAMS] = _H2_STREAM_LIMIT
        conn.local_settings = h2.settings.Settings(client=False, initial_values=enforced)
    if connection_window_size > _DEFAULT_WINDOW:
        conn.increment_flow_control_window(connection_window_size - _DEFAULT_WINDOW)
    return conn


def pending_input(conn: h2.connection.H2Connection) -> Optional[Tuple[int, bytes, int]]:
    """What h2 holds of the input it has not parsed yet: (bytes of the client preface it
    still expects, the first (up to) 9 bytes of an incomplete frame, how many bytes of it
    are buffered); None where unknown.

    The next received byte is therefore that far into the preface, or into a frame, which
    tells where frames start in it without parsing them.
    """
    if "early_frame_header_check" not in APPLIED:
        return None
    buffer = conn.incoming_buffer
    preface: int = getattr(buffer, "_preamble_len", 0)
    if type(buffer) is ChunkFrameBuffer:
        return preface, buffer.head(), buffer.pending
    if type(buffer) is ViewFrameBuffer:
        raw: Any = buffer._data
    else:
        raw = getattr(buffer, _PENDING_ATTRIBUTE[INSTALLED["h2"]], b"")
    return preface, bytes(memoryview(raw)[:9]) if raw else b"", len(raw)


def _pending_frame_header(conn: h2.connection.H2Connection) -> bytes:
    """The first (up to) 9 bytes waiting in h2's input buffer, never a copy of all of it."""
    buffer = conn.incoming_buffer
    if type(buffer) is ChunkFrameBuffer:
        return buffer.head()
    if type(buffer) is ViewFrameBuffer:
        raw: Any = buffer._data
    else:
        raw = getattr(buffer, _PENDING_ATTRIBUTE[INSTALLED["h2"]], b"")
    return bytes(memoryview(raw)[:9]) if raw else b""


def pending_frame_problem(conn: h2.connection.H2Connection, *, first: bool) -> str:
    """Why the frame header waiting in h2's input buffer is unacceptable, or ``""``.

    h2's FrameBuffer checks a frame's length only once the whole announced body has
    arrived, so a peer announcing a 4 GiB frame (or an HTTP/1.1 reply, whose first bytes
    read as a huge length) would keep us waiting. We check the 9-byte header as soon as
    it is buffered (RFC 9113 section 4.2), and with ``first`` that the server's first
    frame is SETTINGS (section 3.4). Where ``early_frame_header_check`` does not apply,
    always ``""``: h2's own check, on the whole frame, is all there is.
    """
    if "early_frame_header_check" not in APPLIED:
        return ""
    data = _pending_frame_header(conn)
    if len(data) < 9:
        if first and len(data) >= 4 and data[3] != 0x4:
            return "the server's first frame is not SETTINGS: it does not speak HTTP/2"
        return ""
    length = int.from_bytes(data[0:3], "big")
    if first and data[3] != 0x4:
        if bytes(data[:5]) == b"HTTP/":
            return "the server answered with HTTP/1.x: it does not speak HTTP/2"
        return "the server's first frame is not SETTINGS: it does not speak HTTP/2"
    limit = conn.max_inbound_frame_size
    if length > limit:
        return f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE {limit} (FRAME_SIZE_ERROR)"
    return ""


# An encoded header block may be longer than its decoded size (HPACK's Huffman codes take up
# to 30 bits per octet, RFC 7541 appendix B); a sane encoder stays well below this multiple.
HEADER_BLOCK_FACTOR = 4
_HEADERS_TYPE, _CONTINUATION_TYPE = 0x1, 0x9


def header_block_problem(conn: h2.connection.H2Connection) -> str:
    """Why the header block being received is refused, or ``""``.

    h2 keeps a block's HEADERS (or PUSH_PROMISE) and CONTINUATION frames until END_HEADERS,
    up to 64 frames of SETTINGS_MAX_FRAME_SIZE each, and hpack checks the decoded size
    against SETTINGS_MAX_HEADER_LIST_SIZE only when the whole block is decoded: a peer could
    make us hold 64 frames' worth (64 MiB at a 1 MiB frame size) for a block we are bound to
    refuse. The block so far plus the frame whose 9-byte header is waiting (its announced
    length, before its bytes are buffered) may take ``HEADER_BLOCK_FACTOR`` times the
    decoder's header-list limit (RFC 9113 section 10.5.1). Where ``early_frame_header_check``
    does not apply, always ``""``: h2's limit of 64 frames is all there is.
    """
    if "early_frame_header_check" not in APPLIED:
        return ""
    frames = getattr(conn.incoming_buffer, "_headers_buffer", None)
    data = _pending_frame_header(conn)
    pending = len(data) == 9 and data[3] in (_HEADERS_TYPE, _CONTINUATION_TYPE)
    if not frames and not pending:
        return ""  # no header block in progress or announced: every read but a few
    size = sum(len(frame.data) for frame in frames) if frames else 0
    if pending:
        size += int.from_bytes(data[0:3], "big")
    limit = HEADER_BLOCK_FACTOR * conn.decoder.max_header_list_size
    if size > limit:
        return (
            f"header block of {size} or more bytes exceeds {limit} "
            f"({HEADER_BLOCK_FACTOR} x SETTINGS_MAX_HEADER_LIST_SIZE "
            f"{conn.decoder.max_header_list_size}) before END_HEADERS"
        )
    return ""
