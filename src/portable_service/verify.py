"""verify: the rules systemd-portabled applies to an image, and what makes its services fail.

Each rule is a small function from the image (an :class:`ImageFS`) to
problems. A problem is an *error* when portabled refuses the image or the
service fails at start, a *warning* when the image works but is doubtful.
The same rules run on a finished image file and on a build's tree.
"""

from __future__ import annotations

import importlib.util
import posixpath
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portable_service import elfcheck
from portable_service.closure.elf import parse_shebang
from portable_service.closure.scripts import env_program, shell_commands
from portable_service.errors import ImageError, VerifyError
from portable_service.imagefs import ImageFS, IndexedFS, Stat, exists, read_text, resolve
from portable_service.units import (
    SYSTEMD_PATH,
    UNIT_TYPES,
    Unit,
    environment_files,
    exec_programs,
    mount_points,
    parse_unit_text,
)

if TYPE_CHECKING:
    from portable_service.tree import ImageTree

ERROR, WARNING = "error", "warning"
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")
UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system")
MOUNT_DIRS = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp")
MOUNT_FILES = ("/etc/resolv.conf", "/etc/machine-id")
# filled at start (API file systems, MountAPIVFS='s fresh /run): links into them may dangle
RUNTIME_ROOTS = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp")
# what systemd's default PATH adds on hosts without merged /usr
EXEC_PATH = (*SYSTEMD_PATH, "/sbin", "/bin")


@dataclass(frozen=True)
class Problem:
    severity: str  # ERROR or WARNING
    rule: str  # short stable id, e.g. "os-release-missing"
    path: str  # the image path concerned
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}; fix: {self.fix}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class UnitFile:
    name: str
    path: str  # where portabled finds it, e.g. /etc/systemd/system/demo.service
    stat: Stat


# -- names


def image_prefix(image_name: str) -> str:
    """portabled's unit prefix: the file name without .raw, cut at the first '_'."""
    base = posixpath.basename(image_name)
    if base.endswith(".raw"):
        base = base[: -len(".raw")]
    return base.split("_", 1)[0]


def prefix_matches(unit_name: str, prefix: str) -> bool:
    """portabled's match: the prefix itself, or the prefix followed by '-', '.' or '@'."""
    if not unit_name.startswith(prefix) or not prefix:
        return False
    rest = unit_name[len(prefix):]
    return rest == "" or rest[0] in "-.@"


def is_portable_unit(name: str) -> bool:
    return name.endswith(UNIT_TYPES) and "/" not in name


def check_name(image_name: str) -> Iterator[Problem]:
    base = posixpath.basename(image_name)
    if not base.endswith(".raw"):
        yield Problem(ERROR, "image-name", base,
                      "portabled only takes image files whose name ends in .raw",
                      f"rename it to {base.rsplit('.', 1)[0]}.raw")
    if not image_prefix(base):
        yield Problem(ERROR, "image-name", base, "the file name gives an empty unit prefix",
                      "name the file PREFIX_VERSION.raw, e.g. demo_1.0.raw")


# -- os-release


def find_os_release(fs: ImageFS) -> tuple[str | None, dict[str, str]]:
    """Where portabled finds os-release (the first of the two paths), and its fields."""
    from portable_service.image import parse_os_release

    for path in OS_RELEASE_PATHS:
        text = read_text(fs, path)
        if text is not None:
            return path, parse_os_release(text)
    return None, {}


def check_os_release(fs: ImageFS, prefix: str) -> Iterator[Problem]:
    path, fields = find_os_release(fs)
    if path is None:
        yield Problem(ERROR, "os-release-missing", "/etc/os-release",
                      "the image has no /etc/os-release or /usr/lib/os-release: portabled "
                      "refuses it ('lacks os-release data')",
                      "add /etc/os-release with at least ID=<distribution>")
        return
    if not fields.get("ID"):
        yield Problem(ERROR, "os-release-id", path,
                      "os-release has no or an empty ID=: portabled refuses the image "
                      "('os-release metadata lacks the ID field'; systemd 252+, 247 did not "
                      "check)",
                      "set ID= to a distribution id, e.g. ID=debian")
    prefixes = fields.get("PORTABLE_PREFIXES", "").split()
    if prefixes and prefix and prefix not in prefixes:
        yield Problem(ERROR, "portable-prefixes", path,
                      f"PORTABLE_PREFIXES={' '.join(prefixes)} does not allow the prefix "
                      f"{prefix!r} that the file name gives: portabled refuses to attach it "
                      "(systemd 252+, 247 did not check)",
                      f"name the file {prefixes[0]}_VERSION.raw or add {prefix} to "
                      "PORTABLE_PREFIXES")


# -- units


