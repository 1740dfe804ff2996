"""Unit file syntax: the builder reads every unit as systemd does, or refuses to build.

CASES is the table: each unit text with what systemd makes of it (does the
unit load, which commands with which argv and flags) and what the builder says
(builds, or the UnitError it raises). The same table runs on systemd 247, 252
and 257 in tests/e2e/test_unit_syntax.py; TESTING.md "Unit file syntax" lists
the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from portable_service.builder.spec import spec_from_mapping
from portable_service.builder.units import (
    SECTION_EXEC_DIRECTIVES,
    Unit,
    exec_commands,
    load_units,
    read_unit_file,
)
from portable_service.errors import UnitError
from portable_service.rules.unitfile import (
    LONG_LINE_MAX,
    UNIT_SECTIONS,
    Command,
    Severity,
    extract_first_word,
    parse_exec,
    physical_lines,
    read_unit_text,
)

ONESHOT = "[Service]\nType=oneshot\n"


def cmd(path: str, *args: str, flags: tuple[str, ...] = ()) -> Command:
    return Command(path, (path, *args), flags)


def named(path: str, argv0: str, *args: str, flags: tuple[str, ...] = ()) -> Command:
    """A command run with '@': argv[0] is not the path."""
    return Command(path, (argv0, *args), flags)


@dataclass(frozen=True)
class Case:
    text: str
    loads: bool = True  # does systemd load the unit (LoadState=loaded)?
    commands: dict[str, list[Command]] = field(default_factory=dict)  # as systemd keeps them
    error: str | None = None  # our build error (a regex), None: the unit builds
    suffix: str = ".service"
    note: str = ""  # for the TESTING.md table


CASES: dict[str, Case] = {
    "plain": Case("[Service]\nExecStart=/bin/echo a b\n",
                  commands={"ExecStart": [cmd("/bin/echo", "a", "b")]}),
    "bom": Case("\ufeff[Service]\nExecStart=/bin/echo a\n",
                commands={"ExecStart": [cmd("/bin/echo", "a")]},
                note="the byte-order mark is cut off the first line"),
    "bom-before-comment": Case(
        "\ufeff# note\n[Service]\nExecStart=/bin/echo a\n",
        commands={"ExecStart": [cmd("/bin/echo", "a")]},
        error=r"line 1: systemd drops it: \"Assignment outside of section",
        note="the comment test runs before the BOM is cut: '# note' is a setting"),
    "backslash-at-eof": Case("[Service]\nExecStart=/bin/echo a \\",
                             commands={"ExecStart": [cmd("/bin/echo", "a")]},
                             note="an open continuation at the end is read"),
    "backslash-newline-at-eof": Case("[Service]\nExecStart=/bin/echo a \\\n",
                                     commands={"ExecStart": [cmd("/bin/echo", "a")]}),
    "comment-in-continuation": Case(
        "[Service]\nExecStart=/bin/echo a \\\n# note\n  ; note\n  b\n",
        commands={"ExecStart": [cmd("/bin/echo", "a", "b")]},
        note="comment lines inside a continuation are dropped"),
    "empty-line-ends-continuation": Case(
        "[Service]\nExecStart=/bin/echo a \\\n\nExecStop=/bin/echo b\n",
        commands={"ExecStart": [cmd("/bin/echo", "a")], "ExecStop": [cmd("/bin/echo", "b")]}),
    "crlf": Case("[Service]\r\nExecStart=/bin/echo a \\\r\n b\r\n",
                 commands={"ExecStart": [cmd("/bin/echo", "a", "b")]}),
    "cr-only": Case("[Service]\rExecStart=/bin/echo a \\\r b\r",
                    commands={"ExecStart": [cmd("/bin/echo", "a", "b")]}),
    "lf-cr-is-one-line-end": Case("[Service]\nExecStart=/bin/echo a \\\n\r b\n",
                                  commands={"ExecStart": [cmd("/bin/echo", "a", "b")]}),
    "cr-cr-is-two-line-ends": Case(
        "[Service]\nExecStart=/bin/echo a \\\r\r b\n",
        commands={"ExecStart": [cmd("/bin/echo", "a")]},
        error=r"line 4: systemd drops it: \"Missing '=', ignoring line.\""),
    "whitespace": Case("[Service]\n\t ExecStart \t=\t /bin/echo   a\t\tb  \t\n",
                       commands={"ExecStart": [cmd("/bin/echo", "a", "b")]}),
    "c-escapes": Case(
        "[Service]\nExecStart=/bin/echo \\x65 \"a\\tb\" 'c\\x20d' \\101 \\u00e9 \\s \"\\\"\"\n",
        commands={"ExecStart": [cmd("/bin/echo", "e", "a\tb", "c d", "A", "\u00e9", " ", '"')]},
        note="escapes work in single quotes too"),
    "unknown-escapes-kept": Case(
        "[Service]\nExecStart=/bin/echo \\q a\\ b \\x00 b\\; \\x4\n",
        commands={"ExecStart": [cmd("/bin/echo", "\\q", "a\\ b", "\\x00", "b\\;", "\\x4")]},
        note="kept with their backslash (a warning)"),
    "quotes": Case(
        "[Service]\nExecStart=/bin/echo \"two words\" 'single quoted' \"a\"b'c' \"\" $FOO\n",
        commands={"ExecStart": [cmd("/bin/echo", "two words", "single quoted", "abc", "",
                                    "$FOO")]}),
    "trailing-backslash-space": Case("[Service]\nExecStart=/bin/echo a\\ \n",
                                     commands={"ExecStart": [cmd("/bin/echo", "a\\")]},
                                     note="not a continuation: a blank follows the '\\'"),
    "double-backslash-at-end": Case("[Service]\nExecStart=/bin/echo a\\\\\n",
                                    commands={"ExecStart": [cmd("/bin/echo", "a\\")]}),
    "semicolons": Case(
        ONESHOT + "ExecStart=/bin/echo a ; /bin/echo b\\; ; ; /bin/echo \\; c;\n",
        commands={"ExecStart": [cmd("/bin/echo", "a"), cmd("/bin/echo", "b\\;"),
                                cmd("/bin/echo", ";", "c;")]},
        note="a lone ';' splits; '\\;' alone is a ';' argument"),
    "semicolon-first": Case(ONESHOT + "ExecStart=; /bin/echo a ;\nExecStart=';' /bin/echo b\n",
                            commands={"ExecStart": [cmd("/bin/echo", "a"),
                                                    cmd("/bin/echo", "b")]}),
    "prefixes": Case(
        ONESHOT + "ExecStart=-@:/bin/echo name x\nExecStart=+/bin/true\nExecStart=!/bin/true\n"
        "ExecStart=!!/bin/true\nExecStart='-/bin/echo' y\n",
        commands={"ExecStart": [
            named("/bin/echo", "name", "x", flags=("ignore-failure", "no-env-expand")),
            cmd("/bin/true", flags=("privileged",)), cmd("/bin/true", flags=("no-setuid",)),
            cmd("/bin/true", flags=("ambient",)), cmd("/bin/echo", "y", flags=("ignore-failure",)),
        ]}),
    "relative-name": Case("[Service]\nExecStart=true\n", commands={"ExecStart": [cmd("true")]},
                          note="looked up in systemd's PATH when it runs"),
    "double-slash": Case("[Service]\nExecStart=//usr//bin/echo x\n",
                         commands={"ExecStart": [Command("/usr/bin/echo",
                                                         ("//usr//bin/echo", "x"), ())]}),
    "dot-in-path": Case("[Service]\nExecStart=/usr/./bin/echo x\n",
                        commands={"ExecStart": [Command("/usr/bin/echo",
                                                        ("/usr/./bin/echo", "x"), ())]},
                        note="247 keeps '/./' in the path it runs (the same file)"),
    "percent": Case("[Service]\nExecStart=/bin/echo 100%%\n",
                    commands={"ExecStart": [cmd("/bin/echo", "100%%")]},
                    note="specifiers are systemd's to resolve: it shows 100%"),
    "empty-resets": Case(
        ONESHOT + "ExecStart=/bin/false\nExecStart=\nExecStart=/bin/echo x\nExecStart=  \n"
        "ExecStart=/bin/echo y\n",
        commands={"ExecStart": [cmd("/bin/echo", "y")]}),
    "plus-bang": Case("[Service]\nExecStart=+!/bin/true\n", loads=False,
                      error=r"refuses to load the unit: \"Neither a valid executable name nor "
                            r"an absolute path: !/bin/true\"",
                      note="'+' and '!' do not combine"),
    "pipe-prefix": Case("[Service]\nExecStart=|/bin/true\n", loads=False,
                        error=r"Neither a valid executable name nor an absolute path: \|/bin/true",
                        note="'|' is a prefix from 258 on"),
    "at-without-argv0": Case("[Service]\nExecStart=@/bin/echo\n", loads=False,
                             error=r"Empty executable name or zeroeth argument: @/bin/echo"),
    "dash-drops-bad-command": Case(
        "[Service]\nExecStart=/bin/true\nExecStartPre=-@/bin/echo\n",
        commands={"ExecStart": [cmd("/bin/true")]},
        error=r"ExecStartPre= systemd drops it: \"Empty executable name or zeroeth argument, "
              r"ignoring"),
    "dash-dash": Case("[Service]\nExecStart=/bin/true\nExecStartPre=--/bin/true\n",
                      commands={"ExecStart": [cmd("/bin/true")]},
                      error=r"drops it: \"Neither a valid executable name nor an absolute path, "
                            r"ignoring: -/bin/true"),
    "unbalanced-quote": Case("[Service]\nExecStart=/bin/true 'a\n", loads=False,
                             error=r"refuses to load the unit: \"Unbalanced quoting"),
    "unbalanced-first-word": Case(
        "[Service]\nExecStart=/bin/true\nExecStartPre='/bin/x\n",
        commands={"ExecStart": [cmd("/bin/true")]},
        error=r"line 3: ExecStartPre= systemd drops it: \"Unbalanced quoting, ignoring"),
    "unbalanced-after-semicolon": Case(
        ONESHOT + "ExecStart=/bin/echo a ; -/bin/echo 'b\n",
        commands={"ExecStart": [cmd("/bin/echo", "a")]},
        error=r"drops it: \"Unbalanced quoting, ignoring",
        note="the command before the ';' stays"),
    "quote-in-path": Case("[Service]\nExecStart=/bin/ec\\x22ho\n", loads=False,
                          error=r"Executable name contains special characters: /bin/ec\"ho"),
    "directory": Case("[Service]\nExecStart=/bin/\n", loads=False,
                      error=r"Executable path specifies a directory: /bin/"),
    "empty-path": Case("[Service]\nExecStart=''\n", loads=False,
                       error=r"Empty path in command line"),
    "no-section": Case("ExecStart=/bin/true\n", loads=False, error=r"has no \[Section\] header",
                       note="systemd: Service has no ExecStart=, ExecStop=, or SuccessAction=. "
                            "Refusing."),
    "no-section-target": Case("Description=x\n", suffix=".target",
                              error=r"has no \[Section\] header",
                              note="a target with nothing in it loads"),
    "before-section": Case("ExecStart=/bin/false\n[Service]\nExecStart=/bin/true\n",
                           commands={"ExecStart": [cmd("/bin/true")]},
                           error=r"line 1: systemd drops it: \"Assignment outside of section"),
    "unknown-section": Case("[Service]\nExecStart=/bin/true\n[Foo]\nExecStart=/bin/false\n",
                            commands={"ExecStart": [cmd("/bin/true")]},
                            error=r"line 3: systemd drops it: \"Unknown section 'Foo'"),
    "x-section": Case("[Service]\nExecStart=/bin/true\n[X-Foo]\nExecStart=/bin/false\n",
                      commands={"ExecStart": [cmd("/bin/true")]}),
    "lowercase-section": Case("[service]\nExecStart=/bin/true\n", loads=False,
                              error=r"Unknown section 'service'"),
    "spaced-section": Case("[ Service ]\nExecStart=/bin/true\n", loads=False,
                           error=r"Unknown section ' Service '"),
    "open-section-header": Case("[Service\nExecStart=/bin/true\n", loads=False,
                                error=r"refuses to load the unit: \"Invalid section header"),
    "quote-in-section": Case("[Ser\"vice]\nExecStart=/bin/true\n", loads=False,
                             error=r"Bad characters in section header",
                             note="247: an unknown section (and no ExecStart=)"),
    "missing-equals": Case("[Service]\nExecStart=/bin/true\nExecStop /bin/false\n",
                           commands={"ExecStart": [cmd("/bin/true")]},
                           error=r"line 3: systemd drops it: \"Missing '=', ignoring line"),
    "missing-key": Case("[Service]\nExecStart=/bin/true\n=x\n",
                        commands={"ExecStart": [cmd("/bin/true")]},
                        error=r"Missing key name before '='"),
    "include": Case("[Service]\nExecStart=/bin/true\n.include /etc/x.conf\n",
                    commands={"ExecStart": [cmd("/bin/true")]},
                    error=r"Missing '='.*systemd has no \.include"),
    "socket-exec": Case(
        "[Socket]\nListenStream=127.0.0.1:9999\nExecStartPre=-/bin/echo a 'b c'\n"
        "ExecStopPre=/bin/echo d ; /bin/echo e\n", suffix=".socket",
        commands={"ExecStartPre": [cmd("/bin/echo", "a", "b c", flags=("ignore-failure",))],
                  "ExecStopPre": [cmd("/bin/echo", "d"), cmd("/bin/echo", "e")]},
        note="a socket's own command lines"),
    "longest-line": Case("[Service]\n#" + "x" * (LONG_LINE_MAX - 2) + "\nExecStart=/bin/true\n",
                         commands={"ExecStart": [cmd("/bin/true")]},
                         note="1 MiB less one byte"),
    "line-too-long": Case("[Service]\n#" + "x" * (LONG_LINE_MAX - 1) + "\nExecStart=/bin/true\n",
                          loads=False, error=r"line 2: systemd refuses to load the unit: "
                                             r"\"Line too long\"", note="1 MiB"),
}


def exec_directives(unit_name: str) -> list[tuple[str, str]]:
    """(section, directive) of every command line the unit's type reads, in our order."""
    suffix = unit_name[unit_name.rfind("."):]
    return [(section, d) for section in UNIT_SECTIONS[suffix]
            for d in SECTION_EXEC_DIRECTIVES.get(section, ())]


