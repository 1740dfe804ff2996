"""Every verb's --json document: its format id, its keys and their types (docs/json.md).

A key that changes type or goes away breaks consumers: it must come with a new
``format`` version, and this pin must be changed with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

UNIT = "[Service]\nExecStart=/usr/bin/env true\n"
STR, INT, BOOL, NULL = str, int, bool, type(None)
PAIR = {"path": STR, "reason": STR}

# verb -> {key: type, or a nested pin}; a list pin [x] means: a list whose items all match x
SCHEMAS: dict[str, dict[str, Any]] = {
    "build": {"image": STR, "bytes": INT, "pname": STR, "version": STR, "units": [STR],
              "writer": STR, "compression": STR, "block_size": INT, "entries": INT,
              "closure": {"paths": INT, "bytes": INT, "roots": [PAIR], "generated": [STR]},
              "verified": BOOL, "warnings": [STR]},
    "why": {"path": STR, "pname": STR, "found": BOOL, "chain": [PAIR]},
    "inspect": {"image": STR, "prefix": STR, "portable_pretty_name": (STR, NULL),
                "operating_system": (STR, NULL), "os_release_path": (STR, NULL),
                "os_release": dict, "units": [{"name": STR, "path": STR, "kind": STR}],
                "files": INT, "folders": INT, "symlinks": INT, "content_bytes": INT,
                "closure_roots": [PAIR], "filesystem": STR, "compressor": STR,
                "block_size": INT, "file_size": INT, "bytes_used": INT, "mkfs_time": INT,
                "verity": dict},
    "ls": {"image": STR, "path": STR,
           "entries": [{"name": STR, "kind": STR, "mode": STR, "uid": INT, "gid": INT,
                        "size": INT, "mtime": INT, "target": (STR, NULL)}]},
    "verify": {"image": STR, "ok": BOOL, "errors": INT, "warnings": INT,
               "problems": [{"severity": STR, "rule": STR, "path": STR, "message": STR,
                             "fix": STR}]},
    "diff": {"same": BOOL, "added": [STR], "removed": [STR],
             "changed": [{"path": STR, "change": STR}],
             "units": {"added": [STR], "removed": [STR], "changed": [STR]},
             "os_release": dict, "size": {"old": INT, "new": INT},
             "content_bytes": {"old": INT, "new": INT}},
    "size": {"total": INT, "folders": [{"path": STR, "bytes": INT}],
             "files": [{"path": STR, "bytes": INT}],
             "closure_roots": [{"path": STR, "reason": STR, "bytes": INT}]},
}


def check(value: Any, pin: Any, where: str) -> None:
    if isinstance(pin, dict):
        assert isinstance(value, dict), where
        assert sorted(value) == sorted(pin), f"{where}: keys {sorted(value)} != {sorted(pin)}"
        for key, sub in pin.items():
            check(value[key], sub, f"{where}.{key}")
    elif isinstance(pin, list):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, item in enumerate(value):
            check(item, pin[0], f"{where}[{i}]")
    else:
        # bool is an int in Python: an integer pin must not accept true/false
        kinds = pin if isinstance(pin, tuple) else (pin,)
        assert isinstance(value, kinds) and not (bool not in kinds and isinstance(value, bool)), \
            f"{where}: {value!r} is not {kinds}"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "portable_service", *args], cwd=cwd,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("json")
    (d / "demo.service").write_text(UNIT)
    (d / "portable.toml").write_text('pname = "demo"\nversion = "1"\nunits = ["demo.service"]\n'
                                     'squash-compression = "gzip"\nwriter = "native"\n')
    return d


@pytest.fixture(scope="module")
def built(work: Path) -> dict[str, Any]:
    proc = run("build", "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def document(proc: subprocess.CompletedProcess[str], verb: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert doc.pop("format") == f"portable-service/{verb}/1"
    return doc


def test_build(built: dict[str, Any], work: Path) -> None:
    doc = dict(built)
    assert doc.pop("format") == "portable-service/build/1"
    check(doc, SCHEMAS["build"], "build")
    assert doc["image"] == "result/demo_1.raw"
    assert doc["bytes"] == (work / "result/demo_1.raw").stat().st_size
    assert {"path": "/usr/bin/env", "reason": "program of ExecStart= in demo.service"} \
        in doc["closure"]["roots"]
    assert doc["verified"] is True and doc["warnings"] == []


@pytest.mark.parametrize(("verb", "args", "code"), [
    ("why", ["why", "/usr/bin/env"], 0),
    ("inspect", ["inspect", "IMG"], 0),
    ("ls", ["ls", "IMG", "/usr/bin"], 0),
    ("size", ["size", "IMG"], 0),
])
def test_documents(built: dict[str, Any], work: Path, verb: str, args: list[str],
                   code: int) -> None:
    argv = [built["image"] if a == "IMG" else a for a in args]
    proc = run(*argv, "--json", cwd=work)
    assert proc.returncode == code, proc.stderr
    check(document(proc, verb), SCHEMAS[verb], verb)


def test_verify_with_findings(built: dict[str, Any], work: Path) -> None:
    # clean: exit 0; --json=short is one line
    proc = run("verify", built["image"], "--json=short", cwd=work)
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1
    doc = document(proc, "verify")
    assert doc["ok"] is True and doc["problems"] == []
    bad = work / "other_1.raw"  # the prefix 'other' matches no unit: errors, exit 1
    bad.write_bytes((work / built["image"]).read_bytes())
    proc = run("verify", str(bad), "--json", cwd=work)
    assert proc.returncode == 1
    doc = document(proc, "verify")
    check(doc, SCHEMAS["verify"], "verify")
    assert doc["ok"] is False and doc["errors"] >= 1


def test_diff_and_why_exit_1_on_findings(built: dict[str, Any], work: Path) -> None:
    proc = run("diff", built["image"], built["image"], "--json", cwd=work)
    assert proc.returncode == 0
    assert document(proc, "diff")["same"] is True
    newer = run("build", "--version", "2", "-q", cwd=work)
    assert newer.returncode == 0, newer.stderr
    proc = run("diff", built["image"], "result/demo_2.raw", "--json", cwd=work)
    assert proc.returncode == 1, proc.stderr  # as diff(1): they differ
    doc = document(proc, "diff")
    check(doc, SCHEMAS["diff"], "diff")
    assert "IMAGE_VERSION" in doc["os_release"]
    proc = run("why", "/usr/bin/nope", "--json", cwd=work)
    assert proc.returncode == 1
    assert document(proc, "why") == {"path": "/usr/bin/nope", "pname": "demo", "found": False,
                                     "chain": []}


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_flags_before_or_after_the_verb(built: dict[str, Any], work: Path,
                                               where: str) -> None:
    flags = ["--json=short", "--quiet"]
    argv = [*flags, "inspect", built["image"]] if where == "before" \
        else ["inspect", built["image"], *flags]
    proc = run(*argv, cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1  # short: one line
    assert document(proc, "inspect")["prefix"] == "demo"


def test_bare_json_does_not_swallow_the_next_argument(built: dict[str, Any], work: Path) -> None:
    proc = run("inspect", "--json", built["image"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["image"] == built["image"]
    proc = run("--json", "ls", built["image"], "/etc", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "os-release" in [e["name"] for e in document(proc, "ls")["entries"]]
    proc = run("inspect", "--json=off", built["image"], cwd=work)
    assert proc.stdout.startswith("Image:")


def test_json_where_a_verb_has_no_facts(built: dict[str, Any], work: Path) -> None:
    proc = run("--json", "cat", built["image"], "/etc/os-release", cwd=work)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("portable-service: error: cat prints no facts to give as JSON; "
                           "drop --json (see --help)\n")
    proc = run("build", "--json", "--print-closure", cwd=work)
    assert proc.returncode == 2 and "both print on stdout" in proc.stderr


def test_docs_name_every_verb_schema() -> None:
    text = (REPO / "docs/json.md").read_text()
    for verb in [*SCHEMAS, "try"]:
        assert f"`portable-service/{verb}/1`" in text, verb
        assert f"## `{verb} --json`" in text, verb


def test_build_warnings_are_in_the_document(tmp_path: Path) -> None:
    """What the build warned about on stderr is in the document too, word for word."""
    (tmp_path / "demo.service").write_text("[Service]\nExecStart=/usr/bin/nonexistent-prog\n")
    proc = run("build", "--pname", "demo", "--version", "1", "--unit", "demo.service",
               "--allow-missing", "--writer", "native", "--json=short", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = document(proc, "build")
    check(doc, SCHEMAS["build"], "build")
    warning = ("ExecStart= in demo.service runs /usr/bin/nonexistent-prog, which does not exist "
               "on this host")
    assert doc["warnings"] == [warning]
    assert f"portable-service: warning: {warning}" in proc.stderr.splitlines()
    assert doc["closure"] == {"paths": 0, "bytes": 0, "roots": [], "generated": []}


def test_a_json_style_that_is_not_one(built: dict[str, Any], work: Path) -> None:
    proc = run("inspect", "--json=bogus", built["image"], cwd=work)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("portable-service inspect: error: --json=bogus is not a JSON style; "
                           "use --json, --json=pretty, --json=short, --json=off (see --help)\n")
