"""The h2 workarounds in ``wove_h2grpc.aio._h2compat`` behave exactly like h2 itself.

Each test drives our ``GrpcH2Connection`` and a plain ``h2.connection.H2Connection`` (same
configuration) through the same bytes from a real h2 peer and compares what comes out:
events and bytes to send, including h2's stream-error paths. Runs against whichever h2 is
installed; the allowed range (4.1 .. 4.4) was checked with throwaway venvs, e.g.
``python -m venv /tmp/h2old && /tmp/h2old/bin/pip install h2==4.1.0 pytest pytest-asyncio``
then ``PYTHONPATH=. /tmp/h2old/bin/python -m pytest -p no:cacheprovider tests/test_h2compat.py``.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, List, Tuple

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import hyperframe.frame
import pytest

from wove_h2grpc.aio import _h2compat

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


def test_verified_h2_release_uses_the_repr_free_receive_path() -> None:
    assert _h2compat._version_tuple("4.4.1") == (4, 4, 1)
    assert _h2compat._version_tuple("4.1.0") >= (4, 1)
    assert h2.__version__ == _h2compat.H2_VERSION
    in_range = (4, 1) <= _h2compat._version_tuple(h2.__version__)[:2] <= (4, 4)
    assert _h2compat.H2_INTERNALS_VERIFIED is in_range
    receive = _h2compat.GrpcH2Connection._receive_frame
    if in_range:
        assert receive is _h2compat._receive_frame_without_repr
    else:
        assert receive is h2.connection.H2Connection._receive_frame


def test_received_frames_are_never_formatted(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _h2compat.H2_INTERNALS_VERIFIED:
        pytest.skip(f"h2 {h2.__version__} keeps h2's own _receive_frame")

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
    ours, plain = _h2compat.CachingEncoder(), hpack.Encoder()
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
    ours = _h2compat.CachingEncoder()
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
    ours = _h2compat.CachingEncoder()
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
    ours, plain = _h2compat.CachingEncoder(), hpack.Encoder()
    assert ours.encode({b":method": b"GET", b"x": b"y"}) == plain.encode(
        {b":method": b"GET", b"x": b"y"}
    )
    assert ours.encode([(b"x", b"y")], huffman=False) == plain.encode([(b"x", b"y")], huffman=False)
    assert ours.encode([(b"k", b"v", True)]) == plain.encode([(b"k", b"v", True)])


@pytest.mark.parametrize("table_size", [4096, 150])
def test_cached_decoder_matches_hpack(table_size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = hpack.Encoder()
    ours, plain = _h2compat.CachingDecoder(), hpack.Decoder()
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
    again, fresh = _h2compat.CachingDecoder(), hpack.Decoder()
    for block in blocks:
        assert again.decode(block, raw=True) == fresh.decode(block, raw=True)
    assert ours._blocks, "blocks that left the table alone were cached"


def test_cached_decoder_result_is_a_fresh_list_each_time() -> None:
    decoder = _h2compat.CachingDecoder()
    block = hpack.Encoder().encode([(b":method", b"POST")])  # static index only
    first = decoder.decode(block)
    first.append(("mutated", "by caller"))
    assert decoder.decode(block) == [(":method", "POST")]


def test_cached_decoder_respects_a_lowered_header_list_limit() -> None:
    decoder = _h2compat.CachingDecoder()
    block = hpack.Encoder().encode([(b"x-big", b"v" * 500)])
    decoder.decode(block)
    decoder.decode(block)
    decoder.max_header_list_size = 100
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(block)


def test_table_generation_counts_every_change() -> None:
    table = _h2compat._CountingHeaderTable()
    start = table.generation
    table.add(b"a", b"b")
    table.maxsize = 100
    table.maxsize = 0
    assert table.generation == start + 3
    assert table.dynamic_entries == collections.deque()


def test_connections_use_the_cached_hpack_contexts_end_to_end() -> None:
    client = _h2compat.make_h2_connection(client_side=True)
    server = _h2compat.make_h2_connection(client_side=False)
    assert isinstance(client.encoder, _h2compat.CachingEncoder)
    assert isinstance(client.decoder, _h2compat.CachingDecoder)
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
    if _h2compat.H2_INTERNALS_VERIFIED:
        assert (
            _h2compat.GrpcH2Connection._prepare_for_sending
            is _h2compat._prepare_for_sending_without_copies
        )


def test_data_to_send_hands_over_its_buffer_without_aliasing() -> None:
    client = _h2compat.make_h2_connection(client_side=True)
    client.initiate_connection()
    first = client.data_to_send()
    assert first.startswith(b"PRI * HTTP/2.0")
    first[:3] = b"XXX"  # the caller owns what it got; h2's next buffer is unaffected
    client.ping(b"12345678")
    second = client.data_to_send()
    assert bytes(second[3:4]) == b"\x06"  # a PING frame, not the mutated preface
    assert client.data_to_send() == b""


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


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_frame_buffer_yields_what_h2s_yields(seed: int) -> None:
    import random

    import h2.frame_buffer

    stream = _frame_stream()
    rng = random.Random(seed)
    chunks, pos = [], 0
    while pos < len(stream):
        step = rng.choice([1, 9, 10, 100, 4096, 70000])
        chunks.append(stream[pos : pos + step])
        pos += step
    ours, plain = _h2compat._FrameBuffer(), h2.frame_buffer.FrameBuffer()
    ours.max_frame_size = plain.max_frame_size = 1 << 20
    mine = _frames_out(ours, chunks)
    assert mine == _frames_out(plain, chunks)
    assert len(mine) > 50
    assert ours._data == bytearray()


def test_frame_buffer_errors_match_h2() -> None:
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
            assert outcome(_h2compat._FrameBuffer(server), data) == outcome(
                h2.frame_buffer.FrameBuffer(server), data
            )
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for data in (preface[:10], preface + head, b"GET / HTTP/1.1\r\n\r\n"):
        assert outcome(_h2compat._FrameBuffer(True), data) == outcome(
            h2.frame_buffer.FrameBuffer(True), data
        )
    assert outcome(_h2compat._FrameBuffer(True), b"GET / HTTP/1.1\r\n\r\n") == "ProtocolError"


def test_frame_buffer_survives_a_frame_that_keeps_a_view(monkeypatch: pytest.MonkeyPatch) -> None:
    from hyperframe import frame as hf

    if not _h2compat.VIEW_FRAME_BUFFER:
        # Not used there (PyPy lets a bytearray with a live view be resized): nothing to test.
        assert not isinstance(
            _h2compat.make_h2_connection(client_side=True).incoming_buffer, _h2compat._FrameBuffer
        )
        return

    kept = []

    def keep_view(self: Any, data: memoryview) -> None:
        kept.append(data)  # a frame class that holds on to its body view
        self.opaque_data = data.tobytes()
        self.body_len = 8

    monkeypatch.setattr(hf.PingFrame, "parse_body", keep_view)
    ping = hf.PingFrame(0, opaque_data=b"12345678").serialize()
    data = hf.DataFrame(1, data=b"after").serialize()
    buffer = _h2compat._FrameBuffer()
    buffer.max_frame_size = 16384
    frames = _frames_out(buffer, [ping + data])
    assert [name for name, *_ in frames] == ["PingFrame", "DataFrame"]
    assert bytes(kept[0]) == b"12345678"


def test_connections_use_the_view_parsing_buffer() -> None:
    client = _h2compat.make_h2_connection(client_side=True)
    if _h2compat.H2_INTERNALS_VERIFIED and _h2compat.VIEW_FRAME_BUFFER:
        assert isinstance(client.incoming_buffer, _h2compat._FrameBuffer)
