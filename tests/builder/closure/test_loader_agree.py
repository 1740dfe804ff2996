"""The build's closure, ``verify`` and glibc's own loader agree on random library layouts.

A few tiny libraries and a program are compiled once; every example copies
them into a random layout (several folders, a symlinked folder, a
glibc-hwcaps subfolder, an image ld.so.cache with its ld.so.conf.d entry),
gives each object a random DT_RPATH or DT_RUNPATH (absolute, ``$ORIGIN``,
through the symlink) with patchelf, builds the image and compares, for every
DT_NEEDED name, where three parties find it:

- the build: the closure's ELF resolver over the host;
- ``verify``: the same loader model over the built image (its misses as
  ``elf-library`` problems);
- the real loader: ``ld.so`` in trace mode (what ``ldd`` and ``ld.so --list`` use),
  chrooted into the unpacked image.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from portable_service.builder.closure import Closure, Context, Node, ldcache
from portable_service.builder.closure.elf import ElfResolver, Files, Loader, read_elf
from portable_service.errors import ClosureError
from portable_service.fs.views import HostFS, open_image
from portable_service.look.verify import verify
from tests.builder.closure.closure_helpers import LOADER, build_and_unpack, cc, host_dir, make_spec, unit
from tests.conftest import require, require_root, require_tool

LIBS = ("n1", "n2", "n3", "n4")
# what each object needs (besides libc): prog -> n1 n2, n1 -> n3, n2 -> n4, n3 -> n4
NEEDS = {"prog": ("n1", "n2"), "n1": ("n3",), "n2": ("n4",), "n3": ("n4",), "n4": ()}
FOLDERS = ("d0", "d1", "d2")
LINK = "lk"  # a folder symlink to one of FOLDERS
X86_64_LIBC6 = 0x0303  # ld.so.cache flags: FLAG_ELF_LIBC6 | FLAG_X8664_LIB64


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """libnN.so (soname libnN.so) and prog, linked so that each needs what NEEDS says."""
    require_root()
    require_tool("patchelf")
    require_tool("unsquashfs")
    require(os.path.exists(LOADER), f"{LOADER} is not there")
    d = tmp_path_factory.mktemp("objects")
    out: dict[str, Path] = {}
    for name in reversed(LIBS):  # n4 first: the others link against it
        calls = "".join(f"int f{n[1:]}(void);\n" for n in NEEDS[name])
        body = " + ".join(f"f{n[1:]}()" for n in NEEDS[name]) or "0"
        out[name] = cc(d / f"lib{name}.so", f"{calls}int f{name[1:]}(void) {{ return 1 + {body}; }}\n",
                       "-shared", f"-Wl,-soname,lib{name}.so", f"-L{d}", f"-Wl,-rpath-link,{d}",
                       "-Wl,--no-as-needed", *(f"-l{n}" for n in NEEDS[name]))
    main = "int f1(void); int f2(void);\nint main(void) { return f1() + f2() > 0 ? 0 : 1; }\n"
    out["prog"] = cc(d / "prog", main, f"-L{d}", f"-Wl,-rpath-link,{d}", "-Wl,--no-as-needed",
                     "-ln1", "-ln2")
    for name, path in out.items():
        info = read_elf(path)
        assert info is not None and info.needed[:len(NEEDS[name])] == tuple(f"lib{n}.so" for n in NEEDS[name])
    return out


@dataclass(frozen=True)
class Layout:
    places: dict[str, tuple[str, ...]]  # lib -> folders holding a copy
    hwcaps: tuple[tuple[str, str], ...]  # (lib, folder): a copy in folder/glibc-hwcaps/x86-64-v2
    link: str | None  # the folder lk points to
    paths: dict[str, tuple[str, tuple[str, ...]]]  # object -> ("rpath"|"runpath"|"", entries)
    cache: str | None  # the folder the image's ld.so.cache lists


ENTRIES = st.sampled_from([*(f"@/{f}" for f in FOLDERS), *(f"$ORIGIN/../{f}" for f in FOLDERS),
                           "$ORIGIN", f"@/{LINK}", f"$ORIGIN/../{LINK}", "${ORIGIN}/../d1"])


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    # every library somewhere, at most one nowhere: a layout with most of them missing says little
    places = {lib: tuple(draw(st.lists(st.sampled_from(FOLDERS), min_size=1, max_size=2, unique=True)))
              for lib in LIBS}
    gone = draw(st.none() | st.sampled_from(LIBS))
    if gone:
        places[gone] = ()
    hwcaps = tuple(draw(st.lists(st.tuples(st.sampled_from(LIBS), st.sampled_from(FOLDERS)),
                                 max_size=1)))
    link = draw(st.none() | st.sampled_from(FOLDERS))
    paths = {obj: (draw(st.sampled_from(["", "rpath", "runpath"])),
                   tuple(draw(st.lists(ENTRIES, min_size=1, max_size=2))))
             for obj in ("prog", *LIBS)}
    cache = draw(st.none() | st.sampled_from(FOLDERS))
    return Layout(places, hwcaps, link, paths, cache)


def lay_out(objects: dict[str, Path], layout: Layout, base: Path) -> tuple[Path, list[object]]:
    """The tree base/t for ``layout``; returns it and the spec's contents."""
    t = base / "t"
    staged = base / "staged"
    staged.mkdir()
    for obj, (kind, entries) in layout.paths.items():
        f = staged / objects[obj].name
        shutil.copy2(objects[obj], f)
        if kind:
            rpath = ":".join(e.replace("@", str(t)) for e in entries)
            subprocess.run(["patchelf", "--set-rpath", rpath, *(["--force-rpath"] if kind == "rpath" else []),
                            str(f)], check=True, capture_output=True)
    (t / "bin").mkdir(parents=True)
    shutil.copy2(staged / "prog", t / "bin/prog")
    for folder in FOLDERS:
        (t / folder).mkdir()
    for lib, folders in layout.places.items():
        for folder in folders:
            shutil.copy2(staged / f"lib{lib}.so", t / folder)
    for lib, folder in layout.hwcaps:
        (t / folder / "glibc-hwcaps/x86-64-v2").mkdir(parents=True, exist_ok=True)
        shutil.copy2(staged / f"lib{lib}.so", t / folder / "glibc-hwcaps/x86-64-v2")
    if layout.link:
        (t / LINK).symlink_to(layout.link)
    contents: list[object] = [str(t)]
    if layout.cache:
        entries = [ldcache.CacheEntry(f"lib{lib}.so", f"{t}/{layout.cache}/lib{lib}.so", X86_64_LIBC6)
                   for lib in LIBS if layout.cache in layout.places[lib]]
        (base / "ld.so.cache").write_bytes(ldcache.render(entries))
        (base / "t.conf").write_text(f"{t}/{layout.cache}\n")
        contents += [{"source": str(base / "ld.so.cache"), "target": "/etc/ld.so.cache"},
                     {"source": str(base / "t.conf"), "target": "/etc/ld.so.conf.d/t.conf"}]
    return t, contents


