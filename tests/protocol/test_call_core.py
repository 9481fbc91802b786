"""The IO-free call state machines, driven by tables of event sequences (no socket, no loop).

Each row is what arrives for one stream, in order, and the one outcome the call must reach:
status, a fragment of the details, whether it may be retried and whether the request
provably never ran. The rows cover every response fault of docs/reliability.md.
"""

from __future__ import annotations

import gzip
import struct
from typing import Any, List, Optional, Sequence, Tuple

import pytest
from h2.errors import ErrorCodes

from wove_h2grpc.protocol.call import CallState, ClientCall, Outcome, Retry
from wove_h2grpc.protocol.kinds import RpcKind
from wove_h2grpc.protocol.server_call import Finish, ServerCall, open_call
from wove_h2grpc.protocol.status import StatusCode

OK_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
OK_TRAILERS = [(b"grpc-status", b"0")]


def msg(payload: bytes, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(payload)) + payload


def status(code: int, message: Optional[bytes] = None) -> List[Tuple[bytes, bytes]]:
    block = [(b"grpc-status", str(code).encode())]
    if message is not None:
        block.append((b"grpc-message", message))
    return block


Event = Tuple[Any, ...]


def run_client(
    events: Sequence[Event], *, single: bool = True, max_receive: int = -1
) -> Tuple[ClientCall, Outcome]:
    call = ClientCall("/t.S/M", [], max_receive=max_receive, single_response=single)
    outcome: Optional[Outcome] = None
    for event in events:
        kind, *args = event
        if kind == "open":
            call.opened(1, "127.0.0.1:5")
            continue
        result = {
            "headers": call.on_headers,
            "data": call.on_data,
            "trailers": call.on_trailers,
            "end": call.on_end,
            "reset": call.on_reset,
            "goaway": call.on_goaway,
            "lost": call.on_connection_lost,
            "deadline": call.on_deadline,
            "cancel": call.on_cancel,
        }[kind](*args)
        if outcome is not None:
            assert result is None, f"second outcome after {outcome}: {result}"
        elif result is not None:
            outcome = result
    assert outcome is not None, "the call never ended"
    assert call.state is CallState.DONE and call.outcome is outcome
    return call, outcome


GOOD = [
    ("open",),
    ("headers", OK_HEADERS),
    ("data", msg(b"hi")),
    ("trailers", OK_TRAILERS),
    ("end",),
]

