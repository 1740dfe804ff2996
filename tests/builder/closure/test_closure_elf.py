"""ELF references, checked against the real loader with small programs compiled here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.closure import Closure, Context, Node, elf
from portable_service.errors import ClosureError
from tests.builder.closure.closure_helpers import (
    LOADER,
    NO_RUNTIME_NEEDS,
    cc,
    chroot,
    closure_of,
    ldd_libraries,
    make_spec,
    paths,
    unit,
)
from tests.conftest import require

LIB = "int f(void) { return 42; }\n"
MAIN = "int f(void);\nint main(void) { return f() == 42 ? 0 : 1; }\n"
OLD_TAGS = "-Wl,--disable-new-dtags"  # DT_RPATH
NEW_TAGS = "-Wl,--enable-new-dtags"  # DT_RUNPATH


def app(tmp_path: Path, *flags: str) -> Path:
    """app/bin/prog linked against app/lib/libf.so with the given rpath flags."""
    cc(tmp_path / "app/lib/libf.so", LIB, "-shared")
    return cc(tmp_path / "app/bin/prog", MAIN, f"-L{tmp_path}/app/lib", "-lf", *flags)


def runs_on_host(program: Path) -> bool:
    return subprocess.run([str(program)], capture_output=True, check=False).returncode == 0


@pytest.mark.parametrize("tags,via", [(OLD_TAGS, "RPATH"), (NEW_TAGS, "RUNPATH")])
def test_origin_rpath_and_runpath_follow_the_image_location(tmp_path: Path, tags: str, via: str) -> None:
    prog = app(tmp_path, "-Wl,-rpath,$ORIGIN/../lib", tags)
    assert runs_on_host(prog)  # the real loader agrees the library is found
    info = elf.read_elf(prog)
    assert info is not None
    assert (info.rpath, info.runpath) == ((("$ORIGIN/../lib",), ()) if via == "RPATH"
                                          else ((), ("$ORIGIN/../lib",)))
    # shipped elsewhere: $ORIGIN is the folder in the image, mapped back to the host
    spec = make_spec(tmp_path, contents=[{"source": str(tmp_path / "app"), "target": "/opt/app"}],
                     units=[unit("/opt/app/bin/prog")])
    found = list(elf.ElfResolver(Context(spec, Closure()))(
        Node(PurePosixPath("/opt/app/bin/prog"), prog, "content")))
    lib = next(n for n in found if n.image == PurePosixPath("/opt/app/lib/libf.so"))
    assert (lib.host, lib.reason) == (tmp_path / "app/lib/libf.so", f"DT_NEEDED libf.so ({via})")
    assert lib.parent == PurePosixPath("/opt/app/bin/prog")
    closure = closure_of(tmp_path, contents=[{"source": str(tmp_path / "app"), "target": "/opt/app"}])
    assert LOADER in paths(closure)
    assert any(p.endswith("/libc.so.6") for p in paths(closure))


def test_runpath_is_not_inherited_but_rpath_is(tmp_path: Path) -> None:
    """prog -> libmid -> libf, where only prog's path names libf's folder: glibc's rule."""
    cc(tmp_path / "deep/libf.so", LIB, "-shared")
    results = {}
    for tags in (OLD_TAGS, NEW_TAGS):
        d = tmp_path / tags[-9:]
        cc(d / "mid/libmid.so", "int f(void);\nint g(void) { return f(); }\n", "-shared",
           f"-L{tmp_path}/deep", "-lf", OLD_TAGS)
        prog = cc(d / "prog", "int g(void);\nint main(void) { return g() == 42 ? 0 : 1; }\n",
                  f"-L{d}/mid", "-lmid", f"-Wl,-rpath,{d}/mid:{tmp_path}/deep", tags)
        results[tags] = runs_on_host(prog)
        if results[tags]:
            c = closure_of(tmp_path, contents=[str(prog)])
            assert f"{tmp_path}/deep/libf.so" in paths(c)
        else:
            with pytest.raises(ClosureError, match=r"libmid\.so needs libf\.so"):
                closure_of(tmp_path, contents=[str(prog)])
    assert results == {OLD_TAGS: True, NEW_TAGS: False}  # what the real loader did


def test_missing_library_names_the_file_that_needs_it(tmp_path: Path) -> None:
    prog = app(tmp_path)  # no rpath: libf.so is nowhere the loader looks
    assert not runs_on_host(prog)
    with pytest.raises(ClosureError) as e:
        closure_of(tmp_path, contents=[str(prog)])
    assert f"{prog} needs libf.so" in str(e.value)
    assert "allow-missing" in str(e.value)
    c = closure_of(tmp_path, contents=[str(prog)], allow_missing=True)
    assert any(f"{prog} needs libf.so" in w for w in c.warnings)
    assert str(prog) in paths(c)


