"""H2GrpcExecutor at the EnvironmentExecutor level: config, delivery, cancellation, cleanup.

The peer is a real grpcio Wove worker in a separate process (tests/wove_grpcio_worker.py).
Task functions come from tests/wove_tasks.py so that they travel by reference (valid when
this process and the worker run different interpreters, e.g. PyPy and CPython).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.abc
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set

import pytest
import wove.environment
import wove_tasks
from _wove_support import SECRET, SECRET_ENV, Worker, closed_port, start_worker
from wove.environment import EnvironmentExecutor, GrpcEnvironmentExecutor, LocalEnvironmentExecutor
from wove.security import NetworkExecutorSecurity

import wove_h2grpc
from wove_h2grpc import GrpcError, H2GrpcExecutor, StatusCode
from wove_h2grpc import worker as worker_api
from wove_h2grpc.wove.codec import DEFAULT_METHOD, encode_command
from wove_h2grpc.wove.executor import CONFIG_KEYS, ConfigKeyWarning, _is_retryable
from wove_h2grpc.wove.install import install, installed, uninstall

TERMINAL = {"task_result", "task_error", "task_cancelled"}


# ---------------------------------------------------------------- helpers


def run_task(run_id: str, func: Any = wove_tasks.double, **args: Any) -> Dict[str, Any]:
    return {
        "type": "run_task",
        "run_id": run_id,
        "task_id": run_id.split(":")[0],
        "callable": func,
        "args": args or {"x": 21},
        "delivery": {"delivery_cancel_mode": "best_effort", "delivery_orphan_policy": "cancel"},
    }


def cancel_task(run_id: str) -> Dict[str, Any]:
    return {
        "type": "cancel_task",
        "run_id": run_id,
        "task_id": run_id.split(":")[0],
        "delivery_cancel_mode": "best_effort",
        "delivery_orphan_policy": "cancel",
    }


async def start(executor: EnvironmentExecutor, **config: Any) -> EnvironmentExecutor:
    await executor.start(environment_name="test", environment_config=config, run_config={})
    return executor


async def events_until_terminal(
    executor: EnvironmentExecutor, run_ids: List[str], timeout: float = 20.0
) -> Dict[str, List[Dict[str, Any]]]:
    """Collect events per run until every run has a terminal event (bounded)."""
    seen: Dict[str, List[Dict[str, Any]]] = {run_id: [] for run_id in run_ids}
    deadline = time.monotonic() + timeout
    while any(not any(e["type"] in TERMINAL for e in evs) for evs in seen.values()):
        remaining = deadline - time.monotonic()
        event = await asyncio.wait_for(executor.recv(), max(remaining, 0.01))
        seen.setdefault(event["run_id"], []).append(event)
    return seen


async def no_more_events(executor: EnvironmentExecutor, wait: float = 0.3) -> None:
    with pytest.raises(asyncio.TimeoutError):
        extra = await asyncio.wait_for(executor.recv(), wait)
        raise AssertionError(f"unexpected extra event {extra}")


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = start_worker(tmp_path_factory.mktemp("worker"))
    yield w
    w.stop()


@pytest.fixture
def target(worker: Worker) -> str:
    return f"127.0.0.1:{worker.port}"


# ---------------------------------------------------------------- configuration


async def test_config_errors_match_woves_messages() -> None:
    executor = H2GrpcExecutor()
    with pytest.raises(
        TypeError, match=r"^executor_config.target must be a non-empty gRPC target\.$"
    ):
        await start(executor)
    with pytest.raises(TypeError, match=r"executor_config\.target must be a non-empty"):
        await start(executor, target="")
    with pytest.raises(
        TypeError, match=r"^executor_config.method must be a fully-qualified gRPC method path\.$"
    ):
        await start(executor, target="127.0.0.1:1", method="wove.Service/Send")
    with pytest.raises(TypeError, match=r"executor_config\.metadata must be a dictionary"):
        await start(executor, target="127.0.0.1:1", metadata="x-a=b")
    with pytest.raises(ValueError, match="security string must be 'none' or 'env:VARIABLE'"):
        await start(executor, target="127.0.0.1:1", security="secret")
    assert executor.transport is None  # nothing was started


# Wove's own wording (wove.security), written out: our executor must refuse what Wove's
# refuses, with the same message.
_INSECURE_TRANSPORT = (
    "grpc executor uses an insecure network transport. "
    "Use TLS or set executor_config.insecure=True for development."
)
_NO_SECURITY = (
    "grpc executor requires executor_config.security for non-local endpoints. "
    "Use security='env:VARIABLE' or set executor_config.insecure=True for development."
)


def test_default_method_is_woves_and_shared_by_both_sides() -> None:
    # Wove's grpc executor calls this path when executor_config has no "method".
    assert DEFAULT_METHOD == wove.environment._GRPC_DEFAULT_METHOD
    assert worker_api.DEFAULT_METHOD is DEFAULT_METHOD
    assert worker_api.WorkerService(allow_unsigned=True).method == DEFAULT_METHOD


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"target": "workers.example:9000"}, _INSECURE_TRANSPORT),
        ({"target": "workers.example:9000", "secure": True}, _NO_SECURITY),
        ({"target": "dns:///10.1.2.3:9000", "security": f"env:{SECRET_ENV}"}, _INSECURE_TRANSPORT),
    ],
)
async def test_non_local_needs_tls_and_security_as_in_wove(
    config: Dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with pytest.raises(ValueError) as info:
        await start(H2GrpcExecutor(), **config)
    assert str(info.value) == message
    # insecure=True lets it through (the channel connects lazily, nothing is sent)
    executor = await start(H2GrpcExecutor(), insecure=True, **config)
    assert executor.transport == "h2"
    await executor.stop()


@pytest.mark.parametrize(
    ("local", "remote"),
    [
        ("localhost:1", "workers.example:1"),
        ("127.0.0.1:1", "10.0.0.1:1"),
        ("[::1]:1", "[2001:db8::1]:1"),
        ("ipv4:127.0.0.1:1", "ipv4:10.0.0.1:1"),
        ("unix:/tmp/x", "dns:///workers.example:1"),
    ],
)
async def test_local_targets_need_neither_tls_nor_security(local: str, remote: str) -> None:
    # The same configuration is refused for a remote target: locality alone decides.
    with pytest.raises(ValueError) as info:
        await start(H2GrpcExecutor(), target=remote)
    assert str(info.value) == _INSECURE_TRANSPORT
    executor = await start(H2GrpcExecutor(), target=local)
    assert executor.transport == "h2"
    await executor.stop()
    assert executor.transport is None


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("http://workers.example:1", "unsupported target scheme 'http'"),
        ("workers.example:notaport", "invalid port 'notaport'"),
        ("dns://workers.example", "must be dns:///host:port"),
    ],
)
async def test_malformed_target_is_reported_before_the_security_rule(
    target: str, message: str
) -> None:
    # Non-local, no TLS, no security: the security rule would refuse it, but the target is
    # wrong first, and that is what the user must fix.
    with pytest.raises(ValueError, match=r"^executor_config: .*" + re.escape(message)):
        await start(H2GrpcExecutor(), target=target)


async def test_channel_option_errors_are_woves_sentences() -> None:
    with pytest.raises(ValueError) as info:
        await start(H2GrpcExecutor(), target="127.0.0.1:1", private_key=b"k", secure=True)
    assert str(info.value) == (
        "executor_config.private_key and executor_config.certificate_chain must be given "
        "together (mutual TLS)."
    )
    with pytest.raises(ValueError) as info:
        await start(H2GrpcExecutor(), target="127.0.0.1:1", connect_timeout=-1)
    assert str(info.value) == (
        "executor_config.connect_timeout must be a positive number of seconds, not -1."
    )
    with pytest.raises(ValueError) as info:
        await start(H2GrpcExecutor(), target="127.0.0.1:1", root_certificates=b"x")
    assert str(info.value) == (
        "executor_config.root_certificates needs executor_config.secure=True."
    )


async def test_connect_timeout_none_means_the_default() -> None:
    executor = await start(H2GrpcExecutor(), target="127.0.0.1:1", connect_timeout=None)
    try:
        assert executor._channel is not None  # type: ignore[attr-defined]
        assert executor._channel._opts.connect_timeout == 20.0  # type: ignore[attr-defined]
    finally:
        await executor.stop()


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"codec": "xml"}, ValueError, "executor_config.codec must be 'json' or 'msgpack'"),
        ({"lb_policy": "random"}, ValueError, "executor_config.lb_policy must be"),
        ({"compression": "br"}, ValueError, "executor_config.compression must be 'gzip'"),
        ({"connect_timeout": -1}, ValueError, "executor_config.connect_timeout must be a positive"),
        ({"keepalive_time": 0}, ValueError, "executor_config.keepalive_time must be a positive"),
        ({"max_receive_message_length": 0}, ValueError, "max_receive_message_length must be"),
        ({"transparent_retry": "yes"}, TypeError, "transparent_retry must be True or False"),
        ({"wait_for_ready": 1}, TypeError, "executor_config.wait_for_ready must be True or False"),
        ({"server_hostname": 5}, TypeError, "executor_config.server_hostname must be"),
        ({"private_key": b"k", "secure": True}, ValueError, "must be given together"),
        (
            {"private_key": b"k", "certificate_chain": b"c"},
            ValueError,
            "needs executor_config.secure",
        ),
        ({"root_certificates": 5, "secure": True}, TypeError, "root_certificates must be PEM"),
        ({"metadata": {"Bad Key": "v"}}, ValueError, "executor_config.metadata: metadata key"),
        ({"target": "127.0.0.1:notaport"}, ValueError, "executor_config: "),
        ({"root_certificates": "caf\u00e9", "secure": True}, ValueError, "must be ASCII PEM"),
        ({"root_certificates": "not pem", "secure": True}, ValueError, "is not valid PEM"),
        ({"authority": ""}, ValueError, r"^executor_config\.authority must be a non-empty"),
        (
            {"max_receive_message_length": 1.5},
            TypeError,
            r"^executor_config\.max_receive_message_length must be a positive number of bytes "
            r"or -1 \(unlimited\), not 1\.5\.$",
        ),
    ],
)
async def test_h2_key_validation(config: Dict[str, Any], error: type, match: str) -> None:
    full = {"target": "127.0.0.1:1", **config}
    with pytest.raises(error, match=match):
        await start(H2GrpcExecutor(), **full)


async def test_every_h2_key_is_accepted(certs: Any) -> None:
    executor = await start(
        H2GrpcExecutor(),
        target="127.0.0.1:1",
        transport="h2",
        method="/svc.Worker/Run",
        secure=True,
        root_certificates=certs.ca_pem.decode(),
        private_key=certs.client_key_pem,
        certificate_chain=certs.client_cert_pem,
        server_hostname="localhost",
        authority="workers.internal:443",
        security="none",
        metadata=[("x-a", "1")],
        timeout=3,
        insecure=False,
        connect_timeout=2.5,
        keepalive_time=30,
        max_receive_message_length=-1,
        compression="gzip",
        lb_policy="round_robin",
        transparent_retry=False,
        codec="msgpack",
    )
    assert executor.transport == "h2"  # type: ignore[attr-defined]
    await executor.stop()


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("targte", "target"), ("codex", "codec"), ("root_certificate", "root_certificates"),
     ("timout", "timeout"), ("lb_polcy", "lb_policy")],
)  # fmt: skip
async def test_misspelt_key_warns_with_closest_valid_key(key: str, suggestion: str) -> None:
    with pytest.warns(ConfigKeyWarning, match=f"'{key}'.*did you mean '{suggestion}'"):
        executor = await start(H2GrpcExecutor(), target="127.0.0.1:1", **{key: 1})
    await executor.stop()


async def test_unrelated_key_warns_with_the_valid_keys() -> None:
    with pytest.warns(ConfigKeyWarning, match="valid keys: target, method"):
        executor = await start(H2GrpcExecutor(), target="127.0.0.1:1", zzzz=1)
    await executor.stop()
    assert set(CONFIG_KEYS) >= {"target", "codec", "lb_policy", "transport"}


async def test_unknown_transport_raises_from_start() -> None:
    with pytest.raises(ValueError, match=r"executor_config\.transport must be one of"):
        await start(H2GrpcExecutor(), target="127.0.0.1:1", transport="quic")
    with pytest.raises(ValueError, match="transport must be one of"):
        H2GrpcExecutor(transport="h3")


async def test_send_before_start_and_unknown_frames() -> None:
    executor = H2GrpcExecutor()
    with pytest.raises(RuntimeError, match="not started"):
        await executor.send(run_task("a:1"))
    with pytest.raises(RuntimeError, match="not started"):
        await executor.recv()
    await start(executor, target="127.0.0.1:1")
    with pytest.raises(ValueError, match="Unsupported frame type: bogus"):
        await executor.send({"type": "bogus"})
    with pytest.raises(RuntimeError, match="already started"):
        await start(executor, target="127.0.0.1:1")
    await executor.stop()
    await executor.stop()  # idempotent


# ---------------------------------------------------------------- install / transport choice


def test_install_uninstall_idempotent_and_exact() -> None:
    original = wove.environment.build_executor_from_name
    assert not installed()
    try:
        install()
        install()
        assert installed()
        built = wove.environment.coerce_executor("grpc")
        assert isinstance(built, H2GrpcExecutor)
        assert built._default_transport == "auto"
        assert isinstance(wove.environment.coerce_executor("local"), LocalEnvironmentExecutor)
        with pytest.raises(ValueError, match="Unknown executor 'nope'"):
            wove.environment.coerce_executor("nope")
        assert wove_h2grpc.install is install
    finally:
        uninstall()
        uninstall()
    assert wove.environment.build_executor_from_name is original
    assert isinstance(wove.environment.coerce_executor("grpc"), GrpcEnvironmentExecutor)
    assert not installed()


class BlockGrpc(importlib.abc.MetaPathFinder):
    """``import grpc`` fails as if grpcio were not installed."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "grpc" or fullname.startswith("grpc."):
            raise ImportError(f"No module named {fullname!r} (blocked by the test)")
        return None


