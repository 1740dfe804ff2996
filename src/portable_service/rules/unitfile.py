"""Unit files read the way systemd reads them, and its ``Exec*=`` command lines.

Mirrors systemd's own code, checked line by line against systemd 247, 252 and
257 (tests/e2e/test_unit_syntax.py, TESTING.md "Unit file syntax"):

- ``config_parse()`` / ``parse_line()`` in src/shared/conf-parser.c: lines end
  at ``\\n``, ``\\r`` or ``\\0`` (a pair of two different ones is one end, so
  CRLF is one); a comment line (``#`` or ``;`` after blanks) is dropped before
  anything else, even in the middle of a continuation; a UTF-8 byte-order mark
  is cut off the first line that has one (after the comment test, so a BOM
  before ``#`` makes that line a setting); a line ending in an unescaped ``\\``
  goes on in the next line, the ``\\`` turned into a space, and one still open
  at the end of the file is read as it is; keys and values are stripped of
  ``" \\t\\n\\r"`` only.
- ``extract_first_word()`` (src/basic/extract-word.c) with the flags
  ``config_parse_exec()`` (src/core/load-fragment.c) gives it,
  ``EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE``, retried with
  ``EXTRACT_UNESCAPE_RELAX`` (``extract_first_word_and_warn()``): quotes may
  open anywhere in a word, C escapes (``cunescape_one()`` in
  src/basic/escape.c) work inside quotes too, an unknown escape is kept as it
  stands, with its backslash.

What systemd refuses or drops is returned as a :class:`Finding` in systemd's
own words; :mod:`portable_service.builder.units` turns those into build errors.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

WHITESPACE = " \t\n\r"
COMMENTS = "#;"
BYTE_ORDER_MARK = "\ufeff"
# read_line(f, LONG_LINE_MAX, ...): a line of this many bytes or more fails the whole unit
# ("No buffer space available", LoadState=error), the same for a joined continuation.
LONG_LINE_MAX = 1024 * 1024
PATH_MAX = 4096
NAME_MAX = 255

# The sections each unit type reads (the unit vtables' .sections); any other section is
# skipped with "Unknown section 'X'. Ignoring.", silently when its name starts with "X-".
UNIT_SECTIONS: dict[str, tuple[str, ...]] = {
    ".service": ("Unit", "Service", "Install"),
    ".socket": ("Unit", "Socket", "Install"),
    ".target": ("Unit", "Install"),
    ".timer": ("Unit", "Timer", "Install"),
    ".path": ("Unit", "Path", "Install"),
    ".mount": ("Unit", "Mount", "Install"),
    ".swap": ("Unit", "Swap", "Install"),
}

# Exec prefix -> the flag systemd shows for it in ExecStartEx= and friends ('@' has none:
# it shows as argv[0] differing from the path).
EXEC_FLAG_NAMES = {
    "-": "ignore-failure",
    "+": "privileged",
    "!": "no-setuid",
    "!!": "ambient",
    ":": "no-env-expand",
}


class Severity(Enum):
    REFUSED = "refused"  # systemd does not load the unit at all
    IGNORED = "ignored"  # systemd drops the line (or part of it) and goes on
    WARNING = "warning"  # systemd reads it, with a warning; the reading here is the same


@dataclass(frozen=True)
class Finding:
    """Something systemd logs about a unit file, in its own words."""

    line: int
    severity: Severity
    message: str  # what systemd logs, e.g. "Assignment outside of section. Ignoring."
    hint: str  # how to write it so systemd reads what was meant


@dataclass(frozen=True)
class Assignment:
    section: str
    key: str
    value: str
    line: int  # the physical line the logical line starts on


@dataclass(frozen=True)
class UnitText:
    """A unit file as systemd reads it: the assignments it keeps and what it logs."""

    assignments: tuple[Assignment, ...]
    findings: tuple[Finding, ...]
    has_section: bool  # a [Section] header was seen (known or not)

    @property
    def sections(self) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for a in self.assignments:
            out.setdefault(a.section, []).append((a.key, a.value))
        return out


def physical_lines(text: str) -> list[str]:
    """The lines as systemd's read_line() splits them.

    Each of ``\\n``, ``\\r`` and ``\\0`` ends a line; following ones join that end
    as long as each kind comes once (``\\r\\n``, ``\\n\\r``, ``\\r\\n\\0``), so
    ``\\r\\r`` is two line ends and ``\\n\\r`` one.
    """
    lines: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        if text[i] not in "\n\r\0":
            i += 1
            continue
        lines.append(text[start:i])
        seen = {text[i]}
        i += 1
        while i < n and text[i] in "\n\r\0" and text[i] not in seen:
            seen.add(text[i])
            i += 1
        start = i
    if start < n:
        lines.append(text[start:])
    return lines


def _strip(s: str) -> str:
    return s.strip(WHITESPACE)


def _ends_escaped(s: str) -> bool:
    """Does ``s`` end in a backslash that is not itself escaped?"""
    escaped = False
    for c in s:
        escaped = (not escaped) and c == "\\"
    return escaped


def _string_is_safe(s: str) -> bool:
    """systemd's string_is_safe(): no control characters, quotes or backslashes."""
    return not any(ord(c) < 32 or c in "\"'\\\x7f" for c in s)