def test_lib_and_platform_tokens(tmp_path: Path) -> None:
    lib = elf.LoaderConfig.from_host().lib((64, elf.EM_X86_64))
    platform = elf.LoaderConfig.from_host().platform((64, elf.EM_X86_64))
    cc(tmp_path / "d" / lib / "libf.so", LIB, "-shared")
    cc(tmp_path / "p" / platform / "libg.so", "int g(void) { return 1; }\n", "-shared")
    main = "int f(void); int g(void);\nint main(void) { return f() + g() == 43 ? 0 : 1; }\n"
    prog = cc(tmp_path / "prog", main,
              f"-L{tmp_path}/d/{lib}", f"-L{tmp_path}/p/{platform}", "-lf", "-lg",
              f"-Wl,-rpath,{tmp_path}/d/$LIB:{tmp_path}/p/${{PLATFORM}}")
    assert runs_on_host(prog)  # the real loader expands the tokens to the same folders
    c = closure_of(tmp_path, contents=[str(prog)])
    assert {f"{tmp_path}/d/{lib}/libf.so", f"{tmp_path}/p/{platform}/libg.so"} <= paths(c)


def test_expand_dst_as_the_loader_expands() -> None:
    o = "/opt/a/bin"
    # not normalised: the kernel takes .. after the symlinks before it
    assert elf.expand_dst("$ORIGIN/../lib", o, "lib64", "x86_64") == "/opt/a/bin/../lib"
    assert elf.expand_dst("${ORIGIN}/x:", o, "lib", "p") == "/opt/a/bin/x:"
    assert elf.expand_dst("/usr/$LIB/${PLATFORM}", o, "lib64", "x86_64") == "/usr/lib64/x86_64"
    # unknown tokens stay as written; $ORIGINAL is not $ORIGIN
    assert elf.expand_dst("$UNKNOWN/lib", o, "lib", "p") == "/$UNKNOWN/lib"
    assert elf.expand_dst("/a/$ORIGINAL", o, "lib", "p") == "/a/$ORIGINAL"
    # relative to the working folder, / for a service
    assert elf.expand_dst("relative/lib/", o, "lib", "p") == "/relative/lib"


def test_glibc_hwcaps_variants_ship_beside_the_plain_library(tmp_path: Path) -> None:
    cc(tmp_path / "lib/libf.so", LIB, "-shared")
    cc(tmp_path / "lib/glibc-hwcaps/x86-64-v2/libf.so", LIB, "-shared")
    prog = cc(tmp_path / "prog", MAIN, f"-L{tmp_path}/lib", "-lf", f"-Wl,-rpath,{tmp_path}/lib")
    assert runs_on_host(prog)
    c = closure_of(tmp_path, contents=[str(prog)])
    assert {f"{tmp_path}/lib/libf.so", f"{tmp_path}/lib/glibc-hwcaps/x86-64-v2/libf.so"} <= paths(c)


def test_symlink_chain_to_a_library_is_kept_whole(tmp_path: Path) -> None:
    real = cc(tmp_path / "lib/real/libf.so.1.0.0", LIB, "-shared", "-Wl,-soname,libf.so.1")
    (tmp_path / "lib/libf.so.1.0").symlink_to("real/libf.so.1.0.0")
    (tmp_path / "lib/libf.so.1").symlink_to("libf.so.1.0")
    (tmp_path / "lib/libf.so").symlink_to("libf.so.1")
    prog = cc(tmp_path / "prog", MAIN, f"-L{tmp_path}/lib", "-lf", f"-Wl,-rpath,{tmp_path}/lib")
    assert elf.read_elf(prog).needed[0] == "libf.so.1"  # type: ignore[union-attr]
    c = closure_of(tmp_path, contents=[str(prog)])
    chain = [f"{tmp_path}/lib/libf.so.1", f"{tmp_path}/lib/libf.so.1.0", str(real)]
    assert set(chain) <= paths(c)
    assert f"{tmp_path}/lib/libf.so" not in paths(c)  # the dev link is not referenced
    assert [str(n.image) for n in c.why(PurePosixPath(real))] == [str(prog), *chain]


def test_a_cycle_of_references_ends(tmp_path: Path) -> None:
    d = tmp_path / "lib"
    cc(d / "libb.so", "int b(void) { return 1; }\n", "-shared")
    cc(d / "liba.so", "int b(void);\nint a(void) { return b(); }\n", "-shared", f"-L{d}", "-lb",
       f"-Wl,-rpath,{d}", "-Wl,--no-as-needed")
    cc(d / "libb.so", "int a(void);\nint b(void) { return 1; }\nint c(void) { return a(); }\n",
       "-shared", f"-L{d}", "-la", f"-Wl,-rpath,{d}", "-Wl,--no-as-needed")
    assert elf.read_elf(d / "libb.so").needed[0] == "liba.so"  # type: ignore[union-attr]
    assert elf.read_elf(d / "liba.so").needed[0] == "libb.so"  # type: ignore[union-attr]
    c = closure_of(tmp_path, contents=[str(d / "liba.so")])
    assert {str(d / "liba.so"), str(d / "libb.so")} <= paths(c)
    assert c.nodes[PurePosixPath(d / "libb.so")].parent == PurePosixPath(d / "liba.so")


