"""Run-time needs (closure/runtime.py) with the host's real files: each is in the image when
something asks for it, explained by ``why``, and left out otherwise; the unpacked images run
in a chroot."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
from closure_helpers import (
    build_and_unpack,
    cc,
    chroot,
    closure_of,
    host_dir,
    image_files,
    paths,
    unit,
)

from conftest import REPO, require, require_tool
from portable_service import build
from portable_service.closure import runtime
from portable_service.errors import ClosureError, VerifyError
from portable_service.units import parse_unit_text

P = PurePosixPath
PROBE = (REPO / "tests" / "e2e" / "runtime_probe.c").read_text()
LIBDIR = Path(os.path.realpath("/usr/lib/x86_64-linux-gnu/libc.so.6")).parent


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """getpwuid(geteuid()) and setlocale(LC_ALL, ""), dynamically linked against glibc."""
    return cc(tmp_path_factory.mktemp("probe") / "probe", PROBE)


def probe_settings(probe: Path, service: str = "", **extra: object) -> dict[str, object]:
    return {"units": [unit("/usr/bin/probe", extra=service)],
            "contents": [{"source": str(probe), "target": "/usr/bin/probe"}], **extra}


def nss_node(closure: runtime.Closure) -> runtime.Node:
    return next(n for n in closure if n.image.name == runtime.NSS_SYSTEMD)


def chroot_env(root: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` in the unpacked image with exactly ``env`` (the image has no env program)."""
    return subprocess.run([require_tool("chroot"), str(root), *argv], env=env,
                          capture_output=True, text=True, check=False, timeout=60)


# -- identity

def test_a_glibc_service_gets_nss_systemd_with_its_closure(tmp_path: Path, probe: Path) -> None:
    require(os.path.exists(LIBDIR / runtime.NSS_SYSTEMD), "apt-get install libnss-systemd")
    c = closure_of(tmp_path, **probe_settings(probe))
    node = nss_node(c)
    # a root of its own (size shows its cost), beside the libc that will load it
    assert (node.reason, node.parent) == (runtime.IDENTITY_REASON, None)
    libc = next(n for n in c if n.image.name == "libc.so.6")
    assert node.image.parent == libc.image.parent
    # why: the module, then its own libraries
    libcap = next(p for p in c.nodes if p.name == "libcap.so.2")
    assert [n.image for n in c.why(libcap)] == [node.image, libcap]
    assert c.generated[runtime.NSSWITCH].decode().count("files systemd") == 2
    assert c.generated[runtime.PASSWD].startswith(b"root:x:0:0:")
    assert b"nogroup:x:65534:" in c.generated[runtime.GROUP]


def test_identity_is_left_out_without_glibc_or_without_a_service(tmp_path: Path,
                                                                  probe: Path) -> None:
    static = cc(tmp_path / "static", "int main(void) { return 0; }\n", "-static")
    c = closure_of(tmp_path, units=[unit("/usr/bin/s")],
                   contents=[{"source": str(static), "target": "/usr/bin/s"}])
    assert not any(n.image.name == runtime.NSS_SYSTEMD for n in c)
    assert runtime.NSSWITCH not in c.generated and runtime.PASSWD not in c.generated
    # glibc, but only a target: nothing runs as a dynamic user
    c = closure_of(tmp_path, units=[{"name": "t.target", "text": "[Unit]\nDescription=t\n"}],
                   contents=[{"source": str(probe), "target": "/usr/bin/probe"}])
    assert any(n.image.name == "libc.so.6" for n in c)
    assert not any(n.image.name == runtime.NSS_SYSTEMD for n in c)
    assert runtime.NSSWITCH not in c.generated


def test_excluding_the_module_opts_out_of_identity(tmp_path: Path, probe: Path) -> None:
    c = closure_of(tmp_path, **probe_settings(probe, exclude=["*/libnss_systemd.so.2"]))
    assert not any(n.image.name == runtime.NSS_SYSTEMD for n in c)
    assert runtime.NSSWITCH not in c.generated and runtime.PASSWD not in c.generated
    units = [runtime.Unit("t.service", "[Service]\nExecStart=/x\n", "inline",
                          parse_unit_text("[Service]\nExecStart=/x\n"))]
    assert runtime.adapt_units(units, c) == units