def read_unit_text(text: str, sections: Collection[str] | None = None) -> UnitText:
    """Read a unit file as systemd's config_parse() does.

    ``sections`` are the sections the unit's type reads (see :data:`UNIT_SECTIONS`);
    ``None`` keeps every section (for callers that do not know the type).
    """
    assignments: list[Assignment] = []
    findings: list[Finding] = []
    state = _ParseState()

    def done() -> UnitText:
        return UnitText(tuple(assignments), tuple(findings), state.has_section)

    # the open continuation, in pieces (joined once: a long one stays linear); each piece
    # but the last ends in the space that replaced its '\', so escapes never span two
    continuation: list[str] = []
    continuation_bytes = 0
    start_line = 0
    bom_seen = False
    for lineno, raw in enumerate(physical_lines(text), start=1):
        size = len(raw.encode("utf-8", "surrogatepass"))
        if size >= LONG_LINE_MAX:
            findings.append(Finding(lineno, Severity.REFUSED, "Line too long",
                                    "systemd reads lines of less than 1 MiB: split it"))
            return done()
        # comments go first, before the BOM is cut and whether or not a line continues
        if _strip(raw)[:1] in tuple(COMMENTS):
            continue
        line = raw
        if not bom_seen and line.startswith(BYTE_ORDER_MARK):
            line = line[len(BYTE_ORDER_MARK):]
            size -= len(BYTE_ORDER_MARK.encode())
            bom_seen = True
        if continuation and continuation_bytes + size > LONG_LINE_MAX:
            findings.append(Finding(lineno, Severity.REFUSED, "Continuation line too long",
                                    "systemd reads logical lines of at most 1 MiB"))
            return done()
        if not continuation:
            start_line = lineno
        if _ends_escaped(line):
            continuation.append(line[:-1] + " ")
            continuation_bytes += size
            continue
        logical = "".join(continuation) + line
        continuation, continuation_bytes = [], 0
        if not _parse_line(logical, start_line, sections, state, assignments, findings):
            return done()
    if continuation:
        # a '\' on the last line: systemd reads what it has (the '\' as a space)
        _parse_line("".join(continuation), start_line, sections, state, assignments, findings)
    return done()


@dataclass
class _ParseState:
    section: str | None = None
    section_ignored: bool = False
    has_section: bool = False


