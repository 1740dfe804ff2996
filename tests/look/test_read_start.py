"""A command that reads an image starts without loading the build side."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from portable_service.cli import READ_VERBS, make_parser
from tests.conftest import REPO, mksquashfs, require_tool

HEAVY = ("portable_service.builder.pipeline", "portable_service.harness.trial",
         "portable_service.deploy.attach", "portable_service.builder.sign", "cryptography",
         "portable_service.builder.spec", "shtab", "rich")


def _verbs(first: str | None) -> set[str]:
    parser = make_parser(first)
    sub = next(a for a in parser._actions if a.dest == "verb")
    return set(sub.choices)  # type: ignore[arg-type]


def test_the_read_parser_has_exactly_the_read_verbs() -> None:
    everything = _verbs(None)
    assert everything > READ_VERBS and "build" in everything
    for verb in READ_VERBS:
        assert _verbs(verb) == READ_VERBS
    assert everything == _verbs("--debug") == _verbs("buidl")  # a typo is told the choices


def test_each_verb_gets_the_parser_of_its_own_group() -> None:
    """The table of verbs says what each registrar adds: it adds exactly that, and a
    command starting with a verb gets its group's parser alone."""
    import argparse

    from portable_service.cli import VERBS

    seen: set[str] = set()
    for register, names in VERBS:
        sub = argparse.ArgumentParser().add_subparsers()
        register(sub)
        assert set(sub.choices) == names, register.__name__
        for verb in names:
            assert _verbs(verb) == names
        seen |= names
    assert seen == _verbs(None)


def test_ls_and_cat_load_no_build_module(tmp_path: Path) -> None:
    require_tool("mksquashfs")
    (tmp_path / "tree/etc").mkdir(parents=True)
    (tmp_path / "tree/etc/os-release").write_text("ID=test\n")
    img = mksquashfs(tmp_path / "tree", tmp_path / "t.raw", "-comp", "gzip")
    probe = ("import runpy, sys\n"
             "sys.argv = ['portable-service', *sys.argv[1:]]\n"
             "try:\n"
             "    runpy.run_module('portable_service', run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})), "
             "file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for args in (["ls", "-l", str(img)], ["cat", str(img), "/etc/os-release"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                              text=True, env=env, check=True)
        assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
        assert done.stdout.endswith(" etc\n") or done.stdout == "ID=test\n"
    # the full parser still loads them: the probe sees a heavy module when one is loaded
    done = subprocess.run([sys.executable, "-c", probe, "--debug", "ls", str(img)],
                          capture_output=True, text=True, env=env, check=True)
    assert "portable_service.harness.trial" in done.stderr.splitlines()[-1]
