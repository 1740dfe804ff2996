"""The fleet story on systemd 257: publish -> a host's systemd-sysupdate -> reattach -> rollback.

A throwaway Debian 13 host (its root: the harness's trixie plus gpg, which systemd-pull runs
to check SHA256SUMS.gpg; made once in a cache of its own, so the shared roots stay as they
are) is configured with ``host-config``; a loopback HTTP server serves the folder ``publish``
keeps. Debian 12 (systemd 252) has no systemd-sysupdate: the update unit says so and fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portable_service.deploy import hostconfig
from portable_service.deploy.publish import Signer, publish
from portable_service.harness import nspawn, roots
from portable_service.progress import Reporter
from portable_service.rules import sysupdate
from tests.conftest import gpg_key_home
from tests.e2e.conftest import LOG_DIR, require_e2e
from tests.e2e.lib import Probe, build_image, tcp_get, unit

pytestmark = pytest.mark.e2e

# trixie as the harness has it, plus gpg (systemd-pull verifies SHA256SUMS.gpg with it)
FLEET_RELEASE = roots.Release("trixie", "13", 257, extra_packages=("gpg",))
SETTLE = 3


def fleet_cache() -> Path:
    base = roots.cache_dir()
    return base.with_name(base.name + "-fleet")


@pytest.fixture(scope="module")
def host() -> Iterator[nspawn.Container]:
    require_e2e()
    root = roots.ensure_root(FLEET_RELEASE, Reporter(quiet=False), cache=fleet_cache())
    with nspawn.booted(FLEET_RELEASE, root, log_dir=LOG_DIR) as c:
        yield c


@pytest.fixture(scope="module")
def gpg_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gpg_key_home(tmp_path_factory.mktemp("gnupg"), "fleet test <fleet@example.org>")


def settings(psdemo: Path, pname: str, port: int, version: str, message: str,
             broken: bool = False) -> dict[str, object]:
    start = "/usr/bin/psdemo no-such-mode" if broken else \
        f"/usr/bin/psdemo serve {port} '{message}'"
    return {
        "pname": pname, "version": version,
        "units": [unit(f"{pname}.service", f"[Unit]\nDescription={pname}\n[Service]\n"
                       f"ExecStart={start}\n[Install]\nWantedBy=multi-user.target\n")],
        "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}],
    }


@contextlib.contextmanager
def http_server(folder: Path, port: int) -> Iterator[str]:
    """python's http.server on 127.0.0.1 (the container shares the host's network)."""
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the HTTP server did not come up"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def install_tree(c: nspawn.Container, tree: Path) -> None:
    """Copy host-config's tree into the container's / (as configuration management would)."""
    for path in sorted(tree.rglob("*")):
        dest = c.root / path.relative_to(tree)
        if path.is_symlink():
            dest.unlink(missing_ok=True)
            os.symlink(os.readlink(path), dest)
        elif path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            shutil.copy2(path, dest)
    c.run("systemctl", "daemon-reload", check=True)


def update(c: nspawn.Container, pname: str) -> nspawn.Result:
    return c.run("systemctl", "start", f"{pname}-update.service", timeout=180)


def update_log(c: nspawn.Container, pname: str) -> str:
    return c.journal(f"{pname}-update.service")


def attached(c: nspawn.Container, pname: str) -> list[str]:
    """The images portabled's drop-ins mount (is-attached cannot tell two versions apart)."""
    found = set()
    for d in (c.root / "etc/systemd/system.attached").glob(f"{pname}*.d"):
        for line in (d / hostconfig.PORTABLE_DROP_IN).read_text().splitlines():
            if line.startswith("RootImage="):
                found.add(Path(line.split("=", 1)[1]).name.removesuffix(".raw"))
    return sorted(found)


def installed(c: nspawn.Container, pname: str) -> list[str]:
    return sorted(p.name for p in (c.root / "var/lib/portables").glob(f"*{pname}_*"))


