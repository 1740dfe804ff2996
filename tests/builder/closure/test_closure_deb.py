"""Debian packages: dependencies through alternatives and virtual packages, the skip list, docs,
which packages are shipped whole, units left out, contents over package files."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.closure import Closure, Context, Node, deb
from portable_service.builder.closure.walk import _check_same_source
from portable_service.errors import ClosureError, SpecError, TreeError
from tests.builder.closure.closure_helpers import closure_of, make_spec
from tests.conftest import require

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
                                           "(lighttpd -> media-types; package-data)")
    # libc6 gives the libraries the ELF closure needs, not its gconv modules
    libc = next(p for p in c.nodes if p.name == "libc.so.6")  # as ld.so.cache spells it
    assert c.nodes[libc].reason.startswith("DT_NEEDED libc.so.6") and c.nodes[libc].package is None
    assert not any("/gconv/" in f for f in files)
    # the package's unit and init script stay out, and the build output says so
    assert not any(deb.is_unit(f) for f in files)
    assert any(n.startswith("left out 2 unit files of packages: lighttpd, lighttpd.service")
               for n in c.notes), c.notes
    # package-data = ["+libc6"] ships libc6 whole again
    again = closure_of(tmp_path, packages=["lighttpd"], package_data=["+libc6"])
    assert any("/gconv/" in str(p) for p in again.nodes)
    assert PurePosixPath("/etc/mime.types") in again.nodes
    # a package's folder is one entry, not the whole host folder
    assert "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0" not in files
    with_docs = closure_of(tmp_path, packages=["lighttpd"], package_docs=True)
    assert any(str(p).startswith("/usr/share/doc/lighttpd") for p in with_docs.nodes)


def test_spec_keys_for_packages(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, packages=["a"], skip_packages=[], package_docs=True,
                     package_data=["+libc6", "-tzdata"])
    assert (spec.skip_packages, spec.package_docs) == ((), True)
    assert spec.package_data == ("+libc6", "-tzdata")
    assert make_spec(tmp_path).skip_packages is None  # the documented default list applies
    assert make_spec(tmp_path).package_data is None


def test_a_list_that_both_replaces_and_edits_the_default_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="skip-packages mixes") as e:
        make_spec(tmp_path, skip_packages=["+perl", "python3"])
    assert "'+python3'" in str(e.value)
    with pytest.raises(SpecError, match="empty package name"):
        make_spec(tmp_path, package_data=["+"])


def test_plus_adds_to_the_default_list_minus_takes_from_it() -> None:
    assert deb.effective(None, ("a", "b")) == ("a", "b")
    assert deb.effective(("c",), ("a", "b")) == ("c",)
    assert deb.effective((), ("a", "b")) == ()
    assert deb.effective(("+c", "-a", "+b"), ("a", "b")) == ("b", "c")
    warnings: list[str] = []
    # skip-packages = ["+server"]: the default list and server
    names = [s.package.name for s in deb.select(
        db(), ("app",), deb.effective(("+server",), deb.DEFAULT_SKIP), warnings)]
    assert "server" not in names and "lsb-base" not in names and "light" in names


WHOLE = STATUS + """
Package: meta
Status: install ok installed
Architecture: all
Depends: app, unrelated-lib

Package: app-data
Source: app (1.0-1)
Status: install ok installed
Architecture: all

Package: unrelated-lib
Status: install ok installed
Architecture: amd64
Depends: app-data, tzdata

