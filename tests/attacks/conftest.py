"""Prints the attack suite's table (every ``AttackRow`` recorded this session) after the run."""

from __future__ import annotations

from typing import Any

import _attack_report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _attack_report.ROWS:
        return
    terminalreporter.section("attack suite")
    terminalreporter.write_line(_attack_report.text_table(_attack_report.ROWS))
