"""verify's systemd rules against real systemd 247, 252 and 257: for each rule an image
verify reports that systemd really refuses or mishandles, and one verify passes that
systemd runs. verify is asked about the container's own version (--systemd) and the
profile the image is attached with (--profile)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from portable_service.builder.atomic import write_atomically
from portable_service.builder.closure.scripts import which
from portable_service.builder.pipeline import plan as plan_build
from portable_service.builder.spec import spec_from_mapping
from portable_service.fs.views import IndexedFS, open_image
from portable_service.harness import nspawn
from portable_service.harness.nspawn import Container, UnitState
from portable_service.look.verify import DBUS_CRASH_FIXED, Problem, Target, verify
from portable_service.progress import QUIET
from tests.e2e.conftest import LOG_DIR
from tests.e2e.lib import build_image, port_closed, static_program, tcp_get, unit

pytestmark = pytest.mark.e2e
# the host network is shared: ports no other test uses
PORT_SOCKET, PORT_SERVE, PORT_ACCEPT = 28731, 28732, 28733
PSDEMO = "/usr/bin/psdemo"
# a JIT's first step: ask for memory both writable and executable
JIT_C = r"""
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
    void *p = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("jit: mmap W+X"); return 1; }
    puts("jit: code memory ok");
    fflush(stdout);
    for (;;) pause();
}
"""


@pytest.fixture(scope="module")
def jit(tmp_path_factory: pytest.TempPathFactory, psdemo: Path) -> Path:
    """A static program that maps W+X memory as a JIT does; shipped as /usr/bin/luajit."""
    src = tmp_path_factory.mktemp("jit") / "jit.c"
    src.write_text(JIT_C)
    return static_program(src, src.with_suffix(""))


def build(tmp: Path, pname: str, units: Mapping[str, str], psdemo: Path,
          files: Mapping[str, bytes] | None = None, contents: list[dict[str, str]] | None = None,
          modes: Mapping[str, int] | None = None, **settings: Any) -> Path:
    """Build with the project's pipeline, then add ``files`` (drop-ins, a package's unit)
    to the tree before writing, as an image from elsewhere might carry them."""
    spec = spec_from_mapping({
        "pname": pname, "version": "1", "squash-compression": "gzip",
        "units": [unit(n, t) for n, t in units.items()],
        "contents": [{"source": str(psdemo), "target": PSDEMO}, *(contents or [])],
        **settings}, tmp)
    plan = plan_build(spec)
    for path, data in (files or {}).items():
        p = PurePosixPath(path)
        for parent in reversed(p.parents):
            if plan.tree.get(parent) is None:
                plan.tree.add_dir(parent, origin="test")
        plan.tree.add_file(p, data=data, origin="test", mode=(modes or {}).get(path, 0o644))
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / spec.image_name
    write_atomically(out, lambda t: plan.writer.write(plan.tree, t, plan.options, QUIET))
    return out


@dataclass
class Outcome:
    started: bool  # systemctl start succeeded and the unit is active, not failed
    state: UnitState | None
    said: str  # systemctl's output and the journal since the attach
    attached: list[str]
    probe: Any = None


def _cursor(c: Container) -> str:
    out = c.run("journalctl", "-n0", "--show-cursor", "--no-pager").stdout
    return out.strip().rsplit("cursor: ", 1)[-1] if "cursor: " in out else ""


def run_image(c: Container, image: Path, start: str, profile: str = "default",
              probe: Callable[[Container], Any] | None = None, wait: float = 1.5) -> Outcome:
    """Attach with ``profile``, start ``start``, watch it for ``wait`` seconds, detach."""
    name = image.name.removesuffix(".raw")
    cursor = _cursor(c)
    attach = c.attach(image, profile=profile)
    assert attach.ok, f"attach of {image.name} on {c.release.suite}: {attach.output}"
    attached = c.attached_units()
    try:
        result = c.start(start)
        state = c.unit_state(start)
        deadline = time.monotonic() + wait
        while result.ok and not state.failed and time.monotonic() < deadline:
            time.sleep(0.1)
            state = c.unit_state(start)
        found = probe(c) if probe is not None else None
        journal = c.run("journalctl", "--no-pager", "-o", "cat",
                        f"--after-cursor={cursor}").stdout
    finally:
        for u in attached:
            c.systemctl("stop", u)
        detach = c.detach(name)
        if not detach.ok and c.release.systemd < 248:
            for u in attached:
                c.systemctl("stop", u)
            detach = c.detach(name)
    assert detach.ok and c.attached_units() == [], f"detach of {name}: {detach.output}"
    started = result.ok and state.active == "active" and not state.failed
    return Outcome(started, state, f"{result.output}\n{state}\n{journal}", attached, found)


def check(c: Container, image: Path, profile: str = "default") -> list[Problem]:
    return verify(IndexedFS(open_image(image)), image.name,
                  Target(profile=profile, systemd=c.release.systemd))


def rules(problems: list[Problem]) -> set[tuple[str, str]]:
    return {(p.severity, p.rule) for p in problems}


def log(c: Container, case: str, problems: list[Problem], outcome: Outcome) -> None:
    """Evidence for TESTING.md's table: what verify said and what systemd did."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    words = [ln.strip() for ln in outcome.said.splitlines() if any(
        k in ln for k in ("Unknown", "Refusing", "refusing", "not found", "Failed", "status=",
                          "jit:", "psdemo:", "not loaded"))]
    with open(LOG_DIR / f"verify-rules-{c.release.suite}.txt", "a") as f:
        f.write(f"## {case}: verify {sorted(rules(problems)) or 'clean'} -> "
                f"{'started' if outcome.started else 'failed'}\n")
        f.writelines(f"   {w}\n" for w in words[:4])


