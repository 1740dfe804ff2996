"""Pinned builds on real systemd: a server that is NOT installed on the build host
(mini-httpd; bootstrap never installs it) built from the Debian archive for bookworm and
for trixie, each tried on its own release (systemd 252 and 257) and answering HTTP.

Network: the first run fetches the archive's indexes and a handful of .deb files into
/var/cache/portable-service/pinned (the suite's cache); later runs read them from there.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from portable_service.api import build_image
from portable_service.builder.spec import load_spec
from portable_service.harness.nspawn import Container
from tests.e2e.lib import attached

pytestmark = [pytest.mark.e2e, pytest.mark.network]
PORT = 18171
CACHE = Path("/var/cache/portable-service/pinned")


def write_spec(folder: Path, release: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text(f"<h1>mini-httpd from {release}</h1>\n")
    (folder / "portable.toml").write_text(f'''
pname = "minihttpd"
version = "1"
distribution = "debian"
release = "{release}"
packages = ["mini-httpd"]
contents = [{{ source = "index.html", target = "/srv/www/index.html" }}]
units = [{{ name = "minihttpd.service", text = """
[Service]
ExecStart=/usr/sbin/mini_httpd -D -h 127.0.0.1 -p {PORT} -d /srv/www
""" }}]
''')
    return folder


def http_get(c: Container, port: int, tries: int = 50) -> str:
    """The body at http://127.0.0.1:port/, asked every 0.1 s until the server answers."""
    for _ in range(tries):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            c.run("sleep", "0.1")
    return ""


@pytest.fixture
def suite_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PORTABLE_SERVICE_CACHE", str(CACHE))
    return CACHE


@pytest.mark.parametrize("container", ["bookworm", "trixie"], indirect=True)
def test_pinned_server_runs_on_its_release(container, tmp_path, suite_cache):
    assert not os.path.exists("/usr/sbin/mini_httpd"), "mini-httpd must not come from the host"
    c = container
    release = c.release.suite
    spec = load_spec(write_spec(tmp_path / "spec", release))
    image = build_image(spec, tmp_path / "out")
    assert (tmp_path / "spec" / "portable.lock").exists()
    assert (tmp_path / "out" / "minihttpd_1.spdx.json").exists()
    with attached(c, image):
        start = c.start("minihttpd.service")
        assert start.ok, c.journal("minihttpd.service")
        body = http_get(c, PORT)
        assert body == f"<h1>mini-httpd from {release}</h1>\n", c.journal("minihttpd.service")
        version = c.run("systemctl", "--version").stdout.split()[1]
        assert version == {"bookworm": "252", "trixie": "257"}[release]


def build_pinned(folder: Path, name: str, release: str, package: str, service: str) -> Path:
    """A pinned spec of one package and one oneshot unit, built into ``folder``/out."""
    folder.mkdir()
    (folder / "portable.toml").write_text(
        f'pname = "{name}"\nversion = "1"\ndistribution = "debian"\nrelease = "{release}"\n'
        f'packages = ["{package}"]\nunits = [{{ name = "{name}.service", text = """\n'
        f'[Service]\nType=oneshot\nRemainAfterExit=yes\n{service}""" }}]\n')
    return build_image(load_spec(folder), folder / "out")


@pytest.mark.parametrize("container", ["bookworm", "trixie"], indirect=True)
def test_a_pinned_units_time_zone_and_locale_come_from_its_release(container, tmp_path,
                                                                   suite_cache):
    """A unit naming a time zone and a locale: the lock gets tzdata and locales-all of the
    release (no host file), the image only the zone and the locale named (and what their
    links reach), and on the release's systemd the program speaks German in Paris time."""
    c = container
    folder = tmp_path / "spec"
    image = build_pinned(folder, "zoned", c.release.suite, "coreutils",
                         "Environment=TZ=Europe/Paris LANG=de_DE.UTF-8\n"
                         'ExecStart=/usr/bin/date --date=@1780000000 "+%%Z %%A %%B"\n')
    lock = (folder / "portable.lock").read_text()
    assert '"name": "tzdata"' in lock and '"name": "locales-all"' in lock
    from portable_service.fs.views import exists, open_image

    fs = open_image(image)
    zones = {p for p, _ in fs.walk() if p.startswith("/usr/share/zoneinfo/")}
    assert "/usr/share/zoneinfo/Europe/Paris" in zones
    assert len([z for z in zones if fs.stat(z).kind == "file"]) == 1, sorted(zones)
    assert exists(fs, "/usr/lib/locale/de_DE.utf8/LC_TIME")
    assert not exists(fs, "/usr/lib/locale/fr_FR.utf8")
    with attached(c, image):
        assert c.start("zoned.service").ok, c.journal("zoned.service")
        journal = c.journal("zoned.service")
        # 1780000000 is Thursday, 28 May 2026, 20:26 UTC (22:26 CEST in Paris)
        assert "CEST Donnerstag Mai" in journal, journal


