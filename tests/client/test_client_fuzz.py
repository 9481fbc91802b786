"""Fuzzing the client with mutated server conversations (hypothesis).

A fake server on 127.0.0.1 (an asyncio protocol around h2's server-side ``H2Connection``,
in the example's own event loop) answers a unary or a server-streaming call. Its answer
is worked out once per example between a real h2 server and client connection: SETTINGS
(sent as soon as a connection is accepted), then, once the request has arrived, the
SETTINGS ACK, response HEADERS (initial metadata, maybe ``grpc-encoding: gzip``), the
length-prefixed messages in DATA and the trailers (or a Trailers-Only answer), some header
values maybe replaced by odd ones (a bad ``:status``, ``grpc-status``, percent-encoding,
base64, ``grpc-encoding``...). Hypothesis mutates those frames (``tests/_frame_fuzz.py``)
and the fake server writes the result, in writes split at random points, maybe closing
the connection after it.

Properties of every example, for a ``Channel`` call with a deadline:

- the call ends with its result or a ``GrpcError``, never another exception, never later
  than its deadline plus a little; its ``code()``, ``details()`` and metadata answer too;
- nothing reaches the loop's exception handler or the ``wove_h2grpc`` and ``asyncio``
  loggers at ERROR (a bad server is never logged at ERROR: that level means an exception
  we did not handle);
- the same ``Channel`` then makes a call to a healthy server (the fake server, turned
  well-behaved, closes the fuzzed connections; the Channel must reconnect);
- closing the Channel leaves no task running;
- an unmutated answer gives the right result (so the harness itself can fail).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import time
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from _frame_fuzz import Frame, Plan, fuzz_settings, plans, render, split_frames
from hypothesis import event, given
from hypothesis import strategies as st

from wove_h2grpc import Channel, GrpcError, StatusCode
from wove_h2grpc.aio.pool import Backoff

UNARY, STREAM = "/f.S/Unary", "/f.S/Stream"
REQUEST = b"request"
TIMEOUT = 0.25  # the fuzzed call's deadline
SLACK = 1.0  # how much later than its deadline a call may end (a slow PyPy host)
BOUND = 5.0  # seconds any other wait may take
Headers = List[Tuple[bytes, bytes]]


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    if compressed:
        comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip framing
        payload = comp.compress(payload) + comp.flush()
    return (b"\x01" if compressed else b"\x00") + len(payload).to_bytes(4, "big") + payload


def _config(client_side: bool, validate: bool = True) -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=validate,
        normalize_outbound_headers=validate,
    )


# ------------------------------------------------------------------ the answer


@dataclasses.dataclass(frozen=True)
class Answer:
    """A well-formed answer to one call."""

    streaming: bool  # a server-streaming call (else unary)
    messages: Tuple[bytes, ...]
    status: int
    details: str
    trailers_only: bool
    gzip: bool
    metadata: bool  # initial and trailing metadata, text and -bin
    # Header values set to odd ones: (in the trailers, name, value); mutated() is True.
    tweaks: Tuple[Tuple[bool, bytes, bytes], ...] = ()

    @property
    def sent(self) -> Tuple[bytes, ...]:
        """The messages sent: none Trailers-Only; for a unary call at most one, and one
        with OK."""
        if self.trailers_only:
            return ()
        if not self.streaming:
            return self.messages[:1] or ((b"",) if self.status == 0 else ())
        return self.messages

    @property
    def code(self) -> int:
        """The status the call must end with: a unary OK without a message is INTERNAL."""
        if not self.streaming and self.status == 0 and not self.sent:
            return StatusCode.INTERNAL
        return self.status


# Values a broken server may put in the headers the client reads (PROTOCOL-HTTP2).
ODD_VALUES = {
    b":status": [b"abc", b"99", b"600", b"200 ", b"", b"404", b"503", b"2000"],
    b"content-type": [b"application/grpc+proto", b"text/html", b"", b"application/grpcx"],
    b"grpc-status": [b"abc", b"-1", b"17", b"99999999999999999999", b"1.5", b"", b" 0", b"\xff"],
    b"grpc-message": [b"%zz", b"%", b"%C3", b"%C3%28", b"\xff\xfe", b"a%2"],
    b"grpc-encoding": [b"deflate", b"GZIP", b"", b"identity", b"gzip, gzip"],
    b"x-init-bin": [b"!!!", b"a", b"====", b"YQ", b"YQ=", b"\xff"],
    b"grpc-status-details-bin": [b"!!", b"YWJj"],
    b"x-upper": [b"\x00", b"\r\n"],
    b"X-Upper": [b"v"],
}
TWEAKS = st.lists(
    st.sampled_from(sorted(ODD_VALUES)).flatmap(
        lambda name: st.tuples(
            st.booleans(), st.just(name), st.sampled_from(ODD_VALUES[name]) | st.binary(max_size=6)
        )
    ),
    max_size=2,
).map(tuple)
ANSWERS = st.builds(
    Answer,
    st.booleans(),
    st.lists(st.binary(max_size=24), max_size=3).map(tuple),
    st.sampled_from([0, 0, 0, 3, 5, 13, 14]),
    st.sampled_from(["", "bad thing", "50% off \u00e9"]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    TWEAKS,
)


def answer_frames(answer: Answer) -> List[Frame]:
    """The server's side of the conversation: tag 0 at accept, tag 1 once the request is in."""
    client = h2.connection.H2Connection(config=_config(True))
    server = h2.connection.H2Connection(config=_config(False, validate=not answer.tweaks))
    client.initiate_connection()
    server.initiate_connection()
    first = split_frames(server.data_to_send(), tag=0)
    path = STREAM if answer.streaming else UNARY
    client.send_headers(
        1,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ],
    )
    client.send_data(1, grpc_message(REQUEST), end_stream=True)
    server.receive_data(client.data_to_send())
    server.data_to_send()  # the ACK of the simulated client's SETTINGS: the real one is below
    status_block: Headers = [(b"grpc-status", str(answer.status).encode())]
    if answer.details:
        status_block.append((b"grpc-message", _percent(answer.details)))
    head: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
    if answer.gzip:
        head.append((b"grpc-encoding", b"gzip"))
    if answer.metadata:
        head += [(b"x-init", b"v"), (b"x-init-bin", base64.b64encode(b"\x00\xff").rstrip(b"="))]
        status_block += [(b"x-trail-bin", base64.b64encode(b"\x01\x02\x03\x04"))]
    for in_trailers, name, value in answer.tweaks:
        block = status_block if in_trailers or answer.trailers_only else head
        block[:] = [(k, v) for k, v in block if k != name] + [(name, value)]
    # The client's SETTINGS get their ACK along with the answer.
    ack = split_frames(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00", tag=1)
    if answer.trailers_only:
        server.send_headers(1, head + status_block, end_stream=True)
    else:
        server.send_headers(1, head)
        for message in answer.sent:
            server.send_data(1, grpc_message(message, answer.gzip))
        server.send_headers(1, status_block, end_stream=True)
    return first + ack + split_frames(server.data_to_send(), tag=1)


def _percent(text: str) -> bytes:
    """grpc-message's percent-encoding (PROTOCOL-HTTP2), written here, not ours."""
    out = bytearray()
    for byte in text.encode("utf-8"):
        out += bytes((byte,)) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte
    return bytes(out)


# -------------------------------------------------------------- the fake server


class FakeServer:
    """Fuzz mode: every connection gets the mutated conversation. Healthy mode: echo."""

    def __init__(self, writes: List[Tuple[int, bytes]], close_after: bool) -> None:
        self.writes = writes
        self.close_after = close_after
        self.healthy = False
        self.conns: List[FakeConnection] = []
        self.errors: List[str] = []
        self._server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: FakeConnection(self), "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def turn_healthy(self) -> None:
        """From now on answer well; the fuzzed connections are closed."""
        self.healthy = True
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), BOUND)


