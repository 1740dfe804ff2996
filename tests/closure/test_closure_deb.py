"""Debian packages: dependencies through alternatives and virtual packages, the skip list, docs."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from closure_helpers import closure_of, make_spec

from conftest import require
from portable_service.closure import deb
from portable_service.errors import ClosureError

STATUS = """\
Package: app
Status: install ok installed
Architecture: amd64
Version: 1
Installed-Size: 10
Pre-Depends: init-system-helpers (>= 1.54~)
Depends: libc6 (>= 2.36), media-types | mime-support, systemd-sysv | lsb-base,
 www-server, debconf (>= 0.5) | debconf-2.0, heavy | light:any [amd64]

Package: libc6
Status: install ok installed
Architecture: amd64
Installed-Size: 12000

Package: media-types
Status: install ok installed
Architecture: all
Installed-Size: 100

Package: mime-support
Status: install ok installed
Architecture: all
Installed-Size: 5

Package: server
Status: install ok installed
Architecture: amd64
Provides: www-server (= 2)
Installed-Size: 50
Depends: libc6

Package: heavy
Status: install ok installed
Architecture: amd64
Installed-Size: 9000

Package: light
Status: install ok installed
Architecture: amd64
Installed-Size: 1

Package: init-system-helpers
Status: install ok installed
Architecture: all
Depends: perl-base

Package: lsb-base
Status: install ok installed
Architecture: all

