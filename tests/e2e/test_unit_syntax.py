"""The unit syntax table (tests/rules/test_unit_syntax.py) read by real systemd 247, 252 and 257.

Every case is written to /run/systemd/system in a booted container; after one
``daemon-reload`` systemd's own reading comes back over D-Bus: LoadState, and
for each ``Exec*=`` directive the ``Exec*Ex`` property (path, argv, flags) it
parsed. It must be the builder's reading: the same load verdict, the same
commands with the same argv. Each release's readings (with what systemd logged)
are written to LOG_DIR/unit-syntax-SUITE.json for the TESTING.md table.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from portable_service.builder.units import EXEC_DIRECTIVES, SECTION_EXEC_DIRECTIVES, Unit
from portable_service.harness.nspawn import Container
from portable_service.rules.unitfile import UNIT_SECTIONS, Command, read_unit_text, simplify_path
from tests.e2e.conftest import LOG_DIR
from tests.rules.test_unit_syntax import CASES, ONESHOT, our_reading

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


def read_back(c: Container, name: str, directives: Sequence[str] = EXEC_DIRECTIVES,
              with_log: bool = True) -> SystemdReading:
    [path] = _busctl(c, "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                     "org.freedesktop.systemd1.Manager", "LoadUnit", "s", name)

    def prop(interface: str, prop_name: str) -> Any:
        return _busctl(c, "get-property", "org.freedesktop.systemd1", path,
                       f"org.freedesktop.systemd1.{interface}", prop_name)

    commands: dict[str, list[Command]] = {}
    if name.endswith(".service"):
        for directive in directives:
            # (path, argv, flags, timestamps...): the Ex variant carries the flags by name
            found = [Command(e[0], tuple(e[1]), tuple(e[2]))
                     for e in prop("Service", f"{directive}Ex")]
            if found:
                commands[directive] = found
    elif name.endswith(".socket"):
        for directive in SECTION_EXEC_DIRECTIVES["Socket"]:
            # a socket has no Ex variants: (path, argv, ignore_failure, timestamps...)
            found = [Command(e[0], tuple(e[1]), ("ignore-failure",) if e[2] else ())
                     for e in prop("Socket", directive)]
            if found:
                commands[directive] = found
    log: list[str] = []
    for line in c.journal(name).splitlines() if with_log else []:
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
    out = {case_id: read_back(c, unit_name(case_id)) for case_id in CASES}
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    record = {"suite": c.release.suite, "systemd": c.release.systemd, "cases": {
        case_id: {"load_state": r.load_state, "load_error": r.load_error, "log": r.log,
                  "commands": {d: [[x.path, list(x.argv), list(x.flags)] for x in cmds]
                               for d, cmds in r.commands.items()}}
        for case_id, r in out.items()}}
    (LOG_DIR / f"unit-syntax-{c.release.suite}.json").write_text(
        json.dumps(record, indent=1, ensure_ascii=False))
    return out


def as_systemd_shows(command: Command, systemd: int, socket: bool = False) -> Command:
    """Our command as the release's systemd shows it once loaded.

    Specifiers are systemd's to resolve at load time ('%%' is '%'; the table uses
    no other). systemd 247's path_simplify() keeps '/./' (252 drops it). A socket's
    command lines show only whether failures are ignored.
    """
    path = command.path
    if systemd < 252 and simplify_path(command.argv[0]) == command.path:
        path = simplify_path(command.argv[0], kill_dots=False)
    flags = tuple(f for f in command.flags if f == "ignore-failure") if socket else command.flags
    return Command(path.replace("%%", "%"), tuple(a.replace("%%", "%") for a in command.argv),
                   flags)


@pytest.mark.parametrize("case_id", list(CASES))
def test_systemd_reads_what_we_read(container: Container, readings: dict[str, SystemdReading],
                                    case_id: str) -> None:
    case = CASES[case_id]
    systemd = readings[case_id]
    ours = our_reading(unit_name(case_id), case.text)
    where = f"{case_id} on {container.release.suite}: {systemd.load_state} {systemd.log}"
    assert systemd.loads == ours.loads == case.loads, where
    expected = {d: [as_systemd_shows(c, container.release.systemd, socket=case.suffix == ".socket")
                    for c in cmds]
                for d, cmds in ours.commands.items()}
    if systemd.loads:  # a refused unit's half-read settings mean nothing
        assert systemd.commands == expected, where
    # where systemd logs a complaint, the builder either refuses the unit or reads a
    # warning-only line the same way (unknown escapes, kept with their backslash)
    if case.error is None and systemd.log:
        assert all("Ignoring unknown escape sequences" in line for line in systemd.log), where


# -- beyond the table: seeded random units, read by systemd and by us

_WORDS = ["/bin/echo", "a", "b c", "'", '"', "\\", ";", " ", "\t", "\\x65", "\\x", "\\0", "\\101",
          "\\u00e9", "\\U0001F600", "\\n", "\\s", "\\;", "-", "@", ":", "+", "!", "%%", "$A", "x;",
          "'q q'", '"d d"', "\\\\", " ; ", '\\"', "\\'", "'\\x41'", "\\x4", "\\400", "\\u0000",
          "\\q"]
_PREFIXES = ["", "-", "@", ":", "+", "!", "!!", "-@", "@-", "+!", "!+", "--", "::", "@@", "!!!",
             "'", '"']
_PROGRAMS = ["/bin/echo", "echo", "/bin//echo", "'/bin/echo'", '/bin/ec"ho"']
_LINES = ["[Service]", "[Service]", "[service]", "[X-A]", "[Unit]", "[Foo]", " [Service] ",
          "Type=oneshot", "Type=oneshot", "ExecStart=/bin/echo a \\", "ExecStart=/bin/echo a\\\\",
          "# c \\", "; c", "", "  b \\", "ExecStart=/bin/echo z", "\ufeff", "\ufeff[Service]",
          "\ufeff#x", "=x", "ExecStart=", " c", "ExecStartPre=/bin/echo p",
          "ExecStartPre=/bin/echo 'q \\", "  'r", "\t", " \\", "\\", "ExecStartPre=-/bin/echo\\",
          "Description=d", "x=y", "ExecStartPre", "[Service"]
_LINE_ENDS = ["\n", "\n", "\n", "\r\n", "\r", "\n\r", "\r\r", "\n\n"]
RANDOM_UNITS = 150


def random_units(seed: int = 1) -> dict[str, str]:
    """Exec lines of random words and prefixes, and files of random lines and line ends."""
    rng = random.Random(seed)
    units = {}
    for i in range(RANDOM_UNITS):
        value = rng.choice(_PREFIXES) + rng.choice(_PROGRAMS)
        for _ in range(rng.randint(0, 8)):
            value += ("" if rng.random() < 0.5 else " ") + rng.choice(_WORDS)
        units[f"us-exec{i}.service"] = ONESHOT + f"ExecStart={value}\n"
    for i in range(RANDOM_UNITS):
        text = "".join(rng.choice(_LINES) + rng.choice(_LINE_ENDS)
                       for _ in range(rng.randint(1, 10)))
        units[f"us-file{i}.service"] = text.rstrip("\r\n") if rng.random() < 0.3 else text
    return units


def test_random_units_read_alike(container: Container) -> None:
    c = container
    units = random_units()
    folder = c.root / UNIT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        (folder / name).write_bytes(text.encode("utf-8"))
    c.run("systemctl", "daemon-reload", check=True)
    mismatches = []
    loaded = 0
    for name, text in units.items():
        systemd = read_back(c, name, directives=("ExecStartPre", "ExecStart"), with_log=False)
        ours = our_reading(name, text)
        loads = ours.loads
        types = Unit(name=name, text=text, origin="test",
                     sections=read_unit_text(text, UNIT_SECTIONS[".service"]).sections
                     ).values("Service", "Type")
        if len(ours.commands.get("ExecStart", [])) > 1 and types[-1:] != ["oneshot"]:
            loads = False  # "Service has more than one ExecStart= setting, which is only
            # allowed for Type=oneshot services. Refusing." (not a syntax rule)
        expected = {d: [as_systemd_shows(cmd, c.release.systemd) for cmd in cmds]
                    for d, cmds in ours.commands.items()} if loads else {}
        loaded += systemd.loads
        # a refused unit's half-read settings mean nothing: only the verdict is compared
        if systemd.loads != loads or (loads and systemd.commands != expected):
            mismatches.append((text, systemd.load_state, systemd.commands, expected))
    assert mismatches == []
    # the random units hold both kinds, or the comparison proves little
    assert 0.2 * len(units) < loaded < 0.8 * len(units)
