"""Images around real host programs: unpacked, every ELF file in them runs or loads inside a chroot,
and nothing the programs do not reference comes along."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from closure_helpers import (
    LOADER,
    build_and_unpack,
    chroot,
    elf_files,
    image_files,
    ldd_libraries,
    loader_list,
    unit,
)

from conftest import require, require_root
from portable_service.closure import deb
from portable_service.image import CLOSURE_RECORD

pytestmark = pytest.mark.root
GENERATED = {"/etc/machine-id", "/etc/resolv.conf", "/etc/os-release", "/etc/ld.so.cache",
             str(CLOSURE_RECORD)}


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
    _, root = build_and_unpack(tmp_path, units=[unit(f"{program} --version")])
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
    require(os.path.exists("/usr/bin/python3") and
            (deb.ADMIN_DIR / "info/libpython3.11-stdlib:amd64.list").exists(),
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


def test_lighttpd_from_packages_serves_without_systemd_perl_or_dpkg(tmp_path: Path) -> None:
    require_root()
    require(os.path.exists("/usr/sbin/lighttpd"), "lighttpd is not installed (apt-get install lighttpd)")
    conf = tmp_path / "test.conf"
    modules = ["mod_accesslog", "mod_auth", "mod_authn_file", "mod_cgi", "mod_dirlisting",
               "mod_proxy", "mod_ssi", "mod_status", "mod_userdir", "mod_wstunnel"]
    conf.write_text('server.document-root = "/var/www/html"\nserver.port = 8080\n'
                    f"server.modules = ({', '.join(repr(m).replace(chr(39), chr(34)) for m in modules)})\n"
                    'include "/etc/lighttpd/conf-available/10-status.conf"\n')
    _, root = build_and_unpack(
        tmp_path, packages=["lighttpd"],
        units=[unit("/usr/sbin/lighttpd -D -f /etc/lighttpd/test.conf", name="t.service")],
        contents=[{"source": str(conf), "target": "/etc/lighttpd/test.conf"}])
    run = chroot(root, "/usr/sbin/lighttpd", "-v")
    assert run.returncode == 0 and run.stdout.startswith("lighttpd/"), run.stderr
    # -tt loads every module the config names: their libraries must all be there;
    # /dev/null is what systemd's private /dev gives the service
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    run = chroot(root, "/usr/sbin/lighttpd", "-tt", "-f", "/etc/lighttpd/test.conf")
    assert run.returncode == 0, run.stdout + run.stderr
    assert assert_every_elf_loads(root) >= 20
    files = image_files(root)
    assert {"/etc/mime.types", "/usr/lib/lighttpd/mod_status.so", "/var/www/html"} <= files | {
        "/var/www/html"} and (root / "var/www/html").is_dir()
    assert not {"/usr/bin/perl", "/usr/bin/dpkg", "/usr/bin/systemctl", "/usr/lib/systemd/systemd",
                "/usr/sbin/adduser", "/usr/bin/debconf"} & files
    assert not any(deb.is_doc(f) for f in files)
    assert len(regular_files(root)) < 400
