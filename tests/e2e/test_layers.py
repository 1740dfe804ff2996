"""Layered services on real systemd: a base with a runtime, two app extensions built from
specs, attached from one descriptor, one upgraded by reattach while the other keeps
serving, detached without a trace; and systemd's own refusals, caught by verify first.

systemd 247 has no ``portablectl --extension``: there the test checks that it lacks it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from portable_service.api import build_image
from portable_service.builder.spec import spec_from_mapping
from portable_service.deploy.descriptor import (
    Descriptor,
    attach_commands,
    detach_commands,
    load_descriptor,
)
from portable_service.deploy.predict import predict, reattach_commands
from portable_service.errors import VerifyError
from portable_service.harness.nspawn import Container
from portable_service.look.extension import open_layer, verify_stack
from portable_service.look.verify import errors
from portable_service.rules import extensions as ext_rules
from tests.e2e.lib import port_closed, tcp_get

pytestmark = pytest.mark.e2e

APP_PORT, TOOLS_PORT = 18431, 18432
PORTABLES = Path("/var/lib/portables")


def runtime_spec(psdemo: Path) -> dict[str, object]:
    # the "runtime" every app uses: a shell and the psdemo server, in /usr
    return {"pname": "runtime", "version": "1", "squash-compression": "gzip",
            "units": [{"name": "runtime-info.service",
                       "text": "[Service]\nType=oneshot\nExecStart=/usr/bin/psdemo say runtime\n"}],
            "contents": [{"source": str(psdemo), "target": "/usr/bin/psdemo"}, "/usr/bin/dash"]}


def app_spec(work: Path, base: Path, pname: str, version: str, port: int,
             **extra: object) -> dict[str, object]:
    """An app: a dash script under /opt/PNAME that runs the base's psdemo."""
    src = work / f"{pname}-{version}-src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "run").write_text(f"#!/usr/bin/dash\nexec /usr/bin/psdemo serve {port} "
                             f"'{pname} {version}'\n")
    (src / "run").chmod(0o755)
    return {"pname": pname, "version": version, "base": str(base), "squash-compression": "gzip",
            "units": [{"name": f"{pname}.service",
                       "text": f"[Service]\nExecStart=/opt/{pname}/run\n"
                               "[Install]\nWantedBy=multi-user.target\n"}],
            "contents": [{"source": str(src), "target": f"/opt/{pname}"}], **extra}


def build(work: Path, settings: dict[str, object], verify: bool = True) -> Path:
    return build_image(spec_from_mapping(settings, work), work / "out", verify=verify)