def test_a_users_own_nsswitch_conf_is_merged_not_replaced(tmp_path: Path, probe: Path) -> None:
    own = tmp_path / "nsswitch.conf"
    own.write_text("# mine\npasswd: files  # local only\ngroup: files\nhosts: files\n")
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/srv:/bin/false\n")
    settings = probe_settings(probe)
    settings["contents"] = [*settings["contents"],  # type: ignore[misc]
                            {"source": str(own), "target": "/etc/nsswitch.conf"},
                            {"source": str(passwd), "target": "/etc/passwd"}]
    c = closure_of(tmp_path, **settings)
    merged = c.generated[runtime.NSSWITCH].decode()
    assert merged == ("# mine\npasswd: files  # local only systemd\ngroup: files systemd\n"
                      "hosts: files\n")
    assert runtime.NSSWITCH not in c.nodes  # one entry: the merged file
    assert any("added 'systemd'" in w and str(own) in w for w in c.warnings), c.warnings
    assert runtime.PASSWD in c.nodes and runtime.PASSWD not in c.generated  # the user's stays
    # one that already names systemd ships as it is
    own.write_text("passwd: files systemd\ngroup: files systemd\n")
    c = closure_of(tmp_path, **settings)
    assert runtime.NSSWITCH in c.nodes and runtime.NSSWITCH not in c.generated
    assert not any("added 'systemd'" in w for w in c.warnings)


def test_merge_nsswitch_adds_missing_databases() -> None:
    assert runtime.merge_nsswitch("hosts: files dns\n") == (
        "hosts: files dns\npasswd:         files systemd\ngroup:          files systemd\n")
    text = "passwd: compat systemd\ngroup: files systemd\n"
    assert runtime.merge_nsswitch(text) == text


def test_nss_module_missing_beside_the_libc_is_an_error_with_the_fix(tmp_path: Path) -> None:
    """A libc found through RPATH in a folder without the module (NSS modules must come
    from the glibc build that loads them): the build names the package, or warns."""
    libs = tmp_path / "libs"
    libs.mkdir()
    shutil.copy2(os.path.realpath(LIBDIR / "libc.so.6"), libs / "libc.so.6")
    prog = cc(tmp_path / "prog", "int main(void) { return 0; }\n", f"-Wl,-rpath,{libs}")
    settings = {"units": [unit("/usr/bin/prog")],
                "contents": [{"source": str(prog), "target": "/usr/bin/prog"},
                             {"source": str(libs), "target": str(libs)}]}
    with pytest.raises(ClosureError) as err:
        closure_of(tmp_path, **settings)
    assert runtime.NSS_SYSTEMD in err.value.message
    assert err.value.hint == "apt-get install libnss-systemd"
    c = closure_of(tmp_path, allow_missing=True, **settings)
    assert any(runtime.NSS_SYSTEMD in w for w in c.warnings)
    assert runtime.NSSWITCH not in c.generated


def test_services_bind_the_user_database(tmp_path: Path, probe: Path) -> None:
    _, root = build_and_unpack(tmp_path, **probe_settings(probe, "User=app\n"))
    text = (root / "etc/systemd/system/t.service").read_text()
    assert text.startswith("[Service]\nExecStart=/usr/bin/probe\nUser=app\n")
    sections = parse_unit_text(text)["Service"]
    assert ("BindReadOnlyPaths", "-/run/systemd/userdb") in sections
    # in the chroot (no systemd): root resolves from the image's /etc/passwd
    run = chroot(root, "/usr/bin/probe")
    assert "probe: user=root uid=0" in run.stdout, run
    # a dynamic user's uid, without systemd's user database to ask, does not
    # (tests/e2e/test_runtime_needs.py runs it under systemd, where it does)
    run = subprocess.run(["chroot", "--userspec=61234:61234", str(root), "/usr/bin/probe"],
                         capture_output=True, text=True, check=False)
    assert run.returncode != 0 and "could not look up effective user ID 61234" in run.stdout, run


