"""The benchmark harness's pure parts: medians, percentiles, tables, verdicts, docs, sizes.

The harness itself (servers and clients in subprocesses) is exercised by
``python -m benchmarks --quick`` in ``.ci/run``; these tests pin what it computes and
writes, without starting anything and without importing grpc.
"""

# The tables use the multiplication sign; the assertions quote them exactly.
# ruff: noqa: RUF001

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import _client, _env, _load, _servers, instructions, report, run  # noqa: E402


def _figures(cpu: float, rate: float = 1000.0) -> Dict[str, Any]:
    return {
        "calls": 100,
        "wall_s": 0.1,
        "calls_per_s": rate,
        "p50_us": 500.0,
        "p99_us": 900.0,
        "cpu_us_per_call": cpu,
        "peak_rss_kib": 20480,
        "latency_quantiles_us": [float(i) for i in range(101)],
    }


def _results(ours_cpu: float, base_cpu: float, grpclib_cpu: float) -> Dict[str, Any]:
    scenarios = {}
    for key, title in (
        ("seq_100b", "100 B sequential"),
        ("conc64_100b", "100 B, 64 in flight"),
        ("seq_1mib", "1 MiB sequential"),
    ):
        clients = {
            "wove_h2grpc": _figures(ours_cpu),
            "grpc.aio": _figures(base_cpu),
            "grpclib": _figures(grpclib_cpu),
        }
        scenarios[key] = {
            "title": title,
            "calls": 100,
            "clients": {c: {"median": f, "rounds": [f]} for c, f in clients.items()},
        }
    return {
        "timestamp": "20260101T000000Z",
        "quick": False,
        "rounds": 3,
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "os": "TestOS",
            "python": "CPython 3.x",
            "versions": {"h2": "4.4.1", "grpcio": None},
            "load_average_at_start": [0.5, 0.4, 0.3],
        },
        "clients": ["grpc.aio", "wove_h2grpc", "grpclib"],
        "servers": {"grpcio": {"title": "grpcio aio echo server", "scenarios": scenarios}},
        "imports": {
            "wove_h2grpc": {
                "import wove_h2grpc": {"ms": 5.0, "rss_delta_kib": 1024},
                "from wove_h2grpc import Channel": {"ms": 40.0, "rss_delta_kib": 8192},
            },
            "grpc.aio": {
                "import grpc": {"ms": 60.0, "rss_delta_kib": 20480},
                "import grpc.aio": {"ms": 61.0, "rss_delta_kib": 20480},
            },
        },
        "sizes": {"wove_h2grpc": {"bytes": 2 * 1024 * 1024, "packages": {"wove_h2grpc": 1}}},
        "skipped": ["Wove level skipped: test"],
    }


def test_median_of_rounds_ignores_failed_rounds_and_keeps_their_errors() -> None:
    rounds = [_figures(100.0), {"error": "boom"}, _figures(300.0), _figures(200.0)]
    median = run.median_of(rounds)
    assert median["cpu_us_per_call"] == 200.0
    assert median["rounds_ok"] == 3
    assert median["errors"] == ["boom"]
    assert run.median_of([{"error": "all failed"}]) == {"error": "all failed"}


def test_percentiles_are_nearest_rank() -> None:
    latencies = sorted(range(1000, 101000, 1000))  # 100 values, ns
    assert _client._percentile(latencies, 50) == 50.0
    assert _client._percentile(latencies, 99) == 99.0
    assert _client._percentile([7000], 99) == 7.0
    quantiles = _client._quantiles(latencies)
    assert len(quantiles) == 101
    assert quantiles[0] == 1.0
    assert quantiles[100] == 100.0


def test_table_shows_each_figure_with_its_ratio_to_grpc_aio() -> None:
    text = report.render(_results(ours_cpu=90.0, base_cpu=100.0, grpclib_cpu=200.0))
    assert "| scenario | figure | wove_h2grpc | grpc.aio | grpclib |" in text
    assert "| 100 B sequential (100 calls) | calls/s |" in text
    assert "90 (0.90×)" in text
    assert "100 (1.00×)" in text
    assert "200 (2.00×)" in text
    assert "Test CPU, 2 cores" in text
    assert "0.5/0.4/0.3" in text
    assert "Skipped in this run: Wove level skipped: test." in text


def test_target_verdicts() -> None:
    rows = {t: (m, v) for t, m, v in report.targets(_results(90.0, 100.0, 200.0))}
    assert rows["CPU/call ≤ 1.0× grpc.aio, 100 B sequential (grpcio server)"] == ("0.90×", "PASS")
    assert rows["CPU/call ≤ 0.6× grpclib, 100 B sequential (grpcio server)"] == ("0.45×", "PASS")
    assert rows["`import wove_h2grpc` ≤ 0.5× `import grpc`"] == ("0.08×", "PASS")
    assert rows["`from wove_h2grpc import Channel` ≤ 0.5× `import grpc`"] == ("0.67×", "FAIL")
    rows = {t: v for t, _, v in report.targets(_results(130.0, 100.0, 200.0))}
    assert rows["CPU/call ≤ 1.0× grpc.aio, 100 B sequential (grpcio server)"] == "FAIL"
    assert rows["CPU/call ≤ 1.5× grpc.aio, 1 MiB sequential (grpcio server)"] == "PASS"


def test_the_half_of_grpc_aio_goals_have_their_own_limits() -> None:
    goal = "Goal: CPU/call ≤ {}× grpc.aio, {} (grpcio server)"
    rows = {t: (m, v) for t, m, v in report.targets(_results(50.0, 100.0, 200.0))}
    assert rows[goal.format("0.60", "100 B sequential")] == ("0.50×", "PASS")
    assert rows[goal.format("0.45", "100 B, 64 in flight")] == ("0.50×", "FAIL")
    assert rows[goal.format("1.00", "1 MiB sequential")] == ("0.50×", "PASS")
    rows = {t: (m, v) for t, m, v in report.targets(_results(90.0, 100.0, 200.0))}
    assert rows[goal.format("0.60", "100 B sequential")] == ("0.90×", "FAIL")
    assert rows["CPU/call ≤ 1.0× grpc.aio, 100 B sequential (grpcio server)"] == ("0.90×", "PASS")


