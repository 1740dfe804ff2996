"""Pinned builds (builder/repo): the lock file, the verified cache, the unpacking, and the
one-line failures of a tampered cache or a bad repository signature.

Tests marked ``network`` read the Debian archive on their first run; the indexes and
.deb files stay in /var/cache/portable-service/pinned for the next runs (TESTING.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.repo import unpack
from portable_service.builder.repo.apt import RepositoryError
from portable_service.builder.repo.lock import (
    FORMAT,
    Lock,
    LockedPackage,
    Repository,
    Request,
    lock_changes,
    parse_lock,
    read_lock,
)
from tests.conftest import require, require_tool

CACHE = Path("/var/cache/portable-service/pinned")
REPO_BOOKWORM = Repository("debian", "http://deb.debian.org/debian", "bookworm", "bookworm", "12.8",
                           "amd64", "0" * 64)


def pkg(name: str, version: str, sha: str = "a") -> LockedPackage:
    return LockedPackage(name, version, "amd64", sha * 64, 10, f"pool/main/x/{name}_{version}.deb",
                         name, version)


def test_lock_renders_sorted_and_reads_back():
    lock = Lock(REPO_BOOKWORM, Request(("zz", "aa"), ("systemd",)),
                (pkg("zlib1g", "1"), pkg("libc6", "2.36")))
    text = lock.render()
    data = json.loads(text)
    assert data["format"] == FORMAT
    assert [p["name"] for p in data["packages"]] == ["libc6", "zlib1g"]
    assert data["request"]["packages"] == ["aa", "zz"]
    again = parse_lock(data)
    assert again.render() == text
    assert set(again.packages) == set(lock.packages)


def test_lock_changes_name_versions():
    old = Lock(REPO_BOOKWORM, Request(("a",), ()), (pkg("a", "1"), pkg("b", "1"), pkg("c", "1")))
    new = Lock(REPO_BOOKWORM, Request(("a",), ()), (pkg("a", "2"), pkg("c", "1", "b"), pkg("d", "1")))
    assert lock_changes(old, new) == [
        "~ a 1 -> 2", "- b 1", "! c 1: same version, other file (sha256 differs)", "+ d 1"]
    assert lock_changes(old, old) == []


def test_diff_verb_reads_two_lock_files(tmp_path, cli):
    a, b = tmp_path / "a.lock", tmp_path / "b.lock"
    a.write_bytes(Lock(REPO_BOOKWORM, Request(("x",), ()), (pkg("x", "1"),)).render())
    b.write_bytes(Lock(REPO_BOOKWORM, Request(("x",), ()), (pkg("x", "1.1"),)).render())
    proc = cli("diff", str(a), str(b))
    assert proc.returncode == 1, proc.stderr  # as diff(1): they differ
    assert proc.stdout == "~ x 1 -> 1.1\n"
    same = cli("diff", str(a), str(a))
    assert (same.returncode, same.stdout) == (0, "no package changes\n")


def spec_text(release: str = "bookworm", packages: str = '["mini-httpd"]', extra: str = "") -> str:
    return (f'pname = "minihttpd"\nversion = "1"\ndistribution = "debian"\nrelease = "{release}"\n'
            f'packages = {packages}\n{extra}'
            'units = [{ name = "minihttpd.service", text = "[Service]\\nExecStart=/usr/sbin/mini_httpd '
            '-D -p 8080 -d /srv\\n" }]\n')


def test_a_lock_for_other_packages_is_refused_in_one_line(tmp_path, cli):
    (tmp_path / "portable.toml").write_text(spec_text())
    (tmp_path / "portable.lock").write_bytes(
        Lock(REPO_BOOKWORM, Request(("lighttpd",), ()), (pkg("lighttpd", "1"),)).render())
    proc = cli("build", "--writer", "native", "-q")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "does not answer this spec" in proc.stderr and "build --update" in proc.stderr
    assert not (tmp_path / "result").exists()


def test_a_damaged_lock_is_one_line(tmp_path, cli):
    (tmp_path / "portable.toml").write_text(spec_text())
    (tmp_path / "portable.lock").write_text("{ not json")
    proc = cli("build", "-q")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is not a portable-service lock file" in proc.stderr


def test_a_release_reads_its_updates_and_security_suites():
    from portable_service.rules.debian import suites

    assert suites("trixie", "http://m/debian", "http://m/debian-security") == [
        ("http://m/debian", "trixie"), ("http://m/debian", "trixie-updates"),
        ("http://m/debian-security", "trixie-security")]
    assert suites("sid", "http://m/debian", "http://m/debian-security") == [("http://m/debian", "sid")]


def test_member_paths_land_merged_usr_and_never_climb_out():
    assert unpack.image_path("./lib/x86_64-linux-gnu/libc.so.6") == \
        PurePosixPath("/usr/lib/x86_64-linux-gnu/libc.so.6")
    assert unpack.image_path("./etc/x") == PurePosixPath("/etc/x")
    assert unpack.image_path("./") is None
    with pytest.raises(ValueError, match="climbs out"):
        unpack.image_path("./usr/../../etc/passwd")


def make_deb(folder: Path, name: str, files: dict[str, str | None], links: dict[str, str]) -> Path:
    """A real .deb (dpkg-deb --build) with ``files`` (None: a folder) and symlinks."""
    tree = folder / name
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test\n")
    for path, text in files.items():
        target = tree / path
        if text is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    for path, target in links.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, tree / path)
    out = folder / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(out)], check=True,
                   capture_output=True)
    return out


def test_unpack_keeps_files_and_owners_leaves_docs_and_units(tmp_path):
    require_tool("dpkg-deb")
    deb = make_deb(tmp_path, "demo", {
        "usr/bin/demo": "#!/bin/sh\n", "lib/demo/data": "d",
        "usr/share/doc/demo/copyright": "License: GPL-2+\n",
        "lib/systemd/system/demo.service": "[Service]\n"}, {"usr/bin/demo-link": "demo"})
    out = unpack.unpack({"demo": deb}, tmp_path / "root")
    root = tmp_path / "root"
    assert (root / "usr/lib/demo/data").read_text() == "d"  # merged /usr
    assert (root / "lib").is_symlink() and os.readlink(root / "lib") == "usr/lib"
    assert os.readlink(root / "usr/bin/demo-link") == "demo"
    assert not (root / "usr/share/doc").exists()
    assert not (root / "usr/lib/systemd/system/demo.service").exists()
    assert out.owners["/usr/bin/demo"] == "demo" and out.owners["/usr/lib/demo/data"] == "demo"
    assert out.copyright["demo"] == b"License: GPL-2+\n"


def test_unpack_gives_a_package_users_folder_the_modes_a_host_build_gives(tmp_path):
    """/var/log/lighttpd is 0750 www-data in the package: the image makes it enterable by
    the service's user, as a host build does (layout.readable_by_others)."""
    require_tool("dpkg-deb")
    require(os.geteuid() == 0, "making a package with a www-data folder needs root")
    tree = tmp_path / "logs"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text("Package: logs\nVersion: 1\nArchitecture: all\n"
                                          "Maintainer: t <t@example.org>\nDescription: t\n")
    (tree / "var/log/logs").mkdir(parents=True)
    os.chmod(tree / "var/log/logs", 0o2750)
    os.chown(tree / "var/log/logs", 33, 33)
    subprocess.run(["dpkg-deb", "--build", str(tree), str(tmp_path / "logs.deb")], check=True,
                   capture_output=True)
    unpack.unpack({"logs": tmp_path / "logs.deb"}, tmp_path / "root")
    assert oct(os.stat(tmp_path / "root/var/log/logs").st_mode & 0o7777) == oct(0o755)