def test_not_elf_and_broken_elf(tmp_path: Path) -> None:
    (tmp_path / "text").write_text("hello")
    assert elf.read_elf(tmp_path / "text") is None
    (tmp_path / "broken").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\xff" * 10)
    with pytest.raises(elf.NotElf):
        elf.read_elf(tmp_path / "broken")
    c = closure_of(tmp_path, contents=[str(tmp_path / "broken")])
    assert any("cannot be read" in w for w in c.warnings)


@pytest.mark.parametrize("program", ["/usr/bin/bash", "/usr/bin/python3", "/usr/bin/ls",
                                     "/usr/sbin/lighttpd"])
def test_same_libraries_as_ldd(tmp_path: Path, program: str) -> None:
    require(os.path.exists(program), f"{program} is not installed")
    found = {os.path.realpath(n.host)
             for n in closure_of(tmp_path, units=[unit(program)], exclude=NO_RUNTIME_NEEDS)
             if elf.elf_kind(n.host) is not None and os.path.realpath(n.host) != os.path.realpath(program)}
    assert found == ldd_libraries(program)


def test_default_folders_match_the_host_loader() -> None:
    out = subprocess.run([LOADER, "--help"], capture_output=True, text=True, check=True).stdout
    system = [line.split()[0] for line in out.splitlines() if "(system search path)" in line]
    assert list(elf.LoaderConfig.from_host().default_dirs((64, elf.EM_X86_64))) == system


def test_fast_reader_agrees_with_pyelftools_on_host_files() -> None:
    """The struct reader against pyelftools (the reference) on every ELF file of a few host folders."""
    checked = 0
    for folder in ("/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu/systemd", "/usr/lib/lighttpd"):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            p = os.path.join(folder, name)
            if os.path.islink(p) or not os.path.isfile(p) or elf.elf_kind(p) is None:
                continue
            with open(p, "rb") as f:
                assert elf.read_dynamic(f) == elf.read_with_pyelftools(f), p
            checked += 1
    assert checked > 100


def test_a_library_already_loaded_is_not_searched_again(tmp_path: Path) -> None:
    """prog (RUNPATH d) needs libb and liba; liba needs libb but has no path of its own.

    The loader finds libb for liba because prog loaded it first (systemd's
    programs and libsystemd-core work this way); a search from liba alone fails.
    """
    d = tmp_path / "d"
    cc(d / "libb.so", "int b(void) { return 42; }\n", "-shared")
    cc(d / "liba.so", "int b(void);\nint a(void) { return b(); }\n", "-shared", f"-L{d}", "-lb")
    prog = cc(tmp_path / "prog", "int a(void); int b(void);\nint main(void) { return a() == b() ? 0 : 1; }\n",
              f"-L{d}", "-lb", "-la", f"-Wl,-rpath,{d}", NEW_TAGS, "-Wl,--no-as-needed")
    assert elf.read_elf(prog).needed[:2] == ("libb.so", "liba.so")  # type: ignore[union-attr]
    assert runs_on_host(prog)
    c = closure_of(tmp_path, contents=[str(prog)])
    assert {str(d / "liba.so"), str(d / "libb.so")} <= paths(c)
    with pytest.raises(ClosureError, match=r"liba\.so needs libb\.so"):
        closure_of(tmp_path, contents=[str(d / "liba.so")])


def test_a_library_before_its_program_is_judged_by_the_program(tmp_path: Path) -> None:
    """Whatever the order the closure meets them in, liba's need is met by prog's load."""
    d = tmp_path / "d"
    cc(d / "libb.so", "int b(void) { return 42; }\n", "-shared")
    cc(d / "liba.so", "int b(void);\nint a(void) { return b(); }\n", "-shared", f"-L{d}", "-lb")
    prog = cc(tmp_path / "prog", "int a(void); int b(void);\nint main(void) { return a() == b() ? 0 : 1; }\n",
              f"-L{d}", "-lb", "-la", f"-Wl,-rpath,{d}", NEW_TAGS, "-Wl,--no-as-needed")
    for contents in ([str(d / "liba.so"), str(prog)], [str(prog), str(d / "liba.so")]):
        c = closure_of(tmp_path, contents=contents)
        assert c.warnings == [] and str(d / "libb.so") in paths(c)