LIST_LINE = re.compile(r"^\s*(\S+) => (not found|(\S+) \(0x[0-9a-f]+\))$")


def real_loader(root: Path, program: str, real: Files) -> tuple[dict[str, str], set[str], str]:
    """What ``ld.so --list`` in the image finds: name -> resolved path, and the names not found."""
    # ldd's way: in trace mode a library not found is listed, not fatal (ld.so --list stops);
    # chrooted in the child itself, or the variable would trace chroot(8)
    def enter() -> None:
        os.chroot(root)
        os.chdir("/")

    proc = subprocess.run([LOADER, program], capture_output=True, text=True, check=False,
                          timeout=60, env={"LD_TRACE_LOADED_OBJECTS": "1"}, preexec_fn=enter)
    found: dict[str, str] = {}
    missing: set[str] = set()
    for line in proc.stdout.splitlines():
        m = LIST_LINE.match(line)
        if m is None:
            continue
        if m.group(3) is None:
            missing.add(m.group(1))
        else:
            found[m.group(1)] = real.real(m.group(3)) or m.group(3)
    assert found or missing, proc.stdout + proc.stderr
    return found, missing, proc.stdout


def builder(base: Path, program: str, contents: list[object], real: Files) -> tuple[dict[str, str], set[str]]:
    """What the build's resolver finds for the program (the first path of a name is the one opened)."""
    spec = make_spec(base, contents=contents, units=[unit(program)], allow_missing=True)
    ctx = Context(spec, Closure())
    found: dict[str, str] = {}
    for node in ElfResolver(ctx)(Node(PurePosixPath(program), Path(program), "program")):
        m = re.match(r"DT_NEEDED (\S+) ", node.reason)
        if m and m.group(1) not in found:
            found[m.group(1)] = real.real(str(node.image)) or str(node.image)
    missing = {m.group(1) for w in ctx.closure.warnings
               if (m := re.search(r"needs (\S+), which the loader would not find", w))}
    return found, missing


def verifier(image: Path, program: str) -> tuple[dict[str, str], set[str]]:
    """verify's loader over the built image, and the names its elf-library errors report."""
    fs = open_image(image)
    try:
        files = Files(fs)
        info = files.info(program)
        assert info is not None
        found = {lk.name: files.real(lk.found.paths[0]) or "" for lk in
                 Loader(files).load(program, info, program=True).lookups if lk.found is not None}
        # errors: the misses of the load of a program the unit runs (a lone library's are warnings)
        missing = {m.group(1) for p in verify(fs, image.name)
                   if (p.rule, p.severity) == ("elf-library", "error")
                   and (m := re.match(r"needs (\S+),", p.message))}
    finally:
        fs.close()
    return found, missing