def unit_candidates(fs: ImageFS) -> dict[str, UnitFile]:
    """Every unit file name in portabled's search folders; /etc wins over /usr/lib."""
    found: dict[str, UnitFile] = {}
    for folder in UNIT_DIRS:
        real = resolve(fs, folder)
        if real is None:
            continue
        try:
            names = fs.listdir(real)
        except ImageError:  # not a folder: nothing is searched there
            continue
        for name in names:
            if is_portable_unit(name) and name not in found:
                path = posixpath.join(real, name)
                found[name] = UnitFile(name, posixpath.join(folder, name), fs.stat(path))
    return found


def attached_units(fs: ImageFS, prefix: str) -> list[UnitFile]:
    """The units portabled would attach for this prefix, before checking their files."""
    return [u for n, u in sorted(unit_candidates(fs).items()) if prefix_matches(n, prefix)]


def check_units(fs: ImageFS, prefix: str) -> tuple[list[Problem], list[UnitFile]]:
    """portabled's unit rules; returns the problems and the units that pass."""
    problems: list[Problem] = []
    good: list[UnitFile] = []
    candidates = unit_candidates(fs)
    matching = [u for n, u in sorted(candidates.items()) if prefix_matches(n, prefix)]
    if not matching:
        others = ", ".join(sorted(candidates)[:5]) or "none"
        problems.append(Problem(
            ERROR, "no-matching-units", UNIT_DIRS[0],
            f"no unit matches the prefix {prefix!r} (units found: {others}): portabled "
            "refuses the image ('Couldn't find any matching unit files')",
            f"name the units {prefix}.service or {prefix}-NAME.service, or rename the image "
            "to match them"))
    for unit in matching:
        st = unit.stat
        if st.kind == "symlink":
            target = st.target or ""
            if target.startswith("/"):
                problems.append(Problem(
                    ERROR, "unit-symlink", unit.path,
                    f"the unit is an absolute symlink (-> {target}), which portabled resolves "
                    "against the host, not the image",
                    "ship the unit as a regular file"))
            else:
                problems.append(Problem(
                    WARNING, "unit-symlink", unit.path,
                    f"the unit is a symlink (-> {target}); portabled copies regular files",
                    "ship the unit as a regular file"))
            continue
        if st.kind != "file":
            problems.append(Problem(ERROR, "unit-not-file", unit.path,
                                    f"the unit is a {st.kind}, not a regular file",
                                    "ship the unit as a regular file"))
            continue
        if st.size == 0:
            problems.append(Problem(ERROR, "unit-empty", unit.path,
                                    "the unit file is empty; portabled ignores it",
                                    "give it a [Service] (or [Socket], ...) section"))
            continue
        good.append(unit)
    return problems, good


def load_unit(fs: ImageFS, unit: UnitFile) -> Unit:
    """The unit with its drop-ins (NAME.d/*.conf) applied after it, as systemd reads them."""
    text = read_text(fs, unit.path) or ""
    sections = parse_unit_text(text)
    for conf in drop_ins(fs, unit.name):
        for section, pairs in parse_unit_text(read_text(fs, conf) or "").items():
            sections.setdefault(section, []).extend(pairs)
    return Unit(name=unit.name, text=text, origin=unit.path, sections=sections)


def drop_ins(fs: ImageFS, name: str) -> list[str]:
    """NAME.d/*.conf in portabled's search folders, in name order; /etc wins a shared name."""
    found: dict[str, str] = {}
    for folder in UNIT_DIRS:
        real = resolve(fs, posixpath.join(folder, f"{name}.d"))
        if real is None:
            continue
        try:
            names = fs.listdir(real)
        except ImageError:
            continue
        for conf in names:
            if conf.endswith(".conf") and conf not in found:
                found[conf] = posixpath.join(folder, f"{name}.d", conf)
    return [found[c] for c in sorted(found)]


# -- the portable scaffold


def check_scaffold(fs: ImageFS) -> Iterator[Problem]:
    root = fs.stat("/")
    if root.mode & 0o005 != 0o005:
        yield Problem(ERROR, "root-mode", "/",
                      f"the image root is mode {root.mode:04o}; services run as a dynamic user "
                      "cannot enter it (status=200/CHDIR)",
                      "make the root mode 0755 (mksquashfs -root-mode 755)")
    for path in MOUNT_DIRS:
        real = resolve(fs, path)
        kind = fs.stat(real).kind if real is not None else None
        if kind != "dir":
            what = "missing" if kind is None else f"a {kind}, not a folder"
            yield Problem(ERROR, "mount-point", path,
                          f"{path} is {what}: systemd mounts over it at start and fails "
                          "(226/NAMESPACE) in a read-only image",
                          f"create the empty folder {path} in the image")
    for path in MOUNT_FILES:
        if not exists(fs, path):
            yield Problem(ERROR, "mount-point", path,
                          f"{path} is missing: systemd binds the host's over it at start",
                          f"create an empty file {path} in the image")


