"""Fixtures shared by every test module, and the event loop the tests run on.

``WOVE_H2GRPC_TEST_LOOP=uvloop`` runs every test of this process on uvloop: its event loop
policy is installed before any test starts, so pytest-asyncio's loops and a sync test's own
``asyncio.run()`` are uvloop loops alike (helper processes keep asyncio's loop). Unset or
``asyncio``: asyncio's own loop. uvloop missing while asked for is a usage error, never a
silent fallback to asyncio.

The uvloop loop used here lists its live timers in ``_scheduled`` as asyncio's does (uvloop
keeps them in libuv, out of sight), so that the tests checking that no timer of ours is left
behind check it on uvloop too.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List

import pytest
from _support import Certs, make_certs

#: Which event loop the tests run on: "asyncio" (the default) or "uvloop".
TEST_LOOP = os.environ.get("WOVE_H2GRPC_TEST_LOOP", "").strip().lower() or "asyncio"


class _ListedTimer:
    """What ``_scheduled`` shows of one uvloop timer: ``cancelled()`` and ``_callback``."""

    __slots__ = ("_callback", "handle")

    def __init__(self, callback: Any) -> None:
        self._callback = callback
        self.handle: Any = None

    def cancelled(self) -> bool:
        return bool(self.handle.cancelled())


def _timer_listing_policy() -> asyncio.AbstractEventLoopPolicy:
    """uvloop's policy, making loops that list their live timers (see the module's doc)."""
    import uvloop

    class TimerListingLoop(uvloop.Loop):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._listed: Dict[int, _ListedTimer] = {}

        @property
        def _scheduled(self) -> List[_ListedTimer]:
            for key in [k for k, t in self._listed.items() if t.cancelled()]:
                del self._listed[key]
            return list(self._listed.values())

        def call_later(self, delay: float, callback: Any, *args: Any, context: Any = None) -> Any:
            # uvloop's call_at calls call_later: every timer comes through here.
            entry = _ListedTimer(callback)
            listed = self._listed

            def run(*run_args: Any) -> None:
                listed.pop(id(entry), None)
                callback(*run_args)

            entry.handle = super().call_later(delay, run, *args, context=context)
            listed[id(entry)] = entry
            if len(listed) > 10_000:
                self._scheduled  # noqa: B018  (drops the cancelled ones)
            return entry.handle

    class Policy(uvloop.EventLoopPolicy):  # type: ignore[misc,name-defined]
        def _loop_factory(self) -> Any:
            return TimerListingLoop()

    return Policy()


def pytest_configure(config: pytest.Config) -> None:
    if TEST_LOOP == "asyncio":
        return
    if TEST_LOOP != "uvloop":
        raise pytest.UsageError(
            f"WOVE_H2GRPC_TEST_LOOP={TEST_LOOP!r}: expected 'asyncio' or 'uvloop'"
        )
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:
        raise pytest.UsageError(
            f"WOVE_H2GRPC_TEST_LOOP=uvloop, but uvloop does not import ({exc}); pip install uvloop"
        ) from None
    with warnings.catch_warnings():
        # Event loop policies are deprecated from Python 3.14 on; still the one switch that
        # reaches pytest-asyncio's runners and the tests' own asyncio.run() together.
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(_timer_listing_policy())


def pytest_report_header(config: pytest.Config) -> List[str]:
    if TEST_LOOP != "uvloop":
        return ["event loop: asyncio"]
    import uvloop

    return [f"event loop: uvloop {uvloop.__version__} (WOVE_H2GRPC_TEST_LOOP=uvloop)"]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """One trustme CA with server (localhost, 127.0.0.1, ::1, server.test) and client certs."""
    directory: Path = tmp_path_factory.mktemp("certs")
    return make_certs(directory)
