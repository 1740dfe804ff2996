"""The documentation parts that are facts of the code, generated so they cannot drift.

``python -m portable_service.docgen`` rewrites, from the code:

- the README's blocks between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->``:
  ``exit-codes`` (errors.EXIT_CODES), ``verify-rules`` (every rule id the checks in
  look/ report, with its severity) and ``profiles`` (what each portable profile sets,
  from rules/data);
- the same exit-code block in docs/json.md;
- the man page docs/portable-service.1, from the argument parser (argparse-manpage).

tests/cli/test_docs.py fails when a generated part is out of date.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from portable_service.errors import EXIT_CODES

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent.parent
MAN_PAGE = REPO / "docs" / "portable-service.1"
MAN_DATE = "2026-12-01"  # the man page's date: fixed, so the page is reproducible

# What systemd (or the service, at start) does about each rule's finding. A rule the
# checks report that is missing here is listed with its id alone, and the doc test fails.
RULE_TEXT: dict[str, str] = {
    "extension-release-missing": "an extension without `extension-release.NAME` is refused "
                                 "(\"lacks extension-release data\")",
    "extension-release-name": "systemd 252 opens only `extension-release.<image name without "
                              ".raw>`: a file named for another image is not read",
    "extension-release-match": "`ID=` must be the base's (or `_any`), `VERSION_ID=`/"
                               "`SYSEXT_LEVEL=` must match, `SYSEXT_SCOPE=` must include "
                               "`portable`, or the attach is refused",
    "extension-prefixes": "every prefix given to attach must be in some layer's "
                          "`PORTABLE_PREFIXES`, or portabled refuses the match",
    "extension-base": "the base of a stack must be a full image (with os-release), not "
                      "itself an extension",
    "extension-outside-overlay": "systemd overlays only `/usr` and `/opt` of an extension: "
                                 "anything else in it is never seen",
    "extension-conflict": "two extensions ship one path differently: which one wins depends "
                          "on their order",
    "verity-root-hash": "a DDI's signature must be for the root hash its partition UUIDs "
                        "carry, or systemd refuses the pair",
    "verity-signature": "a DDI's signature partition must hold the JSON systemd reads "
                        "(`rootHash`, `signature`)",
    "verity-incomplete": "systemd needs the hash tree and the root hash together (a signature "
                         "alone, or a tree without its root hash, is refused)",
    "verity-mismatch": "the hash tree, root hash or signature does not match the image: "
                       "systemd refuses to open it (a changed byte, a stale sidecar)",
    "verity-signature-unchecked": "there is no certificate (given, or in `/etc/verity.d`) to "
                                  "check the root hash signature with",
    "image-name": "portabled derives the unit prefix from the file name up to the first `_` "
                  "and refuses a name that gives none",
    "os-release-missing": "portabled refuses an image without `/etc/os-release` or "
                          "`/usr/lib/os-release`",
    "os-release-id": "systemd 252 and later refuse an empty `ID=`",
    "portable-prefixes": "systemd 252 and later refuse units outside `PORTABLE_PREFIXES`",
    "no-matching-units": "portabled finds no unit whose name starts with the prefix: "
                         "nothing to attach",
    "unit-not-file": "a unit that is not a regular file is not attached",
    "unit-empty": "an empty unit file is masked, not attached",
    "unit-symlink": "a unit that is a symlink is attached only when it resolves inside the "
                    "image",
    "root-mode": "a root folder others cannot enter makes every start fail",
    "mount-point": "a folder or file portabled mounts over (`/proc`, `/dev`, `/etc/resolv.conf`"
                   ", ...) is missing: the mount fails",
    "unit-mount-point": "a folder a unit's directive mounts over (`StateDirectory=`, "
                        "`BindPaths=`, ...) is missing: `Failed to create destination mount "
                        "point node`",
    "bind-mount-kind": "a `BindPaths=` destination in the image is a folder where the source "
                       "is a file or socket (`/dev/log`), or the other way: `Not a "
                       "directory`, `status=226/NAMESPACE`",
    "exec-missing": "an `Exec*=` program is not in the image: `status=203/EXEC`",
    "exec-not-file": "an `Exec*=` program is a folder or special file: `status=203/EXEC`",
    "exec-not-executable": "an `Exec*=` program has no execute bit: `status=203/EXEC` "
                           "(a warning when only other users may run it)",
    "interpreter-missing": "a script's `#!` interpreter is not in the image: `status=203/EXEC`",
    "shell-command-missing": "a command a `sh -c` line runs is not in the image",
    "script-command-missing": "a command a shell script run by a unit runs is not in the "
                              "image: `id: not found`",
    "elf-interpreter": "an ELF program's loader (`PT_INTERP`) is missing: `status=203/EXEC`",
    "elf-library": "a library the loader looks for is missing: `error while loading shared "
                   "libraries`",
    "python-stdlib-missing": "python3 starts without `encodings`: \"No module named "
                             "'encodings'\" (an error when a unit runs it)",
    "dangling-symlink": "a symlink points to nothing inside the image",
    "setuid": "a setuid/setgid file keeps its bits: root's, in the image",
    "world-writable": "a world-writable file or folder in a published image",
    "unreadable": "the service's user (a dynamic user; everything in the image is root's) "
                  "cannot read the file or enter the folder: `Permission denied`",
    "unknown-key": "`Unknown key 'ExecStrat' in section [Service], ignoring.`; the fix names "
                   "the closest known key",
    "unknown-section": "`Unknown section 'Servce'. Ignoring.`; the fix names the right "
                       "section",
    "key-needs-newer-systemd": "an older systemd ignores a key it does not know yet "
                               "(`BindLogSockets=` needs 257)",
    "service-refused": "`service_verify()` refuses the unit (`bad-setting`): no "
                       "`ExecStart=`, several without `Type=oneshot`, `Type=dbus` without "
                       "`BusName=`, ...",
    "trigger-missing": "a timer, path or socket whose unit is not attached: `Refusing to "
                       "start, unit X to trigger not loaded.`",
    "user-on-host": "under `trusted`, `User=` is looked up on the host: a missing user is "
                    "`status=217/USER`",
    "user-dynamic": "under `default`, `nonetwork`, `strict` the profile's `DynamicUser=yes` "
                    "makes `User=` a dynamic user's name",
    "port-below-1024": "`PrivateUsers=yes` (every profile but `trusted`) keeps capabilities "
                       "out of the host's network: no grant binds a port below 1024 "
                       "(`Permission denied`); a `.socket` unit can",
    "capabilities-not-granted": "`CapabilityBoundingSet=` keeps capabilities a service that is "
                                "not root does not hold without `AmbientCapabilities=`",
    "profile-jit": "`MemoryDenyWriteExecute=yes` (every profile but `trusted`) refuses a "
                   "JIT's writable+executable memory (node, java, luajit, ...)",
    "profile-no-network": "under `nonetwork`/`strict` a service that asks for the network "
                          "gets no internet sockets",
    "run-replaced": "`ReadWritePaths=/run` (or `ReadOnlyPaths=`, ...) puts the image's "
                    "read-only /run over the profile's tmpfs: its sockets (D-Bus, the journal) "
                    "cannot be mounted, `status=226/NAMESPACE`",
    "path-read-only": "an `Exec*=` argument names a place under `/var/lib`, `/var/cache` or "
                      "`/var/log` the unit does not make writable: `Read-only file system`",
    "environment-file-host": "`EnvironmentFile=` is read on the host before the image is "
                             "mounted: the image's copy is never read",
    "drop-in-ignored": "`NAME.d/*.conf` inside the image is never read by portabled",
    "undeclared-unit": "portabled attaches every unit matching the prefix, also ones the "
                       "build was not given",
}

# the profile settings the README's table shows (what changes for the service)
PROFILE_KEYS = ("DynamicUser", "MemoryDenyWriteExecute", "ProtectSystem", "PrivateUsers",
                "PrivateNetwork", "RestrictAddressFamilies", "NoNewPrivileges", "TasksMax",
                "BindPaths")


def verify_rules() -> dict[str, str]:
    """Every rule id the checks in look/ report, with its severity as the code states it.

    Read from the source: a call ``Problem(SEVERITY, "rule-id", ...)`` (or the ELF check's
    ``report(SEVERITY, "rule-id", ...)``); a severity computed at run time is "error or
    warning".
    """
    found: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / "look").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("Problem", "report") and len(node.args) >= 2):
                continue
            rule_arg, severity = node.args[1], node.args[0]
            if not (isinstance(rule_arg, ast.Constant) and isinstance(rule_arg.value, str)):
                continue
            kind = {"ERROR": "error", "WARNING": "warning"}.get(
                severity.id if isinstance(severity, ast.Name) else "", "error or warning")
            found.setdefault(rule_arg.value, set()).add(kind)
    out: dict[str, str] = {}
    for rule, kinds in sorted(found.items()):
        out[rule] = ("error or warning" if len(kinds) > 1 or "error or warning" in kinds
                     else kinds.pop())
    return out


def verify_table() -> str:
    rows = ["| rule | severity | what systemd does |", "| --- | --- | --- |"]
    for rule, severity in verify_rules().items():
        rows.append(f"| `{rule}` | {severity} | {RULE_TEXT.get(rule, '')} |")
    return "\n".join(rows)


def exit_table() -> str:
    rows = ["| exit | meaning | verbs |", "| --- | --- | --- |"]
    for code, (text, verbs) in EXIT_CODES.items():
        rows.append(f"| {code} | {text} | {verbs} |")
    return "\n".join(rows)


def profile_table(version: int = 257) -> str:
    from portable_service.rules import PROFILES
    from portable_service.rules.profiles import profile_sections
    from portable_service.rules.unitfile import assigned_values

    rows = ["| setting | " + " | ".join(f"`{p}`" for p in PROFILES) + " |",
            "| --- |" + " --- |" * len(PROFILES)]
    for key in PROFILE_KEYS:
        cells = []
        for profile in PROFILES:
            values = assigned_values(profile_sections(version, profile), "Service", key)
            value = " ".join(" ".join(v.split()) for v in values) if values else ""
            cells.append(f"`{value}`" if value else "-")
        rows.append(f"| `{key}=` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


BLOCKS = {"exit-codes": exit_table, "verify-rules": verify_table, "profiles": profile_table}
_BLOCK = re.compile(r"(<!-- BEGIN generated:(?P<name>[a-z-]+) -->\n)(?P<body>.*?)"
                    r"(<!-- END generated:(?P=name) -->)", re.S)


def fill(text: str) -> str:
    """``text`` with every generated block made anew."""
    def one(m: re.Match[str]) -> str:
        return m.group(1) + BLOCKS[m.group("name")]() + "\n" + m.group(4)

    return _BLOCK.sub(one, text)


def man_page() -> str:
    """The man page, from the argument parser (argparse-manpage, a test dependency)."""
    import os

    from build_manpages.manpage import Manpage

    from portable_service import __version__
    from portable_service.cli import make_parser

    os.environ["COLUMNS"] = "80"  # argparse folds usage and help to the terminal's width
    parser = make_parser()
    return str(Manpage(parser, _data={"date": MAN_DATE, "version": __version__,
                                      "project_name": "portable-service",
                                      "manual_title": "portable-service manual"}))


def main() -> int:
    for doc in (REPO / "README.md", REPO / "docs" / "json.md"):
        doc.write_text(fill(doc.read_text(encoding="utf-8")), encoding="utf-8")
    MAN_PAGE.write_text(man_page(), encoding="utf-8")
    print("\n".join(str(p) for p in (REPO / "README.md", REPO / "docs/json.md", MAN_PAGE)),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
