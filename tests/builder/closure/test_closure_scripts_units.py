"""Scripts bring their interpreters; units bring the programs they run and the files they read."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from portable_service.builder.closure import scripts
from portable_service.errors import ClosureError
from tests.builder.closure.closure_helpers import closure_of, host_dir, paths, script, unit

P = PurePosixPath


@pytest.mark.parametrize("line,program", [
    ("#!/usr/bin/env python3\n", "python3"),
    ("#! /usr/bin/env -S python3 -u\n", "python3"),
    ("#!/usr/bin/env -Spython3 -u\n", "python3"),
    ("#!/usr/bin/env -i LANG=C bash\n", "bash"),
    ("#!/usr/bin/env -u FOO bash\n", "bash"),
])
def test_env_shebangs(tmp_path: Path, line: str, program: str) -> None:
    s = script(tmp_path / "run", line + "print(1)\n")
    interp, arg = scripts.read_shebang(s)  # type: ignore[misc]
    assert interp == "/usr/bin/env"
    assert scripts.env_program(arg) == program
    c = closure_of(tmp_path, contents=[str(s)], units=[unit(str(s))])
    found = scripts.which(program)
    assert found is not None
    assert c.nodes[P(found)].reason == f"#!/usr/bin/env {program}"
    assert c.nodes[P(found)].parent == P(s)
    assert "/usr/bin/env" in paths(c)
    # and the ELF closure of the interpreter follows: its libc
    assert any(p.endswith("libc.so.6") for p in paths(c))


def test_plain_shebang_with_argument(tmp_path: Path) -> None:
    s = script(tmp_path / "run", "#!/bin/bash -eu\necho hi\n")
    assert scripts.read_shebang(s) == ("/bin/bash", "-eu")
    c = closure_of(tmp_path, contents=[str(s)], units=[unit(str(s))])
    assert c.nodes[P("/bin/bash")].reason == "#! interpreter"


def test_non_executable_script_is_data(tmp_path: Path) -> None:
    s = script(tmp_path / "lib.py", "#!/usr/bin/env python3\n", mode=0o644)
    c = closure_of(tmp_path, contents=[str(s)])
    assert "/usr/bin/env" not in paths(c)


def test_env_program_not_in_path_is_an_error(tmp_path: Path) -> None:
    s = script(tmp_path / "run", "#!/usr/bin/env no-such-interpreter-xyz\n")
    with pytest.raises(ClosureError, match=r"runs 'no-such-interpreter-xyz' through env"):
        closure_of(tmp_path, contents=[str(s)], units=[unit(str(s))])
    c = closure_of(tmp_path, contents=[str(s)], units=[unit(str(s))], allow_missing=True)
    assert any("no-such-interpreter-xyz" in w for w in c.warnings)
    # as data (no unit runs it) the same script is only worth a warning
    c = closure_of(tmp_path, contents=[str(s)])
    assert any(w.startswith(f"{s} is an executable script for 'no-such-interpreter-xyz'")
               for w in c.warnings)


def test_missing_interpreter_is_an_error(tmp_path: Path) -> None:
    s = script(tmp_path / "run", "#!/opt/nowhere/bin/interp\n")
    with pytest.raises(ClosureError, match=r"runs /opt/nowhere/bin/interp, which is not on this host"):
        closure_of(tmp_path, contents=[str(s)], units=[unit(str(s))])
    c = closure_of(tmp_path, contents=[str(s)])
    assert [w for w in c.warnings if "/opt/nowhere/bin/interp" in w] == [
        f"{s} is an executable script for /opt/nowhere/bin/interp, which is not on this host; "
        "no unit runs it, so it is shipped as data and its interpreter is not added"]


def test_exec_programs_become_roots(tmp_path: Path) -> None:
    text = ("ExecStartPre=-/usr/bin/true\nExecStartPost=!/usr/bin/env\nExecReload=kill -HUP $MAINPID\n"
            "ExecStop=/bin/sh -c 'exit 0'\nEnvironmentFile=/etc/os-release\nEnvironmentFile=-/etc/nope\n")
    c = closure_of(tmp_path, units=[unit("@/usr/bin/bash bash -c true", extra=text)])
    assert c.nodes[P("/usr/bin/bash")].reason == "program of ExecStart= in t.service"
    assert c.nodes[P("/usr/bin/true")].reason == "program of ExecStartPre= in t.service"
    assert P("/usr/bin/env") in c.nodes
    kill = scripts.which("kill")
    assert kill is not None and P(kill) in c.nodes  # a bare name, looked up as systemd does
    assert P("/bin/sh") in c.nodes
    assert "/etc/os-release" not in paths(c)  # the image makes its own
    assert "/etc/nope" not in paths(c)


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    d = host_dir()
    yield d
    shutil.rmtree(d)


def test_environment_file_is_not_shipped(tmp_path: Path, outside_tmp: Path) -> None:
    """systemd reads it on the host before the image is mounted: the build says so instead."""
    env = outside_tmp / "etc/demo.env"
    env.parent.mkdir()
    env.write_text("A=1\n")
    c = closure_of(tmp_path, units=[unit("/usr/bin/true", extra=f"EnvironmentFile={env}\n"
                                         "EnvironmentFile=-/etc/demo-optional.env\n")])
    assert P(env) not in c.nodes
    assert [w.split(":")[0] for w in c.warnings] == [
        f"EnvironmentFile= in t.service names {env}",
        "EnvironmentFile= in t.service names /etc/demo-optional.env"]
    assert "reads it on the host" in c.warnings[0]


def test_missing_program_is_an_error_naming_the_directive(tmp_path: Path) -> None:
    with pytest.raises(ClosureError, match=r"ExecStart= in t.service runs /usr/bin/no-such-xyz, "
                                           r"which does not exist"):
        closure_of(tmp_path, units=[unit("/usr/bin/no-such-xyz")])
    with pytest.raises(ClosureError, match=r"runs 'no-such-xyz', which is not in systemd's PATH"):
        closure_of(tmp_path, units=[unit("no-such-xyz")])


def test_program_placed_by_the_spec_is_not_a_host_dependency(tmp_path: Path) -> None:
    s = script(tmp_path / "demo.sh", "#!/bin/sh\necho hi\n")
    c = closure_of(tmp_path, units=[unit("/usr/bin/demo-xyz"), unit("/bin/sh", name="t-b.service")],
                   contents=[{"source": str(s), "target": "/usr/bin/demo-xyz"}],
                   symlinks=[{"object": "/usr/bin/dash", "symlink": "/bin/sh"}])
    assert c.nodes[P("/usr/bin/demo-xyz")].reason == "content"
    # /bin/sh is the spec's link to dash: the host's /bin/sh is not shipped over it
    assert P("/bin/sh") not in c.nodes
    assert P("/usr/bin/dash") in c.nodes


def test_runtime_paths_are_not_dependencies(tmp_path: Path) -> None:
    c = closure_of(tmp_path, units=[unit("/var/lib/t/bin/run", extra="ExecStartPre=/run/t/prep\n")])
    assert not any(p.startswith(("/var/lib", "/run")) for p in paths(c))


def test_symlink_to_a_program_brings_the_chain(tmp_path: Path, outside_tmp: Path) -> None:
    (outside_tmp / "bin").mkdir()
    os.symlink("/usr/bin/bash", outside_tmp / "bin/b1")
    os.symlink("b1", outside_tmp / "bin/b2")
    c = closure_of(tmp_path, units=[unit(str(outside_tmp / "bin/b2"))])
    chain = [str(n.image) for n in c.why(P("/usr/bin/bash"))]
    assert chain == [str(outside_tmp / "bin/b2"), str(outside_tmp / "bin/b1"), "/usr/bin/bash"]


def test_env_in_a_unit_brings_the_program_it_runs(tmp_path: Path) -> None:
    c = closure_of(tmp_path, units=[unit("/usr/bin/env -u HOME bash -c true ; @/usr/bin/env env-argv0 ls",
                                         extra="ExecStartPre=/usr/bin/env X=1 no-such-xyz-prog\n")],
                   allow_missing=True)
    bash, ls = scripts.which("bash"), scripts.which("ls")
    assert bash and ls
    assert c.nodes[P(bash)].reason == "program of ExecStart= in t.service (through env)"
    assert P(ls) in c.nodes
    assert any("no-such-xyz-prog" in w for w in c.warnings)


@pytest.mark.parametrize("script_text,programs", [
    ("sleep 1 && /usr/bin/env true", ["sleep", "/usr/bin/env"]),
    ("exec /opt/demo --x >/var/log/x 2>&1", ["/opt/demo"]),
    ("FOO=1 BAR=2 myprog a; echo hi | grep x", ["myprog", "grep"]),
    ("if test -f /x; then cat /x; else exit 1; fi", ["cat"]),
    ("while true; do date; sleep 5; done", ["date", "sleep"]),
    ("a;(b)", ["a", "b"]),
    ("$HOME/bin/x; `foo`; echo 'a;b'", ["foo"]),
    ("nohup /opt/x &", ["nohup", "/opt/x"]),
    ("x <in >out; y", ["x", "y"]),
    ("echo 'unbalanced", []),
    # what a whole script holds: functions, case branches, heredocs, substitutions
    ("f() { inner; }\nf\ncase $1 in start) st ;; *) other ;; esac\n", ["inner", "st", "other"]),
    ("cat <<EOF\nUsage: not-a-command\n$(sub)\nEOF\nnext\n", ["cat", "sub", "next"]),
    ('x=$(id -u); [ "$(whoami)" = root ] # comment: nope\n', ["id", "whoami"]),
    ("for arg do x \"$arg\"; done", ["x"]),  # POSIX's form, which the grammar misreads
    ("command -v foo >/dev/null && nice -n 5 env -u HOME A=1 prog; exec -a n p2",
     ["nice", "env", "prog", "p2"]),
    ("exec >/dev/null 2>&1; 'quoted' a; \"dq\"; $VAR; ./rel; g*", ["quoted", "dq", "./rel"]),
    # a daemon's path set once: each literal value, and an expansion's default
    ('D=/usr/sbin/d\nif x; then D="/opt/d2"; fi\nexec $D -f; "${D}" -g\n', ["x", "/usr/sbin/d", "/opt/d2"]),
    ("H=${APACHE_HTTPD:-/usr/sbin/apache2}\n$H -k start; ${Y:-/bin/y}; ${Y#x}; $UNSET\n",
     ["/usr/sbin/apache2", "/bin/y"]),
    ('L="www-browser -dump"\n$L http://x\n', ["www-browser"]),
])
def test_programs_of_a_shell_line(script_text: str, programs: list[str]) -> None:
    assert scripts.shell_script_programs(script_text) == programs


def test_sh_c_in_a_unit_brings_the_programs_it_starts(tmp_path: Path) -> None:
    c = closure_of(tmp_path, units=[unit(
        "/bin/sh -c 'mkdir -p /run/x && exec sleep 60'",
        extra="ExecStartPost=/bin/bash -c 'echo started; no-such-xyz-prog'\n")])
    sleep, mkdir = scripts.which("sleep"), scripts.which("mkdir")
    assert sleep and mkdir
    assert c.nodes[P(sleep)].reason == "program of ExecStart= in t.service (through sh -c)"
    assert P(mkdir) in c.nodes
    assert not any(str(p).endswith("/echo") for p in c.nodes)  # a builtin: nothing to ship
    # a name the shell may define itself is only worth a warning
    assert any("no-such-xyz-prog" in w for w in c.warnings)


def test_a_shell_script_brings_the_programs_it_runs(tmp_path: Path, outside_tmp: Path) -> None:
    """apachectl runs id, mkdir and mktemp, of coreutils, which apache2 does not depend on:
    an executed shell script brings what it runs, its helpers' too, the scripts they are
    in turn; a name found nowhere is a warning; a data script brings nothing."""
    helper = script(outside_tmp / "helper", "#!/bin/sh\nexec readlink -f /\n")  # not in /tmp
    s = script(tmp_path / "run", f"#!/usr/bin/env bash\nset -e\nlog() {{ logger \"$@\"; }}\n"
               f"uid=$(id -u)\nmkdir -p /run/x && {helper} --x\n"
               "case $1 in debug) no-such-xyz-prog ;; esac\n/var/lib/run/made-at-start\n"
               "cat <<EOF\nUsage: not-run\nEOF\n/tmp/x/private-tmp\n")
    data = script(tmp_path / "data.sh", "#!/bin/sh\nsha1sum x\n")
    c = closure_of(tmp_path, contents=[str(s), str(helper), str(data)], units=[unit(str(s))])
    got = {str(p): n for p, n in c.nodes.items()}
    for name, by in (("id", s), ("mkdir", s), ("cat", s), ("readlink", helper)):
        found = scripts.which(name)
        assert found is not None and found in got, name
        assert got[found].reason == f"run by script {by}" and got[found].executed, name
    assert got[str(helper)].executed
    assert scripts.which("logger") in got  # inside a function the script defines
    assert not any(p.endswith(("/sha1sum", "/not-run", "/log")) for p in got)
    warned = [w for w in c.warnings if str(s) in w and "no-such-xyz-prog" in w]
    assert len(warned) == 1 and "made-at-start" not in warned[0], c.warnings
    assert "private-tmp" not in warned[0], c.warnings


def test_a_shell_script_finds_a_program_the_spec_places(tmp_path: Path) -> None:
    tool = script(tmp_path / "tool", "#!/bin/sh\ntrue\n")
    s = script(tmp_path / "run", "#!/bin/sh\nmy-own-xyz-tool\n")
    c = closure_of(tmp_path, contents=[str(s), {"source": str(tool),
                                                "target": "/usr/local/bin/my-own-xyz-tool"}],
                   units=[unit(str(s))])
    assert c.nodes[P("/usr/local/bin/my-own-xyz-tool")].executed  # run, so its #! followed
    assert not any("my-own-xyz-tool" in w for w in c.warnings), c.warnings


def test_a_sourced_files_functions_are_the_scripts(tmp_path: Path, outside_tmp: Path) -> None:
    """mariadb's debian-start calls functions of the file it sources: not programs; what the
    sourced file runs is run, and the file itself is needed in the image."""
    inc = outside_tmp / "functions.sh"
    inc.write_text("check_all() { basename x; }\n. /nowhere/xyz.sh\n")
    s = script(tmp_path / "run", f"#!/bin/sh\n. {inc}\ncheck_all\n")
    c = closure_of(tmp_path, contents=[str(s)], units=[unit(str(s))])
    assert c.nodes[P(str(inc))].reason == f"sourced by script {s}"
    assert not c.nodes[P(str(inc))].executed
    assert scripts.which("basename") in paths(c)
    assert not any("check_all" in w for w in c.warnings), c.warnings
    needs, sourced = scripts.script_needs(s.read_bytes(), lambda p: None)
    assert needs == ["check_all"] and sourced == []  # without the file: a program as far as known
