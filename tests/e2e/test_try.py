"""``portable-service try``: the users' way to the same judge, through the real CLI."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from e2e.conftest import RELEASES, require_e2e
from e2e.lib import build_image, unit
from portable_service.cli import main

pytestmark = pytest.mark.e2e
PORT = 18131


def server_spec(psdemo: Path, version: str) -> dict:
    return {"pname": "tryme", "version": version,
            "units": [unit("tryme.service", "[Service]\nStateDirectory=tryme\n"
                           f"ExecStart=/usr/bin/psdemo serve {PORT} tried\n")],
            "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}]}


@pytest.mark.parametrize("release", RELEASES)
def test_try_reports_success(cli, psdemo, tmp_path, release):
    image = build_image(tmp_path, server_spec(psdemo, "1.0"))
    proc = cli("try", str(image), "--release", release, "--settle", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "--- tryme.service: active (running" in proc.stdout
    assert f"listening on 127.0.0.1:{PORT}" in proc.stdout
    assert "OK: tryme.service started on Debian" in proc.stderr


def test_try_reports_systemds_own_message(cli, psdemo, tmp_path):
    image = build_image(tmp_path, server_spec(psdemo, "broken"),
                        drop=PurePosixPath("/var/lib/tryme"))
    proc = cli("try", str(image), "--settle", "0.5")
    assert proc.returncode == 2, proc.stderr
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("portable-service: error:")]
    assert len(error) == 1, proc.stderr
    assert "tryme.service failed on Debian 12" in error[0]
    assert "/var/lib/tryme" in error[0] and "Read-only file system" in error[0], error[0]
    assert "Traceback" not in proc.stderr
    assert "FAILED" in proc.stdout


def test_try_attach_failure_is_one_line(cli, psdemo, tmp_path):
    image = build_image(tmp_path, server_spec(psdemo, "1.0"))
    wrong = image.with_name("other_1.0.raw")  # prefix no longer matches its units
    image.rename(wrong)
    proc = cli("try", str(wrong), "--settle", "0.5")
    assert proc.returncode == 2, proc.stderr
    assert "portablectl attach failed" in proc.stderr
    # the image's PORTABLE_PREFIXES names its own prefix; systemd says so
    assert "Acceptable prefix matches are: tryme" in proc.stderr, proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if "error:" in ln]) == 1


def test_try_needs_root(capsys, tmp_path):
    require_e2e()
    os.seteuid(65534)  # the real uid stays root, so the test can come back
    try:
        code = main(["try", str(tmp_path / "demo_1.0.raw")])
    finally:
        os.seteuid(0)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "portable-service: error: booting a throwaway systemd needs root; "
        "run it as root (e.g. with sudo)"]


def test_try_without_nspawn_names_the_packages(cli, tmp_path, psdemo):
    image = build_image(tmp_path, server_spec(psdemo, "1.0"))
    proc = cli("try", str(image), env={"PATH": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "portable-service: error: systemd-nspawn not found in PATH (needed to boot a throwaway "
        "systemd); install it: apt-get install systemd-container debootstrap"]
