"""One exit-code table for every verb (errors.EXIT_CODES): 0 success, 1 findings, 2 usage or
input error, 3 cannot run here. Each verb is run into each outcome it can have."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require, require_root

UNIT = "[Service]\nExecStart=/usr/bin/env true\n"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("codes")
    os.chmod(d, 0o755)  # the unprivileged run below reads it
    (d / "demo.service").write_text(UNIT)
    (d / "portable.toml").write_text('pname = "demo"\nversion = "1"\nunits = ["demo.service"]\n'
                                     'squash-compression = "gzip"\nwriter = "native"\n')
    for version in ("1", "2"):
        proc = run("build", "-q", "--version", version, cwd=d)
        assert proc.returncode == 0, proc.stderr
    (d / "other_1.raw").write_bytes((d / "result/demo_1.raw").read_bytes())  # no unit matches
    (d / "junk_1.raw").write_bytes(b"not an image" * 100)
    return d


def run(*args: str, cwd: Path, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(user or []), sys.executable, "-m", "portable_service", *args],
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                          capture_output=True, text=True, check=False)


CASES = [
    # 0: success
    (["build", "-q"], 0), (["why", "/usr/bin/env"], 0), (["inspect", "result/demo_1.raw"], 0),
    (["ls", "result/demo_1.raw", "/etc"], 0), (["cat", "result/demo_1.raw", "/etc/os-release"], 0),
    (["verify", "result/demo_1.raw"], 0), (["size", "result/demo_1.raw"], 0),
    (["diff", "result/demo_1.raw", "result/demo_1.raw"], 0),
    # 1: findings
    (["verify", "other_1.raw"], 1), (["why", "/usr/bin/nope"], 1),
    (["diff", "result/demo_1.raw", "result/demo_2.raw"], 1),
    # 2: usage or input
    (["build", "--bogus"], 2), (["frobnicate"], 2), (["build", "--pname", "a_b"], 2),
    (["inspect", "junk_1.raw"], 2), (["verify", "missing_1.raw"], 2),
    (["ls", "result/demo_1.raw", "/nope"], 2), (["cat", "result/demo_1.raw", "/etc"], 2),
    (["size", "junk_1.raw"], 2), (["diff", "result/demo_1.raw", "junk_1.raw"], 2),
    (["why", "relative/path"], 2), (["init", "/nonexistent/program"], 2),
    (["--json", "cat", "result/demo_1.raw", "/etc/os-release"], 2),
]


@pytest.mark.parametrize(("args", "code"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_exit_code(work: Path, args: list[str], code: int) -> None:
    proc = run(*args, cwd=work)
    assert proc.returncode == code, proc.stderr
    if code == 2:
        assert proc.stderr.count("\n") == 1 and "error: " in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_try_bad_image_is_2_and_not_root_is_3(work: Path) -> None:
    require_root()
    require(all(shutil.which(t) or Path("/usr/sbin", t).exists()
                for t in ("systemd-nspawn", "debootstrap", "unshare", "nsenter", "setpriv")),
            "try's tools are not installed")
    proc = run("try", "missing_1.raw", cwd=work)
    assert proc.returncode == 2, proc.stderr
    assert "image missing_1.raw does not exist" in proc.stderr
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = run("try", "result/demo_1.raw", cwd=work, user=nobody)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == ("portable-service: error: booting a throwaway systemd needs root; "
                           "run it as root (e.g. with sudo)\n")


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_leaves_only_findings(work: Path, where: str) -> None:
    argv = ["-q", "verify", "other_1.raw"] if where == "before" else ["verify", "other_1.raw", "-q"]
    proc = run(*argv, cwd=work)
    assert proc.returncode == 1
    assert proc.stderr == ""  # no summary line
    assert proc.stdout.startswith("error: ")  # the findings themselves
    loud = run("verify", "other_1.raw", cwd=work)
    assert "refused or failing: " in loud.stderr
