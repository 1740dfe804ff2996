"""Names that are not text (legal on Linux and in squashfs) print escaped, never crash a verb."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool


@pytest.fixture(scope="module")
def odd_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("mksquashfs")
    base = tmp_path_factory.mktemp("odd")
    root = base / "root"
    for d in ("etc/systemd/system", "usr/lib", "proc", "sys", "dev", "run", "tmp", "var/tmp"):
        (root / d).mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    (root / "etc/machine-id").write_text("")
    (root / "etc/resolv.conf").write_text("")
    (root / "etc/systemd/system/odd.service").write_text("[Service]\nExecStart=/usr/lib/x\n")
    lib = os.fsencode(root / "usr/lib")
    with open(lib + b"/bad\xff\xfename", "w") as f:
        f.write("x")
    os.symlink(b"/nowhere\xff", lib + b"/link\xfe")
    with open(lib + b"/new\nline", "w") as f:
        f.write("y")
    image = base / "odd_1.raw"
    subprocess.run(["mksquashfs", str(root), str(image), "-quiet", "-all-root", "-no-progress"],
                   check=True, capture_output=True)
    return image


VERBS = [["ls", "IMG", "/usr/lib"], ["ls", "-l", "IMG", "/usr/lib"], ["verify", "IMG"],
         ["verify", "--json", "IMG"], ["size", "IMG"], ["diff", "IMG", "IMG"],
         ["inspect", "IMG"], ["inspect", "--json", "IMG"], ["cat", "IMG", "/etc/os-release"]]


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v))
def test_verbs_print_odd_names_escaped(cli, odd_image: Path, verb: list[str],
                                       encoding: str) -> None:
    args = [str(odd_image) if a == "IMG" else a for a in verb]
    proc = cli(*args, env={"PYTHONIOENCODING": encoding, "LC_ALL": "C.UTF-8"})
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1), proc.stderr  # 1: verify's findings
    if verb[0] == "ls":
        assert "bad\\xff\\xfename" in proc.stdout
        assert "link\\xfe" in proc.stdout