# -- locales

def test_glibc_has_no_built_in_c_utf8_so_the_image_carries_it(tmp_path: Path,
                                                               probe: Path) -> None:
    require(os.path.isdir("/usr/lib/locale/C.utf8"), "this host's glibc has no C.utf8 folder")
    _, root = build_and_unpack(tmp_path, **probe_settings(probe))
    assert (root / "usr/lib/locale/C.utf8/LC_CTYPE").is_file()
    ok = chroot_env(root, {"LANG": "C.UTF-8"}, "/usr/bin/probe")
    assert "probe: locale=C.UTF-8" in ok.stdout, ok
    # the control: the same image without the folder fails setlocale
    shutil.rmtree(root / "usr/lib/locale/C.utf8")
    failed = chroot_env(root, {"LANG": "C.UTF-8"}, "/usr/bin/probe")
    assert "probe: locale=FAILED" in failed.stdout, failed


def test_lang_in_a_unit_brings_that_locale_or_names_the_fix(tmp_path: Path, probe: Path) -> None:
    c = closure_of(tmp_path, **probe_settings(probe, "Environment=\"LC_ALL=C.UTF-8\" A=b\n"))
    node = c.nodes[P("/usr/lib/locale/C.utf8")]
    assert node.reason in ("locale of Environment=LC_ALL=C.UTF-8 in t.service",
                           runtime.C_UTF8_REASON)
    with pytest.raises(ClosureError) as err:
        closure_of(tmp_path, **probe_settings(probe, "Environment=LANG=xx_YY.UTF-8\n"))
    assert "xx_YY.UTF-8" in err.value.message and "locale-gen" in (err.value.hint or "")
    assert runtime.normalize_codeset("UTF-8") == "utf8"
    assert runtime.normalize_codeset("ISO-8859-1") == "iso88591"
    # a charset other than UTF-8 needs its gconv module (mbrtowc, iconv), with the configuration
    gconv = {n.image.name for n in runtime._gconv("iso88591", "LANG=de_DE.ISO-8859-1")}
    require(bool(gconv), "this host has no gconv modules")
    assert "ISO8859-1.so" in gconv and "gconv-modules" in gconv
    assert not any(name.startswith("ISO8859-2") for name in gconv)


# -- CA certificates

def test_a_tls_library_brings_the_ca_certificates(tmp_path: Path) -> None:
    require(os.path.exists("/usr/bin/openssl"), "apt-get install openssl")
    require(os.path.exists(runtime.CA_BUNDLE), "apt-get install ca-certificates")
    c = closure_of(tmp_path, units=[unit("/usr/bin/openssl version")])
    node = c.nodes[runtime.CA_BUNDLE]
    chain = [n.image.name for n in c.why(runtime.CA_BUNDLE)]
    assert chain[:1] == ["openssl"] and any(n.startswith("libssl.so") for n in chain), chain
    assert node.reason == "in folder"
    assert c.nodes[runtime.CA_FOLDER].reason.startswith("CA certificates for the TLS library libssl")
    assert P("/usr/lib/ssl/certs") in c.nodes  # OpenSSL's default folder, a link to /etc/ssl/certs
    # the hash links OpenSSL looks certificates up by, and the files they point to
    links = [p for p in c.nodes if p.parent == runtime.CA_FOLDER and p.suffix == ".0"]
    assert links and all(os.path.islink(p) for p in links)
    assert not any(runtime.CA_FOLDER in p.parents for p in closure_of(tmp_path).nodes)


