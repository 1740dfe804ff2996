"""verify: the rules systemd-portabled applies to an image, and what makes its services fail.

Each rule is a small function from the image (an :class:`ImageFS`) to
problems. A problem is an *error* when portabled refuses the image or the
service fails at start, a *warning* when the image works but is doubtful.
The same rules run on a finished image file and on a build's tree.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portable_service.builder.closure.elf import Files as ElfFiles
from portable_service.builder.closure.elf import parse_shebang
from portable_service.builder.closure.scripts import (
    SHELL_SCRIPT_MAX,
    env_program,
    runs_shell,
    script_needs,
    shell_commands,
)
from portable_service.builder.units import (
    PATH_DIRECTIVES,
    Unit,
    exec_commands,
    exec_programs,
    mount_points,
    parse_unit_text,
)
from portable_service.errors import ImageError, VerifyError
from portable_service.fs.views import ImageFS, IndexedFS, Stat, exists, open_image, read_text, resolve
from portable_service.look import elfcheck
from portable_service.look.facts import (
    UnitFile,
    attached_units,
    closure_record,
    find_os_release,
    unit_candidates,
)
from portable_service.look.problems import ERROR, WARNING, Problem
from portable_service.rules import PROFILES, VERSIONS, data_version, directives, profiles
from portable_service.rules.portabled import (
    BOUND_FILES,
    BUILD_UNIT_DIR,
    FRESH_MOUNTS,
    SPLIT_USR_PATH,
    UNIT_DIRS,
    image_prefix,
    prefix_matches,
)
from portable_service.rules.unitfile import bind_paths


@dataclass(frozen=True)
class Target:
    """Where the image is meant to run: the portable profile, and one systemd version
    (``None``: every version with stored facts, and problems name the lowest that breaks)."""

    profile: str = profiles.DEFAULT_PROFILE
    systemd: int | None = None

    def versions(self) -> tuple[int, ...]:
        v = data_version(self.systemd)
        return VERSIONS if v is None else (v,)

    def on(self, versions: Iterable[int]) -> str:
        """'systemd 247 and 252' for the stored versions given (the picked version if one)."""
        vs = sorted(set(versions))
        if self.systemd is not None:
            return f"systemd {self.systemd}"
        if vs == list(VERSIONS):
            return f"systemd {'/'.join(map(str, vs))} (all tested)"
        return "systemd " + " and ".join(map(str, vs))

    def say(self, versions: Iterable[int], verb: str, plural: str) -> str:
        """:meth:`on` with its verb: 'systemd 252 refuses', 'systemd 247 and 252 refuse'."""
        many = self.systemd is None and len(set(versions)) > 1
        return f"{self.on(versions)} {plural if many else verb}"


# -- names


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
    """The unit as systemd runs it once attached: the file alone. Drop-ins in the image
    are never read (portabled copies only the unit file, REFERENCE.md section 5)."""
    text = read_text(fs, unit.path) or ""
    return Unit(name=unit.name, text=text, origin=unit.path, sections=parse_unit_text(text))


def drop_ins(fs: ImageFS, name: str) -> list[str]:
    """NAME.d/*.conf in portabled's search folders, in name order; /etc wins a shared name."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    for folder in UNIT_DIRS:
        real = resolve(fs, posixpath.join(folder, f"{name}.d"))
        if real is None or real in seen:
            continue
        seen.add(real)
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
    for path in FRESH_MOUNTS:
        real = resolve(fs, path)
        kind = fs.stat(real).kind if real is not None else None
        if kind != "dir":
            what = "missing" if kind is None else f"a {kind}, not a folder"
            yield Problem(ERROR, "mount-point", path,
                          f"{path} is {what}: systemd mounts over it at start and fails "
                          "(226/NAMESPACE) in a read-only image",
                          f"create the empty folder {path} in the image")
    for path in BOUND_FILES:
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
        real = resolve(fs, path)
        if real is None:
            problems.append(Problem(
                ERROR, "unit-mount-point", path,
                f"{mp.directive} needs {path} in the image; systemd cannot create it in a "
                "read-only image and the start fails",
                f"create the {'file' if mp.is_file else 'folder'} {path} in the image"))
        elif mp.bind and (fs.stat(real).kind == "dir") == mp.is_file:
            # a folder is mounted only on a folder, anything else only on a non-folder
            there, needed = ("a folder", "a file") if mp.is_file else ("not a folder", "a folder")
            problems.append(Problem(
                ERROR, "bind-mount-kind", path,
                f"{mp.directive} mounts {needed} on {path}, which is {there} in the image: "
                "the start fails with 'Not a directory' (status=226/NAMESPACE)",
                f"make {path} {'an empty file' if mp.is_file else 'a folder'} in the image, "
                "or bind it elsewhere"))
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
    problems.extend(check_environment_files(fs, unit))
    return problems, programs


def check_environment_files(fs: ImageFS, unit: Unit) -> Iterator[Problem]:
    """EnvironmentFile= is read by the service manager on the host before the image is
    mounted (REFERENCE.md section 5): a file in the image never satisfies it."""
    for section in unit.exec_sections():
        for value in unit.values(section, "EnvironmentFile"):
            optional = value.startswith("-")
            path = value.lstrip("-")
            in_image = "%" not in path and resolve(fs, path) is not None
            copy = ("the image's copy is never read" if in_image
                    else "the image has none, which does not matter")
            fix = (f"set the variables with Environment= in {unit.name}, install {path} on "
                   "the host, or read the file in ExecStart= (sh -c '. FILE; exec PROGRAM')")
            # the image ships a copy systemd never reads, and a host without the file fails
            # the start: an error. Naming a file only the host has is a warning (only the host
            # can tell whether it is there), and so is an optional one
            severity = ERROR if in_image and not optional else WARNING
            missing = ("without it on the host the variables are unset" if optional else
                       "a host without it fails the start ('Failed to load environment files')")
            yield Problem(severity, "environment-file-host", path,
                          f"EnvironmentFile={value} in {unit.name} is read from the host's "
                          f"{path} by the service manager before the image is mounted "
                          f"({copy}); {missing}", fix)


def _find_program(fs: ImageFS, program: str) -> str | None:
    candidates = [program] if program.startswith("/") else [
        posixpath.join(d, program) for d in SPLIT_USR_PATH]
    for candidate in candidates:
        real = resolve(fs, candidate)
        if real is not None:
            return real
    return None


def _check_program(fs: ImageFS, program: str, directive: str,
                   programs: set[str]) -> Iterator[Problem]:
    real = _find_program(fs, program)
    if real is None:
        looked = program if program.startswith("/") else f"{program} (in {':'.join(SPLIT_USR_PATH)})"
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
            return
        programs.add(target)
    if runs_shell(interp, arg):
        yield from _check_script_commands(fs, program, real, programs)


def _check_script_commands(fs: ImageFS, program: str, real: str,
                           programs: set[str]) -> Iterator[Problem]:
    """The programs a shell script runs must be in the image (the builder brings them:
    closure/scripts.py); the scripts among them are read in turn. A warning: the script
    may never reach the command."""
    size = fs.stat(real).size
    if size > SHELL_SCRIPT_MAX:
        return

    def read(path: str) -> bytes | None:
        found = resolve(fs, path)
        if found is None:
            return None
        st = fs.stat(found)
        return fs.read(found, 0, min(st.size, SHELL_SCRIPT_MAX)) if st.kind == "file" else None

    missing = []
    for word in script_needs(fs.read(real, 0, size), read)[0]:
        found = _find_program(fs, word)
        if found is None:
            missing.append(word)
        elif found not in programs and fs.stat(found).kind == "file":
            programs.add(found)
            head = fs.read(found, 0, 256)
            shebang = parse_shebang(head) if head.startswith(b"#!") else None
            if shebang is not None and runs_shell(*shebang):
                yield from _check_script_commands(fs, word, found, programs)
    if missing:
        are = "is" if len(missing) == 1 else "are"
        yield Problem(WARNING, "script-command-missing", real,
                      f"{program} runs {', '.join(missing)}, which {are} "
                      "not in the image: the script fails with 'not found' where it gets there",
                      "add the programs to the image (contents or packages)")


# -- what systemd itself refuses or ignores in the unit files (rules/ holds its facts)


def known_only(unit: Unit, version: int, keep: tuple[str, str] | None = None) -> Unit:
    """The unit as systemd ``version`` reads it: keys it does not know are dropped
    (but ``keep``, a (section, key), to see what the unit would be with it)."""
    known = directives.known_keys(version)
    sections = {s: [(k, v) for k, v in pairs if k in known.get(s, ()) or (s, k) == keep]
                for s, pairs in unit.sections.items()}
    return Unit(name=unit.name, text=unit.text, origin=unit.origin, sections=sections)


def _renamed(unit: Unit, section: str, key: str, new: str) -> Unit:
    sections = {s: [(new if (s, k) == (section, key) else k, v) for k, v in pairs]
                for s, pairs in unit.sections.items()}
    return Unit(name=unit.name, text=unit.text, origin=unit.origin, sections=sections)


SERVICE_TYPES = ("simple", "exec", "forking", "oneshot", "dbus", "notify", "notify-reload", "idle")
# Restart= values systemd accepts with Type=oneshot (since 244; service_verify())
ONESHOT_RESTARTS = ("no", "on-failure", "on-abnormal", "on-watchdog", "on-abort")
# systemd 247 (Debian 11) crashes (PID 1 exits) starting Type=dbus without BusName=; 252 refuses
DBUS_CRASH_FIXED = 252
# RestartForceExitStatus= with Type=oneshot is refused before this version
ONESHOT_FORCE_STATUS_SINCE = 256


def _last(unit: Unit, section: str, key: str) -> str | None:
    values = unit.values(section, key)
    return values[-1] if values else None


def service_type(unit: Unit) -> str:
    """Type=, or what systemd picks without it (service_add_extras())."""
    valid = [v for v in unit.values("Service", "Type") if v in SERVICE_TYPES]
    if valid:
        return valid[-1]
    if _last(unit, "Service", "BusName"):
        return "dbus"
    return "simple" if _starts(unit) else "oneshot"


def _starts(unit: Unit) -> list[str]:
    return [" ".join(c.argv) for c in exec_commands(unit) if c.directive.startswith("ExecStart=")]


def service_refusal(unit: Unit, version: int, keep: tuple[str, str] | None = None) -> str | None:
    """systemd's own words when it refuses to load the service (service_verify() in
    src/core/service.c, the same in v247, v252 and v257 except where noted), else None."""
    u = known_only(unit, version, keep)
    kind = service_type(u)
    starts = _starts(u)
    stops = [c for c in exec_commands(u) if c.directive.startswith("ExecStop=")]
    success = (_last(u, "Unit", "SuccessAction") or "none") != "none"
    if not starts and not stops and not success:
        return "Service has no ExecStart=, ExecStop=, or SuccessAction=. Refusing."
    if kind != "oneshot" and not starts:
        return ("Service has no ExecStart= setting, which is only allowed for Type=oneshot "
                "services. Refusing.")
    if not profiles.is_yes(_last(u, "Service", "RemainAfterExit")) and not starts \
            and not success:
        return ("Service has no ExecStart= and no SuccessAction= settings and does not have "
                "RemainAfterExit=yes set. Refusing.")
    if kind != "oneshot" and len(starts) > 1:
        return ("Service has more than one ExecStart= setting, which is only allowed for "
                "Type=oneshot services. Refusing.")
    if kind == "oneshot" and (_last(u, "Service", "Restart") or "no") not in ONESHOT_RESTARTS:
        return ("Service has Restart= set to either always or on-success, which isn't allowed "
                "for Type=oneshot services. Refusing.")
    if kind == "oneshot" and u.values("Service", "RestartForceExitStatus") \
            and version < ONESHOT_FORCE_STATUS_SINCE:
        key = "RestartForceStatus" if version < 252 else "RestartForceExitStatus"  # 247's words
        return f"Service has {key}= set, which isn't allowed for Type=oneshot services. Refusing."
    if kind == "dbus" and not _last(u, "Service", "BusName"):
        return ("Service is of type D-Bus but no D-Bus service name has been specified. "
                "Refusing.")
    if _last(u, "Service", "PAMName") and \
            (_last(u, "Service", "KillMode") or "control-group") not in ("control-group", "mixed"):
        return ("Service has PAM enabled. Kill mode must be set to 'control-group' or 'mixed'. "
                "Refusing.")
    return None


SERVICE_FIXES = {
    "no ExecStart=, ExecStop=": "give it an ExecStart= line (check the spelling of the key)",
    "no ExecStart= setting": "give it an ExecStart= line, or set Type=oneshot",
    "RemainAfterExit=yes": "give it an ExecStart= line, or set RemainAfterExit=yes",
    "more than one ExecStart=": "keep one ExecStart= (run the others in ExecStartPre=/"
                                "ExecStartPost=), or set Type=oneshot",
    "Restart=": "use Restart=on-failure (or no), or another Type=",
    "RestartForce": "drop RestartForceExitStatus= or use another Type=",
    "D-Bus": "set BusName= to the name the service takes on the bus",
    "PAM": "set KillMode=control-group or mixed",
}


def check_service(unit: Unit, target: Target) -> tuple[list[Problem], set[int]]:
    """service_verify() per version; returns the problems and the versions that refuse it."""
    if not unit.name.endswith(".service"):
        return [], set()
    said: dict[str, list[int]] = {}
    for version in reversed(target.versions()):  # newest first: its words name the case
        reason = service_refusal(unit, version)
        if reason is not None:
            same = reason.replace("RestartForceStatus=", "RestartForceExitStatus=")
            said.setdefault(next((r for r in said if r == same), reason), []).append(version)
    problems = []
    for reason, versions in said.items():
        fix = next((f for k, f in SERVICE_FIXES.items() if k in reason), "fix the unit")
        worse = ""
        if "D-Bus" in reason and min(versions) < DBUS_CRASH_FIXED:
            worse = ("; systemd 247 does worse: its PID 1 dies when the unit is started "
                     "(tests/e2e/test_verify_rules.py)")
        problems.append(Problem(
            ERROR, "service-refused", unit.origin,
            f"{target.say(versions, 'refuses', 'refuse')} to load {unit.name}: '{reason}' "
            f"(the unit is 'bad-setting' and every start fails){worse}", fix))
    return problems, {v for vs in said.values() for v in vs}


def check_keys(unit: Unit, target: Target, broken: set[int]) -> Iterator[Problem]:
    """Keys and sections systemd does not know: it logs them and goes on without them."""
    allowed = directives.sections_of(unit.name)
    for section, pairs in unit.sections.items():
        if section.startswith("X-"):
            continue  # systemd's own escape for extensions: ignored silently
        if section not in allowed:
            yield Problem(WARNING, "unknown-section", unit.origin,
                          f"[{section}] is not a section of a {unit.name.rsplit('.', 1)[-1]} "
                          f"unit: systemd ignores it and every key in it ('Unknown section "
                          f"'{section}'. Ignoring.')",
                          f"move its keys to [{'], ['.join(allowed)}], or drop it")
            continue
        for key in dict.fromkeys(k for k, _ in pairs):
            if key.startswith("X-"):
                continue
            knowing = directives.versions_knowing(section, key)
            ignoring = [v for v in target.versions() if v not in knowing]
            if not ignoring:
                continue
            # an error when the ignored key is what breaks the unit: read as meant (the
            # newer key known, the typo spelt right) the unit would load
            meant = key if knowing else (directives.closest(section, key) or key)
            fixed = _renamed(unit, section, key, meant)
            hurt = [v for v in ignoring if v in broken
                    and service_refusal(fixed, v, keep=(section, meant)) is None]
            severity = ERROR if hurt else WARNING
            effect = (f"; without it {target.say(hurt, 'refuses', 'refuse')} the unit" if hurt
                      else "; systemd ignores it")
            logged = f"(systemd logs 'Unknown key '{key}' in section [{section}], ignoring.')"
            if knowing:
                yield Problem(severity, "key-needs-newer-systemd", unit.origin,
                              f"{key}= in [{section}] of {unit.name} needs systemd >= "
                              f"{min(knowing)}: {target.say(ignoring, 'does', 'do')} not know it "
                              f"{logged}{effect}",
                              f"keep {key}= only for hosts with systemd >= {min(knowing)}, or "
                              "reach the same with keys older versions know")
                continue
            home = directives.home_section(key, tuple(s for s in allowed if s != section))
            near = directives.closest(section, key)
            if home is not None:
                fix = f"move {key}= to [{home}]"
            elif near is not None:
                fix = f"did you mean {near}=?"
            else:
                fix = f"drop {key}= (see systemd.directives(7) for the known keys)"
            yield Problem(severity, "unknown-key", unit.origin,
                          f"{key}= in [{section}] of {unit.name} is a key no systemd knows "
                          f"{logged}{effect}", fix)


def template_of(name: str) -> str:
    """demo@x.service -> demo@.service (what must exist for an instance); others unchanged."""
    if "@" not in name:
        return name
    head, _, rest = name.partition("@")
    return f"{head}@{rest[rest.rfind('.'):]}" if "." in rest else name


def triggered_unit(unit: Unit) -> tuple[str, str] | None:
    """(the unit a timer, path or socket starts, the setting that names it)."""
    stem, _, kind = unit.name.rpartition(".")
    section = {"timer": "Timer", "path": "Path", "socket": "Socket"}.get(kind)
    if section is None:
        return None
    key = "Service" if kind == "socket" else "Unit"
    named = _last(unit, section, key)
    if named:
        return named, f"{key}={named}"
    if kind == "socket" and profiles.is_yes(_last(unit, "Socket", "Accept")):
        base = stem.split("@", 1)[0]
        return f"{base}@.service", "Accept=yes (one instance of the template per connection)"
    return f"{stem}.service", "the same name"


def check_trigger(unit: Unit, attached: set[str], in_image: set[str]) -> Iterator[Problem]:
    found = triggered_unit(unit)
    if found is None:
        return
    name, why = found
    if template_of(name) in attached:
        return
    where = ("is in the image but does not match the prefix, so portabled does not attach it"
             if template_of(name) in in_image else "is not in the image")
    if name.endswith("@.service"):
        said = ("the first connection fails the socket with result 'resources' ('Failed to "
                "queue service startup job' on 247/252, 'Failed to load connection service "
                "unit' on 257)")
    elif unit.name.endswith(".socket"):
        said = f"systemd refuses to start it ('Socket service {name} not loaded, refusing.')"
    else:
        said = (f"systemd refuses to start it ('Refusing to start, unit {name} to trigger "
                "not loaded.')")
    yield Problem(ERROR, "trigger-missing", unit.origin,
                  f"{unit.name} starts {name} ({why}), which {where}: {said}",
                  f"add {name} to the image's units, or point {unit.name} at a unit it ships")


def _profile_names(key: str, yes: bool, versions: Iterable[int]) -> list[str]:
    vs = list(versions)
    return [p for p in PROFILES if any(profiles.sets_yes(v, p, key) == yes for v in vs)]


def check_users(unit: Unit, target: Target) -> Iterator[Problem]:
    """User=/Group= under the profile: DynamicUser=yes from the profile, or a host lookup."""
    if not unit.name.endswith(".service"):
        return
    dynamic_versions = [v for v in target.versions()
                        if profiles.sets_yes(v, target.profile, "DynamicUser")]
    own_dynamic = profiles.is_yes(_last(unit, "Service", "DynamicUser"))
    for key, status in (("User", "217/USER"), ("Group", "216/GROUP")):
        name = _last(unit, "Service", key)
        if not name or name in ("root", "0") or "%" in name:
            continue
        if dynamic_versions:
            yield Problem(WARNING, "user-dynamic", unit.origin,
                          f"{key}={name} in {unit.name}: the {target.profile!r} profile sets "
                          f"DynamicUser=yes ({target.on(dynamic_versions)}), so {name} is the "
                          "name of a user systemd allocates at start (or the host's user of "
                          "that name), never a user of the image; files in the image are not "
                          "its own",
                          f"drop {key}= (a dynamic user is made anyway), or attach with "
                          f"--profile trusted and create {name} on the host")
        elif not own_dynamic and not name.isdigit():
            yield Problem(WARNING, "user-on-host", unit.origin,
                          f"{key}={name} in {unit.name}: the {target.profile!r} profile runs "
                          f"the service as {name} looked up on the host (not in the image); a "
                          f"host without it fails the start with status={status}",
                          f"create {name} on the host (useradd --system {name}), or set "
                          "DynamicUser=yes in the unit")


def check_capabilities(unit: Unit, target: Target, socket_services: set[str]) -> Iterator[Problem]:
    """Capabilities a unit asks for that its service will not hold.

    Every profile but trusted sets PrivateUsers=yes: the service's capabilities hold only
    in a user namespace of its own, never in the host's network, so no grant lets it bind
    a port below 1024 (nsd's unit lists CAP_NET_BIND_SERVICE for port 53); a .socket unit
    can, since systemd binds it on the host. And CapabilityBoundingSet= only takes
    capabilities away: a service that is not root holds none that AmbientCapabilities=
    does not grant.
    """
    if not unit.name.endswith(".service"):
        return
    bounding = unit.values("Service", "CapabilityBoundingSet")
    wanted: list[str] = []
    for value in bounding:
        if not value.strip().startswith("~"):  # not a list of what to drop
            wanted += [w.upper() for w in value.split() if w.upper() not in wanted]
    ambient = {w.upper() for value in unit.values("Service", "AmbientCapabilities")
               for w in value.lstrip("~").split()}
    if any({"privileged", "ambient"} & set(c.flags) for c in exec_commands(unit)
           if c.directive.startswith("ExecStart=")):
        return  # '+' or '!': run with the privileges the manager has
    private = [v for v in target.versions() if profiles.sets_yes(v, target.profile, "PrivateUsers")]
    if private and "CAP_NET_BIND_SERVICE" in {*wanted, *ambient} and unit.name not in socket_services:
        yield Problem(WARNING, "port-below-1024", unit.origin,
                      f"{unit.name} asks for CAP_NET_BIND_SERVICE, but the {target.profile!r} "
                      f"profile sets PrivateUsers=yes ({target.on(private)}): capabilities hold "
                      "only in the service's own user namespace, never in the host's network, "
                      "so binding a port below 1024 is 'Permission denied' whatever the unit "
                      "grants (unless the host lowers net.ipv4.ip_unprivileged_port_start)",
                      "listen in a .socket unit (systemd binds it on the host and passes it "
                      "in), use a port from 1024 up, or attach with --profile trusted")
        wanted = [c for c in wanted if c != "CAP_NET_BIND_SERVICE"]
    dynamic = [v for v in target.versions() if profiles.sets_yes(v, target.profile, "DynamicUser")]
    user = _last(unit, "Service", "User")
    as_root = not dynamic and not profiles.is_yes(_last(unit, "Service", "DynamicUser")) and \
        user in (None, "", "root", "0")
    missing = [c for c in wanted if c not in ambient]
    if as_root or not missing:
        return  # root: the bounding set is what it has
    grantable = [c for c in missing  # left in the bounding set with the profile's lines
                 if all(profiles.keeps_capability(v, target.profile, bounding, c)
                        for v in target.versions())]
    who = (f"the {target.profile!r} profile runs it as a dynamic user ({target.on(dynamic)})"
           if dynamic else f"it runs as {user or 'a dynamic user'}")
    fix = (f"grant what it uses with AmbientCapabilities={' '.join(grantable)}" if grantable
           else f"the {target.profile!r} profile allows none of them: attach with --profile "
                "trusted")
    yield Problem(WARNING, "capabilities-not-granted", unit.origin,
                  f"CapabilityBoundingSet= in {unit.name} keeps {', '.join(missing)}, but {who}, "
                  "which holds no capabilities unless AmbientCapabilities= grants them", fix)


# programs that generate code at run time (a JIT): MemoryDenyWriteExecute=yes breaks them
JIT_PROGRAM = re.compile(r"^(node|nodejs|java|luajit[0-9.-]*|pypy[0-9.]*|dotnet|mono|deno|bun|"
                         r"php[0-9.]*|php-fpm[0-9.]*|php-cgi[0-9.]*|beam\.smp|qemu-.*)$")
JIT_LIBRARY = re.compile(r"^lib(node|jvm|luajit|v8|mono|coreclr|pypy|php)[-.0-9a-z]*\.so")


def _jit_runtime(fs: ImageFS, program: str) -> str | None:
    """The JIT runtime ``program`` is or runs (its own name, its #! interpreter, a library)."""
    real = _find_program(fs, program)
    names = [posixpath.basename(program)]
    if real is None:
        return names[0] if JIT_PROGRAM.match(names[0]) else None
    names.append(posixpath.basename(real))
    st = fs.stat(real)
    if st.kind == "file":
        head = fs.read(real, 0, 256)
        shebang = parse_shebang(head)
        if shebang is not None:
            interp, arg = shebang
            names.append(posixpath.basename(interp))
            via_env = env_program(arg) if posixpath.basename(interp) == "env" else None
            if via_env is not None:
                names.append(posixpath.basename(via_env))
        else:
            facts = ElfFiles(fs).info(real)
            if facts is not None:
                lib = next((n for n in facts.needed if JIT_LIBRARY.match(n)), None)
                if lib is not None:
                    return f"{names[0]} (linked with {lib})"
    return next((n for n in names if JIT_PROGRAM.match(n)), None)


def check_profile(fs: ImageFS, unit: Unit, target: Target, socket_services: set[str]
                  ) -> Iterator[Problem]:
    """What the profile's sandbox does to this unit (its drop-in wins over the unit's keys)."""
    versions = target.versions()
    if unit.name.endswith(".service"):
        mdwe = [v for v in versions
                if profiles.sets_yes(v, target.profile, "MemoryDenyWriteExecute")]
        if mdwe:
            for command in exec_commands(unit):
                runtime = _jit_runtime(fs, command.argv[0])
                if runtime is None:
                    continue
                working = [p for p in PROFILES if p not in
                           _profile_names("MemoryDenyWriteExecute", True, versions)]
                yield Problem(WARNING, "profile-jit", unit.origin,
                              f"{command.directive} runs {runtime}, a JIT runtime: the "
                              f"{target.profile!r} profile sets MemoryDenyWriteExecute=yes "
                              f"({target.on(mdwe)}), which refuses the writable+executable "
                              "memory its JIT needs; it crashes or fails at start",
                              f"attach with --profile {' or '.join(working) or 'trusted'}, or "
                              "turn the JIT off (node --jitless, java -Xint, ...)")
                break
    if unit.name.endswith(".socket"):
        return
    private = [v for v in versions if profiles.sets_yes(v, target.profile, "PrivateNetwork")]
    wants_net = any(w in ("network-online.target", "network.target")
                    for key in ("Wants", "Requires", "After")
                    for value in unit.values("Unit", key) for w in value.split())
    if private and wants_net and unit.name not in socket_services:
        working = [p for p in PROFILES if p not in _profile_names("PrivateNetwork", True, versions)]
        yield Problem(WARNING, "profile-no-network", unit.origin,
                      f"{unit.name} asks for the network, but the {target.profile!r} profile "
                      f"sets PrivateNetwork=yes ({target.on(private)}): the service sees only "
                      "its own loopback and cannot open internet sockets "
                      "(RestrictAddressFamilies=AF_UNIX ...)",
                      f"attach with --profile {' or '.join(working)}, or let a .socket unit "
                      "listen for it (socket activation passes the host's socket in)")


# folders a service writes by convention -> the directive that makes a writable one there
WRITABLE_BY = {"/var/lib": "StateDirectory", "/var/cache": "CacheDirectory",
               "/var/log": "LogsDirectory"}


def _paths_in(word: str) -> Iterator[str]:
    """Absolute paths in one argument: the word, or the value of --opt=PATH / KEY=PATH."""
    for part in (word, word.split("=", 1)[-1]):
        if part.startswith("/") and "%" not in part and "$" not in part:
            yield posixpath.normpath(part)
            return


def check_run_replaced(unit: Unit, target: Target) -> Iterator[Problem]:
    """``ReadWritePaths=/run`` (or ReadOnly, Inaccessible, Exec, NoExec): systemd keeps one
    mount per path, and these win over the tmpfs the profile puts on /run (namespace.c,
    MountMode order), so /run is the image's, read-only: the profile's sockets below it
    cannot be mounted and every start fails (status=226/NAMESPACE)."""
    hit = [v for v in target.versions() if profiles.run_mounts(v, target.profile)]
    if not hit:
        return
    mounts = profiles.run_mounts(hit[-1], target.profile)
    for section in unit.exec_sections():
        for key in PATH_DIRECTIVES:
            for value in unit.values(section, key):
                for word in value.split():
                    if posixpath.normpath("/" + word.lstrip("-+").lstrip("/")) != "/run":
                        continue
                    yield Problem(ERROR, "run-replaced", unit.origin,
                                  f"{key}={word} in {unit.name} puts the image's read-only /run "
                                  f"where the {target.profile!r} profile mounts a tmpfs "
                                  f"({target.on(hit)}): its {mounts[0]} cannot be mounted there "
                                  "and every start fails with status=226/NAMESPACE",
                                  f"drop /run from {key}= (the unit's /run is a writable tmpfs "
                                  "already), or name the folder below it (RuntimeDirectory=)")


def check_read_only_paths(unit: Unit, target: Target) -> Iterator[Problem]:
    """Arguments naming a place under /var/lib, /var/cache or /var/log that the unit does not
    make writable: the image is read-only, and every profile but trusted adds
    ProtectSystem=strict, so a service writing there fails ('Read-only file system')."""
    if not unit.name.endswith(".service"):
        return
    writable: list[str] = []
    for section in unit.exec_sections():
        for key, root in (("StateDirectory", "/var/lib"), ("CacheDirectory", "/var/cache"),
                          ("LogsDirectory", "/var/log")):
            for value in unit.values(section, key):
                writable += [f"{root}/{w.split(':', 1)[0]}" for w in value.split()]
        for key in ("ReadWritePaths", "BindPaths", "TemporaryFileSystem"):
            for value in unit.values(section, key):
                writable += [bind_paths(w)[1] if key == "BindPaths"
                             else w.lstrip("-+").partition(":")[0] for w in value.split()]
    strict = [v for v in target.versions()
              if profiles.setting(v, target.profile, "ProtectSystem") == "strict"]
    why = (f"the image is read-only and the {target.profile!r} profile sets ProtectSystem=strict"
           if strict else "the image is read-only")
    for command in exec_commands(unit):
        for word in command.argv[1:]:
            for path in _paths_in(word):
                under = next((r for r in WRITABLE_BY if path.startswith(r + "/")), None)
                if under is None or _under(path, writable):
                    continue
                rest = path[len(under) + 1:]
                name = rest.split("/", 1)[0]
                if "/" not in rest:  # a file right in /var/log: a folder of its own is needed
                    name = name.split(".", 1)[0] or name
                yield Problem(WARNING, "path-read-only", path,
                              f"{command.directive} names {path}, which is read-only in the "
                              f"unit ({why}): if the service writes there it fails with "
                              "'Read-only file system'",
                              f"set {WRITABLE_BY[under]}={name} and use {under}/{name}/ (systemd "
                              "mounts it writable for the unit), or ReadWritePaths= for a host "
                              "path")
                break


def check_ignored_drop_ins(fs: ImageFS, units: Iterable[UnitFile]) -> Iterator[Problem]:
    for unit in units:
        for conf in drop_ins(fs, unit.name):
            yield Problem(WARNING, "drop-in-ignored", conf,
                          f"drop-in of {unit.name} inside the image: portabled attaches only "
                          "the unit file and systemd never reads this drop-in",
                          f"merge its settings into {unit.name}")


def declared_units(fs: ImageFS) -> set[str] | None:
    """The units our build was given (closure record), or None for other images."""
    record = closure_record(fs)  # validated: the record is untrusted input
    if record is None or "units" not in record:
        return None
    return set(record["units"])


def check_undeclared(fs: ImageFS, units: Iterable[UnitFile]) -> Iterator[Problem]:
    """Every matching unit in the search folders is attached, also ones nobody meant to ship."""
    declared = declared_units(fs)
    for unit in units:
        if declared is not None:
            if unit.name in declared:
                continue
            why = "the build was not given it (it came with a package or contents)"
        else:  # no closure record: a unit where our builds put units counts as declared
            if posixpath.dirname(unit.path) == BUILD_UNIT_DIR:
                continue
            why = f"it is not in {BUILD_UNIT_DIR}, where a build puts its units"
        yield Problem(WARNING, "undeclared-unit", unit.path,
                      f"portabled attaches {unit.name} too, as it matches the prefix; {why}",
                      f"leave {unit.path} out of the image (exclude it), or declare it in units")


# -- whole-image checks, from one walk


def check_links(fs: ImageFS, entries: dict[str, Stat]) -> Iterator[Problem]:
    for path, st in entries.items():
        if st.kind != "symlink":
            continue
        if resolve(fs, path) is not None:
            continue
        target = st.target or fs.readlink(path)
        lexical = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        if _under(lexical, FRESH_MOUNTS):
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


def check_unreadable(fs: IndexedFS, units: list[Unit], target: Target) -> Iterator[Problem]:
    """Files the service's user cannot read. Everything in an image is owned by root and a
    portable service runs as a dynamic user (DynamicUser=yes in every profile but
    ``trusted``), or as its User=: only the bits for others count. A file a unit's command
    line names is an error ("Permission denied" at start), any other a warning."""
    as_root = target.profile == "trusted" and not any(
        unit.values("Service", "User") or unit.values("Service", "DynamicUser") for unit in units)
    if as_root:
        return  # root reads everything
    named = {word for unit in units for command in exec_commands(unit)
             for word in command.argv if word.startswith("/")}
    for path, st in fs.entries.items():
        if st.kind == "symlink" or _under(path, FRESH_MOUNTS):
            continue
        need = 0o005 if st.kind == "dir" else 0o004
        if st.mode & need == need:
            continue
        what = "enter" if st.kind == "dir" else "read"
        severity = ERROR if path in named else WARNING
        yield Problem(severity, "unreadable", path,
                      f"the service's user cannot {what} this {st.kind} (mode {st.mode:04o}, "
                      "owned by root in the image): 'Permission denied' when the service "
                      "opens it", f"chmod o+{'rx' if st.kind == 'dir' else 'r'} it before "
                      "building, or run the unit under the trusted profile as root")


# -- everything


def verify(fs: ImageFS, image_name: str, target: Target | None = None) -> list[Problem]:
    """Every problem in the image, errors and warnings, in a stable order."""
    target = target or Target()
    ifs = fs if isinstance(fs, IndexedFS) else IndexedFS(fs)
    prefix = image_prefix(image_name)
    problems: list[Problem] = []
    problems.extend(check_name(image_name))
    problems.extend(check_os_release(ifs, prefix))
    unit_problems, unit_files = check_units(ifs, prefix)
    problems.extend(unit_problems)
    problems.extend(check_scaffold(ifs))
    problems.extend(check_undeclared(ifs, attached_units(ifs, prefix)))
    problems.extend(check_ignored_drop_ins(ifs, unit_files))
    units = [load_unit(ifs, u) for u in unit_files]
    attached = {u.name for u in units}
    in_image = set(unit_candidates(ifs))
    socket_services = {t[0] for u in units if u.name.endswith(".socket")
                       for t in [triggered_unit(u)] if t is not None}
    programs: set[str] = set()
    for unit in units:
        refused, broken = check_service(unit, target)
        problems.extend(refused)
        problems.extend(check_keys(unit, target, broken))
        problems.extend(check_trigger(unit, attached, in_image))
        problems.extend(check_users(unit, target))
        problems.extend(check_capabilities(unit, target, socket_services))
        problems.extend(check_profile(ifs, unit, target, socket_services))
        problems.extend(check_read_only_paths(unit, target))
        problems.extend(check_run_replaced(unit, target))
        unit_needs, found = check_unit_needs(ifs, unit)
        problems.extend(unit_needs)
        programs |= found
    problems.extend(elfcheck.check_elf_files(ifs, ifs.entries, programs))
    problems.extend(check_links(ifs, ifs.entries))
    problems.extend(check_modes(ifs.entries))
    problems.extend(check_unreadable(ifs, units, target))
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


# what a build with allow-missing already reported as a warning (closure.warnings)
MISSING_RULES = frozenset({"exec-missing", "interpreter-missing", "shell-command-missing",
                           "elf-interpreter", "elf-library"})


def check_written(path: Path, image_name: str, warn: Callable[[str], None],
                  allow_missing: bool = False) -> None:
    """The build's gate: raise :class:`VerifyError` when the written image has errors.

    The file is read back through the squashfs reader. With ``allow_missing`` (the
    spec's allow-missing) a missing program, interpreter or library is a warning, and
    not printed again: the closure already said so.
    """
    fs = open_image(path)
    try:
        problems = verify(fs, image_name)
    finally:
        fs.close()
    if allow_missing:
        problems = [p for p in problems if p.rule not in MISSING_RULES]
    gate(problems, "the image would not work", warn)


def gate(problems: list[Problem], verdict: str, warn: Callable[[str], None]) -> None:
    """The build's gate: every finding is shown, and an error stops the image from landing."""
    for p in problems:
        warn(p.line())
    errs = errors(problems)
    if errs:
        first = errs[0]
        more = f" (and {len(errs) - 1} more, listed above)" if len(errs) > 1 else ""
        raise VerifyError(f"{verdict}: {first.path}: {first.message}{more}",
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
