"""The attack suite, server side: each attack of ``tests/_attacks.py`` against our Server.

Every attack runs against a fresh ``attack_target.py`` process while a well-behaved client
(``attack_probe.py``, another process, its own connection) keeps calling it. Each must end
with the attacking connection closed or its streams answered with the expected code, the
server alive, the probe losing no call with p99 under 50 ms, a fresh connection served
within 100 ms, and the server's memory bounded. Each row goes to the suite's table. A run
whose probe p99 is over the bound (a scheduling hiccup on a shared two-core machine) is
repeated, after a pause, on a fresh server, up to ``RETRIES`` times; the last run must hold
every bound, and every run's row goes to the table.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable, Dict, Tuple

import pytest
from _attack_report import AttackRow, record
from _attacks import ATTACKS, Attack, Observed, Target, run_attack, start_ours
from h2.errors import ErrorCodes

from wove_h2grpc.protocol.status import StatusCode

PROBE_P99_MS = 50.0
# Runs over the probe bound repeated on a fresh server. The memory attacks make the server
# fault in ~270 MiB within a second; on a two-core VM early in a CI run (installs still
# settling) that alone has cost the probe ~65 ms twice in a row, then ~15 ms minutes later.
RETRIES = 2
SETTLE_S = 1.0
FRESH_MS = 100.0
# Resident memory the attacked server may gain at its peak, and keep afterwards, in MiB
# (the server's own working set for the attack: buffers, h2 state, the probe's calls).
PEAK_GROWTH_MIB = 64.0
KEPT_GROWTH_MIB = 32.0
# The memory attacks: the Server's default budget (256 MiB), plus what the handlers started
# in the turns before the budget sheds allocate (up to 128 calls per turn).
BUDGET_PEAK_MIB = 256.0 + 160.0

Check = Callable[[Observed], bool]


def goaway(*codes: ErrorCodes) -> Check:
    return lambda seen: any(code in codes for code in seen.goaway_codes())


def reset(code: ErrorCodes, at_least: int = 1) -> Check:
    return lambda seen: seen.resets[code] >= at_least


def status(code: StatusCode) -> Check:
    return lambda seen: (
        seen.grpc_statuses[code.value] >= 1 and not any(c != code.value for c in seen.grpc_statuses)
    )


def closed_all(seen: Observed) -> bool:
    return seen.closed == seen.connections > 0


def shed(seen: Observed) -> bool:
    """Closed for the memory budget: GOAWAY ENHANCE_YOUR_CALM, or (for a client that does
    not read, whose GOAWAY is stuck behind response bytes) every connection closed."""
    return goaway(ErrorCodes.ENHANCE_YOUR_CALM)(seen) or closed_all(seen)


CALM = ErrorCodes.ENHANCE_YOUR_CALM
# attack name -> (what our Server must answer, that answer in words, peak RSS growth bound)
EXPECTED: Dict[str, Tuple[Check, str, float]] = {
    "rapid reset (HEADERS+RST)": (goaway(CALM), "GOAWAY ENHANCE_YOUR_CALM", PEAK_GROWTH_MIB),
    "rapid reset with DATA": (goaway(CALM), "GOAWAY ENHANCE_YOUR_CALM", PEAK_GROWTH_MIB),
    "CONTINUATION flood": (
        goaway(ErrorCodes.PROTOCOL_ERROR, CALM),
        "GOAWAY PROTOCOL_ERROR or ENHANCE_YOUR_CALM",
        PEAK_GROWTH_MIB,
    ),
    "HPACK bomb": (
        goaway(ErrorCodes.COMPRESSION_ERROR, ErrorCodes.PROTOCOL_ERROR, CALM),
        "a connection error GOAWAY",
        PEAK_GROWTH_MIB,
    ),
    "SETTINGS flood": (goaway(CALM), "GOAWAY ENHANCE_YOUR_CALM", PEAK_GROWTH_MIB),
    "PING flood": (goaway(CALM), "GOAWAY ENHANCE_YOUR_CALM", PEAK_GROWTH_MIB),
    "WINDOW_UPDATE flood": (goaway(CALM), "GOAWAY ENHANCE_YOUR_CALM", PEAK_GROWTH_MIB),
    "zero-window readers (1,000 x 400 KiB)": (
        goaway(CALM),
        "GOAWAY ENHANCE_YOUR_CALM",
        BUDGET_PEAK_MIB,
    ),
    "slow reader (384 x 1 MiB)": (shed, "closed for the memory budget", BUDGET_PEAK_MIB),
    "slowloris (50 preface drips)": (closed_all, "every connection closed", PEAK_GROWTH_MIB),
    "0xFFFFFFFF length prefix": (
        status(StatusCode.RESOURCE_EXHAUSTED),
        "RESOURCE_EXHAUSTED",
        PEAK_GROWTH_MIB,
    ),
    "streams over the limit (1,100)": (
        reset(ErrorCodes.REFUSED_STREAM, 100),
        "RST_STREAM REFUSED_STREAM for the 100 beyond the limit",
        PEAK_GROWTH_MIB,
    ),
    "DATA on stream 0": (goaway(ErrorCodes.PROTOCOL_ERROR), "GOAWAY PROTOCOL_ERROR", 32.0),
    "HEADERS on an even stream": (
        goaway(ErrorCodes.PROTOCOL_ERROR),
        "GOAWAY PROTOCOL_ERROR",
        PEAK_GROWTH_MIB,
    ),
    "WINDOW_UPDATE of 0": (goaway(ErrorCodes.PROTOCOL_ERROR), "GOAWAY PROTOCOL_ERROR", 32.0),
    "window overflow": (
        goaway(ErrorCodes.FLOW_CONTROL_ERROR),
        "GOAWAY FLOW_CONTROL_ERROR",
        PEAK_GROWTH_MIB,
    ),
    "oversize frame (70,000 B)": (
        goaway(ErrorCodes.FRAME_SIZE_ERROR),
        "GOAWAY FRAME_SIZE_ERROR",
        PEAK_GROWTH_MIB,
    ),
    "content-type text/html": (
        lambda seen: seen.http_statuses[415] >= 1,
        "HTTP 415",
        PEAK_GROWTH_MIB,
    ),
    "no te: trailers": (status(StatusCode.OK), "served (OK)", PEAK_GROWTH_MIB),
    "compressed flag, no grpc-encoding": (
        status(StatusCode.INTERNAL),
        "INTERNAL",
        PEAK_GROWTH_MIB,
    ),
    "truncated message": (status(StatusCode.INTERNAL), "INTERNAL", PEAK_GROWTH_MIB),
    "partial bodies (80 x 4 MiB)": (goaway(CALM), "GOAWAY ENHANCE_YOUR_CALM", BUDGET_PEAK_MIB),
}


def test_every_attack_has_an_expectation() -> None:
    assert sorted(EXPECTED) == sorted(a.name for a in ATTACKS)


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    server = start_ours()
    yield server
    server.stop()


def _too_slow(row: AttackRow) -> bool:
    return row.probe_p99_ms is None or row.probe_p99_ms >= PROBE_P99_MS


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
async def test_attack(attack: Attack, target: Target) -> None:
    run = await run_attack(attack, target)
    retries = 0
    while _too_slow(run.row) and retries < RETRIES:
        # The probe, the attacker and the server share two CPU cores with whatever else
        # the machine runs: a p99 over the bound gets another run on a fresh server after
        # a pause; the last run must hold every bound (every row goes to the table).
        record(run.row)
        target.stop()
        retries += 1
        await asyncio.sleep(SETTLE_S)
        target = start_ours()
        try:
            run = await run_attack(attack, target)
        finally:
            target.stop()
    row = record(run.row)
    check, answer, peak_bound = EXPECTED[attack.name]
    assert run.alive, "the server process died"
    assert check(run.observed), f"expected {answer}, saw: {row.reaction}"
    assert row.probe_lost == 0, f"the probe lost calls: {run.probe_errors}"
    assert row.probe_calls >= 10, f"the probe made only {row.probe_calls} calls"
    assert row.probe_p99_ms is not None and row.probe_p99_ms < PROBE_P99_MS, row
    assert row.fresh_ms is not None and row.fresh_ms < FRESH_MS, row
    assert row.rss_growth_mib is not None and row.rss_growth_mib < peak_bound, row
    assert row.rss_after_mib is not None and row.rss_before_mib is not None
    assert row.rss_after_mib - row.rss_before_mib < KEPT_GROWTH_MIB, row
