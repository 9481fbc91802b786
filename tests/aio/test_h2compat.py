"""The patches in ``wove_h2grpc.aio._h2compat``: gated by release, and behaving like h2 itself.

Each differential test drives our connection and a plain ``h2.connection.H2Connection`` (same
configuration) through the same bytes from a real h2 peer and compares what comes out:
events and bytes to send, including h2's stream-error paths; where a patch changes
behaviour on purpose (draining after GOAWAY, the server's stream limit) the test shows both
sides. Runs against whichever h2, hpack and hyperframe are installed; the oldest allowed
releases in a throwaway venv, e.g.
``python -m venv /tmp/h2old && /tmp/h2old/bin/pip install h2==4.1.0 hpack==4.0.0
hyperframe==6.0.0 pytest pytest-asyncio`` then
``PYTHONPATH=. /tmp/h2old/bin/python -m pytest -p no:cacheprovider tests/aio/test_h2compat.py``.
"""

from __future__ import annotations

import collections
import json
import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Tuple

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import hpack
import hyperframe.frame
import pytest
from h2.settings import SettingCodes
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from wove_h2grpc.aio import _h2compat, _h2fast

REQUEST_HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/pkg.Service/Method"),
    (b":authority", b"127.0.0.1:50051"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]
RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0")]


def _server() -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    server = h2.connection.H2Connection(config=config)
    server.initiate_connection()
    return server


def _pair() -> Tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    """Our client connection and a plain h2 one with the identical configuration."""
    ours = _h2compat.make_h2_connection(client_side=True)
    plain = h2.connection.H2Connection(config=ours.config)
    return ours, plain


def _describe(events: List[Any]) -> List[Tuple[str, str]]:
    return [(type(event).__name__, repr(event)) for event in events]


def _converse(client: h2.connection.H2Connection, script: Callable[..., Any]) -> Any:
    """Run ``script(client, server)`` against a fresh h2 server; return its transcript."""
    server = _server()
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return script(client, server)


def _same_transcript(script: Callable[..., Any]) -> Any:
    ours, plain = _pair()
    mine = _converse(ours, script)
    theirs = _converse(plain, script)
    assert mine == theirs
    return mine


# -- the gate: which patches apply to which releases -------------------------------------------

# Written out from reading each release's source (pip download h2==X hpack==Y hyperframe==Z),
# not taken from _h2compat: the releases read, and what each patch depends on.
H2_READ = {"4.1.0", "4.2.0", "4.3.0", "4.4.0", "4.4.1"}
HPACK_READ = {"4.0.0", "4.1.0", "4.2.0"}
HYPERFRAME_READ = {"6.0.0", "6.0.1", "6.1.0"}
EVERY_PATCH = frozenset(
    {
        "frame_size_on_ack",
        "goaway_drain",
        "outbound_stream_count",
        "inbound_stream_count",
        "receive_frame_without_repr",
        "prepare_for_sending_without_copies",
        "data_to_send_handover",
        "view_frame_buffer",
        "chunk_frame_buffer",
        "output_parts",
        "early_frame_header_check",
        "cached_hpack",
        "server_settings_at_once",
        "plain_config",
        "bytes_headers_as_given",
    }
)
# h2 4.1.0's H2Stream sends headers as given (utf8_encode_headers came in 4.2.0).
NEEDS_H2_4_2 = frozenset({"bytes_headers_as_given"})
NEEDS_HPACK = frozenset({"cached_hpack"})
NEEDS_HYPERFRAME = frozenset(
    {
        "prepare_for_sending_without_copies",
        "view_frame_buffer",
        "chunk_frame_buffer",
        "output_parts",
    }
)
CPYTHON_ONLY = frozenset({"view_frame_buffer"})
NOT_CPYTHON = frozenset({"chunk_frame_buffer", "output_parts"})
ON_CPYTHON = EVERY_PATCH - NOT_CPYTHON

# (h2, hpack, hyperframe, implementation) -> the patches that must apply there.
GATE_ROWS: List[Tuple[Tuple[str, str, str, str], FrozenSet[str]]] = [
    # the floors of pyproject.toml
    (("4.1.0", "4.0.0", "6.0.0", "cpython"), ON_CPYTHON - NEEDS_H2_4_2),
    (("4.1.0", "4.1.0", "6.0.1", "cpython"), ON_CPYTHON - NEEDS_H2_4_2),
    (("4.2.0", "4.1.0", "6.1.0", "cpython"), ON_CPYTHON),
    (("4.3.0", "4.2.0", "6.1.0", "cpython"), ON_CPYTHON),
    (("4.4.0", "4.2.0", "6.1.0", "cpython"), ON_CPYTHON),
    (("4.4.1", "4.2.0", "6.1.0", "cpython"), ON_CPYTHON),
    (("4.4.1", "4.2.0", "6.1.0", "pypy"), EVERY_PATCH - CPYTHON_ONLY),
    (("4.3.0", "4.1.0", "6.1.0", "pypy"), EVERY_PATCH - CPYTHON_ONLY),
    (("4.3.0", "4.1.0", "6.2.0", "pypy"), EVERY_PATCH - NEEDS_HYPERFRAME),
    (("4.0.0", "4.0.0", "6.0.0", "cpython"), frozenset()),  # every patch touches h2
    (("4.4.2", "4.2.0", "6.1.0", "cpython"), frozenset()),  # a release nobody has read
    (("5.0.0", "4.2.0", "6.1.0", "cpython"), frozenset()),
    (("4.4.1", "4.3.0", "6.1.0", "cpython"), ON_CPYTHON - {"cached_hpack"}),
    (("4.4.1", "4.2.0", "6.2.0", "cpython"), ON_CPYTHON - NEEDS_HYPERFRAME),
    (("unknown", "unknown", "unknown", "cpython"), frozenset()),
]


@pytest.mark.parametrize(("releases", "expected"), GATE_ROWS)
def test_each_patch_applies_exactly_to_the_releases_it_was_read_against(
    releases: Tuple[str, str, str, str], expected: FrozenSet[str]
) -> None:
    h2_version, hpack_version, hyperframe_version, implementation = releases
    installed = {"h2": h2_version, "hpack": hpack_version, "hyperframe": hyperframe_version}
    assert _h2compat.applied_patches(installed, implementation) == expected


def test_the_installed_releases_get_the_patches_read_for_them() -> None:
    installed = {name: version(name) for name in ("h2", "hpack", "hyperframe")}
    assert dict(_h2compat.INSTALLED) == installed
    expected = set(EVERY_PATCH) if installed["h2"] in H2_READ else set()
    if installed["h2"] == "4.1.0":
        expected -= NEEDS_H2_4_2
    if installed["hpack"] not in HPACK_READ:
        expected -= NEEDS_HPACK
    if installed["hyperframe"] not in HYPERFRAME_READ:
        expected -= NEEDS_HYPERFRAME
    if platform.python_implementation() != "CPython":
        expected -= CPYTHON_ONLY
    else:
        expected -= NOT_CPYTHON
    assert expected == _h2compat.APPLIED
    assert {patch.name for patch in _h2compat.PATCHES} == EVERY_PATCH
    assert all(patch.reason for patch in _h2compat.PATCHES)