def test_publish_update_reattach_rollback(host: nspawn.Container, psdemo: Path, gpg_home: Path,
                                         tmp_path: Path) -> None:
    c, pname, port, http_port = host, "fleet", 18471, 18472
    images = {v: build_image(tmp_path / f"v{v}", settings(psdemo, pname, port, v,
                                                          f"{pname} v{v}", broken=v == "3"))
              for v in ("1", "2", "3")}
    folder = tmp_path / "www"
    signer = Signer("fleet@example.org", gpg_home)
    keyring = tmp_path / "fleet.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--homedir", str(gpg_home), "--export",
                                        "fleet@example.org"], check=True,
                                       capture_output=True).stdout)
    timings: dict[str, float] = {}
    with http_server(folder.parent, http_port) as base:
        folder.mkdir()
        publish([images["1"]], folder, signer=signer, keep=3)
        tree = tmp_path / "host"
        s = hostconfig.settings_for(images["1"], base + "www", keyring=keyring, settle=SETTLE)
        hostconfig.write_tree(hostconfig.host_files(s), tree)
        install_tree(c, tree)
        # the tree's units load cleanly, and the timer is enabled by the tree's link
        units = [f"/etc/systemd/system/{pname}-update.{t}" for t in ("service", "timer")]
        check = c.run("systemd-analyze", "verify", *units)
        assert check.ok and check.output == "", check.output
        assert c.systemctl("is-enabled", f"{pname}-update.timer").stdout.strip() == "enabled"

        # v1: the first run attaches it
        result = update(c, pname)
        assert result.ok, update_log(c, pname)
        assert tcp_get(port) == f"{pname} v1\n"
        assert attached(c, pname) == [f"{pname}_1"]
        assert c.unit_state(f"{pname}.service").active == "active"

        # v2: fetched, verified, reattached; the probe measures the gap
        with Probe(port) as probe:
            start = time.monotonic()
            publish([images["2"]], folder, signer=signer, keep=3)
            published = time.monotonic()
            result = update(c, pname)
            done = time.monotonic()
            deadline = time.monotonic() + 10
            while probe.first(f"{pname} v2") is None and time.monotonic() < deadline:
                time.sleep(0.05)
        assert result.ok, update_log(c, pname)
        serving = probe.first(f"{pname} v2")
        assert serving is not None, update_log(c, pname)
        timings.update(publish_s=published - start, publish_to_serving_s=serving - start,
                       update_unit_s=done - published, downtime_s=probe.downtime(),
                       probes=len(probe.answers))
        assert tcp_get(port) == f"{pname} v2\n"
        assert attached(c, pname) == [f"{pname}_2"]
        assert installed(c, pname) == [f"{pname}_1.raw", f"{pname}_2.raw"]
        log = update_log(c, pname)
        assert f"reattaching {pname}: 1 -> 2" in log, log

        # v3 does not start: the host goes back to v2 and keeps serving
        publish([images["3"]], folder, signer=signer, keep=3)
        with Probe(port) as probe:
            result = update(c, pname)
        assert not result.ok
        log = update_log(c, pname)
        assert f"{pname} 3 did not start: rolling back to 2" in log, log
        assert "rolled back to 2, which is up" in log, log
        assert tcp_get(port) == f"{pname} v2\n"
        assert attached(c, pname) == [f"{pname}_2"]
        assert c.read_file(f"/var/lib/portable-service/{pname}/bad") == "3\n"
        timings["rollback_downtime_s"] = probe.downtime()
        # the broken version stays (so that it is not fetched again); the next run keeps v2
        assert installed(c, pname) == [f"{pname}_2.raw", f"{pname}_3.raw"]
        result = update(c, pname)
        assert result.ok, update_log(c, pname)
        assert "fleet is up to date (2)" in update_log(c, pname)
        assert attached(c, pname) == [f"{pname}_2"]

        # a corrupted image (its bytes differ from SHA256SUMS): sysupdate refuses it
        images["4"] = build_image(tmp_path / "v4", settings(psdemo, pname, port, "4",
                                                            f"{pname} v4"))
        publish([images["4"]], folder, signer=signer, keep=3)
        served = folder / f"{pname}_4.raw"
        data = bytearray(served.read_bytes())
        data[len(data) // 2] ^= 0xFF
        served.write_bytes(bytes(data))
        cursor = c.run("journalctl", "-n0", "--show-cursor").stdout.rsplit("cursor: ", 1)[-1]
        result = update(c, pname)
        assert not result.ok
        log = c.run("journalctl", "-o", "cat", f"--after-cursor={cursor.strip()}",
                    "-u", f"{pname}-update.service").stdout
        assert "could not install fleet 4" in log, log
        assert tcp_get(port) == f"{pname} v2\n"
        assert attached(c, pname) == [f"{pname}_2"]
        # the bad v3 made room; v4 was not kept; v2 (running) is untouched
        assert installed(c, pname) == [f"{pname}_2.raw"]
        assert not [p for p in (c.root / "var/lib/portables").iterdir()
                    if p.name.startswith(".#")], "a partial download was left"
        # repair the folder: publish the image again (same bytes as listed) is idempotent
        shutil.copyfile(images["4"], served)

        # a manifest changed without a new signature: refused before anything is fetched
        images["5"] = build_image(tmp_path / "v5", settings(psdemo, pname, port, "5",
                                                            f"{pname} v5"))
        signature = (folder / sysupdate.SIGNATURE).read_bytes()
        (folder / sysupdate.SIGNATURE).unlink()
        publish([images["5"]], folder, keep=3)  # unsigned
        (folder / sysupdate.SIGNATURE).write_bytes(signature)  # the old manifest's
        cursor = c.run("journalctl", "-n0", "--show-cursor").stdout.rsplit("cursor: ", 1)[-1]
        result = update(c, pname)
        assert not result.ok
        log = c.run("journalctl", "-o", "cat", f"--after-cursor={cursor.strip()}").stdout
        assert "could not read the published versions" in log, log
        assert "BAD signature" in log or "Signature verification failed" in log, log
        assert tcp_get(port) == f"{pname} v2\n"
        assert attached(c, pname) == [f"{pname}_2"]
        assert installed(c, pname) == [f"{pname}_2.raw"]

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    (LOG_DIR / "fleet-timings.json").write_text(json.dumps(timings, indent=2, sort_keys=True))
    print(f"\nfleet timings: {json.dumps(timings, sort_keys=True)}")


def test_sysupdate_sees_the_versions_publish_accepts(host: nspawn.Container,
                                                     tmp_path: Path) -> None:
    """version_problem() against systemd-sysupdate itself: a folder written by hand (publish
    refuses the bad names) lists six versions; sysupdate sees exactly the ones we accept."""
    c, http_port = host, 18473
    folder = tmp_path / "www"
    folder.mkdir()
    versions = ["1", "2+git,5", "3~rc1", "4.raw", "5^post", "6_b-1"]
    lines = []
    for v in versions:
        name = f"vt_{v}.raw"
        (folder / name).write_bytes(v.encode())
        lines.append(sysupdate.manifest_line(hashlib.sha256(v.encode()).hexdigest(), name))
    (folder / sysupdate.MANIFEST).write_text("".join(sorted(lines, key=lambda line: line[66:])))
    accepted = {v for v in versions if sysupdate.version_problem(v, (".raw",)) is None}
    assert accepted == {"1", "2+git,5", "6_b-1"}
    with http_server(folder, http_port) as base:
        s = hostconfig.settings_for(_named(tmp_path, "vt_1.raw"), base, verify=False)
        definitions = c.root / "run/vt.d"
        definitions.mkdir()
        (definitions / "50-vt.transfer").write_bytes(hostconfig.transfer_text(s, ".raw").encode())
        result = c.run(sysupdate.SYSUPDATE_BINARY, "--definitions=/run/vt.d", "--json=short",
                       "list")
    assert result.ok, result.output
    seen = set(json.loads(result.stdout)["all"])
    assert seen & set(versions) == accepted, result.output
    # and worse than unseen: 4.raw is cut at its first ".raw", so vt_4.raw.raw would be
    # installed as version 4
    assert seen - set(versions) == {"4"}, result.output


def _named(folder: Path, name: str) -> Path:
    path = folder / "named" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"")
    return path


