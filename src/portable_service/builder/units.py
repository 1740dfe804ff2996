"""Unit files: read, check against portabled's rules, and what they need from the image.

Two things are read out of the units: the programs they run (roots of the
closure) and the paths systemd mounts over in the unit's root, which must
already exist in a read-only image.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from portable_service.builder.spec import Spec, UnitSource
from portable_service.errors import UnitError
from portable_service.rules.portabled import UNIT_TYPES, bind_source_is_folder
from portable_service.rules.unitfile import (
    BYTE_ORDER_MARK,
    UNIT_SECTIONS,
    Finding,
    Severity,
    assigned_values,
    bind_paths,
    parse_exec,
    read_unit_text,
)

_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.[a-z]+$")
MAX_UNIT_SIZE = 1 << 20


@dataclass(frozen=True)
class Unit:
    """A unit file (or a drop-in folder's file) as it goes into ``etc/systemd/system``."""

    name: str  # e.g. demo.service, or demo.service.d/override.conf
    text: str
    origin: str  # the host file it came from, or "inline"
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict, compare=False)
    # the drop-ins merged into ``text`` (NAME.d/FILE.conf), in the order systemd applies them
    drop_ins: tuple[str, ...] = ()

    @property
    def unit_name(self) -> str:
        """The unit this file belongs to: the name, or the folder's name less '.d'."""
        head = self.name.split("/", 1)[0]
        return head[:-2] if head.endswith(".d") else head

    @property
    def image_path(self) -> PurePosixPath:
        return PurePosixPath("/etc/systemd/system") / self.name

    def values(self, section: str, key: str) -> list[str]:
        """Every value of ``key``; an empty assignment resets the list, as systemd does."""
        return assigned_values(self.sections, section, key)

    def exec_sections(self) -> Iterator[str]:
        yield from (s for s in SECTION_EXEC_DIRECTIVES if s in self.sections)