async def test_auto_picks_h2_when_grpcio_cannot_be_imported(target: str) -> None:
    assert "grpc" not in sys.modules
    blocker = BlockGrpc()
    sys.meta_path.insert(0, blocker)
    try:
        install()
        executor = wove.environment.coerce_executor("grpc")
        await start(executor, target=target)  # no "transport" key: auto
        assert executor.transport == "h2"  # type: ignore[attr-defined]
        await executor.send(run_task("auto:1"))
        seen = await events_until_terminal(executor, ["auto:1"])
        assert seen["auto:1"][-1]["result"] == 42
        await executor.stop()
        explicit = await start(H2GrpcExecutor(), target=target, transport="auto")
        assert explicit.transport == "h2"  # type: ignore[attr-defined]
        await explicit.stop()
    finally:
        uninstall()
        sys.meta_path.remove(blocker)
    assert "grpc" not in sys.modules


# ---------------------------------------------------------------- delivery


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_run_tasks_sync_and_async(target: str, codec: str) -> None:
    executor = await start(H2GrpcExecutor(), target=target, codec=codec, timeout=20)
    try:
        for i in range(50):
            await executor.send(run_task(f"double:{i}", x=i))
            await executor.send(run_task(f"slow:{i}", wove_tasks.async_slow, seconds=0.01))
        run_ids = [f"double:{i}" for i in range(50)] + [f"slow:{i}" for i in range(50)]
        seen = await events_until_terminal(executor, run_ids)
        for i in range(50):
            assert [e["type"] for e in seen[f"double:{i}"]] == ["task_started", "task_result"]
            assert seen[f"double:{i}"][-1]["result"] == 2 * i
            assert seen[f"slow:{i}"][-1]["result"] == "slept"
        await no_more_events(executor)
    finally:
        await executor.stop()