SAY = f"ExecStart={PSDEMO} say hello\n"
ONESHOT = f"[Service]\nType=oneshot\nRemainAfterExit=yes\n{SAY}"
SERVE = f"[Service]\nType=exec\nExecStart={PSDEMO} sockserve hi\n"


# -- 1. unknown keys


def test_typo_leaves_no_execstart(container, tmp_path, psdemo) -> None:
    image = build(tmp_path, "typo", {"typo.service": f"[Service]\nExecStrat={PSDEMO} say hi\n"},
                  psdemo)
    problems = check(container, image)
    out = run_image(container, image, "typo.service")
    log(container, "unknown-key (ExecStrat=)", problems, out)
    assert ("error", "unknown-key") in rules(problems), problems
    assert ("error", "service-refused") in rules(problems), problems
    assert any(p.rule == "unknown-key" and "ExecStart" in p.fix for p in problems)
    assert not out.started, out.said
    assert "Unknown key" in out.said and "'ExecStrat'" in out.said, out.said
    assert "Service has no ExecStart=, ExecStop=, or SuccessAction=. Refusing." in out.said


def test_unknown_key_is_ignored_and_known_keys_run(container, tmp_path, psdemo) -> None:
    image = build(tmp_path, "ukey", {"ukey.service": ONESHOT + "FooBarBaz=1\n"}, psdemo)
    problems = check(container, image)
    out = run_image(container, image, "ukey.service")
    log(container, "unknown-key (ignored)", problems, out)
    assert rules(problems) == {("warning", "unknown-key")}, problems
    assert out.started, out.said
    assert "Unknown key" in out.said and "'FooBarBaz'" in out.said, out.said
    clean = build(tmp_path / "clean", "ukey", {"ukey.service": ONESHOT}, psdemo)
    assert check(container, clean) == []
    out = run_image(container, clean, "ukey.service")
    assert out.started and "Unknown key" not in out.said, out.said


