"""Shared fixtures. Tests that need root or a tool fail under CI=true instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, why: str) -> None:
    """Skip locally when a prerequisite is missing; in CI the missing piece is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {why}")
    pytest.skip(why)


def require_tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    require(path is not None, f"{name} is not installed")
    assert path is not None
    return path


def require_root() -> None:
    require(os.geteuid() == 0, "needs root")


@pytest.fixture
def cli(tmp_path: Path):
    """Run the real console entry point in a subprocess; returns CompletedProcess (text)."""

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "portable_service", *args],
                              cwd=cwd or tmp_path, env=full_env, capture_output=True, text=True,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def unsquashfs_list(image: Path) -> dict[str, tuple[str, str, str]]:
    """unsquashfs -lln as {path: (mode string, owner, size-or-target)}; path '/' is the root.

    Names that are not UTF-8 are kept (surrogate escapes), as os.fsdecode gives them.
    """
    require_tool("unsquashfs")
    out = subprocess.run(["unsquashfs", "-lln", str(image)], capture_output=True,
                         check=True).stdout.decode("utf-8", "surrogateescape")
    entries = {}
    for line in out.split("\n"):
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("squashfs-root"):
            continue
        mode, owner, size, _date, _time, rest = parts
        path, _, target = rest.partition(" -> ")
        path = path[len("squashfs-root"):] or "/"
        entries[path] = (mode, owner, target or size)
    return entries


def unsquashfs_cat(image: Path, path: str) -> bytes:
    require_tool("unsquashfs")
    return subprocess.run(["unsquashfs", "-cat", str(image), path.lstrip("/")],
                          capture_output=True, check=True).stdout


def mksquashfs(src: Path, out: Path, *args: str) -> Path:
    """The standard tool on a folder, owners flattened to root as our builds do."""
    binary = require_tool("mksquashfs")
    subprocess.run([binary, str(src), str(out), "-noappend", "-quiet", "-no-progress",
                    "-all-root", *args], check=True, capture_output=True)
    return out


def gpg_key_home(home: Path, uid: str) -> Path:
    """A gpg home in ``home`` holding one new ed25519 signing key for ``uid``, no passphrase."""
    require_tool("gpg")
    home.chmod(0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                    "--quick-gen-key", uid, "ed25519", "sign", "never"],
                   check=True, capture_output=True)
    return home