def test_wove_verdicts_read_throughput_as_at_least() -> None:
    results = _results(90.0, 100.0, 200.0)

    def case(rate: float) -> Dict[str, Any]:
        figures = {"tasks_per_s": rate, "cpu_us_per_task": 1000.0, "peak_rss_kib": 1024}
        return {"median": figures, "rounds": [figures]}

    results["wove"] = {
        "grpcio": {
            "tasks": 10,
            "sizes": {
                "small": {"grpcio/json": case(100), "h2/json": case(120), "h2/msgpack": case(130)},
                "1mib": {"grpcio/json": case(10), "h2/json": case(8), "h2/msgpack": case(16)},
            },
        }
    }
    rows = {t: (m, v) for t, m, v in report.targets(results)}
    assert rows["Wove tasks/s h2/json ≥ grpcio/json (small, grpcio worker)"] == ("1.20×", "PASS")
    assert rows["Wove tasks/s h2/json ≥ grpcio/json (1mib, grpcio worker)"] == ("0.80×", "FAIL")
    assert rows["msgpack ≥ 1.5× json tasks/s, 1 MiB (grpcio worker)"] == ("2.00×", "PASS")
    assert "| 1 MiB | h2/msgpack | 16.0 (1.60×) |" in report.render(results)


def _wove_cpu_results(stream_cpu: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Results with a Wove section whose ``h2/json`` rows cost 1,000 µs/task (unary) and
    whose ``h2/json stream`` rows cost ``stream_cpu[server][size]`` (None: the row failed,
    absent: not measured)."""
    results = _results(90.0, 100.0, 200.0)

    def case(cpu: Any) -> Dict[str, Any]:
        if cpu is None:
            return {"median": {"error": "boom"}, "rounds": [{"error": "boom"}]}
        figures = {"tasks_per_s": 100.0, "cpu_us_per_task": cpu, "peak_rss_kib": 1024}
        return {"median": figures, "rounds": [figures]}

    results["wove"] = {}
    for server, per_size in stream_cpu.items():
        sizes: Dict[str, Any] = {}
        for size_key in ("small", "1mib"):
            cases = {"grpcio/json": case(1100.0), "h2/json": case(1000.0)}
            if size_key in per_size:
                cases["h2/json stream"] = case(per_size[size_key])
            sizes[size_key] = cases
        results["wove"][server] = {"tasks": 10, "sizes": sizes}
    return results


def test_wove_stream_cpu_target_is_stream_over_unary_per_size_and_worker() -> None:
    results = _wove_cpu_results(
        {"grpcio": {"small": 1150.0, "1mib": 1250.0}, "h2": {"small": 1200.0, "1mib": 900.0}}
    )
    rows = {t: (m, v) for t, m, v in report.targets(results)}
    title = "Wove CPU/task, stream ≤ 1.2× unary (h2/json, {}, {} worker)"
    assert rows[title.format("small", "grpcio")] == ("1.15×", "PASS")
    assert rows[title.format("1 MiB", "grpcio")] == ("1.25×", "FAIL")
    assert rows[title.format("small", "h2")] == ("1.20×", "PASS")  # the limit itself passes
    assert rows[title.format("1 MiB", "h2")] == ("0.90×", "PASS")
    text = report.render(results)
    assert (
        "| Wove CPU/task, stream ≤ 1.2× unary (h2/json, 1 MiB, grpcio worker) | 1.25× | FAIL |"
        in text
    )
    # The stream rows sit in the Wove table, their ratio to grpcio/json as for any row.
    assert "| 1 MiB | h2/json stream | 100.0 (1.00×) | 1,250 (1.14×) | 1.0 |" in text


def test_wove_stream_cpu_target_without_a_stream_figure_is_not_measured() -> None:
    results = _wove_cpu_results({"grpcio": {"small": None}})
    rows = {t: (m, v) for t, m, v in report.targets(results)}
    title = "Wove CPU/task, stream ≤ 1.2× unary (h2/json, {}, grpcio worker)"
    assert rows[title.format("small")] == ("not measured", "n.a.")  # the stream row failed
    assert rows[title.format("1 MiB")] == ("not measured", "n.a.")  # no stream row at all


def test_wove_cases_include_streamed_delivery_and_its_spec() -> None:
    keys = [run.wove_case_key(*case) for case in run.WOVE_CASES]
    assert keys[:3] == ["grpcio/json", "h2/json", "h2/msgpack"]
    assert "h2/json stream" in keys and "h2/msgpack stream" in keys
    assert all(t == "h2" for t, _, d in run.WOVE_CASES if d != "unary")
    assert run.wove_spec(5, "h2", "json", "stream", 100, 24) == {
        "port": 5,
        "transport": "h2",
        "codec": "json",
        "size": 100,
        "tasks": 24,
        "delivery": "stream",
    }
    assert "delivery" not in run.wove_spec(5, "grpcio", "json", "unary", 100, 24)


def test_docs_block_is_replaced_between_the_markers(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Title\n\nintro\n\n{report.BEGIN}\nold table\n{report.END}\n\nafter\n")
    report.update_docs(doc, "new table\n", plot_name="plot.png")
    text = doc.read_text()
    assert "old table" not in text
    assert f"{report.BEGIN}\nnew table\n\n![latency distribution](plot.png)\n{report.END}" in text
    assert text.startswith("# Title\n\nintro\n") and text.endswith("after\n")
    report.update_docs(doc, "newer\n")
    text = doc.read_text()
    # The second update replaces the block again: one block, the new table, no stale plot.
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    assert f"{report.BEGIN}\nnewer\n{report.END}" in text
    assert "new table" not in text and "plot.png" not in text
    assert text.startswith("# Title\n\nintro\n") and text.endswith("after\n")


def test_docs_markers_are_added_when_missing(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    report.update_docs(doc, "table\n")
    assert doc.read_text() == f"# Benchmarks\n\n{report.BEGIN}\ntable\n{report.END}\n"


def test_installed_size_follows_the_documented_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    closure = _env.dependency_closure("wove_h2grpc")
    assert {"wove_h2grpc", "h2", "hpack", "hyperframe"} <= {n.lower() for n in closure}
    size = _env.installed_size("wove_h2grpc")
    packages = {n.lower() for n in size["packages"]}
    assert "wove" not in packages and "cloudpickle" not in packages
    assert {"h2", "hpack", "hyperframe"} <= packages
    assert size["bytes"] == sum(size["packages"].values()) > 0
    monkeypatch.setitem(_env.CLIENT_DISTRIBUTIONS, "absent", "no-such-distribution-here")
    assert "error" in _env.installed_size("absent")


def test_parse_args_defaults_and_quick_mode() -> None:
    args = run.parse_args([])
    assert args.rounds == 3 and args.server == "both" and not args.quick
    assert args.clients == ["wove_h2grpc", "grpc.aio", "grpclib"]
    quick = run.parse_args(["--quick", "--clients", "grpc.aio", "--skip", "wove"])
    assert quick.rounds == 1 and quick.import_repeats == 2
    assert quick.clients == ["grpc.aio"] and quick.skip == {"wove"}
    with pytest.raises(SystemExit):
        run.parse_args(["--clients", "nonsense"])


# ------------------------------------------------------------------ streaming scenarios


def test_stream_request_round_trips_and_malformed_requests_are_refused() -> None:
    assert _client.stream_request(100000, 100) == b"100000 100"
    assert _servers.parse_stream_request(_client.stream_request(100000, 100)) == (100000, 100)
    assert _servers.parse_stream_request(b"0 0") == (0, 0)
    for bad in (b"", b"10", b"10 20 30", b"-1 100", b"ten 100", b"1 1.5"):
        with pytest.raises(ValueError):
            _servers.parse_stream_request(bad)
    with pytest.raises(ValueError):
        _servers.parse_stream_request(b"1 %d" % (_servers.MAX_MESSAGE + 1))


def test_ready_line_gives_the_port() -> None:
    assert run.parse_ready("READY 50051\n") == 50051
    with pytest.raises(ValueError):
        run.parse_ready("READY port")


def test_stream_rates() -> None:
    figures = _client.rates(count=100000, wall_s=2.0, cpu_s=1.5, size=100)
    assert figures["messages_per_s"] == 50000.0
    assert figures["cpu_us_per_message"] == 15.0
    assert figures["mib_per_s"] == pytest.approx(100000 * 100 / 2.0 / 1048576)
    assert _client.rates(16, 1.0, 0.0, 1048576)["mib_per_s"] == 16.0
    with pytest.raises(ValueError):
        _client.rates(0, 1.0, 1.0, 100)


def test_rss_growth_is_the_peak_during_the_section_over_its_start() -> None:
    # Samples only: the lifetime peak did not move during the section.
    assert _client.rss_growth_kib(1000, [1200, 1500, 1100], 9000, 9000) == 500
    # The lifetime peak rose during the section: a peak between two samples counts.
    assert _client.rss_growth_kib(1000, [1200, 1500], 1000, 2000) == 1000
    # An old lifetime peak (from before the section) is not the section's.
    assert _client.rss_growth_kib(1000, [], 5000, 5000) == 0
    # Missing readings (no /proc) are skipped; no baseline means no figure.
    assert _client.rss_growth_kib(1000, [None, 1300], 0, 0) == 300
    assert _client.rss_growth_kib(None, [1300], 0, 0) is None
    # RSS that shrank is no growth.
    assert _client.rss_growth_kib(1000, [800], 0, 0) == 0


def test_client_spec_of_streaming_and_unary_scenarios() -> None:
    by_key = {s.key: s for s in run.SCENARIOS}
    unary = run.client_spec(by_key["seq_100b"], "grpclib", 1234, quick=True, server_pid=99)
    assert unary == {
        "client": "grpclib",
        "port": 1234,
        "method": run.ECHO_METHOD,
        "scenario": "sequential",
        "size": 100,
        "calls": 60,
        "warmup": 64,
        "concurrency": 64,
    }
    stream = run.client_spec(by_key["server_stream_100b"], "wove_h2grpc", 1, server_pid=99)
    assert stream["scenario"] == "server_stream" and stream["calls"] == 100000
    assert stream["server_pid"] == 99 and "window" not in stream and "pause_s" not in stream
    slow = run.client_spec(by_key["slow_consumer_1mib_window"], "grpc.aio", 1, quick=True)
    assert slow["window"] == 1024 * 1024 and slow["size"] == 64 * 1024
    assert slow["calls"] * slow["size"] == 64 * 1024 * 1024  # quick: 64 MiB
    assert {"stall_s", "pause_every", "pause_s"} <= set(slow)
    full = run.client_spec(by_key["slow_consumer"], "grpc.aio", 1)
    assert full["calls"] * full["size"] == 1024**3 and "window" not in full
    assert by_key["bidi_pingpong_100b"].unit == "round trips"
    assert by_key["slow_consumer"].unit == "messages" and by_key["seq_1mib"].unit == "calls"
    assert [s.streaming for s in run.SCENARIOS].count(True) == 4
    assert all(s.kind in run.STREAM_KINDS for s in run.SCENARIOS if s.streaming)


def _stream_results() -> Dict[str, Any]:
    results = _results(90.0, 100.0, 200.0)
    scenarios = results["servers"]["grpcio"]["scenarios"]

    def entry(figures: Dict[str, Any]) -> Dict[str, Any]:
        return {"median": figures, "rounds": [figures]}

    def stream(rate: float, cpu: float) -> Dict[str, Any]:
        return {"messages_per_s": rate, "cpu_us_per_message": cpu, "peak_rss_kib": 2048}

    def slow(growth: float) -> Dict[str, Any]:
        return {
            "mib_per_s": 150.0,
            "cpu_us_per_message": 70.0,
            "rss_growth_mib": growth,
            "server_rss_growth_mib": 0.5,
            "peak_rss_kib": 40960,
        }

    scenarios["bidi_pingpong_100b"] = {
        "title": "bidi ping-pong, 100 B",
        "kind": "bidi",
        "unit": "round trips",
        "calls": 200,
        "clients": {
            c: entry(_figures(cpu)) for c, cpu in (("wove_h2grpc", 80.0), ("grpc.aio", 100.0))
        }
        | {"grpclib": entry({"error": "boom"})},
    }
    scenarios["server_stream_100b"] = {
        "title": "server stream, 100 B messages",
        "kind": "server_stream",
        "unit": "messages",
        "calls": 5000,
        "clients": {
            "wove_h2grpc": entry(stream(40000.0, 20.0)),
            "grpc.aio": entry(stream(20000.0, 50.0)),
            "grpclib": entry(stream(30000.0, 25.0)),
        },
    }
    scenarios["slow_consumer"] = {
        "title": "slow consumer",
        "kind": "slow_consumer",
        "unit": "messages",
        "calls": 1024,
        "clients": {
            "wove_h2grpc": entry(slow(16.0)),
            "grpc.aio": entry(slow(8.0)),
            "grpclib": entry(slow(4.0)),
        },
    }
    return results


def test_stream_tables_show_each_kinds_own_figures() -> None:
    text = report.render(_stream_results())
    assert "| bidi ping-pong, 100 B (200 round trips) | round trips/s |" in text
    assert "|  | client CPU µs/round trip | 80 (0.80×) | 100 (1.00×) | error |" in text
    assert "| server stream, 100 B messages (5,000 messages) | messages/s | " in text
    assert "40,000 (2.00×) | 20,000 (1.00×) | 30,000 (1.50×) |" in text
    assert "|  | client CPU µs/message | 20.0 (0.40×) | 50.0 (1.00×) | 25.0 (0.50×) |" in text
    assert "| slow consumer (1,024 messages) | MiB/s | 150 (1.00×) |" in text
    assert "|  | client RSS growth MiB | 16.0 (2.00×) | 8.0 (1.00×) | 4.0 (0.50×) |" in text
    # One server serves every client: its RSS gets no ratio.
    assert "|  | server RSS growth MiB | 0.5 | 0.5 | 0.5 |" in text
    assert "- grpclib, bidi ping-pong, 100 B: round failed: `boom`" in text


def test_targets_stay_on_the_unary_scenarios() -> None:
    titles = [t for t, _, _ in report.targets(_stream_results())]
    assert not [t for t in titles if "stream" in t or "bidi" in t or "consumer" in t]
    assert "CPU/call ≤ 0.6× grpclib, 1 MiB sequential (grpcio server)" in titles


def test_progress_line_of_stream_results() -> None:
    line = report.one_line(
        {"messages_per_s": 40000.0, "cpu_us_per_message": 20.0, "peak_rss_kib": 2048}
    )
    assert "40,000 msgs/s" in line and "20.0 µs/msg" in line and "2.0 MiB" in line
    line = report.one_line(
        {
            "mib_per_s": 150.0,
            "messages_per_s": 2400.0,
            "cpu_us_per_message": 70.0,
            "rss_growth_mib": 16.2,
            "server_rss_growth_mib": 0.1,
            "peak_rss_kib": 40960,
        }
    )
    assert "150 MiB/s" in line and "rss growth   16.2 MiB (server 0.1 MiB)" in line


def test_progress_line_of_wove_results_shows_reads_and_turns_when_counted() -> None:
    figures = {"tasks_per_s": 1800.0, "cpu_us_per_task": 250.0, "peak_rss_kib": 40960}
    line = report.one_line(figures)
    assert "1,800.0 tasks/s" in line and "250 µs/task" in line
    assert "reads" not in line and "turns" not in line
    line = report.one_line({**figures, "reads_per_task": 1.72, "turns_per_task": 3.41})
    assert "reads  1.72/task" in line and "loop turns  3.41/task" in line


def test_io_counts_count_our_client_reads_and_loop_turns_only_while_counting() -> None:
    """With our Server in the same process, only the client side's reads count."""
    import asyncio

    from benchmarks._wove_client import IoCounts
    from wove_h2grpc import Channel, Server
    from wove_h2grpc.aio.connection import ClientConnection

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def main() -> None:
        server = Server()
        server.add_method("/bench.Echo/Echo", echo)
        port = await server.start("127.0.0.1:0")
        counts = IoCounts()
        try:
            async with Channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/bench.Echo/Echo")
                assert await asyncio.wait_for(call(b"warm"), 10) == b"warm"
                counts.install(asyncio.get_running_loop())
                for _ in range(3):
                    await asyncio.wait_for(call(b"not counted"), 10)
                counts.start()
                for _ in range(20):
                    assert await asyncio.wait_for(call(b"x" * 100), 10) == b"x" * 100
                counts.stop()
                reads, turns = counts.reads, counts.turns
                await asyncio.wait_for(call(b"after"), 10)
                assert (counts.reads, counts.turns) == (reads, turns)
        finally:
            counts.uninstall()
            await server.stop()
        # Each sequential call's answer takes at least one read of the client's socket, and
        # its own loop turn; the server's reads (as many) are not counted.
        assert 20 <= reads <= 40, reads
        assert turns >= reads, (turns, reads)
        assert counts.per_task(20, reads=True) == {
            "turns_per_task": turns / 20,
            "reads_per_task": reads / 20,
        }
        assert "reads_per_task" not in counts.per_task(20, reads=False)
        assert "data_received" not in vars(ClientConnection)  # the driver's own again

    asyncio.run(main())


def test_wove_measurement_reports_reads_for_our_transport_only() -> None:
    """One small Wove measurement per transport against our worker: the counts are there
    (reads only where our client made the connections), and the tasks all ran."""
    pytest.importorskip("wove_h2grpc.worker")
    proc = run.ServerProcess("h2-worker")
    try:
        ours = run.run_child(
            "_wove_client.py", run.wove_spec(proc.port, "h2", "json", "stream", 100, 24), 120
        )
        theirs = run.run_child(
            "_wove_client.py", run.wove_spec(proc.port, "grpcio", "json", "unary", 100, 24), 120
        )
    finally:
        proc.stop()
    assert "error" not in ours and "error" not in theirs, (ours, theirs)
    assert ours["tasks"] == theirs["tasks"] == 24 and ours["delivery"] == "stream"
    # Every streamed task's events reach the client: at least one read between them all.
    assert ours["reads_per_task"] * 24 >= 1 and ours["turns_per_task"] > 0
    assert "reads_per_task" not in theirs and theirs["turns_per_task"] > 0


def test_instruction_counts_import_the_tree_they_measure(tmp_path: Path) -> None:
    """The counting processes import the given tree's package, not the venv's editable one."""
    import subprocess

    fake = tmp_path / "tree" / "wove_h2grpc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("MARK = 'the other tree'\n")
    script = tmp_path / "which.py"
    script.write_text("import wove_h2grpc\nprint(wove_h2grpc.MARK)\n")
    command = instructions._command(tmp_path / "tree", script, [], None)
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "the other tree"


# ------------------------------------------------------------------ server load (h2load)

H2LOAD_OUTPUT = """starting benchmark...
spawning thread #0: 10 total client(s). 2000 total requests
Application protocol: h2c
progress: 100% done

finished in 247.12ms, 8093.17 req/s, 1.25MB/s
requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 316.74KB (324346) total, 6.59KB (6750) headers (space savings 95.83%), \
205.08KB (210000) data
                     min         max         mean         sd        +/- sd
time for request:      150us     20.90ms     11.97ms      1.97ms    79.45%
"""


def test_h2load_summary_is_parsed() -> None:
    parsed = _load.parse_h2load(H2LOAD_OUTPUT)
    assert parsed["wall_s"] == pytest.approx(0.24712)
    assert (parsed["total"], parsed["succeeded"], parsed["failed"]) == (2000, 2000, 0)
    assert (parsed["errored"], parsed["timeout"], parsed["status_2xx"]) == (0, 0, 2000)
    assert parsed["data_bytes"] == 210000
    seconds = H2LOAD_OUTPUT.replace("finished in 247.12ms,", "finished in 3.50s,")
    assert _load.parse_h2load(seconds)["wall_s"] == pytest.approx(3.5)
    with pytest.raises(ValueError):
        _load.parse_h2load("starting benchmark...\nconnect to 127.0.0.1 failed\n")


def test_h2load_command_posts_the_framed_message(tmp_path: Path) -> None:
    frame = _load.grpc_frame(100)
    assert frame[:5] == b"\x00\x00\x00\x00\x64" and len(frame) == 105
    command = _load.h2load_command("h2load", 5, "/bench.Echo/Echo", tmp_path / "f", 50, 100, 9)
    assert command[-1] == "http://127.0.0.1:5/bench.Echo/Echo"
    assert command[command.index("-c") + 1] == "50" and command[command.index("-m") + 1] == "100"
    assert command[command.index("-n") + 1] == "9"
    assert "content-type: application/grpc" in command and "te: trailers" in command
    levels = {(lv.connections, lv.streams) for lv in _load.LOAD_LEVELS}
    assert levels == {(1, 1), (10, 10), (50, 100)}


def test_load_figures_count_a_call_ok_only_when_every_count_agrees() -> None:
    parsed = _load.parse_h2load(H2LOAD_OUTPUT)
    good = _load.load_figures(parsed, 2000, 2000, cpu_s=0.2)
    assert good["problems"] == [] and good["calls_ok"] == 2000 and _load.round_ok(good)
    assert good["requests_per_s"] == pytest.approx(2000 / 0.24712)
    assert good["cpu_us_per_request"] == pytest.approx(100.0)
    # HTTP 200 on every stream, but the server's handler completed fewer calls (a gRPC
    # failure also has HTTP status 200): not OK.
    short = _load.load_figures(parsed, 2000, 1990, cpu_s=0.2)
    assert short["calls_ok"] == 1990 and not _load.round_ok(short)
    assert short["problems"] == ["server completed 1,990 calls, not 2,000"]
    assert short["requests_per_s"] == pytest.approx(1990 / 0.24712)  # OK calls only
    assert short["h2load_requests_per_s"] == pytest.approx(2000 / 0.24712)
    # Fewer echoes arrived than h2load counted as succeeded: not OK.
    lost = _load.load_figures(dict(parsed, data_bytes=209790), 2000, 2000, cpu_s=0.2)
    assert lost["calls_ok"] == 1998 and not _load.round_ok(lost)
    failed = _load.load_figures(dict(parsed, succeeded=1999, failed=1), 2000, 2000, cpu_s=0.2)
    assert "h2load: 1 failed" in failed["problems"] and failed["calls_ok"] == 1999
    # A count above the request count is as wrong as one below.
    assert not _load.round_ok(_load.load_figures(parsed, 2000, 2001, cpu_s=0.2))


def test_count_lines_round_trip() -> None:
    assert _servers.parse_count(_servers.count_line(41)) == 41
    for bad in ("READY 5", "COUNT", "COUNT -1", "COUNT 1 2"):
        with pytest.raises(ValueError):
            _servers.parse_count(bad)


def _load_run(rate: float, cpu: float, requests: int = 1000, ok: int = 1000) -> Dict[str, Any]:
    problems = [] if ok == requests else [f"server completed {ok:,} calls, not {requests:,}"]
    return {
        "requests": requests,
        "calls_ok": ok,
        "requests_per_s": rate,
        "cpu_us_per_request": cpu,
        "problems": problems,
    }


def _load_results(ours: Any, grpcio: Any, grpclib: Any) -> Dict[str, Any]:
    """Results with one load level; each server's rounds as given (a dict is one round)."""
    levels = {}
    for level in _load.LOAD_LEVELS:
        servers = {}
        for key, rounds in (("h2", ours), ("grpcio", grpcio), ("grpclib", grpclib)):
            rounds = rounds if isinstance(rounds, list) else [rounds]
            servers[key] = {"median": run.median_of(rounds), "rounds": rounds}
        levels[level.key] = {
            "title": level.title,
            "connections": level.connections,
            "streams": level.streams,
            "requests": 1000,
            "servers": servers,
        }
    results = _results(90.0, 100.0, 200.0)
    results["load"] = {
        "tool": "h2load nghttp2/1.52.0",
        "size": 100,
        "servers": {k: v[1] for k, v in _load.LOAD_SERVERS.items()},
        "levels": levels,
    }
    return results


def test_load_table_and_verdicts_pass_when_faster_cheaper_and_every_call_ok() -> None:
    results = _load_results(
        [_load_run(16000, 40.0), _load_run(15000, 45.0), _load_run(17000, 50.0)],
        [_load_run(10000, 100.0)] * 3,
        [_load_run(4000, 200.0)] * 3,
    )
    text = report.render(results)
    assert "### Server load: h2load nghttp2/1.52.0, unary 100 B echo" in text
    assert "| level | figure | wove_h2grpc.Server | grpc.aio server | grpclib server |" in text
    assert (
        "| 50 connections × 100 streams (1,000 calls) | requests/s | 16,000 (1.60×) | "
        "10,000 (1.00×) | 4,000 (0.40×) |" in text
    )
    assert "|  | server CPU µs/request | 45.0 (0.45×) | 100.0 (1.00×) | 200.0 (2.00×) |" in text
    assert "|  | calls OK / total | 3,000 / 3,000 | 3,000 / 3,000 | 3,000 / 3,000 |" in text
    rows = {t: (m, v) for t, m, v in report.targets(results)}
    rate = "Server load: requests/s ≥ 1.5× grpcio's, every call OK, 50 connections × 100 streams"
    cpu = "Server load: server CPU/request ≤ 0.5× grpcio's, every call OK, 1 connection × 1 stream"
    assert rows[rate] == ("1.60×", "PASS")
    assert rows[cpu] == ("0.45×", "PASS")


def test_load_verdict_fails_when_a_call_is_not_ok_whatever_the_ratio() -> None:
    # Our server is fast and cheap, but one round's server count fell short by one call.
    ours = [_load_run(16000, 40.0), _load_run(16000, 40.0, ok=999), _load_run(16000, 40.0)]
    results = _load_results(ours, _load_run(10000, 100.0), _load_run(4000, 200.0))
    rows = {t: (m, v) for t, m, v in report.targets(results)}
    rate = "Server load: requests/s ≥ 1.5× grpcio's, every call OK, 10 connections × 10 streams"
    assert rows[rate] == ("1.60×; 1 of 3,000 calls not OK", "FAIL")
    cpu = "Server load: server CPU/request ≤ 0.5× grpcio's, every call OK, 10 connections"
    assert rows[cpu + " × 10 streams"][1] == "FAIL"
    text = report.render(results)
    assert (
        "|  | calls OK / total | 2,999 / 3,000 (NOT OK) | 1,000 / 1,000 | 1,000 / 1,000 |" in text
    )
    assert (
        "- wove_h2grpc.Server, 10 connections × 10 streams, round 2: "
        "server completed 999 calls, not 1,000" in text
    )
    # A round that did not run at all fails the level too (its calls count as not OK).
    errored = _load_results(
        [_load_run(16000, 40.0), {"error": "h2load timed out after 300 s"}],
        _load_run(10000, 100.0),
        _load_run(4000, 200.0),
    )
    rows = {t: (m, v) for t, m, v in report.targets(errored)}
    assert rows[rate] == ("1.60×; 1,000 of 2,000 calls not OK", "FAIL")
    # Our server never started: every round an error, both verdicts fail.
    absent = _load_results([{"error": "server h2-echo did not start"}] * 3, _load_run(1, 1), {})
    rows = {t: (m, v) for t, m, v in report.targets(absent)}
    assert rows[rate] == ("no figure; 3,000 of 3,000 calls not OK", "FAIL")
    assert rows[cpu + " × 10 streams"][1] == "FAIL"
    # Slower than 1.5x fails with every call OK; grpcio's own shortfall is its own row's note.
    slow = _load_results(_load_run(12000, 40.0), _load_run(10000, 100.0, ok=600), _load_run(1, 1))
    rows = {t: (m, v) for t, m, v in report.targets(slow)}
    assert rows[rate] == ("1.20×", "FAIL")
    assert "1,000 / 1,000 | 600 / 1,000 (NOT OK) |" in report.render(slow)


def test_load_verdict_without_a_baseline_is_not_measured() -> None:
    results = _load_results(_load_run(16000, 40.0), {"error": "boom"}, _load_run(1, 1))
    rows = {t: (m, v) for t, m, v in report.targets(results)}
    rate = "Server load: requests/s ≥ 1.5× grpcio's, every call OK, 1 connection × 1 stream"
    assert rows[rate] == ("not measured", "n.a.")
    # Skipped for want of h2load: no rows, the reason is in the skip list.
    assert report.load_rows({"load": {}}) == []
    assert report.load_table({"load": {}}) == []


def test_skip_takes_load_and_refuses_unknown_sections() -> None:
    assert run.parse_args(["--skip", "clients,load"]).skip == {"clients", "load"}
    with pytest.raises(SystemExit):
        run.parse_args(["--skip", "lod"])


needs_h2load = pytest.mark.skipif(
    _load.find_h2load() is None, reason="h2load (Debian package nghttp2-client) not installed"
)


@needs_h2load
def test_a_call_the_server_did_not_complete_is_not_ok(tmp_path: Path) -> None:
    """h2load counts an unknown method's calls as succeeded (HTTP 200, the failure is in
    the grpc-status trailer); the server's count and the missing echoes say otherwise."""
    pytest.importorskip("wove_h2grpc.server")
    h2load = _load.find_h2load()
    assert h2load is not None
    data_file = tmp_path / "request.bin"
    data_file.write_bytes(_load.grpc_frame())
    level = _load.LOAD_LEVELS[0]
    proc = run.ServerProcess("h2-echo")
    try:
        wrong = run.load_run(proc, h2load, data_file, level, 50, 60.0, method="/bench.Echo/Nope")
        right = run.load_run(proc, h2load, data_file, level, 50, 60.0)
    finally:
        proc.stop()
    assert wrong["h2load_succeeded"] == 50 and wrong["calls_ok"] == 0
    assert "server completed 0 calls, not 50" in wrong["problems"]
    assert not _load.round_ok(wrong)
    assert right["calls_ok"] == 50 and _load.round_ok(right), right


@needs_h2load
def test_quick_run_produces_load_rows(tmp_path: Path) -> None:
    import json
    import subprocess

    for module in ("grpc", "grpclib"):
        # Found, not imported: other tests check that this process never imports grpc.
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    out = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks", "--quick"),
            *("--skip", "clients,imports,wove,loops", "--results-dir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "### Server load: h2load" in out.stdout
    for level in _load.LOAD_LEVELS:
        assert f"| {level.title} ({level.quick_requests:,} calls) | requests/s |" in out.stdout
    (path,) = tmp_path.glob("*-quick.json")
    load = json.loads(path.read_text())["load"]
    assert set(load["levels"]) == {lv.key for lv in _load.LOAD_LEVELS}
    for level in load["levels"].values():
        for entry in level["servers"].values():
            (only,) = entry["rounds"]
            assert "error" not in only and only["requests"] == level["requests"]
    ours = [lv["servers"]["h2"]["rounds"][0] for lv in load["levels"].values()]
    assert all(_load.round_ok(r) for r in ours), ours


def test_load_section_without_h2load_is_skipped_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_load, "find_h2load", lambda: None)
    skipped: List[str] = []
    args = run.parse_args(["--quick", "--results-dir", str(tmp_path)])
    assert run.bench_load(args, skipped) == {}
    assert skipped == [
        "server load: h2load is not installed (Debian package nghttp2-client), so no load figures"
    ]
    results = _results(90.0, 100.0, 200.0)
    results.update(load={}, skipped=skipped)
    text = report.render(results)
    assert "Server load" not in text  # no table, no verdict rows: nothing was measured
    assert "Skipped in this run: server load: h2load is not installed" in text


# ------------------------------------------------------------- PyPy rows and the floor


def _pypy_results(
    pypy_cpu: Dict[str, float], floor_cpu: Dict[str, float], ours_cpu: float = 90.0
) -> Dict[str, Any]:
    """``_results`` (grpc.aio at 100 µs/call) plus our client on PyPy in the scenarios of
    ``pypy_cpu`` and a floor per interpreter of ``floor_cpu``."""
    results = _results(ours_cpu, 100.0, 200.0)
    scenarios = results["servers"]["grpcio"]["scenarios"]
    for key, cpu in pypy_cpu.items():
        scenarios[key]["clients"][report.PYPY_CLIENT] = {
            "median": _figures(cpu),
            "rounds": [_figures(cpu)],
        }
    results["clients"].append(report.PYPY_CLIENT)
    results["machine"]["pypy"] = "PyPy 7.3.11 (Python 3.9.16)"
    if floor_cpu:
        results["floor"] = {
            "title": run.FLOOR_TITLE,
            "server": "grpcio",
            "calls": 100,
            "unit": "round trips",
            "clients": {
                name: {"median": _figures(cpu), "rounds": [_figures(cpu)]}
                for name, cpu in floor_cpu.items()
            },
        }
    return results


def test_pypy_column_sits_beside_ours_with_its_ratio_to_grpc_aio() -> None:
    text = report.render(_pypy_results({"seq_100b": 55.0, "seq_1mib": 160.0}, {}))
    assert "| scenario | figure | wove_h2grpc | wove_h2grpc (PyPy) | grpc.aio | grpclib |" in text
    assert "|  | client CPU µs/call | 90 (0.90×) | 55 (0.55×) | 100 (1.00×) | 200 (2.00×) |" in text
    # Not measured on PyPy in that scenario: a dash, not an error and not a crash.
    assert "|  | client CPU µs/call | 90 (0.90×) | – | 100 (1.00×) | 200 (2.00×) |" in text
    assert "The `wove_h2grpc (PyPy)` column: PyPy 7.3.11 (Python 3.9.16)." in text


def test_pypy_target_verdicts() -> None:
    rows = {t: (m, v) for t, m, v in report.targets(_pypy_results({"seq_100b": 60.0}, {}))}
    seq = "PyPy client CPU/call ≤ 0.60× grpc.aio, 100 B sequential (grpcio server)"
    big = "PyPy client CPU/call ≤ 1.50× grpc.aio, 1 MiB sequential (grpcio server)"
    assert rows[seq] == ("0.60×", "PASS")  # the limit itself passes
    assert rows[big] == ("not measured", "n.a.")
    rows = {
        t: (m, v)
        for t, m, v in report.targets(_pypy_results({"seq_100b": 61.0, "seq_1mib": 151.0}, {}))
    }
    assert rows[seq] == ("0.61×", "FAIL")
    assert rows[big] == ("1.51×", "FAIL")
    # Without a PyPy run the rows say so.
    rows = {t: (m, v) for t, m, v in report.targets(_results(90.0, 100.0, 200.0))}
    assert rows[seq] == ("not measured", "n.a.")


def test_floor_table_and_verdicts_compare_each_interpreter_with_its_own_floor() -> None:
    results = _pypy_results({"seq_100b": 30.0}, {"CPython": 45.0, "PyPy": 12.0})
    assert report.floor_ratio(results, "CPython") == pytest.approx(2.0)  # 90 / 45
    assert report.floor_ratio(results, "PyPy") == pytest.approx(2.5)  # 30 / 12
    text = report.render(results)
    assert "### Floor: raw asyncio TCP echo, 100 B sequential (100 round trips)" in text
    assert "| figure | CPython | PyPy |" in text
    assert "| client CPU µs/round trip | 45 | 12 |" in text
    assert "| our 100 B sequential CPU/call (grpcio server) ÷ the floor's | 2.00× | 2.50× |" in text
    rows = {t: (m, v) for t, m, v in report.targets(results)}
    title = "CPU/call{} ≤ 2× the floor (raw asyncio TCP echo, {}), 100 B sequential (grpcio server)"
    assert rows[title.format("", "CPython")] == ("2.00×", "PASS")
    assert rows[title.format(" on PyPy", "PyPy")] == ("2.50×", "FAIL")
    # A floor without our PyPy figure: not measured; no floor at all: no floor rows.
    results = _pypy_results({}, {"CPython": 30.0, "PyPy": 12.0})
    rows = {t: (m, v) for t, m, v in report.targets(results)}
    assert rows[title.format("", "CPython")] == ("3.00×", "FAIL")
    assert rows[title.format(" on PyPy", "PyPy")] == ("not measured", "n.a.")
    titles = [t for t, _, _ in report.targets(_results(90.0, 100.0, 200.0))]
    assert not [t for t in titles if "floor" in t]
    assert "### Floor" not in report.render(_results(90.0, 100.0, 200.0))


def test_pypy_and_floor_specs() -> None:
    by_key = {s.key: s for s in run.SCENARIOS}
    with_pypy = [s.key for s in run.SCENARIOS if s.pypy_warmup is not None]
    assert {"seq_100b", "conc64_100b", "seq_1mib"} <= set(with_pypy)
    assert all(not by_key[k].streaming for k in with_pypy)
    clients = ["wove_h2grpc", "grpc.aio", "grpclib"]
    assert run.scenario_clients(by_key["seq_100b"], clients, pypy=True) == [
        "wove_h2grpc",
        run.PYPY_CLIENT,
        "grpc.aio",
        "grpclib",
    ]
    assert run.scenario_clients(by_key["seq_100b"], clients, pypy=False) == clients
    assert run.scenario_clients(by_key["burst_10k"], clients, pypy=True) == clients
    assert run.scenario_clients(by_key["seq_1mib"], ["grpc.aio"], pypy=True) == [
        run.PYPY_CLIENT,
        "grpc.aio",
    ]
    # PyPy warms up longer: its JIT compiles the hot paths during the warm-up.
    spec = run.pypy_spec(by_key["seq_100b"], 7)
    assert spec["client"] == "wove_h2grpc" and spec["warmup"] == 2000 and spec["calls"] == 3000
    assert run.pypy_spec(by_key["seq_1mib"], 7)["warmup"] == 100
    assert run.pypy_spec(by_key["seq_100b"], 7, quick=True)["warmup"] == 64
    floor = run.floor_spec(by_key["seq_100b"], 8)
    assert floor["client"] == "raw" and floor["warmup"] == 200 and floor["size"] == 100
    assert run.floor_spec(by_key["seq_100b"], 8, pypy=True)["warmup"] == 2000


def test_pypy_probe_refuses_what_is_not_a_pypy() -> None:
    version, reason = run.probe_pypy(None)
    assert version is None and reason is not None and "--pypy" in reason
    if sys.implementation.name != "pypy":  # this interpreter imports the client
        version, reason = run.probe_pypy(sys.executable)
        name = sys.implementation.name
        assert version is None and reason == f"{sys.executable} is {name}, not PyPy"
    version, reason = run.probe_pypy("/nonexistent/pypy3")
    assert version is None and reason is not None and "did not run" in reason
    args = run.parse_args(["--pypy", "/opt/pypy/bin/python"])
    assert args.pypy == "/opt/pypy/bin/python" and run.parse_args([]).pypy is None


class _Transport:
    def __init__(self) -> None:
        self.written: list = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))