@pytest.mark.parametrize("line,expected", [
    (b"#!/bin/sh\n", ("/bin/sh", None)),
    (b"#! /usr/bin/env  python3 -u \nx", ("/usr/bin/env", "python3 -u")),  # one argument
    (b"#!/bin/bash\t-eu\n", ("/bin/bash", "-eu")),
    (b"#!/bin/sh\r\n", ("/bin/sh\r", None)),  # the kernel keeps a DOS line end
    (b"#!\n", None),
    (b"\x7fELF", None),
])
def test_shebang_is_split_as_the_kernel_does(line: bytes, expected: object) -> None:
    assert elf.parse_shebang(line) == expected


def test_shebang_crlf_fails_in_the_kernel_too(tmp_path: Path) -> None:
    """The \\r kept above is what execve does: the script cannot start."""
    script = tmp_path / "dos.sh"
    script.write_bytes(b"#!/bin/sh\r\nexit 0\r\n")
    script.chmod(0o755)
    with pytest.raises(FileNotFoundError):
        subprocess.run([str(script)], check=False)
    assert elf.parse_shebang(script.read_bytes()) == ("/bin/sh\r", None)


def test_host_fs_rooted_at_a_folder_keeps_links_inside(tmp_path: Path) -> None:
    """A folder seen as an image: absolute links resolve against it, as in the image."""
    from portable_service.fs.views import HostFS

    root = tmp_path / "root"
    cc(root / "usr/lib/x86_64-linux-gnu/libf.so.1", LIB, "-shared", "-Wl,-soname,libf.so.1")
    (root / "lib").symlink_to("/usr/lib")  # absolute: the host's /usr/lib outside the folder
    files = elf.Files(HostFS(root))
    assert files.real("/lib/x86_64-linux-gnu/libf.so.1") == "/usr/lib/x86_64-linux-gnu/libf.so.1"
    assert files.real("/lib/x86_64-linux-gnu/libc.so.6") is None  # the host has one; the folder not
    info = files.info("/lib/x86_64-linux-gnu/libf.so.1")
    assert info is not None and info.soname == "libf.so.1"
    config = elf.LoaderConfig(files)
    assert config.default_dirs((64, elf.EM_X86_64))[0] == "/lib/x86_64-linux-gnu"
    found, _ = elf.Loader(files, config).find("libf.so.1", elf.Loaded("/bin/p", info, "/bin", ()))
    assert found == elf.Found(("/lib/x86_64-linux-gnu/libf.so.1",), "default folder")


def test_dot_dot_after_a_folder_link_is_taken_as_the_kernel_takes_it(tmp_path: Path) -> None:
    """RPATH $ORIGIN/../lk/../lib with lk -> a/b: the loader looks in a/lib, not in lib."""
    from tests.builder.closure.closure_helpers import build_and_unpack

    t = tmp_path / "t"
    cc(t / "a/lib/libf.so", LIB, "-shared")
    (t / "a/b").mkdir()
    (t / "lk").symlink_to("a/b")
    prog = cc(t / "bin/prog", MAIN, f"-L{t}/a/lib", "-lf", "-Wl,-rpath,$ORIGIN/../lk/../lib", OLD_TAGS)
    assert runs_on_host(prog)
    c = closure_of(tmp_path, contents=[str(prog)])
    assert {f"{t}/a/lib/libf.so", f"{t}/lk"} <= paths(c)  # the link too: the loader goes through it
    assert f"{t}/lib/libf.so" not in paths(c)
    _, root = build_and_unpack(tmp_path, contents=[str(prog)])
    # through ld.so: a chroot has no /proc/self/exe, which the loader reads $ORIGIN of a program from
    run = chroot(root, LOADER, str(prog))
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("suite", ["bullseye", "bookworm", "trixie"])
def test_an_image_loader_searches_glibc_hwcaps_only_from_glibc_2_33(suite: str) -> None:
    """The Debian roots of the e2e tests (glibc 2.31, 2.36, 2.41) against their own ld.so --help."""
    from portable_service.fs.views import HostFS
    from portable_service.harness import roots

    release = roots.get_release(suite)
    require(roots.is_ready(release), f"the {suite} root is not created yet (the e2e tests make it)")
    root = roots.root_path(release)
    config = elf.LoaderConfig(elf.Files(HostFS(root)))
    out = chroot(root, LOADER, "--help")
    knows = "Subdirectories of glibc-hwcaps directories" in out.stdout
    assert knows == (suite != "bullseye")  # what glibc's history says
    assert config.hwcaps == (elf.host_loader().hwcaps if knows else ())
    assert config.default_dirs((64, elf.EM_X86_64)) == tuple(
        line.split()[0] for line in out.stdout.splitlines() if "(system search path)" in line) \
        or not knows  # 2.31 has no --help