def _parse_line(text: str, lineno: int, sections: Collection[str] | None, state: _ParseState,
                assignments: list[Assignment], findings: list[Finding]) -> bool:
    """One logical line (parse_line()); False when systemd stops reading the file."""
    line = _strip(text)
    if not line:
        return True
    if line[0] == "[":
        if line[-1] != "]":
            findings.append(Finding(lineno, Severity.REFUSED, f"Invalid section header '{line}'",
                                    "close the header with ']'"))
            return False
        name = line[1:-1]
        state.has_section = True
        if not _string_is_safe(name):
            # 252 and later refuse the unit; 247 skips the section as unknown
            findings.append(Finding(lineno, Severity.REFUSED,
                                    f"Bad characters in section header '{line}'",
                                    "section names have no quotes, backslashes or control "
                                    "characters"))
            return False
        if sections is not None and name not in sections:
            if not name.startswith("X-"):
                known = ", ".join(f"[{s}]" for s in sections)
                findings.append(Finding(lineno, Severity.IGNORED,
                                        f"Unknown section '{name}'. Ignoring.",
                                        f"this unit type reads {known} (names are case-sensitive); "
                                        "name your own sections X-..."))
            state.section, state.section_ignored = None, True
            return True
        state.section, state.section_ignored = name, False
        return True
    if state.section is None:
        if not state.section_ignored:
            findings.append(Finding(lineno, Severity.IGNORED,
                                    "Assignment outside of section. Ignoring.",
                                    "put it under its section header, such as [Service]"))
        return True
    key, eq, value = line.partition("=")
    if not eq:
        hint = ("systemd has no .include: use a drop-in folder (NAME.service.d/*.conf)"
                if line.startswith(".include") else "write it as Key=value")
        findings.append(Finding(lineno, Severity.IGNORED, "Missing '=', ignoring line.", hint))
        return True
    if not key:
        findings.append(Finding(lineno, Severity.IGNORED,
                                "Missing key name before '=', ignoring line.",
                                "write it as Key=value"))
        return True
    assignments.append(Assignment(state.section, _strip(key), _strip(value), lineno))
    return True


# -- Exec*= lines: config_parse_exec()


@dataclass(frozen=True)
class Command:
    """One command of an ``Exec*=`` line as systemd stores it (ExecStartEx= shows it)."""

    path: str  # what is executed: the first word less its prefixes, path_simplify()'d
    argv: tuple[str, ...]  # argv[0] is the first word less prefixes, or the '@' name
    flags: tuple[str, ...]  # names from EXEC_FLAG_NAMES, in prefix order


@dataclass(frozen=True)
class ExecLine:
    commands: tuple[Command, ...]  # those systemd keeps (an ignored error keeps the earlier)
    findings: tuple[Finding, ...]


class _BadWord(Exception):
    """extract_first_word() failed: unbalanced quotes (or a bad escape without relax)."""


def parse_exec(value: str, line: int = 0) -> ExecLine:
    """The commands of one ``Exec*=`` value, split at lone ';' as systemd does.

    ``%`` specifiers are left as they are: systemd resolves them when it loads
    the unit (``%%`` becomes ``%``), the builder does not know their values.
    """
    commands: list[Command] = []
    findings: list[Finding] = []
    pos: int | None = 0
    while True:
        # the first word of a command
        try:
            first, pos = _extract_and_warn(value, pos, line, findings)
        except _BadWord:
            findings.append(Finding(line, Severity.IGNORED,
                                    f'Unbalanced quoting, ignoring: "{value}"',
                                    "close the quote"))
            return ExecLine(tuple(commands), tuple(findings))
        if first is None:
            break
        if first == ";":
            continue
        path, flags, ignore, separate_argv0 = _prefixes(first)
        # with '-' systemd drops a bad command and goes on; without, the unit is refused
        severity = Severity.IGNORED if ignore else Severity.REFUSED
        tail = ", ignoring" if ignore else ""
        problem = _path_problem(path)
        if problem is not None:
            message, hint = problem
            message = message.format(tail=tail, value=value, path=path)
            findings.append(Finding(line, severity, message, hint))
            return ExecLine(tuple(commands), tuple(findings))
        argv: list[str] = [] if separate_argv0 else [path]
        semicolon = False
        while pos is not None and pos < len(value):
            # a lone unquoted ';' separates commands; '\;' alone is a literal ';' argument
            if value[pos] == ";" and (pos + 1 == len(value) or value[pos + 1] in WHITESPACE):
                pos = _skip_ws(value, pos + 1)
                semicolon = True
                break
            if value.startswith("\\;", pos) and (pos + 2 == len(value)
                                                 or value[pos + 2] in WHITESPACE):
                pos = _skip_ws(value, pos + 2)
                argv.append(";")
                continue
            try:
                word, pos = _extract_and_warn(value, pos, line, findings)
            except _BadWord:
                findings.append(Finding(line, severity, f'Unbalanced quoting{tail}: "{value}"',
                                        "close the quote"))
                return ExecLine(tuple(commands), tuple(findings))
            if word is None:
                break
            argv.append(word)
        if not argv:
            findings.append(Finding(
                line, severity, f"Empty executable name or zeroeth argument{tail}: {value}",
                "with '@' the word after the program is argv[0]: give one"))
            return ExecLine(tuple(commands), tuple(findings))
        commands.append(Command(simplify_path(path), tuple(argv), flags))
        if not semicolon:
            break
    return ExecLine(tuple(commands), tuple(findings))


