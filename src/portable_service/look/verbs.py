"""The verbs that read images: inspect, ls, cat, verify, diff, size.

Only argument parsing and printing live here; the logic is in inspect.py,
verify.py, diff.py and size.py. Errors propagate to cli.main, which turns
them into one line and exit 2.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path
from typing import Any

from portable_service.errors import PortableServiceError
from portable_service.jsonout import add_json_flag as _json_flag
from portable_service.jsonout import emit, wanted


def _certificate_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--certificate", action="append", type=Path, metavar="CERT",
                   help="check the root hash signature (NAME.roothash.p7s) against this PEM "
                   "certificate (repeatable; default: /etc/verity.d/*.crt, as systemd)")


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
    from portable_service.look.ddi_check import check_verity
    from portable_service.look.verity_check import render_verity

    state = check_verity(Path(args.image), args.certificate)
    data["verity"] = state.to_dict()
    style = wanted(args)
    if style:
        # "format" names the document (jsonout); the image's own format is "filesystem"
        doc = {k: v for k, v in data.items() if k != "format"}
        emit("inspect", {**doc, "filesystem": data.get("format")}, style)
    else:
        print(render_inspect(data))
        print("\n".join(render_verity(state)), flush=True)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from portable_service.look.inspect import ls_entries, ls_lines

    fs = _open(args.image, indexed=False)
    style = wanted(args)
    if style:
        entries = [{"name": name, "kind": st.kind, "mode": f"{st.mode:04o}", "uid": st.uid,
                    "gid": st.gid, "size": st.size, "mtime": st.mtime, "target": st.target}
                   for name, st in ls_entries(fs, args.path, args.recursive)]
        emit("ls", {"image": args.image, "path": args.path, "entries": entries}, style)
        return 0
    sys.stdout.write("".join(line + "\n" for line in ls_lines(fs, args.path, args.long,
                                                                 args.recursive)))
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    from portable_service.look.inspect import cat_file

    chunks = cat_file(_open(args.image, indexed=False), args.path)
    first = next(chunks, b"")  # errors (not a file, missing) before anything is printed
    sys.stdout.flush()
    try:
        out = sys.stdout.buffer.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: not a file
        out = -1
    for data in itertools.chain((first,), chunks):
        if out < 0:
            sys.stdout.buffer.write(data)
            continue
        # straight to the descriptor: no copy through a buffer, one call per MiB
        with memoryview(data) as view:
            done = 0
            while done < len(view):
                done += os.write(out, view[done:])
    sys.stdout.flush()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from portable_service.look.verify import Target, errors, report_json, verify

    target = Target(profile=args.profile, systemd=args.systemd)
    from portable_service.look.ddi_check import check_verity
    from portable_service.look.extension import verify_layers
    from portable_service.look.problems import Problem
    from portable_service.look.verity_check import tampered

    problems: list[Problem] | None
    if args.image.endswith(".toml"):  # a deployment descriptor: the whole stack
        from portable_service.deploy.attach import verify_descriptor
        from portable_service.deploy.descriptor import load_descriptor

        problems = verify_descriptor(load_descriptor(Path(args.image)), target)
    else:
        fs = _open(args.image)
        problems = verify_layers(args.image, fs, args.base, target)  # an extension
        if problems is None:
            sidecar_problems = list(check_verity(Path(args.image), args.certificate).problems)
            try:
                problems = verify(fs, Path(args.image).name, target) + sidecar_problems
            except PortableServiceError:
                if not tampered(sidecar_problems):
                    raise
                problems = sidecar_problems  # the image does not read: it was modified
    errs = errors(problems)
    style = wanted(args)
    if style:
        emit("verify", report_json(args.image, problems), style)
    else:
        for p in problems:
            print(p.line())
        verdict = "refused or failing" if errs else "ok"
        if not getattr(args, "quiet", False):  # the problems say it all; the exit code too
            print(f"{args.image}: {verdict}: {len(errs)} error(s), "
                  f"{len(problems) - len(errs)} warning(s)", file=sys.stderr)
    return 1 if errs else 0


def cmd_diff(args: argparse.Namespace) -> int:
    from portable_service.builder.repo.lock import diff_lock_files
    from portable_service.look.diff import diff_images, render_diff

    if (lines := diff_lock_files(Path(args.old), Path(args.new))) is not None:
        print("\n".join(lines) if lines else "no package changes")  # two portable.lock files
        return 1 if lines else 0  # as diff(1): 1 when the packages differ
    if args.old.endswith(".toml") and args.new.endswith(".toml"):  # two deployment descriptors
        from portable_service.deploy.predict import diff_descriptors

        return diff_descriptors(args.old, args.new, wanted(args))
    d = diff_images(_open(args.old), Path(args.old).name, _open(args.new), Path(args.new).name)
    style = wanted(args)
    if style:
        emit("diff", d.to_dict(), style)
    else:
        print(render_diff(d))
    return 0 if d.same else 1  # as diff(1): 1 when the images differ


def cmd_size(args: argparse.Namespace) -> int:
    from rich.console import Console

    from portable_service.look.size import print_report, size_report

    fs = _open(args.image)
    report = size_report(fs, fs.entries, top=args.top)
    style = wanted(args)
    if style:
        emit("size", report.to_dict(), style)
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
    _certificate_flag(p)
    p.add_argument("--sbom", action="store_true", help="print the image's SPDX SBOM (JSON)")
    _json_flag(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("ls", help="list a folder of an image",
                       description="List a folder inside an image.")
    p.add_argument("image")
    p.add_argument("path", nargs="?", default="/", help="folder in the image (default: /)")
    p.add_argument("-l", "--long", action="store_true", help="modes, owners, sizes, times")
    p.add_argument("-R", "--recursive", action="store_true",
                   help="every entry below the folder, as paths (as unsquashfs -lln)")
    _json_flag(p)
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
    _certificate_flag(p)
    p.add_argument("--base", metavar="IMAGE", help="for a portable extension: the base image "
                   "it extends (IMAGE may also be a deployment descriptor, .toml)")
    _json_flag(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("diff", help="what changed between two images",
                       description="Added, removed and changed files and units, os-release and "
                       "size changes between two images; for two portable.lock files, the "
                       "packages added, removed or at another version; for two deployment "
                       "descriptors, what a reattach does to each unit. Exit 0: the same; 1: "
                       "they differ (as diff(1)); 2: not a readable image.")
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