def test_unpack_refuses_a_symlink_that_leads_out_of_the_root(tmp_path):
    """One package's absolute link, another's file below it: writing it would land on the
    build host (here: a folder beside the root)."""
    require_tool("dpkg-deb")
    outside = tmp_path / "outside"
    outside.mkdir()
    a = make_deb(tmp_path, "a-link", {}, {"usr/share/evil": str(outside)})
    b = make_deb(tmp_path, "b-file", {"usr/share/evil/file": "x"}, {})
    with pytest.raises(RepositoryError, match="leads out of the root"):
        unpack.unpack({"a-link": a, "b-file": b}, tmp_path / "root")
    assert list(outside.iterdir()) == []


# -- against the Debian archive (network on the first run)


@pytest.fixture
def work_cache(tmp_path: Path) -> Path:
    """A copy of the suite's cache (indexes and .deb files): tests may change it."""
    require(shutil.which("apt-get") is not None and shutil.which("gpgv") is not None,
            "apt-get and gpgv are needed (apt-get install apt gpgv)")
    require(Path("/usr/share/keyrings/debian-archive-keyring.gpg").exists(),
            "apt-get install debian-archive-keyring")
    copy = tmp_path / "cache"
    if CACHE.exists():
        shutil.copytree(CACHE, copy, symlinks=True)
    return copy


