"""`verify --profile/--systemd` on real squashfs images, and the build's verify step with
allow-missing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.look.imagetrees import UNIT, image_maker


@pytest.fixture
def image(tmp_path: Path) -> Callable[..., Path]:
    return image_maker(tmp_path)


def _unit(text: str) -> Callable[[Path], None]:
    return lambda root: (root / "etc/systemd/system/demo.service").write_text(text)


def _rules(cli, img: Path, *flags: str) -> set[tuple[str, str]]:
    proc = cli("verify", "--json=short", *flags, str(img))
    assert "Traceback" not in proc.stderr, proc.stderr
    return {(p["severity"], p["rule"]) for p in json.loads(proc.stdout)["problems"]}


def test_profile_flag(image, cli) -> None:
    img = image("demo_1.raw", _unit(UNIT + "User=app\n"))
    assert _rules(cli, img) == {("warning", "user-dynamic")}
    assert _rules(cli, img, "--profile", "trusted") == {("warning", "user-on-host")}
    proc = cli("verify", "--profile", "trusted", str(img))
    assert proc.returncode == 0 and "217/USER" in proc.stdout, proc.stdout + proc.stderr
    proc = cli("verify", "--profile", "bogus", str(img))
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_systemd_flag(image, cli) -> None:
    img = image("demo_1.raw", _unit(UNIT + "BindLogSockets=yes\n"))
    assert _rules(cli, img) == {("warning", "key-needs-newer-systemd")}
    assert _rules(cli, img, "--systemd", "257") == set()
    proc = cli("verify", "--systemd", "252", str(img))
    assert "needs systemd >= 257: systemd 252 does not know it" in proc.stdout, proc.stdout
    proc = cli("verify", "--systemd", "new", str(img))
    assert proc.returncode == 2 and "not a systemd version" in proc.stderr


def test_typo_fails_verify(image, cli) -> None:
    img = image("demo_1.raw", _unit(UNIT.replace("ExecStart=", "ExecStrat=")))
    proc = cli("verify", str(img))
    assert proc.returncode == 1, proc.stdout
    assert "did you mean ExecStart=?" in proc.stdout
    assert "Service has no ExecStart=, ExecStop=, or SuccessAction=. Refusing." in proc.stdout


def test_build_with_allow_missing_warns_once(cli, tmp_path: Path) -> None:
    unit = tmp_path / "demo.service"
    unit.write_text("[Service]\nExecStart=/usr/bin/sleep 1\n"
                    "ExecStartPost=/usr/bin/no-such-program-here\n")
    args = ("build", "--pname", "demo", "--version", "1", "--unit", str(unit),
            "--squash-compression", "gzip", "-o", str(tmp_path / "out"))
    proc = cli(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    proc = cli(*args, "--allow-missing")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert output.count("no-such-program-here") == 1, output
    assert (tmp_path / "out/demo_1.raw").exists()
