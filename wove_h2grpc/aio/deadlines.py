"""The deadlines of one connection's calls, under one event-loop timer.

asyncio keeps its timers in a heap ordered by ``TimerHandle.__lt__``, a Python method: a
timer per call costs a TimerHandle, a heap push and pop with a dozen Python-level
comparisons when many calls are in flight, and more objects for the garbage collector.
Calls of one timeout that start one after another have their deadlines in order, so they
join one list, soonest first, whose single timer is armed for the first of them. A call
whose deadline comes before the list's last one gets a timer of its own. Calls that ended
stay in the list until they reach one of its ends (or it is compacted); ``listed`` tells
them apart.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable, Deque, Generic, Optional, Protocol, TypeVar

__all__ = ["Deadlines", "Timed"]


class Timed(Protocol):
    """A call as the list sees it: its deadline (loop time), and where it is watched."""

    deadline: Optional[float]
    listed: bool  # in the shared list
    timer: Optional[asyncio.TimerHandle]  # a timer of its own (a deadline out of order)


T = TypeVar("T", bound=Timed)


class Deadlines(Generic[T]):
    """Watches calls' deadlines; ``expire(call)`` runs once a watched call's has come."""

    __slots__ = ("_at", "_calls", "_expire", "_loop", "_timer", "_unlisted")

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[T], None]) -> None:
        self._loop = loop
        self._expire = expire
        self._calls: Deque[T] = deque()
        self._timer: Optional[asyncio.TimerHandle] = None
        self._at = 0.0  # when _timer fires
        self._unlisted = 0  # calls in _calls that have ended

    def watch(self, call: T) -> None:
        """Expire ``call`` at its deadline (which is not None), unless ``forget`` comes first."""
        deadline = call.deadline
        assert deadline is not None
        calls = self._calls
        if calls and (calls[-1].deadline or 0.0) > deadline:
            call.timer = self._loop.call_at(deadline, self._fire_one, call)
            return
        calls.append(call)
        call.listed = True
        if self._timer is None or self._at > deadline:
            self._arm(deadline)

    def forget(self, call: T) -> None:
        """``call`` ended: stop watching it (at once from either end of the list, else once
        it reaches one or when ended calls are most of the list)."""
        timer = call.timer
        if timer is not None:
            timer.cancel()
            call.timer = None
        if not call.listed:
            return
        call.listed = False
        calls = self._calls
        if not calls:
            return
        if calls[0] is call:
            calls.popleft()
            while calls and not calls[0].listed:
                calls.popleft()
                self._unlisted -= 1
            return
        if calls[-1] is call:
            # The last deadline, behind a call still running: gone now, so that calls with
            # an earlier deadline than this one can still join the list.
            calls.pop()
            while calls and not calls[-1].listed:
                calls.pop()
                self._unlisted -= 1
            return
        self._unlisted += 1
        if self._unlisted > 64 and self._unlisted * 2 > len(calls):
            live = [c for c in calls if c.listed]
            calls.clear()
            calls.extend(live)
            self._unlisted = 0

    def close(self) -> None:
        """The connection is gone: no timer left behind (its calls were ended first)."""
        for call in self._calls:
            call.listed = False
        self._calls.clear()
        self._unlisted = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __len__(self) -> int:
        """Calls in the list, ended ones not yet dropped included."""
        return len(self._calls)

    @property
    def armed(self) -> bool:
        """True while the list's timer is set."""
        return self._timer is not None

    def _arm(self, when: float) -> None:
        """(Re)arm the list's timer for ``when``, no later than its first live deadline."""
        if self._timer is not None:
            self._timer.cancel()
        self._at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire_one(self, call: T) -> None:
        call.timer = None
        self._expire(call)

    def _fire(self) -> None:
        """The list's timer fired: every listed call whose deadline has come expires; the
        timer is armed again for the first one still to come."""
        self._timer = None
        calls = self._calls
        due = max(self._at, self._loop.time())  # asyncio ran it: its time has come
        while calls:
            call = calls[0]
            if call.listed:
                deadline = call.deadline
                if deadline is not None and deadline > due:
                    self._arm(deadline)
                    return
                call.listed = False
                calls.popleft()
                self._expire(call)
            else:
                calls.popleft()
                self._unlisted -= 1
