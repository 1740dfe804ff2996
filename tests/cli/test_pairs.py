"""One direction for pairs: LINK=OBJECT and SOURCE=TARGET; a swapped pair is refused with the
fix, from a flag and from TOML alike, and the right way round builds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import require_tool, unsquashfs_list

UNIT = "[Service]\nExecStart=/usr/bin/env true\n"
FLAGS = ["build", "--pname", "demo", "--version", "1", "--unit", "demo.service", "-q",
         "--squash-compression", "gzip"]


@pytest.fixture(autouse=True)
def _unit(tmp_path: Path) -> None:
    (tmp_path / "demo.service").write_text(UNIT)


def sh_is_a_link_to_dash() -> bool:
    return os.path.islink("/bin/sh") and os.path.realpath("/bin/sh") == \
        os.path.realpath("/usr/bin/dash") and not os.path.islink("/usr/bin/dash")


def test_symlink_pointing_at_itself(cli, tmp_path: Path) -> None:
    if not sh_is_a_link_to_dash():
        pytest.skip("this host's /bin/sh is not a link to dash")
    proc = cli(*FLAGS, "--symlink", "/usr/bin/dash=/bin/sh")
    assert proc.returncode == 2
    assert proc.stderr == ("portable-service: error: symlink /usr/bin/dash -> /bin/sh would "
                           "point at itself (/bin/sh is a link to /usr/bin/dash on this host): "
                           "symlinks read LINK=OBJECT; did you mean --symlink "
                           "/bin/sh=/usr/bin/dash?\n")
    assert not (tmp_path / "result").exists()
    require_tool("mksquashfs")
    proc = cli(*FLAGS, "--symlink", "/bin/sh=/usr/bin/dash")
    assert proc.returncode == 0, proc.stderr
    entries = unsquashfs_list(tmp_path / "result/demo_1.raw")
    # at /bin/sh, or at /usr/bin/sh below the host's /bin -> usr/bin link
    link = entries.get("/bin/sh") or entries["/usr/bin/sh"]
    assert link[0].startswith("l") and link[2] == "/usr/bin/dash"


def test_symlink_object_missing_but_link_exists(cli, tmp_path: Path) -> None:
    proc = cli(*FLAGS, "--symlink", "/usr/bin/env=/opt/demo/env")
    assert proc.returncode == 2
    assert "symlink object /opt/demo/env does not exist on this host, but /usr/bin/env does" \
        in proc.stderr
    assert proc.stderr.endswith("did you mean --symlink /opt/demo/env=/usr/bin/env?\n")


def test_content_swapped_in_toml(cli, tmp_path: Path) -> None:
    (tmp_path / "app.conf").write_text("x = 1\n")
    (tmp_path / "portable.toml").write_text(
        'pname = "demo"\nversion = "1"\nunits = ["demo.service"]\n'
        f'contents = [{{ source = "/etc/demo/app.conf", target = "{tmp_path}/app.conf" }}]\n')
    proc = cli("build", "-q")
    assert proc.returncode == 2
    assert proc.stderr == (
        f"portable-service: error: content source /etc/demo/app.conf does not exist on this "
        f"host, but {tmp_path}/app.conf does: contents read SOURCE=TARGET (host path, then "
        f"image path); did you mean {{ source = \"{tmp_path}/app.conf\", target = "
        f"\"/etc/demo/app.conf\" }}?\n")


def test_content_the_right_way_builds(cli, tmp_path: Path) -> None:
    require_tool("mksquashfs")
    (tmp_path / "app.conf").write_text("x = 1\n")
    proc = cli(*FLAGS, "--content", f"{tmp_path}/app.conf=/etc/demo/app.conf")
    assert proc.returncode == 0, proc.stderr
    assert "/etc/demo/app.conf" in unsquashfs_list(tmp_path / "result/demo_1.raw")
    # a source missing with a target that is missing too is the plain "does not exist"
    proc = cli(*FLAGS, "--content", "/nonexistent/a=/nonexistent/b")
    assert proc.returncode == 2 and "did you mean" not in proc.stderr
