"""Progress as a user sees it: live on a terminal (a pty), plain lines in a pipe or with
NO_COLOR / TERM=dumb; each step shown when it starts; the bar driven by work done."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portable_service.progress import Reporter, human
from tests.conftest import REPO, require_tool

UNIT = "[Service]\nExecStart=/usr/bin/env true\n"
BOX = set("─━│┃╸╺╹╻┏┓┗┛═")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A build that takes a few seconds: 24 MiB of random data for xz."""
    (tmp_path / "demo.service").write_text(UNIT)
    (tmp_path / "blob").write_bytes(os.urandom(24 << 20))
    (tmp_path / "portable.toml").write_text(
        'pname = "demo"\nversion = "1"\nunits = ["demo.service"]\n'
        'contents = [{ source = "blob", target = "/opt/blob" }]\n'
        'squash-compression = "xz"\nsquash-block-size = "128K"\n')
    return tmp_path


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    return {**base, "PYTHONPATH": str(REPO / "src"), "TERM": "xterm-256color", **extra}


def through_pty(args: list[str], cwd: Path, extra: dict[str, str] | None = None
                ) -> tuple[int, bytes, list[float]]:
    """Run the CLI on a pseudo-terminal (stdout and stderr): its output, and when each
    chunk arrived (seconds from the start)."""
    master, slave = pty.openpty()
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "portable_service", *args], cwd=cwd,
                            stdin=slave, stdout=slave, stderr=slave, env=env(**(extra or {})))
    os.close(slave)
    out, times = b"", []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        out += chunk
        times.append(time.monotonic() - start)
    os.close(master)
    return proc.wait(), out, times


