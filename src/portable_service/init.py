"""``portable-service init [PROGRAM [ARG...]]``: a commented portable.toml and a unit.

``init /usr/bin/foo --serve && portable-service build`` gives a working image: the spec names the
unit, the unit runs the program, and the closure brings what the program needs. Nothing
is overwritten: an existing portable.toml or unit file stops init before it writes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path
from typing import Any

from portable_service.errors import SpecError

SPEC = "portable.toml"
# what the image runs when no program is named: a placeholder that builds and runs
PLACEHOLDER = "/usr/bin/sleep infinity"

SPEC_TEMPLATE = '''\
# portable.toml: the spec of a systemd portable service image.
# Build it with `portable-service build`: the image is result/{pname}_{version}.raw.
# Every key is described in the README ("Keys"); `portable-service build --help` lists the
# flags that override them.

# the service's name: the image's name and the prefix of every unit (no '_')
pname = "{pname}"
version = "{version}"
description = "{description}"
# homepage = "https://example.org/{pname}"

# the units the image carries, each named {pname}.service, {pname}-*.service, ...
units = ["{unit}"]

# what the units run is found and copied with every library it loads; name here what
# they read or run that no unit names: host paths, or {{ source, target }} to move one
# contents = ["/etc/{pname}", {{ source = "build/www", target = "/srv/www" }}]
# installed Debian packages, with what their programs load and run
# packages = ["{pname}"]
# symlinks = [{{ symlink = "/bin/sh", object = "/usr/bin/dash" }}]  # LINK, then OBJECT
'''

UNIT_TEMPLATE = '''\
[Unit]
Description={description}

[Service]
ExecStart={exec_start}
# Attached with the default profile (portablectl attach), the service runs as a
# dynamic user (DynamicUser=yes) with MemoryDenyWriteExecute=yes, in a read-only image:
# ask for a writable folder here, it appears as /var/lib/{pname}
# StateDirectory={pname}
# Environment=LANG=C.UTF-8

[Install]
WantedBy=multi-user.target
'''


def pname_for(program: str) -> str:
    """A valid pname from a program's file name: lower case, '_' and odd characters as '-'."""
    name = re.sub(r"[^a-z0-9:.-]+", "-", Path(program).name.lower()).strip("-.")
    return name or "service"


def find_program(program: str) -> str:
    """An absolute path: systemd's ExecStart= wants one the image will hold."""
    if "/" in program:
        path = Path(program).absolute()
    else:
        found = shutil.which(program)
        if found is None:
            raise SpecError(f"program {program!r} is not in PATH",
                            "give its absolute path, e.g. portable-service init /usr/bin/NAME")
        path = Path(found)
    # the mode, not access(): root may run any file with one execute bit, systemd's
    # dynamic user only one that others may execute
    if not path.is_file() or not path.stat().st_mode & 0o111:
        raise SpecError(f"{path} is not an executable file on this host",
                        "name the program the service runs (the image takes it from this host)")
    return os.path.normpath(str(path))


def exec_word(arg: str) -> str:
    """One ``ExecStart=`` argument as systemd reads it back: ``%`` and ``$`` doubled (no
    specifier, no variable), quoted with C escapes when it has blanks, quotes or ``;``."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and not re.search(r"[\s\"'\\;]", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") \
        .replace("\t", "\\t") + '"'


def write_new(path: Path, text: str) -> None:
    # "x": never overwrite, even a file that appears after the check
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)


def init(folder: Path, program: str | None, pname: str | None, version: str,
         args: tuple[str, ...] = ()) -> list[Path]:
    """Write portable.toml and PNAME.service in ``folder``; the paths written."""
    exe = find_program(program) if program else None
    name = pname or (pname_for(exe) if exe else pname_for(folder.resolve().name))
    unit = f"{name}.service"
    description = f"{name} (portable service)"
    spec_path, unit_path = folder / SPEC, folder / unit
    for path in (spec_path, unit_path):
        if os.path.lexists(path):
            raise SpecError(f"{path} already exists; init writes only new files",
                            "edit it, or run init in an empty folder")
    from portable_service.builder.spec import check_spec, spec_from_mapping

    # the names are checked as build checks them, before anything is written
    check_spec(spec_from_mapping({"pname": name, "version": version, "units": [unit]}, folder))
    exec_start = " ".join([exec_word(exe), *map(exec_word, args)]) if exe else PLACEHOLDER
    if exe is None:
        exec_start += "\n# ^ a placeholder: put your program here (an absolute path)"
    write_new(unit_path, UNIT_TEMPLATE.format(description=description, exec_start=exec_start,
                                              pname=name))
    try:
        write_new(spec_path, SPEC_TEMPLATE.format(pname=name, version=version, unit=unit,
                                                  description=description))
    except BaseException:
        unit_path.unlink()  # both files or neither
        raise
    return [spec_path, unit_path]


def cmd_init(args: argparse.Namespace) -> int:
    written = init(Path.cwd(), args.program, args.pname, args.version, tuple(args.args))
    for path in written:
        print(path)
    if not args.quiet:
        import sys

        print(f"next: portable-service build   (writes result/{written[1].stem}_{args.version}.raw)",
              file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("init", help="write a commented portable.toml and a unit to start from",
                       description="Write portable.toml and PNAME.service into the current "
                       "folder for PROGRAM (an absolute path, or a name found in PATH), so "
                       "that 'portable-service build' works at once. Existing files are never "
                       "overwritten.")
    p.add_argument("program", nargs="?", metavar="PROGRAM",
                   help="what the service runs (default: a placeholder to replace)")
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="its arguments, written into ExecStart= (init /usr/bin/sleep infinity; "
                   "init's own options go before PROGRAM, and after -- arguments may start "
                   "with '-': init --pname app /usr/bin/app -- --serve)")
    p.add_argument("--pname", metavar="NAME",
                   help="the service's name (default: the program's file name)")
    p.add_argument("--version", default="0.1", metavar="VERSION",
                   help="the image's version (default: 0.1)")
    p.set_defaults(func=cmd_init)
