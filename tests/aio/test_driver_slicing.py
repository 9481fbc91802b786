"""The driver hands h2 at most ``max_frames_per_turn`` frames per event-loop turn.

A read full of small frames is cut at a frame boundary; the rest waits for later turns with
reading paused, and reading resumes once it is through. Frame boundaries are tracked across
reads that split frames (or their 9-byte headers) anywhere.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Callable, Dict, List, Optional

import h2.config
import h2.connection
import h2.events
from _frames import frame
from hypothesis import given, settings
from hypothesis import strategies as st

from wove_h2grpc.aio.driver import H2Driver

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def ping(i: int) -> bytes:
    return frame(0x6, 0, 0, struct.pack(">Q", i))


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.pauses = 0
        self.written = bytearray()

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return False

    def write(self, data: Any) -> None:
        self.written += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class PingCounter(H2Driver):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        config = h2.config.H2Configuration(client_side=False)
        super().__init__(loop, h2.connection.H2Connection(config=config))
        self.pings: List[int] = []
        self.broken: Optional[Exception] = None

    def handlers(self) -> Dict[type, Callable[[Any], None]]:
        return {h2.events.PingReceived: self._on_ping}

    def _on_ping(self, event: Any) -> None:
        self.pings.append(struct.unpack(">Q", event.ping_data)[0])

    def on_broken(self, exc: Exception, not_http2: bool) -> None:
        self.broken = exc


def start(loop: asyncio.AbstractEventLoop) -> tuple[PingCounter, FakeTransport]:
    driver = PingCounter(loop)
    transport = FakeTransport()
    driver.connection_made(transport)
    driver.h2.initiate_connection()
    return driver, transport


async def settle(driver: PingCounter, transport: FakeTransport, turns: int = 100) -> None:
    for _ in range(turns):
        if not transport.paused and driver._backlog is None:
            return
        await asyncio.sleep(0)
    raise AssertionError("the backlog was not worked off")


async def test_a_read_of_many_small_frames_is_spread_over_turns() -> None:
    driver, transport = start(asyncio.get_running_loop())
    limit = driver.max_frames_per_turn
    data = PREFACE + frame(0x4, 0, 0, b"") + b"".join(ping(i) for i in range(1000))
    driver.data_received(data)
    # The first turn: SETTINGS and limit - 1 PINGs; reading paused for the rest.
    assert driver.pings == list(range(limit - 1))
    assert transport.paused
    await settle(driver, transport)
    assert driver.pings == list(range(1000))
    assert not transport.paused and transport.pauses == 1
    assert driver.broken is None


async def test_a_read_of_few_frames_is_not_cut() -> None:
    driver, transport = start(asyncio.get_running_loop())
    driver.data_received(PREFACE + frame(0x4, 0, 0, b"") + b"".join(ping(i) for i in range(50)))
    assert driver.pings == list(range(50))
    assert transport.pauses == 0


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    count=st.integers(min_value=0, max_value=700),
    cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=12),
)
def test_any_split_of_the_byte_stream_delivers_every_frame_once(
    count: int, cuts: List[int]
) -> None:
    async def run() -> None:
        driver, transport = start(asyncio.get_running_loop())
        per_call: List[int] = []
        receive = driver.h2.receive_data

        def counting(data: Any) -> Any:
            events = receive(data)
            per_call.append(len(events))
            return events

        driver.h2.receive_data = counting  # type: ignore[method-assign]
        # PINGs with a WINDOW_UPDATE after every seventh: frames of two sizes.
        body = b"".join(
            ping(i) + (frame(0x8, 0, 0, struct.pack(">I", 1)) if i % 7 == 0 else b"")
            for i in range(count)
        )
        data = PREFACE + frame(0x4, 0, 0, b"") + body
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        for a, b in zip(points, points[1:]):
            while transport.paused:  # a paused transport delivers nothing
                await asyncio.sleep(0)
            driver.data_received(memoryview(bytearray(data[a:b])))
        await settle(driver, transport, turns=1000)
        assert driver.pings == list(range(count))
        assert driver.broken is None
        # A call may also finish the frame an earlier read began: one more than the limit.
        assert max(per_call) <= driver.max_frames_per_turn + 1

    asyncio.run(run())