@pytest.mark.network
def test_tampered_cached_deb_fails_the_build_in_one_line(tmp_path, cli, work_cache):
    spec = tmp_path / "spec"
    spec.mkdir()
    (spec / "portable.toml").write_text(spec_text())
    env = {"PORTABLE_SERVICE_CACHE": str(work_cache)}
    first = cli("build", str(spec), "-o", str(tmp_path / "out"), "--squash-compression", "gzip",
                env=env)
    assert first.returncode == 0, first.stderr
    image = tmp_path / "out/minihttpd_1.raw"
    old = image.read_bytes()
    lock = read_lock(spec / "portable.lock")
    assert lock is not None
    deb = work_cache / "debs" / next(p.deb_name for p in lock.packages if p.name == "mini-httpd")
    with open(deb, "ab") as f:
        f.write(b"\0")
    proc = cli("build", str(spec), "-o", str(tmp_path / "out"), "--squash-compression", "gzip",
               "-q", env=env)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "does not match portable.lock" in proc.stderr and "the cache was changed" in proc.stderr
    assert image.read_bytes() == old


@pytest.mark.network
def test_bad_repository_signature_fails_the_build_in_one_line(tmp_path, cli, work_cache):
    """A keyring without the archive's keys: the InRelease file does not check out."""
    wrong = Path("/usr/share/keyrings/debian-archive-removed-keys.gpg")
    require(wrong.exists(), "debian-archive-keyring ships the removed keys")
    (tmp_path / "portable.toml").write_text(spec_text(extra=f'keyring = "{wrong}"\n'))
    proc = cli("build", "--update", "-q", env={"PORTABLE_SERVICE_CACHE": str(work_cache)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "no good signature" in proc.stderr and str(wrong) in proc.stderr, proc.stderr
    assert not (tmp_path / "portable.lock").exists()
    assert not (tmp_path / "result").exists()


@pytest.mark.network
def test_arm64_image_on_amd64_passes_verify_with_aarch64_elf_files(tmp_path, cli, work_cache):
    from portable_service.errors import ImageError
    from portable_service.fs.views import open_image
    from portable_service.harness.trial import check_architecture

    require(os.uname().machine == "x86_64", "the cross build is checked from amd64")
    (tmp_path / "portable.toml").write_text(spec_text(extra='architecture = "arm64"\n'))
    env = {"PORTABLE_SERVICE_CACHE": str(work_cache)}
    proc = cli("build", "--squash-compression", "gzip", env=env)
    assert proc.returncode == 0, proc.stderr  # the build's verify step passed
    image = tmp_path / "result/minihttpd_1.raw"
    assert cli("verify", str(image)).returncode == 0
    fs = open_image(image)
    machines = set()
    for path, st in fs.walk():
        if st.kind == "file" and fs.read(path, 0, 4) == b"\x7fELF":
            head = fs.read(path, 0, 20)
            machines.add(int.from_bytes(head[18:20], "little"))
    assert machines == {183}, machines  # EM_AARCH64 only
    os_release = fs.read("/etc/os-release").decode()
    assert "ARCHITECTURE=arm64" in os_release and "VERSION_CODENAME=bookworm" in os_release
    with pytest.raises(ImageError, match="built for arm64"):
        check_architecture(image)
    lock = read_lock(tmp_path / "portable.lock")
    assert lock is not None and {p.architecture for p in lock.packages} <= {"arm64", "all"}


@pytest.mark.network
def test_a_build_from_lock_and_cache_needs_no_network(tmp_path, cli, work_cache):
    """With the lock and every .deb cached, the mirror is never asked: an unreachable one
    builds the same image, and ``why`` explains the pinned closure from the same root."""
    spec = tmp_path / "spec"
    spec.mkdir()
    (spec / "portable.toml").write_text(spec_text())
    env = {"PORTABLE_SERVICE_CACHE": str(work_cache)}
    common = ["--squash-compression", "gzip", "-q"]
    assert cli("build", str(spec), "-o", str(tmp_path / "a"), *common, env=env).returncode == 0
    offline = cli("build", str(spec), "-o", str(tmp_path / "b"), *common,
                  "--mirror", "http://127.0.0.1:9/debian", env=env)
    assert offline.returncode == 0, offline.stderr
    assert (tmp_path / "a/minihttpd_1.raw").read_bytes() == (tmp_path / "b/minihttpd_1.raw").read_bytes()
    # try boots the image's own release unless told otherwise
    from portable_service.harness.trial import default_releases

    assert default_releases(tmp_path / "a/minihttpd_1.raw") == ("bookworm",)
    why = cli("why", str(spec), "/usr/sbin/mini_httpd", env=env)
    assert why.returncode == 0 and "program of ExecStart=" in why.stdout, why.stderr
    # the release's libc, not the host's
    lock = read_lock(spec / "portable.lock")
    assert lock is not None
    libc = next(p for p in lock.packages if p.name == "libc6")
    # the release, its updates and its security updates were all read and checked
    assert [s.split("=")[0] for s in lock.repository.suites.split()] == \
        ["bookworm", "bookworm-updates", "bookworm-security"]
    assert {p.archive for p in lock.packages} <= {"http://deb.debian.org/debian",
                                                  "http://deb.debian.org/debian-security"}
    sbom = json.loads((tmp_path / "a/minihttpd_1.spdx.json").read_text())
    versions = {p["name"]: p.get("versionInfo") for p in sbom["packages"]}
    assert versions["libc6"] == libc.version and versions["mini-httpd"]
    # run-time needs come from the release too: C.UTF-8 of its libc-bin, nss-systemd
    by_id = {p["SPDXID"]: p["name"] for p in sbom["packages"]}
    owner = {r["relatedSpdxElement"]: by_id.get(r["spdxElementId"]) for r in sbom["relationships"]
             if r["relationshipType"] == "CONTAINS"}
    files = {f["fileName"]: f["SPDXID"] for f in sbom["files"]}
    assert owner[files["./usr/lib/locale/C.utf8/LC_CTYPE"]] == "libc-bin"
    assert owner[files["./usr/lib/x86_64-linux-gnu/libnss_systemd.so.2"]] == "libnss-systemd"


@pytest.mark.parametrize(("extra", "words"), [
    ('release = "bookworm"\n', "needs both distribution and release"),
    ('distribution = "fedora"\nrelease = "40"\n', "distribution 'fedora' is not supported"),
    ('distribution = "debian"\nrelease = "bookworm"\narchitecture = "z80"\n',
     "architecture 'z80' is not a Debian architecture"),
    ('distribution = "debian"\nrelease = "bookworm"\nmirror = "ftp://x/debian"\n',
     "is not an http(s) or file URL"),
])
def test_pinned_spec_mistakes_are_one_line(tmp_path, cli, extra, words):
    (tmp_path / "portable.toml").write_text(
        'pname = "p"\nversion = "1"\npackages = ["mini-httpd"]\n' + extra +
        'units = [{ name = "p.service", text = "[Service]\\nExecStart=/usr/sbin/mini_httpd\\n" }]\n')
    proc = cli("build", "-q")
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr


@pytest.mark.network
def test_a_zone_the_release_lacks_is_one_line_naming_the_pinned_packages(tmp_path, cli,
                                                                          work_cache):
    """tzdata comes from the release (the host's zones do not count): a zone it lacks is
    an error naming the build's packages, not the host."""
    (tmp_path / "portable.toml").write_text(
        'pname = "p"\nversion = "1"\ndistribution = "debian"\nrelease = "bookworm"\n'
        'packages = ["mini-httpd"]\nunits = [{ name = "p.service", text = "[Service]\\n'
        'Environment=TZ=Europe/Atlantis\\nExecStart=/usr/sbin/mini_httpd\\n" }]\n')
    proc = cli("build", "-q", env={"PORTABLE_SERVICE_CACHE": str(work_cache)})
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "/usr/share/zoneinfo/Europe/Atlantis is not in this pinned build's packages" \
        in proc.stderr, proc.stderr
    assert '"name": "tzdata"' in (tmp_path / "portable.lock").read_text()
    assert not (tmp_path / "result").exists()