# -- what the units need at start


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def check_unit_needs(fs: ImageFS, unit: Unit) -> tuple[list[Problem], set[str]]:
    """Mount points, programs and environment files; also returns the programs' real paths."""
    problems: list[Problem] = []
    programs: set[str] = set()
    for mp in mount_points(unit):
        path = str(mp.path)
        if _under(path, ("/run",)):
            continue  # MountAPIVFS= puts a fresh tmpfs on /run: the node is created there
        if resolve(fs, path) is None:
            problems.append(Problem(
                ERROR, "unit-mount-point", path,
                f"{mp.directive} needs {path} in the image; systemd cannot create it in a "
                "read-only image and the start fails",
                f"create the {'file' if mp.is_file else 'folder'} {path} in the image"))
    for program, directive in exec_programs(unit):
        if "%" in program or "$" in program:
            continue  # specifiers and variables are expanded at start
        problems.extend(_check_program(fs, program, directive, programs))
    for program, directive in shell_commands(unit):
        # the shell may define it itself (a function): a warning, not an error
        if "%" not in program and _find_program(fs, program) is None:
            problems.append(Problem(
                WARNING, "shell-command-missing", program,
                f"{directive} runs {program}, which is not in the image",
                "add the program to the image (contents or packages) or fix the command"))
    for path, directive in environment_files(unit):
        if "%" not in path and resolve(fs, path) is None:
            problems.append(Problem(ERROR, "environment-file", path,
                                    f"{directive} names {path}, which is not in the image",
                                    f"add {path}, or write EnvironmentFile=-{path}"))
    return problems, programs


def _find_program(fs: ImageFS, program: str) -> str | None:
    candidates = [program] if program.startswith("/") else [
        posixpath.join(d, program) for d in EXEC_PATH]
    for candidate in candidates:
        real = resolve(fs, candidate)
        if real is not None:
            return real
    return None


def _check_program(fs: ImageFS, program: str, directive: str,
                   programs: set[str]) -> Iterator[Problem]:
    real = _find_program(fs, program)
    if real is None:
        looked = program if program.startswith("/") else f"{program} (in {':'.join(EXEC_PATH)})"
        yield Problem(ERROR, "exec-missing", program,
                      f"{directive} runs {looked}, which is not in the image (status=203/EXEC)",
                      "add the program to the image (contents or packages) or fix the path")
        return
    st = fs.stat(real)
    if st.kind != "file":
        yield Problem(ERROR, "exec-not-file", program,
                      f"{directive} runs {program}, which is a {st.kind}",
                      "point it at an executable file")
        return
    if not st.mode & 0o111:
        yield Problem(ERROR, "exec-not-executable", program,
                      f"{directive} runs {program} (mode {st.mode:04o}), which is not executable",
                      f"chmod +x {program} before building")
        return
    if not st.mode & 0o001:
        yield Problem(WARNING, "exec-not-executable", program,
                      f"{directive} runs {program} (mode {st.mode:04o}), which only its owner "
                      "or group may run; the default profile runs the service as a dynamic user",
                      f"chmod o+x {program}")
    programs.add(real)
    head = fs.read(real, 0, 256)
    if head.startswith(b"#!"):
        yield from _check_interpreter(fs, program, real, head, directive, programs)


def _check_interpreter(fs: ImageFS, program: str, real: str, head: bytes, directive: str,
                       programs: set[str]) -> Iterator[Problem]:
    shebang = parse_shebang(head)
    if shebang is None:
        return
    interp, arg = shebang
    found = resolve(fs, interp)
    if found is None or fs.stat(found).kind != "file":
        yield Problem(ERROR, "interpreter-missing", real,
                      f"{program} (run by {directive}) starts with #!{interp}, which is not in "
                      "the image", f"add {interp} to the image")
        return
    programs.add(found)
    name = env_program(arg) if posixpath.basename(interp) == "env" else None
    if name is not None:
        target = _find_program(fs, name)
        if target is None:
            yield Problem(ERROR, "interpreter-missing", real,
                          f"{program} (run by {directive}) runs '{name}' through env, which "
                          "is not in the image's PATH", f"add {name} to the image")
        else:
            programs.add(target)


# -- whole-image checks, from one walk


def check_links(fs: ImageFS, entries: dict[str, Stat]) -> Iterator[Problem]:
    for path, st in entries.items():
        if st.kind != "symlink":
            continue
        if resolve(fs, path) is not None:
            continue
        target = st.target or fs.readlink(path)
        lexical = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        if _under(lexical, RUNTIME_ROOTS):
            continue  # points into a file system mounted at start
        yield Problem(ERROR, "dangling-symlink", path,
                      f"the symlink -> {target} dangles inside the image (absolute targets "
                      "resolve against the image root)",
                      "add its target to the image, or drop the link")