@pytest.mark.parametrize("container", ["bookworm", "trixie"], indirect=True)
def test_a_pinned_images_trust_store_is_the_releases(container, tmp_path, suite_cache):
    """The CA store comes from the release's ca-certificates, made as its maintainer
    script makes it (the bundle, NAME.pem links, OpenSSL's hash links), never from the
    build host (whose store may hold a CA of its own); OpenSSL in the image verifies a
    root through the bundle and through the hash links."""
    c = container
    folder = tmp_path / "spec"
    isrg = "/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt"
    image = build_pinned(folder, "trusting", c.release.suite, "openssl",
                         f"ExecStart=/usr/bin/openssl verify -CAfile "
                         f"/etc/ssl/certs/ca-certificates.crt {isrg}\n"
                         f"ExecStart=/usr/bin/openssl verify -no-CAfile -CApath /etc/ssl/certs "
                         f"{isrg}\n")
    from portable_service.fs.views import open_image

    fs = open_image(image)
    store = {p.rsplit("/", 1)[1] for p, _ in fs.walk() if p.startswith("/etc/ssl/certs/")}
    host = set(os.listdir("/etc/ssl/certs")) - {"ca-certificates.crt"}
    host_only = {n for n in host if not n.endswith((".0", ".1"))} - store
    assert "ca-certificates.crt" in store and "ISRG_Root_X1.pem" in store
    assert any(n.endswith(".0") for n in store)
    assert not {"java"} & store
    sbom = json.loads((folder / "out/trusting_1.spdx.json").read_text())
    names = {p["SPDXID"]: p["name"] for p in sbom["packages"]}
    files = {f["SPDXID"]: f for f in sbom["files"] if f["fileName"].startswith("./etc/ssl/")}
    owner = {files[r["relatedSpdxElement"]]["fileName"]: names.get(r["spdxElementId"])
             for r in sbom["relationships"] if r["relatedSpdxElement"] in files}
    assert owner["./etc/ssl/certs/ca-certificates.crt"] == "ca-certificates", owner
    assert not [f for f in files.values() if "comment" in f], files  # no host file
    with attached(c, image):
        assert c.start("trusting.service").ok, c.journal("trusting.service")
        journal = c.journal("trusting.service")
        assert journal.count("ISRG_Root_X1.crt: OK") == 2, journal
    # the control: what the host's store has beyond the release's stays out
    assert not host_only & store, host_only & store


NODE_APP = """const http = require('http');
http.createServer((q, r) => r.end('node on ' + process.versions.node.split('.')[0] + ' ' +
  new Intl.DateTimeFormat('de-DE', {month: 'long'}).format(new Date(0)) + '\\n'))
  .listen(%d, '127.0.0.1');
"""


@pytest.mark.parametrize("container", ["bookworm", "trixie"], indirect=True)
def test_debians_nodejs_gets_the_builtins_libnode_loads_from_files(container, tmp_path,
                                                                    suite_cache):
    """Debian's libnode loads some builtins from the node-* packages it depends on, at paths
    compiled into it (acorn, cjs-module-lexer, undici; minimatch too on trixie): found in
    libnode itself, they are shipped, and node serves on its release (under the trusted
    profile: its JIT needs writable+executable memory)."""
    c = container
    folder = tmp_path / "spec"
    folder.mkdir()
    (folder / "app.js").write_text(NODE_APP % PORT)
    (folder / "portable.toml").write_text(
        f'pname = "nodeapp"\nversion = "1"\ndistribution = "debian"\n'
        f'release = "{c.release.suite}"\npackages = ["nodejs"]\n'
        'contents = [{ source = "app.js", target = "/srv/app.js" }]\n'
        'units = [{ name = "nodeapp.service", text = "[Service]\\n'
        'ExecStart=/usr/bin/node /srv/app.js\\n" }]\n')
    image = build_image(load_spec(folder), tmp_path / "out")
    from portable_service.fs.views import exists, open_image

    fs = open_image(image)
    assert exists(fs, "/usr/share/nodejs/cjs-module-lexer/lexer.js")
    assert exists(fs, "/usr/share/nodejs/acorn/dist/acorn.js")
    with attached(c, image, profile="trusted"):
        assert c.start("nodeapp.service").ok, c.journal("nodeapp.service")
        body = http_get(c, PORT, tries=100)
        major = {"bookworm": "18", "trixie": "20"}[c.release.suite]
        assert body == f"node on {major} Januar\n", c.journal("nodeapp.service")


def test_rebuild_from_lock_in_fresh_cache_is_byte_identical(tmp_path, suite_cache, monkeypatch):
    """The lock, not the cache or the machine, decides the image: a second build with an
    empty cache (every .deb downloaded again) writes the same bytes."""
    folder = write_spec(tmp_path / "spec", "trixie")
    first = build_image(load_spec(folder), tmp_path / "a")
    lock = (folder / "portable.lock").read_bytes()
    fresh = tmp_path / "fresh-cache"
    shutil.copytree(suite_cache / "apt", fresh / "apt")  # the indexes only: no .deb file
    monkeypatch.setenv("PORTABLE_SERVICE_CACHE", str(fresh))
    second = build_image(load_spec(folder), tmp_path / "b")
    assert sorted(p.name for p in (fresh / "debs").iterdir()), "nothing was downloaded"
    assert first.read_bytes() == second.read_bytes()
    assert (tmp_path / "a" / "minihttpd_1.spdx.json").read_bytes() == \
        (tmp_path / "b" / "minihttpd_1.spdx.json").read_bytes()
    assert (folder / "portable.lock").read_bytes() == lock, "a build from the lock rewrote it"