# Our method, where a patch applies; h2's own otherwise.
PATCHED_METHODS = {
    "goaway_drain": "_receive_goaway_frame",
    "outbound_stream_count": "open_outbound_streams",
    "receive_frame_without_repr": "_receive_frame",
    "prepare_for_sending_without_copies": "_prepare_for_sending",
    "data_to_send_handover": "data_to_send",
}


@pytest.mark.parametrize(("patch", "method"), sorted(PATCHED_METHODS.items()))
def test_a_patched_method_is_ours_only_where_its_patch_applies(patch: str, method: str) -> None:
    ours = _h2compat.GrpcH2Connection.__dict__.get(method)
    if patch in _h2compat.APPLIED:
        assert ours is not None
        assert getattr(_h2compat.GrpcH2Connection, method) is not getattr(
            h2.connection.H2Connection, method
        )
    else:
        assert ours is None


def test_connections_carry_the_patched_parts_that_apply() -> None:
    client = _h2compat.make_h2_connection(client_side=True)
    cached = "cached_hpack" in _h2compat.APPLIED
    assert isinstance(client.encoder, _h2fast.CachingEncoder) is cached
    assert isinstance(client.decoder, _h2fast.CachingDecoder) is cached
    view = "view_frame_buffer" in _h2compat.APPLIED
    assert isinstance(client.incoming_buffer, _h2fast.ViewFrameBuffer) is view
    chunks = "chunk_frame_buffer" in _h2compat.APPLIED
    assert isinstance(client.incoming_buffer, _h2fast.ChunkFrameBuffer) is chunks
    assert not (view and chunks)
    assert isinstance(client.incoming_buffer, h2.frame_buffer.FrameBuffer)


_UNREAD_RELEASE_CHECK = r"""
import json, h2
h2.__version__ = "4.0.99"  # a release no patch was read against
import h2.connection, h2.events, h2.exceptions, h2.frame_buffer, hpack
from wove_h2grpc.aio import _h2compat

def handshake(client, server):
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())

out = {"applied": sorted(_h2compat.APPLIED)}
own = [
    name for name in ("_receive_goaway_frame", "open_outbound_streams", "_receive_frame",
                      "_prepare_for_sending", "data_to_send")
    if name in _h2compat.GrpcH2Connection.__dict__
]
out["own_methods"] = own
client = _h2compat.make_h2_connection(client_side=True)
out["encoder"] = type(client.encoder).__name__
out["buffer"] = type(client.incoming_buffer).__name__
server = _h2compat.make_server_h2_connection(
    max_concurrent_streams=1, max_header_list_size=8192, initial_window_size=1 << 20,
    max_frame_size=1 << 15, connection_window_size=1 << 20,
)
out["server_class"] = type(server).__name__
handshake(client, server)
out["server_stream_limit"] = server.local_settings.max_concurrent_streams
headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a/b"),
           (b":authority", b"x")]
client.send_headers(1, headers)
server.receive_data(client.data_to_send())
server.send_headers(1, [(b":status", b"200")], end_stream=True)
response = server.data_to_send()
server.close_connection(last_stream_id=1)  # on the wire before the response
client.receive_data(server.data_to_send())
try:
    client.receive_data(response)
    out["after_goaway"] = "events"
except h2.exceptions.ProtocolError as exc:
    out["after_goaway"] = type(exc).__name__
client.incoming_buffer.add_data(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01")
out["early_check"] = _h2compat.pending_frame_problem(client, first=False)
print(json.dumps(out))
"""


def test_a_release_nobody_read_runs_h2s_own_code() -> None:
    """Every patch is off: h2's methods, hpack's contexts, h2's buffer and h2's GOAWAY."""
    repo = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", _UNREAD_RELEASE_CHECK],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out: Dict[str, Any] = json.loads(proc.stdout)
    assert out == {
        "applied": [],
        "own_methods": [],
        "encoder": "Encoder",
        "buffer": "FrameBuffer",
        "server_class": "GrpcH2Connection",
        # h2's way: the advertised limit, acknowledged, enforced by h2.
        "server_stream_limit": 1,
        # h2 closes the connection on GOAWAY: the rest of stream 1 is a protocol error.
        "after_goaway": "ProtocolError",
        "early_check": "",
    }


# -- received frames -------------------------------------------------------------------------


