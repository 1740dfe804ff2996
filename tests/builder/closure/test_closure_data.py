"""Data stays data; exclude sees image paths; moved trees keep their links' meaning.

Each builds real host files with the real writers and reads the image back.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.closure import scripts
from tests.builder.closure.closure_helpers import build_and_unpack, closure_of, host_dir, paths, script, unit
from tests.conftest import unsquashfs_list

P = PurePosixPath


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A folder outside /tmp (paths below /tmp are run-time paths for units)."""
    d = host_dir()
    yield d
    shutil.rmtree(d)


def python_stdlib() -> Path:
    """Debian's own Python standard library (python3 is installed by bootstrap --test)."""
    found = sorted(glob.glob("/usr/lib/python3.[0-9]*/os.py"))
    if not found:
        pytest.skip("Debian's python3 is not installed")
    return Path(found[-1]).parent


# -- 1. data is not a program ------------------------------------------------------------------

def test_python_stdlib_as_data_builds(tmp_path: Path) -> None:
    """Executable modules start with '#! /usr/local/bin/python', which Debian does not have."""
    stdlib = python_stdlib()
    odd = [p for p in stdlib.glob("*.py") if os.access(p, os.X_OK)
           and p.read_bytes().startswith(b"#! /usr/local/bin/python")]
    if not odd or os.path.exists("/usr/local/bin/python"):
        pytest.skip("this Python has no module naming a missing interpreter")
    image, _ = build_and_unpack(tmp_path, contents=[str(stdlib)])
    entries = unsquashfs_list(image)
    assert str(odd[0]) in entries and entries[str(odd[0])][0] == "-rwxr-xr-x"
    assert "/usr/local/bin/python" not in entries
    # executable modules with a host interpreter do not bring it either: nothing runs them
    assert "/usr/bin/env" not in entries
    c = closure_of(tmp_path, contents=[str(stdlib)])
    assert f"{odd[0]} is an executable script for /usr/local/bin/python, which is not on this " \
           "host; no unit runs it, so it is shipped as data and its interpreter is not added" \
           in c.warnings
    assert not any(n.reason == "#! interpreter" for n in c)


def test_only_what_a_unit_runs_brings_its_interpreter(tmp_path: Path, outside_tmp: Path) -> None:
    app = outside_tmp / "app"
    run = script(app / "bin/run", "#!/usr/bin/env bash\nexec /opt/x\n")
    script(app / "bin/tool", "#!/usr/bin/perl-xyz-missing\n")  # data with a missing interpreter
    script(app / "share/helper", "#!/bin/dash\n")  # data with a present one
    os.symlink("../bin/run", app / "share/run-link")
    image, _ = build_and_unpack(tmp_path, contents=[str(app)],
                                units=[unit(str(app / "share/run-link"))])
    entries = unsquashfs_list(image)
    bash = scripts.which("bash")
    assert bash is not None
    # the unit runs the link; the link passes the mark to run; run brings env and bash
    assert "/usr/bin/env" in entries and bash in entries
    assert "/usr/bin/dash" not in entries and "/usr/bin/perl-xyz-missing" not in entries
    c = closure_of(tmp_path, contents=[str(app)], units=[unit(str(app / "share/run-link"))])
    assert c.nodes[P(run)].executed and not c.nodes[P(app / "share/helper")].executed
    assert [w for w in c.warnings if "perl-xyz-missing" in w] == [
        f"{app}/bin/tool is an executable script for /usr/bin/perl-xyz-missing, which is not "
        "on this host; no unit runs it, so it is shipped as data and its interpreter is not added"]
    assert not any("helper" in w for w in c.warnings)


def test_data_reached_first_then_run_still_brings_its_interpreter(tmp_path: Path,
                                                                  outside_tmp: Path) -> None:
    """An interpreter that is itself a script and already in the image as a folder entry."""
    tools, app = outside_tmp / "tools", outside_tmp / "app"
    interp = script(tools / "interp", "#!/bin/dash\nexec cat \"$1\"\n")
    run = script(app / "run", f"#!{interp}\n")
    c = closure_of(tmp_path, contents=[str(tools), str(app)], units=[unit(str(run))])
    assert c.nodes[P(interp)].executed
    assert c.nodes[P("/bin/dash")].parent == P(interp)


def test_program_behind_a_spec_symlink_is_run(tmp_path: Path, outside_tmp: Path) -> None:
    prog = script(outside_tmp / "app/prog", "#!/bin/dash\n")
    c = closure_of(tmp_path, contents=[str(outside_tmp / "app")],
                   symlinks=[{"symlink": "/usr/bin/demo-xyz", "object": str(prog)}],
                   units=[unit("/usr/bin/demo-xyz")])
    assert c.nodes[P(prog)].executed
    assert P("/bin/dash") in c.nodes


