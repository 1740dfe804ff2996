"""The seam for external tools: a child process is never left without an owner."""

from __future__ import annotations

import ast
import logging
import os
import signal
from pathlib import Path

import pytest

from portable_service.errors import ToolError
from portable_service.run import PIPE, TimedOut, environment, interrupts_held, run, spawn


def _raise(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def test_signals_are_held_until_the_child_has_an_owner() -> None:
    old = signal.signal(signal.SIGTERM, _raise)
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("after the signal")  # still runs: the signal is held
            steps.append("after the block")  # never runs: delivered on leaving
    finally:
        signal.signal(signal.SIGTERM, old)
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGTERM) is old


def test_nothing_held_nothing_raised() -> None:
    old = signal.getsignal(signal.SIGINT)
    with interrupts_held():
        pass
    assert signal.getsignal(signal.SIGINT) is old


# -- one seam: every process starts in run.py

SRC = Path(__file__).resolve().parent.parent / "src" / "portable_service"


def _imports_subprocess(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name == "subprocess" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "subprocess":
            return True
    return False


def test_only_run_py_imports_subprocess() -> None:
    offenders = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                       if p.name != "run.py" or p.parent != SRC
                       if _imports_subprocess(p))
    assert offenders == [], f"start processes through portable_service.run: {offenders}"
    assert _imports_subprocess(SRC / "run.py")  # the scan can see an import


def test_spawn_kills_a_child_left_running(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), spawn(["sleep", "60"]) as proc:
        raise RuntimeError("the caller failed while the child ran")
    assert proc.returncode is not None  # killed and reaped, not left behind


def test_spawn_streams_with_the_one_environment(tmp_path: Path) -> None:
    with spawn(["sh", "-c", 'cat; printf "|%s|%s" "$LC_ALL" "$ONLY"'], stdin=PIPE, stdout=PIPE,
               env={"ONLY": "x"}, inherit_env=False) as proc:
        out, _ = proc.communicate(b"fed ")
    assert out == b"fed |C.UTF-8|x"
    assert environment({"A": "1"}, inherit=False) == {"LC_ALL": "C.UTF-8", "A": "1"}
    assert environment()["PATH"] == os.environ["PATH"]


def test_every_command_is_echoed_under_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="portable_service"):
        run(["true", "a b"])
        with spawn(["true", "c"]) as proc:
            proc.wait()
    assert [r.getMessage() for r in caplog.records] == ["+ true 'a b'", "+ true c"]


def test_a_program_that_cannot_start_is_one_sentence(tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(ToolError, match=r"cannot run .*tool: Permission denied"):
        run([script])
    with pytest.raises(ToolError, match=r"not found"), spawn([str(tmp_path / "missing")]):
        pass
    with pytest.raises(TimedOut, match="sleep did not finish within 0 s"):
        run(["sleep", "5"], timeout=0.1)