def test_openssl_verifies_with_the_image_certificates(tmp_path: Path) -> None:
    require(os.path.exists("/usr/bin/openssl"), "apt-get install openssl")
    require(os.path.exists(runtime.CA_BUNDLE), "apt-get install ca-certificates")
    _, root = build_and_unpack(tmp_path, units=[unit("/usr/bin/openssl version")])
    # a root certificate the image carries verifies against OpenSSL's default paths
    pem = next(p for p in sorted(Path("/etc/ssl/certs").glob("*.pem")))
    target = "/" + os.path.relpath(os.path.realpath(pem), "/")
    run = chroot(root, "/usr/bin/openssl", "verify", target)
    assert run.returncode == 0 and ": OK" in run.stdout, run
    shutil.rmtree(root / "etc/ssl/certs")
    (root / "etc/ssl/certs").mkdir()
    run = chroot(root, "/usr/bin/openssl", "verify", target)
    assert run.returncode != 0, run


# -- time zones

def test_tz_brings_only_its_zone_and_localtime_uses_it(tmp_path: Path) -> None:
    require(os.path.exists("/usr/share/zoneinfo/Europe/Berlin"), "apt-get install tzdata")
    settings = {"units": [unit("/usr/bin/date", extra="Environment=TZ=Europe/Berlin\n")]}
    c = closure_of(tmp_path, **settings)
    zones = [p for p in c.nodes if runtime.ZONEINFO in p.parents]
    assert zones == [P("/usr/share/zoneinfo/Europe/Berlin")], zones
    assert c.nodes[zones[0]].reason == "time zone of Environment=TZ=Europe/Berlin in t.service"
    _, root = build_and_unpack(tmp_path, **settings)
    env = {"TZ": "Europe/Berlin"}
    date = chroot_env(root, env, "/usr/bin/date", "-d", "@0", "+%Z %H")
    assert date.stdout == "CET 01\n", date
    (root / "usr/share/zoneinfo/Europe/Berlin").unlink()
    date = chroot_env(root, env, "/usr/bin/date", "-d", "@0", "+%Z %H")
    assert date.stdout == "Europe 00\n", date  # glibc falls back to UTC without the file


def test_tz_rules_and_run_time_values(tmp_path: Path) -> None:
    c = closure_of(tmp_path, units=[unit("/usr/bin/date", extra="Environment=TZ=UTC0\n")])
    assert not any(runtime.ZONEINFO in p.parents for p in c.nodes)  # a POSIX rule: no file
    c = closure_of(tmp_path, units=[unit("/usr/bin/date", extra="Environment=TZ=%I\n")])
    assert c.nodes[runtime.ZONEINFO].reason.startswith("time zones for")
    c = closure_of(tmp_path, units=[unit("/usr/bin/date", extra="PassEnvironment=LANG TZ\n")])
    assert c.nodes[runtime.ZONEINFO].reason == "time zones for PassEnvironment=TZ in t.service"
    with pytest.raises(ClosureError, match="Mars/Olympus"):
        closure_of(tmp_path, units=[unit("/usr/bin/date", extra="Environment=TZ=Mars/Olympus\n")])
    # no TZ: no zones (the default profile does not bind /etc/localtime; glibc uses UTC)
    assert not any(runtime.ZONEINFO in p.parents or p == runtime.ZONEINFO
                   for p in closure_of(tmp_path).nodes)


# -- interpreters

def _python() -> str:
    require(os.path.exists("/usr/bin/python3") and os.path.isdir("/usr/lib/python3"),
            "Debian's python3 is not installed (apt-get install python3)")
    return os.path.realpath("/usr/bin/python3")


def test_python_brings_its_standard_library_only(tmp_path: Path) -> None:
    real = _python()
    c = closure_of(tmp_path, units=[unit("/usr/bin/python3 -c pass")])
    encodings = [p for p in c.nodes if p.name == "__init__.py" and p.parent.name == "encodings"]
    assert encodings, "no encodings package"
    stdlib = encodings[0].parent.parent
    chain = [str(n.image) for n in c.why(encodings[0])]
    assert chain == ["/usr/bin/python3", str(stdlib), str(encodings[0].parent),
                     str(encodings[0])], chain
    assert c.nodes[stdlib].reason == "standard library of /usr/bin/python3 (its sys.path)"
    assert P(real) in c.nodes
    files = paths(c)
    assert not any(f.startswith("/usr/lib/python3/dist-packages") for f in files)
    assert not any("/config-3" in f for f in files)  # build-time files
    # lib-dynload modules are ELF files: their libraries come along (libssl for _ssl)
    assert any(P(f).name.startswith("libssl.so") for f in files)


