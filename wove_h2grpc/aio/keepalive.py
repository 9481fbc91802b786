"""Client keepalive (gRFC A8): PING a connection that has calls in flight but reads nothing.

A PING goes out after ``keepalive_time`` without received bytes while calls are open; no
ACK within ``keepalive_timeout`` means the connection is dead. At most two PINGs are sent
between our DATA/HEADERS frames, grpcio's GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA: a grpcio
server answers more with GOAWAY too_many_pings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Optional

__all__ = ["ConnectionSettings", "Keepalive"]

logger = logging.getLogger(__name__)

MAX_PINGS_WITHOUT_DATA = 2


class ConnectionSettings:
    """Knobs shared by every connection of one channel.

    Shared on purpose: when a server answers GOAWAY too_many_pings, the doubled
    keepalive_time must also hold for the channel's next connections (as in grpcio).
    """

    __slots__ = (
        "connection_window_size",
        "initial_window_size",
        "keepalive_time",
        "keepalive_timeout",
        "max_receive_message_length",
    )

    def __init__(
        self,
        *,
        max_receive_message_length: int,
        keepalive_time: Optional[float],
        keepalive_timeout: float,
        initial_window_size: int = 16 * 1024 * 1024,
        connection_window_size: int = 64 * 1024 * 1024,
    ) -> None:
        self.max_receive_message_length = max_receive_message_length
        self.keepalive_time = keepalive_time
        self.keepalive_timeout = keepalive_timeout
        self.initial_window_size = initial_window_size
        self.connection_window_size = connection_window_size


class Keepalive:
    """The keepalive timers of one connection.

    ``busy()`` says whether calls are open, ``ping()`` sends a PING (False if it could
    not), ``expired()`` is called when a PING went unanswered, ``last_read()`` says when
    bytes last arrived. The connection resets ``pings_without_data`` when it sends a call.
    """

    __slots__ = (
        "_busy",
        "_deadline",
        "_expired",
        "_last_read",
        "_loop",
        "_ping",
        "_settings",
        "_timer",
        "pings_without_data",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: ConnectionSettings,
        *,
        busy: Callable[[], int],
        ping: Callable[[], bool],
        expired: Callable[[], None],
        last_read: Callable[[], float],
    ) -> None:
        self._loop = loop
        self._settings = settings
        self._busy = busy
        self._ping = ping
        self._expired = expired
        self._timer: Optional[asyncio.TimerHandle] = None
        self._deadline: Optional[asyncio.TimerHandle] = None
        self._last_read = last_read
        self.pings_without_data = 0

    def start(self) -> None:
        """Arm the first check (the connection is ready)."""
        interval = self._settings.keepalive_time
        if interval is not None and self._timer is None:
            self._timer = self._loop.call_later(interval, self._check)

    def stop(self) -> None:
        """Release both timers (the connection failed or closed)."""
        for timer in (self._timer, self._deadline):
            if timer is not None:
                timer.cancel()
        self._timer = self._deadline = None

    def acknowledged(self) -> None:
        """A PING ACK arrived: the connection is alive."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def too_many_pings(self, peer: str) -> None:
        """The server sent GOAWAY too_many_pings: as grpcio does, double keepalive_time for
        good (for this channel's next connections too)."""
        settings = self._settings
        if settings.keepalive_time is not None:
            settings.keepalive_time *= 2
            logger.warning(
                "server %s sent GOAWAY too_many_pings; keepalive_time doubled to %.1fs",
                peer,
                settings.keepalive_time,
            )

    def _check(self) -> None:
        self._timer = None
        interval = self._settings.keepalive_time
        if interval is None:
            return
        idle = time.monotonic() - self._last_read()
        busy = bool(self._busy())
        if (
            busy
            and idle >= interval
            and self._deadline is None
            and self.pings_without_data < MAX_PINGS_WITHOUT_DATA
        ):
            self.pings_without_data += 1
            if not self._ping():
                return
            self._deadline = self._loop.call_later(
                self._settings.keepalive_timeout, self._on_expired
            )
            self._timer = self._loop.call_later(interval, self._check)
        else:
            wait = max(interval - idle, 0.01) if busy else interval
            self._timer = self._loop.call_later(wait, self._check)

    def _on_expired(self) -> None:
        self._deadline = None
        self._expired()
