"""The benchmark harness's pure parts: medians, percentiles, tables, verdicts, docs, sizes.

The harness itself (servers and clients in subprocesses) is exercised by
``python -m benchmarks --quick`` in ``.ci/run``; these tests pin what it computes and
writes, without starting anything and without importing grpc.
"""

# The tables use the multiplication sign; the assertions quote them exactly.
# ruff: noqa: RUF001

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import _client, _env, report, run  # noqa: E402


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
