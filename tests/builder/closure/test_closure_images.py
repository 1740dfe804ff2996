"""Images around real host programs: unpacked, every ELF file in them runs or loads inside a chroot,
and nothing the programs do not reference comes along."""

from __future__ import annotations

import os
import stat
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from portable_service.builder.closure import deb
from portable_service.builder.layout import CLOSURE_RECORD
from portable_service.builder.sbom import IMAGE_SBOM
from tests.builder.closure.closure_helpers import (
    LOADER,
    NO_RUNTIME_NEEDS,
    build_and_unpack,
    chroot,
    elf_files,
    image_files,
    ldd_libraries,
    loader_list,
    unit,
)
from tests.conftest import REPO, require, require_root

pytestmark = pytest.mark.root
GENERATED = {"/etc/machine-id", "/etc/resolv.conf", "/etc/os-release", "/etc/ld.so.cache",
             str(CLOSURE_RECORD), str(IMAGE_SBOM)}


def regular_files(root: Path) -> set[str]:
    return {p for p in image_files(root) if not (root / p.lstrip("/")).is_symlink()
            and not p.startswith("/etc/systemd/system/")} - GENERATED


def assert_every_elf_loads(root: Path) -> int:
    """The image's own loader resolves every ELF file in the image, inside the chroot."""
    checked = 0
    for path in elf_files(root):
        if path.endswith("/ld-linux-x86-64.so.2"):
            continue
        proc = loader_list(root, path)
        if "not a dynamic executable" in proc.stdout + proc.stderr or "statically linked" in proc.stdout:
            continue
        assert proc.returncode == 0 and "not found" not in proc.stdout, (path, proc.stdout, proc.stderr)
        checked += 1
    return checked


@pytest.mark.parametrize("program", ["/usr/bin/bash", "/usr/bin/ls"])
def test_program_image_holds_exactly_its_closure(tmp_path: Path, program: str) -> None:
    require_root()
    _, root = build_and_unpack(tmp_path, units=[unit(f"{program} --version")],
                               exclude=NO_RUNTIME_NEEDS)
    run = chroot(root, program, "--version")
    assert run.returncode == 0 and run.stdout, run.stderr
    assert assert_every_elf_loads(root) >= 2
    expected = {os.path.realpath(program)} | ldd_libraries(program)
    assert regular_files(root) == expected  # no accidental copy of the host
    # the loader is where PT_INTERP says, through the host's own folder links
    assert os.path.exists(root / LOADER.lstrip("/"))
    assert (root / "lib64").is_symlink() == Path("/lib64").is_symlink()


def test_python_with_its_standard_library_from_packages(tmp_path: Path) -> None:
    require_root()
    require(os.path.exists("/usr/bin/python3") and "python3" in deb.Database.load().by_name,
            "Debian's python3 is not installed (apt-get install python3)")
    _, root = build_and_unpack(tmp_path, packages=["python3"],
                               units=[unit("/usr/bin/python3 -m http.server")])
    run = chroot(root, "/usr/bin/python3", "--version")
    assert run.returncode == 0 and run.stdout.startswith("Python 3"), run.stderr
    code = "import ssl, sqlite3, json, decimal, ctypes, lzma, bz2, zlib, readline; print('ok')"
    run = chroot(root, "/usr/bin/python3", "-c", code)
    assert (run.returncode, run.stdout) == (0, "ok\n"), run.stderr
    assert assert_every_elf_loads(root) > 20  # the interpreter and the lib-dynload modules
    files = image_files(root)
    assert not any(f.startswith("/usr/lib/python3/dist-packages") for f in files)
    assert not {"/usr/bin/perl", "/usr/bin/gcc", "/usr/bin/dpkg", "/usr/bin/apt"} & files
    assert not any(deb.is_doc(f) for f in files)


def test_lighttpd_example_serves_without_systemd_perl_or_dpkg(tmp_path: Path) -> None:
    """examples/lighttpd: packages = ["lighttpd"], unpacked and served from a chroot."""
    require_root()
    require(os.path.exists("/usr/sbin/lighttpd"), "lighttpd is not installed (apt-get install lighttpd)")
    example = REPO / "examples/lighttpd"
    spec = tomllib.loads((example / "portable.toml").read_text())
    _, root = build_and_unpack(example, **{k.replace("-", "_"): v for k, v in spec.items()},
                               output_dir=tmp_path / "result", root=tmp_path / "root")
    run = chroot(root, "/usr/sbin/lighttpd", "-v")
    assert run.returncode == 0 and run.stdout.startswith("lighttpd/"), run.stderr
    # /dev/null is what systemd's private /dev gives the service
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    # -tt loads every module of the config; then it serves, as the unit runs it
    run = chroot(root, "/usr/sbin/lighttpd", "-tt", "-f", "/etc/lighttpd/web.conf")
    assert run.returncode == 0, run.stdout + run.stderr
    server = subprocess.Popen(["chroot", str(root), "/usr/sbin/lighttpd", "-D", "-f",
                               "/etc/lighttpd/web.conf"], stderr=subprocess.PIPE, text=True)
    try:
        page = _get("http://127.0.0.1:18081/", server)
        assert "hello from a portable lighttpd" in page
        assert "Uptime" in _get("http://127.0.0.1:18081/server-status", server)  # mod_status
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert assert_every_elf_loads(root) >= 20
    files = image_files(root)
    assert {"/etc/mime.types", "/usr/lib/lighttpd/mod_status.so", "/usr/lib/lighttpd/mod_cgi.so"} <= files
    assert (root / "var/www/html").is_dir()  # a folder the package ships, without the host's contents
    assert not {"/usr/bin/perl", "/usr/bin/dpkg", "/usr/bin/systemctl", "/usr/lib/systemd/systemd",
                "/usr/sbin/adduser", "/usr/bin/debconf"} & files
    assert not any(deb.is_doc(f) for f in files)
    assert len(regular_files(root)) < 400


def _get(url: str, server: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError as e:
            if server.poll() is not None or time.monotonic() > deadline:
                err = server.stderr.read() if server.stderr else ""
                raise AssertionError(f"lighttpd did not answer ({e}): {err}") from None
            time.sleep(0.05)


def test_closure_images_are_reproducible(tmp_path: Path) -> None:
    """Same inputs, same bytes: the closure's order and the generated ld.so.cache are fixed."""
    require(os.path.exists("/usr/sbin/lighttpd"), "lighttpd is not installed (apt-get install lighttpd)")
    from portable_service import build

    settings = {"pname": "t", "version": "1", "units": [unit("/usr/bin/bash")], "packages": ["lighttpd"],
                "squash_compression": "gzip"}
    a = build(output_dir=tmp_path / "a", base_dir=tmp_path, **settings)
    b = build(output_dir=tmp_path / "b", base_dir=tmp_path, **settings)
    assert a.read_bytes() == b.read_bytes()
