"""Fuzzing the server with mutated client conversations (hypothesis).

A real client ``H2Connection`` writes a well-formed conversation: the preface, SETTINGS and
one to three gRPC calls of every kind (request HEADERS, length-prefixed messages in DATA,
END_STREAM, a RST_STREAM or nothing; PING and WINDOW_UPDATE on the side). Hypothesis
mutates its frames (``tests/_frame_fuzz.py``) and the bytes go, in writes split at random
points, over a loopback socket to a real ``Server`` in the example's own event loop.

Properties of every example:

- nothing is logged at ERROR on the ``wove_h2grpc`` or ``asyncio`` loggers and nothing
  reaches the loop's exception handler: a bad peer is logged at INFO or WARNING (protocol
  error, GOAWAY with an error code), so ERROR means an exception we did not handle;
- what the server sends is well-formed HTTP/2 (whole frames, a consistent HPACK stream);
- it never hangs: once the conversation is out (its last partial frame padded to its
  announced length), a PING on the same connection gets its ACK or the server closes
  the connection, within a bound; with the ACK, every call the server still holds waits
  for the client (its request is not over, or its reply waits for a flow-control window);
- closing the connection ends every handler that started (counted in the handlers);
- a fresh connection is served a well-formed call afterwards;
- an unmutated conversation gets its right answers (so the harness itself can fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import struct
import zlib
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Tuple

import h2.config
import h2.connection
from _frame_fuzz import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    RST_STREAM,
    Frame,
    FrameReader,
    Plan,
    completion,
    frame,
    fuzz_settings,
    plans,
    render,
    split_frames,
)
from _server_raw_client import RawClient, grpc_message, gzip_bytes
from h2.errors import ErrorCodes
from hpack import Decoder
from hypothesis import event, given
from hypothesis import strategies as st

from wove_h2grpc import Server, ServicerContext
from wove_h2grpc.aio._h2compat import APPLIED
from wove_h2grpc.aio.server_conn import MAX_FRAME_SIZE

ECHO, SPLIT, JOIN, CHAT = "/f.S/Echo", "/f.S/Split", "/f.S/Join", "/f.S/Chat"
PATHS = {"unary_unary": ECHO, "unary_stream": SPLIT, "stream_unary": JOIN, "stream_stream": CHAT}
PROBE = b"fuzzprob"
BOUND = 5.0  # seconds any one wait of an example may take


# ------------------------------------------------------------------ the server


class Live:
    """Handlers that started and ended (a handler's ``finally`` runs when it is cancelled)."""

    def __init__(self) -> None:
        self.started = 0
        self.ended = 0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self.started += 1
        try:
            yield
        finally:
            self.ended += 1


def make_server(live: Live) -> Server:
    async def echo(request: bytes, context: ServicerContext) -> bytes:
        with live.running():
            await asyncio.sleep(0)
            return request

    async def split(request: bytes, context: ServicerContext) -> AsyncIterator[bytes]:
        with live.running():
            yield request
            yield request[::-1]

    async def join(requests: AsyncIterator[bytes], context: ServicerContext) -> bytes:
        with live.running():
            return b"|".join([m async for m in requests])

    async def chat(
        requests: AsyncIterator[bytes], context: ServicerContext
    ) -> AsyncIterator[bytes]:
        with live.running():
            async for message in requests:
                yield b">" + message

    server = Server({ECHO: echo}, handshake_timeout=BOUND, idle_timeout=60.0)
    server.add_method(SPLIT, split, kind="unary_stream")
    server.add_method(JOIN, join, kind="stream_unary")
    server.add_method(CHAT, chat, kind="stream_stream")
    return server


def expected(kind: str, messages: Tuple[bytes, ...]) -> List[bytes]:
    """The replies a call of ``kind`` gets for ``messages`` (see make_server)."""
    if kind == "unary_unary":
        return list(messages)
    if kind == "unary_stream":
        return [messages[0], messages[0][::-1]]
    if kind == "stream_unary":
        return [b"|".join(messages)]
    return [b">" + m for m in messages]


class Problems(logging.Handler):
    """ERROR records of our and asyncio's loggers, and what reached the loop's handler."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.found: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.found.append(f"{record.name}: {record.getMessage()} {record.exc_info or ''}")

    def on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: Dict[str, Any]) -> None:
        self.found.append(f"loop exception handler: {context}")

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        loggers = [logging.getLogger("wove_h2grpc"), logging.getLogger("asyncio")]
        for logger in loggers:
            logger.addHandler(self)
        asyncio.get_running_loop().set_exception_handler(self.on_loop_exception)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeHandler(self)


# ------------------------------------------------------------ the conversation


@dataclasses.dataclass(frozen=True)
class CallSpec:
    kind: str
    messages: Tuple[bytes, ...]
    ending: str  # "end": END_STREAM; "reset": RST_STREAM CANCEL; "open": neither
    timeout: Optional[str]  # grpc-timeout
    gzip: bool = False  # messages gzip-compressed, with grpc-encoding: gzip
    # Request headers set to odd values, (name, value): the conversation counts as mutated.
    tweaks: Tuple[Tuple[bytes, bytes], ...] = ()

    @property
    def sent(self) -> Tuple[bytes, ...]:
        """The messages sent: exactly one for a unary request."""
        if self.kind in ("unary_unary", "unary_stream"):
            return self.messages[:1] or (b"",)
        return self.messages


# Values a broken client may put in the headers the server reads (PROTOCOL-HTTP2).
ODD_VALUES = {
    b":method": [b"GET", b"post", b""],
    b":path": [b"", b"/", b"f.S/Echo", b"/f.S/Echo?x=1", b"/\xff", b"*"],
    b":scheme": [b"ftp", b""],
    b"content-type": [b"application/grpc+proto", b"text/html", b"", b"application/grpcx"],
    b"te": [b"gzip", b""],
    b"grpc-timeout": [b"1", b"99999999H", b"-1S", b"1.5S", b"abc", b"100000000n", b"0m", b"S"],
    b"grpc-encoding": [b"deflate", b"GZIP", b"", b"identity", b"gzip"],
    b"grpc-accept-encoding": [b"gzip", b"deflate,,", b"\xff"],
    b"x-meta-bin": [b"!!!", b"a", b"====", b"YQ", b"\xff"],
    b"x-meta": [b"\x00", b"\r\n", b"\xff"],
    b"X-Upper": [b"v"],
    b"connection": [b"close"],
}
TWEAKS = st.lists(
    st.sampled_from(sorted(ODD_VALUES)).flatmap(
        lambda name: st.tuples(
            st.just(name), st.sampled_from(ODD_VALUES[name]) | st.binary(max_size=6)
        )
    ),
    max_size=2,
).map(tuple)
CALLS = st.lists(
    st.builds(
        CallSpec,
        st.sampled_from(sorted(PATHS)),
        st.lists(st.binary(max_size=16), max_size=3).map(tuple),
        st.sampled_from(["end", "end", "reset", "open"]),
        st.sampled_from([None, None, "5S", "30m"]),
        st.booleans(),
        TWEAKS,
    ),
    min_size=1,
    max_size=3,
)


def conversation(
    calls: List[CallSpec], ping: bool, window: bool
) -> Tuple[List[Frame], Dict[int, CallSpec]]:
    """The frames a real client connection writes for ``calls``, and each call's stream."""
    odd = any(spec.tweaks for spec in calls)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=not odd,
            normalize_outbound_headers=not odd,
        )
    )
    conn.initiate_connection()
    if window:
        conn.increment_flow_control_window(1 << 20)
    streams: Dict[int, CallSpec] = {}
    for spec in calls:
        sid = conn.get_next_available_stream_id()
        streams[sid] = spec
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", PATHS[spec.kind].encode()),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        if spec.timeout is not None:
            headers.append((b"grpc-timeout", spec.timeout.encode()))
        if spec.gzip:
            headers.append((b"grpc-encoding", b"gzip"))
        for name, value in spec.tweaks:
            headers = [(k, v) for k, v in headers if k != name] + [(name, value)]
        conn.send_headers(sid, headers)
        sent = spec.sent
        for n, message in enumerate(sent):
            last = n == len(sent) - 1 and spec.ending == "end"
            framed = b"\x01" + _sized(gzip_bytes(message)) if spec.gzip else grpc_message(message)
            conn.send_data(sid, framed, end_stream=last)
        if spec.ending == "end" and not sent:
            conn.end_stream(sid)
        elif spec.ending == "reset":
            conn.reset_stream(sid, ErrorCodes.CANCEL)
    if ping:
        conn.ping(b"12345678")
    return split_frames(conn.data_to_send(), preface=True), streams


