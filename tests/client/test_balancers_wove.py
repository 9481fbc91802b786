"""Wove tasks through HAProxy while a worker dies: one terminal event each, nothing run twice.

Two replicas (``tests/h2_replica.py --wove``: our Server with the WorkerService) behind
Debian's HAProxy (TLS in front, h2 to the replicas, ``tests/balancers/haproxy.cfg``). 200
Wove runs of 0.3 s, 40 in flight, go through ``H2GrpcExecutor``; one replica is SIGKILLed
after it started 10. HAProxy answers REFUSED_STREAM for the runs the dead replica had
started, the client re-sends them (same ``run_id``), and the live replica runs them.
With ``delivery="stream"`` the dead replica's streams had already carried ``task_started``,
so HAProxy cannot refuse them: they end in one transport error each and are not sent again.
A second case sends the same command twice through HAProxy to one replica: it runs once.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import pytest
import wove_tasks
from _scaleout_support import RUN_BOUND, Replicas, wait_for
from _support import Certs, HelperProcess
from test_balancers import start_haproxy

from wove_h2grpc import Channel, H2GrpcExecutor
from wove_h2grpc.wove.codec import DEFAULT_STREAM_METHOD, decode_events, encode_command

SEND = "/wove.network_executor.WorkerService/Send"
TERMINAL = ("task_result", "task_error", "task_cancelled")
RUNS, IN_FLIGHT = 200, 40


def _frame(item: int) -> Dict[str, Any]:
    return {
        "type": "run_task",
        "run_id": f"run-{item}",
        "task_id": "announced_nap",
        "callable": wove_tasks.announced_nap,
        "args": {"item": item},
        "delivery": {},
    }


def _lines(worker: HelperProcess, word: str) -> List[str]:
    return [line.split()[1] for line in list(worker.lines) if line.startswith(word + " ")]


def _done(worker: HelperProcess) -> List[str]:
    """run_ids the replica finished with a result (its ``DONE <run_id> result`` lines)."""
    return [
        line.split()[1]
        for line in list(worker.lines)
        if line.startswith("DONE ") and line.endswith(" result")
    ]


async def _send_all(executor: H2GrpcExecutor) -> Dict[str, List[Dict[str, Any]]]:
    """Every run through the executor, IN_FLIGHT at a time; every event by run_id (all
    that arrive until the last terminal event and a moment after it)."""
    events: Dict[str, List[Dict[str, Any]]] = collections.defaultdict(list)
    finished: Set[str] = set()
    sent = 0
    while sent < min(IN_FLIGHT, RUNS):
        await executor.send(_frame(sent))
        sent += 1
    deadline = time.monotonic() + RUN_BOUND
    while len(finished) < RUNS:
        event = await asyncio.wait_for(executor.recv(), max(0.1, deadline - time.monotonic()))
        events[event["run_id"]].append(event)
        if event["type"] in TERMINAL and event["run_id"] not in finished:
            finished.add(event["run_id"])
            if sent < RUNS:
                await executor.send(_frame(sent))
                sent += 1
    try:
        while True:  # a second terminal event would arrive here
            event = await asyncio.wait_for(executor.recv(), 0.5)
            events[event["run_id"]].append(event)
    except asyncio.TimeoutError:
        pass
    return events


@pytest.mark.balancers
@pytest.mark.parametrize("delivery", ["unary", "stream"])
async def test_runs_through_haproxy_while_a_worker_dies(
    tmp_path: Path, certs: Certs, delivery: str
) -> None:
    pool = Replicas()
    try:
        w1, w2 = pool.start_many([("w1", "127.0.0.1:0", "--wove"), ("w2", "127.0.0.1:0", "--wove")])
        balancer = start_haproxy(tmp_path, certs, w1.port, w2.port)
        executor = H2GrpcExecutor()
        try:
            await executor.start(
                environment_name="haproxy",
                environment_config={
                    "target": f"localhost:{balancer.port}",
                    "secure": True,
                    "root_certificates": certs.ca_pem,
                    "delivery": delivery,
                    "timeout": 30.0,
                },
                run_config={},
            )
            killed: Dict[str, Any] = {}

            async def killer() -> None:
                await wait_for(lambda: len(_lines(w2, "STARTED")) >= 10, RUN_BOUND, "w2 ran 10")
                w2.proc.kill()
                killed["started"] = set(_lines(w2, "STARTED"))
                killed["done"] = set(_done(w2))

            kill = asyncio.ensure_future(killer())
            events = await _send_all(executor)
            await asyncio.wait_for(kill, RUN_BOUND)
        finally:
            await executor.stop()
            balancer.stop()
        w2.proc.wait(timeout=10)
        await asyncio.sleep(0.3)  # the output pump reads w1's last lines
        terminals = {run: [e for e in evs if e["type"] in TERMINAL] for run, evs in events.items()}
        w1_done, w2_done = _done(w1), sorted(killed["done"])
        unfinished = {f"run-{item}" for item in killed["started"]} - set(killed["done"])
        print(
            f"\nHAProxy, delivery={delivery}, w2 killed: {len(w1_done)} runs finished on w1, "
            f"{len(w2_done)} on w2 before it died, {len(unfinished)} it had started unfinished; "
            f"w1 STARTED {len(_lines(w1, 'STARTED'))}, duplicates answered by w1 "
            f"{sum(1 for line in list(w1.lines) if line.endswith(' duplicate'))}"
        )
        # Exactly one terminal event per run.
        assert len(terminals) == RUNS
        bad = {run: [e["type"] for e in t] for run, t in terminals.items() if len(t) != 1}
        assert not bad, bad
        ok = {run for run, t in terminals.items() if t[0]["type"] == "task_result"}
        assert all(terminals[run][0]["result"] == int(run[4:]) for run in ok)
        failed = {run: terminals[run][0] for run in terminals if run not in ok}
        if delivery == "unary":
            # HAProxy refused the dead replica's streams: the client re-sent them, and the
            # live replica ran them, once each.
            assert not failed, list(failed.values())[:3]
            assert unfinished and unfinished <= set(w1_done)
        else:
            # Those streams had already carried task_started: HAProxy ends them without a
            # status, and each ends in one transport error that is not marked retryable
            # (the task may have run); none is sent again.
            assert set(failed) == unfinished, (sorted(failed)[:5], sorted(unfinished)[:5])
            for event in failed.values():
                assert event["error"]["source"] == "transport"
                assert event["error"]["retryable"] is False
                assert event["error"]["grpc_status"] in ("INTERNAL", "UNAVAILABLE", "CANCELLED")
            assert not unfinished & set(w1_done)
        # Handler runs equal distinct runs: every run that succeeded finished on exactly one
        # replica, and no replica ran one twice.
        assert len(w1_done) == len(set(w1_done)), "a run finished twice on w1"
        assert not set(w1_done) & set(w2_done), "a run finished on both replicas"
        assert set(w1_done) | set(w2_done) == ok
        assert len(_lines(w1, "STARTED")) == len(w1_done)
    finally:
        pool.stop_all()


async def _unary(channel: Channel, body: bytes) -> Tuple[Dict[str, Any], ...]:
    return decode_events(await channel.unary_unary(SEND)(body, timeout=20))


async def _streamed(channel: Channel, body: bytes) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    async for message in channel.unary_stream(DEFAULT_STREAM_METHOD)(body, timeout=20):
        out.extend(decode_events(message))
    return out


@pytest.mark.balancers
async def test_the_same_command_twice_through_haproxy_runs_once(
    tmp_path: Path, certs: Certs
) -> None:
    pool = Replicas()
    try:
        (w1,) = pool.start_many([("w1", "127.0.0.1:0", "--wove")])
        balancer = start_haproxy(tmp_path, certs, w1.port, w1.port)  # both backends: w1
        body = encode_command(_frame(7))
        try:
            async with Channel(
                f"localhost:{balancer.port}", secure=True, root_certificates=certs.ca_pem
            ) as channel:
                answers = await asyncio.wait_for(
                    asyncio.gather(_unary(channel, body), _streamed(channel, body)), 30
                )
                again = await asyncio.wait_for(_unary(channel, body), 30)
        finally:
            balancer.stop()
        for events in (*answers, again):
            assert [e["type"] for e in events] == ["task_started", "task_result"]
            assert events[-1]["result"] == 7
        await asyncio.sleep(0.3)
        assert _lines(w1, "STARTED") == ["7"]  # the task ran once
        assert _done(w1) == ["run-7"]
    finally:
        pool.stop_all()