def test_systemd_252_has_no_sysupdate(tmp_path: Path) -> None:
    """Debian 12 (systemd 252) builds neither systemd-sysupdate nor importctl: the update unit
    host-config writes fails there, saying so, and nothing is attached."""
    require_e2e()
    release = roots.RELEASES["bookworm"]
    root = roots.ensure_root(release, Reporter(quiet=False))
    assert not (root / sysupdate.SYSUPDATE_BINARY.lstrip("/")).exists()
    assert not (root / "usr/bin/importctl").exists()
    with nspawn.booted(release, root) as c:
        s = hostconfig.settings_for(_named(tmp_path, "old_1.raw"), "http://127.0.0.1:9/",
                                    verify=False)
        tree = tmp_path / "host"
        hostconfig.write_tree(hostconfig.host_files(s), tree)
        install_tree(c, tree)
        result = update(c, "old")
        assert not result.ok
        log = update_log(c, "old")
        assert "systemd-sysupdate is missing" in log and "systemd 257" in log, log
        assert attached(c, "old") == []


def test_importctl_pulls_from_the_same_folder(host: nspawn.Container, psdemo: Path,
                                              gpg_home: Path, tmp_path: Path) -> None:
    """importctl pull-raw --class=portable (systemd 257) takes a published image, checked
    against SHA256SUMS and its signature; a corrupted copy is refused."""
    c, http_port = host, 18474
    folder = tmp_path / "www"
    img = build_image(tmp_path / "v1", settings(psdemo, "imp", 18475, "1", "imp v1"))
    publish([img], folder, signer=Signer("fleet@example.org", gpg_home))
    ring = subprocess.run(["gpg", "--homedir", str(gpg_home), "--export"], check=True,
                          capture_output=True).stdout
    (c.root / "etc/systemd/import-pubring.gpg").write_bytes(ring)
    with http_server(folder, http_port) as base:
        ok = c.run("importctl", "pull-raw", "--class=portable", "--verify=signature",
                   f"{base}imp_1.raw", timeout=120)
        assert ok.ok, ok.output
        pulled = c.root / "var/lib/portables/imp_1.raw"
        assert pulled.read_bytes() == img.read_bytes()
        pulled.unlink()
        data = bytearray((folder / "imp_1.raw").read_bytes())
        data[100] ^= 0xFF
        (folder / "imp_1.raw").write_bytes(bytes(data))
        bad = c.run("importctl", "pull-raw", "--class=portable", "--verify=signature",
                    f"{base}imp_1.raw", timeout=120)
    assert not bad.ok
    assert "Checksum of imp_1.raw file did not check out" in bad.output, bad.output
    assert not pulled.exists()


