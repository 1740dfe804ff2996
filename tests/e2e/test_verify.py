"""verify against real systemd: what it passes attaches and starts, and each error it reports
is one systemd really refuses at attach or fails on at start (systemd 247, 252, 257)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from portable_service.fs.views import IndexedFS, open_image
from portable_service.look.verify import errors, verify
from tests.e2e.conftest import LOG_DIR
from tests.e2e.lib import build_image, unit
from tests.look import imagetrees as trees

pytestmark = pytest.mark.e2e


# Type=exec: start returns once the program was executed, so exec failures show at start
UNIT = trees.UNIT.replace("[Service]\n", "[Service]\nType=exec\n")


def _write(rel: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).write_text(text)


def _rm(rel: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        p = root / rel
        p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
    return change


def _unit_symlink(root: Path) -> None:
    (root / "usr/lib/demo").mkdir(parents=True)
    (root / "etc/systemd/system/demo.service").rename(root / "usr/lib/demo/demo.service")
    (root / "etc/systemd/system/demo.service").symlink_to("/usr/lib/demo/demo.service")


def _dangling_program(root: Path) -> None:
    (root / "usr/bin/demo").symlink_to("/usr/libexec/demo/demo")
    (root / "etc/systemd/system/demo.service").write_text(
        UNIT.replace("/usr/bin/sleep infinity", "/usr/bin/demo"))


def _no_libc(root: Path) -> None:
    for lib in root.rglob("libc.so.6"):
        if not lib.is_symlink():
            lib.unlink()


def _no_loader(root: Path) -> None:
    for lib in root.rglob("ld-linux*"):
        if not lib.is_symlink():
            lib.unlink()


def _rpath_program(tags: str) -> Callable[[Path], None]:
    """/opt/demo/bin/prog -> libn1 (no path of its own) -> libn3, both in the program's path:
    the loader finds libn3 for libn1 through the program's DT_RPATH, not its DT_RUNPATH."""
    def change(root: Path) -> None:
        import shutil
        import subprocess

        gcc = shutil.which("gcc")
        if gcc is None:
            pytest.skip("gcc is not installed")
        src, lib = root.parent / "src", root / "opt/demo/lib"
        src.mkdir(exist_ok=True)
        lib.mkdir(parents=True)
        (root / "opt/demo/bin").mkdir()
        (src / "n3.c").write_text("int f3(void) { return 3; }\n")
        (src / "n1.c").write_text("int f3(void);\nint f1(void) { return f3(); }\n")
        (src / "prog.c").write_text("#include <unistd.h>\nint f1(void);\n"
                                    "int main(void) { if (f1() != 3) return 1; pause(); return 0; }\n")
        for argv in (["-shared", "-fPIC", "-o", f"{lib}/libn3.so", f"{src}/n3.c"],
                     ["-shared", "-fPIC", "-o", f"{lib}/libn1.so", f"{src}/n1.c", f"-L{lib}", "-ln3"],
                     ["-o", f"{root}/opt/demo/bin/prog", f"{src}/prog.c", f"-L{lib}",
                      f"-Wl,-rpath-link,{lib}", "-ln1", "-Wl,-rpath,/opt/demo/lib", tags]):
            subprocess.run([gcc, *argv], check=True, capture_output=True)
        (root / "etc/systemd/system/demo.service").write_text(
            UNIT.replace("/usr/bin/sleep infinity", "/opt/demo/bin/prog"))
    return change


# (id, image name, change, mksquashfs args); verify decides what must happen
CASES = [
    ("clean", "demo_1.raw", None, ()),
    ("setuid-warning-only", "demo_1.raw", lambda r: (r / "usr/bin/sleep").chmod(0o4755), ()),
    ("no-os-release", "demo_1.raw", _rm("etc/os-release"), ()),
    ("empty-id", "demo_1.raw", _write("etc/os-release", "ID=\n"), ()),
    ("wrong-prefix", "other_1.raw", None, ()),
    ("portable-prefixes", "demo_1.raw", _write("etc/os-release", "ID=debian\n"
                                                "PORTABLE_PREFIXES=other\n"), ()),
    ("unit-symlink", "demo_1.raw", _unit_symlink, ()),
    ("no-dev", "demo_1.raw", _rm("dev"), ()),
    ("no-state-dir", "demo_1.raw", _rm("var/lib/demo"), ()),
    ("missing-program", "demo_1.raw", _write("etc/systemd/system/demo.service",
                                             UNIT.replace("/usr/bin/sleep", "/usr/bin/nope")), ()),
    ("dangling-program-link", "demo_1.raw", _dangling_program, ()),
    ("missing-library", "demo_1.raw", _no_libc, ()),
    ("missing-loader", "demo_1.raw", _no_loader, ()),
    ("library-through-program-rpath", "demo_1.raw", _rpath_program("-Wl,--disable-new-dtags"), ()),
    ("library-not-through-program-runpath", "demo_1.raw",
     _rpath_program("-Wl,--enable-new-dtags"), ()),
    ("root-0700", "demo_1.raw", None, ("-root-mode", "0700")),
]


