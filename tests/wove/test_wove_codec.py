"""wove_codec: Wove's JSON bytes exactly, msgpack beside it, every response shape, clear errors."""

from __future__ import annotations

import ast
import base64
import json
from pathlib import Path
from typing import Any, Dict

import cloudpickle
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wove.environment import (
    _dump_network_executor_message,
    _load_network_executor_events,
    _serialize_network_executor_frame,
    normalize_exception,
)

from wove_h2grpc.wove import codec as wove_codec
from wove_h2grpc.wove.codec import (
    CODECS,
    decode_command,
    decode_events,
    detect_codec,
    encode_command,
    encode_events,
    load_raw,
)

REASON = "test"


def square(x: int) -> int:
    return x * x


async def async_square(x: int) -> int:
    return x * x


def run_frame(**extra: Any) -> Dict[str, Any]:
    frame: Dict[str, Any] = {
        "type": "run_task",
        "run_id": "square:0123456789abcdef",
        "task_id": "square",
        "callable": square,
        "args": {"x": 7},
        "delivery": {"delivery_cancel_mode": "best_effort", "delivery_orphan_policy": "cancel"},
    }
    frame.update(extra)
    return frame


CANCEL = {
    "type": "cancel_task",
    "run_id": "square:1",
    "task_id": "square",
    "delivery_cancel_mode": "best_effort",
    "delivery_orphan_policy": "cancel",
}


def error_event() -> Dict[str, Any]:
    try:
        raise ValueError("boom ü")
    except ValueError as exc:
        return {
            "type": "task_error",
            "run_id": "r",
            "task_id": "t",
            "exception": exc,
            "error": normalize_exception(exc, source="task"),
        }


FRAMES = [
    run_frame(),
    run_frame(callable=async_square, args={"x": [1, 2.5, None, True, "ünïcode ☃"]}),
    run_frame(delivery={"delivery_timeout": 1.5, "delivery_idempotency_key": "k-{x}"}),
    CANCEL,
    {"type": "task_result", "run_id": "r", "task_id": "t", "result": {"a": (1, 2)}},
    error_event(),
    {"type": "shutdown"},
]


# ---------------------------------------------------------------- wire compatibility


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: str(f.get("type")))
def test_json_command_bytes_equal_woves_own_encoder(frame: Dict[str, Any]) -> None:
    assert encode_command(frame) == _dump_network_executor_message(frame, reason=REASON)
    assert encode_command(frame, "json") == _dump_network_executor_message(frame, reason=REASON)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8).filter(
            lambda k: k not in {"callable", "args", "result", "exception", "error"}
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=5), inner, max_size=4)
            ),
            max_leaves=10,
        ),
        max_size=6,
    ),
    st.integers(),
)
@settings(max_examples=150, deadline=None)
def test_json_bytes_equal_wove_for_generated_frames(plain: Dict[str, Any], arg: int) -> None:
    frame = {**plain, "callable": square, "args": {"x": arg}}
    encoded = encode_command(frame)
    assert encoded == _dump_network_executor_message(frame, reason=REASON)
    for codec in CODECS:
        got_codec, decoded = decode_command(encode_command(frame, codec))
        assert got_codec == codec
        assert decoded["args"] == {"x": arg}
        assert decoded["callable"](3) == 9
        assert {k: v for k, v in decoded.items() if k not in ("callable", "args")} == json.loads(
            json.dumps(plain)
        )


def test_json_command_field_order_and_base64() -> None:
    payload = json.loads(encode_command(run_frame()))
    assert list(payload) == [
        "type",
        "run_id",
        "task_id",
        "delivery",
        "callable_pickle",
        "args_pickle",
    ]
    assert cloudpickle.loads(base64.b64decode(payload["args_pickle"])) == {"x": 7}
    raw = encode_command(run_frame())
    assert b" " not in raw and not raw.endswith(b"\n")


def test_msgpack_command_same_fields_raw_pickles() -> None:
    frame = run_frame()
    packed = encode_command(frame, "msgpack")
    assert 0x80 <= packed[0] <= 0x8F  # fixmap: 6 fields
    payload = msgpack.unpackb(packed, raw=False)
    wove_payload = _serialize_network_executor_frame(frame, reason=REASON)
    assert list(payload) == list(wove_payload)
    assert isinstance(payload["callable_pickle"], bytes)
    assert payload["args_pickle"] == cloudpickle.dumps({"x": 7})
    assert base64.b64decode(wove_payload["args_pickle"]) == payload["args_pickle"]
    assert packed == msgpack.packb(payload, use_bin_type=True)
    assert len(packed) < len(encode_command(frame, "json"))


def test_documented_examples_are_exact() -> None:
    # docs/protocol.md shows these bytes.
    assert encode_command(CANCEL | {"run_id": "f:1", "task_id": "f"}) == (
        b'{"type":"cancel_task","run_id":"f:1","task_id":"f",'
        b'"delivery_cancel_mode":"best_effort","delivery_orphan_policy":"cancel"}'
    )
    event = [{"type": "task_result", "run_id": "f:1", "task_id": "f", "result": 42}]
    assert encode_events(event) == (
        b'{"events":[{"type":"task_result","run_id":"f:1","task_id":"f","result_pickle":"gAVLKi4="}]}'
    )
    assert encode_events(event, "msgpack").hex() == (
        "81a66576656e74739184a474797065ab7461736b5f726573756c74a672756e5f6964a3663a31"
        "a77461736b5f6964a166ad726573756c745f7069636b6c65c4058005" + "4b2a2e"
    )


# ---------------------------------------------------------------- round trips and events


