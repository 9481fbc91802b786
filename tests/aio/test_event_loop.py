"""The tests run on the event loop WOVE_H2GRPC_TEST_LOOP names (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os

# As tests/conftest.py reads it.
TEST_LOOP = os.environ.get("WOVE_H2GRPC_TEST_LOOP", "").strip().lower() or "asyncio"


def _loop_module(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` for a uvloop loop (a subclass here), else the module its class is from."""
    if any(cls.__module__.startswith("uvloop") for cls in type(loop).__mro__):
        return "uvloop"
    return type(loop).__module__.split(".")[0]


async def test_async_tests_run_on_the_chosen_loop() -> None:
    assert _loop_module(asyncio.get_running_loop()) == TEST_LOOP


def test_asyncio_run_in_a_sync_test_uses_the_chosen_loop() -> None:
    async def which() -> str:
        return _loop_module(asyncio.get_running_loop())

    assert asyncio.run(which()) == TEST_LOOP


async def test_the_loop_lists_live_timers_as_asyncio_does() -> None:
    """The timer checks of other tests read ``loop._scheduled``, on uvloop too."""
    loop = asyncio.get_running_loop()

    def mark() -> None:
        pass

    def names() -> list:
        return [
            t._callback.__name__
            for t in getattr(loop, "_scheduled")  # noqa: B009
            if not t.cancelled() and getattr(t._callback, "__name__", "") == "mark"
        ]

    first = loop.call_later(0.01, mark)
    second = loop.call_at(loop.time() + 30, mark)
    assert names() == ["mark", "mark"]
    second.cancel()
    assert names() == ["mark"]
    await asyncio.sleep(0.05)
    assert first.cancelled() is False
    assert names() == []
