"""The unit syntax table (tests/test_unit_syntax.py) read by real systemd 247, 252 and 257.

Every case is written to /run/systemd/system in a booted container; after one
``daemon-reload`` systemd's own reading comes back over D-Bus: LoadState, and
for each ``Exec*=`` directive the ``Exec*Ex`` property (path, argv, flags) it
parsed. It must be the builder's reading: the same load verdict, the same
commands with the same argv. Each release's readings (with what systemd logged)
are written to LOG_DIR/unit-syntax-SUITE.json for the TESTING.md table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from test_unit_syntax import CASES, our_reading

from e2e.conftest import LOG_DIR
from portable_service.harness.nspawn import Container
from portable_service.unitfile import Command, simplify_path
from portable_service.units import EXEC_DIRECTIVES

pytestmark = pytest.mark.e2e

UNIT_DIR = "run/systemd/system"


def unit_name(case_id: str) -> str:
    return f"us-{case_id}{CASES[case_id].suffix}"


@dataclass(frozen=True)
class SystemdReading:
    load_state: str
    load_error: str
    commands: dict[str, list[Command]]
    log: list[str]  # what systemd logged about the unit, each line once

    @property
    def loads(self) -> bool:
        return self.load_state == "loaded"


def _busctl(c: Container, *args: str) -> Any:
    result = c.run("busctl", "--json=short", *args, check=True)
    return json.loads(result.stdout)["data"]


def read_back(c: Container, case_id: str) -> SystemdReading:
    name = unit_name(case_id)
    [path] = _busctl(c, "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                     "org.freedesktop.systemd1.Manager", "LoadUnit", "s", name)

    def prop(interface: str, prop_name: str) -> Any:
        return _busctl(c, "get-property", "org.freedesktop.systemd1", path,
                       f"org.freedesktop.systemd1.{interface}", prop_name)

    commands: dict[str, list[Command]] = {}
    if name.endswith(".service"):
        for directive in EXEC_DIRECTIVES:
            # (path, argv, flags, timestamps...): the Ex variant carries the flags by name
            found = [Command(e[0], tuple(e[1]), tuple(e[2])) for e in prop("Service",
                                                                            f"{directive}Ex")]
            if found:
                commands[directive] = found
    log: list[str] = []
    for line in c.journal(name).splitlines():
        if line and line not in log:
            log.append(line)
    return SystemdReading(prop("Unit", "LoadState"), prop("Unit", "LoadError")[1], commands, log)


@pytest.fixture(scope="module")
def readings(container: Container) -> dict[str, SystemdReading]:
    c = container
    folder = c.root / UNIT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for case_id, case in CASES.items():
        (folder / unit_name(case_id)).write_bytes(case.text.encode("utf-8"))
    c.run("systemctl", "daemon-reload", check=True)
    out = {case_id: read_back(c, case_id) for case_id in CASES}
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    record = {"suite": c.release.suite, "systemd": c.release.systemd, "cases": {
        case_id: {"load_state": r.load_state, "load_error": r.load_error, "log": r.log,
                  "commands": {d: [[x.path, list(x.argv), list(x.flags)] for x in cmds]
                               for d, cmds in r.commands.items()}}
        for case_id, r in out.items()}}
    (LOG_DIR / f"unit-syntax-{c.release.suite}.json").write_text(
        json.dumps(record, indent=1, ensure_ascii=False))
    return out


def as_systemd_shows(command: Command, systemd: int) -> Command:
    """Our command as the release's systemd shows it once loaded.

    Specifiers are systemd's to resolve at load time ('%%' is '%'; the table uses
    no other). systemd 247's path_simplify() keeps '/./' (252 drops it).
    """
    path = command.path
    if systemd < 252 and simplify_path(command.argv[0]) == command.path:
        path = simplify_path(command.argv[0], kill_dots=False)
    return Command(path.replace("%%", "%"), tuple(a.replace("%%", "%") for a in command.argv),
                   command.flags)


@pytest.mark.parametrize("case_id", list(CASES))
def test_systemd_reads_what_we_read(container: Container, readings: dict[str, SystemdReading],
                                    case_id: str) -> None:
    case = CASES[case_id]
    systemd = readings[case_id]
    ours = our_reading(unit_name(case_id), case.text)
    where = f"{case_id} on {container.release.suite}: {systemd.load_state} {systemd.log}"
    assert systemd.loads == ours.loads == case.loads, where
    expected = {d: [as_systemd_shows(c, container.release.systemd) for c in cmds]
                for d, cmds in ours.commands.items()}
    assert systemd.commands == expected, where
    # where systemd logs a complaint, the builder either refuses the unit or reads a
    # warning-only line the same way (unknown escapes, kept with their backslash)
    if case.error is None and systemd.log:
        assert all("Ignoring unknown escape sequences" in line for line in systemd.log), where