def test_raw_echo_framing_across_chunk_boundaries() -> None:
    stream = b"".join(_servers.raw_frame(m) for m in (b"a" * 100, b"", b"xyz"))
    assert stream[:4] == (100).to_bytes(4, "big")
    for step in (1, 3, 7, len(stream)):
        messages = _servers.RawMessages()
        got = []
        for pos in range(0, len(stream), step):
            got += messages.feed(stream[pos : pos + step])
        assert got == [b"a" * 100, b"", b"xyz"]


def test_raw_echo_server_and_client_protocols() -> None:
    import asyncio

    server = _servers.RawEcho()
    server.connection_made(_Transport())
    frame = _servers.raw_frame(b"p" * 100)
    server.data_received(frame[:50])
    assert server.transport.written == []  # half a message: nothing to echo yet
    server.data_received(frame[50:] + frame)
    assert server.transport.written == [frame, frame]

    async def exchange() -> None:
        loop = asyncio.get_running_loop()
        client = _client.RawClient(loop)
        client.connection_made(_Transport())
        first = asyncio.ensure_future(client.call(b"one"))
        second = asyncio.ensure_future(client.call(b"two"))
        await asyncio.sleep(0)
        assert client.transport.written == [_servers.raw_frame(b"one"), _servers.raw_frame(b"two")]
        client.data_received(b"".join(client.transport.written))  # replies answer in order
        assert await first == b"one" and await second == b"two"
        third = asyncio.ensure_future(client.call(b"three"))
        await asyncio.sleep(0)
        client.connection_lost(None)
        with pytest.raises(ConnectionError):
            await third

    asyncio.run(exchange())


