"""The README's "Deploy and upgrade on a server" commands, run as written on systemd 247/252/257.

tests/cli/test_readme.py skips the blocks marked ``<!-- doctest: server -->``; here they
run: ``portable-service`` lines on the host (in a copy of examples/demo), ``cp ...
/var/lib/portables/`` as a copy into the container, every other line inside the container
with sh. A line whose comment says ``systemd >= N`` or ``systemd N`` runs only there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portable_service.harness.nspawn import UDEV_RETRIES, Container
from tests.cli.test_readme import blocks, commands
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

SECTION = "## Deploy and upgrade on a server"


def server_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start + len(SECTION))]
    out = [cmd for b in blocks(section) if b.mark == "server" and b.lang == "console"
           for cmd, _ in commands(b.body)]
    assert len(out) >= 8, out
    return out


def applies(command: str, systemd: int) -> bool:
    comment = command.partition("#")[2]
    at_least = re.search(r"systemd >= (\d+)", comment)
    exactly = re.search(r"systemd (\d+)\b", comment)
    if at_least:
        return systemd >= int(at_least[1])
    if exactly:
        return systemd == int(exactly[1])
    return True


def in_container(c: Container, command: str) -> str:
    # systemd 247 waits for udev on a fresh loop device: retried as c.attach() does
    for _ in range(UDEV_RETRIES + 1):
        c.settle()
        result = c.run("sh", "-c", command, timeout=120)
        if result.ok or not c.release.needs_udevd or "portablectl" not in command:
            break
        time.sleep(1)
    assert result.ok, f"{command}: {result.output}"
    return result.output


def test_deploy_and_upgrade_as_the_readme_says(container: Container, tmp_path: Path) -> None:
    c = container
    work = tmp_path / "demo"
    shutil.copytree(REPO / "examples/demo", work)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "portable-service").write_text(
        f"#!/bin/sh\nPYTHONPATH={REPO / 'src'} exec {sys.executable} -m portable_service \"$@\"\n")
    (shim / "portable-service").chmod(0o755)
    env = {"PATH": f"{shim}:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO / "src")}
    build = subprocess.run(["portable-service", "build", "-q"], cwd=work, env=env,
                           capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr
    ran = []
    said = ""
    try:
        for command in server_commands():
            if not applies(command, c.release.systemd):
                continue
            line = command.partition("#")[0].strip()
            if line.startswith("portable-service"):
                proc = subprocess.run(["bash", "-c", line], cwd=work, env=env,
                                      capture_output=True, text=True, check=False)
                # diff says "something changes" with exit 1, as the README's comment says
                assert proc.returncode in ((0, 1) if " diff " in line else (0,)), proc.stderr
            elif line.startswith("cp ") and line.endswith("/var/lib/portables/"):
                c.copy_image(work / line.split()[1])
            else:
                said = in_container(c, line)
            ran.append(line)
            if line.startswith("systemctl start demo.socket"):
                assert c.wait_for("demo.socket").active == "active", \
                    said + c.systemctl("status", "demo.socket").output
                # --enable linked it where systemd starts it at boot
                wants = c.root / "etc/systemd/system.attached/sockets.target.wants/demo.socket"
                assert wants.is_symlink(), said
            if line.startswith("systemctl stop demo.service"):
                root = c.systemctl("show", "-p", "RootImage", "demo.service").stdout.strip()
                assert root == "RootImage=/var/lib/portables/demo_1.1.raw", root
                assert c.wait_for("demo.socket").active == "active", \
                    said + c.systemctl("status", "demo.socket", "demo.service").output
        assert any(r.startswith("portablectl attach") for r in ran)
        assert any("demo_1.1" in r for r in ran if r.startswith("portablectl"))
        # the last line detaches: nothing of demo is left attached
        in_container(c, "portablectl detach --now --enable demo_1.1")
        assert not [u for u in c.attached_units(runtime=False) if u.startswith("demo")]
    finally:
        for name in ("demo_1.1", "demo_1.0"):
            c.run("portablectl", "detach", "--now", name)
        c.systemctl("reset-failed")