def parse_unit_text(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists, read as systemd reads them.

    Every section is kept (the caller may not know the unit's type); see
    :func:`portable_service.rules.unitfile.read_unit_text` for the rules.
    """
    return read_unit_text(text).sections


def load_units(spec: Spec) -> list[Unit]:
    """Read every unit of the spec and check it; the first problem is raised."""
    units: list[Unit] = []
    for source in spec.units:
        units.extend(_read_source(source))
    seen: dict[str, str] = {}
    for unit in units:
        check_unit_name(unit, spec.pname)
        if unit.name in seen:
            raise UnitError(
                f"unit {unit.name} is given twice ({seen[unit.name]} and {unit.origin})",
                "keep one of them",
            )
        seen[unit.name] = unit.origin
    if not any("/" not in u.name for u in units):
        raise UnitError("only drop-in folders were given, no unit file",
                        f"add a unit such as {spec.pname}.service")
    return merge_drop_ins(units)


# -- drop-ins: portabled copies the image's unit files and writes drop-ins of its own
# (10-profile.conf, 20-portable.conf) on the host; a NAME.d/*.conf inside the image is never
# read (seen on systemd 247, 252 and 257). So the build merges them into the unit file.

def drop_in_dirs(name: str) -> list[str]:
    """The drop-in folders systemd reads for unit ``name``, most specific first.

    systemd's unit_file_find_dirs(): the name itself, its template (``a@.service`` for
    ``a@x.service``), then each '-' prefix, longest first (``a-b-.service``, ``a-.service``).
    """
    stem, dot, suffix = name.rpartition(".")
    dirs = [name]
    if "@" in stem and not stem.endswith("@"):
        dirs.append(f"{stem.split('@', 1)[0]}@.{suffix}")
    base = stem.split("@", 1)[0]
    # a name ending in '-' is itself a prefix: its own prefixes start below that dash
    cut = base.rstrip("-") if base.endswith("-") else base
    while "-" in cut:
        cut = cut[: cut.rfind("-")]
        dirs.append(f"{cut}-{dot}{suffix}")
    return [f"{d}.d" for d in dirs]


def merge_drop_ins(units: list[Unit]) -> list[Unit]:
    """Unit files with the spec's drop-ins merged in, in systemd's order.

    systemd applies every ``*.conf`` of a unit's drop-in folders after the unit file,
    sorted by file name; of two files with one name, the more specific folder's wins.
    Appending them to the unit file (after an empty line, which ends a continuation)
    gives systemd the same settings, and a file portabled does copy.
    """
    files = [u for u in units if "/" not in u.name]
    confs: dict[str, dict[str, Unit]] = {}
    for u in units:
        if "/" in u.name:
            folder, conf = u.name.split("/", 1)
            confs.setdefault(folder, {})[conf] = u
    used: set[str] = set()
    merged = []
    for unit in files:
        chosen: dict[str, Unit] = {}
        for folder in drop_in_dirs(unit.name):
            for conf, drop in confs.get(folder, {}).items():
                chosen.setdefault(conf, drop)
                used.add(folder)
        if not chosen:
            merged.append(unit)
            continue
        order = [chosen[c] for c in sorted(chosen, key=os.fsencode)]
        text = unit.text if unit.text.endswith("\n") else unit.text + "\n"
        for drop in order:
            text += (f"\n# {drop.name}: merged by portable-service, as portabled does not read "
                     f"drop-ins inside images\n{_without_bom(drop.text)}")
            if not text.endswith("\n"):
                text += "\n"
        merged.append(_make_unit(unit.name, text, unit.origin,
                                 tuple(d.name for d in order)))
    unused = sorted(set(confs) - used)
    if unused:
        raise UnitError(
            f"drop-in folder {unused[0]} belongs to no unit of the image: systemd would not "
            "apply it (and portabled never reads drop-ins inside an image)",
            f"name it after a unit in units (e.g. {files[0].name}.d), or add its unit")
    return merged


def _without_bom(text: str) -> str:
    # systemd cuts a byte-order mark once per file: in the middle of a merged file it would
    # stay, and the drop-in's first line would be misread
    return text.removeprefix(BYTE_ORDER_MARK)


def _read_source(source: UnitSource) -> list[Unit]:
    if source.text is not None:
        return [_make_unit(source.name, source.text, "inline")]
    assert source.path is not None
    path = source.path
    if path.is_dir() and path.name.endswith(".d"):
        confs = sorted(p for p in path.iterdir() if p.name.endswith(".conf"))
        if not confs:
            raise UnitError(f"drop-in folder {path} has no *.conf files", "add one or remove it")
        return [_make_unit(f"{path.name}/{p.name}", _read_unit_file(p), str(p)) for p in confs]
    return [_make_unit(path.name, _read_unit_file(path), str(path))]


def _read_unit_file(path: Path) -> str:
    if not path.exists():
        raise UnitError(f"unit file {path} does not exist", "check the path in units")
    if path.is_dir():
        raise UnitError(f"unit {path} is a folder",
                        "give unit files, or a drop-in folder named like demo.service.d")
    if not path.is_file():
        raise UnitError(f"unit {path} is not a regular file", "give a regular unit file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnitError(f"cannot read unit file {path}: {e.strerror}", "fix its permissions") from None
    if len(data) > MAX_UNIT_SIZE:
        raise UnitError(f"unit file {path} is larger than 1 MiB", "is this really a unit file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnitError(f"unit file {path} is not UTF-8 text", "save it as UTF-8") from None


def _make_unit(name: str, text: str, origin: str, drop_ins: tuple[str, ...] = ()) -> Unit:
    if not text.strip():
        raise UnitError(f"unit {name} ({origin}) is empty",
                        "portabled ignores empty unit files: give it a [Unit] or [Service] section")
    return Unit(name=name, text=text, origin=origin, sections=read_unit_file(name, text, origin),
                drop_ins=drop_ins)


def read_unit_file(name: str, text: str, origin: str) -> dict[str, list[tuple[str, str]]]:
    """The sections systemd reads from one unit file or drop-in; what it would refuse or
    drop (a line, an ``Exec*=`` command) is a :class:`UnitError` naming file and line."""
    unit_name = name.split("/", 1)[0].removesuffix(".d")
    known = UNIT_SECTIONS.get(unit_name[unit_name.rfind("."):])
    read = read_unit_text(text, known)
    where = name if origin == "inline" else origin
    if not read.has_section and not any(f.severity is Severity.REFUSED for f in read.findings):
        then = (" and then refuses the service (\"Service has no ExecStart=, ExecStop=, or "
                "SuccessAction=. Refusing.\")" if name.endswith(".service") else "")
        raise UnitError(
            f"{where} has no [Section] header: systemd ignores every line of it "
            f"(\"Assignment outside of section. Ignoring.\"){then}",
            "start it with [Unit], then [Service] (or [Socket], [Timer], ...) above the settings")
    for finding in read.findings:
        if finding.severity is not Severity.WARNING:
            raise _finding_error(where, finding)
    for a in read.assignments:
        if a.key in SECTION_EXEC_DIRECTIVES.get(a.section, ()):
            for finding in parse_exec(a.value, a.line).findings:
                if finding.severity is not Severity.WARNING:
                    raise _finding_error(where, finding, f"{a.key}=")
    return read.sections


def _finding_error(where: str, finding: Finding, directive: str = "") -> UnitError:
    verdict = ("systemd refuses to load the unit" if finding.severity is Severity.REFUSED
               else "systemd drops it")
    what = f"{directive} " if directive else ""
    return UnitError(f"{where} line {finding.line}: {what}{verdict}: \"{finding.message}\"",
                     finding.hint)


def check_unit_name(unit: Unit, pname: str) -> None:
    """portabled's rules: a known type, and the name is ``pname`` followed by '-', '.' or '@'."""
    name = unit.unit_name
    if not _UNIT_NAME.match(name):
        raise UnitError(f"{name!r} is not a valid unit name",
                        "use letters, digits, ':', '-', '_', '.', '@' and a type suffix")
    suffix = name[name.rfind("."):]
    if suffix not in UNIT_TYPES:
        raise UnitError(
            f"unit {name} has type {suffix}, which portabled does not attach",
            f"use one of {' '.join(UNIT_TYPES)}",
        )
    rest = name[len(pname):] if name.startswith(pname) else None
    if rest is None or not rest or rest[0] not in "-.@":
        raise UnitError(
            f"unit {name} does not match the image prefix {pname!r}: portabled would ignore it",
            f"rename it to {pname}{suffix} or {pname}-NAME{suffix}",
        )


# -- paths the unit's sandbox mounts over: they must exist in a read-only image

# directive -> the root its relative names live under
_EXEC_DIRECTORIES = {
    "StateDirectory": "/var/lib",
    "CacheDirectory": "/var/cache",
    "LogsDirectory": "/var/log",
    "ConfigurationDirectory": "/etc",
    # RuntimeDirectory= needs nothing: every portable profile sets MountAPIVFS=yes, so
    # /run is a fresh tmpfs (or the host's /run under "trusted") in the unit's root;
    # tests/e2e/test_mount_points.py shows it starting without /run/NAME on 247-257.
}
# directives whose values are [-+]PATH, mounted or remounted in place
PATH_DIRECTIVES = (
    "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
)
# Paths on API file systems are mounted by systemd itself.
_API_ROOTS = (PurePosixPath("/proc"), PurePosixPath("/sys"), PurePosixPath("/dev"))


@dataclass(frozen=True)
class MountPoint:
    path: PurePosixPath
    is_file: bool
    directive: str  # e.g. "StateDirectory=demo in demo.service"
    bind: bool = False  # a bind mount: the path must be of its source's kind (is_file)


def mount_points(unit: Unit) -> list[MountPoint]:
    """Every path systemd needs in the unit's root to set up its sandbox."""
    found: list[MountPoint] = []

    def add(path: str, directive: str, is_file: bool = False, bind: bool = False) -> None:
        if "%" in path or not path.startswith("/"):
            return  # specifiers are resolved at run time; relative paths are invalid anyway
        p = PurePosixPath(path)
        if ".." in p.parts or p == PurePosixPath("/"):
            return
        if any(p == r or r in p.parents for r in _API_ROOTS):
            return
        found.append(MountPoint(p, is_file, f"{directive} in {unit.unit_name}", bind))

    for section in unit.exec_sections():
        for key, root in _EXEC_DIRECTORIES.items():
            for value in unit.values(section, key):
                for word in value.split():
                    name = word.split(":", 1)[0]
                    add(f"{root}/{name}", f"{key}={word}")
        for key in ("BindPaths", "BindReadOnlyPaths"):
            for value in unit.values(section, key):
                for word in value.split():
                    src, dest = bind_paths(word)
                    add(dest, f"{key}={word}", is_file=not bind_source_is_folder(src), bind=True)
        for value in unit.values(section, "TemporaryFileSystem"):
            for word in value.split():
                add(word.split(":", 1)[0], f"TemporaryFileSystem={word}")
        for key in PATH_DIRECTIVES:
            for value in unit.values(section, key):
                for word in value.split():
                    if word.startswith("-"):
                        continue  # systemd skips missing '-' paths by itself
                    add(word.lstrip("+"), f"{key}={word}")
        for value in unit.values(section, "WorkingDirectory"):
            if not value.startswith("-") and value != "~":
                add(value, f"WorkingDirectory={value}")
    return found


# -- programs the unit runs: roots of the closure

EXEC_DIRECTIVES = (
    "ExecStart", "ExecStartPre", "ExecStartPost", "ExecCondition", "ExecReload",
    "ExecStop", "ExecStopPost",
)
# the command lines each section reads (load-fragment-gperf.gperf.in); a socket has no
# ExecStart= but an ExecStopPre=
SECTION_EXEC_DIRECTIVES: dict[str, tuple[str, ...]] = {
    "Service": EXEC_DIRECTIVES,
    "Socket": ("ExecStartPre", "ExecStartPost", "ExecStopPre", "ExecStopPost"),
    "Mount": ("ExecMount", "ExecUnmount", "ExecRemount"),
    "Swap": ("ExecActivate", "ExecDeactivate"),
}


@dataclass(frozen=True)
class ExecCommand:
    """One command of an ``Exec*=`` line: ``argv[0]`` is the program, prefixes stripped.

    With systemd's ``@`` prefix the second word is only the process name: it is
    dropped from ``argv`` and kept in ``argv0``.
    """

    argv: tuple[str, ...]
    directive: str  # e.g. "ExecStart= in demo.service"
    argv0: str = ""  # the argv[0] systemd passes ('@' name, or the program as written)
    flags: tuple[str, ...] = ()  # systemd's names of the prefixes, e.g. ("ignore-failure",)


def exec_commands(unit: Unit) -> list[ExecCommand]:
    """Every command of the unit's ``Exec*=`` lines, read by systemd's rules (several
    commands split by ';', quotes and C escapes; see :func:`unitfile.parse_exec`).

    A command systemd would refuse or drop is left out (:func:`read_unit_file` has
    already turned it into an error for the units the builder reads).
    """
    out: list[ExecCommand] = []
    for section in unit.exec_sections():
        for key in SECTION_EXEC_DIRECTIVES[section]:
            for value in unit.values(section, key):
                for c in parse_exec(value).commands:
                    out.append(ExecCommand((c.path, *c.argv[1:]), f"{key}= in {unit.unit_name}",
                                           c.argv[0], c.flags))
    return out


def exec_programs(unit: Unit) -> list[tuple[str, str]]:
    """(program, directive) for every command in the unit.

    The program is an absolute path, or a bare name systemd looks up in its
    fixed PATH (the closure resolves those).
    """
    return [(c.argv[0], c.directive) for c in exec_commands(unit)]


def environment_files(unit: Unit, *, optional: bool = False) -> list[tuple[str, str]]:
    """EnvironmentFile= paths the unit must read (those without '-'; all with ``optional``)."""
    out = []
    for section in unit.exec_sections():
        for value in unit.values(section, "EnvironmentFile"):
            path = value.removeprefix("-") if optional else value
            if path.startswith("/"):
                out.append((path, f"EnvironmentFile= in {unit.unit_name}"))
    return out
