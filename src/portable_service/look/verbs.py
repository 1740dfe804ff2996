"""The verbs that read images: inspect, ls, cat, verify, diff, size.

Only argument parsing and printing live here; the logic is in inspect.py,
verify.py, diff.py and size.py. Errors propagate to cli.main, which turns
them into one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

JSON_HELP = "print JSON; --json=short prints it on one line (also: --json=pretty, --json=off)"


def _json_flag(p: argparse.ArgumentParser) -> None:
    # literal '--json=STYLE' options, so that a bare '--json' never swallows the image path
    p.add_argument("--json", dest="json", action="store_const", const="pretty", default="off",
                   help=JSON_HELP)
    for style in ("pretty", "short", "off"):
        p.add_argument(f"--json={style}", dest="json", action="store_const", const=style,
                       help=argparse.SUPPRESS)


def _dump(data: Any, style: str) -> None:
    if style == "short":
        print(json.dumps(data, sort_keys=True, separators=(",", ":")))
    else:
        print(json.dumps(data, sort_keys=True, indent=2))


def _open(path: str, indexed: bool = True) -> Any:
    """The image, with its whole listing in memory for the verbs that look at every entry;
    ``cat`` and ``ls`` look up only their path. It stays open until the process ends."""
    from portable_service.fs.views import IndexedFS, open_image

    fs = open_image(path)
    return IndexedFS(fs) if indexed else fs


def cmd_inspect(args: argparse.Namespace) -> int:
    from portable_service.look.inspect import inspect_image, render_cat, render_inspect

    if args.sbom:
        from portable_service.builder.sbom import image_sbom

        sys.stdout.write(image_sbom(_open(args.image, indexed=False), args.image))
        return 0
    fs = _open(args.image, indexed=not args.cat)
    if args.cat:
        sys.stdout.write(render_cat(fs, args.image))
        return 0
    data = inspect_image(fs, args.image, fs.info)
    if args.json != "off":
        _dump(data, args.json)
    else:
        print(render_inspect(data))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from portable_service.look.inspect import ls_lines

    for line in ls_lines(_open(args.image, indexed=False), args.path, args.long):
        print(line)
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    from portable_service.look.inspect import cat_file

    chunks = cat_file(_open(args.image, indexed=False), args.path)
    first = next(chunks, b"")  # errors (not a file, missing) before anything is printed
    sys.stdout.buffer.write(first)
    for data in chunks:
        sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from portable_service.look.verify import Target, errors, report_json, verify

    target = Target(profile=args.profile, systemd=args.systemd)
    problems = verify(_open(args.image), Path(args.image).name, target)
    errs = errors(problems)
    if args.json != "off":
        _dump(report_json(args.image, problems), args.json)
    else:
        for p in problems:
            print(p.line())
        verdict = "refused or failing" if errs else "ok"
        print(f"{args.image}: {verdict}: {len(errs)} error(s), "
              f"{len(problems) - len(errs)} warning(s)", file=sys.stderr)
    return 1 if errs else 0


def cmd_diff(args: argparse.Namespace) -> int:
    from portable_service.builder.repo.lock import diff_lock_files
    from portable_service.look.diff import diff_images, render_diff

    if (lines := diff_lock_files(Path(args.old), Path(args.new))) is not None:
        print("\n".join(lines) if lines else "no package changes")  # two portable.lock files
        return 0
    d = diff_images(_open(args.old), Path(args.old).name, _open(args.new), Path(args.new).name)
    if args.json != "off":
        _dump(d.to_dict(), args.json)
    else:
        print(render_diff(d))
    return 0


def cmd_size(args: argparse.Namespace) -> int:
    from rich.console import Console

    from portable_service.look.size import print_report, size_report

    fs = _open(args.image)
    report = size_report(fs, fs.entries, top=args.top)
    if args.json != "off":
        _dump(report.to_dict(), args.json)
    else:
        console = Console(highlight=False)
        if not console.is_terminal:
            console = Console(highlight=False, width=160)  # piped: do not fold paths at 80
        print_report(report, console)
    return 0


def _systemd_version(text: str) -> int:
    if not text.isdigit() or not 200 <= int(text) < 1000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a systemd version such as 252")
    return int(text)


def register(sub: Any) -> None:
    """Add the image-reading verbs to cli's subparsers."""
    p = sub.add_parser("inspect", help="show an image's os-release, units and format",
                       description="Show what portablectl inspect shows, without root.")
    p.add_argument("image", help="a portable image file (.raw)")
    p.add_argument("--cat", action="store_true", help="print os-release and the unit files")
    p.add_argument("--sbom", action="store_true", help="print the image's SPDX SBOM (JSON)")
    _json_flag(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("ls", help="list a folder of an image",
                       description="List a folder inside an image.")
    p.add_argument("image")
    p.add_argument("path", nargs="?", default="/", help="folder in the image (default: /)")
    p.add_argument("-l", "--long", action="store_true", help="modes, owners, sizes, times")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cat", help="print a file of an image",
                       description="Print a file inside an image (symlinks followed in the image).")
    p.add_argument("image")
    p.add_argument("path")
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("verify", help="check an image against portabled's rules",
                       description="Check an image against every rule systemd-portabled applies "
                       "and what makes its services fail at start. Exit 0: no errors; 1: errors "
                       "found; 2: not a readable image.")
    p.add_argument("image")
    p.add_argument("--profile", choices=("default", "nonetwork", "strict", "trusted"),
                   default="default",
                   help="the portable profile the image will be attached with (default: default)")
    p.add_argument("--systemd", type=_systemd_version, default=None, metavar="VERSION",
                   help="the host's systemd version, e.g. 247, 252, 257 (default: check every "
                   "tested version and name the lowest that breaks)")
    _json_flag(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("diff", help="what changed between two images",
                       description="Added, removed and changed files and units, os-release and "
                       "size changes between two images; for two portable.lock files, the "
                       "packages added, removed or at another version.")
    p.add_argument("old")
    p.add_argument("new")
    _json_flag(p)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("size", help="where an image's bytes go",
                       description="The largest folders and files, and the size each closure "
                       "root brings in (images built by portable-service).")
    p.add_argument("image")
    p.add_argument("-n", "--top", type=int, default=15, metavar="N", help="rows per table")
    _json_flag(p)
    p.set_defaults(func=cmd_size)