# (name, events, code, details fragment, retry, request_sent, reset)
CLIENT_CASES: List[Tuple[str, List[Event], StatusCode, str, Retry, Optional[bool], Any]] = [
    ("ok", GOOD, StatusCode.OK, "", Retry.NO, True, None),
    (
        "data with END_STREAM, no trailers",
        [("open",), ("headers", OK_HEADERS), ("data", msg(b"hi")), ("end",)],
        StatusCode.INTERNAL,
        "server closed the stream without trailers (grpc-status missing)",
        Retry.NO,
        True,
        None,
    ),
    (
        "trailers without grpc-status",
        [
            ("open",),
            ("headers", OK_HEADERS),
            ("data", msg(b"x")),
            ("trailers", [(b"x", b"y")]),
            ("end",),
        ],
        StatusCode.INTERNAL,
        "trailers arrived without grpc-status",
        Retry.NO,
        True,
        None,
    ),
    *[
        (
            f"grpc-status {bad!r}",
            [("open",), ("headers", OK_HEADERS), ("trailers", [(b"grpc-status", bad)]), ("end",)],
            StatusCode.INTERNAL,
            "grpc-status is not a decimal status code",
            Retry.NO,
            True,
            None,
        )
        for bad in (b"abc", b"-1", b"", b"1 2", "\u00b2".encode())
    ],
    *[
        (
            f"HTTP {http} without grpc-status",
            [
                ("open",),
                ("headers", [(b":status", str(http).encode())]),
                ("data", b"<html>"),
                ("end",),
            ],
            code,
            f"HTTP status {http} without grpc-status",
            Retry.NO,
            True,
            None,
        )
        for http, code in (
            (400, StatusCode.INTERNAL),
            (401, StatusCode.UNAUTHENTICATED),
            (403, StatusCode.PERMISSION_DENIED),
            (404, StatusCode.UNIMPLEMENTED),
            (429, StatusCode.UNAVAILABLE),
            (502, StatusCode.UNAVAILABLE),
            (503, StatusCode.UNAVAILABLE),
            (504, StatusCode.UNAVAILABLE),
            (418, StatusCode.UNKNOWN),
            (500, StatusCode.UNKNOWN),
        )
    ],
    *[
        (
            f"content-type {ctype!r}",
            [("open",), ("headers", [(b":status", b"200"), (b"content-type", ctype)]), ("end",)],
            StatusCode.UNKNOWN,
            f"response is not gRPC: content-type {ctype.decode()!r}",
            Retry.NO,
            True,
            None,
        )
        for ctype in (b"text/html", b"application/json", b"application/grpcx")
    ],
    (
        "application/grpc+proto is gRPC",
        [
            ("open",),
            ("headers", [(b":status", b"200"), (b"content-type", b"application/grpc+proto")]),
            ("data", msg(b"p")),
            ("trailers", OK_TRAILERS),
            ("end",),
        ],
        StatusCode.OK,
        "",
        Retry.NO,
        True,
        None,
    ),
    (
        "truncated message, then trailers",
        [
            ("open",),
            ("headers", OK_HEADERS),
            ("data", msg(b"x" * 16)[:8]),
            ("trailers", OK_TRAILERS),
            ("end",),
        ],
        StatusCode.INTERNAL,
        "got 3 of 16 bytes (truncated message)",
        Retry.NO,
        True,
        None,
    ),
    (
        "truncated message, stream ends on the DATA frame",
        [("open",), ("headers", OK_HEADERS), ("data", msg(b"x" * 16)[:8]), ("end",)],
        StatusCode.INTERNAL,
        "server closed the stream without trailers",
        Retry.NO,
        True,
        None,
    ),
    (
        "truncated prefix",
        [
            ("open",),
            ("headers", OK_HEADERS),
            ("data", b"\x00\x00"),
            ("trailers", OK_TRAILERS),
            ("end",),
        ],
        StatusCode.INTERNAL,
        "inside a gRPC message prefix (2 of 5 bytes)",
        Retry.NO,
        True,
        None,
    ),
    (
        "compressed flag without grpc-encoding",
        [("open",), ("headers", OK_HEADERS), ("data", msg(b"zz", 1))],
        StatusCode.INTERNAL,
        "received a compressed message but no grpc-encoding header",
        Retry.NO,
        True,
        ErrorCodes.CANCEL,
    ),
    (
        "grpc-encoding snappy",
        [
            ("open",),
            ("headers", [*OK_HEADERS, (b"grpc-encoding", b"snappy")]),
            ("data", msg(b"zz", 1)),
        ],
        StatusCode.INTERNAL,
        "unsupported grpc-encoding 'snappy'",
        Retry.NO,
        True,
        ErrorCodes.CANCEL,
    ),
    (
        "bad compressed-flag byte",
        [("open",), ("headers", OK_HEADERS), ("data", msg(b"zz", 7))],
        StatusCode.INTERNAL,
        "compressed-flag byte is 7",
        Retry.NO,
        True,
        ErrorCodes.CANCEL,
    ),
    (
        "two messages for a unary call",
        [("open",), ("headers", OK_HEADERS), ("data", msg(b"a") + msg(b"b"))],
        StatusCode.INTERNAL,
        "server sent more than one response message for unary /t.S/M",
        Retry.NO,
        True,
        ErrorCodes.CANCEL,
    ),
    (
        "OK but no message",
        [("open",), ("headers", OK_HEADERS), ("trailers", OK_TRAILERS), ("end",)],
        StatusCode.INTERNAL,
        "server sent OK but no response message for unary /t.S/M",
        Retry.NO,
        True,
        None,
    ),
    (
        "error status in trailers, percent-encoded message",
        [
            ("open",),
            ("headers", OK_HEADERS),
            ("trailers", status(5, b"not %E2%98%BA here%0A")),
            ("end",),
        ],
        StatusCode.NOT_FOUND,
        "not \u263a here\n",
        Retry.NO,
        True,
        None,
    ),
    (
        "Trailers-Only error",
        [("open",), ("headers", [*OK_HEADERS, *status(7, b"no")]), ("end",)],
        StatusCode.PERMISSION_DENIED,
        "no",
        Retry.NO,
        True,
        None,
    ),
    (
        "status code outside 0-16 is UNKNOWN",
        [("open",), ("headers", [*OK_HEADERS, *status(99)]), ("end",)],
        StatusCode.UNKNOWN,
        "",
        Retry.NO,
        True,
        None,
    ),
    (
        "REFUSED_STREAM before headers: retried",
        [("open",), ("reset", ErrorCodes.REFUSED_STREAM)],
        StatusCode.UNAVAILABLE,
        "stream refused by 127.0.0.1:5 (RST_STREAM REFUSED_STREAM)",
        Retry.REFUSED,
        False,
        None,
    ),
    (
        "REFUSED_STREAM after headers: it may have run",
        [("open",), ("headers", OK_HEADERS), ("reset", ErrorCodes.REFUSED_STREAM)],
        StatusCode.UNAVAILABLE,
        "RST_STREAM REFUSED_STREAM",
        Retry.NO,
        True,
        None,
    ),
    *[
        (
            f"RST_STREAM {code.name}",
            [("open",), ("reset", code)],
            mapped,
            f"stream reset by server (RST_STREAM {code.name})",
            Retry.NO,
            None,
            None,
        )
        for code, mapped in (
            (ErrorCodes.NO_ERROR, StatusCode.INTERNAL),
            (ErrorCodes.PROTOCOL_ERROR, StatusCode.INTERNAL),
            (ErrorCodes.INTERNAL_ERROR, StatusCode.INTERNAL),
            (ErrorCodes.FLOW_CONTROL_ERROR, StatusCode.INTERNAL),
            (ErrorCodes.STREAM_CLOSED, StatusCode.INTERNAL),
            (ErrorCodes.CANCEL, StatusCode.CANCELLED),
            (ErrorCodes.ENHANCE_YOUR_CALM, StatusCode.RESOURCE_EXHAUSTED),
            (ErrorCodes.INADEQUATE_SECURITY, StatusCode.PERMISSION_DENIED),
        )
    ],
    (
        "GOAWAY below the stream: never processed, retried",
        [("open",), ("goaway", 0, ErrorCodes.NO_ERROR, "GOAWAY NO_ERROR from p")],
        StatusCode.UNAVAILABLE,
        "GOAWAY NO_ERROR from p: stream 1 above last-stream-id 0",
        Retry.REFUSED,
        False,
        None,
    ),
    (
        "GOAWAY ENHANCE_YOUR_CALM covering the stream: it may have run, not retried",
        [("open",), ("goaway", 1, ErrorCodes.ENHANCE_YOUR_CALM, "GOAWAY ENHANCE_YOUR_CALM from p")],
        StatusCode.RESOURCE_EXHAUSTED,
        "GOAWAY ENHANCE_YOUR_CALM from p",
        Retry.NO,
        None,
        None,
    ),
    (
        "GOAWAY INTERNAL_ERROR after headers",
        [("open",), ("headers", OK_HEADERS), ("goaway", 1, ErrorCodes.INTERNAL_ERROR, "crash")],
        StatusCode.INTERNAL,
        "crash",
        Retry.NO,
        True,
        None,
    ),
    (
        "graceful GOAWAY covering the stream: the call goes on",
        [("open",), ("goaway", 1, ErrorCodes.NO_ERROR, "bye"), *GOOD[1:]],
        StatusCode.OK,
        "",
        Retry.NO,
        True,
        None,
    ),
    (
        "GOAWAY while queued: unsent",
        [("goaway", 0, ErrorCodes.NO_ERROR, "bye")],
        StatusCode.UNAVAILABLE,
        "bye",
        Retry.UNSENT,
        False,
        None,
    ),
    (
        "connection lost while queued: unsent",
        [("lost", StatusCode.UNAVAILABLE, "gone")],
        StatusCode.UNAVAILABLE,
        "gone",
        Retry.UNSENT,
        False,
        None,
    ),
    (
        "connection lost mid-response: may have run",
        [
            ("open",),
            ("headers", OK_HEADERS),
            ("data", msg(b"x" * 8)[:6]),
            ("lost", StatusCode.UNAVAILABLE, "lost"),
        ],
        StatusCode.UNAVAILABLE,
        "lost",
        Retry.NO,
        True,
        None,
    ),
    (
        "deadline on an open stream: reset CANCEL",
        [("open",), ("deadline",)],
        StatusCode.DEADLINE_EXCEEDED,
        "Deadline Exceeded",
        Retry.NO,
        None,
        ErrorCodes.CANCEL,
    ),
    (
        "deadline while queued: nothing to reset",
        [("deadline",)],
        StatusCode.DEADLINE_EXCEEDED,
        "Deadline Exceeded",
        Retry.NO,
        False,
        None,
    ),
    (
        "cancel after headers: reset CANCEL",
        [("open",), ("headers", OK_HEADERS), ("cancel",)],
        StatusCode.CANCELLED,
        "",
        Retry.NO,
        True,
        ErrorCodes.CANCEL,
    ),
]


