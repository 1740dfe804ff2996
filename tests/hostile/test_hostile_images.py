"""Crafted images for the read verbs: untrusted metadata is validated, never a traceback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import require_tool

RECORDS = {
    "roots-of-numbers": {"format": "portable-service closure 1", "roots": [1, 2]},
    "root-path-a-list": {"roots": [{"path": ["/x"], "reason": "content"}]},
    "parents-a-list": {"roots": [{"path": "/x", "reason": "r"}], "parents": ["/x"]},
    "parent-a-table": {"roots": [{"path": "/x", "reason": "r"}], "parents": {"/y": {"a": 1}}},
    "units-a-number": {"roots": [], "units": 3},
    "deep": "[" * 100_000 + "]" * 100_000,
    "not-json": "{roots: [",
}


def image_with_record(tmp: Path, record: object) -> Path:
    root = tmp / "root"
    for d in ("etc/systemd/system", "usr/lib/portable-service", "x", "proc", "sys", "dev",
              "run", "tmp", "var/tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    (root / "etc/systemd/system/rec.service").write_text("[Service]\nExecStart=/x/run\n")
    text = record if isinstance(record, str) else json.dumps(record)
    (root / "usr/lib/portable-service/closure.json").write_text(text)
    image = tmp / "rec_1.raw"
    subprocess.run(["mksquashfs", str(root), str(image), "-quiet", "-all-root", "-no-progress",
                    "-noappend"], check=True, capture_output=True)
    return image


@pytest.mark.parametrize("name", sorted(RECORDS))
@pytest.mark.parametrize("verb", [["size"], ["inspect"], ["inspect", "--json"], ["verify"]])
def test_hostile_closure_record(cli, tmp_path: Path, name: str, verb: list[str]) -> None:
    require_tool("mksquashfs")
    image = image_with_record(tmp_path, RECORDS[name])
    proc = cli(*verb, str(image))
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1), proc.stderr
    if verb == ["inspect", "--json"]:
        assert json.loads(proc.stdout)["closure_roots"] is None  # a bad record is no record
