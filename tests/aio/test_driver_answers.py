"""A peer that floods PINGs or SETTINGS while it reads nothing is cut off.

h2 answers each with an ACK; while the transport says its buffer is full (pause_writing),
those ACKs pile up in our memory. Past ``MAX_ANSWERS_WHILE_BLOCKED`` owed ACKs the driver
sends GOAWAY ENHANCE_YOUR_CALM and gives up on the connection; a peer that reads what we
send (the transport drains, resume_writing) is answered without limit.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Callable, Dict, List, Optional, Tuple

import h2.config
import h2.connection
import h2.events
from _frames import frame
from h2.errors import ErrorCodes

from wove_h2grpc.aio import driver as driver_module
from wove_h2grpc.aio.driver import H2Driver

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LIMIT = driver_module.MAX_ANSWERS_WHILE_BLOCKED


def pings(count: int) -> bytes:
    return b"".join(frame(0x6, 0, 0, struct.pack(">Q", i)) for i in range(count))


def goaway_codes(data: bytes) -> List[int]:
    out = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        if data[pos + 3] == 0x7:
            out.append(int.from_bytes(data[pos + 13 : pos + 17], "big"))
        pos += 9 + length
    return out


class Transport(asyncio.Transport):
    """Keeps what is written; reading can be paused (the driver's slicing does)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.closed = False
        self.written = bytearray()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: Any) -> None:
        self.written += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Answering(H2Driver):
    """A server-side driver that only answers (h2 queues the ACKs itself)."""

    preface_length = len(PREFACE)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        config = h2.config.H2Configuration(client_side=False)
        super().__init__(loop, h2.connection.H2Connection(config=config))
        self.pings = 0
        self.broken: Optional[Exception] = None

    def handlers(self) -> Dict[type, Callable[[Any], None]]:
        return {h2.events.PingReceived: self._on_ping}

    def _on_ping(self, event: Any) -> None:
        self.pings += 1

    def on_broken(self, exc: Exception, not_http2: bool) -> None:
        self.broken = exc
        self.close_transport()  # as both real sides do: nothing more is read


async def feed(data: bytes) -> Tuple[Answering, Transport]:
    """A connection whose peer sends its preface, SETTINGS and then ``data``, in reads of
    64 KiB, each delivered only while reading is not paused."""
    driver = Answering(asyncio.get_running_loop())
    transport = Transport()
    driver.connection_made(transport)
    driver.h2.initiate_connection()
    stream = PREFACE + frame(0x4, 0, 0, b"") + data
    for pos in range(0, len(stream), 65536):
        for _ in range(10_000):
            if not transport.paused or driver.closing:
                break
            await asyncio.sleep(0)
        if driver.closing:
            break
        driver.data_received(memoryview(bytearray(stream[pos : pos + 65536])))
    for _ in range(10_000):
        if driver._backlog is None:
            break
        await asyncio.sleep(0)
    return driver, transport


async def test_acks_owed_to_a_peer_that_reads_nothing_are_bounded() -> None:
    driver = Answering(asyncio.get_running_loop())
    transport = Transport()
    driver.connection_made(transport)
    driver.pause_writing()  # the peer reads nothing: our writes are blocked from the start
    driver.h2.initiate_connection()
    stream = PREFACE + frame(0x4, 0, 0, b"") + pings(3 * LIMIT)
    for pos in range(0, len(stream), 65536):
        while transport.paused and not driver.closing:
            await asyncio.sleep(0)
        if driver.broken is not None:
            break
        driver.data_received(memoryview(bytearray(stream[pos : pos + 65536])))
    for _ in range(10_000):
        if driver.broken is not None or driver._backlog is None:
            break
        await asyncio.sleep(0)
    assert driver.broken is not None
    assert getattr(driver.broken, "error_code", None) == ErrorCodes.ENHANCE_YOUR_CALM
    assert goaway_codes(bytes(transport.written))[-1:] == [ErrorCodes.ENHANCE_YOUR_CALM]
    # Cut off once the limit was passed (a slice of frames at most beyond it).
    assert LIMIT < driver.pings <= LIMIT + driver.max_frames_per_turn + 1


async def test_a_flood_from_a_peer_that_reads_is_answered() -> None:
    driver, _ = await feed(pings(3 * LIMIT))
    assert driver.broken is None
    assert driver.pings == 3 * LIMIT


async def test_the_count_restarts_when_the_transport_drains() -> None:
    driver = Answering(asyncio.get_running_loop())
    transport = Transport()
    driver.connection_made(transport)
    driver.h2.initiate_connection()
    driver.data_received(PREFACE + frame(0x4, 0, 0, b""))
    half = pings(LIMIT // 2 + 100)
    for _ in range(4):  # four bursts of more than half the limit, each while blocked
        driver.pause_writing()
        for pos in range(0, len(half), 65536):
            while transport.paused:
                await asyncio.sleep(0)
            driver.data_received(memoryview(bytearray(half[pos : pos + 65536])))
        while driver._backlog is not None:
            await asyncio.sleep(0)
        driver.resume_writing()  # the peer read what we sent
    assert driver.broken is None
    assert driver.pings == 4 * (LIMIT // 2 + 100)
