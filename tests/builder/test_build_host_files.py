"""Host files the build cannot read, and builds killed outright: loud failures, no litter.

The unreadable cases run the real CLI as an unprivileged user: under root the
test drops to nobody (setpriv), as anyone else it runs as itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portable_service.builder.atomic import remove_stale_temporaries, temporary_pid, write_atomically
from portable_service.builder.pipeline import plan
from portable_service.builder.spec import spec_from_mapping
from portable_service.errors import TreeError
from portable_service.progress import QUIET
from tests.conftest import require, require_tool, unsquashfs_list

SRC = Path(__file__).resolve().parents[2] / "src"
NOBODY = 65534
UNIT = "[Service]\nExecStart=/usr/bin/true\n"


def unprivileged(argv: list[str]) -> list[str]:
    """``argv`` run as a user without root's right to read everything."""
    if os.geteuid() != 0:
        return argv
    setpriv = require_tool("setpriv")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


@functools.cache
def python_for_nobody() -> tuple[str, str]:
    """(interpreter, PYTHONPATH) the unprivileged user can run the project with.

    A test venv's interpreter may live in root's home (pyenv): then the system's
    python3 of the same version runs it, with the venv's packages on the path.
    """
    path = os.pathsep.join([str(SRC), *site.getsitepackages()])
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (sys.executable, shutil.which(version) or "", f"/usr/bin/{version}"):
        if candidate and subprocess.run(unprivileged([candidate, "-c", "import rich, elftools"]),
                                        env={**os.environ, "PYTHONPATH": path},
                                        capture_output=True, check=False).returncode == 0:
            return candidate, path
    require(False, f"no {version} the user {NOBODY} can run")
    raise AssertionError  # not reached


@pytest.fixture
def shared() -> Iterator[Path]:
    """A project folder the unprivileged user can enter (pytest's tmp_path is root's 0700)."""
    d = Path(tempfile.mkdtemp(prefix="ps-unreadable-"))
    d.chmod(0o755)
    (d / "demo.service").write_text(UNIT)
    (d / "demo.service").chmod(0o644)
    out = d / "result"
    out.mkdir()
    out.chmod(0o777)
    app = d / "app"
    app.mkdir()
    app.chmod(0o755)
    (app / "ok.txt").write_text("ok\n")
    (app / "ok.txt").chmod(0o644)
    yield d
    shutil.rmtree(d)


def build_as_user(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    python, path = python_for_nobody()
    cmd = unprivileged([python, "-m", "portable_service", "build", "--pname", "demo",
                        "--version", "1", "--unit", "demo.service", "--squash-compression",
                        "gzip", "-q", "-o", "result", *args])
    env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1",
           "HOME": str(project)}
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def unreadable_file(app: Path) -> Path:
    secret = app / "secret.key"
    secret.write_text("s\n")
    secret.chmod(0o000)  # not even its owner reads it without root's override
    return secret


def unreadable_folder(app: Path) -> Path:
    private = app / "private"
    private.mkdir()
    (private / "inside").write_text("x\n")
    private.chmod(0o000)
    return private


@pytest.mark.parametrize("make", [unreadable_file, unreadable_folder])
def test_an_unreadable_host_path_fails_with_the_path_and_the_fix(shared: Path, make) -> None:
    path = make(shared / "app")
    proc = build_as_user(shared, "--content", str(shared / "app"))
    assert proc.returncode != 0
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"portable-service: error: cannot read {path}: Permission denied")
    assert "run the build as root" in line and "exclude" in line and "allow-missing" in line
    assert not (shared / "result/demo_1.raw").exists()


def test_allow_missing_leaves_unreadable_paths_out_with_a_warning(shared: Path) -> None:
    secret = unreadable_file(shared / "app")
    private = unreadable_folder(shared / "app")
    proc = build_as_user(shared, "--content", str(shared / "app"), "--allow-missing")
    assert proc.returncode == 0, proc.stderr
    assert f"warning: cannot read {secret}: Permission denied" in proc.stderr
    assert f"warning: cannot read {private}: Permission denied" in proc.stderr
    entries = unsquashfs_list(shared / "result/demo_1.raw")
    app = str(shared / "app")
    assert f"{app}/ok.txt" in entries
    assert f"{app}/secret.key" not in entries and f"{app}/private/inside" not in entries