@pytest.mark.parametrize(
    ("events", "code", "fragment", "retry", "sent", "reset"),
    [case[1:] for case in CLIENT_CASES],
    ids=[case[0] for case in CLIENT_CASES],
)
def test_client_call_outcome(
    events: List[Event],
    code: StatusCode,
    fragment: str,
    retry: Retry,
    sent: Optional[bool],
    reset: Any,
) -> None:
    _, outcome = run_client(events)
    assert outcome.code is code, outcome
    assert fragment in outcome.details, outcome.details
    assert outcome.retry is retry
    assert outcome.request_sent is sent
    assert outcome.reset == reset
    # Every later input is ignored: a call has exactly one outcome.
    _, again = run_client([*events, ("end",), ("reset", 2), ("deadline",), ("cancel",)])
    assert again.code is code and again.details == outcome.details


def test_ok_outcome_carries_the_message_and_metadata() -> None:
    headers = [*OK_HEADERS, (b"x-init", b"1")]
    trailers = [*OK_TRAILERS, (b"x-trail", b"2"), (b"k-bin", b"AAE")]
    _, outcome = run_client(
        [("open",), ("headers", headers), ("data", msg(b"reply")), ("trailers", trailers), ("end",)]
    )
    assert outcome.code is StatusCode.OK and outcome.message == b"reply"
    assert outcome.initial_metadata == (("x-init", "1"),)
    assert outcome.trailing_metadata == (("x-trail", "2"), ("k-bin", b"\x00\x01"))


