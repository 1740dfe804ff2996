"""The rule logic on in-memory trees (no image file), and the tree and file adapters agreeing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.layout import mirror_host_parents
from portable_service.builder.writers.mksquashfs import MksquashfsWriter
from portable_service.builder.writers.options import PackOptions, parse_block_size, parse_compression
from portable_service.fs.tree import ImageTree
from portable_service.fs.views import IndexedFS, SquashfsFS, TreeFS, resolve
from portable_service.look.verify import image_prefix, prefix_matches, verify
from portable_service.progress import QUIET
from tests.conftest import require_tool
from tests.look.imagetrees import PROGRAM, UNIT, host_closure, scaffold_tree

P = PurePosixPath


@pytest.mark.parametrize(("unit", "prefix", "ok"), [
    ("demo.service", "demo", True),
    ("demo-web.service", "demo", True),
    ("demo@.service", "demo", True),
    ("demo.web.socket", "demo", True),
    ("demoweb.service", "demo", False),
    ("demo_x.service", "demo", False),
    ("other.service", "demo", False),
    ("demo.service", "", False),
])
def test_prefix_match_is_portableds(unit: str, prefix: str, ok: bool) -> None:
    assert prefix_matches(unit, prefix) is ok


@pytest.mark.parametrize(("name", "prefix"), [
    ("foobar_0.7.23.raw", "foobar"), ("demo_1.0.raw", "demo"), ("demo.raw", "demo"),
    ("/var/lib/portables/a-b_1_2.raw", "a-b"),
])
def test_image_prefix(name: str, prefix: str) -> None:
    assert image_prefix(name) == prefix


def _tree() -> ImageTree:
    t = scaffold_tree("/var/lib/demo")
    t.add_file(P("/etc/systemd/system/demo.service"), data=UNIT.encode())
    for host in host_closure(PROGRAM):
        _add_host(t, host)
    return t


def _add_host(t: ImageTree, host: str) -> None:
    """Mirror a host path with its folder links, as the build does."""
    real = mirror_host_parents(t, P(host), "test")
    if os.path.islink(real):
        if t.get(real) is None:
            t.add_symlink(real, os.readlink(real))
        _add_host(t, os.path.normpath(os.path.join(real.parent, os.readlink(real))))
    elif t.get(real) is None:
        t.add_file(real, source=Path(real), mode=os.stat(real).st_mode & 0o7777)


def test_resolve_follows_links_inside_the_image() -> None:
    t = ImageTree()
    t.add_file(P("/usr/lib/real"), data=b"x")
    t.add_symlink(P("/lib"), "usr/lib")
    t.add_symlink(P("/usr/lib/abs"), "/lib/real")
    t.add_symlink(P("/usr/lib/up"), "../lib/./real")
    t.add_symlink(P("/loop1"), "loop2")
    t.add_symlink(P("/loop2"), "/loop1")
    t.add_symlink(P("/escape"), "../../../usr/lib/real")
    fs = TreeFS(t)
    assert resolve(fs, "/lib/abs") == "/usr/lib/real"
    assert resolve(fs, "/lib/up") == "/usr/lib/real"
    assert resolve(fs, "/escape") == "/usr/lib/real"  # '..' stops at the image root
    assert resolve(fs, "/loop1") is None
    assert resolve(fs, "/usr/lib/real/x") is None  # through a file
    assert resolve(fs, "/lib/abs", follow_last=False) == "/usr/lib/abs"
    assert resolve(fs, "/nothing") is None


def test_a_tree_is_checked_before_it_is_written() -> None:
    t = _tree()
    assert verify(TreeFS(t), "demo_1.0.raw") == []
    t.remove(P("/var/lib/demo"))
    t.add_symlink(P("/usr/bin/demo-helper"), "/usr/libexec/helper")
    rules = [(p.rule, p.path) for p in verify(TreeFS(t), "demo_1.0.raw")]
    assert rules == [("unit-mount-point", "/var/lib/demo"),
                     ("dangling-symlink", "/usr/bin/demo-helper")]


def test_tree_and_written_image_give_the_same_problems(tmp_path: Path) -> None:
    binary = require_tool("mksquashfs")
    t = _tree()
    t.remove(P("/dev"))
    t.add_file(P("/usr/bin/sleep-copy"), source=Path(PROGRAM), mode=0o4755)
    t.add_file(P("/etc/systemd/system/demo-x.service"), data=b"[Service]\nExecStart=/bin/nope\n")
    out = tmp_path / "demo_1.0.raw"
    out.touch()
    options = PackOptions(compression=parse_compression("gzip"),
                          block_size=parse_block_size("128K"), mtime=0)
    MksquashfsWriter(Path(binary)).write(t, out, options, QUIET)
    from_tree = verify(TreeFS(t), out.name)
    from_file = verify(IndexedFS(SquashfsFS(out)), out.name)
    assert from_tree == from_file
    assert {p.rule for p in from_file} == {"mount-point", "exec-missing", "setuid"}


def _cc(tmp_path: Path, *args: str) -> None:
    gcc = require_tool("gcc")
    subprocess.run([gcc, *args], check=True, cwd=tmp_path, capture_output=True)


@pytest.fixture
def runpath_prog(tmp_path: Path) -> tuple[Path, Path]:
    """A program needing libdemo.so, found through RUNPATH=$ORIGIN/../lib."""
    (tmp_path / "lib.c").write_text("int demo(void) { return 42; }\n")
    (tmp_path / "main.c").write_text("int demo(void);\nint main(void) { return demo() - 42; }\n")
    _cc(tmp_path, "-shared", "-fPIC", "-o", "libdemo.so", "lib.c")
    _cc(tmp_path, "-o", "prog", "main.c", "-L.", "-ldemo", "-Wl,--enable-new-dtags",
        "-Wl,-rpath,$ORIGIN/../lib")
    return tmp_path / "prog", tmp_path / "libdemo.so"


def _with_prog(prog: Path, lib: Path | None, lib_at: str, conf: str | None = None,
               cache: bytes | None = None) -> ImageTree:
    t = _tree()
    t.add_file(P("/opt/demo/bin/prog"), source=prog, mode=0o755)
    if lib is not None:
        t.add_file(P(lib_at), source=lib, mode=0o644)
    if conf is not None:
        t.add_file(P("/etc/ld.so.conf"), data=b"include /etc/ld.so.conf.d/*.conf\n")
        t.add_file(P("/etc/ld.so.conf.d/demo.conf"), data=conf.encode())
    if cache is not None:
        t.add_file(P("/etc/ld.so.cache"), data=cache)
    unit = UNIT.replace("/usr/bin/sleep infinity", "/opt/demo/bin/prog")
    t.remove(P("/etc/systemd/system/demo.service"))
    t.add_file(P("/etc/systemd/system/demo.service"), data=unit.encode())
    return t


def test_runpath_origin_is_followed(runpath_prog) -> None:
    prog, lib = runpath_prog
    assert verify(TreeFS(_with_prog(prog, lib, "/opt/demo/lib/libdemo.so")), "demo_1.raw") == []


def test_library_outside_the_search_path_is_an_error(runpath_prog) -> None:
    prog, lib = runpath_prog
    problems = verify(TreeFS(_with_prog(prog, lib, "/opt/other/libdemo.so")), "demo_1.raw")
    assert [(p.severity, p.rule, p.path) for p in problems] == [
        ("error", "elf-library", "/opt/demo/bin/prog")]
    assert "needs libdemo.so, which is not in the image's library path (/opt/demo/lib:" \
        in problems[0].message


def test_the_image_ld_so_cache_is_searched(runpath_prog, tmp_path: Path) -> None:
    """The loader reads /etc/ld.so.cache, never ld.so.conf (ldconfig turns one into the other)."""
    from portable_service.builder.closure import ldcache

    _, lib = runpath_prog
    _cc(tmp_path, "-o", "plain", "main.c", "-L.", "-ldemo")  # no RUNPATH
    plain = tmp_path / "plain"
    at = "/usr/local/lib/demo/libdemo.so"
    cache = ldcache.render([ldcache.CacheEntry("libdemo.so", at, 0x0303)])
    assert verify(TreeFS(_with_prog(plain, lib, at, conf="/usr/local/lib/demo\n", cache=cache)),
                  "demo_1.raw") == []
    for conf in ("/usr/local/lib/demo\n", None):  # a conf.d entry without its cache: not found
        problems = verify(TreeFS(_with_prog(plain, lib, at, conf=conf)), "demo_1.raw")
        assert [p.rule for p in problems] == ["elf-library"]


def test_a_library_of_another_machine_does_not_count(runpath_prog, tmp_path: Path) -> None:
    prog, lib = runpath_prog
    foreign = tmp_path / "libdemo-foreign.so"
    data = bytearray(lib.read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # e_machine: aarch64
    foreign.write_bytes(bytes(data))
    problems = verify(TreeFS(_with_prog(prog, foreign, "/opt/demo/lib/libdemo.so")),
                      "demo_1.raw")
    assert "elf-library" in [p.rule for p in problems]



def test_units_in_usr_lib_count_and_etc_wins() -> None:
    from portable_service.look.verify import attached_units

    t = _tree()
    t.remove(P("/etc/systemd/system/demo.service"))
    t.add_symlink(P("/lib"), "usr/lib")
    t.add_file(P("/usr/lib/systemd/system/demo.service"), data=UNIT.encode())
    t.add_file(P("/usr/lib/systemd/system/demo-extra.service"),
               data=b"[Service]\nExecStart=/usr/bin/missing\n")
    t.add_file(P("/etc/systemd/system/demo-extra.service"), data=UNIT.encode())
    fs = TreeFS(t)
    assert [(u.name, u.path) for u in attached_units(fs, "demo")] == [
        ("demo-extra.service", "/etc/systemd/system/demo-extra.service"),
        ("demo.service", "/usr/lib/systemd/system/demo.service")]
    # the /usr/lib copy of demo-extra is shadowed; a unit outside /etc/systemd/system in an
    # image without our closure record is one nobody may have meant to ship
    assert [(p.rule, p.path) for p in verify(fs, "demo_1.0.raw")] == [
        ("undeclared-unit", "/usr/lib/systemd/system/demo.service")]


def test_programs_started_through_sh_c_are_checked() -> None:
    t = _tree()
    _add_host(t, "/usr/bin/dash")
    t.add_file(P("/etc/systemd/system/demo-sh.service"),
               data=b"[Service]\nExecStart=/usr/bin/dash -c 'sleep 1 && no-such-prog'\n")
    problems = [(p.severity, p.rule, p.path) for p in verify(TreeFS(t), "demo_1.0.raw")]
    # sleep is in the image; the other is not, and only the shell knows whether it is a function
    assert problems == [("warning", "shell-command-missing", "no-such-prog")]


def test_drop_ins_in_the_image_are_ignored_and_said_so() -> None:
    # portabled copies the unit file only: systemd never reads a drop-in shipped in the image
    t = _tree()
    t.add_file(P("/etc/systemd/system/demo.service.d/10-state.conf"),
               data=b"[Service]\nCacheDirectory=demo\nExecStartPre=/usr/bin/nope\n")
    rules = sorted((p.severity, p.rule, p.path) for p in verify(TreeFS(t), "demo_1.0.raw"))
    assert rules == [("warning", "drop-in-ignored",
                      "/etc/systemd/system/demo.service.d/10-state.conf")]