@pytest.mark.parametrize("writer", ["mksquashfs", "native"])
def test_a_terminal_gets_a_live_display(project: Path, writer: str) -> None:
    if writer == "mksquashfs":
        require_tool("mksquashfs")
    code, out, times = through_pty(["build", "--writer", writer], project)
    assert code == 0, out.decode(errors="replace")
    text = out.decode()
    # redrawn in place (cursor movement), with a spinner, the elapsed time and the amount
    assert "\x1b[" in text and "\r" in text
    assert any(ch in text for ch in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
    assert "0:00:0" in text  # elapsed time, h:mm:ss
    amounts = re.findall(r"([\d.]+) MiB/([\d.]+) MiB", text)  # IEC units, done/total
    assert "compressing" in text
    assert "eta" not in text.lower() and "remaining" not in text.lower()
    # the bar moved: amounts between 0 and the whole were drawn, against one total
    assert len({done for done, _ in amounts}) >= 2, amounts
    assert len({total for _, total in amounts}) == 1 and float(amounts[0][1]) >= 24
    # a finished step leaves one plain line with its time
    assert "==> resolving the closure (" in text
    assert "==> writing result/demo_1.raw with " in text
    assert text.rstrip().endswith("result/demo_1.raw")
    assert len(times) > 5 and times[-1] - times[0] > 0.5  # drawn while it worked


@pytest.mark.parametrize("how", ["pipe", "NO_COLOR", "TERM=dumb"])
def test_plain_lines_in_a_pipe_or_when_asked(project: Path, how: str) -> None:
    require_tool("mksquashfs")
    if how == "pipe":
        proc = subprocess.run([sys.executable, "-m", "portable_service", "build"], cwd=project,
                              env=env(), capture_output=True, text=True, check=False)
        code, text = proc.returncode, proc.stderr + proc.stdout
    else:
        key, _, value = how.partition("=")
        code, out, _ = through_pty(["build"], project, {key: value or "1"})
        text = out.decode().replace("\r\n", "\n")
    assert code == 0, text
    assert "\x1b" not in text and "\r" not in text  # nothing redrawn, no colour
    assert not BOX & set(text)
    lines = text.splitlines()
    # the long step is shown when it starts, its work by quarters, then its end
    start = next(i for i, ln in enumerate(lines)
                 if re.fullmatch(r"==> writing result/demo_1.raw with mksquashfs \(\d+ entries\)", ln))
    quarters = [ln for ln in lines if ln.startswith("    compressing: ")]
    assert [q.split()[1] for q in quarters] == ["25%", "50%", "75%", "100%"]
    whole = re.fullmatch(r"    compressing: 100% \(([\d.]+ MiB) of ([\d.]+ MiB)\)", quarters[-1])
    assert whole and whole[1] == whole[2], quarters
    assert lines.index(quarters[0]) > start
    assert any(ln.startswith("    done in ") and ln.endswith(lines[start][4:]) for ln in lines)
    assert lines[-1] == "result/demo_1.raw"


def test_a_quick_mistake_is_one_line_with_no_progress_before_it(tmp_path: Path) -> None:
    (tmp_path / "portable.toml").write_text('pname = "demo"\nversion = "1"\n'
                                            'units = ["nope.service"]\n')
    code, out, _ = through_pty(["build"], tmp_path)
    assert code == 2
    text = out.decode().replace("\r\n", "\n")
    lines = [ln for ln in text.splitlines() if ln.strip("\x1b[?25hl ")]
    assert len(lines) == 1 and lines[0].endswith(
        "portable-service: error: unit file " + str(tmp_path / "nope.service")
        + " does not exist; check the path in units"), text


def test_plain_step_lines(capsys: pytest.CaptureFixture[str]) -> None:
    r = Reporter(live=False)
    with r.step("quick"):
        pass
    with r.step("slow"):
        time.sleep(0.7)  # longer than ANNOUNCE_AFTER: announced while it runs
        with r.step("inner"):
            r.info("a line inside")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("==> quick (") and err[0].endswith(" s)")
    assert err[1:3] == ["==> slow", "==> inner"]
    assert err[3] == "a line inside"
    assert re.fullmatch(r"    done in \d+\.\d s", err[4])  # next to its own start line

    assert err[5].startswith("    done in ") and err[5].endswith(" s: slow")
    assert len(err) == 6


def test_iec_units() -> None:
    assert [human(n) for n in (512, 1536, 4 << 20, 3 << 30)] == \
        ["512 B", "1.5 KiB", "4.0 MiB", "3.0 GiB"]


def test_a_long_step_without_a_count_shows_a_spinner_with_elapsed_time() -> None:
    """What `try`'s first boot of a release shows while debootstrap creates the root
    (roots.ensure_root runs it as a step): no count exists, so a spinner and the time."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    r = Reporter(console=Console(file=buf, force_terminal=True, width=100), live=True)
    with r.step("debootstrap bookworm (systemd, dbus)"):
        time.sleep(2.2)
    text = buf.getvalue()
    assert any(ch in text for ch in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
    assert "0:00:01" in text or "0:00:02" in text  # the elapsed time moved on
    assert "debootstrap bookworm (systemd, dbus)" in text
    assert not re.search(r"\d+(\.\d+)?/\d", text)  # no made-up count or bar
    assert re.search(r"==> debootstrap bookworm \(systemd, dbus\) \(2\.\d\d s\)", text)


def test_no_pseudo_terminal_still_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Where no pty can be had, mksquashfs writes to a pipe: the bar reaches its end at once."""
    require_tool("mksquashfs")
    from portable_service.api import build_image
    from portable_service.builder.spec import spec_from_mapping
    from portable_service.builder.writers import mksquashfs

    def no_pty() -> tuple[int, int]:
        raise OSError("out of pseudo-terminals")

    monkeypatch.setattr(mksquashfs.pty, "openpty", no_pty)
    (tmp_path / "demo.service").write_text(UNIT)
    (tmp_path / "blob").write_bytes(os.urandom(1 << 20))
    spec = spec_from_mapping({"pname": "demo", "version": "1", "units": ["demo.service"],
                              "contents": [{"source": "blob", "target": "/opt/blob"}],
                              "squash-compression": "gzip", "writer": "mksquashfs"}, tmp_path)
    out = build_image(spec, tmp_path / "result", Reporter(live=False))
    assert out.is_file()
    err = capsys.readouterr().err
    assert re.search(r"    compressing: 100% \(([\d.]+ MiB) of \1\)", err), err
