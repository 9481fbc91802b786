"""The Python example of docs/health.md runs as written and prints what it says."""

from __future__ import annotations

from pathlib import Path

from _support import doc_python_blocks, run_doc_example


def test_health_page_example_runs(tmp_path: Path) -> None:
    blocks = doc_python_blocks("health.md")
    assert len(blocks) == 1
    result = run_doc_example(blocks[0], tmp_path, "health_example")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pkg.Orders: SERVING\n", result.stdout + result.stderr
