"""Shell completion, the man page and the generated documentation tables match the code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from portable_service import docgen
from portable_service.errors import EXIT_CODES
from tests.conftest import REPO, require_tool

VERBS = ["init", "build", "why", "inspect", "ls", "cat", "verify", "diff", "size", "try", "sign",
         "publish", "host-config", "attach", "detach", "reattach"]


def completion(cli, shell: str) -> str:
    proc = cli("--print-completion", shell)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def bash_complete(script: Path, words: list[str]) -> list[str]:
    """What the completion function offers for the last of ``words``, run by bash."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
               f"COMP_LINE='{' '.join(words)}'; COMP_POINT=${{#COMP_LINE}}; "
               "_shtab_portable_service; printf '%s\\n' \"${COMPREPLY[@]}\"")
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_bash_completion_is_valid_and_completes_verbs(cli, tmp_path: Path) -> None:
    script = tmp_path / "portable-service.bash"
    script.write_text(completion(cli, "bash"))
    subprocess.run(["bash", "-n", str(script)], check=True)  # valid bash
    assert bash_complete(script, ["portable-service", ""]) == VERBS
    assert bash_complete(script, ["portable-service", "ve"]) == ["verify"]
    assert "--squash-compression" in bash_complete(script, ["portable-service", "build", "--squash"])
    assert "--profile" in bash_complete(script, ["portable-service", "verify", "--pro"])


def test_zsh_and_fish_completion(cli, tmp_path: Path) -> None:
    zsh = completion(cli, "zsh")
    assert zsh.startswith("#compdef portable-service")
    fish = completion(cli, "fish")
    for verb in VERBS:
        assert verb in zsh and verb in fish
    for shell, text in (("zsh", zsh), ("fish", fish)):
        if shutil.which(shell):
            path = tmp_path / f"c.{shell}"
            path.write_text(text)
            flag = ["-n"] if shell == "zsh" else ["--no-execute"]
            subprocess.run([shell, *flag, str(path)], check=True)


def test_man_page_is_generated_from_the_parser() -> None:
    pytest.importorskip("build_manpages")  # argparse-manpage, a test dependency
    page = docgen.man_page()
    assert page == docgen.MAN_PAGE.read_text(), \
        "docs/portable-service.1 is stale: run python -m portable_service.docgen"
    for verb in VERBS:
        man = verb.replace("-", "\\-")  # groff spells a hyphen \-
        assert f"portable\\-service {man}" in page or f"\\fI\\,{man}\\/\\fR" in page, verb
    assert "\\-\\-json" in page and "exit codes" in page


def test_man_page_renders_without_warnings() -> None:
    require_tool("groff")
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(docgen.MAN_PAGE)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("doc", ["README.md", "docs/json.md"])
def test_generated_blocks_are_current(doc: str) -> None:
    text = (REPO / doc).read_text()
    assert "<!-- BEGIN generated:exit-codes -->" in text
    assert docgen.fill(text) == text, f"{doc} is stale: run python -m portable_service.docgen"


def test_every_verify_rule_is_described() -> None:
    rules = docgen.verify_rules()
    assert {"exec-missing", "trigger-missing", "elf-library", "unknown-key"} <= set(rules)
    undescribed = sorted(set(rules) - set(docgen.RULE_TEXT))
    assert not undescribed, f"describe these rules in docgen.RULE_TEXT: {undescribed}"
    readme = (REPO / "README.md").read_text()
    for rule in rules:
        assert f"| `{rule}` |" in readme, rule


def test_exit_code_table_is_what_errors_say() -> None:
    from portable_service.errors import HostError, PortableServiceError, TryFailed

    assert sorted(EXIT_CODES) == [0, 1, 2, 3]
    assert (PortableServiceError.exit_code, TryFailed.exit_code, HostError.exit_code) == (2, 1, 3)
    readme = (REPO / "README.md").read_text()
    for code, (text, _verbs) in EXIT_CODES.items():
        assert f"| {code} | {text} |" in readme


@pytest.mark.parametrize("flag", ["--print-completion bash", "--help"])
def test_into_head_quietly(flag: str) -> None:
    """`portable-service --print-completion bash | head` ends without a word on stderr."""
    import sys

    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m portable_service "
                           f"{flag} | head -1"], capture_output=True, text=True, check=False,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.count("\n") == 1
    assert proc.stderr == ""
