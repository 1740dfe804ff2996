"""`portable-service build --writer native` end to end, against the mksquashfs writer."""

from __future__ import annotations

import shutil
from pathlib import Path

from portable_service.squashfs.reader import SquashfsImage
from tests.conftest import REPO, require_tool
from tests.squashfs.conftest import unsquashfs_lln


def test_native_build_matches_mksquashfs(cli, tmp_path: Path) -> None:
    require_tool("mksquashfs")
    spec = tmp_path / "demo"
    shutil.copytree(REPO / "examples/demo", spec)
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    images = {}
    for writer in ("native", "mksquashfs", "native"):
        out = tmp_path / f"out-{writer}"
        shutil.rmtree(out, ignore_errors=True)
        cli("build", str(spec), "--writer", writer, "-q", "-o", str(out), env=env, check=True)
        (image,) = out.glob("*.raw")
        images.setdefault(writer, []).append(image.read_bytes())
        if writer == "native":
            native = image
        else:
            theirs = image
    # the same entries, modes, owners, sizes and link targets as the mksquashfs writer's image
    assert unsquashfs_lln(native) == unsquashfs_lln(theirs)
    # reproducible: two native builds give the same bytes
    assert images["native"][0] == images["native"][1]
    with SquashfsImage(native) as ours, SquashfsImage(theirs) as other:
        assert ours.superblock.mkfs_time == other.superblock.mkfs_time == 1700000000
        for path, st in ours.walk():
            assert st.mtime == 1700000000
            if st.kind == "file":
                assert ours.read(path) == other.read(path), path
                assert ours.xattrs(path) == other.xattrs(path), path


def test_auto_uses_native_without_mksquashfs(cli, tmp_path: Path) -> None:
    """A machine without squashfs-tools still gets an image (the writer is chosen at run time)."""
    spec = tmp_path / "demo"
    shutil.copytree(REPO / "examples/demo", spec)
    proc = cli("build", str(spec), "-o", str(tmp_path / "out"),
               env={"PATH": str(tmp_path / "empty-path")}, check=True)
    assert "with native" in proc.stderr
    (image,) = (tmp_path / "out").glob("*.raw")
    with SquashfsImage(image) as im:
        assert b"IMAGE_VERSION=1.0" in im.read("/etc/os-release")
        assert im.stat("/etc/systemd/system/demo.service").kind == "file"
