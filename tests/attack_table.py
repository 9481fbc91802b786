"""Run the server attacks of ``_attacks.py`` against our Server and grpcio's, one run, and
print the comparison as Markdown (the table in docs/security.md).

    python tests/attack_table.py [--only NAME ...] [--targets wove_h2grpc,grpcio]

Each attack gets a fresh server process of each kind (ours: ``attack_target.py`` with a 2 s
handshake timeout; grpcio: ``grpcio_server.py`` with its defaults), and the same probe.
Prints the terminal table as it goes and the Markdown table at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _attack_report import AttackRow, markdown_table, text_table
from _attacks import ATTACKS, Target, run_attack, start_grpcio, start_ours

STARTERS: Dict[str, Callable[[], Target]] = {"wove_h2grpc": start_ours, "grpcio": start_grpcio}


async def main(args: argparse.Namespace) -> None:
    targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    attacks = [a for a in ATTACKS if not args.only or a.name in args.only]
    rows: List[AttackRow] = []
    started = time.monotonic()
    for attack in attacks:
        for name in targets:
            target = STARTERS[name]()
            try:
                run = await run_attack(attack, target)
            finally:
                target.stop()
            rows.append(run.row)
            print(text_table([run.row]).splitlines()[-1], flush=True)
    print()
    print(text_table(rows))
    print()
    print(
        f"<!-- one run, {time.monotonic() - started:.0f} s, Python {platform.python_version()}"
        f" on {platform.machine()} -->"
    )
    print(markdown_table(rows, targets))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--targets", default="wove_h2grpc,grpcio")
    faulthandler.dump_traceback_later(600, exit=True)
    asyncio.run(main(parser.parse_args()))