async def test_task_exception_arrives_as_task_error(target: str) -> None:
    executor = await start(H2GrpcExecutor(), target=target)
    try:
        await executor.send(run_task("raises:1", wove_tasks.raise_key_error, x=3))
        event = (await events_until_terminal(executor, ["raises:1"]))["raises:1"][-1]
        assert event["type"] == "task_error"
        assert isinstance(event["exception"], KeyError)
        assert event["error"]["source"] == "task"
        assert "missing 3" in event["error"]["message"]
    finally:
        await executor.stop()


_OK = "result"
_SHAPES = [
    ("list", _OK),
    ("single", _OK),
    ("twice", _OK),  # a second terminal event is dropped: exactly one per run
    ("noterminal", "answered run_task without a terminal event"),
]
_BAD_BODIES = [
    ("empty", "gRPC worker service returned an empty response."),
    ("garbage", "returned a malformed response (15 bytes): not a Wove frame: first byte 0xff"),
    ("text", "returned a malformed response (21 bytes): not a Wove frame: first byte 0x49"),
    ("notdict", "Network executor events must be dictionaries."),
]


@pytest.mark.parametrize(
    ("respond", "expect", "codec"),
    [(r, e, c) for r, e in _SHAPES for c in ("json", "msgpack")]
    + [(r, e, "json") for r, e in _BAD_BODIES],
)
async def test_response_shapes_and_bad_responses(
    target: str, respond: str, expect: str, codec: str
) -> None:
    executor = await start(
        H2GrpcExecutor(), target=target, codec=codec, metadata={"x-test-respond": respond}
    )
    try:
        await executor.send(run_task("shape:1"))
        events = (await events_until_terminal(executor, ["shape:1"]))["shape:1"]
        terminal = [e for e in events if e["type"] in TERMINAL]
        assert len(terminal) == 1
        if expect == _OK:
            assert terminal[0]["type"] == "task_result"
            assert terminal[0]["result"] == 42
        else:
            assert terminal[0]["type"] == "task_error"
            error = terminal[0]["error"]
            assert error["source"] == "transport"
            assert error["retryable"] is False
            assert expect in error["message"]
        await no_more_events(executor)
    finally:
        await executor.stop()


