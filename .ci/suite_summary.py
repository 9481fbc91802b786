"""Per-suite counts of one pytest lane, from its JUnit XML (used by ``.ci/run``).

    python .ci/suite_summary.py JUNIT_XML LANE_LABEL TSV_OUT
    python .ci/suite_summary.py --table TSV_OUT
    python .ci/suite_summary.py --files SUITE...

Each test file belongs to one suite by its name (SUITES below, first match wins): this is the
grouping the compatibility matrix of ``docs/compatibility.md`` reports. Prints one line such as
``suites: client 310 passed; wove 41 passed; worker 52 passed, 1 skipped`` and appends one
``lane<TAB>suite<TAB>passed<TAB>failed<TAB>skipped`` row per suite to TSV_OUT.
``--table`` prints those rows as a lane x suite table for the end of the CI log; ``--files``
lists the ``tests/**/test_*.py`` files of the named suites (the portability lanes' selection).
"""

from __future__ import annotations

import fnmatch
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

# (suite, file-name patterns). The client suite is the codecs, the Channel and its interop,
# fault and robustness tests (against grpcio and raw h2 peers) and the layering check; "server"
# is our Server; "wove" the executor and codec; "worker" the WorkerService and the CLI;
# "scaleout" round_robin/pick_first over replicas; "balancers" nginx/HAProxy in front of
# Servers; "docs" runs the documentation's examples; "attacks" the HTTP/2 attack suite
# (tests/attacks: hostile clients against servers, hostile servers against the Channel).
SUITES: List[Tuple[str, Tuple[str, ...]]] = [
    ("worker", ("test_worker*", "test_cli.py", "test_cli_*", "test_demo*")),
    ("wove", ("test_wove*", "test_executor*", "test_install*", "test_transport*")),
    ("server", ("test_server*",)),
    ("scaleout", ("test_scaleout*", "test_lb*", "test_round_robin*")),
    ("balancers", ("test_balancer*", "test_deploy*", "test_nginx*", "test_haproxy*")),
    ("docs", ("test_docs*",)),
    ("attacks", ("test_attacks*",)),
    ("bench", ("test_bench*",)),
    ("client", ("test_*",)),
]


def suite_of(file_name: str) -> str:
    """The suite a test file (base name) belongs to."""
    for suite, patterns in SUITES:
        if any(fnmatch.fnmatch(file_name, p) for p in patterns):
            return suite
    return "other"


def file_of(case: ET.Element) -> str:
    """Base name of a testcase's file: from ``file`` if present, else from ``classname``."""
    path = case.get("file")
    if path:
        return path.replace("\\", "/").rsplit("/", 1)[-1]
    # A collection error has an empty classname and the module (tests.test_x) as its name.
    parts = (case.get("classname") or case.get("name") or "").split(".")
    # classname is like tests.test_x or tests.test_x.TestClass
    for part in parts:
        if part.startswith("test_"):
            return part + ".py"
    return parts[-1] + ".py" if parts else "?"


def table(tsv_path: str) -> None:
    """Print lanes x suites, each cell ``passed/failed/skipped``."""
    cells: Dict[str, Dict[str, str]] = {}
    seen = set()
    with open(tsv_path, encoding="utf-8") as f:
        for line in f:
            lane, suite, passed, failed, skipped = line.rstrip("\n").split("\t")
            cells.setdefault(lane, {})[suite] = f"{passed}/{failed}/{skipped}"
            seen.add(suite)
    suites = [s for s in [name for name, _ in SUITES] + ["other"] if s in seen]
    print(f"{'lane':<22}" + "".join(f"{s:>14}" for s in suites))
    for lane, row in cells.items():
        print(f"{lane:<22}" + "".join(f"{row.get(s, '-'):>14}" for s in suites))


def files(suites: List[str]) -> None:
    """Print the test files (relative to the repository) that belong to ``suites``."""
    known = {name for name, _ in SUITES}
    unknown = [s for s in suites if s not in known]
    if unknown:
        raise SystemExit(f"unknown suite(s) {unknown}; known: {sorted(known)}")
    repo = Path(__file__).resolve().parent.parent
    for path in sorted((repo / "tests").rglob("test_*.py")):
        if suite_of(path.name) in suites:
            print(path.relative_to(repo).as_posix())


def main() -> int:
    if sys.argv[1:2] == ["--table"]:
        table(sys.argv[2])
        return 0
    if sys.argv[1:2] == ["--files"]:
        files(sys.argv[2:])
        return 0
    xml_path, lane, tsv_out = sys.argv[1:4]
    counts: Dict[str, Counter[str]] = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        counts.setdefault(suite_of(file_of(case)), Counter())[outcome] += 1
    order = [s for s, _ in SUITES] + ["other"]
    parts = []
    with open(tsv_out, "a", encoding="utf-8") as out:
        for suite in sorted(counts, key=order.index):
            c = counts[suite]
            text = f"{suite} {c['passed']} passed"
            if c["failed"]:
                text += f", {c['failed']} failed"
            if c["skipped"]:
                text += f", {c['skipped']} skipped"
            parts.append(text)
            out.write(f"{lane}\t{suite}\t{c['passed']}\t{c['failed']}\t{c['skipped']}\n")
    print("suites: " + ("; ".join(parts) if parts else "no test cases"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