def test_key_of_a_newer_systemd(container, tmp_path, psdemo) -> None:
    # BindLogSockets= is new in 257: older versions log it as unknown and go on
    image = build(tmp_path, "newkey", {"newkey.service": ONESHOT + "BindLogSockets=yes\n"}, psdemo)
    problems = check(container, image)
    out = run_image(container, image, "newkey.service")
    log(container, "key-needs-newer-systemd (BindLogSockets=)", problems, out)
    assert out.started, out.said
    if container.release.systemd >= 257:
        assert problems == [], problems
        assert "'BindLogSockets'" not in out.said
    else:
        assert rules(problems) == {("warning", "key-needs-newer-systemd")}, problems
        assert "needs systemd >= 257" in problems[0].message
        assert "Unknown key" in out.said and "'BindLogSockets'" in out.said, out.said


# -- 2. services systemd refuses to load (service_verify())

REFUSED = {
    "two-execstart": (f"[Service]\nType=exec\n{SAY}{SAY}",
                      "more than one ExecStart= setting"),
    "oneshot-restart-always": (ONESHOT + "Restart=always\n", "Restart= set to either always"),
    "dbus-no-busname": (f"[Service]\nType=dbus\n{SAY}", "no D-Bus service name"),
    "no-execstart": ("[Service]\nType=exec\nRemainAfterExit=yes\n", "Service has no ExecStart="),
    "oneshot-only-stop": (f"[Service]\nType=oneshot\nExecStop={PSDEMO} say bye\n",
                          "does not have RemainAfterExit=yes"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_service_refused(container, release_roots, tmp_path, psdemo, case) -> None:
    text, words = REFUSED[case]
    image = build(tmp_path, "refused", {"refused.service": text}, psdemo)
    problems = check(container, image)
    if case == "dbus-no-busname" and container.release.systemd < DBUS_CRASH_FIXED:
        # systemd 247's PID 1 dies on this start: it gets a container of its own
        assert "PID 1 dies" in next(p.message for p in problems if p.rule == "service-refused")
        with nspawn.booted(container.release, release_roots[container.release.suite],
                           log_dir=LOG_DIR) as own:
            assert own.attach(image).ok
            start = own.start("refused.service")
            alive = own.run("true").ok
        log(container, f"service-refused ({case})", problems,
            Outcome(False, None, f"{start.output}\nPID 1 alive afterwards: {alive}", []))
        assert not start.ok and not alive, start.output
        return
    out = run_image(container, image, "refused.service")
    log(container, f"service-refused ({case})", problems, out)
    assert ("error", "service-refused") in rules(problems), problems
    assert words in next(p.message for p in problems if p.rule == "service-refused")
    assert not out.started, out.said
    assert words in out.said, out.said
    assert out.state is not None and out.state.load == "bad-setting", out.state


def test_oneshot_restart_force_status_depends_on_version(container, tmp_path, psdemo) -> None:
    image = build(tmp_path, "rfes", {"rfes.service": ONESHOT + "RestartForceExitStatus=3\n"},
                  psdemo)
    problems = check(container, image)
    out = run_image(container, image, "rfes.service")
    log(container, "service-refused (oneshot RestartForceExitStatus=)", problems, out)
    if container.release.systemd >= 256:
        assert problems == [] and out.started, (problems, out.said)
    else:
        assert ("error", "service-refused") in rules(problems), problems
        assert not out.started and "Service has RestartForce" in out.said, out.said


def test_oneshot_allowed_forms_run(container, tmp_path, psdemo) -> None:
    text = ONESHOT + SAY + "Restart=on-failure\n"  # two ExecStart= and on-failure: fine
    image = build(tmp_path, "okshot", {"okshot.service": text}, psdemo)
    problems = check(container, image)
    out = run_image(container, image, "okshot.service")
    log(container, "service (oneshot, two ExecStart=, Restart=on-failure)", problems, out)
    assert problems == [], problems
    assert out.started, out.said


# -- 3. triggered units


TRIGGERS = {
    "timer": ("trig.timer", "[Timer]\nOnActiveSec=1h\n"),
    "path": ("trig.path", "[Path]\nPathExists=/tmp/nothing\n"),
    "socket": ("trig.socket", f"[Socket]\nListenStream=127.0.0.1:{PORT_SOCKET}\n"),
    "timer-unit": ("trig.timer", "[Timer]\nOnActiveSec=1h\nUnit=trig-other.service\n"),
}


@pytest.mark.parametrize("case", sorted(TRIGGERS))
def test_trigger_without_its_unit(container, tmp_path, psdemo, case) -> None:
    name, text = TRIGGERS[case]
    # the image ships a service, but not the one the trigger starts
    units = {name: text, "trig-x.service": f"[Service]\nType=exec\n{SAY}"}
    image = build(tmp_path, "trig", units, psdemo)
    problems = check(container, image)
    out = run_image(container, image, name)
    log(container, f"trigger-missing ({case})", problems, out)
    assert ("error", "trigger-missing") in rules(problems), problems
    assert not out.started, out.said


@pytest.mark.parametrize("case", sorted(TRIGGERS))
def test_trigger_with_its_unit(container, tmp_path, psdemo, case) -> None:
    name, text = TRIGGERS[case]
    target = "trig-other.service" if "Unit=" in text else name.rsplit(".", 1)[0] + ".service"
    service = SERVE if case == "socket" else f"[Service]\nType=exec\n{SAY}"
    image = build(tmp_path, "trig", {name: text, target: service}, psdemo)
    problems = check(container, image)
    out = run_image(container, image, name)
    log(container, f"trigger present ({case})", problems, out)
    assert problems == [], problems
    assert out.started, out.said


@pytest.mark.parametrize("template", [False, True])
def test_accept_socket_needs_a_template(container, tmp_path, psdemo, template) -> None:
    """Accept=yes starts NAME@.service per connection: a plain NAME.service is never used."""
    service = "acc@.service" if template else "acc.service"
    units = {"acc.socket": f"[Socket]\nListenStream=127.0.0.1:{PORT_ACCEPT}\nAccept=yes\n",
             service: f"[Service]\nStandardInput=socket\n{SAY}"}
    image = build(tmp_path, "acc", units, psdemo)
    problems = check(container, image)

    def reply(c: Container) -> str:
        try:
            return tcp_get(PORT_ACCEPT, timeout=3)
        except OSError as e:
            return f"error: {e}"

    out = run_image(container, image, "acc.socket", probe=reply)
    log(container, f"trigger {'present' if template else 'missing'} (Accept=yes)", problems, out)
    assert out.started, out.said  # the socket itself listens either way
    if template:
        assert problems == [], problems
        assert out.probe == "hello\n", out.said
    else:
        assert rules(problems) == {("error", "trigger-missing")}, problems
        assert out.probe != "hello\n", (out.probe, out.said)
        assert "Failed with result 'resources'" in out.said, out.said
        assert ("Failed to queue service startup job" in out.said  # 247, 252
                or "Failed to load connection service unit" in out.said), out.said  # 257


# -- 4. User= and Group= under the profile


def test_user_under_trusted_must_exist_on_host(container, tmp_path, psdemo) -> None:
    image = build(tmp_path, "usr", {"usr.service": f"[Service]\nType=exec\nUser=psnosuchuser\n"
                                                   f"ExecStart={PSDEMO} report 0\n"}, psdemo)
    problems = check(container, image, "trusted")
    out = run_image(container, image, "usr.service", profile="trusted")
    log(container, "user-on-host (trusted, User=psnosuchuser)", problems, out)
    assert ("warning", "user-on-host") in rules(problems), problems
    assert not out.started, out.said
    assert "217/USER" in out.said or "status=217" in out.said, out.said
    # the same under "default": the profile's DynamicUser=yes makes the user; verify says so
    problems = check(container, image, "default")
    out = run_image(container, image, "usr.service", profile="default")
    log(container, "user-dynamic (default, User=psnosuchuser)", problems, out)
    assert rules(problems) == {("warning", "user-dynamic")}, problems
    assert out.started, out.said


def test_dynamic_user_under_trusted_runs(container, tmp_path, psdemo) -> None:
    image = build(tmp_path, "usr", {"usr.service": f"[Service]\nType=exec\nUser=psnosuchuser\n"
                                                   f"DynamicUser=yes\nExecStart={PSDEMO} report 0\n"},
                  psdemo)
    problems = check(container, image, "trusted")
    out = run_image(container, image, "usr.service", profile="trusted")
    log(container, "user (trusted, DynamicUser=yes)", problems, out)
    assert problems == [], problems
    assert out.started, out.said


# -- 5. the profile's sandbox


@pytest.mark.parametrize("profile", ["default", "trusted"])
def test_jit_runtime_under_memory_deny_write_execute(container, tmp_path, psdemo, jit,
                                                     profile) -> None:
    image = build(tmp_path, "jit", {"jit.service": "[Service]\nType=exec\n"
                                                   "ExecStart=/usr/bin/luajit\n"}, psdemo,
                  contents=[{"source": str(jit), "target": "/usr/bin/luajit"}])
    problems = check(container, image, profile)
    out = run_image(container, image, "jit.service", profile=profile)
    log(container, f"profile-jit ({profile})", problems, out)
    if profile == "trusted":
        assert problems == [], problems
        assert out.started and "jit: code memory ok" in out.said, out.said
    else:
        assert rules(problems) == {("warning", "profile-jit")}, problems
        assert "--profile trusted" in problems[0].fix
        assert not out.started and "jit: mmap W+X" in out.said, out.said


@pytest.mark.parametrize("profile", ["default", "nonetwork"])
def test_service_asking_for_network(container, tmp_path, psdemo, profile) -> None:
    image = build(tmp_path, "net", {"net.service": "[Unit]\nWants=network-online.target\n"
                                                   "After=network-online.target\n"
                                                   f"[Service]\nType=exec\n"
                                                   f"ExecStart={PSDEMO} serve {PORT_SERVE} net\n"},
                  psdemo)
    problems = check(container, image, profile)

    def reach(c: Container) -> bool:
        return not port_closed(PORT_SERVE) and tcp_get(PORT_SERVE, timeout=3) == "net\n"

    out = run_image(container, image, "net.service", profile=profile, probe=reach)
    log(container, f"profile-no-network ({profile})", problems, out)
    if profile == "default":
        assert problems == [], problems
        assert out.probe, out.said
    else:
        assert rules(problems) == {("warning", "profile-no-network")}, problems
        assert not out.probe, out.said  # it cannot listen: no inet sockets at all
        assert "inet socket" in out.said, out.said


def test_socket_activation_works_under_nonetwork(container, tmp_path, psdemo) -> None:
    """A .socket listens in the host's network and hands the socket in: nonetwork does not
    cut it off, and verify stays silent."""
    units = {"sock.socket": f"[Socket]\nListenStream=127.0.0.1:{PORT_SOCKET}\n",
             "sock.service": SERVE}
    image = build(tmp_path, "sock", units, psdemo)
    problems = check(container, image, "nonetwork")

    def reach(c: Container) -> str:
        return tcp_get(PORT_SOCKET, timeout=5)

    out = run_image(container, image, "sock.socket", profile="nonetwork", probe=reach)
    log(container, "socket activation (nonetwork)", problems, out)
    assert problems == [], problems
    assert out.started and out.probe == "hi\n", out.said


@pytest.mark.parametrize("state_directory", [False, True])
def test_argument_naming_a_read_only_place(container, tmp_path, psdemo, state_directory) -> None:
    extra = "StateDirectory=app\n" if state_directory else ""
    text = (f"[Service]\nType=oneshot\nRemainAfterExit=yes\n{extra}"
            f"ExecStart={PSDEMO} probe /var/lib/app\n")
    files = {} if state_directory else {"/var/lib/app/.keep": b""}  # there, but read-only
    image = build(tmp_path, "rop", {"rop.service": text}, psdemo, files=files)
    problems = check(container, image)
    out = run_image(container, image, "rop.service")
    log(container, f"path-read-only ({'StateDirectory=app' if state_directory else 'none'})",
        problems, out)
    assert out.started, out.said
    if state_directory:
        assert problems == [], problems
        assert "/var/lib/app: folder, writable" in out.said, out.said
    else:
        assert rules(problems) == {("warning", "path-read-only")}, problems
        assert "/var/lib/app: folder, Read-only file system" in out.said, out.said


# -- 6. nothing silently ignored


@pytest.mark.parametrize("optional", [False, True])
def test_environment_file_in_the_image_is_not_read(container, tmp_path, psdemo, optional) -> None:
    dash = "-" if optional else ""
    text = (f"[Service]\nType=oneshot\nRemainAfterExit=yes\nEnvironmentFile={dash}/etc/psenv.env\n"
            f"ExecStart={PSDEMO} say MSG=${{MSG}}.\n")
    image = build(tmp_path, "envf", {"envf.service": text}, psdemo,
                  files={"/etc/psenv.env": b"MSG=from-the-image\n"}, **{"allow-missing": True})
    problems = check(container, image)
    out = run_image(container, image, "envf.service")
    log(container, f"environment-file-host ({dash}PATH)", problems, out)
    # the image ships a copy systemd never reads: an error without '-', a warning with it
    assert rules(problems) == {("warning" if optional else "error", "environment-file-host")}, \
        problems
    assert "from-the-image" not in out.said, out.said
    if optional:
        assert out.started and "MSG=." in out.said, out.said
    else:
        assert not out.started and "Failed to load environment files" in out.said, out.said
    # the fix verify gives: Environment= in the unit
    fixed = text.replace(f"EnvironmentFile={dash}/etc/psenv.env", "Environment=MSG=from-unit")
    image = build(tmp_path / "fixed", "envf", {"envf.service": fixed}, psdemo)
    assert check(container, image) == []
    out = run_image(container, image, "envf.service")
    assert out.started and "MSG=from-unit." in out.said, out.said


def test_drop_in_in_the_image_is_ignored(container, tmp_path, psdemo) -> None:
    text = f"[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart={PSDEMO} say MSG=${{MSG}}.\n"
    image = build(tmp_path, "dropin", {"dropin.service": text}, psdemo, files={
        "/etc/systemd/system/dropin.service.d/10-msg.conf": b"[Service]\nEnvironment=MSG=dropin\n"})
    problems = check(container, image)
    out = run_image(container, image, "dropin.service")
    log(container, "drop-in-ignored", problems, out)
    assert rules(problems) == {("warning", "drop-in-ignored")}, problems
    assert out.started and "MSG=." in out.said and "MSG=dropin." not in out.said, out.said
    merged = text.replace("[Service]\n", "[Service]\nEnvironment=MSG=dropin\n")
    image = build(tmp_path / "merged", "dropin", {"dropin.service": merged}, psdemo)
    assert check(container, image) == []
    out = run_image(container, image, "dropin.service")
    assert out.started and "MSG=dropin." in out.said, out.said


def test_undeclared_unit_is_attached_too(container, tmp_path, psdemo) -> None:
    extra = f"[Service]\nType=exec\nExecStart={PSDEMO} say extra\n".encode()
    units = {"undecl.service": ONESHOT}
    image = build(tmp_path, "undecl", units, psdemo,
                  files={"/usr/lib/systemd/system/undecl-extra.service": extra})
    problems = check(container, image)
    out = run_image(container, image, "undecl.service")
    log(container, "undeclared-unit", problems, out)
    assert rules(problems) == {("warning", "undeclared-unit")}, problems
    assert "undecl-extra.service" in out.attached, out.attached
    image = build(tmp_path / "only", "undecl", units, psdemo)
    assert check(container, image) == []
    out = run_image(container, image, "undecl.service")
    assert out.attached == ["undecl.service"] and out.started, out.said


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_a_file_the_service_cannot_read(container, tmp_path, psdemo, mode) -> None:
    """Everything is root's in an image and the service runs as a dynamic user: a 0600 file
    its command line names is 'Permission denied' at start."""
    text = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/bin/cat /etc/app.conf\n"
    image = build(tmp_path, "unread", {"unread.service": text}, psdemo,
                  files={"/etc/app.conf": b"setting=1\n"}, modes={"/etc/app.conf": mode})
    problems = check(container, image)
    out = run_image(container, image, "unread.service")
    log(container, f"unreadable ({mode:04o})", problems, out)
    if mode == 0o600:
        assert ("error", "unreadable") in rules(problems), problems
        assert not out.started and "Permission denied" in out.said, out.said
    else:
        assert ("error", "unreadable") not in rules(problems), problems
        assert out.started, out.said


# -- 7. a bind mount's destination must be of its source's kind

BIND_KIND = {
    # source, destination, what the image has there (None: what the builder makes)
    "socket-on-builders-file": ("/dev/log", "/srv/jlog", None),
    "socket-on-folder": ("/dev/log", "/srv/jlog", "folder"),
    "folder-on-builders-folder": ("/etc/systemd", "/srv/sd", None),
    "folder-on-file": ("/etc/systemd", "/srv/sd", "file"),
}


@pytest.mark.parametrize("case", sorted(BIND_KIND))
def test_bind_mount_on_the_wrong_kind(container, tmp_path, psdemo, case) -> None:
    """/dev/log is the journal's socket (haproxy's unit binds it into its chroot): systemd
    mounts it only on a file, and a folder only on a folder."""
    source, dest, there = BIND_KIND[case]
    text = f"{ONESHOT}BindReadOnlyPaths={source}:{dest}\n"
    contents = []
    if there is not None:  # the spec's contents are placed before the units' mount points
        made = tmp_path / "made"
        made.mkdir() if there == "folder" else made.write_bytes(b"")
        contents.append({"source": str(made), "target": dest})
    image = build(tmp_path / "img", "bindk", {"bindk.service": text}, psdemo, contents=contents)
    problems = check(container, image)
    out = run_image(container, image, "bindk.service")
    log(container, f"bind-mount-kind ({case})", problems, out)
    if there is None:  # the builder made the destination of the source's kind
        assert problems == [], problems
        assert out.started, out.said
    else:
        assert rules(problems) == {("error", "bind-mount-kind")}, problems
        assert not out.started, out.said
        assert "status=226/NAMESPACE" in out.said and "Not a directory" in out.said, out.said


# -- 8. what a unit's shell script runs


@pytest.mark.parametrize("dropped", [False, True])
def test_a_shell_script_needs_the_programs_it_runs(container, tmp_path, psdemo, dropped) -> None:
    """apachectl runs id (coreutils, which apache2 does not depend on): the builder brings
    what a unit's shell script runs; without it the script stops at 'id: not found'."""
    host_id = which("id")
    assert host_id is not None, "id is not on this host"
    start = tmp_path / "start-sh"
    start.write_text(f"#!/bin/sh\nset -e\nwho=$(id -u)\nexec {PSDEMO} say \"uid $who\"\n")
    start.chmod(0o755)
    settings = {
        "pname": "shcmd", "version": "1",
        "units": [unit("shcmd.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                       "ExecStart=/usr/local/bin/shcmd-start\n")],
        "contents": [{"source": str(psdemo), "target": PSDEMO},
                     {"source": str(start), "target": "/usr/local/bin/shcmd-start"}]}
    image = build_image(tmp_path / "img", settings,
                        drop=PurePosixPath(host_id) if dropped else None)
    problems = check(container, image)
    out = run_image(container, image, "shcmd.service")
    log(container, f"script-command-missing ({'id dropped' if dropped else 'as built'})",
        problems, out)
    if dropped:
        assert rules(problems) == {("warning", "script-command-missing")}, problems
        assert "runs id, which is not in the image" in problems[0].message, problems
        assert not out.started and "id: not found" in out.said, out.said
    else:
        assert problems == [], problems
        assert out.started and "uid " in out.said, out.said



# -- 9. /run is the profile's


@pytest.mark.parametrize("profile", ["default", "strict", "trusted"])
def test_read_write_paths_run_replaces_the_profiles_tmpfs(container, tmp_path, psdemo,
                                                          profile) -> None:
    """nsd's unit says ReadWritePaths=/run: that mount wins over the tmpfs the profile puts
    on /run, which is then the image's, read-only, and the profile's sockets below it
    cannot be mounted. Under trusted (the host's /run) it starts."""
    image = build(tmp_path, "runrw", {"runrw.service": ONESHOT + "ReadWritePaths=/run\n"}, psdemo)
    problems = check(container, image, profile)
    out = run_image(container, image, "runrw.service", profile=profile)
    log(container, f"run-replaced ({profile})", problems, out)
    if profile == "trusted":
        assert problems == [], problems
        assert out.started, out.said
    else:
        assert rules(problems) == {("error", "run-replaced")}, problems
        assert not out.started and "status=226/NAMESPACE" in out.said, out.said
    clean = build(tmp_path / "sub", "runrw", {"runrw.service": ONESHOT + "RuntimeDirectory=runrw\n"},
                  psdemo)
    assert check(container, clean, profile) == []
    assert run_image(container, clean, "runrw.service", profile=profile).started


# -- 10. capabilities the service will not hold

PORT_LOW = 987  # below 1024: needs CAP_NET_BIND_SERVICE in the host's network


@pytest.mark.parametrize("profile,ambient", [("default", False), ("default", True),
                                             ("trusted", False), ("trusted", True)])
def test_a_port_below_1024(container, tmp_path, psdemo, profile, ambient) -> None:
    """nsd's unit lists CAP_NET_BIND_SERVICE in CapabilityBoundingSet= for port 53. A
    dynamic user holds no capabilities unless AmbientCapabilities= grants them, and under
    PrivateUsers=yes (every profile but trusted) not even then: they hold in the service's
    own user namespace, not in the host's network. Unless the kernel lets every user bind
    low ports (net.ipv4.ip_unprivileged_port_start), then nothing is denied."""
    grant = "AmbientCapabilities=CAP_NET_BIND_SERVICE\n" if ambient else ""
    image = build(tmp_path, "lowport", {"lowport.service": (
        "[Service]\nType=exec\nDynamicUser=yes\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"
        f"{grant}ExecStart={PSDEMO} serve {PORT_LOW} low\n")}, psdemo)
    problems = check(container, image, profile)

    def reach(c: Container) -> bool:
        return not port_closed(PORT_LOW) and tcp_get(PORT_LOW, timeout=3) == "low\n"

    out = run_image(container, image, "lowport.service", profile=profile, probe=reach)
    log(container, f"capabilities ({profile}, {'ambient' if ambient else 'bounding set only'})",
        problems, out)
    low_ports_open = int(container.run(
        "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").stdout) <= PORT_LOW
    if profile == "default":
        assert rules(problems) == {("warning", "port-below-1024")}, problems
    elif not ambient:
        assert rules(problems) == {("warning", "capabilities-not-granted")}, problems
        assert problems[0].fix.endswith("AmbientCapabilities=CAP_NET_BIND_SERVICE"), problems
    else:
        assert problems == [], problems
    if problems and not low_ports_open:
        assert not out.probe and "Permission denied" in out.said, out.said
    else:  # granted, or a kernel that denies nothing
        assert out.started and out.probe, out.said