def test_received_frames_are_never_formatted(monkeypatch: pytest.MonkeyPatch) -> None:
    if "receive_frame_without_repr" not in _h2compat.APPLIED:
        pytest.skip(f"h2 {h2.__version__} keeps h2's own _receive_frame, which formats frames")

    def refuse(frame: Any) -> str:
        raise AssertionError(f"repr() of a received {type(frame).__name__}")

    client = _h2compat.make_h2_connection(client_side=True)

    def script(client: Any, server: Any) -> List[Any]:
        client.send_headers(1, REQUEST_HEADERS)
        client.send_data(1, b"\x00\x00\x00\x00\x05hello", end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(1, RESPONSE_HEADERS)
        server.send_data(1, b"\x00\x00\x00\x00\x05world" * 1000)
        server.send_headers(1, TRAILERS, end_stream=True)
        # Only our side must not format frames (the plain h2 server above does).
        monkeypatch.setattr(hyperframe.frame.Frame, "__repr__", refuse)
        monkeypatch.setattr(hyperframe.frame.DataFrame, "__repr__", refuse)
        return client.receive_data(server.data_to_send())

    events = _converse(client, script)
    kinds = [type(e) for e in events]
    assert h2.events.ResponseReceived in kinds
    assert h2.events.TrailersReceived in kinds
    assert h2.events.StreamEnded in kinds
    received = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert received == b"\x00\x00\x00\x00\x05world" * 1000


def test_a_whole_unary_call_matches_plain_h2() -> None:
    def script(client: Any, server: Any) -> Any:
        transcript = []
        for stream_id in (1, 3, 5):
            client.send_headers(stream_id, REQUEST_HEADERS)
            client.send_data(stream_id, b"\x00\x00\x00\x00\x02hi", end_stream=True)
            request_bytes = client.data_to_send()
            server.receive_data(request_bytes)
            server.send_headers(stream_id, RESPONSE_HEADERS)
            server.send_data(stream_id, b"\x00\x00\x00\x30\x00" + b"x" * 0x3000)
            server.send_headers(stream_id, TRAILERS, end_stream=True)
            events = client.receive_data(server.data_to_send())
            for event in events:
                if isinstance(event, h2.events.DataReceived):
                    client.acknowledge_received_data(event.flow_controlled_length, stream_id)
            transcript.append((request_bytes, _describe(events), client.data_to_send()))
        return transcript

    transcript = _same_transcript(script)
    assert len(transcript) == 3
    assert all(any(kind == "StreamEnded" for kind, _ in events) for _, events, _ in transcript)


def test_data_after_our_reset_is_answered_like_h2_does() -> None:
    """StreamClosedError path: a frame on a stream we reset gets RST_STREAM, no exception."""

    def script(client: Any, server: Any) -> Any:
        client.send_headers(1, REQUEST_HEADERS)
        server.receive_data(client.data_to_send())
        server.send_headers(1, RESPONSE_HEADERS)
        in_flight = server.data_to_send()
        client.reset_stream(1, error_code=h2.errors.ErrorCodes.CANCEL)
        reset_bytes = client.data_to_send()
        server.send_data(1, b"late data")
        in_flight += server.data_to_send()
        events = client.receive_data(in_flight)
        answer = client.data_to_send()
        return reset_bytes, _describe(events), answer

    reset_bytes, _events, answer = _same_transcript(script)
    assert reset_bytes
    assert answer, "h2 answers frames on a reset stream with RST_STREAM"


def test_data_on_a_stream_that_ended_is_answered_like_h2_does() -> None:
    """StreamClosedError path for a stream closed by END_STREAM in both directions."""

    def make_script() -> Callable[..., Any]:
        def script(client: Any, server: Any) -> Any:
            client.send_headers(1, REQUEST_HEADERS, end_stream=True)
            server.receive_data(client.data_to_send())
            server.send_headers(1, RESPONSE_HEADERS)
            server.send_headers(1, TRAILERS, end_stream=True)
            first = _describe(client.receive_data(server.data_to_send()))
            # A second DATA frame for stream 1 after END_STREAM, hand-built since the
            # server's own state machine would refuse to send it.
            late = hyperframe.frame.DataFrame(1, data=b"late")
            try:
                client.receive_data(late.serialize())
            except h2.exceptions.ProtocolError as exc:
                return first, type(exc).__name__, client.data_to_send()
            return first, "no error", client.data_to_send()

        return script

    first, outcome, answer = _same_transcript(make_script())
    assert any(kind == "StreamEnded" for kind, _ in first)
    assert outcome == "no error"
    # h2 answers with RST_STREAM(STREAM_CLOSED): frame type 0x3, error code 5.
    assert answer[3] == 0x3
    assert answer[-4:] == b"\x00\x00\x00\x05"


def test_data_on_a_stream_reset_long_ago_matches_h2() -> None:
    """Frames on a stream closed by RST_STREAM and since cleaned up: h2's StreamIDTooLow path."""

    def script(client: Any, server: Any) -> Any:
        client.send_headers(1, REQUEST_HEADERS)
        server.receive_data(client.data_to_send())
        client.reset_stream(1)
        server.receive_data(client.data_to_send())
        # Open and finish more streams so h2 forgets stream 1's state object.
        for stream_id in (3, 5, 7):
            client.send_headers(stream_id, REQUEST_HEADERS, end_stream=True)
            server.receive_data(client.data_to_send())
            server.send_headers(stream_id, RESPONSE_HEADERS)
            server.send_headers(stream_id, TRAILERS, end_stream=True)
            client.receive_data(server.data_to_send())
        late = hyperframe.frame.DataFrame(1, data=b"late")
        try:
            events = _describe(client.receive_data(late.serialize()))
        except h2.exceptions.ProtocolError as exc:
            return "error", type(exc).__name__, client.data_to_send()
        return "events", events, client.data_to_send()

    outcome, _, sent = _same_transcript(script)
    assert outcome == "events"
    assert sent, "a frame on a reset stream is answered with RST_STREAM"


# -- HPACK: cached encoder and decoder ------------------------------------------------------

FIELDS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/pkg.Service/Method"),
    (b":path", b"/pkg.Service/Other"),
    (b":authority", b"127.0.0.1:50051"),
    (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", b"wove_h2grpc/test"),
    (b"x-request-id", b"a"),
    (b"x-request-id", b"b"),
    (b"x-blob-bin", b"AAEC"),
]


def _header_lists(seed: int, count: int, with_timeout: bool) -> List[List[Any]]:
    """Deterministic pseudo-random header lists: repeats, new values, sensitive fields."""
    import random

    rng = random.Random(seed)
    lists = []
    for i in range(count):
        fields: List[Any] = [hpack.HeaderTuple(n, v) for n, v in rng.sample(FIELDS, 6)]
        if rng.random() < 0.2:
            fields.append(hpack.HeaderTuple(b"x-new", b"value-%d" % i))
        if rng.random() < 0.1:
            fields.append(hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer %d" % i))
        if rng.random() < 0.1:
            fields.append((b"x-plain-tuple", b"v"))
        if with_timeout:
            fields.append(hpack.HeaderTuple(b"grpc-timeout", b"%dm" % rng.randrange(1, 99999)))
        lists.append(fields)
    return lists


def _as_pairs(headers: Any) -> List[Tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in headers]


def _steady_lists(seed: int, count: int) -> List[List[Any]]:
    """Header lists drawn from a fixed set of fields: no value ever changes per name."""
    import random

    rng = random.Random(seed)
    fixed = [f for f in FIELDS if f[0] not in (b":path", b"x-request-id")]
    fixed.append((b":path", b"/pkg.Service/Method"))
    out = []
    for i in range(count):
        fields: List[Any] = [hpack.HeaderTuple(n, v) for n, v in rng.sample(fixed, 5)]
        if i % 7 == 0:
            fields.append(hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer t"))
        out.append(fields)
    return out


@pytest.mark.parametrize("table_size", [4096, 200, 0])
def test_cached_encoder_emits_exactly_hpacks_bytes(table_size: int) -> None:
    """Fields whose values never change are encoded exactly as hpack encodes them."""
    ours, plain = _h2fast.CachingEncoder(), hpack.Encoder()
    ours.header_table_size = plain.header_table_size = table_size
    decoder = hpack.Decoder()
    for step, headers in enumerate(_steady_lists(table_size, 300)):
        if step in (100, 200):  # the peer lowers SETTINGS_HEADER_TABLE_SIZE mid-way
            ours.header_table_size = plain.header_table_size = table_size // (step // 50)
        block = ours.encode(headers)
        assert block == plain.encode(headers), f"step {step}"
        assert _as_pairs(decoder.decode(block, raw=True)) == _as_pairs(headers)
    assert ours._indexed, "repeated fields were served from the cache"


@pytest.mark.parametrize("table_size", [4096, 200, 0])
def test_cached_encoder_round_trips_changing_values(table_size: int) -> None:
    """Names whose values keep changing go out unindexed; everything decodes the same."""
    ours = _h2fast.CachingEncoder()
    ours.header_table_size = table_size
    decoder = hpack.Decoder()
    volatile = {b"x-new", b"grpc-timeout"}
    for step, headers in enumerate(_header_lists(table_size + 2, 300, with_timeout=True)):
        before = list(decoder.header_table.dynamic_entries)
        block = ours.encode(headers)
        assert _as_pairs(decoder.decode(block, raw=True)) == _as_pairs(headers)
        assert ours.header_table.dynamic_entries == decoder.header_table.dynamic_entries
        if step >= 100:  # by now each volatile name has been seen with over 8 values
            added = [e for e in decoder.header_table.dynamic_entries if e not in before]
            assert not [n for n, _ in added if n in volatile], f"step {step}"
    assert {b"x-new", b"grpc-timeout"} <= ours._volatile_names | {b"grpc-timeout"}
    # Two values only (x-request-id a/b, :path of two methods): they stay indexed.
    assert not {b"x-request-id", b":path"} & ours._volatile_names


def test_cached_encoder_sends_grpc_timeout_without_indexing() -> None:
    ours = _h2fast.CachingEncoder()
    decoder = hpack.Decoder()
    sizes = []
    for headers in _header_lists(7, 200, with_timeout=True):
        block = ours.encode(headers)
        assert _as_pairs(decoder.decode(block, raw=True)) == _as_pairs(headers)
        sizes.append(len(decoder.header_table.dynamic_entries))
    # Per-call timeouts never enter the table, so it is not churned by them.
    assert not any(n == b"grpc-timeout" for n, _ in decoder.header_table.dynamic_entries)
    assert ours.header_table.dynamic_entries == decoder.header_table.dynamic_entries


def test_cached_encoder_takes_hpacks_path_for_dicts_and_unhuffman() -> None:
    ours, plain = _h2fast.CachingEncoder(), hpack.Encoder()
    assert ours.encode({b":method": b"GET", b"x": b"y"}) == plain.encode(
        {b":method": b"GET", b"x": b"y"}
    )
    assert ours.encode([(b"x", b"y")], huffman=False) == plain.encode([(b"x", b"y")], huffman=False)
    assert ours.encode([(b"k", b"v", True)]) == plain.encode([(b"k", b"v", True)])


@pytest.mark.parametrize("table_size", [4096, 150])
def test_cached_decoder_matches_hpack(table_size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = hpack.Encoder()
    ours, plain = _h2fast.CachingDecoder(), hpack.Decoder()
    blocks = []
    lists = _header_lists(table_size + 1, 100, with_timeout=False)
    for step, headers in enumerate(h for h in lists for _ in range(3)):
        if step == 150:
            encoder.header_table_size = table_size // 2  # emits a size update in the block
        blocks.append(encoder.encode(headers))
    # Each header list is sent three times in a row: once indexed, the repeats are
    # identical bytes over an unchanged table, so they are served from the cache.
    slow_path = collections.Counter()
    hpack_decode = hpack.Decoder.decode

    def counting_decode(self: Any, data: Any, raw: bool = False) -> Any:
        slow_path[type(self).__name__] += 1
        return hpack_decode(self, data, raw)

    monkeypatch.setattr(hpack.Decoder, "decode", counting_decode)
    for block in blocks:
        assert ours.decode(block) == plain.decode(block)
    assert slow_path["Decoder"] == len(blocks)
    # The third of each triple repeats the second (fully indexed) block byte for byte.
    assert slow_path["CachingDecoder"] <= len(blocks) * 0.75, "repeats came from the cache"
    again, fresh = _h2fast.CachingDecoder(), hpack.Decoder()
    for block in blocks:
        assert again.decode(block, raw=True) == fresh.decode(block, raw=True)
    assert ours._blocks, "blocks that left the table alone were cached"


def test_cached_decoder_result_is_a_fresh_list_each_time() -> None:
    decoder = _h2fast.CachingDecoder()
    block = hpack.Encoder().encode([(b":method", b"POST")])  # static index only
    first = decoder.decode(block)
    first.append(("mutated", "by caller"))
    assert decoder.decode(block) == [(":method", "POST")]


def test_cached_decoder_respects_a_lowered_header_list_limit() -> None:
    decoder = _h2fast.CachingDecoder()
    block = hpack.Encoder().encode([(b"x-big", b"v" * 500)])
    decoder.decode(block)
    decoder.decode(block)
    decoder.max_header_list_size = 100
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(block)


def test_table_generation_counts_every_change() -> None:
    table = _h2fast._CountingHeaderTable()
    start = table.generation
    table.add(b"a", b"b")
    table.maxsize = 100
    table.maxsize = 0
    assert table.generation == start + 3
    assert table.dynamic_entries == collections.deque()


def test_connections_use_the_cached_hpack_contexts_end_to_end() -> None:
    client = _h2compat.make_h2_connection(client_side=True)
    server = _h2compat.make_h2_connection(client_side=False)
    assert isinstance(client.encoder, _h2fast.CachingEncoder)
    assert isinstance(client.decoder, _h2fast.CachingDecoder)
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    for index, headers in enumerate(_header_lists(3, 60, with_timeout=True)):
        stream_id = 1 + 2 * index
        request = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/pkg.Service/Method"),
            (b":authority", b"localhost"),
            *[(bytes(n), bytes(v)) for n, v in headers if not bytes(n).startswith(b":")],
        ]
        client.send_headers(stream_id, request, end_stream=True)
        events = server.receive_data(client.data_to_send())
        received = [e for e in events if isinstance(e, h2.events.RequestReceived)]
        assert [(bytes(n), bytes(v)) for n, v in received[0].headers] == request
        reply = [(b":status", b"200"), (b"grpc-status", b"0"), (b"x-i", b"%d" % (index % 3))]
        server.send_headers(stream_id, reply, end_stream=True)
        events = client.receive_data(server.data_to_send())
        got = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert [(bytes(n), bytes(v)) for n, v in got[0].headers] == reply


# -- DATA frames appended without intermediate copies ---------------------------------------


def test_data_frames_are_serialized_byte_for_byte_like_h2() -> None:
    payload = bytes(range(256)) * 64  # 16 KiB

    def script(client: Any, server: Any) -> Any:
        out = []
        client.send_headers(1, REQUEST_HEADERS)
        client.send_data(1, payload[:100])
        client.send_data(1, memoryview(payload)[100:5000])
        client.send_data(1, b"")
        client.send_data(1, b"padded", pad_length=7)
        client.send_data(1, payload[5000:16000], end_stream=True)
        out.append(client.data_to_send())
        client.send_headers(3, REQUEST_HEADERS, end_stream=False)
        client.send_data(3, b"\x00\x00\x00\x00\x00", end_stream=True)
        client.ping(b"12345678")
        out.append(client.data_to_send(20))
        out.append(client.data_to_send())
        server_events = server.receive_data(b"".join(out))
        data = b"".join(e.data for e in server_events if isinstance(e, h2.events.DataReceived))
        return out, data

    out, data = _same_transcript(script)
    assert len(out[1]) == 20, "data_to_send(amount) still slices h2's buffer"
    assert len(out) == 3
    assert data == payload[:5000] + b"padded" + payload[5000:16000] + b"\x00" * 5


def test_data_to_send_hands_over_its_buffer_without_aliasing() -> None:
    client = _h2compat.make_h2_connection(client_side=True)
    client.initiate_connection()
    first = client.data_to_send()
    assert first.startswith(b"PRI * HTTP/2.0")
    if "output_parts" in _h2compat.APPLIED:
        assert type(first) is bytes  # joined parts: nothing to alias
    else:
        first[:3] = b"XXX"  # the caller owns what it got; h2's next buffer is unaffected
    client.ping(b"12345678")
    second = client.data_to_send()
    assert bytes(second[3:4]) == b"\x06"  # a PING frame, not the mutated preface
    assert client.data_to_send() == b""


def _with_output_parts(conn: Any) -> Any:
    """``conn`` with the ``output_parts`` sending path bound, whether or not it applies here."""
    import types

    conn._out_parts = []
    conn._prepare_for_sending = types.MethodType(_h2compat._prepare_for_sending_as_parts, conn)
    return conn


def test_output_parts_are_h2s_bytes_with_large_payloads_as_given() -> None:
    payload = os.urandom(200 * 1024)
    tail = payload[100000:]
    mutable = bytearray(b"m" * 70000)
    ours = _with_output_parts(_h2compat.make_h2_connection(client_side=True))
    plain = _h2compat.make_h2_connection(client_side=True)  # the same, writing as it applies
    streams = []
    for conn in (ours, plain):
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        server.initiate_connection()
        server.update_settings(
            {SettingCodes.INITIAL_WINDOW_SIZE: 1 << 22, SettingCodes.MAX_FRAME_SIZE: 1 << 20}
        )
        server.increment_flow_control_window(1 << 22)
        # (ours: its class's data_to_send may not know the parts, bound here by hand)
        sent = (lambda c: b"".join(_h2compat._take_parts(c))) if conn is ours else None
        out = sent or (lambda c: c.data_to_send())
        conn.initiate_connection()  # h2 writes the preface itself, into its own buffer
        server.receive_data(out(conn))
        conn.receive_data(server.data_to_send())
        server.receive_data(out(conn))
        conn.send_headers(1, REQUEST_HEADERS)
        conn.send_data(1, b"\x00\x00\x03\x20\x00")
        conn.send_data(1, memoryview(payload)[:100000])
        conn.send_data(1, tail)
        conn.send_data(1, mutable)
        conn.send_data(1, b"", end_stream=True)
        conn.ping(b"12345678")
        streams.append(conn)
    parts = _h2compat._take_parts(ours)
    mutable[:] = b"X" * len(mutable)  # written already: the parts kept a copy of it
    assert b"".join(parts) == plain.data_to_send()
    # Small neighbours joined; each payload of 64 KiB or more on its own, the caller's own
    # bytes (or a view of them) where they cannot change, a copy where they could.
    big = [p for p in parts if len(p) >= 64 * 1024]
    assert len(big) == 3 and len(parts) == 7
    assert bytes(big[0]) == payload[:100000] and big[1] is tail
    assert type(big[2]) is bytes and big[2] == b"m" * 70000
    assert _h2compat._take_parts(ours) == []
    ours.ping(b"abcdefgh")
    ours.clear_outbound_data_buffer()
    ours._out_parts = []  # (h2's clear only knows its bytearray; ours clears both)
    assert _h2compat._take_parts(ours) == []


def test_take_output_is_the_whole_output_in_order() -> None:
    client = _h2compat.make_h2_connection(client_side=True)
    client.initiate_connection()
    client.send_headers(1, REQUEST_HEADERS, end_stream=True)
    plain = _h2compat.make_h2_connection(client_side=True)
    plain.initiate_connection()
    plain.send_headers(1, REQUEST_HEADERS, end_stream=True)
    parts = _h2compat.take_output(client)
    assert b"".join(parts) == plain.data_to_send() and len(parts) == 1
    assert _h2compat.take_output(client) == []


# -- receive buffer: frame bodies parsed from a view ----------------------------------------


def _frame_stream() -> bytes:
    from hyperframe import frame as hf

    frames: List[Any] = [hf.SettingsFrame(0, settings={4: 1 << 20, 5: 1 << 20})]
    head = hf.HeadersFrame(1, data=b"\x82\x86\x84")
    cont = hf.ContinuationFrame(1, data=b"\x41\x03abc")
    cont.flags.add("END_HEADERS")
    frames += [head, cont]
    for index in range(40):
        data = hf.DataFrame(1, data=bytes([index % 251]) * (index * 997 % 20000))
        if index % 5 == 0:
            data.flags.add("PADDED")
            data.pad_length = index % 7
        frames.append(data)
        if index % 9 == 0:
            frames.append(hf.PingFrame(0, opaque_data=b"%08d" % index))
            frames.append(hf.WindowUpdateFrame(1, window_increment=index + 1))
    frames += [
        hf.RstStreamFrame(3, error_code=8),
        hf.GoAwayFrame(0, last_stream_id=1, error_code=0, additional_data=b"bye"),
    ]
    unknown = b"\x00\x00\x07\xfa\x00\x00\x00\x00\x00unknown"  # an extension frame type
    return unknown + b"".join(f.serialize() for f in frames)


def _frames_out(buffer: Any, chunks: List[bytes]) -> List[Any]:
    out = []
    for chunk in chunks:
        buffer.add_data(chunk)
        for frame in buffer:
            out.append((type(frame).__name__, frame.stream_id, frame.serialize()))
    return out


FRAME_BUFFERS = [_h2fast.ViewFrameBuffer, _h2fast.ChunkFrameBuffer]


@pytest.mark.parametrize("cls", FRAME_BUFFERS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_frame_buffer_yields_what_h2s_yields(seed: int, cls: Any) -> None:
    import random

    import h2.frame_buffer

    stream = _frame_stream()
    rng = random.Random(seed)
    chunks, pos = [], 0
    while pos < len(stream):
        step = rng.choice([1, 9, 10, 100, 4096, 70000])
        chunks.append(stream[pos : pos + step])
        pos += step
    ours, plain = cls(), h2.frame_buffer.FrameBuffer()
    ours.max_frame_size = plain.max_frame_size = 1 << 20
    mine = _frames_out(ours, chunks)
    assert mine == _frames_out(plain, chunks)
    assert len(mine) > 50
    if cls is _h2fast.ChunkFrameBuffer:
        assert ours.pending == 0 and not ours._chunks
    else:
        assert ours._data == bytearray()


@pytest.mark.parametrize("cls", FRAME_BUFFERS)
def test_frame_buffer_errors_match_h2(cls: Any) -> None:
    import h2.frame_buffer
    from hyperframe import frame as hf

    def outcome(buffer: Any, data: bytes, max_size: int = 16384) -> str:
        buffer.max_frame_size = max_size
        try:
            _frames_out(buffer, [data])
        except Exception as exc:
            return type(exc).__name__
        return "ok"

    big = hf.DataFrame(1, data=b"x" * 20000).serialize()
    bad_padding = bytearray(hf.DataFrame(1, data=b"abc").serialize())
    bad_padding[4] |= 0x08  # PADDED, and a pad length larger than the body
    bad_padding[9] = 200
    lone_continuation = hf.ContinuationFrame(1, data=b"x").serialize()
    head = hf.HeadersFrame(1, data=b"\x82").serialize()
    for data in (big, bytes(bad_padding), head + big[:20], head + lone_continuation):
        for server in (False,):
            assert outcome(cls(server), data) == outcome(h2.frame_buffer.FrameBuffer(server), data)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for data in (preface[:10], preface + head, b"GET / HTTP/1.1\r\n\r\n"):
        assert outcome(cls(True), data) == outcome(h2.frame_buffer.FrameBuffer(True), data)
    assert outcome(cls(True), b"GET / HTTP/1.1\r\n\r\n") == "ProtocolError"


def test_chunk_frame_buffer_tells_what_waits_and_keeps_data_as_bytes() -> None:
    from hyperframe import frame as hf

    payload = os.urandom(50000)
    stream = hf.DataFrame(1, data=payload).serialize() + hf.PingFrame(0, b"12345678").serialize()
    buffer = _h2fast.ChunkFrameBuffer()
    buffer.max_frame_size = 1 << 20
    assert buffer.head() == b"" and buffer.pending == 0
    frames: List[Any] = []
    for start in range(0, 30000, 3):  # three bytes a read: a header spans chunks
        buffer.add_data(stream[start : start + 3])
        frames += list(buffer)
        assert buffer.head() == stream[:9][: buffer.pending]
    assert buffer.pending == 30000 and frames == []
    buffer.add_data(memoryview(stream)[30000:])
    frames = list(buffer)
    assert [type(f).__name__ for f in frames] == ["DataFrame", "PingFrame"]
    assert type(frames[0].data) is bytes and frames[0].data == payload
    assert frames[0].flow_controlled_length == 50000 and frames[0].body_len == 50000
    assert buffer.pending == 0 and buffer.head() == b""


def test_frame_buffer_survives_a_frame_that_keeps_a_view(monkeypatch: pytest.MonkeyPatch) -> None:
    from hyperframe import frame as hf

    if "view_frame_buffer" not in _h2compat.APPLIED:
        # Not used there (e.g. PyPy, which lets a bytearray with a live view be resized).
        pytest.skip("connections use h2's own FrameBuffer here")

    kept = []

    def keep_view(self: Any, data: memoryview) -> None:
        kept.append(data)  # a frame class that holds on to its body view
        self.opaque_data = data.tobytes()
        self.body_len = 8

    monkeypatch.setattr(hf.PingFrame, "parse_body", keep_view)
    ping = hf.PingFrame(0, opaque_data=b"12345678").serialize()
    data = hf.DataFrame(1, data=b"after").serialize()
    buffer = _h2fast.ViewFrameBuffer()
    buffer.max_frame_size = 16384
    frames = _frames_out(buffer, [ping + data])
    assert [name for name, *_ in frames] == ["PingFrame", "DataFrame"]
    assert bytes(kept[0]) == b"12345678"


# -- GOAWAY: streams at or below last-stream-id drain -----------------------------------------


def _goaway_script(client: Any, server: Any) -> Any:
    """Streams 1 and 3 open; GOAWAY(last_stream_id=3) arrives before their responses."""
    for stream_id in (1, 3, 5):
        client.send_headers(stream_id, REQUEST_HEADERS, end_stream=True)
    server.receive_data(client.data_to_send())
    responses = b""
    for stream_id in (1, 3):
        server.send_headers(stream_id, RESPONSE_HEADERS)
        server.send_data(stream_id, b"\x00\x00\x00\x00\x01x")
        server.send_headers(stream_id, TRAILERS, end_stream=True)
        responses += server.data_to_send()
    server.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=3)
    goaway = server.data_to_send()
    before = _describe(client.receive_data(goaway))
    try:
        after: Any = _describe(client.receive_data(responses))
    except h2.exceptions.ProtocolError as exc:
        after = type(exc).__name__
    return before, after, client.state_machine.state


def test_goaway_lets_the_streams_it_covers_finish() -> None:
    ours, plain = _pair()
    mine = _converse(ours, _goaway_script)
    theirs = _converse(plain, _goaway_script)
    # The GOAWAY itself is reported exactly as h2 reports it.
    assert mine[0] == theirs[0]
    assert [kind for kind, _ in mine[0]] == ["ConnectionTerminated"]
    if "goaway_drain" not in _h2compat.APPLIED:
        assert mine == theirs
        return
    # h2 closes the connection: the covered responses become a protocol error.
    assert theirs[1:] == ("ProtocolError", h2.connection.ConnectionState.CLOSED)
    # Ours stays open and delivers both responses whole (RFC 9113 section 6.8).
    kinds = [kind for kind, _ in mine[1]]
    assert kinds.count("ResponseReceived") == 2
    assert kinds.count("DataReceived") == 2
    assert kinds.count("StreamEnded") == 2
    assert mine[2] is h2.connection.ConnectionState.CLIENT_OPEN


def test_goaway_on_a_connection_we_closed_keeps_it_closed() -> None:
    def script(client: Any, server: Any) -> Any:
        client.close_connection()
        server.receive_data(client.data_to_send())
        server.close_connection(last_stream_id=0)
        events = _describe(client.receive_data(server.data_to_send()))
        return events, client.state_machine.state

    events, state = _same_transcript(script)
    assert [kind for kind, _ in events] == ["ConnectionTerminated"]
    assert state is h2.connection.ConnectionState.CLOSED


# -- the client's stream accounting ------------------------------------------------------------


def test_client_stream_limit_is_left_to_the_caller() -> None:
    """h2 refuses a stream over the peer's MAX_CONCURRENT_STREAMS; with the patch, ours opens it.

    The client queues calls over the peer's limit itself, so h2's check (a walk over every
    stream per request) is not needed there.
    """

    def script(client: Any, server: Any) -> Any:
        server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        client.receive_data(server.data_to_send())
        server.receive_data(client.data_to_send())  # the ACK: the limit is in force
        client.send_headers(1, REQUEST_HEADERS)
        try:
            client.send_headers(3, REQUEST_HEADERS)
        except h2.exceptions.TooManyStreamsError:
            return "refused"
        return "opened"

    ours, plain = _pair()
    assert _converse(plain, script) == "refused"
    expected = "opened" if "outbound_stream_count" in _h2compat.APPLIED else "refused"
    assert _converse(ours, script) == expected


# -- frame headers checked as soon as they are buffered --------------------------------------


@pytest.mark.parametrize("ours", [True, False], ids=["our-buffer", "h2-buffer"])
def test_an_oversized_frame_is_refused_from_its_header(ours: bool) -> None:
    """Both our buffer and h2's (bytes in .data up to h2 4.2.0, ._data after) are read."""
    client = _h2compat.make_h2_connection(client_side=True)
    if not ours:
        client.incoming_buffer = h2.frame_buffer.FrameBuffer(server=False)
        client.incoming_buffer.max_frame_size = client.max_inbound_frame_size
    settings = hyperframe.frame.SettingsFrame(0).serialize()
    big = hyperframe.frame.DataFrame(1, data=b"x" * 20000).serialize()
    client.initiate_connection()
    client.receive_data(settings + big[:100])  # the header and a little of the body
    problem = _h2compat.pending_frame_problem(client, first=False)
    if "early_frame_header_check" in _h2compat.APPLIED:
        assert problem == "frame of 20000 bytes exceeds SETTINGS_MAX_FRAME_SIZE 16384 " + (
            "(FRAME_SIZE_ERROR)"
        )
    else:
        assert problem == ""
    # A frame within the limit is fine however little of it has arrived.
    other = _h2compat.make_h2_connection(client_side=True)
    other.initiate_connection()
    other.receive_data(settings + big[:3])
    assert _h2compat.pending_frame_problem(other, first=False) == ""


@pytest.mark.parametrize("ours", [True, False], ids=["our-buffer", "h2-buffer"])
def test_a_header_block_is_refused_once_it_outgrows_the_header_list_limit(ours: bool) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION frames: h2 would hold 64 of them (of
    up to SETTINGS_MAX_FRAME_SIZE each) before decoding; the block is refused once it
    passes HEADER_BLOCK_FACTOR x the header-list limit, from the header of the frame that
    would take it there."""
    client = _h2compat.make_h2_connection(client_side=True)
    if not ours:
        client.incoming_buffer = h2.frame_buffer.FrameBuffer(server=False)
        client.incoming_buffer.max_frame_size = client.max_inbound_frame_size
    client.initiate_connection()
    client.send_headers(1, [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http")])
    client.receive_data(hyperframe.frame.SettingsFrame(0).serialize())
    limit = _h2compat.HEADER_BLOCK_FACTOR * client.decoder.max_header_list_size
    headers = hyperframe.frame.HeadersFrame(1, data=b"\x88")  # :status 200, no END_HEADERS
    piece = hyperframe.frame.ContinuationFrame(1, data=b"\x00" * 16000).serialize()
    client.receive_data(headers.serialize())
    held = 1
    while held + 16000 <= limit:
        client.receive_data(piece)
        held += 16000
        assert _h2compat.header_block_problem(client) == ""
    client.receive_data(piece[:9])  # the header of the frame that passes the limit
    problem = _h2compat.header_block_problem(client)
    if "early_frame_header_check" in _h2compat.APPLIED:
        assert problem.startswith(f"header block of {held + 16000} or more bytes exceeds {limit}")
    else:
        assert problem == ""


@pytest.mark.parametrize(
    ("first_bytes", "problem"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "answered with HTTP/1.x"),
        (b"\x00\x00\x00\x01", "first frame is not SETTINGS"),  # HEADERS, from 4 bytes
        (hyperframe.frame.SettingsFrame(0).serialize(), ""),
    ],
)
def test_the_servers_first_frame_must_be_settings(first_bytes: bytes, problem: str) -> None:
    client = _h2compat.make_h2_connection(client_side=True)
    client.initiate_connection()
    try:
        client.receive_data(first_bytes)
    except h2.exceptions.ProtocolError:
        pytest.fail("h2 refused the bytes before our check saw them")
    got = _h2compat.pending_frame_problem(client, first=True)
    if "early_frame_header_check" not in _h2compat.APPLIED or not problem:
        assert got == ""
    else:
        assert problem in got


# -- the server's connection --------------------------------------------------------------------

SERVER_VALUES = {
    "max_concurrent_streams": 2,
    "max_header_list_size": 4096,
    "initial_window_size": 1 << 20,
    "max_frame_size": 1 << 15,
    "connection_window_size": 4 << 20,
}


def _public_server(values: Dict[str, int]) -> h2.connection.H2Connection:
    """The same settings the way h2 documents: a SETTINGS frame via update_settings."""
    from h2.settings import SettingCodes

    config = _h2compat.make_h2_connection(client_side=False).config
    server = h2.connection.H2Connection(config=config)
    server.initiate_connection()
    server.update_settings(
        {
            SettingCodes.MAX_CONCURRENT_STREAMS: values["max_concurrent_streams"],
            SettingCodes.INITIAL_WINDOW_SIZE: values["initial_window_size"],
            SettingCodes.MAX_FRAME_SIZE: values["max_frame_size"],
            SettingCodes.MAX_HEADER_LIST_SIZE: values["max_header_list_size"],
        }
    )
    server.increment_flow_control_window(values["connection_window_size"] - 65535)
    return server


def _client_meets(server: h2.connection.H2Connection) -> h2.connection.H2Connection:
    """A plain h2 client that has exchanged SETTINGS (and their ACKs) with ``server``."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    return client


def _in_force(server: h2.connection.H2Connection) -> Dict[str, int]:
    return {
        "max_inbound_frame_size": server.max_inbound_frame_size,
        "max_header_list_size": server.decoder.max_header_list_size,
        "initial_window_size": server.local_settings.initial_window_size,
        "connection_window": server._inbound_flow_control_window_manager.current_window_size,
    }


def test_server_settings_reach_the_client_as_h2s_own_would() -> None:
    from h2.settings import SettingCodes

    ours = _h2compat.make_server_h2_connection(**SERVER_VALUES)
    plain = _public_server(SERVER_VALUES)
    ours_client, plain_client = _client_meets(ours), _client_meets(plain)
    codes = (
        SettingCodes.MAX_CONCURRENT_STREAMS,
        SettingCodes.INITIAL_WINDOW_SIZE,
        SettingCodes.MAX_FRAME_SIZE,
        SettingCodes.MAX_HEADER_LIST_SIZE,
    )
    seen = {code: ours_client.remote_settings[code] for code in codes}
    assert seen == {code: plain_client.remote_settings[code] for code in codes}
    assert seen[SettingCodes.MAX_CONCURRENT_STREAMS] == 2
    assert seen[SettingCodes.MAX_FRAME_SIZE] == 1 << 15
    assert ours_client.outbound_flow_control_window == plain_client.outbound_flow_control_window
    assert ours_client.outbound_flow_control_window == 4 << 20
    # Once the client has acknowledged, the same values are in force on both servers.
    assert _in_force(ours) == _in_force(plain)
    assert _in_force(ours) == {
        "max_inbound_frame_size": 1 << 15,
        "max_header_list_size": 4096,
        "initial_window_size": 1 << 20,
        "connection_window": 4 << 20,
    }


def test_server_settings_are_in_force_before_the_clients_ack() -> None:
    ours = _h2compat.make_server_h2_connection(**SERVER_VALUES)
    plain = _public_server(SERVER_VALUES)
    if "server_settings_at_once" in _h2compat.APPLIED:
        assert _in_force(ours)["max_inbound_frame_size"] == 1 << 15
        assert _in_force(ours)["max_header_list_size"] == 4096
    else:
        assert _in_force(ours) == _in_force(plain)
    # h2's way leaves its defaults in force until the ACK.
    assert _in_force(plain)["max_inbound_frame_size"] == 16384


def test_streams_over_the_servers_limit_are_left_to_the_caller() -> None:
    """h2 fails the connection for an excess stream; ours lets the caller refuse each one.

    Two streams stay open (the limit) while 200 more arrive, each answered and closed at
    once, so that h2's count of open streams is also taken where our pruning runs.
    """

    def excess_streams(server: h2.connection.H2Connection) -> str:
        client = _client_meets(server)
        for stream_id in (1, 3):
            client.send_headers(stream_id, REQUEST_HEADERS)
        server.receive_data(client.data_to_send())
        for stream_id in range(5, 405, 2):
            # Hand-built: h2's client would not open a stream over the limit it was told.
            block = hpack.Encoder().encode(REQUEST_HEADERS)  # literals only: self-contained
            frame = hyperframe.frame.HeadersFrame(stream_id, data=block)
            frame.flags.add("END_HEADERS")
            frame.flags.add("END_STREAM")
            try:
                events = server.receive_data(frame.serialize())
            except h2.exceptions.TooManyStreamsError:
                return f"connection error at stream {stream_id}"
            assert [type(e).__name__ for e in events] == ["RequestReceived", "StreamEnded"]
            server.send_headers(stream_id, RESPONSE_HEADERS, end_stream=True)
            server.data_to_send()
        return "every request"

    assert excess_streams(_public_server(SERVER_VALUES)) == "connection error at stream 5"
    ours = excess_streams(_h2compat.make_server_h2_connection(**SERVER_VALUES))
    at_once = "server_settings_at_once" in _h2compat.APPLIED
    assert ours == ("every request" if at_once else "connection error at stream 5")


def test_server_connection_window_cannot_start_below_the_default() -> None:
    values = dict(SERVER_VALUES, connection_window_size=65534)
    with pytest.raises(ValueError, match="connection_window_size must be at least 65535"):
        _h2compat.make_server_h2_connection(**values)
    values["connection_window_size"] = 65535  # nothing to add: no WINDOW_UPDATE at all
    server = _h2compat.make_server_h2_connection(**values)
    assert _client_meets(server).outbound_flow_control_window == 65535


def test_a_whole_unary_call_on_our_server_matches_h2s() -> None:
    def calls(server: h2.connection.H2Connection) -> List[Any]:
        client = _client_meets(server)
        transcript = []
        for stream_id in range(1, 400, 2):
            client.send_headers(stream_id, REQUEST_HEADERS)
            client.send_data(stream_id, b"\x00\x00\x00\x00\x02hi", end_stream=True)
            events = server.receive_data(client.data_to_send())
            for event in events:
                if isinstance(event, h2.events.DataReceived):
                    server.acknowledge_received_data(event.flow_controlled_length, stream_id)
            server.send_headers(stream_id, RESPONSE_HEADERS)
            server.send_data(stream_id, b"\x00\x00\x00\x00\x02ok")
            server.send_headers(stream_id, TRAILERS, end_stream=True)
            reply = bytes(server.data_to_send())
            transcript.append((_describe(events), reply, _describe(client.receive_data(reply))))
        assert len(server.streams) < 200, "closed streams are pruned"
        return transcript

    values = dict(SERVER_VALUES, max_concurrent_streams=100)
    assert calls(_h2compat.make_server_h2_connection(**values)) == calls(_public_server(values))


# -- the frame-size limit follows the SETTINGS ACK at once -----------------------------------


@pytest.mark.parametrize("ours", [True, False], ids=["ours", "plain-h2"])
def test_a_larger_frame_right_after_the_settings_ack_is_accepted(ours: bool) -> None:
    """grpcio sends the ACK of our MAX_FRAME_SIZE and a DATA frame above 16 KiB in one write:
    h2 alone checks that frame against the old limit (set once per receive_data)."""
    client = _h2compat.make_h2_connection(client_side=True)
    if not ours:
        client = h2.connection.H2Connection(config=client.config)
    client.initiate_connection()
    client.update_settings({SettingCodes.MAX_FRAME_SIZE: 1 << 16})
    client.send_headers(
        1,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/t.S/M"),
            (b":authority", b"x"),
        ],
        end_stream=True,
    )
    server = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(b":status", b"200")])
    server.send_data(1, b"x" * 31428)  # one frame: the client's limit is 64 KiB now
    chunk = server.data_to_send()  # SETTINGS, the ACK, HEADERS and DATA in one read
    if not ours and "frame_size_on_ack" in _h2compat.APPLIED:
        with pytest.raises(h2.exceptions.FrameTooLargeError):
            client.receive_data(chunk)
        return
    events = client.receive_data(chunk)
    data = [e for e in events if isinstance(e, h2.events.DataReceived)]
    assert [len(e.data) for e in data] == [31428]


