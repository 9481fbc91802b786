"""The contributor commands of the README and the quickstart: the full one (with nginx and
HAProxy, as CI runs it) and the one without root, which deselects the ``balancers`` marker.
Every test that starts a balancer carries that marker, and only those do."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from typing import List, Set

import pytest
from _support import REPO_DIR, TESTS_DIR

FULL = (
    "bash .ci/install-balancers.sh && python3 -m venv .venv && . .venv/bin/activate && "
    "pip install -e '.[test]' && python -m pytest -q"
)
WITHOUT_ROOT = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && "
    'python -m pytest -q -m "not balancers"'
)
# What a test touches when it runs a balancer: the fixtures and the helpers that start one.
BALANCER_NAMES = {"nginx", "haproxy", "start_nginx", "start_haproxy", "_binary"}


def _sh_lines(path: str) -> List[str]:
    text = (REPO_DIR / path).read_text(encoding="utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)
    return [line for block in blocks for line in block.splitlines()]


@pytest.mark.parametrize("page", ["README.md", "docs/quickstart.md"])
def test_both_test_commands_are_documented(page: str) -> None:
    lines = _sh_lines(page)
    assert FULL in lines
    assert WITHOUT_ROOT in lines


def test_ci_runs_the_full_command_balancers_included() -> None:
    ci = (REPO_DIR / ".ci" / "run").read_text(encoding="utf-8")
    body = ci[ci.index("readme_tests() {") : ci.index("lane tests-cpython-main")]
    assert "bounded 900 python -m pytest -q\n" in body
    assert "balancers" not in body
    assert "step install-balancers tool bash .ci/install-balancers.sh" in ci


def test_the_marker_is_registered() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--markers"],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "@pytest.mark.balancers: needs Debian's nginx and HAProxy" in done.stdout


def _marked(node: ast.AST) -> bool:
    for decorator in getattr(node, "decorator_list", []):
        if ast.unparse(decorator) == "pytest.mark.balancers":
            return True
    return False


def _uses_a_balancer(node: ast.AST) -> bool:
    names: Set[str] = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    args = node.args  # type: ignore[attr-defined]
    names |= {a.arg for a in args.args + args.kwonlyargs}
    return bool(names & BALANCER_NAMES)


def test_exactly_the_tests_that_start_a_balancer_are_marked() -> None:
    wrong = []
    for path in sorted(TESTS_DIR.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.Assign) and "pytestmark" in ast.unparse(n) for n in tree.body):
            wrong.append(f"{path.name}: a module-wide pytestmark would hide which tests need it")
        tests = [
            n
            for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_")
        ]
        for node in tests:
            if _marked(node) != _uses_a_balancer(node):
                wrong.append(f"{path.name}::{node.name} marked={_marked(node)}")
    assert wrong == []


def test_not_balancers_leaves_out_only_the_balancer_tests() -> None:
    def collect(expression: str) -> List[str]:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only"),
                *("-q", "-m", expression, "tests/client/test_balancers.py"),
            ],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return [line for line in done.stdout.splitlines() if "::" in line]

    kept = collect("not balancers")
    left_out = collect("balancers")
    assert kept == ["tests/client/test_balancers.py::test_deploy_doc_shows_the_tested_configs"]
    assert len(left_out) == 5
    assert all("nginx" in t or "haproxy" in t for t in left_out), left_out
