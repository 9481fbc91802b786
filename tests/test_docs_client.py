"""Every ``python`` block of docs/client.md is a complete script: run each one."""

from __future__ import annotations

from pathlib import Path

import pytest
from _support import doc_python_blocks, run_doc_example

BLOCKS = doc_python_blocks("client.md")


def test_doc_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_client_doc_example_runs(index: int, tmp_path: Path) -> None:
    done = run_doc_example(BLOCKS[index], tmp_path, f"example_{index}")
    assert done.returncode == 0, f"example {index} failed:\n{done.stdout}\n{done.stderr}"