def layout(places: dict[str, tuple[str, ...]], paths: dict[str, tuple[str, tuple[str, ...]]],
           hwcaps: tuple[tuple[str, str], ...] = (), link: str | None = None,
           cache: str | None = None) -> Layout:
    return Layout({lib: places.get(lib, ()) for lib in LIBS}, hwcaps, link,
                  {obj: paths.get(obj, ("", ("@/d0",))) for obj in ("prog", *LIBS)}, cache)


EVERYWHERE = {lib: ("d1",) for lib in LIBS}
# each rule met at least once, whatever the random draw
RULES = [
    # the program's DT_RPATH serves the libraries it loads (n1 has no path of its own)
    layout(EVERYWHERE, {"prog": ("rpath", ("@/d1",))}),
    # ... but not one with a DT_RUNPATH (n1 -> n3 not found)
    layout(EVERYWHERE, {"prog": ("rpath", ("@/d1",)), "n1": ("runpath", ("@/d0",))}),
    # a DT_RUNPATH serves its own object only (n1 -> n3 not found)
    layout(EVERYWHERE, {"prog": ("runpath", ("@/d1",))}),
    # RPATH before RUNPATH-less ancestors, $ORIGIN/.. through a folder link, first folder wins
    layout({**EVERYWHERE, "n3": ("d0", "d2")},
           {"prog": ("rpath", (f"$ORIGIN/../{LINK}", "@/d1")), "n1": ("rpath", ("$ORIGIN/../d0",))},
           link="d2"),
    # a glibc-hwcaps variant comes before the folder itself
    layout(EVERYWHERE, {"prog": ("runpath", ("@/d1",)), "n1": ("runpath", ("$ORIGIN",)),
                        "n2": ("runpath", ("$ORIGIN",)), "n3": ("runpath", ("$ORIGIN",))},
           hwcaps=(("n3", "d1"),)),
    # the image's ld.so.cache finds what no path names
    layout({**EVERYWHERE, "n4": ("d2",)}, {"prog": ("rpath", ("@/d1",))}, cache="d2"),
]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts())
@example(layout=RULES[0])
@example(layout=RULES[1])
@example(layout=RULES[2])
@example(layout=RULES[3])
@example(layout=RULES[4])
@example(layout=RULES[5])
def test_build_verify_and_the_loader_agree(objects: dict[str, Path], layout: Layout) -> None:
    base = host_dir()  # outside /tmp: unit paths there are run-time paths
    try:
        t, contents = lay_out(objects, layout, base)
        program = f"{t}/bin/prog"
        image, root = build_and_unpack(base, contents=contents, units=[unit(program)],
                                       allow_missing=True, verify=False)
        in_image = Files(HostFS(root))
        loader_found, loader_missing, listing = real_loader(root, program, in_image)
        assert builder(base, program, contents, in_image) == (loader_found, loader_missing), listing
        assert verifier(image, program) == (loader_found, loader_missing), listing
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("tags,runs", [("rpath", True), ("runpath", False)])
def test_build_accepts_what_the_loader_runs(objects: dict[str, Path], tags: str, runs: bool) -> None:
    """prog -> n1 -> n3, with n3 only in a folder the program's path names.

    With DT_RPATH the loader finds it for n1 too, so the build (and its verify)
    must accept the image; with DT_RUNPATH it does not, and both refuse it.
    The image's ld.so.cache (shipped by contents) finds n4.
    """
    base = host_dir()
    try:
        t, contents = lay_out(objects, layout({**EVERYWHERE, "n4": ("d2",)}, {"prog": (tags, ("@/d1",))},
                                              cache="d2"), base)
        program = f"{t}/bin/prog"
        if not runs:
            with pytest.raises(ClosureError, match=r"libn1\.so needs libn3\.so"):
                build_and_unpack(base, contents=contents, units=[unit(program)])
            # allow-missing: the build warns and keeps the image; verify on it still refuses
            image, root = build_and_unpack(base, contents=contents, units=[unit(program)],
                                           allow_missing=True)
            fs = open_image(image)
            try:
                found = [p.message for p in verify(fs, image.name) if p.severity == "error"]
            finally:
                fs.close()
            assert any("libn3.so" in m for m in found), found
        else:
            _, root = build_and_unpack(base, contents=contents, units=[unit(program)])
        proc = subprocess.run([program], capture_output=True, text=True, check=False, timeout=60,
                              preexec_fn=lambda: (os.chroot(root), os.chdir("/")))
        assert (proc.returncode == 0) == runs, proc.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)
