"""update-alternatives links in a pinned root (builder/repo/alternatives.py): read from
the packages' postinst as debhelper writes them, made as update-alternatives makes them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from portable_service.builder.repo import unpack
from portable_service.builder.repo.alternatives import Alternative, installs, make_links
from tests.builder.repo.test_pinned_repo import make_deb
from tests.conftest import require_tool

MAWK = """#!/bin/sh
set -e
# Automatically added by dh_installalternatives/13.7.1
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ]; then
        update-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5 \\
            --slave /usr/share/man/man1/awk.1.gz awk.1.gz /usr/share/man/man1/mawk.1.gz \\
            --slave /usr/bin/nawk nawk /usr/bin/mawk
fi
"""


def test_installs_reads_the_calls_debhelper_writes():
    assert list(installs(MAWK)) == [Alternative(
        "/usr/bin/awk", "awk", "/usr/bin/mawk", 5,
        (("/usr/share/man/man1/awk.1.gz", "awk.1.gz", "/usr/share/man/man1/mawk.1.gz"),
         ("/usr/bin/nawk", "nawk", "/usr/bin/mawk")))]


@pytest.mark.parametrize(("line", "found"), [
    ("update-alternatives --install /bin/nc nc /bin/nc.openbsd 50 || true",
     [Alternative("/bin/nc", "nc", "/bin/nc.openbsd", 50)]),
    ("update-alternatives --quiet --install '/usr/bin/x y' x /usr/bin/x1 10; echo done",
     [Alternative("/usr/bin/x y", "x", "/usr/bin/x1", 10)]),
    ('update-alternatives --install "$BINPATH"/"$BINNAME" "$BINNAME" "$BINPATH"/w.procps 50', []),
    ("# update-alternatives --install /usr/bin/a a /usr/bin/b 1", []),
    ("update-alternatives --remove awk /usr/bin/mawk", []),
    ("update-alternatives --install /usr/bin/a a /usr/bin/b high", []),
    ("update-alternatives --install /usr/bin/a a /usr/bin/b 1 --slave /x $S /y",
     [Alternative("/usr/bin/a", "a", "/usr/bin/b", 1)]),
    ("update-alternatives --install /usr/bin/a a 'unbalanced 1", []),
])
def test_installs_follows_literal_calls_only(line, found):
    assert list(installs(line + "\n")) == found


def _postinst_deb(folder: Path, name: str, files: dict[str, str | None], script: str) -> Path:
    deb = make_deb(folder, name, files, {})
    tree = folder / name
    (tree / "DEBIAN/postinst").write_text(script)
    (tree / "DEBIAN/postinst").chmod(0o755)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    return deb


def test_the_highest_priority_the_root_holds_wins_and_its_links_are_made(tmp_path):
    require_tool("dpkg-deb")
    debs = {
        "mawk": _postinst_deb(tmp_path, "mawk", {"usr/bin/mawk": "m"}, MAWK),
        "gawk": _postinst_deb(tmp_path, "gawk", {"usr/bin/gawk": "g"},
                              "update-alternatives --install /usr/bin/awk awk /usr/bin/gawk 10 "
                              "--slave /usr/bin/nawk nawk /usr/bin/gawk\n"),
        # a candidate whose program the root lacks never wins, whatever its priority
        "ghost": _postinst_deb(tmp_path, "ghost", {"usr/share/ghost": "x"},
                               "update-alternatives --install /usr/bin/awk awk /usr/bin/ghost 99\n"),
        # a link a package ships itself stays as it is
        "own": _postinst_deb(tmp_path, "own", {"usr/bin/editor": "mine", "usr/bin/vi": "v"},
                             "update-alternatives --install /usr/bin/editor editor /usr/bin/vi 1\n"),
        "plain": make_deb(tmp_path, "plain", {"usr/bin/plain": "p"}, {}),
    }
    root = tmp_path / "root"
    unpack.unpack(debs, root)
    assert make_links(debs, root) == ["/usr/bin/awk"]
    assert os.readlink(root / "usr/bin/awk") == "/etc/alternatives/awk"
    assert os.readlink(root / "etc/alternatives/awk") == "/usr/bin/gawk"
    assert os.readlink(root / "usr/bin/nawk") == "/etc/alternatives/nawk"
    assert os.readlink(root / "etc/alternatives/nawk") == "/usr/bin/gawk"
    assert (root / "usr/bin/editor").read_text() == "mine"
    assert not (root / "etc/alternatives/editor").exists()
    # the man page slave's file is not in the root (documentation stays packed)
    assert not os.path.lexists(root / "usr/share/man/man1/awk.1.gz")
    # the same packages in another order make the same choice
    again = tmp_path / "again"
    unpack.unpack(debs, again)
    assert make_links(dict(reversed(list(debs.items()))), again) == ["/usr/bin/awk"]
    assert os.readlink(again / "etc/alternatives/awk") == "/usr/bin/gawk"


@pytest.mark.network
def test_a_pinned_unit_runs_a_program_the_release_installs_as_an_alternative(tmp_path, cli):
    """mawk's postinst makes /usr/bin/awk: a unit naming it builds, and it runs in the
    image. (Unpacked without maintainer scripts, the root had no awk: the build refused
    the unit, saying to add the package that has it, which the spec named.)"""
    from tests.builder.closure.closure_helpers import chroot

    unsquashfs = require_tool("unsquashfs")
    (tmp_path / "portable.toml").write_text(
        'pname = "alt"\nversion = "1"\ndistribution = "debian"\nrelease = "bookworm"\n'
        'packages = ["mawk"]\nunits = [{ name = "alt.service", text = "[Service]\\n'
        "Type=oneshot\\nExecStart=/usr/bin/awk 'BEGIN { print 6 * 7 }'\\n\" }]\n")
    proc = cli("build", "-q")
    assert proc.returncode == 0, proc.stderr
    image = tmp_path / "result/alt_1.raw"
    root = tmp_path / "root"
    subprocess.run([unsquashfs, "-q", "-n", "-d", str(root), str(image)], check=True,
                   capture_output=True)
    assert os.readlink(root / "usr/bin/awk") == "/etc/alternatives/awk"
    assert os.readlink(root / "etc/alternatives/awk") == "/usr/bin/mawk"
    ran = chroot(root, "/usr/bin/awk", "BEGIN { print 6 * 7 }")
    assert ran.returncode == 0 and ran.stdout == "42\n", ran
