"""The command line as a user meets it: one line per error, exit codes, flags over the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, require_tool, unsquashfs_cat

UNIT = "[Service]\nExecStart=/usr/bin/env true\n"


@pytest.fixture(autouse=True)
def _mksquashfs() -> None:
    require_tool("mksquashfs")


def write_spec(folder: Path, text: str) -> Path:
    (folder / "demo.service").write_text(UNIT)
    spec = folder / "portable.toml"
    spec.write_text(text)
    return spec


def test_build_from_flags_only(cli, tmp_path: Path) -> None:
    (tmp_path / "demo.service").write_text(UNIT)
    proc = cli("build", "--pname", "demo", "--version", "0.1", "--unit", "demo.service",
               "--squash-compression", "gzip", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == str(Path("result") / "demo_0.1.raw")
    assert proc.stderr == ""
    assert (tmp_path / "result/demo_0.1.raw").is_file()


def test_flags_override_the_file(cli, tmp_path: Path) -> None:
    write_spec(tmp_path, 'pname = "demo"\nversion = "1.0"\nunits = ["demo.service"]\n'
                         'squash-compression = "gzip"\ndescription = "from file"\n')
    proc = cli("build", "--version", "2.0", "--description", "from flag", "-o", "out")
    assert proc.returncode == 0, proc.stderr
    image = tmp_path / "out/demo_2.0.raw"
    assert proc.stdout.splitlines()[-1] == "out/demo_2.0.raw"
    assert b'PORTABLE_PRETTY_NAME="from flag"' in unsquashfs_cat(image, "etc/os-release")
    assert "==>" in proc.stderr  # progress steps unless --quiet


def test_spec_in_another_folder_resolves_relative_paths(cli, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    write_spec(proj, 'pname = "demo"\nversion = "1"\nunits = ["demo.service"]\n'
                     'squash-compression = "gzip"\n')
    proc = cli("build", "proj", "-q")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "result/demo_1.raw").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build"], "there is no portable.toml in"),
        (["build", "--version", "1"], "spec key 'pname' is missing; set it in the spec or with --pname"),
        (["build", "nope.toml"], "spec file nope.toml does not exist"),
        (["build", "--pname", "a_b", "--version", "1", "--unit", "demo.service"],
         "pname 'a_b' contains '_'"),
        (["build", "--pname", "demo", "--version", "1", "--unit", "x.service"],
         "unit file"),
        (["build", "--pname", "other", "--version", "1", "--unit", "demo.service"],
         "does not match the image prefix 'other'"),
        (["build", "--bogus"], "unrecognized arguments: --bogus"),
        (["build", "--pname", "demo", "--version", "1", "--unit", "demo.service",
          "--squash-block-size", "3K"], "not a power of two"),
    ],
)
def test_errors_are_one_line_exit_2(cli, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "demo.service").write_text(UNIT)
    proc = cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert lines[0].startswith("portable-service: error: ")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "result").exists() or not any((tmp_path / "result").iterdir())


def test_bad_source_date_epoch(cli, tmp_path: Path) -> None:
    write_spec(tmp_path, 'pname = "demo"\nversion = "1"\nunits = ["demo.service"]\n')
    proc = cli("build", env={"SOURCE_DATE_EPOCH": "yesterday"})
    assert proc.returncode == 2 and "SOURCE_DATE_EPOCH" in proc.stderr


def test_unknown_key_in_file(cli, tmp_path: Path) -> None:
    write_spec(tmp_path, 'pname = "demo"\nversion = "1"\nunits = ["demo.service"]\nsymlink = []\n')
    proc = cli("build")
    assert proc.returncode == 2
    assert "unknown spec key 'symlink'; did you mean 'symlinks'?" in proc.stderr


def test_help_lists_every_spec_flag(cli) -> None:
    proc = cli("build", "--help")
    assert proc.returncode == 0
    for flag in ("--pname", "--version", "--unit", "--description", "--homepage", "--content",
                 "--symlink", "--squashfs-tools", "--squash-compression", "--squash-block-size"):
        assert flag in proc.stdout


def test_example_spec_builds(cli, tmp_path: Path) -> None:
    proc = cli("build", str(REPO / "examples/demo"), "-o", str(tmp_path / "r"), "-q",
               "--squash-compression", "gzip")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r/demo_1.0.raw").is_file()


def test_interrupted_build_keeps_the_old_image(cli, tmp_path: Path) -> None:
    (tmp_path / "demo.service").write_text(UNIT)
    base = ["build", "--pname", "demo", "--version", "1", "--unit", "demo.service", "-q"]
    assert cli(*base, "--squash-compression", "gzip").returncode == 0
    old = (tmp_path / "result/demo_1.raw").read_bytes()
    big = tmp_path / "big"
    big.mkdir()
    for i in range(40):  # incompressible data keeps xz busy for a while
        (big / f"f{i}").write_bytes(os.urandom(1 << 20))
    proc = subprocess.Popen(
        [sys.executable, "-m", "portable_service", *base, "--content", f"{big}=/opt/big"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list((tmp_path / "result").glob(".demo_1.raw.*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, "build never started writing"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip() == "portable-service: interrupted; no image was written or changed"
    assert sorted(p.name for p in (tmp_path / "result").iterdir()) == ["demo_1.raw", "demo_1.spdx.json"]
    assert (tmp_path / "result/demo_1.raw").read_bytes() == old
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "result")], capture_output=True)
    assert leftover.returncode == 1, "mksquashfs outlived the interrupted build"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_verb(cli, tmp_path: Path, where: str) -> None:
    (tmp_path / "demo.service").write_text(UNIT)
    build = ["build", "--pname", "demo", "--version", "1", "--unit", "demo.service", "-q"]

    def debug(*argv: str) -> list[str]:
        return ["--debug", *argv] if where == "before" else [*argv, "--debug"]

    proc = cli(*debug(*build))
    assert proc.returncode == 0, proc.stderr
    assert any(line.startswith("+ ") and "mksquashfs" in line for line in proc.stderr.splitlines())
    # an error shows the traceback first, then the one line
    proc = cli(*debug(*build, "--unit", "nope.service"))
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("portable-service: error: ")
    quiet = cli(*build, "--unit", "nope.service")
    assert "Traceback" not in quiet.stderr and quiet.stderr.count("\n") == 1


def test_build_without_a_spec_says_so(cli, tmp_path: Path) -> None:
    proc = cli("build")
    assert proc.returncode == 2
    assert proc.stderr == (f"portable-service: error: there is no portable.toml in {tmp_path}; "
                           "start one with 'portable-service init /usr/bin/PROGRAM', name a "
                           "spec file or folder (portable-service build PATH), or give --pname, "
                           "--version and --unit\n")


def test_output_is_a_folder_not_the_image_file(cli, tmp_path: Path) -> None:
    write_spec(tmp_path, 'pname = "demo"\nversion = "1"\nunits = ["demo.service"]\n')
    proc = cli("build", "-o", "demo.raw")
    assert proc.returncode == 2
    assert "-o demo.raw names a file" in proc.stderr and "use -o ." in proc.stderr
    assert not (tmp_path / "demo.raw").exists()


def test_the_package_is_typed_and_licensed() -> None:
    assert (REPO / "src/portable_service/py.typed").exists()
    assert "MIT License" in (REPO / "LICENSE").read_text()
    assert 'license = { text = "MIT" }' in (REPO / "pyproject.toml").read_text()


def test_a_repeated_flag_adds_to_the_spec_list(cli, tmp_path: Path) -> None:
    """--content X keeps the spec's contents (the unit's program among them)."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app/run").write_text("#!/bin/sh\nexec true\n")
    (tmp_path / "app/run").chmod(0o755)
    (tmp_path / "demo.service").write_text("[Service]\nExecStart=/opt/app/run\n")
    (tmp_path / "portable.toml").write_text(
        'pname = "demo"\nversion = "1"\nunits = ["demo.service"]\nsquash-compression = "gzip"\n'
        'contents = [{ source = "app", target = "/opt/app" }]\n')
    proc = cli("build", "--content", "/usr/bin/env", "-q")
    assert proc.returncode == 0, proc.stderr
    image = tmp_path / "result/demo_1.raw"
    assert unsquashfs_cat(image, "opt/app/run").startswith(b"#!/bin/sh")
    assert unsquashfs_cat(image, "usr/bin/env")
    proc = cli("build", "--content", "", "--content", "/usr/bin/env", "-q")
    assert proc.returncode == 2 and "/opt/app/run" in proc.stderr  # emptied: the program is gone
