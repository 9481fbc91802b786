"""Instructions per unary call, counted with valgrind, for this tree or another checkout.

``python -m benchmarks.instructions [--baseline /other/checkout] [--side client|server]
[--concurrency N]`` runs our echo ``Server`` and our ``Channel`` in two processes, one of
them (``--side``) under ``valgrind --tool=callgrind``, for 1,000 and for 3,000 calls of
100 B, and prints the difference divided by 2,000: the instructions one call costs, with
start-up and shutdown cancelled out. CPU times on a shared machine swing by a third; this
count moves by well under one percent between runs, so it shows a change of a few percent.

Each process imports the tree it measures: the editable-install finder of the venv is
dropped first, so the tree on ``sys.path`` wins (with ``--baseline``, the other side always
runs this tree).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

REPO_DIR = Path(__file__).resolve().parent.parent

# Run as ``python -c BOOT TREE SCRIPT ARGS``: import wove_h2grpc from TREE, then run SCRIPT.
BOOT = (
    "import runpy, sys; tree = sys.argv[1]; "
    "sys.meta_path[:] = [f for f in sys.meta_path "
    "if not type(f).__module__.startswith('__editable__')]; "
    "sys.path.insert(0, tree); sys.argv = sys.argv[2:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)

SERVER = """
import asyncio, sys
from wove_h2grpc import Server
N = int(sys.argv[1])
async def main():
    done = asyncio.Event()
    count = 0
    async def echo(request, context):
        nonlocal count
        count += 1
        if count >= N:
            asyncio.get_running_loop().call_soon(done.set)
        return request
    server = Server({"/e.E/Echo": echo})
    print("READY", await server.start("127.0.0.1:0"), flush=True)
    await done.wait()
    await asyncio.sleep(0.05)
    await server.stop()
asyncio.run(main())
"""

CLIENT = """
import asyncio, sys
from wove_h2grpc import Channel
async def main(port, n, concurrency):
    async with Channel(f"127.0.0.1:{port}") as channel:
        rpc = channel.unary_unary("/e.E/Echo")
        payload = b"x" * 100
        limit = asyncio.Semaphore(concurrency)
        async def one():
            async with limit:
                await rpc(payload, timeout=60)
        if concurrency == 1:
            for _ in range(n):
                await rpc(payload, timeout=60)
        else:
            await asyncio.gather(*(one() for _ in range(n)))
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
"""


def _command(tree: Path, script: Path, args: Sequence[str], counted: Optional[Path]) -> List[str]:
    command = [sys.executable, "-c", BOOT, str(tree), str(script), *args]
    if counted is None:
        return command
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={counted}", *command]


def count(tree: Path, side: str, calls: int, concurrency: int, work: Path) -> int:
    """Instructions of the ``side`` process over a run of ``calls`` calls."""
    (work / "server.py").write_text(SERVER)
    (work / "client.py").write_text(CLIENT)
    out = work / f"callgrind.{side}.{calls}"
    server_tree = tree if side == "server" else REPO_DIR
    client_tree = tree if side == "client" else REPO_DIR
    server = subprocess.Popen(
        _command(server_tree, work / "server.py", [str(calls)], out if side == "server" else None),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.match(r"READY (\d+)", line)
        if not match:
            raise RuntimeError(f"the server did not start: {line!r}")
        client_args = [match.group(1), str(calls), str(concurrency)]
        client_out = out if side == "client" else None
        subprocess.run(
            _command(client_tree, work / "client.py", client_args, client_out),
            check=True,
            stderr=subprocess.DEVNULL,
            timeout=900,
        )
        server.wait(timeout=900)
    finally:
        if server.poll() is None:
            server.kill()
    text = out.read_text()
    total = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if not total:
        raise RuntimeError(f"no instruction total in {out}")
    out.unlink()
    return int(total.group(1))


def per_call(tree: Path, side: str, concurrency: int, work: Path) -> float:
    return (
        count(tree, side, 3000, concurrency, work) - count(tree, side, 1000, concurrency, work)
    ) / 2000


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    parser.add_argument("--baseline", type=Path, help="another checkout to count too")
    parser.add_argument("--side", choices=("client", "server"), default="client")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    if subprocess.run(["valgrind", "--version"], capture_output=True).returncode != 0:
        parser.error("valgrind is not installed")
    trees = {"this tree": REPO_DIR}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    figures = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for name, tree in trees.items():
            figures[name] = per_call(tree, args.side, args.concurrency, Path(tmp))
            sys.stderr.write(f"{name}: {figures[name]:,.0f} instructions per call\n")
    sys.stdout.write(
        f"{args.side}, 100 B unary calls, {args.concurrency} in flight: instructions per call"
        f" ({time.monotonic() - started:.0f} s)\n"
    )
    for name, figure in figures.items():
        sys.stdout.write(f"  {name}: {figure:,.0f}\n")
    if "baseline" in figures:
        sys.stdout.write(f"  this / baseline: {figures['this tree'] / figures['baseline']:.3f}\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