def test_moved_program_is_run(tmp_path: Path) -> None:
    src = tmp_path / "src"
    script(src / "bin/run", "#!/bin/dash\n")
    image, _ = build_and_unpack(tmp_path, contents=[{"source": str(src), "target": "/opt/demo"}],
                                units=[unit("/opt/demo/bin/run")])
    assert "/usr/bin/dash" in unsquashfs_list(image)


# -- 2. exclude matches image paths ------------------------------------------------------------

def merged_usr() -> None:
    if not (os.path.islink("/bin") and os.path.realpath("/bin") == "/usr/bin"):
        pytest.skip("the host does not have merged /usr")


def test_exclude_matches_the_image_spelling(tmp_path: Path) -> None:
    merged_usr()
    # /bin/cat lands at /usr/bin/cat: that is what inspect and ls show, and what exclude sees
    image, _ = build_and_unpack(tmp_path, contents=["/bin/cat", "/bin/ls"],
                                exclude=["/usr/bin/c*"])
    entries = unsquashfs_list(image)
    assert "/usr/bin/cat" not in entries and "/usr/bin/ls" in entries
    # the host's literal spelling still matches too
    c = closure_of(tmp_path, contents=["/bin/cat", "/bin/ls"], exclude=["/bin/ls"])
    assert "/bin/ls" not in paths(c) and "/bin/cat" in paths(c)


def test_exclude_matches_package_files_in_image_spelling(tmp_path: Path) -> None:
    merged_usr()
    c = closure_of(tmp_path, packages=["coreutils"])
    listed = [n for n in c if str(n.image).startswith("/bin/")]
    if not listed:
        pytest.skip("coreutils lists no /bin paths on this host")
    c = closure_of(tmp_path, packages=["coreutils"], exclude=["/usr/bin/*"])
    assert not any(str(n.image).startswith(("/bin/", "/usr/bin/")) for n in c)


# -- 3. moved trees keep their symlinks' meaning -----------------------------------------------

def test_moved_tree_rewrites_absolute_links(tmp_path: Path, outside_tmp: Path) -> None:
    src = outside_tmp / "src"
    script(src / "bin/tool", "#!/bin/dash\n")
    os.symlink(src / "bin/tool", src / "bin/abs")  # absolute, into the tree
    os.symlink("tool", src / "bin/rel")  # relative, within the tree: kept as written
    data = outside_tmp / "data.txt"
    data.write_text("outside\n")
    os.symlink(data, src / "outside")  # absolute, out of the tree: brought in
    os.symlink("../data.txt", src / "up")  # relative, out of the tree
    os.symlink("../src/bin/tool", src / "round")  # relative, out of the tree and back in
    moved = [{"source": str(src), "target": "/opt/demo"}]
    image, root = build_and_unpack(tmp_path, contents=moved, units=[unit("/opt/demo/bin/abs")])
    entries = unsquashfs_list(image)
    assert entries["/opt/demo/bin/abs"][2] == "/opt/demo/bin/tool"
    assert entries["/opt/demo/bin/rel"][2] == "tool"
    assert entries["/opt/demo/outside"][2] == str(data)
    assert entries["/opt/demo/up"][2] == str(data)
    assert entries["/opt/demo/round"][2] == "bin/tool"
    assert (root / str(data).lstrip("/")).read_text() == "outside\n"
    assert "/usr/bin/dash" in entries  # the unit runs abs -> tool, whose interpreter is dash
    # a link whose target is nowhere: the closure names it (verify then refuses the image)
    os.symlink(outside_tmp / "gone", src / "dangling")
    c = closure_of(tmp_path, contents=moved, units=[unit("/opt/demo/bin/abs")])
    assert f"symlink {src}/dangling (placed at /opt/demo/dangling) points to " \
           f"{outside_tmp}/gone, which does not exist: it dangles in the image" in c.warnings


def test_package_script_brings_its_interpreter_only_when_a_unit_runs_it(tmp_path: Path) -> None:
    """debianutils' which is a shell script behind an alternatives link: data until run."""
    which = Path("/usr/bin/which")
    real = Path(os.path.realpath(which))
    if not real.is_file() or scripts.read_shebang(real) is None or \
            not os.path.exists("/var/lib/dpkg/info/debianutils.list"):
        pytest.skip("debianutils' which is not a script on this host")
    interp = P(scripts.read_shebang(real)[0])  # type: ignore[index]
    c = closure_of(tmp_path, packages=["debianutils"])
    assert c.nodes[P(real)].package == "debianutils" and not c.nodes[P(real)].executed
    assert interp not in c.nodes
    c = closure_of(tmp_path, packages=["debianutils"], units=[unit("/usr/bin/which true")])
    assert c.nodes[P(real)].executed  # through /usr/bin/which -> /etc/alternatives/which
    assert c.nodes[interp].reason == "#! interpreter" and c.nodes[interp].parent == P(real)