def _path_problem(path: str) -> tuple[str, str] | None:
    """config_parse_exec()'s checks of the program, in its order: (message, hint)."""
    if not path:
        return ("Empty path in command line{tail}: '{value}'",
                "give the program after the prefixes")
    if not _string_is_safe(path):
        return ("Executable name contains special characters{tail}: {path}",
                "the program's path may hold no quotes, backslashes or control characters")
    if path.endswith("/"):
        return "Executable path specifies a directory{tail}: {path}", "name the program itself"
    if not (_path_is_valid(path) if path.startswith("/") else _filename_is_valid(path)):
        return ("Neither a valid executable name nor an absolute path{tail}: {path}",
                "give an absolute path or a bare program name; systemd's prefixes are "
                "@ - : + ! !! ('+' and '!' do not combine; '|' comes with systemd 258)")
    return None


def _prefixes(word: str) -> tuple[str, tuple[str, ...], bool, bool]:
    """(rest, flags, ignore, separate_argv0): each prefix once, '+' and '!' exclusive."""
    flags: list[str] = []
    ignore = separate_argv0 = False
    i = 0
    while i < len(word):
        c = word[i]
        if c == "-" and not ignore:
            ignore = True
            flags.append(EXEC_FLAG_NAMES["-"])
        elif c == "@" and not separate_argv0:
            separate_argv0 = True
        elif c == ":" and EXEC_FLAG_NAMES[":"] not in flags:
            flags.append(EXEC_FLAG_NAMES[":"])
        elif c == "+" and not {"privileged", "no-setuid", "ambient"} & set(flags):
            flags.append(EXEC_FLAG_NAMES["+"])
        elif c == "!" and not {"privileged", "no-setuid", "ambient"} & set(flags):
            flags.append(EXEC_FLAG_NAMES["!"])
        elif c == "!" and "no-setuid" in flags and "ambient" not in flags:
            flags[flags.index("no-setuid")] = EXEC_FLAG_NAMES["!!"]
        else:
            break
        i += 1
    order = list(EXEC_FLAG_NAMES.values())  # the order systemd lists them in
    return word[i:], tuple(sorted(flags, key=order.index)), ignore, separate_argv0


def simplify_path(path: str, kill_dots: bool = True) -> str:
    """path_simplify(): '//' folded, and (systemd 252 and later) '.' parts dropped."""
    if not path.startswith("/"):
        return path
    parts = [p for p in path.split("/") if p and not (kill_dots and p == ".")]
    return "/" + "/".join(parts)


def _path_is_valid(path: str) -> bool:
    return 0 < len(path.encode()) < PATH_MAX and all(
        len(p.encode()) <= NAME_MAX for p in path.split("/"))


