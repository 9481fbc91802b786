"""Our client, or our server, against itself from another checkout, side by side in one run.

``python -m benchmarks.compare --baseline /path/to/other/checkout [--rounds N]`` starts the
grpcio echo server once, then measures the wove_h2grpc client of this tree and of the
baseline tree in alternating fresh processes, round by round (so both see the same machine
load), and prints the median client CPU per call of each and their ratio. Use it to show a
change costs no client CPU: a ratio <= 1.00 means this tree is as cheap or cheaper.

``--server h2`` compares the servers instead: each tree's ``wove_h2grpc.Server`` echo server
runs in its own process, this tree's client calls each in turn, and the figure is the server
process's CPU per call (user + system, from /proc).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from benchmarks.run import REPO_DIR, SCENARIOS, SERVERS, ServerProcess, client_spec, log, run_child

DEFAULT_SCENARIOS = ("seq_100b", "conc64_100b", "seq_1mib")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout's root")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS))
    parser.add_argument("--calls-scale", type=float, default=1.0, help="scale every call count")
    parser.add_argument(
        "--server",
        choices=("grpcio", "h2"),
        default="grpcio",
        help="grpcio: compare the clients against grpcio's server; h2: compare the servers",
    )
    args = parser.parse_args(argv)
    baseline = args.baseline.resolve()
    if not (baseline / "wove_h2grpc" / "__init__.py").exists():
        parser.error(f"{baseline} is not a wove_h2grpc checkout")
    wanted = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    scenarios = [s for s in SCENARIOS if s.key in wanted]
    trees = {"this": REPO_DIR, "baseline": baseline}
    compare_servers = args.server == "h2"
    cpu: Dict[str, Dict[str, List[float]]] = {s.key: {t: [] for t in trees} for s in scenarios}
    if compare_servers:
        servers = {name: ServerProcess(SERVERS["h2"], tree=tree) for name, tree in trees.items()}
    else:
        shared = ServerProcess(SERVERS["grpcio"])
        servers = {name: shared for name in trees}
    try:
        for round_no in range(args.rounds):
            for scenario in scenarios:
                # Alternate which tree goes first, so neither always runs on a warmer machine.
                order = list(trees) if round_no % 2 == 0 else list(reversed(trees))
                for name in order:
                    server = servers[name]
                    spec = client_spec(scenario, "wove_h2grpc", server.port)
                    calls = max(1, int(scenario.calls * args.calls_scale))
                    spec["calls"] = calls
                    client_tree = REPO_DIR if compare_servers else trees[name]
                    before = server.cpu_seconds()
                    result = run_child("_client.py", spec, timeout=600, tree=client_tree)
                    server_us = (server.cpu_seconds() - before) * 1e6 / calls
                    if "error" in result:
                        log(f"  r{round_no + 1} {scenario.key} {name}: {result['error']}")
                        continue
                    # A server stream's cost is per message, every other scenario's per call.
                    figure = (
                        server_us
                        if compare_servers
                        else float(
                            result.get("cpu_us_per_call", result.get("cpu_us_per_message", 0))
                        )
                    )
                    cpu[scenario.key][name].append(figure)
                    log(f"  r{round_no + 1} {scenario.key:12} {name:8} {figure:.1f} us")
    finally:
        for server in set(servers.values()):
            server.stop()
    if compare_servers:
        sys.stdout.write(
            "server CPU per call of each tree's wove_h2grpc.Server echo server (process CPU, "
            f"this tree's client), median of {args.rounds} rounds\n"
        )
    else:
        sys.stdout.write(
            "client CPU per call (per round trip or message in a streaming scenario) against "
            f"the grpcio echo server, median of {args.rounds} rounds\n"
        )
    sys.stdout.write(
        f"this tree: {REPO_DIR}; baseline: {baseline}\n\n"
        "| scenario | this tree (us) | baseline (us) | this / baseline |\n"
        "| --- | --- | --- | --- |\n"
    )
    for scenario in scenarios:
        ours, theirs = cpu[scenario.key]["this"], cpu[scenario.key]["baseline"]
        if not ours or not theirs:
            sys.stdout.write(f"| {scenario.title} | failed | failed | - |\n")
            continue
        a, b = statistics.median(ours), statistics.median(theirs)
        sys.stdout.write(f"| {scenario.title} | {a:.1f} | {b:.1f} | {a / b:.2f}x |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