# ------------------------------------------------------------------ event loops


def _loop_results(client: Dict[str, Any], server: Dict[str, Any]) -> Dict[str, Any]:
    def part(variants: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "seq_100b": {
                "title": "100 B sequential",
                "calls": 100,
                "variants": {v: {"median": m, "rounds": [m]} for v, m in variants.items()},
            }
        }

    results = _results(100.0, 100.0, 100.0)
    results["loops"] = {"uvloop": "0.23.0", "client": part(client), "server": part(server)}
    return results


def test_loop_spec_runs_our_client_on_the_loop_and_counts_the_server() -> None:
    by_key = {s.key: s for s in run.SCENARIOS}
    spec = run.loop_spec(by_key["seq_1mib"], 4321, loop="uvloop", server_pid=77, quick=True)
    assert spec["client"] == "wove_h2grpc" and spec["port"] == 4321
    assert spec["loop"] == "uvloop" and spec["server_pid"] == 77
    assert spec["scenario"] == "sequential" and spec["size"] == 1024 * 1024
    assert spec["calls"] == by_key["seq_1mib"].quick_calls
    assert set(run.LOOP_SCENARIOS) <= set(by_key) and run.LOOPS == ("asyncio", "uvloop")
    assert not any(by_key[k].streaming for k in run.LOOP_SCENARIOS)