# Rules systemd 247 (Debian 11) does not apply yet; 252 and 257 refuse such images.
NEWER_RULES = {"os-release-id", "portable-prefixes"}
NEWER_RULES_SINCE = 252


def _outcome(c, image: Path) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """'started', 'attach refused' or 'start failed', with systemd's words."""
    name = image.name.removesuffix(".raw")
    seen = len(c.journal("demo.service").splitlines())  # earlier cases in this container
    attach = c.attach(image)
    if not attach.ok:
        c.remove_image(name)
        return "attach refused", attach.output
    try:
        start = c.start("demo.service")
        state = c.unit_state("demo.service")
        deadline = time.monotonic() + 2  # a loader failing after exec needs a moment
        while start.ok and not state.failed and time.monotonic() < deadline:
            time.sleep(0.1)
            state = c.unit_state("demo.service")
        journal = "\n".join(c.journal("demo.service").splitlines()[seen:])
    finally:
        # stop first: 247's `detach --now` sometimes finds the unit still active and refuses
        c.systemctl("stop", "demo.service")
        detach = c.detach(name)
        if not detach.ok and c.release.systemd < 248:
            c.systemctl("stop", "demo.service")
            detach = c.detach(name)
    assert detach.ok and c.attached_units() == [], f"detach of {name}: {detach.output}"
    if start.ok and state.active == "active" and not state.failed:
        return "started", journal
    return "start failed", f"{start.output}\n{state}\n{journal}"


def _log(c, name: str, errs: list, outcome: str, said: str) -> None:  # type: ignore[no-untyped-def]
    """Evidence for the README: what verify said and what systemd did, per release."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    words = [ln.strip() for ln in said.splitlines()
             if any(k in ln for k in ("ailed", "refus", "lacks", "Couldn't", "No such", "status="))]
    with open(LOG_DIR / f"verify-{c.release.suite}.txt", "a") as f:
        f.write(f"## {name}: verify {sorted({e.rule for e in errs}) or 'clean'} -> {outcome}\n")
        f.writelines(f"   {w}\n" for w in words[:3])


@pytest.mark.parametrize(("name", "change", "extra"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_verify_agrees_with_systemd(container, tmp_path, request, name, change, extra) -> None:
    root = trees.make_tree(tmp_path / "tree", unit=UNIT)
    if change is not None:
        change(root)
    image = trees.mksquashfs(root, tmp_path / name, *extra)
    problems = verify(IndexedFS(open_image(image)), image.name)
    outcome, said = _outcome(container, image)
    errs = errors(problems)
    _log(container, request.node.callspec.id, errs, outcome, said)
    where = f"{container.release.suite}: verify said {[p.line() for p in problems]}; " \
            f"systemd: {outcome}: {said[-1500:]}"
    if errs and {e.rule for e in errs} <= NEWER_RULES \
            and container.release.systemd < NEWER_RULES_SINCE:
        assert outcome == "started", where  # the documented difference of older systemd
    elif errs:
        assert outcome != "started", where
    else:
        assert outcome == "started", where


def test_our_build_passes_verify_and_starts(container, tmp_path) -> None:
    settings = {"pname": "demo", "version": "2", "units": [unit("demo.service", UNIT)],
                "contents": trees.host_closure(trees.PROGRAM)}
    image = build_image(tmp_path, settings)
    assert errors(verify(IndexedFS(open_image(image)), image.name)) == []
    outcome, said = _outcome(container, image)
    assert outcome == "started", said