Package: tzdata
Status: install ok installed
Architecture: all
"""


def test_which_packages_are_shipped_whole(tmp_path: Path) -> None:
    d = deb.Database(deb.parse_status(WHOLE), native_arch="amd64", admin_dir=tmp_path)
    (tmp_path / "info").mkdir()
    # meta lists nothing but its docs: a metapackage, standing for what it depends on
    (tmp_path / "info/meta.list").write_text("/.\n/usr\n/usr/share/doc/meta/copyright\n")
    (tmp_path / "info/app:amd64.list").write_text("/usr/bin/true\n")
    chosen = deb.select(d, ("meta",), deb.DEFAULT_SKIP, [])
    whole = {w.selected.package.name: w.why for w in deb.whole_packages(d, chosen, deb.DEFAULT_DATA)}
    assert whole == {
        "meta": "named in packages",
        "app": "dependency of metapackage meta",
        "unrelated-lib": "dependency of metapackage meta",
        "app-data": "built from source app, as app is",
        "tzdata": "package-data",
        "mime-support": "package-data",  # app's media-types | mime-support: the lighter one
    }
    # app's own dependencies are libraries and servers: only what the closure reaches
    assert {s.package.name for s in chosen} - set(whole) == {"libc6", "server", "light"}
    # named directly, app is not a metapackage: its dependencies are not named
    chosen = deb.select(d, ("app",), deb.DEFAULT_SKIP, [])
    assert {w.selected.package.name for w in deb.whole_packages(d, chosen, ())} == {"app"}
    # a dependency that ships what a unit runs is the program's own: shipped whole
    # (/bin/true on a merged-/usr host is /usr/bin/true, as dpkg may list it)
    (tmp_path / "info/light:amd64.list").write_text("/usr\n/usr/bin\n/usr/bin/true\n")
    whole = {w.selected.package.name: w.why
             for w in deb.whole_packages(d, chosen, (), [PurePosixPath("/bin/true")])}
    assert whole == {"app": "named in packages", "light": "ships /bin/true, which a unit uses"}


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


def _fake_package(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path]:
    """A dpkg database with one installed package ``app`` owning ``files`` below a host root."""
    root = tmp_path / "fs"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    admin = tmp_path / "dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "status").write_text("Package: app\nStatus: install ok installed\nArchitecture: amd64\n")
    listed = [f"{root}/{rel}" for rel in files]
    (admin / "info/app:amd64.list").write_text("\n".join(listed) + "\n")
    return root, admin


def test_units_and_init_scripts_of_packages_stay_out(tmp_path: Path) -> None:
    root, admin = _fake_package(tmp_path, {"etc/app.conf": "x"})
    units = ["/lib/systemd/system/app.service", "/usr/lib/systemd/system/app@.service",
             "/usr/lib/systemd/user/app.socket", "/lib/systemd/system/app.service.d/x.conf",
             "/usr/lib/systemd/system-generators/app-gen", "/etc/init.d/app",
             "/etc/systemd/system/multi-user.target.wants/app.service"]
    assert all(deb.is_unit(u) for u in units)
    assert not deb.is_unit("/usr/lib/systemd/systemd-foo") and not deb.is_unit("/etc/init")
    with (admin / "info/app:amd64.list").open("a") as f:
        f.write("/lib/systemd/system\n/etc/init.d\n" + "\n".join(units) + "\n")
    spec = make_spec(tmp_path, packages=["app"])
    ctx = Context(spec, Closure())
    nodes = {str(n.image) for n in deb.package_nodes(spec, ctx, admin)}
    assert nodes == {f"{root}/etc/app.conf"}
    assert f"left out {len(units)} unit files of packages: app, app-gen, app.service, " \
        "app.socket, app@.service, x.conf" in "\n".join(ctx.closure.notes)


def test_a_users_content_replaces_a_package_file(tmp_path: Path) -> None:
    root, admin = _fake_package(tmp_path, {"etc/app/app.conf": "stock", "etc/app/mime": "m",
                                           "etc/other/a": "a", "etc/other/b": "b"})
    mine = tmp_path / "mine"
    (mine / "other").mkdir(parents=True)
    (mine / "app.conf").write_text("mine")
    (mine / "other/a").write_text("my a")
    spec = make_spec(tmp_path, packages=["app"], contents=[
        {"source": str(mine / "app.conf"), "target": f"{root}/etc/app/app.conf"},
        {"source": str(mine / "other"), "target": f"{root}/etc/other"}])
    ctx = Context(spec, Closure())
    nodes = {str(n.image) for n in deb.package_nodes(spec, ctx, admin)}
    # the folder given as content merges: the package's b stays, its a is the user's
    assert nodes == {f"{root}/etc/app/mime", f"{root}/etc/other/b"}
    assert f"contents replace 2 files of packages: {root}/etc/app/app.conf (app), " \
        f"{root}/etc/other/a (app)" in ctx.closure.notes
    # through the whole closure: the user's file is in the image, not claimed twice
    c = closure_of(tmp_path, contents=[{"source": str(mine / "app.conf"),
                                        "target": "/etc/mime.types"}], packages=["media-types"]) \
        if _host_has("media-types") else None
    if c is not None:
        node = c.nodes[PurePosixPath("/etc/mime.types")]
        assert (node.host, node.reason) == (mine / "app.conf", "content")
        assert any(n.startswith("contents replace 1 files of packages: /etc/mime.types (media-types)")
                   for n in c.notes), c.notes


def test_a_package_link_into_a_users_content_does_not_claim_it_twice(tmp_path: Path) -> None:
    """A package's link (sites-enabled/default -> ../sites-available/default) to a file the user
    replaced: the link's target is the user's file."""
    mine = tmp_path / "default"
    mine.write_text("mine")
    target = PurePosixPath("/etc/app/sites-available/default")
    content = Node(target, mine, "content")
    by_link = Node(target, Path(target), "symlink target of /etc/app/sites-enabled/default",
                   PurePosixPath("/etc/app/sites-enabled/default"), package="app")
    _check_same_source(content, by_link)  # no error: the content wins
    # two unrelated files (neither a package's) are still claimed twice
    other = tmp_path / "other"
    other.write_text("other")
    with pytest.raises(TreeError, match="claimed twice"):
        _check_same_source(content, Node(target, other, "content"))


def test_a_daemon_does_not_carry_perl_for_its_helper_scripts(tmp_path: Path) -> None:
    """postgresql-common (pg_ctlcluster, ...) depends on perl; a unit running postgres needs none."""
    postgres = "/usr/lib/postgresql/15/bin/postgres"
    require(os.path.exists(postgres), "postgresql 15 is not installed (apt-get install postgresql)")
    c = closure_of(tmp_path, packages=["postgresql"], units=[
        {"name": "t.service", "text": f"[Service]\nExecStart={postgres} -D /var/lib/t\n"}])
    files = {str(p) for p in c.nodes}
    assert postgres in files
    assert "/usr/share/postgresql/15/timezonesets/Default" in files  # postgresql-15's data, whole
    # postgresql-common (same source as postgresql) is data: its perl helpers are programs
    # no unit runs, so they stay out with perl
    assert "/usr/share/postgresql-common/pg_wrapper" in files or not os.path.exists(
        "/usr/share/postgresql-common/pg_wrapper")
    assert "/usr/bin/pg_ctlcluster" not in files
    assert any(re.match(r"left out \d+ programs of dependencies that no unit runs: clusterdb", n)
               for n in c.notes), c.notes
    # perl's interpreter and modules (perl-base, perl-modules): not there; the helpers' own
    # PgCommon.pm in /usr/share/perl5 is a file of postgresql-client-common, shipped as data
    assert "/usr/bin/perl" not in files
    assert not any(f.startswith(("/usr/share/perl/", "/usr/lib/x86_64-linux-gnu/perl")) for f in files)


def test_ca_certificates_brings_the_bundle_its_script_made(tmp_path: Path) -> None:
    """update-ca-certificates makes /etc/ssl/certs (dpkg does not list it): a TLS client
    reads the bundle there."""
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    require(_host_has("ca-certificates") and os.path.exists(bundle),
            "ca-certificates is not installed (apt-get install ca-certificates)")
    c = closure_of(tmp_path, packages=["ca-certificates"])
    node = c.nodes[PurePosixPath(bundle)]
    assert node.reason == "made by ca-certificates's maintainer script" and node.package is None
    # a hash link resolves to the certificate the package ships
    link = next(p for p in c.nodes if p.parent == PurePosixPath("/etc/ssl/certs")
                and p.name.endswith(".0"))
    assert os.path.realpath(link) in {str(p) for p in c.nodes}


def test_a_conffile_changed_on_the_host_is_refused(tmp_path: Path) -> None:
    """dpkg records each conffile's checksum: a host's edit (a password set, say) is not
    published unless the spec names the file."""
    import hashlib

    from portable_service.errors import ClosureError

    root, admin = _fake_package(tmp_path, {"etc/app.conf": "edited by the admin\n",
                                           "etc/app-other.conf": "as shipped\n"})
    shipped = hashlib.md5(b"as shipped\n", usedforsecurity=False).hexdigest()
    (admin / "status").write_text(
        "Package: app\nStatus: install ok installed\nArchitecture: amd64\nConffiles:\n"
        f" {root}/etc/app.conf {shipped}\n {root}/etc/app-other.conf {shipped}\n"
        f" {root}/etc/old.conf {shipped} obsolete\n")
    spec = make_spec(tmp_path, packages=["app"])
    with pytest.raises(ClosureError, match=r"app\.conf of package app was changed on this host"):
        list(deb.package_nodes(spec, Context(spec, Closure()), admin))
    named = make_spec(tmp_path, packages=["app"], contents=[f"{root}/etc/app.conf"])
    nodes = {str(n.image) for n in deb.package_nodes(named, Context(named, Closure()), admin)}
    assert f"{root}/etc/app-other.conf" in nodes  # unchanged: shipped as the package has it
    assert f"{root}/etc/app.conf" not in nodes  # the spec's content brings it instead