@dataclass(frozen=True)
class Reading:
    loads: bool
    commands: dict[str, list[Command]]


def our_reading(name: str, text: str) -> Reading:
    """What the builder's parser says systemd makes of a unit file.

    A unit loads unless something in it is refused; a service also needs an
    ExecStart= or ExecStop= (service_verify(): "Service has no ExecStart=,
    ExecStop=, or SuccessAction=. Refusing.").
    """
    suffix = name[name.rfind("."):]
    read = read_unit_text(text, UNIT_SECTIONS[suffix])
    refused = any(f.severity is Severity.REFUSED for f in read.findings)
    unit = Unit(name=name, text=text, origin="test", sections=read.sections)
    commands: dict[str, list[Command]] = {}
    for section, directive in exec_directives(name):
        for value in unit.values(section, directive):
            line = parse_exec(value)
            refused |= any(f.severity is Severity.REFUSED for f in line.findings)
            commands.setdefault(directive, []).extend(line.commands)
    commands = {d: c for d, c in commands.items() if c}
    if suffix == ".service" and not (commands.get("ExecStart") or commands.get("ExecStop")):
        refused = True
    return Reading(not refused, commands if not refused else {})


@pytest.mark.parametrize("case_id", list(CASES))
def test_reading_matches_the_table(case_id: str) -> None:
    case = CASES[case_id]
    got = our_reading(f"us-{case_id}{case.suffix}", case.text)
    assert got.loads == case.loads
    assert got.commands == case.commands


