"""Run every install command of ``docs/install.md`` as written (used by ``.ci/run``).

    python .ci/check_install.py          # run each block, one line of result per block
    python .ci/check_install.py --list   # print the blocks it would run, one per line

Each ``sh`` block of docs/install.md that starts with ``python3 -m venv`` runs with bash in a
fresh ``git clone`` of this repository (its committed ``HEAD``: uncommitted changes are not
what a user gets), with no virtual environment active. Then, from a directory outside the
clone so that nothing is imported from the source tree, the new environment's
``wove-h2grpc --version`` must print this package's version, ``wove_h2grpc`` must import from
that environment's site-packages, and ``wove-h2grpc demo --tasks 3`` must exit 0. Exits 1 if
any block fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "install.md"
BLOCK_TIMEOUT = 600


def install_blocks() -> List[Tuple[str, str]]:
    """(section heading, command) for every install block of docs/install.md, in order."""
    found = []
    heading = ""
    in_block = False
    lines: List[str] = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not in_block and line.startswith("## "):
            heading = line[3:].strip()
        elif not in_block and line == "```sh":
            in_block, lines = True, []
        elif in_block and line == "```":
            in_block = False
            command = "\n".join(lines)
            if command.startswith("python3 -m venv"):
                found.append((heading, command))
        elif in_block:
            lines.append(line)
    return found


def version() -> str:
    text = (ROOT / "wove_h2grpc" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", text)
    if match is None:
        raise SystemExit("cannot read __version__ from wove_h2grpc/_version.py")
    return match.group(1)


def clean_environment() -> Dict[str, str]:
    """This environment without an active virtual environment (as a new shell has it)."""
    env = dict(os.environ)
    venv = env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    if venv:
        bin_dir = os.path.join(venv, "bin")
        env["PATH"] = os.pathsep.join(
            p for p in env.get("PATH", "").split(os.pathsep) if p != bin_dir
        )
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(cmd: List[str], cwd: Path, env: Dict[str, str], timeout: float) -> Tuple[int, str]:
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return done.returncode, done.stdout + done.stderr


def check_block(index: int, heading: str, command: str, work: Path, expected: str) -> bool:
    clone = work / f"clone-{index}"
    elsewhere = work / f"outside-{index}"
    elsewhere.mkdir()
    env = clean_environment()
    started = time.monotonic()
    rc, out = run(["git", "clone", "-q", str(ROOT), str(clone)], work, env, 300)
    if rc != 0:
        print(f"install block {index} ({heading}): FAILED: git clone: {out.strip()}")
        return False
    rc, out = run(["bash", "-euo", "pipefail", "-c", command], clone, env, BLOCK_TIMEOUT)
    if rc != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        print(f"install block {index} ({heading}): FAILED (exit {rc}): {command}\n{tail}")
        return False
    bin_dir = clone / ".venv" / "bin"
    checks = [
        ([str(bin_dir / "wove-h2grpc"), "--version"], f"wove-h2grpc {expected}"),
        (
            [str(bin_dir / "python"), "-c", "import wove_h2grpc; print(wove_h2grpc.__file__)"],
            f"{clone / '.venv' / 'lib'}",
        ),
        ([str(bin_dir / "wove-h2grpc"), "demo", "--tasks", "3"], "demo OK"),
    ]
    for cmd, wanted in checks:
        rc, out = run(cmd, elsewhere, env, 120)
        if rc != 0 or wanted not in out:
            print(
                f"install block {index} ({heading}): FAILED: {' '.join(cmd[-2:])} "
                f"(exit {rc}, wanted {wanted!r}): {out.strip()}"
            )
            return False
    seconds = time.monotonic() - started
    print(f"install block {index} ({heading}): OK in {seconds:.1f} s: {command}")
    return True


def main(argv: List[str]) -> int:
    blocks = install_blocks()
    if argv[1:] == ["--list"]:
        for _heading, command in blocks:
            print(command)
        return 0
    if not blocks:
        print(f"no install blocks found in {DOC}")
        return 1
    expected = version()
    with tempfile.TemporaryDirectory(prefix="wove-h2grpc-install-") as tmp:
        results = [
            check_block(i, heading, command, Path(tmp), expected)
            for i, (heading, command) in enumerate(blocks, 1)
        ]
    passed = sum(results)
    print(f"install: {passed} of {len(blocks)} documented install commands work")
    return 0 if passed == len(blocks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