def test_trailers_only_metadata_is_trailing() -> None:
    _, outcome = run_client(
        [("open",), ("headers", [*OK_HEADERS, *status(5), (b"x-t", b"v")]), ("end",)]
    )
    assert outcome.initial_metadata == ()
    assert outcome.trailing_metadata == (("x-t", "v"),)


def test_gzip_response_and_receive_limit() -> None:
    body = gzip.compress(b"y" * 1000)
    headers = [*OK_HEADERS, (b"grpc-encoding", b"gzip")]
    _, ok = run_client(
        [
            ("open",),
            ("headers", headers),
            ("data", msg(body, 1)),
            ("trailers", OK_TRAILERS),
            ("end",),
        ]
    )
    assert ok.code is StatusCode.OK and ok.message == b"y" * 1000
    # The limit is checked from the prefix (before buffering) and after inflating.
    _, big = run_client(
        [("open",), ("headers", OK_HEADERS), ("data", msg(b"x" * 100)[:5])], max_receive=10
    )
    assert big.code is StatusCode.RESOURCE_EXHAUSTED and "(100 vs. 10)" in big.details
    assert big.reset == ErrorCodes.CANCEL
    _, bomb = run_client([("open",), ("headers", headers), ("data", msg(body, 1))], max_receive=500)
    assert bomb.code is StatusCode.RESOURCE_EXHAUSTED and "after gzip decompression" in bomb.details