def check_modes(entries: dict[str, Stat]) -> Iterator[Problem]:
    for path, st in entries.items():
        if st.kind == "symlink":
            continue
        if st.kind == "file" and st.mode & 0o6000:
            bits = " and ".join(b for b, m in (("setuid", 0o4000), ("setgid", 0o2000))
                                if st.mode & m)
            yield Problem(WARNING, "setuid", path,
                          f"{bits} file (mode {st.mode:04o}); portabled's default profile "
                          "(DynamicUser=, RestrictSUIDSGID=) makes the bit useless or refused",
                          "clear the bit (chmod ug-s) unless a trusted profile needs it")
        if st.mode & 0o002 and not (st.kind == "dir" and st.mode & 0o1000):
            yield Problem(WARNING, "world-writable", path,
                          f"world-writable {st.kind} (mode {st.mode:04o})",
                          "chmod o-w it (folders that must be shared want the sticky bit)")


# -- everything


def verify(fs: ImageFS, image_name: str) -> list[Problem]:
    """Every problem in the image, errors and warnings, in a stable order."""
    ifs = fs if isinstance(fs, IndexedFS) else IndexedFS(fs)
    prefix = image_prefix(image_name)
    problems: list[Problem] = []
    problems.extend(check_name(image_name))
    problems.extend(check_os_release(ifs, prefix))
    unit_problems, units = check_units(ifs, prefix)
    problems.extend(unit_problems)
    problems.extend(check_scaffold(ifs))
    programs: set[str] = set()
    for unit_file in units:
        unit_needs, found = check_unit_needs(ifs, load_unit(ifs, unit_file))
        problems.extend(unit_needs)
        programs |= found
    problems.extend(elfcheck.check_elf_files(ifs, ifs.entries, programs))
    problems.extend(check_links(ifs, ifs.entries))
    problems.extend(check_modes(ifs.entries))
    problems.extend(check_python_runtime(ifs.entries, programs))
    return _dedupe(problems)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    out = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def errors(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == ERROR]


def report_json(image: str, problems: list[Problem]) -> dict[str, Any]:
    errs = errors(problems)
    return {
        "image": image,
        "ok": not errs,
        "errors": len(errs),
        "warnings": len(problems) - len(errs),
        "problems": [p.to_dict() for p in problems],
    }


def check_written(path: Path, image_name: str, tree: ImageTree | None,
                  warn: Callable[[str], None]) -> None:
    """The build's gate: raise :class:`VerifyError` when the written image has errors.

    The file is read back through the squashfs reader; a build without the
    reader checks the tree it wrote instead (same rules, same paths).
    """
    from portable_service.imagefs import TreeFS, open_image

    fs: ImageFS
    if importlib.util.find_spec("portable_service.squashfs.reader") is not None or tree is None:
        fs = open_image(path)
    else:
        fs = TreeFS(tree)
    try:
        problems = verify(fs, image_name)
    finally:
        close = getattr(fs, "close", None)
        if close is not None:
            close()
    for p in problems:
        warn(p.line())
    errs = errors(problems)
    if errs:
        first = errs[0]
        more = f" (and {len(errs) - 1} more, listed above)" if len(errs) > 1 else ""
        raise VerifyError(f"the image would not work: {first.path}: {first.message}{more}",
                          f"{first.fix}; or build with --no-verify to keep it anyway")


# -- interpreters: closure/runtime.py ships their standard library; this checks it is there

_PYTHON_NAME = ("python3", "python")


def check_python_runtime(entries: dict[str, Stat], programs: set[str]) -> Iterator[Problem]:
    """A python3 in the image without its ``encodings`` module dies at start.

    Python imports ``encodings`` before anything else: "Fatal Python error:
    init_fs_encoding ... No module named 'encodings'". An error when a unit runs
    it (directly or as a #! interpreter), a warning otherwise.
    """
    pythons = [p for p, st in entries.items() if st.kind == "file"
               and posixpath.basename(p).startswith(_PYTHON_NAME)
               and posixpath.basename(p).rstrip("0123456789.") in _PYTHON_NAME
               and posixpath.basename(posixpath.dirname(p)) in ("bin", "sbin")]
    if not pythons or any(
            p.endswith(("/encodings/__init__.py", "/encodings/__init__.pyc")) or
            (posixpath.basename(p).startswith("python3") and p.endswith(".zip"))
            for p in entries):
        return
    for path in sorted(pythons):
        yield Problem(ERROR if path in programs else WARNING, "python-stdlib-missing", path,
                      "python without its standard library (no encodings module in the "
                      "image): it dies at start with \"No module named 'encodings'\"",
                      "rebuild (the build ships the standard library the host's python "
                      "reports), or add its lib/python3.X folder to contents")