@pytest.fixture(scope="module")
def images(psdemo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("layers")
    runtime = build(work, runtime_spec(psdemo))
    out = {"runtime": runtime,
           "app2": build(work, app_spec(work, runtime, "app", "2", APP_PORT)),
           "app3": build(work, app_spec(work, runtime, "app", "3", APP_PORT)),
           "tools1": build(work, app_spec(work, runtime, "tools", "1", TOOLS_PORT))}
    # negative cases, each wrong in one way systemd refuses
    out["wrongid"] = build(work, app_spec(work, runtime, "app", "4", APP_PORT,
                                          **{"os-release": {"ID": "fedora"}}), verify=False)
    out["wrongscope"] = build(work, app_spec(work, runtime, "app", "5", APP_PORT,
                                             **{"os-release": {"SYSEXT_SCOPE": "system"}}),
                              verify=False)
    renamed = work / "out" / "app_6.raw"  # carries extension-release.app_2
    shutil.copyfile(out["app2"], renamed)
    out["wrongname"] = renamed
    return out


def descriptors(work: Path, name: str, base: Path, exts: list[Path], **keys: object
                ) -> tuple[Descriptor, Descriptor]:
    """The same descriptor twice: with the host's paths (to verify and predict) and with the
    container's (to run the commands in it)."""
    def write(folder: Path, where: Path) -> Descriptor:
        lines = [f'base = "{where / base.name}"',
                 "extensions = [" + ", ".join(f'"{where / e.name}"' for e in exts) + "]"]
        for key, value in keys.items():
            lines.append(f"{key} = " + (repr(value).replace("'", '"').replace("True", "true")
                                        .replace("False", "false")))
        path = folder / f"{name}-{'host' if where == base.parent else 'container'}.toml"
        path.write_text("\n".join(lines) + "\n")
        return load_descriptor(path)

    return write(work, base.parent), write(work, PORTABLES)


def run_all(c: Container, cmds: list[list[str]]) -> None:
    for cmd in cmds:
        c.settle()
        result = c.run(*cmd, timeout=120)
        assert result.ok, f"{' '.join(cmd)} on {c.release.suite}: {result.output}"


def copy_in(c: Container, *paths: Path) -> None:
    for p in paths:
        c.copy_image(p)


def main_pid(c: Container, unit: str) -> str:
    return c.run("systemctl", "show", "-P", "MainPID", unit).stdout.strip()


def needs_extensions(c: Container) -> bool:
    if c.release.systemd >= ext_rules.FIRST_TESTED:
        return True
    # 247: portablectl has no --extension; say so, and prove it
    assert "--extension" not in c.portablectl("--help").stdout
    return False


def test_stack_attach_upgrade_detach(container: Container, images: dict[str, Path],
                                     tmp_path: Path) -> None:
    c = container
    if not needs_extensions(c):
        return
    copy_in(c, images["runtime"], images["app2"], images["app3"], images["tools1"])
    keys = {"prefixes": ["app", "tools"], "enable": ["app.service", "tools.service"],
            "runtime": True}
    v1_host, v1 = descriptors(tmp_path, "v1", images["runtime"],
                              [images["app2"], images["tools1"]], **keys)
    v2_host, v2 = descriptors(tmp_path, "v2", images["runtime"],
                              [images["app3"], images["tools1"]], **keys)
    # the whole stack verifies clean before anything is attached
    assert errors(verify_stack(open_layer(v1_host.base),
                               [open_layer(e) for e in v1_host.extensions],
                               v1_host.prefixes)) == []
    run_all(c, attach_commands(v1))
    try:
        assert tcp_get(APP_PORT) == "app 2\n", c.journal("app.service")
        assert tcp_get(TOOLS_PORT) == "tools 1\n", c.journal("tools.service")
        tools_pid = main_pid(c, "tools.service")
        # diff of the two descriptors: only app.service must restart
        p = predict(v1_host, v2_host)
        assert [u for u, _ in p.restarted] == ["app.service"] and p.kept == ["tools.service"]
        assert p.added == [] and p.removed == []
        run_all(c, reattach_commands(v1, v2, p))
        assert tcp_get(APP_PORT) == "app 3\n", c.journal("app.service")
        # the other app kept serving: same process, never restarted
        assert tcp_get(TOOLS_PORT) == "tools 1\n"
        assert main_pid(c, "tools.service") == tools_pid
        state = c.read_file("/run/systemd/system.attached/tools.service.d/20-portable.conf")
        assert "app_3.raw" in state and "app_2.raw" not in state, state
    finally:
        results = [c.run(*cmd, timeout=120) for cmd in detach_commands(v2)]
    assert all(r.ok for r in results), [r.output for r in results]
    for unit in ("app.service", "tools.service"):
        assert c.unit_state(unit).load == "not-found", c.status(unit)
    assert port_closed(APP_PORT) and port_closed(TOOLS_PORT)
    # nothing left on the host: no attached unit, drop-in or enablement link
    left = c.run("sh", "-c", "ls -A /run/systemd/system.attached /etc/systemd/system.attached "
                 "2>/dev/null; ls /run/systemd/system/multi-user.target.wants "
                 "/etc/systemd/system/multi-user.target.wants 2>/dev/null | "
                 "grep -E '^(app|tools)' || true").stdout.strip()
    assert left == "", left
    listed = c.portablectl("list", "--no-legend").stdout
    assert all(ln.split()[-1] == "detached" for ln in listed.splitlines() if ln.strip()), listed


REFUSALS = {
    # case: (extensions, prefixes, verify's rule, systemd's words)
    "wrongid": ("wrongid", ["app"], "extension-release-match", ext_rules.MISMATCH),
    "wrongscope": ("wrongscope", ["app"], "extension-release-match", ext_rules.MISMATCH),
    "wrongname": ("wrongname", ["app"], "extension-release-name", "lacks extension-release data"),
    "prefix": ("app2", ["other"], "extension-prefixes", ext_rules.PREFIX_REFUSED),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_caught_by_verify_and_by_systemd(container: Container,
                                                  images: dict[str, Path], tmp_path: Path,
                                                  case: str) -> None:
    c = container
    ext_key, prefixes, rule, words = REFUSALS[case]
    host, inside = descriptors(tmp_path, case, images["runtime"], [images[ext_key]],
                               prefixes=prefixes)
    problems = verify_stack(open_layer(host.base), [open_layer(e) for e in host.extensions],
                            host.prefixes)
    errs = errors(problems)
    assert [p.rule for p in errs][:1] == [rule], [p.line() for p in errs]
    line = errs[0].line()
    assert "\n" not in line and "fix: " in line and words in line, line
    if not needs_extensions(c):
        return
    copy_in(c, images["runtime"], images[ext_key])
    c.settle()
    attach = c.run(*attach_commands(inside)[0], timeout=120)
    assert not attach.ok, f"systemd attached the {case} stack: {attach.output}"
    assert words in attach.output, attach.output


def test_builder_refuses_what_systemd_refuses(psdemo: Path, images: dict[str, Path],
                                              tmp_path: Path) -> None:
    """The build verifies an extension on its base: a wrong ID never lands."""
    with pytest.raises(VerifyError, match="does not match the root's"):
        build(tmp_path, app_spec(tmp_path, images["runtime"], "app", "7", APP_PORT,
                                 **{"os-release": {"ID": "fedora"}}))
    assert not (tmp_path / "out" / "app_7.raw").exists()


def test_try_runs_the_stack_of_a_descriptor(container: Container, images: dict[str, Path],
                                            tmp_path: Path) -> None:
    """``try DESCRIPTOR`` attaches the whole stack in a throwaway systemd and judges its
    units; a stack systemd refuses fails with systemd's words."""
    from portable_service.errors import TryFailed
    from portable_service.harness.trial import try_image

    c = container
    if not needs_extensions(c):
        return
    good, _ = descriptors(tmp_path, "try", images["runtime"], [images["app2"], images["tools1"]],
                          prefixes=["app", "tools"])
    runs = try_image(good.path, releases=[c.release.suite])
    assert [sorted(o.unit for o in r.outcomes if not o.failed) for r in runs] == \
        [["app.service", "tools.service"]]
    bad, _ = descriptors(tmp_path, "try-bad", images["runtime"], [images["wrongid"]],
                         prefixes=["app"])
    with pytest.raises(TryFailed, match="does not match the root's"):
        try_image(bad.path, releases=[c.release.suite])


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/layers (a Python runtime and two Python apps) built as its README says."""
    from portable_service.builder.spec import load_spec

    folder = tmp_path_factory.mktemp("example") / "layers"
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples" / "layers", folder,
                    ignore=shutil.ignore_patterns("result"))
    for name in ("runtime", "app", "tools"):
        build_image(load_spec(folder / name), folder / "result")
    build_image(load_spec(folder / "app", {"version": "3"}), folder / "result")
    return folder


def test_readme_example_serves_on_systemd(container: Container, example: Path) -> None:
    """The README's example: the whole stack verifies, and both Python apps run in it."""
    from portable_service.harness.trial import try_image

    c = container
    if not needs_extensions(c):
        return
    for name in ("deploy.toml", "deploy-2.toml"):
        d = load_descriptor(example / name)
        assert errors(verify_stack(open_layer(d.base), [open_layer(e) for e in d.extensions],
                                   d.prefixes)) == []
        runs = try_image(d.path, releases=[c.release.suite])
        assert all(r.ok for r in runs) and sorted(o.unit for o in runs[0].outcomes) == \
            ["app.service", "tools.service"]
    p = predict(load_descriptor(example / "deploy.toml"), load_descriptor(example / "deploy-2.toml"))
    assert [u for u, _ in p.restarted] == ["app.service"] and p.kept == ["tools.service"]