@pytest.mark.parametrize("case_id", list(CASES))
def test_build_verdict(tmp_path: Path, case_id: str) -> None:
    """A unit systemd refuses, or reads with a line dropped, does not build."""
    case = CASES[case_id]
    name = f"demo-{case_id}{case.suffix}"
    if len(case.text) > 4096:
        # a spec's inline text is at most 4096 bytes and a unit file at most 1 MiB: the
        # line-length cases reach the reader only when it is called directly
        if case.error is None:
            read_unit_file(name, case.text, "inline")
        else:
            with pytest.raises(UnitError, match=case.error):
                read_unit_file(name, case.text, "inline")
        return
    spec = spec_from_mapping({"pname": "demo", "version": "1",
                              "units": [{"name": name, "text": case.text}]}, tmp_path)
    if case.error is None:
        [unit] = load_units(spec)
        assert [(c.argv[0], c.argv0, c.argv[1:], c.flags) for c in exec_commands(unit)] == [
            (c.path, c.argv[0], c.argv[1:], c.flags) for _, d in exec_directives(name)
            for c in case.commands.get(d, [])]
    else:
        assert not (case.loads and case.error is None)
        with pytest.raises(UnitError, match=case.error) as e:
            load_units(spec)
        assert e.value.hint  # every refusal says how to fix it