Package: removed
Status: deinstall ok config-files
Architecture: amd64
"""


def db() -> deb.Database:
    return deb.Database(deb.parse_status(STATUS), native_arch="amd64")


def test_parse_relations() -> None:
    assert deb.parse_relations("a (>= 1), b:any | c [amd64] <!nocheck>, d:amd64") == (
        ("a",), ("b", "c"), ("d",))
    assert deb.parse_relations("") == ()


def test_only_installed_packages_are_known() -> None:
    d = db()
    assert "removed" not in d.by_name
    assert [p.name for p in d.candidates("www-server", "amd64")] == ["server"]


def test_select_follows_alternatives_virtuals_and_skips_the_host_machinery() -> None:
    warnings: list[str] = []
    chosen = deb.select(db(), ("app",), deb.DEFAULT_SKIP, warnings)
    names = [s.package.name for s in chosen]
    # media-types | mime-support: the lighter installed side; heavy | light: light
    assert names == ["app", "libc6", "mime-support", "server", "light"]
    assert "init-system-helpers" not in names and "lsb-base" not in names
    assert next(s for s in chosen if s.package.name == "server").chain == ("app", "server")
    assert warnings == []


def test_an_empty_skip_list_takes_everything_installed() -> None:
    warnings: list[str] = []
    names = {s.package.name for s in deb.select(db(), ("app",), (), warnings)}
    assert {"init-system-helpers", "lsb-base"} <= names
    # perl-base and debconf are not installed in this database: said, not fatal
    assert any("perl-base" in w for w in warnings)
    assert any("debconf" in w for w in warnings)


def test_a_package_that_is_not_installed_is_an_error_naming_apt_get() -> None:
    with pytest.raises(ClosureError, match="package nope is not installed") as e:
        deb.select(db(), ("nope",), (), [])
    assert "apt-get install nope" in str(e.value)


def test_docs_are_left_out() -> None:
    assert deb.is_doc("/usr/share/doc/x/copyright")
    assert deb.is_doc("/usr/share/man")
    assert not deb.is_doc("/usr/share/docs-not/x")


def _host_has(package: str) -> bool:
    return (deb.ADMIN_DIR / "info" / f"{package}.list").exists() or any(
        (deb.ADMIN_DIR / "info").glob(f"{package}:*.list"))


def test_lighttpd_from_the_host_database(tmp_path: Path) -> None:
    require(_host_has("lighttpd"), "lighttpd is not installed (apt-get install lighttpd)")
    d = deb.Database.load()
    warnings: list[str] = []
    names = {s.package.name for s in deb.select(d, ("lighttpd",), deb.DEFAULT_SKIP, warnings)}
    assert {"lighttpd", "libc6", "libpcre2-8-0", "media-types"} <= names
    assert not names & {"systemd", "systemd-sysv", "perl", "perl-base", "dpkg", "init-system-helpers",
                        "debconf", "adduser", "lsb-base"}
    c = closure_of(tmp_path, packages=["lighttpd"])
    files = {str(p) for p in c.nodes}
    assert "/usr/sbin/lighttpd" in files and "/etc/mime.types" in files
    assert "/usr/lib/lighttpd/mod_accesslog.so" in files
    assert not any(deb.is_doc(f) for f in files)
    assert "/usr/bin/perl" not in files  # its .pl helper scripts are data, not programs the unit runs
    node = c.nodes[PurePosixPath("/etc/mime.types")]
    assert (node.package, node.reason) == ("media-types", "file of package media-types "
                                           "(lighttpd -> media-types)")
    # a package's folder is one entry, not the whole host folder
    assert "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0" not in files
    with_docs = closure_of(tmp_path, packages=["lighttpd"], package_docs=True)
    assert any(str(p).startswith("/usr/share/doc/lighttpd") for p in with_docs.nodes)


def test_spec_keys_for_packages(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, packages=["a"], skip_packages=[], package_docs=True)
    assert (spec.skip_packages, spec.package_docs) == ((), True)
    assert make_spec(tmp_path).skip_packages is None  # the documented default list applies


def test_a_package_folder_link_does_not_bring_the_whole_folder(tmp_path: Path) -> None:
    """dpkg lists /lib for libbz2-1.0 (and not /usr/lib); on merged-/usr hosts /lib is a link."""
    require(_host_has("libbz2-1.0"), "libbz2-1.0 is not installed")
    require(os.path.islink("/lib"), "this host's /lib is not a link (merged /usr)")
    c = closure_of(tmp_path, packages=["libbz2-1.0"], skip_packages=["libc6"])
    node = c.nodes[PurePosixPath("/usr/lib")]
    assert node.reason == "symlink target of /lib" and node.package == "libbz2-1.0"
    files = {str(p) for p in c.nodes}
    assert not any(f.startswith("/usr/lib/python3") for f in files)
    assert len(files) < 100


def test_package_files_from_a_dpkg_database(tmp_path: Path) -> None:
    """Files as dpkg lists them: docs left out, diversions followed, missing files passed over."""
    from portable_service.closure import Closure, Context

    root = tmp_path / "fs"
    for rel in ("usr/bin/tool", "usr/bin/tool.distrib", "etc/app.conf"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    admin = tmp_path / "dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "status").write_text("Package: app\nStatus: install ok installed\nArchitecture: amd64\n")
    doc = "/usr/share/doc/libc6/copyright"  # a real doc file: docs are known by their host path
    require(os.path.exists(doc), f"{doc} is missing")
    listed = ["/.", str(root), f"{root}/usr/bin/tool", doc, f"{root}/etc/app.conf", f"{root}/etc/gone.conf"]
    (admin / "info/app:amd64.list").write_text("\n".join(listed) + "\n")
    # another package diverted app's tool away: app's own file is tool.distrib
    (admin / "diversions").write_text(f"{root}/usr/bin/tool\n{root}/usr/bin/tool.distrib\nother\n")
    spec = make_spec(tmp_path, packages=["app"])
    nodes = {str(n.image): n for n in deb.package_nodes(spec, Context(spec, Closure()), admin)}
    assert set(nodes) == {str(root), f"{root}/usr/bin/tool.distrib", f"{root}/etc/app.conf"}
    assert all(n.package == "app" for n in nodes.values())
    docs = make_spec(tmp_path, packages=["app"], package_docs=True)
    assert doc in {
        str(n.image) for n in deb.package_nodes(docs, Context(docs, Closure()), admin)}
