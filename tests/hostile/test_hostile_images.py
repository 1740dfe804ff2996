"""Crafted images for the read verbs: untrusted metadata is validated, never a traceback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool

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


def directory_bomb(tmp: Path, folders: int = 30, names: int = 3000) -> Path:
    """An image whose folders all point at one listing of ``names`` entries: a walk would
    visit folders x names entries from an image that stores the listing once."""
    import struct

    from portable_service.squashfs.reader import SquashfsImage

    root = tmp / "bomb"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    for i in range(folders):
        (root / f"d{i:02}").mkdir()
        if i == 0:
            for n in range(names):
                (root / "d00" / f"name-{n:06}").write_text("")
        else:
            (root / f"d{i:02}" / "x").write_text("")
    image = tmp / "bomb_1.raw"
    subprocess.run(["mksquashfs", str(root), str(image), "-quiet", "-all-root", "-no-progress",
                    "-noappend", "-noI", "-noD"], check=True, capture_output=True)
    data = bytearray(image.read_bytes())
    with SquashfsImage(image) as im:
        table = im.superblock.inode_table
        first = im._lookup("/d00")
        for i in range(1, folders):
            ino = im._lookup(f"/d{i:02}")
            assert ino.type == 1, "expected a basic directory inode"
            # uncompressed metadata: a 2-byte header before each 8 KiB block
            at = table + (ino.ref >> 16) + 2 + (ino.ref & 0xFFFF) + 16
            struct.pack_into("<IIHH", data, at, first.dir_block, ino.nlink, first.size,
                             first.dir_offset)
    image.write_bytes(bytes(data))
    return image


def test_directory_bomb_is_refused_and_cat_stays_quick(cli, tmp_path: Path) -> None:
    require_tool("mksquashfs")
    image = directory_bomb(tmp_path)
    for verb in (["verify"], ["size"], ["inspect"], ["diff", str(image)]):
        proc = cli(*verb, str(image))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "shares its listing with /d00" in proc.stderr
        assert proc.stderr.count("\n") == 1
    # looking up one path reads only the folders on it
    assert cli("cat", str(image), "/etc/os-release").stdout == "ID=debian\n"
    assert cli("ls", str(image), "/d07").stdout.count("\n") == 3000
