"""``init PROGRAM`` then ``build`` works; init never overwrites; the missing-spec error names it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import require_tool, unsquashfs_cat


def test_init_then_build(cli, tmp_path: Path) -> None:
    require_tool("mksquashfs")
    sleep = shutil.which("sleep")
    assert sleep
    proc = cli("init", "sleep")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(tmp_path / "portable.toml"),
                                        str(tmp_path / "sleep.service")]
    spec = (tmp_path / "portable.toml").read_text()
    assert 'pname = "sleep"' in spec and 'units = ["sleep.service"]' in spec
    assert spec.count("\n# ") >= 5  # commented: every key says what it is for
    unit = (tmp_path / "sleep.service").read_text()
    assert f"ExecStart={sleep}\n" in unit  # found in PATH: an absolute path
    proc = cli("build", "-q")
    assert proc.returncode == 0, proc.stderr
    image = tmp_path / "result/sleep_0.1.raw"
    assert proc.stdout.strip() == "result/sleep_0.1.raw"
    # the unit as init wrote it, with what the build adds for the run time at the end
    assert unsquashfs_cat(image, "etc/systemd/system/sleep.service").decode().startswith(unit)
    assert unsquashfs_cat(image, sleep.lstrip("/"))  # the program came along


def test_init_without_a_program_builds_a_placeholder(cli, tmp_path: Path) -> None:
    require_tool("mksquashfs")
    folder = tmp_path / "My_Service"
    folder.mkdir()
    proc = cli("init", "--version", "2", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "my-service.service").read_text().count("ExecStart=/usr/bin/sleep infinity") == 1
    assert cli("build", "-q", cwd=folder).returncode == 0
    assert (folder / "result/my-service_2.raw").is_file()


def test_init_arguments_read_back_as_given(cli, tmp_path: Path) -> None:
    """The arguments after PROGRAM are ExecStart='s, quoted so systemd reads them back."""
    from portable_service.rules.unitfile import parse_exec

    args = ["--serve", "two words", "100%", "$HOME", 'a"b', "back\\slash", "x;y"]
    proc = cli("init", "--pname", "env", "/usr/bin/env", "--", *args)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in (tmp_path / "env.service").read_text().splitlines()
                if ln.startswith("ExecStart="))
    (command,) = parse_exec(line.removeprefix("ExecStart=")).commands
    # systemd resolves %% and $$ when it loads the unit: they become % and $
    argv = [a.replace("%%", "%").replace("$$", "$") for a in command.argv]
    assert argv == ["/usr/bin/env", *args]


@pytest.mark.parametrize("existing", ["portable.toml", "sleep.service"])
def test_init_never_overwrites(cli, tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("mine\n")
    proc = cli("init", "sleep")
    assert proc.returncode == 2
    assert proc.stderr == (f"portable-service: error: {tmp_path / existing} already exists; "
                           "init writes only new files; edit it, or run init in an empty "
                           "folder\n")
    assert (tmp_path / existing).read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


@pytest.mark.parametrize(("args", "message"), [
    (["init", "no-such-program-here"], "program 'no-such-program-here' is not in PATH"),
    (["init", "./notes.txt"], "notes.txt is not an executable file on this host"),
    (["init", "sleep", "--pname", "a_b"], "pname 'a_b' contains '_'"),
])
def test_init_mistakes(cli, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "notes.txt").write_text("not a program\n")
    proc = cli(*args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert message in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_missing_spec_points_to_init(cli) -> None:
    proc = cli("build")
    assert proc.returncode == 2
    assert "start one with 'portable-service init /usr/bin/PROGRAM'" in proc.stderr