def test_loop_table_puts_uvloop_beside_asyncio_with_its_ratio() -> None:
    fast = dict(_figures(80.0, rate=1500.0), server_cpu_us_per_call=60.0)
    slow = dict(_figures(100.0, rate=1000.0), server_cpu_us_per_call=120.0)
    text = report.render(_loop_results({"asyncio": slow, "uvloop": fast}, {"asyncio": slow}))
    assert "### Event loop: asyncio against uvloop 0.23.0" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    client_rows = [r for r in rows if "client CPU µs/call | 100 | 80 (0.80×)" in r]
    assert len(client_rows) == 1
    assert any("| calls/s | 1,000 | 1,500 (1.50×) |" in r for r in rows)
    # A variant that was not measured is a dash, never a ratio against nothing.
    assert any("| server CPU µs/call | 120 | – |" in r for r in rows)


def test_loop_table_shows_a_failed_variant_as_an_error_and_is_absent_when_skipped() -> None:
    ok = _figures(100.0)
    text = report.render(_loop_results({"asyncio": ok, "uvloop": {"error": "boom"}}, {}))
    assert "| client CPU µs/call | 100 | error |" in text
    results = _results(100.0, 100.0, 100.0)
    results["loops"] = {}
    assert "Event loop" not in report.render(results)


