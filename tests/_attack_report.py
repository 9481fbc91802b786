"""Rows of the attack suite's table, shared by the server-side and client-side attack tests.

Each attack test records one ``AttackRow``; ``tests/attacks/conftest.py`` prints every row
recorded in the session as one table at the end of the pytest run (the ``attacks`` lane's
output), and ``tests/attack_table.py`` formats the same rows as Markdown for the docs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence

ROWS: List[AttackRow] = []


@dataclasses.dataclass
class AttackRow:
    """One attack against one target: how the target answered and what it cost others.

    ``side`` is ``server`` (a hostile client against a server) or ``client`` (a hostile server
    against our Channel). ``probe_p99_ms`` and ``probe_lost`` describe a well-behaved peer on
    another connection while the attack ran; ``fresh_ms`` is how long a new connection's first
    call took once the attack ended. RSS figures are the attacked process's, in MiB.
    """

    side: str
    attack: str
    target: str
    reaction: str
    probe_p99_ms: Optional[float] = None
    probe_calls: int = 0
    probe_lost: int = 0
    fresh_ms: Optional[float] = None
    rss_before_mib: Optional[float] = None
    rss_peak_mib: Optional[float] = None
    rss_after_mib: Optional[float] = None

    @property
    def rss_growth_mib(self) -> Optional[float]:
        if self.rss_before_mib is None or self.rss_peak_mib is None:
            return None
        return self.rss_peak_mib - self.rss_before_mib


def record(row: AttackRow) -> AttackRow:
    """Keep ``row`` for the session's table and return it."""
    ROWS.append(row)
    return row


def rss_mib(pid: Optional[int] = None) -> float:
    """Resident set size of a process (this one by default) in MiB, from /proc."""
    path = f"/proc/{pid if pid is not None else 'self'}/statm"
    with open(path, encoding="ascii") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


COLUMNS = (
    "side",
    "attack",
    "target",
    "reaction",
    "probe p99 ms",
    "probe lost/calls",
    "fresh ms",
    "RSS before/peak/after MiB",
)


def cells(row: AttackRow) -> List[str]:
    """The table cells of one row, as strings."""
    rss = "/".join(_fmt(v, 0) for v in (row.rss_before_mib, row.rss_peak_mib, row.rss_after_mib))
    return [
        row.side,
        row.attack,
        row.target,
        row.reaction,
        _fmt(row.probe_p99_ms),
        f"{row.probe_lost}/{row.probe_calls}",
        _fmt(row.fresh_ms),
        rss,
    ]


def text_table(rows: Sequence[AttackRow]) -> str:
    """A fixed-width table of ``rows`` for a terminal."""
    table = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table
    )


def markdown_table(rows: Sequence[AttackRow], targets: Sequence[str]) -> str:
    """One Markdown row per attack with each target's reaction, probe p99 and RSS growth."""
    by_attack: Dict[str, Dict[str, AttackRow]] = {}
    for row in rows:
        by_attack.setdefault(row.attack, {})[row.target] = row
    head = ["attack"]
    for target in targets:
        head += [
            f"{target}: reaction",
            f"{target}: probe p99 ms",
            f"{target}: RSS growth peak / kept MiB",
        ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for attack, per_target in by_attack.items():
        line = [attack]
        for target in targets:
            row = per_target.get(target)
            if row is None:
                line += ["-", "-", "-"]
            else:
                lost = f" ({row.probe_lost} lost)" if row.probe_lost else ""
                kept = (
                    None
                    if row.rss_after_mib is None or row.rss_before_mib is None
                    else row.rss_after_mib - row.rss_before_mib
                )
                growth = f"{_fmt(row.rss_growth_mib, 0)} / {_fmt(kept, 0)}"
                line += [row.reaction, _fmt(row.probe_p99_ms) + lost, growth]
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)