def _sized(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# ----------------------------------------------------------- the server's side


@dataclasses.dataclass
class Answer:
    headers: List[List[Tuple[bytes, bytes]]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    done: bool = False
    reset: Optional[int] = None

    def status(self) -> Optional[int]:
        for block in reversed(self.headers):
            for key, value in block:
                if key == b"grpc-status":
                    return int(value)
        return None

    def messages(self) -> List[bytes]:
        out, pos = [], 0
        while pos + 5 <= len(self.body):
            (length,) = struct.unpack(">I", self.body[pos + 1 : pos + 5])
            body = self.body[pos + 5 : pos + 5 + length]
            out.append(zlib.decompress(body, 31) if self.body[pos] else body)
            pos += 5 + length
        assert pos == len(self.body), "a partial reply message"
        return out


class Peer:
    """Reads everything the server sends on the fuzzed connection, checking it is
    well-formed HTTP/2, until the server closes."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.frames = FrameReader()
        self.decoder = Decoder()
        # The conversation's SETTINGS_HEADER_TABLE_SIZE may be mutated to any value, which
        # lets the server's encoder resize its table up to it (RFC 7541 section 4.2).
        self.decoder.max_allowed_table_size = 2**32 - 1
        self.answers: Dict[int, Answer] = {}
        self.acked = asyncio.Event()
        self.goaway: Optional[int] = None
        self.reached: List[str] = []
        self._block: Optional[Tuple[int, int, bytearray]] = None  # a header block in progress

    async def read_all(self) -> None:
        while True:
            try:
                data = await self.reader.read(65536)
            except (ConnectionError, OSError):
                return
            if not data:
                return
            for kind, flags, sid, payload in self.frames.feed(data):
                self._on_frame(kind, flags, sid, payload)

    def _on_frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self._block is not None:
            assert kind == CONTINUATION and sid == self._block[0], "broken header block"
            self._block[2].extend(payload)
            if flags & END_HEADERS:
                self._headers(sid, self._block[1], bytes(self._block[2]))
                self._block = None
            return
        if kind == HEADERS:
            assert not flags & 0x28, "we never send padding or priority"
            if flags & END_HEADERS:
                self._headers(sid, flags, payload)
            else:
                self._block = (sid, flags, bytearray(payload))
        elif kind == DATA:
            answer = self.answers.setdefault(sid, Answer())
            answer.body += payload
            answer.done = answer.done or bool(flags & END_STREAM)
        elif kind == RST_STREAM:
            answer = self.answers.setdefault(sid, Answer())
            answer.reset = int.from_bytes(payload[:4], "big")
            answer.done = True
        elif kind == PING and flags & 0x1 and payload == PROBE:
            self.acked.set()
        elif kind == GOAWAY:
            self.goaway = int.from_bytes(payload[4:8], "big")

    def _headers(self, sid: int, flags: int, block: bytes) -> None:
        answer = self.answers.setdefault(sid, Answer())
        answer.headers.append(list(self.decoder.decode(block, raw=True)))
        answer.done = answer.done or bool(flags & END_STREAM)


async def wait_until(predicate: Any, what: str, timeout: float = BOUND) -> None:
    """Poll ``predicate`` every loop turn or so until true; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.005)


def held_calls_wait_for_client(server: Server) -> bool:
    """Every call the server still holds waits for its client: its request is not over,
    or its reply is blocked on a flow-control window."""
    return all(
        not call.request_complete or call.waiter is not None
        for conn in server._connections
        for call in conn.calls.values()
    )


# ------------------------------------------------------------------ one example


async def fuzz_connection(
    server: Server, port: int, writes: List[Tuple[int, bytes]], live: Live
) -> Peer:
    """Send the writes, probe with a PING, check the server answers it or closes, close."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), BOUND)
    peer = Peer(reader)
    reading = asyncio.ensure_future(peer.read_all())
    sent = bytearray()
    try:
        for _, chunk in writes:
            if reading.done() or writer.is_closing():
                break  # the server closed the connection (uvloop raises on writing then)
            writer.write(chunk)
            sent += chunk
            # One loop turn per write, so that the server tends to read them one by one.
            await asyncio.sleep(0)
        if not reading.done() and not writer.is_closing():
            # Complete what the server is waiting for (the preface, the last frame's announced
            # length), then PING: the server must answer it or close the connection.
            pad, oversized = completion(bytes(sent), preface=True, max_frame=MAX_FRAME_SIZE)
            writer.write(pad if oversized else pad + frame(PING, 0, 0, PROBE))
            acked = asyncio.ensure_future(peer.acked.wait())
            done, _ = await asyncio.wait(
                [reading, acked], timeout=BOUND, return_when=asyncio.FIRST_COMPLETED
            )
            acked.cancel()
            # h2 alone waits for an oversized frame's whole body; our check refuses its header.
            if not oversized or "early_frame_header_check" in APPLIED:
                assert done, "the server neither answered the PING nor closed the connection"
            if peer.acked.is_set() and not reading.done():
                await wait_until(
                    lambda: held_calls_wait_for_client(server),
                    "every call the server holds waits for its client",
                )
    finally:
        writer.close()
    await asyncio.wait_for(reading, BOUND)
    # What the example reached (pytest --hypothesis-show-statistics lists these).
    peer.reached.append("PING answered" if peer.acked.is_set() else "closed by the server")
    if peer.goaway is not None:
        peer.reached.append(f"GOAWAY {ErrorCodes(peer.goaway).name}")
    peer.reached.append(f"handlers started: {min(live.started, 2)}+")
    await wait_until(lambda: not server._connections, "the server closed the connection")
    await wait_until(lambda: live.started == live.ended, "every handler that started ended")
    return peer


async def one_example(calls: List[CallSpec], ping: bool, window: bool, plan: Plan) -> List[str]:
    """Run one conversation against a fresh server; what it reached, for statistics."""
    problems = Problems()
    live = Live()
    frames, streams = conversation(calls, ping, window)
    writes = render(frames, plan, handshake=2)  # the preface and SETTINGS
    with problems.watching():
        server = make_server(live)
        port = await server.start("127.0.0.1:0")
        try:
            peer = await fuzz_connection(server, port, writes, live)
            if not plan.mutated and not any(spec.tweaks for spec in calls):
                check_answers(peer, streams)
            fresh = await RawClient.connect("127.0.0.1", port, timeout=BOUND)
            try:
                reply = await fresh.call(ECHO, b"fresh", timeout=BOUND)
            finally:
                await fresh.close()
            assert reply.status == 0 and reply.messages() == [b"fresh"], reply
        finally:
            await asyncio.wait_for(server.stop(), 2 * BOUND)
    assert not problems.found, problems.found
    return peer.reached


def check_answers(peer: Peer, streams: Dict[int, CallSpec]) -> None:
    """An unmutated conversation: every ended call got its replies and OK (or, with a 30 ms
    grpc-timeout, maybe DEADLINE_EXCEEDED)."""
    for sid, spec in streams.items():
        if spec.ending != "end":
            continue
        answer = peer.answers.get(sid)
        assert answer is not None and answer.done, (sid, spec, answer)
        if spec.timeout == "30m" and answer.status() == 4:
            continue
        assert answer.status() == 0, (sid, spec, answer)
        assert answer.messages() == expected(spec.kind, spec.sent), (sid, spec, answer)


@fuzz_settings(400)
@given(calls=CALLS, ping=st.booleans(), window=st.booleans(), plan=plans())
def test_mutated_client_conversations(
    calls: List[CallSpec], ping: bool, window: bool, plan: Plan
) -> None:
    for reached in asyncio.run(one_example(calls, ping, window, plan)):
        event(reached)


def test_the_unmutated_conversation_is_answered() -> None:
    """The harness on its own: every kind of call, no mutation, the right answers."""
    calls = [
        CallSpec("unary_unary", (b"a",), "end", None),
        CallSpec("unary_stream", (b"abc",), "end", "5S"),
        CallSpec("stream_unary", (b"x", b"y"), "end", None, gzip=True),
        CallSpec("stream_stream", (b"1", b"2", b"3"), "end", None),
        CallSpec("stream_stream", (b"open",), "open", None),
    ]
    asyncio.run(one_example(calls, True, True, Plan(splits=(7, 30, 100))))