def test_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "demo.service"
    path.write_text("[Service]\nExecStart=/bin/true\n\nExecStartPre=+!/bin/x\n")
    spec = spec_from_mapping({"pname": "demo", "version": "1", "units": [str(path)]}, tmp_path)
    with pytest.raises(UnitError) as e:
        load_units(spec)
    assert str(e.value).startswith(f"{path} line 4: ExecStartPre= systemd refuses to load")
    assert "'+' and '!' do not combine" in str(e.value)


def test_drop_in_is_read_with_its_unit_type(tmp_path: Path) -> None:
    (tmp_path / "demo.service").write_text("[Service]\nExecStart=/bin/true\n")
    d = tmp_path / "demo.service.d"
    d.mkdir()
    (d / "a.conf").write_text("[Socket]\nListenStream=80\n")
    spec = spec_from_mapping({"pname": "demo", "version": "1",
                              "units": ["demo.service", "demo.service.d"]}, tmp_path)
    with pytest.raises(UnitError, match=r"a.conf line 1: systemd drops it: \"Unknown section "
                                        r"'Socket'\. Ignoring\.\"; this unit type reads \[Unit\], "
                                        r"\[Service\], \[Install\]"):
        load_units(spec)


def test_old_misreadings_are_gone() -> None:
    """What the loose reader got wrong: the program is now found."""
    for text in ("\ufeff[Service]\nExecStart=/usr/bin/demo\n",
                 "[Service]\nExecStart=/usr/bin/demo \\",
                 "[Service]\nExecStart=/usr/bin/d\\x65mo\n",
                 "[Service]\nExecStart=/usr/bin/demo \\\n# comment\n"):
        unit = Unit(name="demo.service", text=text, origin="test",
                    sections=read_unit_text(text, UNIT_SECTIONS[".service"]).sections)
        assert [c.argv for c in exec_commands(unit)] == [("/usr/bin/demo",)], repr(text)


