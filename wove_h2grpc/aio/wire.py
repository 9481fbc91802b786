"""``WireCall``: one attempt of a client call as a ``ClientConnection`` carries it.

Apart from ``aio.connection`` so that the call objects (``calls``) can build attempts
without importing h2: that loads with the first connection.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable, Deque, Optional, Tuple

from ..protocol.call import ClientCall, Headers, Outcome

if TYPE_CHECKING:
    import asyncio

__all__ = ["WireCall"]


class WireCall(ClientCall):
    """A ClientCall with what carrying it over asyncio needs: the caller's future, how its
    deadline is watched and the request bytes still to send.

    A unary request is one message, given at construction, after which the request stream
    ends. A streaming request (``closing`` False) gets its messages through
    ``ClientConnection.write`` and ends with ``done_writing``; ``writer`` is resolved when
    what was written has gone out, ``progress`` when response headers, a message or the
    outcome arrive (both set by the waiting side, resolved once, by the connection).
    """

    __slots__ = (
        "body",
        "closing",
        "data_sent",
        "deadline",
        "end_sent",
        "future",
        "listed",
        "out_pos",
        "outbox",
        "prefix",
        "progress",
        "sink",
        "streaming",
        "timer",
        "unacked",
        "writer",
    )

    def __init__(
        self,
        method: str,
        request_headers: Headers,
        prefix: bytes,
        body: bytes,
        future: asyncio.Future[Outcome],
        deadline: Optional[float],
        max_receive: int,
        single_response: bool = True,
        closing: bool = True,
    ) -> None:
        # Not super(): that builds a proxy object on every call (before Python 3.12).
        ClientCall.__init__(self, method, request_headers, max_receive, single_response)
        self.future = future
        self.deadline = deadline
        # The 5-byte message prefix and the message, kept apart: joining them would copy
        # the whole request (a Wove task's arguments) once more for as long as it waits.
        self.prefix = prefix
        self.body = body
        self.out_pos = 0  # bytes of prefix + body sent
        self.timer: Optional[asyncio.TimerHandle] = None  # a deadline out of order (deadlines.py)
        self.listed = False  # the deadline is watched through the connection's list
        self.closing = closing  # the request ends after the messages written so far
        self.end_sent = False  # END_STREAM went out
        self.data_sent = 0  # request bytes sent, all messages together
        self.outbox: Optional[Deque[Tuple[bytes, bytes]]] = None  # messages after this one
        self.streaming = not single_response  # response bytes acknowledged as read
        self.unacked = 0  # received bytes not acknowledged yet (a reader that fell behind)
        self.writer: Optional[asyncio.Future[None]] = None
        self.progress: Optional[asyncio.Future[None]] = None
        # Takes each response message as it arrives instead of ``messages`` (see _on_data).
        self.sink: Optional[Callable[[bytes], None]] = None

    def queue(self, prefix: bytes, body: bytes) -> None:
        """Add one message to the request, after those written before it."""
        if self.prefix:
            if self.outbox is None:
                self.outbox = deque()
            self.outbox.append((prefix, body))
        else:
            self.prefix, self.body, self.out_pos = prefix, body, 0

    @property
    def request_drained(self) -> bool:
        """True when every message written so far has gone out to the connection."""
        return not self.prefix and not self.outbox

    def take_request(self, other: WireCall) -> None:
        """Carry over ``other``'s unsent request (a retry on another connection)."""
        self.prefix, self.body, self.out_pos = other.prefix, other.body, other.out_pos
        self.outbox, self.closing = other.outbox, other.closing
        other.prefix = other.body = b""
        other.outbox = None
