"""Wove network-executor frames on the wire: ``json`` (Wove's own format) or ``msgpack``.

Pure codec, no IO and no asyncio: bytes in, frames out (and back). Wove's grpc executor
sends one *command* frame per unary call (``run_task``, ``cancel_task``) and the worker
answers with *event* frames (``task_started``, ``task_result``, ``task_error``,
``task_cancelled``, ...). Python objects travel as cloudpickle pickles in ``*_pickle``
fields:

========== =====================
frame key  wire field
========== =====================
callable   ``callable_pickle``
args       ``args_pickle``
result     ``result_pickle``
exception  ``exception_pickle``
error      ``error_pickle``
========== =====================

``json`` is byte-for-byte Wove's ``_dump_network_executor_message``: the pickles are
base64 text and the object is dumped with ``separators=(",", ":")`` in the frame's key
order, each ``*_pickle`` field appended after the plain keys in the table's order.
``msgpack`` uses the same field names in the same order, but the pickles are raw
``bin`` values (no base64). The exact bytes are documented in ``docs/protocol.md``.

Decoding unpickles. A worker must verify the request's signed metadata (over the raw
request bytes) *before* calling :func:`decode_command`; :func:`detect_codec` and
:func:`load_raw` read a frame without unpickling anything.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Dict, List, Sequence, Tuple

__all__ = [
    "CODECS",
    "DEFAULT_METHOD",
    "DEFAULT_STREAM_METHOD",
    "PICKLED_FIELDS",
    "decode_command",
    "decode_events",
    "detect_codec",
    "dump_event",
    "dump_events",
    "encode_command",
    "encode_events",
    "load_raw",
    "serialize_event",
    "stream_method_for",
]

#: The method path Wove's grpc executor calls, and a worker serves, unless told otherwise.
DEFAULT_METHOD = "/wove.network_executor.WorkerService/Send"

#: The server-streaming method that sends each event as it happens (``delivery="stream"``).
DEFAULT_STREAM_METHOD = "/wove.network_executor.WorkerService/Stream"


def stream_method_for(method: str) -> str:
    """The streaming method beside a unary ``method``: the same service's ``Stream``."""
    return method.rsplit("/", 1)[0] + "/Stream"


#: The codecs a command or an event list may use; ``"json"`` is Wove's wire format.
CODECS = ("json", "msgpack")

#: Frame keys carried as pickles, and their wire field names, in Wove's order.
PICKLED_FIELDS: Tuple[Tuple[str, str], ...] = (
    ("callable", "callable_pickle"),
    ("args", "args_pickle"),
    ("result", "result_pickle"),
    ("exception", "exception_pickle"),
    ("error", "error_pickle"),
)

_JSON_WHITESPACE = b" \t\r\n"
# msgpack first bytes: fixmap 0x80-0x8f, map16 0xde, map32 0xdf; fixarray 0x90-0x9f,
# array16 0xdc, array32 0xdd.
_MSGPACK_MAP_FIRST = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_MSGPACK_ARRAY_FIRST = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


def _cloudpickle() -> Any:
    # Imported on first use: cloudpickle is a runtime dependency, but importing it costs time.
    import cloudpickle

    return cloudpickle


def _msgpack() -> Any:
    import msgpack

    return msgpack


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS!r}, not {codec!r}")


def _serialize(frame: Dict[str, Any], codec: str) -> Dict[str, Any]:
    # Mirrors wove.environment._serialize_network_executor_frame: copy, then pop each
    # pickled key and append its *_pickle field (so the key order matches Wove's).
    if not isinstance(frame, dict):
        raise TypeError(f"a Wove frame must be a dict, not {type(frame).__name__}")
    payload = dict(frame)
    dumps = _cloudpickle().dumps
    for key, field in PICKLED_FIELDS:
        if key in payload:
            pickled = dumps(payload.pop(key))
            payload[field] = (
                base64.b64encode(pickled).decode("ascii") if codec == "json" else pickled
            )
    return payload


def _deserialize(payload: Dict[str, Any], codec: str) -> Dict[str, Any]:
    frame = dict(payload)
    loads = _cloudpickle().loads
    for key, field in PICKLED_FIELDS:
        if field not in frame:
            continue
        raw = frame.pop(field)
        if codec == "json":
            if not isinstance(raw, str):
                raise ValueError(f"{field} must be a base64 string in a JSON frame")
            try:
                pickled = base64.b64decode(raw.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError) as exc:
                raise ValueError(f"{field} is not valid base64: {exc}") from exc
        else:
            if not isinstance(raw, (bytes, bytearray)):
                raise ValueError(f"{field} must be raw bytes (bin) in a msgpack frame")
            pickled = bytes(raw)
        try:
            frame[key] = loads(pickled)
        except Exception as exc:
            raise ValueError(f"cannot unpickle {field}: {type(exc).__name__}: {exc}") from exc
    return frame


def _dump(payload: Any, codec: str) -> bytes:
    if codec == "json":
        return json.dumps(payload, separators=(",", ":")).encode("utf-8")
    packed: bytes = _msgpack().packb(payload, use_bin_type=True)
    return packed


