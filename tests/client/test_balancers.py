"""Behind real balancers: Debian's nginx and HAProxy with TLS in front of two workers.

Each balancer runs as a foreground child process on 127.0.0.1 with its own prefix directory
(pytest's tmp_path) and the exact config shown in ``docs/deploy.md``
(``tests/balancers/nginx.conf`` and ``haproxy.cfg``, ``@NAME@`` placeholders filled in here).
The workers are our ``wove_h2grpc.Server`` in separate processes (``h2_replica.py``).

These tests never skip: without the binaries they fail and name the install script
(``.ci/run`` runs it before the suite). Each one that starts a balancer carries the
``balancers`` marker, so that ``python -m pytest -m "not balancers"`` runs everything else
on a machine without nginx, HAProxy or root.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest
from _scaleout_support import RUN_BOUND, Replicas, Run, wait_for
from _support import REPO_DIR, TESTS_DIR, Certs, HelperProcess

from wove_h2grpc import Channel

BALANCERS = TESTS_DIR / "balancers"
INSTALL = "bash .ci/install-balancers.sh"
START_BOUND = 15.0


def _binary(name: str) -> str:
    """Path of the balancer binary; fails (never skips) with the install command if absent."""
    found = shutil.which(name)
    if found is None:
        for directory in ("/usr/sbin", "/usr/local/sbin"):
            candidate = os.path.join(directory, name)
            if os.access(candidate, os.X_OK):
                found = candidate
                break
    if found is None:
        pytest.fail(
            f"{name} is not installed; the balancer tests need Debian's nginx and haproxy: "
            f"run `{INSTALL}` (.ci/run does this before the test suite)",
            pytrace=False,
        )
    return found


def render(template: str, **values: object) -> str:
    """The config template with every ``@NAME@`` replaced; fails on a placeholder left over."""
    text = (BALANCERS / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    left = re.findall(r"@[A-Z0-9_]+@", text)
    assert not left, f"{template}: placeholders not filled in: {left}"
    return text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Balancer:
    """A balancer child process in the foreground, its port and its prefix directory."""

    def __init__(self, name: str, cmd: List[str], port: int, prefix: Path) -> None:
        self.name = name
        self.port = port
        self.prefix = prefix
        self.output_path = prefix / f"{name}.out"
        self._out = open(self.output_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._wait_listening()

    def output(self) -> str:
        text = self.output_path.read_text()
        error_log = self.prefix / "error.log"
        if error_log.exists():
            text += "\nerror.log:\n" + error_log.read_text()
        return text[-4000:]

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_BOUND
        while True:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(
                    f"{self.name} exited with {self.proc.returncode} at start:\n{self.output()}",
                    pytrace=False,
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(
                        f"{self.name} not listening on 127.0.0.1:{self.port} within "
                        f"{START_BOUND}s:\n{self.output()}",
                        pytrace=False,
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()


def start_nginx(prefix: Path, certs: Certs, up1: int, up2: int) -> Balancer:
    """nginx -p DIR -c DIR/nginx.conf -e stderr -g 'daemon off;' (as in docs/deploy.md)."""
    binary = _binary("nginx")
    shutil.copy(certs.server_cert_file, prefix / "server.pem")
    shutil.copy(certs.server_key_file, prefix / "server.key")
    port = _free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(render("nginx.conf", DIR=prefix, PORT=port, UP1=up1, UP2=up2))
    # As root, nginx would run its workers as 'nobody', who cannot enter the 0700 temp dir.
    global_directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    cmd = [binary, "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", global_directives]
    return Balancer("nginx", cmd, port, prefix)


def start_haproxy(prefix: Path, certs: Certs, up1: int, up2: int) -> Balancer:
    """haproxy -f DIR/haproxy.cfg -db (as in docs/deploy.md)."""
    binary = _binary("haproxy")
    pem = Path(certs.server_cert_file).read_bytes() + Path(certs.server_key_file).read_bytes()
    (prefix / "haproxy.pem").write_bytes(pem)
    port = _free_port()
    conf = prefix / "haproxy.cfg"
    conf.write_text(render("haproxy.cfg", DIR=prefix, PORT=port, UP1=up1, UP2=up2))
    return Balancer("haproxy", [binary, "-f", str(conf), "-db"], port, prefix)


@pytest.fixture(scope="module")
def workers() -> Iterator[List[HelperProcess]]:
    """Two of our Servers (plaintext h2) behind the balancers, shared by this module."""
    pool = Replicas()
    try:
        yield pool.start_many([("w1", "127.0.0.1:0"), ("w2", "127.0.0.1:0")])
    finally:
        pool.stop_all()


@pytest.fixture()
def nginx(tmp_path: Path, certs: Certs, workers: List[HelperProcess]) -> Iterator[Balancer]:
    balancer = start_nginx(tmp_path, certs, workers[0].port, workers[1].port)
    yield balancer
    balancer.stop()


@pytest.fixture()
def haproxy(tmp_path: Path, certs: Certs, workers: List[HelperProcess]) -> Iterator[Balancer]:
    balancer = start_haproxy(tmp_path, certs, workers[0].port, workers[1].port)
    yield balancer
    balancer.stop()


def _nginx_connections(balancer: Balancer) -> Dict[str, int]:
    """Calls per client connection, from nginx's access log ($connection $connection_requests)."""
    per_conn: Dict[str, int] = collections.Counter()
    for line in (balancer.prefix / "access.log").read_text().splitlines():
        conn, requests, status, _upstream = line.split(" ", 3)
        assert status == "200", line
        per_conn[conn] = max(per_conn[conn], int(requests))
    return dict(per_conn)