async def test_worker_down_is_a_transport_error_within_the_timeout() -> None:
    executor = await start(H2GrpcExecutor(), target=f"127.0.0.1:{closed_port()}", timeout=1.0)
    try:
        began = time.monotonic()
        await executor.send(run_task("down:1"))
        event = (await events_until_terminal(executor, ["down:1"], timeout=10))["down:1"][-1]
        assert time.monotonic() - began < 5.0
        assert event["type"] == "task_error"
        assert event["error"]["source"] == "transport"
        assert event["error"]["grpc_status"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert event["error"]["grpc_status"] in event["error"]["message"]
        assert event["error"]["kind"] == "GrpcError"
        if event["error"]["grpc_status"] == "UNAVAILABLE":
            assert event["error"]["retryable"] is True  # nothing was ever sent
    finally:
        await executor.stop()


async def test_call_timeout_is_deadline_exceeded_not_retryable(target: str) -> None:
    executor = await start(H2GrpcExecutor(), target=target, timeout=0.3)
    try:
        began = time.monotonic()
        await executor.send(run_task("late:1", wove_tasks.async_slow, seconds=5))
        event = (await events_until_terminal(executor, ["late:1"]))["late:1"][-1]
        assert time.monotonic() - began < 3.0
        assert event["type"] == "task_error"
        assert event["error"]["message"].endswith(
            f"failed: DEADLINE_EXCEEDED: {event['error']['grpc_details']}"
        )
        assert event["error"]["retryable"] is False
        await no_more_events(executor)
    finally:
        await executor.stop()


def test_retryable_only_where_the_call_provably_did_not_run() -> None:
    for code in StatusCode:
        assert _is_retryable(GrpcError(code, "x", request_sent=False)), code
        assert not _is_retryable(GrpcError(code, "x", request_sent=True)), code
        assert not _is_retryable(GrpcError(code, "x")), code  # unknown: it may have run
    # The text of an error decides nothing: only request_sent does.
    assert not _is_retryable(GrpcError(StatusCode.UNAVAILABLE, "no connection to h:1; last ..."))
    too_big = GrpcError(StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (5 vs. 4)")
    assert not _is_retryable(too_big)
    assert not _is_retryable(RuntimeError("not a gRPC error"))


def test_enhance_your_calm_is_retryable_only_when_the_request_was_not_sent() -> None:
    # A server that ran stream 1 and then sent GOAWAY ENHANCE_YOUR_CALM (last stream id 1):
    # the call may have run, so it must not be sent again.
    details = "connection closed by the server (GOAWAY ENHANCE_YOUR_CALM, last stream 1)"
    ran = GrpcError(StatusCode.RESOURCE_EXHAUSTED, details, request_sent=None, h2_error_code=0xB)
    assert not _is_retryable(ran)
    refused = GrpcError(
        StatusCode.RESOURCE_EXHAUSTED, details, request_sent=False, h2_error_code=0xB
    )
    assert _is_retryable(refused)


async def test_no_connection_error_is_marked_never_sent_and_retryable() -> None:
    # The channel's own "waited for a connection, got none" error carries request_sent=False.
    executor = await start(
        H2GrpcExecutor(), target=f"127.0.0.1:{closed_port()}", timeout=5.0, connect_timeout=0.3
    )
    try:
        await executor.send(run_task("never:1"))
        event = (await events_until_terminal(executor, ["never:1"], timeout=10))["never:1"][-1]
        assert event["type"] == "task_error"
        assert event["error"]["grpc_status"] == "UNAVAILABLE"
        assert "no connection to" in event["error"]["grpc_details"]
        assert event["error"]["retryable"] is True
    finally:
        await executor.stop()


async def test_unpicklable_task_is_a_transport_error(target: str) -> None:
    executor = await start(H2GrpcExecutor(), target=target)
    try:
        await executor.send(run_task("bad:1", wove_tasks.double, x=Unpicklable()))
        event = (await events_until_terminal(executor, ["bad:1"]))["bad:1"][-1]
        assert event["type"] == "task_error"
        assert event["error"]["source"] == "transport"
        assert event["error"]["message"] == (
            "could not serialize the run_task frame: TypeError: Unpicklable refuses to be pickled"
        )
    finally:
        await executor.stop()


class Unpicklable:
    """An argument no pickler can serialize (on CPython and PyPy alike)."""

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable refuses to be pickled")


# ---------------------------------------------------------------- cancellation and cleanup


async def test_cancel_task_is_its_own_call(tmp_path: Path) -> None:
    w = start_worker(tmp_path)
    executor = await start(H2GrpcExecutor(), target=f"127.0.0.1:{w.port}")
    try:
        await executor.send(run_task("c:1", wove_tasks.async_slow, seconds=30))
        assert await w.wait_line("run c:1")
        await executor.send(cancel_task("c:1"))
        events = (await events_until_terminal(executor, ["c:1"], timeout=10))["c:1"]
        assert [e["type"] for e in events] == ["task_started", "task_cancelled"]
        assert await w.wait_line("cancel c:1")
        assert await w.wait_line("cancelled c:1")
        await no_more_events(executor)
    finally:
        await executor.stop()
        w.stop()


async def test_shutdown_cancels_in_flight_calls(tmp_path: Path) -> None:
    w = start_worker(tmp_path)
    executor = await start(H2GrpcExecutor(), target=f"127.0.0.1:{w.port}")
    try:
        for i in range(3):
            await executor.send(run_task(f"s:{i}", wove_tasks.async_slow, seconds=30))
        for i in range(3):
            assert await w.wait_line(f"run s:{i}")
        began = time.monotonic()
        await executor.send({"type": "shutdown"})
        seen = await events_until_terminal(executor, [f"s:{i}" for i in range(3)], timeout=5)
        assert time.monotonic() - began < 2.0
        for i in range(3):
            assert seen[f"s:{i}"][-1]["type"] == "task_cancelled"
            # the stream reset reached the worker, which cancelled the running task
            assert await w.wait_line(f"cancelled s:{i}")
        assert not await w.wait_line("cancel ", timeout=0.1)  # no cancel_task call was made
    finally:
        await executor.stop()
        w.stop()


def _open_sockets() -> Set[str]:
    """Sockets this process holds (fd -> ``socket:[inode]``); pipes and files are not ours."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:"):
            found.add(f"{fd}:{link}")
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_stop_leaves_no_task_socket_or_warning(tmp_path: Path) -> None:
    w = start_worker(tmp_path)
    try:
        # Earlier tests' garbage must be finalized before the block below: PyPy runs
        # finalizers of objects that an object with a finalizer kept alive (a transport held
        # by its protocol) only at a later collection, so one collect is not enough there.
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
        sockets_before = _open_sockets()
        tasks_before = asyncio.all_tasks()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            executor = H2GrpcExecutor()
            for _round in range(3):  # Wove reuses one instance for every weave
                await start(executor, target=f"127.0.0.1:{w.port}", timeout=10)
                await executor.send(run_task("r:1"))
                await executor.send(run_task("r:2", wove_tasks.async_slow, seconds=30))
                seen = await events_until_terminal(executor, ["r:1"])
                assert seen["r:1"][-1]["result"] == 42
                await executor.stop()
                assert executor.transport is None
            await asyncio.sleep(0.05)
            gc.collect()
        # tests/_support.py leaves helper processes' stdout pipes to the garbage collector;
        # on PyPy an earlier test's pipe may be finalized inside this block. Anything else
        # (a socket, a transport, a task, a coroutine) would be ours.
        ours = [
            str(c.message)
            for c in caught
            if not str(c.message).startswith("unclosed file <_io.TextIOWrapper")
        ]
        assert ours == []
        assert asyncio.all_tasks() == tasks_before
        assert _open_sockets() == sockets_before
    finally:
        w.stop()


async def test_security_metadata_is_woves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    w = start_worker(tmp_path, "--respond", "echo", secret=SECRET)
    executor = await start(
        H2GrpcExecutor(),
        target=f"127.0.0.1:{w.port}",
        security=f"env:{SECRET_ENV}",
        metadata={"x-project": "reports"},
    )
    try:
        frame = run_task("echo:1")
        await executor.send(frame)
        echo = (await events_until_terminal(executor, ["echo:1"]))["echo:1"][-1]["result"]
        ours = [(k, v) for k, v in echo["metadata"] if k.startswith("x-")]
        body = echo["body"]
        assert body == encode_command(frame)  # the exact bytes that were signed
        security = NetworkExecutorSecurity.from_config(f"env:{SECRET_ENV}")
        woves = security.metadata_for(
            transport="grpc", target="/wove.network_executor.WorkerService/Send", body=body
        )
        assert [k for k, _ in ours] == ["x-project", *[k for k, _ in woves]]
        assert ours[0] == ("x-project", "reports")
        values = dict(ours)
        assert values["x-wove-key"] == "default"
        assert abs(int(values["x-wove-timestamp"]) - time.time()) < 60
        assert (
            values["x-wove-signature"].startswith("v1=") and len(values["x-wove-signature"]) == 67
        )
        # verifies exactly as a Wove worker verifies it
        NetworkExecutorSecurity.from_config(f"env:{SECRET_ENV}").verify_metadata(
            metadata=ours,
            transport="grpc",
            target="/wove.network_executor.WorkerService/Send",
            body=body,
        )
    finally:
        await executor.stop()
        w.stop()


async def test_wrong_secret_is_unauthenticated_and_nothing_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    w = start_worker(tmp_path, secret=SECRET)
    executor = await start(
        H2GrpcExecutor(), target=f"127.0.0.1:{w.port}", security=f"env:{SECRET_ENV}"
    )
    try:
        await executor.send(run_task("auth:1"))
        event = (await events_until_terminal(executor, ["auth:1"]))["auth:1"][-1]
        assert event["type"] == "task_error"
        assert event["error"]["grpc_status"] == "UNAUTHENTICATED"
        assert "Invalid Wove network executor signature" in event["error"]["message"]
        assert event["error"]["retryable"] is False
        assert w.ran() == []
    finally:
        await executor.stop()
        w.stop()


async def test_custom_method_path(tmp_path: Path) -> None:
    w = start_worker(tmp_path, "--method", "/acme.Jobs/Run")
    try:
        good = await start(H2GrpcExecutor(), target=f"127.0.0.1:{w.port}", method="/acme.Jobs/Run")
        await good.send(run_task("m:1"))
        assert (await events_until_terminal(good, ["m:1"]))["m:1"][-1]["result"] == 42
        await good.stop()
        wrong = await start(H2GrpcExecutor(), target=f"127.0.0.1:{w.port}")
        await wrong.send(run_task("m:2"))
        event = (await events_until_terminal(wrong, ["m:2"]))["m:2"][-1]
        assert event["error"]["grpc_status"] == "UNIMPLEMENTED"
        await wrong.stop()
    finally:
        w.stop()


async def test_mutual_tls(tmp_path: Path, certs: Any) -> None:
    w = start_worker(tmp_path, certs=certs, client_ca=True)
    base: Dict[str, Any] = {
        "target": f"localhost:{w.port}",
        "secure": True,
        "root_certificates": certs.ca_pem,
    }
    try:
        ok = await start(
            H2GrpcExecutor(),
            private_key=certs.client_key_pem,
            certificate_chain=certs.client_cert_pem,
            **base,
        )
        await ok.send(run_task("tls:1"))
        assert (await events_until_terminal(ok, ["tls:1"]))["tls:1"][-1]["result"] == 42
        await ok.stop()
        anonymous = await start(H2GrpcExecutor(), timeout=1.5, **base)
        await anonymous.send(run_task("tls:2"))
        event = (await events_until_terminal(anonymous, ["tls:2"]))["tls:2"][-1]
        assert event["type"] == "task_error"
        assert event["error"]["source"] == "transport"
        await anonymous.stop()
        assert "run tls:2" not in w.lines()
    finally:
        w.stop()


async def test_server_hostname_override(tmp_path: Path, certs: Any) -> None:
    w = start_worker(tmp_path, certs=certs)
    try:
        executor = await start(
            H2GrpcExecutor(),
            target=f"127.0.0.1:{w.port}",
            secure=True,
            root_certificates=certs.ca_pem,
            server_hostname="server.test",
        )
        await executor.send(run_task("sni:1"))
        assert (await events_until_terminal(executor, ["sni:1"]))["sni:1"][-1]["result"] == 42
        await executor.stop()
        wrong_ca = await start(
            H2GrpcExecutor(),
            target=f"127.0.0.1:{w.port}",
            secure=True,
            root_certificates=certs.other_ca_pem,
            timeout=1.5,
        )
        await wrong_ca.send(run_task("sni:2"))
        event = (await events_until_terminal(wrong_ca, ["sni:2"]))["sni:2"][-1]
        assert event["error"]["grpc_status"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        await wrong_ca.stop()
    finally:
        w.stop()


def test_wait_for_ready_defaults_to_true_and_can_be_turned_off() -> None:
    """The h2 transport waits for a restarting worker (only in-flight calls are lost)."""
    from wove_h2grpc.wove.config import parse_settings

    assert parse_settings({"target": "127.0.0.1:1"}).channel_options.wait_for_ready is True
    off = parse_settings({"target": "127.0.0.1:1", "wait_for_ready": False})
    assert off.channel_options.wait_for_ready is False