def test_an_unreadable_package_folder_is_not_passed_over(shared: Path) -> None:
    """dpkg lists a file below a 0700 folder: it is not "removed by hand", it is unreadable."""
    private = unreadable_folder(shared / "app")
    admin = shared / "dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "status").write_text("Package: app\nStatus: install ok installed\n"
                                  "Architecture: amd64\n")
    listed = [str(shared / "app"), f"{shared}/app/ok.txt", str(private), f"{private}/inside"]
    (admin / "info/app:amd64.list").write_text("\n".join(listed) + "\n")
    for p in (admin, admin / "info"):
        p.chmod(0o755)
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from portable_service.builder.closure import Closure, Context, deb\n"
        "from portable_service.errors import ClosureError\n"
        "from portable_service.builder.spec import spec_from_mapping\n"
        "spec = spec_from_mapping({'pname': 't', 'version': '1', 'packages': ['app'],"
        " 'units': ['demo.service'],"
        " 'allow_missing': sys.argv[1] == 'yes'}, Path('.'))\n"
        "ctx = Context(spec, Closure())\n"
        "try:\n"
        f"    print(sorted(str(n.image) for n in deb.package_nodes(spec, ctx, Path('{admin}'))))\n"
        "except ClosureError as e:\n"
        "    print('error:', e)\n"
        "print(ctx.closure.warnings)\n"
    )
    python, path = python_for_nobody()
    env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    strict = subprocess.run(unprivileged([python, "-c", code, "no"]), cwd=shared, env=env,
                            capture_output=True, text=True, check=True).stdout
    assert strict.startswith(f"error: cannot read {private}/inside: Permission denied")
    lenient = subprocess.run(unprivileged([python, "-c", code, "yes"]), cwd=shared,
                             env=env, capture_output=True, text=True, check=True).stdout
    assert f"cannot read {private}/inside: Permission denied" in lenient
    assert f"'{shared}/app/ok.txt'" in lenient and f"'{private}/inside'" not in lenient


@pytest.mark.parametrize("writer", ["mksquashfs", "native"])
def test_a_source_gone_before_writing_is_an_error_naming_it(tmp_path: Path, writer: str) -> None:
    if writer == "mksquashfs":
        require_tool("mksquashfs")
    (tmp_path / "demo.service").write_text(UNIT)
    data = tmp_path / "app/data.txt"
    data.parent.mkdir()
    data.write_text("x\n")
    spec = spec_from_mapping({"pname": "demo", "version": "1", "units": ["demo.service"],
                              "writer": writer, "squash_compression": "gzip",
                              "contents": [{"source": "app", "target": "/opt/app"}]}, tmp_path)
    p = plan(spec)
    data.unlink()
    out = tmp_path / "demo_1.raw"
    with pytest.raises(TreeError, match=rf"cannot read {data} \(for /opt/app/data.txt\): "
                                        r"No such file or directory"):
        write_atomically(out, lambda tmp: p.writer.write(p.tree, tmp, p.options, QUIET))
    assert not out.exists()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


# -- a killed build leaves no litter -----------------------------------------------------------

def temporaries(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(".demo_1.raw."))


@pytest.mark.parametrize("writer", ["mksquashfs", "native"])
def test_a_build_killed_outright_leaves_nothing_after_the_next(tmp_path: Path, writer: str) -> None:
    if writer == "mksquashfs":
        require_tool("mksquashfs")
    (tmp_path / "demo.service").write_text(UNIT)
    # incompressible bytes: packing takes long enough to be killed in the middle
    (tmp_path / "big.bin").write_bytes(os.urandom(48 << 20))
    out = tmp_path / "result"
    cmd = [sys.executable, "-m", "portable_service", "build", "--pname", "demo", "--version", "1",
           "--unit", "demo.service", "--writer", writer, "--squash-compression", "gzip",
           "--content", "big.bin=/opt/big.bin", "-q", "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline, seen = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            found = temporaries(out) if out.is_dir() else []
            if found:
                seen = seen or time.monotonic()
                # the writer is writing (or has had its chance to start)
                with contextlib.suppress(FileNotFoundError):
                    if (out / found[0]).stat().st_size > 0 or time.monotonic() - seen > 2:
                        break
            time.sleep(0.02)
        assert proc.poll() is None, "the build ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    litter = temporaries(out)
    assert len(litter) == 1 and temporary_pid(out / "demo_1.raw", litter[0]) == proc.pid
    # a second build of the same image cleans up after the killed one
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert temporaries(out) == []
    assert unsquashfs_list(out / "demo_1.raw")["/opt/big.bin"][2] == str(48 << 20)


def test_stale_temporaries_of_live_builds_are_kept(tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "demo_1.raw"
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        running = tmp_path / f".demo_1.raw.{live.pid}.abcd1234.tmp"
        stale = tmp_path / f".demo_1.raw.{dead.pid}.abcd1234.tmp"
        held = tmp_path / f".demo_1.raw.{dead.pid}.efgh5678.tmp"  # a build in another pid namespace
        other = tmp_path / f".demo_2.raw.{dead.pid}.abcd1234.tmp"
        old_style = tmp_path / ".demo_1.raw.abcd1234.tmp"
        for f in (running, stale, held, other, old_style):
            f.write_bytes(b"partial")
        with open(held, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            assert remove_stale_temporaries(out) == [stale]
        assert sorted(os.listdir(tmp_path)) == sorted(
            p.name for p in (running, held, other, old_style))
    finally:
        live.kill()
        live.wait()