@pytest.mark.balancers
async def test_nginx_tls_3000_calls_200_in_flight_across_goaways(
    nginx: Balancer, certs: Certs
) -> None:
    async with Channel(
        f"localhost:{nginx.port}", secure=True, root_certificates=certs.ca_pem
    ) as channel:
        run = Run(channel)
        await run.calls(3000, concurrency=200)
    per_conn = _nginx_connections(nginx)
    print(
        f"\nnginx: 3000 calls / 200 in flight: per worker {dict(run.ok())}, failures "
        f"{run.failed()}; client connections {len(per_conn)} (calls per connection "
        f"{sorted(per_conn.values(), reverse=True)})"
    )
    assert run.failed() == 0, run.details[:5]
    assert sum(run.ok().values()) == 3000
    assert set(run.ok()) == {"w1", "w2"}
    # keepalive_requests 1000: nginx ended connections with GOAWAY after 1,000 calls each.
    assert max(per_conn.values()) == 1000, per_conn
    assert len(per_conn) >= 3, per_conn


@pytest.mark.balancers
async def test_haproxy_h2_tls_3000_calls_200_in_flight(haproxy: Balancer, certs: Certs) -> None:
    async with Channel(
        f"localhost:{haproxy.port}", secure=True, root_certificates=certs.ca_pem
    ) as channel:
        run = Run(channel)
        await run.calls(3000, concurrency=200)
    print(
        f"\nhaproxy: 3000 calls / 200 in flight: per worker {dict(run.ok())}, failures "
        f"{run.failed()}"
    )
    assert run.failed() == 0, run.details[:5]
    assert sum(run.ok().values()) == 3000
    assert set(run.ok()) == {"w1", "w2"}


class KillResult:
    """What a run of 200 calls saw when worker w2 was SIGKILLed in the middle of it."""

    def __init__(self, run: Run, unfinished: int, ran: int) -> None:
        self.run = run
        self.unfinished = unfinished  # calls w2 had started and not answered when killed
        self.ran = ran  # handler executions on both workers for the 200 calls