def detect_codec(data: bytes) -> str:
    """Return ``"json"`` or ``"msgpack"`` from the first byte of a frame or event list.

    JSON starts with ``{`` or ``[`` after optional whitespace; msgpack with a map or array
    header byte. Nothing is unpickled, so a worker may call this before verifying the
    signature (to answer in the request's codec). ``ValueError`` for anything else.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, not {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ValueError("empty message: expected a JSON or msgpack Wove frame")
    first = data[0]
    if first in _MSGPACK_MAP_FIRST or first in _MSGPACK_ARRAY_FIRST:
        return "msgpack"
    stripped = data.lstrip(_JSON_WHITESPACE)
    if stripped[:1] in (b"{", b"["):
        return "json"
    if not stripped:
        raise ValueError("empty message: only whitespace where a Wove frame was expected")
    raise ValueError(
        f"not a Wove frame: first byte 0x{first:02x} starts neither a JSON object/array "
        "nor a msgpack map/array"
    )


def load_raw(data: bytes) -> Tuple[str, Any]:
    """Parse ``data`` without unpickling: ``(codec, value)`` with ``*_pickle`` fields intact.

    ``ValueError`` when the bytes are not valid JSON (UTF-8) or msgpack.
    """
    codec = detect_codec(data)
    data = bytes(data)
    if codec == "json":
        try:
            return codec, json.loads(data.decode("utf-8"))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"malformed JSON Wove frame: {exc}") from exc
    msgpack = _msgpack()
    try:
        return codec, msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises ExtraData, FormatError, StackError, ValueError
        raise ValueError(f"malformed msgpack Wove frame: {type(exc).__name__}: {exc}") from exc


def encode_command(frame: Dict[str, Any], codec: str = "json") -> bytes:
    """Encode one command frame (``run_task``, ``cancel_task``) as request bytes.

    ``json`` gives exactly the bytes Wove's own grpc executor sends for the same frame;
    ``msgpack`` gives a map with the same fields and raw-bytes pickles.
    """
    _check_codec(codec)
    return _dump(_serialize(frame, codec), codec)


def decode_command(data: bytes) -> Tuple[str, Dict[str, Any]]:
    """Decode request bytes into ``(codec, frame)`` with the pickles loaded.

    This unpickles the callable and its arguments: verify the request first.
    ``ValueError`` when the bytes are empty, malformed, not a map, or a pickle is bad.
    """
    codec, payload = load_raw(data)
    if not isinstance(payload, dict):
        raise ValueError(
            f"a Wove command must be a {codec} object/map, not {type(payload).__name__}"
        )
    return codec, _deserialize(payload, codec)


def encode_events(events: Sequence[Dict[str, Any]], codec: str = "json") -> bytes:
    """Encode event frames as one response: always the ``{"events": [...]}`` shape.

    Wove accepts one event, a list or ``{"events": [...]}``; the wrapped form is the one
    that is unambiguous, so this is what we send (as a JSON object or a msgpack map).
    """
    _check_codec(codec)
    if isinstance(events, dict):
        raise TypeError("encode_events takes a list of event frames, not one frame")
    return _dump({"events": [_serialize(event, codec) for event in events]}, codec)


def serialize_event(event: Dict[str, Any], codec: str = "json") -> Dict[str, Any]:
    """An event with its objects pickled into ``*_pickle`` fields, ready to dump.

    Pickling is the step that can fail (a result cloudpickle cannot pickle); doing it once
    lets a worker send the same event to several callers and know beforehand that it can.
    """
    _check_codec(codec)
    return _serialize(event, codec)


def dump_events(serialized: Sequence[Dict[str, Any]], codec: str = "json") -> bytes:
    """Serialized events (:func:`serialize_event`) as one ``{"events": [...]}`` response."""
    _check_codec(codec)
    return _dump({"events": list(serialized)}, codec)


def dump_event(serialized: Dict[str, Any], codec: str = "json") -> bytes:
    """One serialized event as one message of a stream (a bare event object)."""
    _check_codec(codec)
    return _dump(serialized, codec)


def decode_events(data: bytes) -> Tuple[Dict[str, Any], ...]:
    """Decode a response into event frames with the pickles loaded.

    Accepts Wove's three shapes (one event object, a list of events, ``{"events": [...]}``)
    in either codec. ``ValueError`` for empty or malformed bytes or a bad pickle,
    ``TypeError`` when the events are not a list of objects (Wove's own messages).
    """
    codec, value = load_raw(data)
    raw_events: Any
    if isinstance(value, dict) and "events" in value:
        raw_events = value["events"]
    elif isinstance(value, list):
        raw_events = value
    else:
        raw_events = [value]
    if not isinstance(raw_events, list):
        raise TypeError("Network executor response events must be a list.")
    events: List[Dict[str, Any]] = []
    for raw_event in raw_events:
        if not isinstance(raw_event, dict):
            raise TypeError("Network executor events must be dictionaries.")
        events.append(_deserialize(raw_event, codec))
    return tuple(events)
