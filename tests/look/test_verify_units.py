"""verify's systemd unit rules on in-memory trees: what each rule reports, and its silence on
the working form (tests/e2e/test_verify_rules.py shows systemd agreeing)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.layout import CLOSURE_RECORD
from portable_service.builder.units import Unit, parse_unit_text
from portable_service.fs.tree import ImageTree
from portable_service.fs.views import TreeFS
from portable_service.look.verify import (
    Problem,
    Target,
    service_refusal,
    template_of,
    triggered_unit,
    verify,
)
from tests.conftest import require_tool
from tests.look.imagetrees import scaffold_tree

P = PurePosixPath
PROG = "/usr/bin/prog"
OK = f"[Service]\nExecStart={PROG} run\n"


def _tree(units: dict[str, str], files: dict[str, bytes] | None = None,
          declared: list[str] | None = None) -> ImageTree:
    t = scaffold_tree("/usr/bin")
    # not ELF, not a script: exists and runs as far as verify can tell
    for name in ("prog", "node", "luajit"):
        t.add_file(P(f"/usr/bin/{name}"), data=b"program\n", mode=0o755)
    for name, text in units.items():
        t.add_file(P("/etc/systemd/system") / name, data=text.encode())
    for path, data in (files or {}).items():
        p = P(path)
        for parent in reversed(p.parents):
            if t.get(parent) is None:
                t.add_dir(parent)
        t.add_file(p, data=data, mode=0o755)
    if declared is not None:
        record = {"format": "portable-service closure 1", "roots": [], "parents": {},
                  "units": declared}
        t.add_dir(P("/usr/lib/portable-service"))
        t.add_file(CLOSURE_RECORD, data=json.dumps(record).encode())
    return t


def _check(units: dict[str, str], target: Target | None = None, **kw) -> list[Problem]:
    return verify(TreeFS(_tree(units, **kw)), "demo_1.raw", target)


def _rules(problems: list[Problem]) -> list[tuple[str, str]]:
    return sorted((p.severity, p.rule) for p in problems)


def _unit(name: str, text: str) -> Unit:
    return Unit(name=name, text=text, origin="test", sections=parse_unit_text(text))


def test_clean_units_are_clean() -> None:
    assert _check({"demo.service": OK}) == []
    assert _check({"demo.service": OK}, Target(profile="strict", systemd=247)) == []


# -- unknown keys


def test_typo_in_execstart_is_an_error_with_the_fix() -> None:
    problems = _check({"demo.service": f"[Service]\nExecStrat={PROG}\n"})
    assert _rules(problems) == [("error", "service-refused"), ("error", "unknown-key")]
    key = next(p for p in problems if p.rule == "unknown-key")
    assert "ExecStart=" in key.fix and "(all tested) refuse the unit" in key.message
    refused = next(p for p in problems if p.rule == "service-refused")
    assert "Service has no ExecStart=, ExecStop=, or SuccessAction=. Refusing." in refused.message


def test_unknown_key_in_a_working_unit_is_a_warning() -> None:
    problems = _check({"demo.service": OK + "Restrat=always\nX-Ours=1\n"})
    assert _rules(problems) == [("warning", "unknown-key")]
    assert problems[0].fix == "did you mean Restart=?"
    assert "systemd ignores it" in problems[0].message


def test_key_in_the_wrong_section() -> None:
    problems = _check({"demo.service": OK + "[Unit]\nUser=nobody\n"})
    assert _rules(problems) == [("warning", "unknown-key")]
    assert problems[0].fix == "move User= to [Service]"


def test_unknown_section() -> None:
    problems = _check({"demo.service": OK + "[Socket]\nListenStream=80\n[X-Mine]\nA=1\n"})
    assert _rules(problems) == [("warning", "unknown-section")]
    assert "[Socket]" in problems[0].message


def test_key_of_a_newer_systemd_names_the_version() -> None:
    units = {"demo.service": OK + "BindLogSockets=yes\n"}
    problems = _check(units)  # every tested version: 247 and 252 ignore it
    assert _rules(problems) == [("warning", "key-needs-newer-systemd")]
    assert "needs systemd >= 257" in problems[0].message
    assert "systemd 247 and 252" in problems[0].message
    assert _check(units, Target(systemd=257)) == []
    assert _check(units, Target(systemd=260)) == []
    assert "systemd 252" in _check(units, Target(systemd=252))[0].message


def test_newer_key_on_a_unit_refused_anyway_stays_a_warning() -> None:
    # the unit has no ExecStart= on any version; the key 247 ignores does not change that
    text = "[Service]\nType=oneshot\nExitType=main\n"
    problems = _check({"demo.service": text}, Target(systemd=247))
    assert _rules(problems) == [("error", "service-refused"), ("warning", "key-needs-newer-systemd")]
    assert _rules(_check({"demo.service": OK + "ExitType=main\n"}, Target(systemd=247))) == [
        ("warning", "key-needs-newer-systemd")]


# -- service_verify()

REFUSED = [
    (f"[Service]\nExecStart={PROG} a\nExecStart={PROG} b\n", "more than one ExecStart="),
    (f"[Service]\nType=oneshot\nExecStart={PROG}\nRestart=always\n", "Restart= set to either"),
    (f"[Service]\nType=oneshot\nExecStart={PROG}\nRestart=on-success\n", "Restart= set to either"),
    (f"[Service]\nType=dbus\nExecStart={PROG}\n", "no D-Bus service name"),
    ("[Service]\nType=simple\nRemainAfterExit=yes\n", "no ExecStart=, ExecStop="),
    (f"[Service]\nType=simple\nExecStop={PROG}\n", "no ExecStart= setting, which is only"),
    (f"[Service]\nType=oneshot\nExecStop={PROG}\n", "does not have RemainAfterExit=yes"),
    (f"[Service]\nExecStart={PROG}\nPAMName=login\nKillMode=process\n", "PAM enabled"),
    (f"[Service]\nExecStart={PROG}\nExecStart=\n", "no ExecStart=, ExecStop="),  # reset
]


@pytest.mark.parametrize(("text", "words"), REFUSED)
def test_service_refusals(text: str, words: str) -> None:
    for v in (247, 252, 257):
        reason = service_refusal(_unit("demo.service", text), v)
        assert reason is not None and words in reason, (v, reason)
    problems = _check({"demo.service": text})
    assert _rules(problems) == [("error", "service-refused")]
    assert words in problems[0].message and "(all tested)" in problems[0].message


ACCEPTED = [
    f"[Service]\nType=oneshot\nExecStart={PROG} a\nExecStart={PROG} b\nRestart=on-failure\n",
    f"[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStop={PROG}\n",
    f"[Service]\nType=dbus\nBusName=org.example.Demo\nExecStart={PROG}\n",
    f"[Service]\nBusName=org.example.Demo\nExecStart={PROG}\n",  # Type= defaults to dbus
    "[Unit]\nSuccessAction=exit\n[Service]\nType=oneshot\n",
    f"[Service]\nExecStart={PROG} a ; {PROG} b\nType=oneshot\n",
    f"[Service]\nExecStart={PROG}\nPAMName=login\nKillMode=mixed\n",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_service_accepted(text: str) -> None:
    for v in (247, 252, 257):
        assert service_refusal(_unit("demo.service", text), v) is None
    assert _check({"demo.service": text}) == []


def test_oneshot_restart_force_exit_status_is_refused_before_256() -> None:
    text = f"[Service]\nType=oneshot\nExecStart={PROG}\nRestartForceExitStatus=3\n"
    problems = _check({"demo.service": text})
    assert _rules(problems) == [("error", "service-refused")]
    assert problems[0].message.startswith("systemd 247 and 252 refuse to load")
    assert _check({"demo.service": text}, Target(systemd=257)) == []


# -- triggers


@pytest.mark.parametrize(("name", "text", "wants"), [
    ("demo.timer", "[Timer]\nOnActiveSec=1h\n", ("demo.service", "the same name")),
    ("demo-a.path", "[Path]\nUnit=demo-b.service\n", ("demo-b.service", "Unit=demo-b.service")),
    ("demo.socket", "[Socket]\nListenStream=80\nAccept=yes\n", ("demo@.service", "Accept=yes")),
    ("demo.socket", "[Socket]\nListenStream=80\nService=demo-x.service\n",
     ("demo-x.service", "Service=demo-x.service")),
    ("demo.target", "[Unit]\nDescription=x\n", None),
])
def test_triggered_unit(name: str, text: str, wants: tuple[str, str] | None) -> None:
    found = triggered_unit(_unit(name, text))
    if wants is None:
        assert found is None
    else:
        assert found is not None and found[0] == wants[0] and found[1].startswith(wants[1])


def test_template_of() -> None:
    assert template_of("demo@x.service") == "demo@.service"
    assert template_of("demo@.service") == "demo@.service"
    assert template_of("demo.service") == "demo.service"


def test_trigger_missing_and_present() -> None:
    timer = "[Timer]\nOnActiveSec=1h\n"
    problems = _check({"demo.timer": timer, "demo-other.service": OK})
    assert _rules(problems) == [("error", "trigger-missing")]
    assert "demo.service" in problems[0].message and "not in the image" in problems[0].message
    assert _check({"demo.timer": timer, "demo.service": OK}) == []
    sock = "[Socket]\nListenStream=80\nAccept=yes\n"
    assert _rules(_check({"demo.socket": sock, "demo.service": OK})) == [
        ("error", "trigger-missing")]
    assert _check({"demo.socket": sock, "demo@.service": OK}) == []
    # in the image but not attached: a prefix portabled does not match
    problems = _check({"demo.path": "[Path]\nPathExists=/x\nUnit=other.service\n",
                       "other.service": OK, "demo.service": OK})
    assert _rules(problems) == [("error", "trigger-missing")]
    assert "does not match the prefix" in problems[0].message


# -- users and the profile


def test_user_under_each_profile() -> None:
    units = {"demo.service": OK + "User=app\nGroup=app\n"}
    trusted = _check(units, Target(profile="trusted"))
    assert _rules(trusted) == [("warning", "user-on-host")] * 2
    assert "217/USER" in trusted[0].message and "216/GROUP" in trusted[1].message
    assert "useradd" in trusted[0].fix and "DynamicUser=yes" in trusted[0].fix
    for profile in ("default", "nonetwork", "strict"):
        problems = _check(units, Target(profile=profile))
        assert _rules(problems) == [("warning", "user-dynamic")] * 2
        assert "DynamicUser=yes" in problems[0].message and profile in problems[0].message
    assert _check({"demo.service": OK + "User=app\nDynamicUser=yes\n"},
                  Target(profile="trusted")) == []
    assert _check({"demo.service": OK + "User=root\n"}, Target(profile="trusted")) == []


@pytest.mark.parametrize(("exec_start", "files", "jit"), [
    ("/usr/bin/node /srv/app.js", {}, True),
    ("/usr/bin/luajit x.lua", {}, True),
    ("/usr/bin/prog", {}, False),
    ("/srv/app.js", {"/srv/app.js": b"#!/usr/bin/node\n"}, True),
    ("/srv/app.sh", {"/srv/app.sh": b"#!/usr/bin/env node\n"}, True),
])
def test_jit_runtime_under_memory_deny_write_execute(exec_start: str, files: dict[str, bytes],
                                                     jit: bool) -> None:
    units = {"demo.service": f"[Service]\nExecStart={exec_start}\n"}
    extra = {**files, "/usr/bin/env": b"program\n"}
    for profile, expect in (("default", jit), ("strict", jit), ("nonetwork", jit),
                            ("trusted", False)):
        problems = _check(units, Target(profile=profile), files=extra)
        assert _rules(problems) == ([("warning", "profile-jit")] if expect else []), \
            (profile, problems)
        if expect:
            assert "MemoryDenyWriteExecute=yes" in problems[0].message
            assert "--profile trusted" in problems[0].fix


def test_network_under_nonetwork() -> None:
    wants = "[Unit]\nWants=network-online.target\nAfter=network-online.target\n" + OK
    assert _check({"demo.service": wants}, Target(profile="default")) == []
    assert _check({"demo.service": wants}, Target(profile="trusted")) == []
    for profile in ("nonetwork", "strict"):
        problems = _check({"demo.service": wants}, Target(profile=profile))
        assert _rules(problems) == [("warning", "profile-no-network")]
        assert "PrivateNetwork=yes" in problems[0].message
    # socket activation hands the host's socket in: no warning
    sock = "[Socket]\nListenStream=127.0.0.1:80\n"
    assert _check({"demo.service": wants, "demo.socket": sock},
                  Target(profile="nonetwork")) == []


# -- nothing silently ignored


def test_environment_file_is_read_on_the_host() -> None:
    env = {"/etc/demo.env": b"A=1\n"}
    problems = _check({"demo.service": OK + "EnvironmentFile=/etc/demo.env\n"}, files=env)
    assert _rules(problems) == [("error", "environment-file-host")]  # the copy is ignored
    assert "the image's copy is never read" in problems[0].message
    problems = _check({"demo.service": OK + "EnvironmentFile=/etc/demo.env\n"})
    assert _rules(problems) == [("warning", "environment-file-host")]  # the host's to have
    assert "a host without it fails the start" in problems[0].message
    assert "Environment=" in problems[0].fix
    problems = _check({"demo.service": OK + "EnvironmentFile=-/etc/demo.env\n"})
    assert _rules(problems) == [("warning", "environment-file-host")]
    assert "the image has none" in problems[0].message


def test_drop_ins_are_ignored() -> None:
    drop = {"/usr/lib/systemd/system/demo.service.d/x.conf": b"[Service]\nExecStartPre=/nope\n"}
    problems = _check({"demo.service": OK}, files=drop, declared=["demo.service"])
    assert [(p.rule, p.path) for p in problems] == [
        ("drop-in-ignored", "/usr/lib/systemd/system/demo.service.d/x.conf")]


def test_undeclared_units() -> None:
    pkg = {"/usr/lib/systemd/system/demo-pkg.service": OK.encode()}
    # our build's record lists the declared units: anything else matching is reported
    problems = _check({"demo.service": OK, "demo-extra.service": OK}, files=pkg,
                      declared=["demo.service"])
    assert sorted((p.rule, p.path) for p in problems) == [
        ("undeclared-unit", "/etc/systemd/system/demo-extra.service"),
        ("undeclared-unit", "/usr/lib/systemd/system/demo-pkg.service")]
    assert _check({"demo.service": OK}, files=pkg,
                  declared=["demo.service", "demo-pkg.service"]) == []
    # without a record: units outside /etc/systemd/system
    problems = _check({"demo.service": OK}, files=pkg)
    assert [(p.rule, p.path) for p in problems] == [
        ("undeclared-unit", "/usr/lib/systemd/system/demo-pkg.service")]


def test_build_records_the_declared_units(tmp_path: Path) -> None:
    from portable_service.builder.pipeline import plan
    from portable_service.builder.spec import spec_from_mapping

    prog = tmp_path / "prog"
    prog.write_bytes(b"program\n")
    prog.chmod(0o755)
    spec = spec_from_mapping({"pname": "demo", "version": "1", "units": [
        {"name": "demo.service", "text": f"[Service]\nExecStart={prog}\n"},
        {"name": "demo-b.socket", "text": "[Socket]\nListenStream=80\n"}]}, tmp_path)
    entry = plan(spec).tree.get(CLOSURE_RECORD)
    assert entry is not None and entry.data is not None
    assert json.loads(entry.data)["units"] == ["demo-b.socket", "demo.service"]


def test_arguments_naming_read_only_places() -> None:
    units = {"demo.service": f"[Service]\nExecStart={PROG} --data=/var/lib/app/db /srv/x\n"}
    problems = _check(units)
    assert [(p.rule, p.path) for p in problems] == [("path-read-only", "/var/lib/app/db")]
    assert "ProtectSystem=strict" in problems[0].message
    assert problems[0].fix.startswith("set StateDirectory=app")
    trusted = _check(units, Target(profile="trusted"))
    assert "ProtectSystem" not in trusted[0].message  # still a read-only image
    for fix in ("StateDirectory=app", "StateDirectory=app:other", "ReadWritePaths=/var/lib/app",
                "BindPaths=/srv/data:/var/lib/app"):
        fixed = {"demo.service": units["demo.service"] + fix + "\n"}
        assert [p.rule for p in _check(fixed) if p.rule == "path-read-only"] == [], fix
    logs = {"demo.service": f"[Service]\nExecStart={PROG} /var/log/demo.log\nLogsDirectory=x\n"}
    assert _check(logs)[0].fix.startswith("set LogsDirectory=demo and use /var/log/demo/")


def test_an_unknown_key_is_an_error_only_when_it_breaks_the_unit() -> None:
    # refused for another reason: the harmless unknown key stays a warning
    text = f"[Service]\nExecStart={PROG} a\nExecStart={PROG} b\nFooBar=1\n"
    assert _rules(_check({"demo.service": text})) == [
        ("error", "service-refused"), ("warning", "unknown-key")]
    # the typo is what leaves the unit without ExecStart=
    assert _rules(_check({"demo.service": f"[Service]\nExecStrat={PROG}\nFooBar=1\n"})) == [
        ("error", "service-refused"), ("error", "unknown-key"), ("warning", "unknown-key")]


def test_jit_runtime_found_by_its_library(tmp_path: Path) -> None:
    """A program linked with libluajit is a JIT runtime whatever it is called."""
    gcc = require_tool("gcc")
    (tmp_path / "lib.c").write_text("int lj(void) { return 1; }\n")
    (tmp_path / "main.c").write_text("int lj(void);\nint main(void) { return lj(); }\n")
    lib = "libluajit-5.1.so.2"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", lib, f"-Wl,-soname,{lib}", "lib.c"],
                   cwd=tmp_path, check=True)
    subprocess.run([gcc, "-o", "game", "main.c", f"./{lib}"], cwd=tmp_path, check=True)
    t = _tree({"demo.service": "[Service]\nExecStart=/usr/bin/game\n"})
    t.add_file(P("/usr/bin/game"), source=tmp_path / "game", mode=0o755)
    jit = [p for p in verify(TreeFS(t), "demo_1.raw") if p.rule == "profile-jit"]
    assert len(jit) == 1 and f"linked with {lib}" in jit[0].message, jit
    assert [p for p in verify(TreeFS(t), "demo_1.raw", Target(profile="trusted"))
            if p.rule == "profile-jit"] == []