class FakeConnection(asyncio.Protocol):
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.healthy = server.healthy
        self.h2 = h2.connection.H2Connection(config=_config(False))
        self.transport: Optional[asyncio.Transport] = None
        self.answered = False
        self.bodies: Dict[int, bytes] = {}
        self.paths: Dict[int, bytes] = {}
        server.conns.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        if self.healthy:
            self._flush()
        else:
            self.h2.data_to_send()  # what goes out instead is the fuzzed conversation
            self._send([data for tag, data in self.server.writes if tag == 0], close=False)

    def _send(self, chunks: List[bytes], close: bool) -> None:
        """Write the chunks one per loop turn (then close, if asked)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if chunks:
            transport.write(chunks[0])
            asyncio.get_running_loop().call_soon(self._send, chunks[1:], close)
        elif close:
            transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            # Fuzzed: the client answers frames our h2 never sent. Healthy: the client's
            # TLS probe of a connection we closed unanswered (see Channel._connect).
            if self.healthy and self.transport is not None:
                self.transport.close()
            return
        try:
            for ev in events:
                self._on_event(ev)
            if self.healthy:
                self._flush()
            else:
                self.h2.data_to_send()
        except Exception as exc:  # a bug of this harness, reported by the test
            self.server.errors.append(repr(exc))

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            self.paths[ev.stream_id] = dict(ev.headers).get(b":path", b"")
        elif isinstance(ev, h2.events.DataReceived):
            self.bodies[ev.stream_id] = self.bodies.get(ev.stream_id, b"") + ev.data
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            if self.healthy:
                self._echo(ev.stream_id)
            elif not self.answered:
                self.answered = True
                chunks = [data for tag, data in self.server.writes if tag == 1]
                self._send(chunks, close=self.server.close_after)

    def _echo(self, sid: int) -> None:
        body = self.bodies.get(sid, b"")[5:]
        self.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        self.h2.send_data(sid, grpc_message(body))
        self.h2.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.transport = None


# --------------------------------------------------------------- one example


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


async def fuzzed_call(
    channel: Channel, answer: Answer, timeout: float, replies: List[bytes]
) -> Tuple[Any, float, Any]:
    """The call under fuzz: (its result or GrpcError, seconds it took, what its call object
    says afterwards: code, details, initial and trailing metadata); a streaming call's
    replies go to ``replies`` as they come."""
    start = time.monotonic()
    if answer.streaming:
        call: Any = channel.unary_stream(STREAM)(REQUEST, timeout=timeout)

        async def collect() -> List[bytes]:
            async for reply in call:
                replies.append(reply)
            return replies

        outcome = collect()
    else:
        call = channel.unary_unary(UNARY)(REQUEST, timeout=timeout)
        outcome = call
    try:
        result: Any = await asyncio.wait_for(outcome, timeout + SLACK)
    except GrpcError as exc:
        result = exc
    elapsed = time.monotonic() - start

    async def afterwards() -> Tuple[Any, ...]:
        return (
            await call.code(),
            await call.details(),
            await call.initial_metadata(),
            await call.trailing_metadata(),
        )

    return result, elapsed, await asyncio.wait_for(afterwards(), BOUND)


async def healthy_call(channel: Channel) -> bool:
    """A call to the fake server turned healthy succeeds; True if at the first attempt.

    The first attempt may fail fast with UNAVAILABLE: when the last connect attempt met a
    server that does not speak HTTP/2 (a fuzzed first frame that is not SETTINGS), the
    pool fails even a wait_for_ready call at once rather than wait for a reconnect that
    cannot help (``Pool.assign``); the next call reconnects.
    """
    rpc = channel.unary_unary(UNARY)
    for attempt in range(3):
        try:
            reply = await asyncio.wait_for(
                rpc(b"healthy", timeout=BOUND, wait_for_ready=True), BOUND + 1
            )
        except GrpcError as exc:
            assert exc.code() is StatusCode.UNAVAILABLE and attempt < 2, exc
            await asyncio.sleep(0.05)
            continue
        assert reply == b"healthy"
        return attempt == 0
    raise AssertionError("unreachable")


def check_unmutated(answer: Answer, result: Any, replies: List[bytes], after: Any) -> None:
    """An unmutated answer: the result (or error, after the replies) and its status."""
    code = answer.code
    if code == 0:
        want: Any = list(answer.sent) if answer.streaming else answer.sent[0]
        assert result == want, (answer, result)
    else:
        assert isinstance(result, GrpcError), (answer, result)
        assert result.code() == code, (answer, result)
        assert replies == list(answer.sent if answer.streaming else ()), (answer, replies)
    assert after[0] == code, (answer, after)
    if code == answer.status and code != 0:  # (an OK status's message is not compared)
        assert after[1] == answer.details == result.details(), (answer, after)
    if answer.metadata:
        meta = dict(after[3])
        assert meta.get("x-trail-bin") == b"\x01\x02\x03\x04", after
        if not answer.trailers_only:
            assert dict(after[2]).get("x-init-bin") == b"\x00\xff", after


async def one_example(answer: Answer, plan: Plan, close_after: bool) -> List[str]:
    """One fuzzed call, then a healthy one on the same Channel; what it reached."""
    problems = Problems()
    reached: List[str] = []
    with problems.watching():
        frames = answer_frames(answer)
        first = sum(1 for f in frames if f.tag == 0)  # the server's SETTINGS, at accept
        fake = FakeServer(render(frames, plan, handshake=first), close_after)
        port = await fake.start()
        channel = Channel(f"127.0.0.1:{port}", connect_timeout=1.0)
        # A failed connect backs off before the next; short here, so that the healthy
        # call does not wait out the backoff the fuzzed connections earned.
        channel._pool.backoff = Backoff(initial=0.01, multiplier=1.0, jitter=0.0, maximum=0.01)
        try:
            # An unmutated answer gets a long deadline: it must succeed on a slow host too.
            timeout = TIMEOUT if plan.mutated else BOUND
            replies: List[bytes] = []
            result, elapsed, after = await fuzzed_call(channel, answer, timeout, replies)
            assert isinstance(result, (bytes, list, GrpcError)), result
            assert elapsed < timeout + SLACK, elapsed
            assert isinstance(after[0], StatusCode) and isinstance(after[1], str), after
            if isinstance(result, GrpcError):
                assert isinstance(result.code(), StatusCode) and result.code() == after[0]
                reached.append(f"GrpcError {result.code().name}")
            else:
                reached.append("a result")
            if not plan.mutated and not answer.tweaks:
                check_unmutated(answer, result, replies, after)
            fake.turn_healthy()
            if not await healthy_call(channel):
                reached.append("the first healthy call failed fast")
        finally:
            await asyncio.wait_for(channel.close(), BOUND)
            await fake.close()
        current = asyncio.current_task()
        for _ in range(100):  # a closing transport takes a few loop turns
            left = [t for t in asyncio.all_tasks() if t is not current]
            if not left:
                break
            await asyncio.sleep(0.01)
        assert not left, left
    assert not fake.errors, fake.errors
    assert not problems.found, problems.found
    return reached


@fuzz_settings(150)
@given(answer=ANSWERS, plan=plans(), close_after=st.booleans())
def test_mutated_server_conversations(answer: Answer, plan: Plan, close_after: bool) -> None:
    for reached in asyncio.run(one_example(answer, plan, close_after)):
        event(reached)


@pytest.mark.parametrize(
    "answer",
    [
        Answer(False, (b"one",), 0, "", False, True, True),
        Answer(False, (), 5, "50% off \u00e9", True, False, True),
        Answer(False, (), 0, "", True, False, False),
        Answer(True, (), 0, "", True, False, True),
        Answer(True, (b"a", b"", b"c"), 0, "", False, False, True),
        Answer(True, (b"a", b"b"), 13, "bad thing", False, True, False),
    ],
)
def test_the_unmutated_answer_is_understood(answer: Answer) -> None:
    """The harness on its own: no mutation, the right result (writes split anyway)."""
    asyncio.run(one_example(answer, Plan(splits=(5, 40, 77)), close_after=False))
