"""The deployment descriptor: its checks, the exact commands, verify of the whole stack, and
the reattach prediction of diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portable_service.deploy.descriptor import load_descriptor
from portable_service.errors import SpecError
from portable_service.rules import extensions as ext_rules
from tests.layer_projects import write_app, write_runtime


@pytest.fixture
def stack(cli, tmp_path: Path) -> Path:
    """runtime_1.raw, app_2.raw, app_3.raw and tools_1.raw in tmp_path/out."""
    write_runtime(tmp_path)
    for pname, version in (("app", "2"), ("app", "3"), ("tools", "1")):
        write_app(tmp_path, pname, version, script=f"echo {pname} {version}")
    for folder in ("runtime", "app-2", "app-3", "tools-1"):
        proc = cli("build", "-q", str(tmp_path / folder), "-o", str(tmp_path / "out"))
        assert proc.returncode == 0, proc.stderr
    return tmp_path / "out"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


V1 = ('base = "runtime_1.raw"\nextensions = ["app_2.raw", "tools_1.raw"]\n'
      'prefixes = ["app", "tools"]\nenable = ["app.service"]\n')


def test_attach_and_detach_dry_run_print_the_exact_commands(cli, stack: Path) -> None:
    d = write(stack, "deploy.toml", V1 + "runtime = true\nprofile = \"strict\"\n")
    attach = cli("attach", "--dry-run", str(d))
    assert attach.returncode == 0, attach.stderr
    assert attach.stdout.splitlines() == [
        f"portablectl attach --profile=strict --runtime --extension={stack}/app_2.raw "
        f"--extension={stack}/tools_1.raw {stack}/runtime_1.raw app tools",
        "systemctl enable --now --runtime app.service"]
    detach = cli("detach", "--dry-run", str(d))
    assert detach.stdout.splitlines() == [
        "systemctl disable --runtime app.service",
        f"portablectl detach --now --runtime --extension={stack}/app_2.raw "
        f"--extension={stack}/tools_1.raw {stack}/runtime_1.raw app tools"]


def test_prefixes_default_to_the_extensions(stack: Path) -> None:
    d = load_descriptor(write(stack, "d.toml", 'base = "runtime_1.raw"\n'
                              'extensions = ["app_2.raw", "tools_1.raw"]\n'))
    assert d.prefixes == ("app", "tools") and d.profile == "default" and not d.runtime


@pytest.mark.parametrize("text, words", [
    ('base = "runtime_1.raw"\nextension = ["app_2.raw"]\n', "did you mean 'extensions'?"),
    ('extensions = ["app_2.raw"]\n', "base is missing"),
    ('base = "runtime_1"\n', "not a .raw image file"),
    ('base = "runtime_1.raw"\nprofile = "loose"\n', "use one of: default, nonetwork"),
    ('base = "runtime_1.raw"\nextensions = ["app_2.raw"]\nenable = ["tools.service"]\n',
     "which no prefix (app) attaches"),
    ('base = "runtime_1.raw"\nruntime = "yes"\n', "runtime must be true or false"),
    ('base = "runtime_1.raw"\nextensions = ["runtime_1.raw"]\n', "named twice"),
])
def test_bad_descriptors_are_one_line_with_the_fix(cli, tmp_path: Path, text: str,
                                                   words: str) -> None:
    d = write(tmp_path, "bad.toml", text)
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?")):
        load_descriptor(d)
    proc = cli("attach", "--dry-run", str(d))
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr


def test_verify_descriptor_checks_the_whole_stack(cli, stack: Path) -> None:
    ok = cli("verify", str(write(stack, "v1.toml", V1)))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # a prefix no layer lists: portabled would refuse it; attach says so before running
    bad = write(stack, "bad.toml", V1.replace('"app", "tools"]', '"app", "other"]')
                .replace('enable = ["app.service"]\n', ""))
    proc = cli("verify", str(bad))
    assert proc.returncode == 1
    assert "error: other: no layer lists the prefix 'other'" in proc.stdout
    assert ext_rules.PREFIX_REFUSED in proc.stdout
    refused = cli("attach", str(bad))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "prefix 'other'" in refused.stderr and "fix:" not in refused.stderr.split(";")[0]


def test_verify_descriptor_finds_a_library_no_layer_has(cli, tmp_path: Path) -> None:
    """xz needs liblzma: the extension built without it (excluded) is caught on the stack,
    while libc, which only the base has, is found across the layers."""
    write_runtime(tmp_path)
    app = write_app(tmp_path, contents='"/usr/bin/xz", ')
    toml = app / "portable.toml"
    toml.write_text(toml.read_text().replace("ExecStart=/opt/app/run", "ExecStart=/usr/bin/xz -V")
                    + 'exclude = ["*/liblzma.so*"]\n')
    for folder, flags in (("runtime", ()), ("app-2", ("--no-verify",))):
        proc = cli("build", "-q", *flags, str(tmp_path / folder), "-o", str(tmp_path / "out"))
        assert proc.returncode == 0, proc.stderr
    d = write(tmp_path / "out", "d.toml", 'base = "runtime_1.raw"\nextensions = ["app_2.raw"]\n')
    proc = cli("verify", str(d))
    assert proc.returncode == 1, proc.stdout
    errs = [ln for ln in proc.stdout.splitlines() if ln.startswith("error:")]
    assert errs and all("liblzma.so.5" in ln for ln in errs), proc.stdout
    assert not any("libc.so.6" in ln for ln in proc.stdout.splitlines())


def test_diff_of_two_descriptors_predicts_the_reattach(cli, stack: Path) -> None:
    v1 = write(stack, "v1.toml", V1)
    v2 = write(stack, "v2.toml", V1.replace("app_2.raw", "app_3.raw"))
    proc = cli("diff", str(v1), str(v2), "--json=short")
    assert proc.returncode == 1, proc.stderr  # a unit restarts: a change, as diff(1) says
    got = json.loads(proc.stdout)
    assert got["format"] == "portable-service/diff-descriptors/1"
    assert got["restarted"] == [{"unit": "app.service", "why": "its layer app_2.raw -> app_3.raw"}]
    assert got["unchanged"] == ["tools.service"] and got["added"] == got["removed"] == []
    v3 = write(stack, "v3.toml", 'base = "runtime_1.raw"\nextensions = ["app_2.raw"]\n'
               'prefixes = ["app"]\n')
    text = cli("diff", str(v1), str(v3)).stdout
    assert cli("diff", str(v1), str(v1)).returncode == 0  # nothing changes
    assert "- tools.service (removed: stopped)" in text and "= app.service" in text
    dry = cli("reattach", "--dry-run", str(v2), "--from", str(v1))
    assert dry.stdout.splitlines() == [
        f"portablectl reattach --profile=default --extension={stack}/app_3.raw "
        f"--extension={stack}/tools_1.raw {stack}/runtime_1.raw app tools",
        "systemctl try-restart app.service"]