@pytest.mark.parametrize("codec", CODECS)
def test_command_round_trip(codec: str) -> None:
    got_codec, frame = decode_command(encode_command(run_frame(), codec))
    assert got_codec == codec
    assert frame["callable"](4) == 16
    assert frame["args"] == {"x": 7}
    assert frame["delivery"]["delivery_orphan_policy"] == "cancel"
    assert "callable_pickle" not in frame


@pytest.mark.parametrize("codec", CODECS)
def test_events_round_trip_with_objects(codec: str) -> None:
    events = [
        {"type": "task_started", "run_id": "r", "task_id": "t"},
        {"type": "task_result", "run_id": "r", "task_id": "t", "result": {"a": [1, b"\x00"]}},
        error_event(),
    ]
    decoded = decode_events(encode_events(events, codec))
    assert decoded[0] == events[0]
    assert decoded[1]["result"] == {"a": [1, b"\x00"]}
    assert isinstance(decoded[2]["exception"], ValueError)
    assert str(decoded[2]["exception"]) == "boom ü"
    assert decoded[2]["error"]["message"] == "boom ü"


def test_encode_events_json_is_wrapped_and_woves_loader_reads_it() -> None:
    events = [{"type": "task_result", "run_id": "r", "task_id": "t", "result": 5}]
    body = encode_events(events, "json")
    assert json.loads(body).keys() == {"events"}
    assert _load_network_executor_events(body, reason=REASON) == tuple(events)


def _shapes(codec: str) -> Dict[str, bytes]:
    started = {"type": "task_started", "run_id": "r", "task_id": "t"}
    result = {"type": "task_result", "run_id": "r", "task_id": "t", "result_pickle": None}
    pickled = cloudpickle.dumps(11)
    if codec == "json":
        result["result_pickle"] = base64.b64encode(pickled).decode("ascii")

        def dump(value: Any) -> bytes:
            return json.dumps(value).encode()

    else:
        result["result_pickle"] = pickled

        def dump(value: Any) -> bytes:
            packed: bytes = msgpack.packb(value, use_bin_type=True)
            return packed

    return {
        "single": dump(result),
        "list": dump([started, result]),
        "wrapped": dump({"events": [started, result]}),
    }


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("shape", ["single", "list", "wrapped"])
def test_decode_events_accepts_all_three_shapes(codec: str, shape: str) -> None:
    events = decode_events(_shapes(codec)[shape])
    assert events[-1]["result"] == 11
    assert events[-1]["type"] == "task_result"
    assert len(events) == (1 if shape == "single" else 2)
    if codec == "json":  # identical to what Wove itself makes of the same bytes
        assert events == _load_network_executor_events(_shapes(codec)[shape], reason=REASON)


def test_json_with_leading_whitespace_and_msgpack_map16() -> None:
    assert detect_codec(b" \r\n\t{}") == "json"
    assert decode_events(b"\n  [] ") == ()
    big = {f"k{i}": i for i in range(20)}  # more than 15 pairs: map16 (0xde)
    packed = encode_command({"type": "cancel_task", **big}, "msgpack")
    assert packed[0] == 0xDE
    assert decode_command(packed) == ("msgpack", {"type": "cancel_task", **big})


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"Internal Server Error", "first byte 0x49"),
        (b"\xff\x00", "first byte 0xff"),
        (b"{not json", "malformed JSON"),
        (b'{"a": "\xff"}', "malformed JSON"),
        (b"\x82\xa1a", "malformed msgpack"),
        (b"\x81\xa1a\x01extra", "malformed msgpack"),
    ],
)
def test_malformed_bytes_raise_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_events(data)
    with pytest.raises(ValueError, match=message):
        decode_command(data)


def test_decode_events_type_errors_use_woves_messages() -> None:
    with pytest.raises(TypeError, match="events must be a list"):
        decode_events(b'{"events": 5}')
    with pytest.raises(TypeError, match="must be dictionaries"):
        decode_events(b"[1, 2]")
    with pytest.raises(TypeError, match="must be dictionaries"):
        decode_events(msgpack.packb(["x"]))


def test_bad_pickles_raise_value_error() -> None:
    with pytest.raises(ValueError, match="result_pickle is not valid base64"):
        decode_events(b'{"type":"task_result","result_pickle":"***"}')
    with pytest.raises(ValueError, match="result_pickle must be a base64 string"):
        decode_events(b'{"type":"task_result","result_pickle":5}')
    with pytest.raises(ValueError, match="cannot unpickle result_pickle"):
        decode_events(b'{"type":"task_result","result_pickle":"AAAA"}')
    with pytest.raises(ValueError, match="must be raw bytes"):
        decode_events(msgpack.packb({"type": "task_result", "result_pickle": "gAVLKi4="}))


def test_command_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="must be a json object"):
        decode_command(b"[1]")
    with pytest.raises(ValueError, match="must be a msgpack object"):
        decode_command(msgpack.packb([1]))


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="codec must be one of"):
        encode_command(CANCEL, "xml")
    with pytest.raises(ValueError, match="codec must be one of"):
        encode_events([], "protobuf")
    with pytest.raises(TypeError, match="must be a dict"):
        encode_command([CANCEL])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of event frames"):
        encode_events(CANCEL, "json")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected bytes"):
        detect_codec("{}")  # type: ignore[arg-type]


def test_load_raw_does_not_unpickle() -> None:
    codec, payload = load_raw(encode_command(run_frame(), "msgpack"))
    assert codec == "msgpack"
    assert isinstance(payload["callable_pickle"], bytes)
    codec, payload = load_raw(encode_command(run_frame()))
    assert codec == "json"
    assert isinstance(payload["callable_pickle"], str)


def test_codec_module_imports_neither_asyncio_nor_grpc() -> None:
    tree = ast.parse(Path(wove_codec.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert imported <= {
        "__future__",
        "base64",
        "binascii",
        "json",
        "typing",
        "cloudpickle",
        "msgpack",
    }