def test_loops_are_skipped_with_the_reason_when_uvloop_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    reason = run.uvloop_available()
    assert reason is not None and "uvloop is not installed" in reason
    skipped: list = []
    assert run.bench_loops(run.parse_args(["--quick"]), skipped) == {}
    assert skipped == [f"event loops (asyncio vs uvloop): {reason}"]
    results = _results(100.0, 100.0, 100.0)
    results["skipped"] = skipped
    assert "Skipped in this run: event loops (asyncio vs uvloop): uvloop is not" in (
        report.render(results)
    )
    assert run.parse_args(["--skip", "loops,wove"]).skip == {"loops", "wove"}


def test_run_on_loop_and_process_cpu() -> None:
    async def which() -> bool:
        import asyncio

        return "uvloop" in repr(type(asyncio.get_running_loop()).__mro__)

    # asyncio.run(): asyncio's loop in a benchmark child (uvloop's in the uvloop test lane).
    assert _client.run_on_loop("asyncio", which) is (
        os.environ.get("WOVE_H2GRPC_TEST_LOOP") == "uvloop"
    )
    if run.uvloop_available() is None:
        assert _client.run_on_loop("uvloop", which) is True
    with pytest.raises(SystemExit):
        _client.run_on_loop("trio", which)
    mine = _client.proc_cpu_seconds(os.getpid())
    assert mine is not None and mine > 0
    assert _client.proc_cpu_seconds(2**22 + 12345) is None  # above Linux's pid_max


@pytest.mark.skipif(run.uvloop_available() is not None, reason="uvloop is not installed")
def test_our_server_and_client_on_uvloop_measure_each_other() -> None:
    by_key = {s.key: s for s in run.SCENARIOS}
    proc = run.ServerProcess("h2-echo", loop="uvloop")
    try:
        spec = run.loop_spec(
            by_key["seq_100b"], proc.port, loop="uvloop", server_pid=proc.proc.pid, quick=True
        )
        result = run.run_child("_client.py", spec, timeout=60)
    finally:
        proc.stop()
    assert "error" not in result, result
    assert result["calls"] == spec["calls"] and result["server_cpu_us_per_call"] >= 0
