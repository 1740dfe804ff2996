"""build runs verify on the written file before it replaces the old image."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import require_tool
from tests.look.imagetrees import PROGRAM, UNIT, host_closure


def _project(tmp_path: Path, extra: str = "", more_contents: str = "") -> Path:
    (tmp_path / "demo.service").write_text(UNIT)
    contents = ", ".join(json.dumps(p) for p in host_closure(PROGRAM)) + more_contents
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
    assert sorted(p.name for p in (project / "result").iterdir()) == ["demo_1.0.raw", "demo_1.0.spdx.json"]

    proc = cli("build", "--no-verify", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert img.read_bytes() != before
    assert cli("verify", str(img)).returncode == 1


def test_closure_roots_are_recorded_and_sized(cli, tmp_path) -> None:
    require_tool("mksquashfs")
    project = _project(tmp_path)
    assert cli("build", cwd=project).returncode == 0
    img = project / "result/demo_1.0.raw"
    roots = json.loads(cli("inspect", "--json", str(img), check=True).stdout)["closure_roots"]
    assert {r["path"] for r in roots} >= {PROGRAM}
    size = json.loads(cli("size", "--json", str(img), check=True).stdout)
    by_root = {r["path"]: r["bytes"] for r in size["closure_roots"]}
    assert sum(by_root.values()) == size["total"]
    assert by_root[PROGRAM] >= Path(PROGRAM).stat().st_size
    libc = next(p for p in host_closure(PROGRAM) if Path(p).name == "libc.so.6")
    # the record names paths as they lie in the image (host folder links kept as links)
    placed = [p for p in by_root if Path(p).name == "libc.so.6"]
    assert placed and by_root[placed[0]] == Path(libc).resolve().stat().st_size
    assert "by closure root" in cli("size", str(img), check=True).stdout


def test_absolute_links_never_ship_dangling(cli, tmp_path) -> None:
    """Absolute link targets that need a PAX header (long or non-ASCII) must survive packing,
    or the build must refuse the image; never a silently broken link."""
    require_tool("mksquashfs")
    project = _project(tmp_path)
    app = project / "app"
    deep = app / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "data-ő.txt").write_text("x\n")
    (app / "link").symlink_to(f"/opt/app/{'d' * 60}/{'e' * 60}/data-ő.txt")
    _project(tmp_path, more_contents=', { source = "app", target = "/opt/app" }')
    proc = cli("build", cwd=project)
    assert "Traceback" not in proc.stderr
    if proc.returncode == 0:
        img = project / "result/demo_1.0.raw"
        assert cli("cat", str(img), "/opt/app/link", check=True).stdout == "x\n"
    else:
        assert proc.returncode == 2
        assert "/opt/app/link: the symlink" in proc.stderr and "dangles" in proc.stderr
