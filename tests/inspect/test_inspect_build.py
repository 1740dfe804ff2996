"""build runs verify on the written file before it replaces the old image."""

from __future__ import annotations

import json
from pathlib import Path

from imagetrees import PROGRAM, UNIT, host_closure

from tests.conftest import require_tool


def _project(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "demo.service").write_text(UNIT)
    contents = ", ".join(json.dumps(p) for p in host_closure(PROGRAM))
    (tmp_path / "portable.toml").write_text(
        'pname = "demo"\nversion = "1.0"\nunits = ["demo.service"]\n'
        f'squash-compression = "gzip"\ncontents = [{contents}]\n{extra}')
    return tmp_path


def test_build_verifies_a_good_image(cli, tmp_path) -> None:
    require_tool("mksquashfs")
    proc = cli("build", cwd=_project(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "verifying the image" in proc.stderr
    img = tmp_path / "result/demo_1.0.raw"
    again = cli("verify", str(img))
    assert again.returncode == 0, again.stdout


def test_a_failing_image_never_replaces_the_old_one(cli, tmp_path) -> None:
    require_tool("mksquashfs")
    project = _project(tmp_path)
    assert cli("build", cwd=project).returncode == 0
    img = project / "result/demo_1.0.raw"
    before = img.read_bytes()
    # an os-release that forbids the image's own prefix: portabled would refuse it
    _project(tmp_path, '[os-release]\nPORTABLE_PREFIXES = "other"\n')
    (project / "demo.service").write_text(UNIT + "# changed\n")
    proc = cli("build", cwd=project)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: the image would not work: /etc/os-release: PORTABLE_PREFIXES=other" \
        in proc.stderr
    assert "--no-verify" in proc.stderr
    assert img.read_bytes() == before
    assert sorted(p.name for p in (project / "result").iterdir()) == ["demo_1.0.raw"]

    proc = cli("build", "--no-verify", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert img.read_bytes() != before
    assert cli("verify", str(img)).returncode == 1
