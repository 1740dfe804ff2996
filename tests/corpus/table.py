"""Run the corpus and print its table (case x release x expected / got), as in TESTING.md.

    python tests/corpus/table.py                 # runs tests/e2e/test_corpus.py (root), prints
    python tests/corpus/table.py --from FILE     # prints the table of an earlier run's records
    python tests/corpus/table.py -- -k bookworm  # extra pytest arguments after --

The test appends one JSON line per check to $PORTABLE_SERVICE_CORPUS_RESULTS; this script
sets it, runs pytest, and turns the lines into a Markdown table. Exit code: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the tests package is found from the repo

from tests.corpus.cases import load_cases  # noqa: E402

RELEASES = (("bullseye", "247"), ("bookworm", "252"), ("trixie", "257"))


def cell(rec: dict | None) -> str:
    if rec is None:
        return "-"
    got = rec["got"].split(":", 1)[0] if rec["step"] in ("try", "verify", "build") else rec["got"]
    if rec["step"] == "verify" and (counts := re.search(r"\d+ error\(s\), \d+ warning\(s\)",
                                                        rec["got"])):
        got += f" ({counts[0]})"
    if rec["step"] == "probe" and not rec["ok"] and "no answer" in got:
        got = "no answer"
    got = " ".join(got.split())  # one table line
    if len(got) > 48:
        got = got[:45] + "..."  # the whole text is in the list below the table
    return ("ok " if rec["ok"] else "**FAIL** ") + got.replace("|", "\\|")


def table(records: list[dict]) -> str:
    by = {(r["case"], r["release"], r["step"]): r for r in records}
    head = ["case", "expect", "build", "verify: expected", "verify: got"]
    for _suite, systemd in RELEASES:
        head += [f"{systemd} try", f"{systemd} probe"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for case in load_cases():
        if not any(k[0] == case.name for k in by):
            continue
        row = [case.name, "works" if case.works else f"fails (try: {case.try_.text()})",
               cell(by.get((case.name, "-", "build"))), case.verify.text(),
               cell(by.get((case.name, "-", "verify")))]
        for suite, _ in RELEASES:
            row += [cell(by.get((case.name, suite, "try"))), cell(by.get((case.name, suite, "probe")))]
        lines.append("| " + " | ".join(row) + " |")
    failed = [r for r in records if not r["ok"]]
    if failed:
        lines += ["", "What the failing checks got:", ""]
        lines += [f"- {r['case']} {r['release']} {r['step']} (expected {r['expected']}): {r['got']}"
                  for r in failed]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", metavar="FILE",
                        help="records of an earlier run (JSON lines) instead of running")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    code = 0
    if args.source:
        path = Path(args.source)
    else:
        path = Path(tempfile.mkstemp(prefix="corpus-", suffix=".jsonl")[1])
        env = {**os.environ, "PORTABLE_SERVICE_CORPUS_RESULTS": str(path)}
        code = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "tests/e2e/test_corpus.py", *args.pytest_args],
                              cwd=REPO, env=env, stdout=sys.stderr, check=False).returncode
        print(f"records: {path}", file=sys.stderr)
    records = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    print(table(records))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