def test_streaming_response_queues_every_message_in_order() -> None:
    chunks = msg(b"one") + msg(b"two") + msg(b"three")
    call, outcome = run_client(
        [
            ("open",),
            ("headers", OK_HEADERS),
            ("data", chunks[:7]),
            ("data", chunks[7:]),
            ("trailers", OK_TRAILERS),
            ("end",),
        ],
        single=False,
    )
    assert outcome.code is StatusCode.OK and outcome.message is None
    assert list(call.messages) == [b"one", b"two", b"three"]


def test_error_names_method_target_stream_and_time() -> None:
    call, outcome = run_client([("open",), ("reset", ErrorCodes.CANCEL)])
    error = call.error(outcome, target="dns:///svc:5", elapsed=0.25)
    assert error.code() is StatusCode.CANCELLED
    assert error.h2_error_code == ErrorCodes.CANCEL and error.request_sent is None
    debug = error.debug_error_string()
    for part in ("/t.S/M", "dns:///svc:5", "127.0.0.1:5", "stream 1", "0.250s", "CANCEL"):
        assert part in debug, debug


# ----------------------------------------------------------------------------- server side

REQUEST = [
    (b":method", b"POST"),
    (b":path", b"/t.S/M"),
    (b":scheme", b"http"),
    (b":authority", b"x"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


def _replace(
    headers: List[Tuple[bytes, bytes]], name: bytes, value: Optional[bytes]
) -> List[Tuple[bytes, bytes]]:
    out = [(k, v) for k, v in headers if k != name]
    if value is not None:
        out.append((name, value))
    return out


def _open(headers: List[Tuple[bytes, bytes]], ended: bool = False) -> Any:
    return open_call(
        1,
        headers,
        ended,
        now=100.0,
        kind_of={"/t.S/M": RpcKind.UNARY_UNARY}.get,
        max_receive=64,
        call_type=ServerCall,
    )


SERVER_REJECTS = [
    (
        "GET",
        _replace(REQUEST, b":method", b"GET"),
        StatusCode.INTERNAL,
        "gRPC requires POST",
        b"405",
    ),
    (
        "no content-type",
        _replace(REQUEST, b"content-type", None),
        StatusCode.INTERNAL,
        "invalid gRPC content-type",
        b"415",
    ),
    (
        "json",
        _replace(REQUEST, b"content-type", b"application/json"),
        StatusCode.INTERNAL,
        "invalid gRPC content-type",
        b"415",
    ),
    (
        "unknown method",
        _replace(REQUEST, b":path", b"/t.S/Nope"),
        StatusCode.UNIMPLEMENTED,
        "Method not found: /t.S/Nope",
        b"200",
    ),
    (
        "snappy",
        [*REQUEST, (b"grpc-encoding", b"snappy")],
        StatusCode.UNIMPLEMENTED,
        "grpc-encoding 'snappy' is not supported",
        b"200",
    ),
    (
        "bad timeout",
        [*REQUEST, (b"grpc-timeout", b"1x")],
        StatusCode.INTERNAL,
        "grpc-timeout",
        b"200",
    ),
]


@pytest.mark.parametrize(
    ("headers", "code", "fragment", "http"),
    [case[1:] for case in SERVER_REJECTS],
    ids=[case[0] for case in SERVER_REJECTS],
)
@pytest.mark.parametrize("ended", [True, False])
def test_server_rejects_answer_trailers_only(
    headers: List[Tuple[bytes, bytes]], code: StatusCode, fragment: str, http: bytes, ended: bool
) -> None:
    finish = _open(headers, ended)
    assert isinstance(finish, Finish)
    assert finish.code is code and fragment in finish.details
    block = dict(finish.headers or [])
    assert block[b":status"] == http and block[b"grpc-status"] == str(int(code)).encode()
    # A complete answer before the request ended closes the request side (RFC 9113 8.1).
    assert finish.reset == (None if ended else ErrorCodes.NO_ERROR)


def test_server_stream_without_path_is_reset() -> None:
    finish = _open(_replace(REQUEST, b":path", None))
    assert isinstance(finish, Finish) and finish.headers is None
    assert finish.reset == ErrorCodes.PROTOCOL_ERROR


def test_server_unary_call_lifecycle() -> None:
    call = _open([*REQUEST, (b"grpc-timeout", b"250m"), (b"x-md", b"v")])
    assert isinstance(call, ServerCall)
    assert call.deadline == pytest.approx(100.25)
    assert call.metadata() == (("x-md", "v"),)
    assert call.on_data(msg(b"req")[:3]) is None and call.on_data(msg(b"req")[3:]) is None
    assert call.on_end() is None and list(call.requests) == [b"req"]
    assert call.response_headers() is not None and call.response_headers() is None
    assert call.encode_response(b"ok") == (b"\x00\x00\x00\x00\x02", b"ok")
    call.trailing_metadata = (("x-t", "1"),)
    finish = call.finish(StatusCode.OK)
    assert finish is not None and finish.headers == [(b"grpc-status", b"0"), (b"x-t", b"1")]
    assert finish.reset is None
    assert call.finish(StatusCode.INTERNAL, "again") is None  # one final status only


@pytest.mark.parametrize(
    ("chunks", "end", "code", "fragment"),
    [
        ([msg(b"a") + msg(b"b")], False, StatusCode.UNIMPLEMENTED, "more than one request message"),
        ([], True, StatusCode.INTERNAL, "request stream ended without a request message"),
        ([msg(b"x" * 10)[:7]], True, StatusCode.INTERNAL, "truncated message"),
        ([msg(b"x" * 65)[:5]], False, StatusCode.RESOURCE_EXHAUSTED, "(65 vs. 64)"),
        ([msg(b"zz", 1)], False, StatusCode.INTERNAL, "no grpc-encoding header"),
    ],
)
def test_server_request_faults(
    chunks: List[bytes], end: bool, code: StatusCode, fragment: str
) -> None:
    call = _open(REQUEST)
    assert isinstance(call, ServerCall)
    finish = None
    for chunk in chunks:
        finish = finish or call.on_data(chunk)
    if end and finish is None:
        finish = call.on_end()
    assert finish is not None and finish.code is code and fragment in finish.details
    block = dict(finish.headers or [])
    assert block[b":status"] == b"200"  # Trailers-Only: no response headers were sent
    assert finish.reset == (None if end else ErrorCodes.NO_ERROR)
    assert call.done and call.finish(StatusCode.OK) is None


def test_server_gzip_request_gets_gzip_reply_only_when_accepted() -> None:
    accepted = _open(
        [*REQUEST, (b"grpc-encoding", b"gzip"), (b"grpc-accept-encoding", b"identity,gzip")]
    )
    plain = _open([*REQUEST, (b"grpc-encoding", b"gzip")])
    assert isinstance(accepted, ServerCall) and isinstance(plain, ServerCall)
    assert accepted.on_data(msg(gzip.compress(b"q"), 1)) is None and list(accepted.requests) == [
        b"q"
    ]
    prefix, body = accepted.encode_response(b"r" * 100)
    assert prefix[0] == 1 and gzip.decompress(body) == b"r" * 100
    assert (b"grpc-encoding", b"gzip") in (accepted.response_headers() or [])
    assert plain.encode_response(b"r")[0][0] == 0


def test_server_reset_ends_the_call_without_a_status() -> None:
    call = _open(REQUEST)
    assert isinstance(call, ServerCall)
    call.on_reset()
    assert call.done and call.finish(StatusCode.OK) is None and call.response_headers() is None
