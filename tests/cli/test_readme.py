"""The README stays true: its console blocks are run, in order, and its Python runs as written.

How the README's blocks are read:

- a ```` ```console ```` block runs each ``$ COMMAND`` line with bash, in one scratch folder
  shared by the whole README (a copy of ``examples/``, with ``examples/demo``'s files at its
  top, so ``portable-service build`` finds a portable.toml); ``portable-service`` is this
  checkout's. Lines after a command, up to the next command, are its expected output:
  each must be a line it printed (stdout or stderr). A command whose expected output has
  an ``error:`` line must fail (exit 2); one whose line ends in ``# exit N ...`` must exit N
  (``diff`` finding changes: 1); every other command must succeed. ``$ cd DIR`` moves the
  rest of its block to DIR;
- a console block without ``$`` lines is a synopsis: nothing to run;
- an HTML comment on the line before a block says why it is not run here:
  ``<!-- doctest: server -->`` (needs a server with systemd-portabled: portablectl,
  attach, a real /var/lib/portables) or ``<!-- doctest: skip: WHY -->``;
  ``<!-- doctest: needs TOOL... -->`` runs it only where the tools are installed (in CI
  they must be);
- every ```` ```python ```` block runs, in order, in the same folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, require, require_tool

FENCE = re.compile(r"(?:<!-- doctest: (?P<mark>[^>]*?) -->\n)?```(?P<lang>\w+)\n(?P<body>.*?)```",
                   re.S)


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    mark: str
    line: int  # where it starts in the README, for messages


def blocks(text: str) -> list[Block]:
    return [Block(m["lang"], m["body"], (m["mark"] or "").strip(),
                  text.count("\n", 0, m.start("body")) + 1)
            for m in FENCE.finditer(text)]


def commands(body: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each ``$`` line of a console block."""
    out: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out and line.strip():
            out[-1][1].append(line)
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("mksquashfs")
    d = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "examples", d / "examples")
    for f in (REPO / "examples/demo").iterdir():
        shutil.copy2(f, d / f.name)
    shim = d / ".bin"
    shim.mkdir()
    (shim / "portable-service").write_text(
        f"#!/bin/sh\nPYTHONPATH={REPO / 'src'} exec {sys.executable} -m portable_service \"$@\"\n")
    (shim / "portable-service").chmod(0o755)
    return d


def environment(scratch: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{scratch / '.bin'}:{os.environ['PATH']}",
            "PYTHONPATH": str(REPO / "src"), "COLUMNS": "100"}


README = (REPO / "README.md").read_text()
RUN = [b for b in blocks(README) if b.lang in ("console", "python")]


def test_the_readme_has_blocks_to_run() -> None:
    runnable = [b for b in RUN if b.lang == "console" and commands(b.body) and not b.mark]
    assert len(runnable) >= 5 and any(b.lang == "python" for b in RUN)
    marks = {b.mark.split(":")[0].split()[0] for b in RUN if b.mark}
    assert marks <= {"server", "skip", "needs"}, marks


def test_readme(scratch: Path) -> None:
    """Every block, in README order: later commands use what earlier ones built."""
    env = environment(scratch)
    ran = 0
    for block in RUN:
        where = f"README.md line {block.line}"
        if block.mark.startswith(("server", "skip")):
            continue
        if block.mark.startswith("needs"):
            tools = block.mark.split()[1:]
            if not all(shutil.which(t) for t in tools):
                require(False, f"{where} needs {' '.join(tools)}")
                continue
        if block.lang == "python":
            proc = subprocess.run([sys.executable, "-c", block.body], cwd=scratch, env=env,
                                  capture_output=True, text=True, check=False)
            assert proc.returncode == 0, f"{where}: {proc.stderr}"
            ran += 1
            continue
        cwd = scratch
        for command, expected in commands(block.body):
            if command.startswith("cd "):
                cwd = (cwd / command[3:].split("#")[0].strip()).resolve()
                assert cwd.is_dir(), f"{where}: `{command}`: no such folder"
                continue
            proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env,
                                  capture_output=True, text=True, check=False)
            printed = (proc.stdout + proc.stderr).splitlines()
            code = re.search(r"#\s*exit (\d+)", command)
            want = int(code[1]) if code else 2 if any("error:" in ln for ln in expected) else 0
            assert proc.returncode == want, \
                f"{where}: `{command}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            for line in expected:
                if line.lstrip().startswith("#"):
                    continue  # a comment about the output
                assert line in printed, f"{where}: `{command}` did not print {line!r}:\n" \
                    + "\n".join(printed)
            ran += 1
    assert ran >= 10
