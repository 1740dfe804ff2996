"""``ls -R``: every entry below a folder from one walk, as ``unsquashfs -lln`` lists them."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import mksquashfs, require_tool, unsquashfs_list
from tests.look.imagetrees import make_tree


def test_ls_recursive_lists_what_unsquashfs_lists(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require_tool("mksquashfs")
    root = make_tree(tmp_path / "tree")
    (root / "deep/a/b").mkdir(parents=True)
    (root / "deep/a/b/leaf").write_text("leaf\n")
    img = mksquashfs(root, tmp_path / "demo_1.0.raw", "-comp", "xz")
    listed = unsquashfs_list(img)

    lines = cli("ls", "-lR", str(img), check=True).stdout.splitlines()
    assert len(lines) == len(listed) - 1  # the folder itself is not listed, as ls -R
    ours = {}
    for line in lines:
        mode, _uid, _gid, size, _day, _time, rest = line.split(None, 6)
        name, _, target = rest.partition(" -> ")
        ours["/" + name] = (mode, target or size)
    assert ours == {path: (mode, size) for path, (mode, _owner, size) in listed.items()
                    if path != "/"}

    below = cli("ls", "-R", str(img), "/deep", check=True).stdout.splitlines()
    assert below == ["a/", "a/b/", "a/b/leaf"]
    assert cli("ls", str(img), "/deep", check=True).stdout.splitlines() == ["a/"]
    proc = cli("ls", "-R", str(img), "/nothing")
    assert proc.returncode == 2 and proc.stdout == "" and "not in the image" in proc.stderr