async def _kill_a_worker_midrun(
    start: Callable[[Path, Certs, int, int], Balancer],
    tmp_path: Path,
    certs: Certs,
    transparent_retry: bool,
) -> KillResult:
    """200 calls of 0.3 s, 40 in flight, through a balancer; w2 dies after starting 10."""
    pool = Replicas()
    try:
        w1, w2 = pool.start_many(
            [("w1", "127.0.0.1:0", "--log-starts"), ("w2", "127.0.0.1:0", "--log-starts")]
        )
        balancer = start(tmp_path, certs, w1.port, w2.port)
        try:
            async with Channel(
                f"localhost:{balancer.port}",
                secure=True,
                root_certificates=certs.ca_pem,
                transparent_retry=transparent_retry,
            ) as channel:
                run = Run(channel, request=b"0.3")
                marks: Dict[str, int] = {}

                async def killer() -> None:
                    await wait_for(lambda: _starts(w2) >= 10, RUN_BOUND, "w2 started 10 calls")
                    w2.proc.kill()
                    marks["w2_started"] = _starts(w2)
                    marks["w2_answered"] = run.ok()["w2"]

                kill = asyncio.ensure_future(killer())
                await run.calls(200, concurrency=40)
                await asyncio.wait_for(kill, RUN_BOUND)
        finally:
            balancer.stop()
        w2.proc.wait(timeout=10)
        time.sleep(0.2)  # let the output pump read w1's last lines
        result = KillResult(
            run,
            unfinished=marks["w2_started"] - marks["w2_answered"],
            ran=_starts(w1) + marks["w2_started"],
        )
        print(
            f"\n{balancer.name}, worker killed, transparent_retry={transparent_retry}: "
            f"ok {dict(run.ok())}, failed {run.failed()} {sorted(set(run.details))[:2]}; "
            f"w2 had started {result.unfinished} unfinished calls; {result.ran} executions "
            "for 200 calls"
        )
        assert result.unfinished >= 1
        return result
    finally:
        pool.stop_all()


@pytest.mark.balancers
@pytest.mark.parametrize("transparent_retry", [False, True])
async def test_haproxy_refuses_the_calls_a_killed_worker_had_started(
    tmp_path: Path, certs: Certs, transparent_retry: bool
) -> None:
    """What docs/deploy.md warns about: HAProxy answers REFUSED_STREAM for the calls a
    crashed worker had already started, so a client that retries refused streams runs them
    twice; with ``transparent_retry=False`` they fail with UNAVAILABLE instead.
    """
    result = await _kill_a_worker_midrun(start_haproxy, tmp_path, certs, transparent_retry)
    run = result.run
    if transparent_retry:
        assert run.failed() == 0, run.details[:5]
        assert result.ran - 200 >= result.unfinished  # the started calls ran again on w1
    else:
        assert run.failed() >= result.unfinished, run.details[:5]
        for detail in run.details:
            assert detail.startswith("UNAVAILABLE: stream refused"), detail
            assert "not retried because transparent_retry=False" in detail
        assert result.ran - run.failed() <= 200  # nothing ran twice


@pytest.mark.balancers
async def test_nginx_fails_the_calls_a_killed_worker_had_started(
    tmp_path: Path, certs: Certs
) -> None:
    """nginx answers HTTP 502 for calls in flight on a crashed worker (UNAVAILABLE, never
    retried: the worker may have run them) and sends later calls to the live worker."""
    result = await _kill_a_worker_midrun(start_nginx, tmp_path, certs, True)
    run = result.run
    assert run.failed() >= result.unfinished, run.details[:5]
    for detail in run.details:
        assert detail.startswith("UNAVAILABLE: HTTP status 502"), detail
    assert result.ran - run.failed() <= 200  # nothing ran twice
    assert run.failed() <= 40  # only calls that were in flight then


def _starts(worker: HelperProcess) -> int:
    return sum(1 for line in list(worker.lines) if line == "START")


def test_deploy_doc_shows_the_tested_configs() -> None:
    """docs/deploy.md carries each template verbatim, so the documented config is the tested one."""
    doc = (REPO_DIR / "docs" / "deploy.md").read_text()
    for template in ("nginx.conf", "haproxy.cfg"):
        text = (BALANCERS / template).read_text().rstrip("\n")
        assert text in doc, f"docs/deploy.md does not show tests/balancers/{template} verbatim"
