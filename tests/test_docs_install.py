"""Install instructions: one page says how (docs/install.md), the others link to it, and no
command anywhere installs the package from PyPI, where it is not published.

The install blocks themselves are run as written, in fresh clones and virtual environments
with PyPI for the dependencies, by ``.ci/check_install.py`` (CI's ``install-docs`` lane); this
module checks offline that the script runs exactly those blocks and that a built wheel holds
every package of the source tree.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

from _support import REPO_DIR

INSTALL_PAGE = REPO_DIR / "docs" / "install.md"
PAGES = [REPO_DIR / "README.md", *sorted((REPO_DIR / "docs").glob("*.md"))]
# What a pip command in the docs may install: the source tree, its extras, a wheel built from
# it, a git URL of it, and the build tool.
ALLOWED_TARGETS = {".", "-e", ".[test]", ".[dev]", "build", "dist/wove_h2grpc-*.whl"}


def _sh_commands(page: Path) -> List[str]:
    text = page.read_text(encoding="utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _pip_installs(command: str) -> List[List[str]]:
    """The arguments of each ``pip install`` in a shell command line."""
    if "pip install" not in command:
        return []
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    found = []
    for i in range(len(words) - 1):
        if words[i : i + 2] == ["pip", "install"]:
            args = []
            for word in words[i + 2 :]:
                if word in {"&&", "||", ";", "|"}:
                    break
                args.append(word)
            found.append(args)
    return found


def test_install_page_is_in_the_site_and_says_why() -> None:
    assert "install.md" in (REPO_DIR / "mkdocs.yml").read_text(encoding="utf-8")
    text = INSTALL_PAGE.read_text(encoding="utf-8")
    assert "not published on PyPI, so `pip install wove_h2grpc` fails" in text
    headings = re.findall(r"^## (.*)$", text, re.M)
    assert headings[:3] == [
        "From a clone",
        "As a wheel built with `python -m build`",
        "From a git URL",
    ]


def test_check_install_runs_exactly_the_pages_blocks() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO_DIR / ".ci" / "check_install.py"), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    listed = done.stdout.splitlines()
    commands = [c for c in _sh_commands(INSTALL_PAGE) if c.startswith("python3 -m venv")]
    assert listed == commands
    assert len(listed) == 3
    assert "pip install . " in listed[0] + " "
    assert "python -m build && pip install dist/wove_h2grpc-*.whl" in listed[1]
    assert 'pip install "git+file://$PWD"' in listed[2]
    ci = (REPO_DIR / ".ci" / "run").read_text(encoding="utf-8")
    assert "lane install-docs tool .venv/bin/python .ci/check_install.py\n" in ci


def test_no_command_installs_the_package_from_pypi() -> None:
    wrong: List[Tuple[str, str]] = []
    for page in PAGES:
        for command in _sh_commands(page):
            for args in _pip_installs(command):
                for arg in args:
                    if arg not in ALLOWED_TARGETS and not arg.startswith("git+"):
                        wrong.append((page.name, command))
    assert wrong == []


def test_pages_that_install_link_to_the_install_page() -> None:
    missing = []
    for page in PAGES:
        if page == INSTALL_PAGE:
            continue
        text = page.read_text(encoding="utf-8")
        installs = any(_pip_installs(c) for c in _sh_commands(page))
        mentions = "pip install wove_h2grpc" in text
        link = "docs/install.md" if page.name == "README.md" else "install.md"
        if (installs or mentions) and f"]({link}" not in text:
            missing.append(page.name)
    assert missing == []


def test_the_wheel_holds_every_package_of_the_source_tree() -> None:
    # pyproject.toml lists the packages by name: a package directory missing there would be
    # left out of every wheel (and of `pip install .`) while the tests, run from the source
    # tree, still pass.
    text = (REPO_DIR / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r"^packages = \[(.*?)\]", text, re.M | re.S)
    assert match is not None
    listed = set(re.findall(r'"([^"]+)"', match.group(1)))
    source = REPO_DIR / "wove_h2grpc"
    on_disk = {
        ".".join(init.parent.relative_to(REPO_DIR).parts) for init in source.rglob("__init__.py")
    }
    assert listed == on_disk
    assert (source / "py.typed").is_file()