@pytest.mark.parametrize(("text", "lines"), [
    ("a\nb", ["a", "b"]), ("a\r\nb\r\n", ["a", "b"]), ("a\n\rb", ["a", "b"]),
    ("a\r\rb", ["a", "", "b"]), ("a\n\nb\n", ["a", "", "b"]), ("a\0b", ["a", "b"]),
    ("a\r\n\0b", ["a", "b"]), ("", []), ("\n", [""]),
])
def test_physical_lines(text: str, lines: list[str]) -> None:
    assert physical_lines(text) == lines


@pytest.mark.parametrize(("value", "words"), [
    ("a b", ["a", "b"]), ("  a  ", ["a"]), ("'a b'c", ["a bc"]), ('"\\x41\\n"', ["A\n"]),
    ("\\xff", ["\udcff"]),  # one raw byte, not UTF-8: kept as Python keeps such bytes
    ("\\U0001F600", ["\U0001F600"]), ("\\400", ["\\400"]), ("\\U00110000", ["\\U00110000"]),
])
def test_extract_words(value: str, words: list[str]) -> None:
    pos: int | None = 0
    got = []
    while True:
        try:
            word, pos = extract_first_word(value, pos, relax=False)
        except Exception:  # an invalid escape: systemd retries keeping it
            word, pos = extract_first_word(value, pos, relax=True)
        if word is None:
            break
        got.append(word)
    assert got == words


def test_drop_in_with_byte_order_mark_is_merged(tmp_path: Path) -> None:
    """systemd cuts one BOM per file: a drop-in's BOM must not land inside the merged unit."""
    (tmp_path / "demo.service").write_text("\ufeff[Service]\nExecStart=/bin/true\n")
    d = tmp_path / "demo.service.d"
    d.mkdir()
    (d / "a.conf").write_text("\ufeff[Service]\nExecStartPre=/bin/echo pre\n")
    spec = spec_from_mapping({"pname": "demo", "version": "1",
                              "units": ["demo.service", "demo.service.d"]}, tmp_path)
    [unit] = load_units(spec)
    assert unit.text.count("\ufeff") == 1
    assert [c.argv for c in exec_commands(unit)] == [("/bin/true",), ("/bin/echo", "pre")]


def test_cli_reports_one_line(cli, tmp_path: Path) -> None:
    """The CLI prints the refusal as one line, exit 2, and writes no image."""
    (tmp_path / "demo.service").write_text("[Service]\nExecStart=/bin/true\nExecStop /bin/x\n")
    proc = cli("build", "--pname", "demo", "--version", "1", "--unit", "demo.service")
    assert proc.returncode == 2
    assert proc.stderr == (
        f"portable-service: error: {tmp_path}/demo.service line 3: systemd drops it: "
        "\"Missing '=', ignoring line.\"; write it as Key=value\n")
    assert not list(tmp_path.glob("*.raw"))
