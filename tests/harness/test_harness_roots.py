"""The cached roots of the end-to-end harness: mirror, stamp, partial roots."""

from __future__ import annotations

import subprocess

import pytest

from portable_service.errors import ToolError
from portable_service.harness import roots
from tests.conftest import require_root, require_tool

DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
"""


def test_mirror_from_deb822_skips_security():
    assert roots.mirror_from_sources(DEB822) == "http://deb.debian.org/debian"
    security_only = DEB822.split("\n\n", 1)[1]
    assert roots.mirror_from_sources(security_only) is None


def test_mirror_from_one_line_sources():
    text = ("# comment\ndeb [arch=amd64] http://ftp.de.debian.org/debian/ bookworm main\n"
            "deb http://security.debian.org/ bookworm-security main\n")
    assert roots.mirror_from_list(text) == "http://ftp.de.debian.org/debian"


def test_mirror_env_wins(monkeypatch):
    monkeypatch.setenv("PORTABLE_SERVICE_MIRROR", "http://mirror.example/debian/")
    assert roots.host_mirror() == "http://mirror.example/debian"


def test_releases_and_unknown_release():
    assert {r.systemd for r in roots.RELEASES.values()} == {247, 252, 257}
    assert "udev" in roots.RELEASES["bullseye"].packages
    with pytest.raises(ToolError, match="unknown release 'buster'; use one of: bullseye"):
        roots.get_release("buster")


def test_root_counts_only_with_matching_stamp(tmp_path):
    release = roots.RELEASES["bookworm"]
    root = roots.root_path(release, tmp_path)
    root.mkdir()
    assert not roots.is_ready(release, tmp_path)  # e.g. an interrupted run renamed by hand
    (root / roots.STAMP).write_text("suite=bookworm\npackages=systemd\n")
    assert not roots.is_ready(release, tmp_path)  # made with another package list
    (root / roots.STAMP).write_text(release.stamp)
    assert roots.is_ready(release, tmp_path)


def test_unreachable_mirror_fails_fast_and_leaves_nothing(tmp_path):
    release = roots.RELEASES["trixie"]
    require_tool("debootstrap")
    with pytest.raises(ToolError, match=r"cannot reach the Debian mirror http://127\.0\.0\.1:9"):
        roots.ensure_root(release, cache=tmp_path, mirror="http://127.0.0.1:9/debian")
    assert list(tmp_path.iterdir()) == []


def test_partial_root_with_mounts_is_removed(tmp_path):
    """debootstrap mounts /proc in its target; an interrupted one must not be rm -rf'ed
    through that mount."""
    require_root()
    partial = tmp_path / ".bookworm.partial-1"
    (partial / "proc").mkdir(parents=True)
    (partial / "etc").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(partial / "proc")], check=True)
    (partial / "proc" / "inside-the-mount").write_text("x")
    try:
        assert roots.mounts_below(partial) == [partial / "proc"]
        roots.remove_tree(partial)
        assert not partial.exists()
        assert roots.mounts_below(tmp_path) == []
    finally:
        subprocess.run(["umount", "-l", str(partial / "proc")], check=False,
                       capture_output=True)