def test_a_socket_activated_service_updates(host: nspawn.Container, psdemo: Path,
                                            tmp_path: Path) -> None:
    """A socket and its service: portablectl --now starts both at once, and when the service
    wins it fails without its socket and the socket refuses to start (seen here 3 runs in 4
    before the update script stopped on-demand services and restarted their sockets); the
    update must neither roll back for that nor leave the socket down. The new version answers
    through socket activation (psdemo sockserve serves only a socket systemd passes)."""
    c, pname, port, http_port = host, "sock", 18476, 18477

    def sock_settings(version: str) -> dict[str, object]:
        return {
            "pname": pname, "version": version,
            "units": [unit(f"{pname}.service", "[Service]\n"
                           f"ExecStart=/usr/bin/psdemo sockserve '{pname} v{version}'\n"),
                      unit(f"{pname}.socket", f"[Socket]\nListenStream=127.0.0.1:{port}\n"
                           "[Install]\nWantedBy=sockets.target\n")],
            "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}],
        }

    folder = tmp_path / "www"
    with http_server(tmp_path, http_port) as base:
        for v in ("1", "2"):
            img = build_image(tmp_path / f"v{v}", sock_settings(v))
            publish([img], folder)
            if v == "1":
                s = hostconfig.settings_for(img, base + "www", verify=False, settle=SETTLE)
                hostconfig.write_tree(hostconfig.host_files(s), tmp_path / "host")
                install_tree(c, tmp_path / "host")
            result = update(c, pname)
            assert result.ok, c.run("journalctl", "-b", "-o", "short-precise", "-u",
                                    f"{pname}.*", "-u", f"{pname}-update.service").stdout
            assert tcp_get(port) == f"{pname} v{v}\n"
            assert attached(c, pname) == [f"{pname}_{v}"]


def test_an_interrupted_update_does_not_cost_the_running_version(
        host: nspawn.Container, psdemo: Path, tmp_path: Path) -> None:
    """A run fetched v2 and stopped before attaching it; v3 comes: InstancesMax=2 would make
    room by removing the oldest, the running v1. The script removes the stray v2 first."""
    c, pname, port, http_port = host, "intr", 18478, 18479
    folder = tmp_path / "www"
    images = {v: build_image(tmp_path / f"v{v}", settings(psdemo, pname, port, v,
                                                          f"{pname} v{v}"))
              for v in ("1", "2", "3")}
    with http_server(tmp_path, http_port) as base:
        publish([images["1"]], folder)
        s = hostconfig.settings_for(images["1"], base + "www", verify=False, settle=SETTLE)
        hostconfig.write_tree(hostconfig.host_files(s), tmp_path / "host")
        install_tree(c, tmp_path / "host")
        assert update(c, pname).ok, update_log(c, pname)
        publish([images["2"]], folder)
        # the interrupted run: sysupdate fetched v2, the script never attached it
        fetch = c.run(sysupdate.SYSUPDATE_BINARY, f"--component={pname}", "update", "2",
                      timeout=120)
        assert fetch.ok, fetch.output
        (c.root / f"var/lib/portable-service/{pname}/fetched").write_text("2\n")
        assert installed(c, pname) == [f"{pname}_1.raw", f"{pname}_2.raw"]
        publish([images["3"]], folder)
        assert update(c, pname).ok, update_log(c, pname)
    assert tcp_get(port) == f"{pname} v3\n"
    assert attached(c, pname) == [f"{pname}_3"]
    # v1, the version to roll back to, is still there
    assert installed(c, pname) == [f"{pname}_1.raw", f"{pname}_3.raw"]