def test_plain_config_reads_the_values_h2configuration_was_given() -> None:
    conn = _h2compat.make_h2_connection(client_side=True)
    config = conn.config
    assert config.client_side is True
    assert config.header_encoding is None
    assert config.validate_outbound_headers is False
    assert config.normalize_inbound_headers is False
    if "plain_config" in _h2compat.APPLIED:
        # Stored in the instance: no descriptor runs when h2 reads them.
        assert vars(config)["client_side"] is True
        assert "validate_inbound_headers" in vars(config)
    server = _h2compat.make_h2_connection(client_side=False)
    assert server.config.client_side is False


UTF8_CASES = [
    [(b":status", b"200"), (b"content-type", b"application/grpc")],
    [(":path", "/a.B/C"), (b"x", "ünï"), ("y", b"z")],
    [HeaderTuple(b"a", b"b"), NeverIndexedHeaderTuple("k", "v"), (b"e", b"f")],
    [[b"g", b"h"], (b"i", b"j", b"extra")],
    [],
]


@pytest.mark.parametrize("headers", UTF8_CASES)
def test_header_conversion_matches_h2s_for_every_shape(headers: List[Any]) -> None:
    if _h2compat._UTF8_ENCODE_HEADERS is None:
        pytest.skip("this h2 has no utf8_encode_headers (4.1.0 sends headers as given)")
    ours = _h2compat._utf8_encode_headers(headers)
    theirs = _h2compat._UTF8_ENCODE_HEADERS(headers)
    assert ours == theirs
    assert [type(h) for h in ours] == [type(h) for h in theirs]


def test_h2_streams_use_our_header_conversion_only_where_it_applies() -> None:
    import h2.stream

    ours = h2.stream.__dict__.get("utf8_encode_headers") is _h2compat._utf8_encode_headers
    assert ours == ("bytes_headers_as_given" in _h2compat.APPLIED)