def test_python_runs_in_the_image_through_a_shebang(tmp_path: Path) -> None:
    _python()
    script = tmp_path / "app.py"
    script.write_text("#!/usr/bin/python3\nimport json, sqlite3, ssl\nprint(json.dumps('ok'))\n")
    script.chmod(0o755)
    _, root = build_and_unpack(tmp_path, units=[unit("/usr/lib/app/app.py")],
                               contents=[{"source": str(script), "target": "/usr/lib/app/app.py"}])
    run = chroot(root, "/usr/lib/app/app.py")
    assert (run.returncode, run.stdout) == (0, '"ok"\n'), run.stderr


def test_a_virtualenv_brings_its_site_packages(tmp_path: Path) -> None:
    _python()
    base = host_dir()  # not below /tmp: the unit's program would count as a run-time path
    try:
        venv = base / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next(venv.glob("lib/python3*/site-packages"))
        (site / "hello_mod.py").write_text("GREETING = 'hello from the venv'\n")
        code = "import hello_mod; print(hello_mod.GREETING)"
        spec_unit = unit(f"{venv}/bin/python -c \"{code}\"")
        c = closure_of(tmp_path, units=[spec_unit])
        assert P(str(venv / "pyvenv.cfg")) in c.nodes
        assert P(str(site / "hello_mod.py")) in c.nodes
        assert not any(f.startswith("/usr/lib/python3/dist-packages") for f in paths(c))
        _, root = build_and_unpack(tmp_path, units=[spec_unit])
        run = chroot(root, f"{venv}/bin/python", "-c", code)
        assert (run.returncode, run.stdout) == (0, "hello from the venv\n"), run.stderr
    finally:
        shutil.rmtree(base)


def test_perl_brings_its_core_modules(tmp_path: Path) -> None:
    require(os.path.exists("/usr/bin/perl"), "perl is not installed")
    _, root = build_and_unpack(tmp_path, units=[unit("/usr/bin/perl -e 1")])
    (root / "t.pl").write_text("use strict; use POSIX; print POSIX::floor(2.5);\n")
    run = chroot(root, "/usr/bin/perl", "/t.pl")
    assert (run.returncode, run.stdout) == (0, "2"), run.stderr
    assert not any(f.startswith(("/usr/share/perl5/", "/usr/local/")) for f in image_files(root))


def test_verify_refuses_python_without_encodings(tmp_path: Path) -> None:
    _python()
    settings = {"pname": "t", "version": "1", "units": [unit("/usr/bin/python3 -c pass")],
                "squash_compression": "gzip", "exclude": ["/usr/lib/python3.*"]}
    with pytest.raises(VerifyError) as err:
        build(output_dir=tmp_path / "a", base_dir=tmp_path, **settings)
    assert "No module named 'encodings'" in err.value.message
    # a python nothing runs is only a warning; with its library, nothing at all
    image = build(output_dir=tmp_path / "b", base_dir=tmp_path, **{
        **settings, "units": [unit("/usr/bin/true")],
        "contents": ["/usr/bin/python3"]})
    assert image.exists()
    from portable_service.imagefs import open_image
    from portable_service.verify import verify

    fs = open_image(image)
    try:
        rules = {(p.severity, p.rule) for p in verify(fs, image.name)}
    finally:
        fs.close()
    assert ("warning", "python-stdlib-missing") in rules
    image = build(output_dir=tmp_path / "c", base_dir=tmp_path,
                  **{**settings, "exclude": []})
    fs = open_image(image)
    try:
        assert not any(p.rule == "python-stdlib-missing" for p in verify(fs, image.name))
    finally:
        fs.close()