def _filename_is_valid(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and len(name.encode()) <= NAME_MAX


def _skip_ws(s: str, pos: int) -> int | None:
    while pos < len(s) and s[pos] in WHITESPACE:
        pos += 1
    return pos if pos < len(s) else None


def _extract_and_warn(s: str, pos: int | None, line: int,
                      findings: list[Finding]) -> tuple[str | None, int | None]:
    """extract_first_word_and_warn(): strict first, then keeping unknown escapes."""
    try:
        return extract_first_word(s, pos, relax=False)
    except _BadWord:
        pass
    word, new_pos = extract_first_word(s, pos, relax=True)  # raises on unbalanced quotes
    findings.append(Finding(line, Severity.WARNING,
                            f'Ignoring unknown escape sequences: "{word}"',
                            "write a backslash as \\\\"))
    return word, new_pos


def extract_first_word(s: str, pos: int | None, relax: bool) -> tuple[str | None, int | None]:
    """(word, next position) with EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE; (None, None) at the end.

    ``relax`` is EXTRACT_UNESCAPE_RELAX: an unknown escape (or a trailing '\\'
    outside quotes) is kept as written instead of failing.
    """
    if pos is None:
        return None, None
    n = len(s)
    while pos < n and s[pos] in WHITESPACE:
        pos += 1
    if pos >= n:
        return None, None
    out = bytearray()
    quote = ""
    while True:
        if pos >= n:
            if quote:
                raise _BadWord
            return _decode(out), None
        c = s[pos]
        if c == "\\":
            pos += 1
            if pos >= n:
                if relax and not quote:
                    out += b"\\"
                    return _decode(out), None
                raise _BadWord
            unescaped = cunescape_one(s, pos)
            if unescaped is None:
                if not relax:
                    raise _BadWord
                out += b"\\" + _encode(s[pos])
                pos += 1
            else:
                data, used = unescaped
                out += data
                pos += used
            continue
        if quote:
            if c == quote:
                quote = ""
            else:
                out += _encode(c)
            pos += 1
            continue
        if c in "'\"":
            quote = c
            pos += 1
            continue
        if c in WHITESPACE:
            return _decode(out), _skip_ws(s, pos)
        out += _encode(c)
        pos += 1


_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                   "v": "\v", "\\": "\\", '"': '"', "'": "'", "s": " "}
_HEX = "0123456789abcdefABCDEF"


def cunescape_one(s: str, pos: int) -> tuple[bytes, int] | None:
    """The escape after a backslash at ``s[pos]``: (bytes, characters used), None if invalid.

    ``\\xHH`` and octal ``\\ooo`` give one byte; ``\\uHHHH`` and ``\\UHHHHHHHH`` a
    character in UTF-8; a NUL is refused in every form.
    """
    c = s[pos]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c].encode(), 1
    if c in "xuU":
        width = {"x": 2, "u": 4, "U": 8}[c]
        digits = s[pos + 1:pos + 1 + width]
        if len(digits) < width or any(d not in _HEX for d in digits):
            return None
        value = int(digits, 16)
        if value == 0:
            return None
        if c == "x":
            return bytes([value]), 3
        if c == "U" and not _unichar_is_valid(value):
            return None
        return chr(value).encode("utf-8", "surrogatepass"), width + 1
    if c in "01234567":
        digits = s[pos:pos + 3]
        if len(digits) < 3 or any(d not in "01234567" for d in digits):
            return None
        value = int(digits, 8)
        if value == 0 or value > 255:
            return None
        return bytes([value]), 3
    return None


def _unichar_is_valid(ch: int) -> bool:
    return not (ch >= 0x110000 or (ch & 0xFFFFF800) == 0xD800 or 0xFDD0 <= ch <= 0xFDEF
                or (ch & 0xFFFE) == 0xFFFE)


def _encode(c: str) -> bytes:
    return c.encode("utf-8", "surrogateescape")


def _decode(b: bytearray) -> str:
    return bytes(b).decode("utf-8", "surrogateescape")


def assigned_values(sections: Mapping[str, Sequence[tuple[str, str]]], section: str,
                    key: str) -> list[str]:
    """Every value of ``key`` in ``section``; an empty assignment resets the list, as systemd
    does for list settings."""
    out: list[str] = []
    for k, v in sections.get(section, ()):
        if k == key:
            if v == "":
                out.clear()
            else:
                out.append(v)
    return out




def bind_paths(word: str) -> tuple[str, str]:
    """(source, destination) of one ``BindPaths=``/``BindReadOnlyPaths=`` word:
    ``[-]SOURCE[:DESTINATION[:OPTIONS]]``, the destination being the source when not given."""
    source, _, rest = word.lstrip("-").partition(":")
    return source, rest.split(":", 1)[0] if rest else source
