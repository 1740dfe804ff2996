"""The verbs attach, detach and reattach: a deployment descriptor turned into the exact
``portablectl`` (and ``systemctl``) commands, printed with --dry-run, else run through run.py.

attach verifies the stack first (look/extension.py) and refuses on errors, so what
portabled would refuse is said in one line with the fix before anything changes.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from portable_service.deploy.descriptor import (
    Descriptor,
    attach_commands,
    detach_commands,
    load_descriptor,
    reattach_command,
)
from portable_service.errors import ToolError, VerifyError
from portable_service.look.problems import Problem
from portable_service.look.verify import Target, errors


def verify_descriptor(d: Descriptor, target: Target | None = None) -> list[Problem]:
    from portable_service.look.extension import open_layer, verify_stack

    target = target or Target(profile=d.profile)
    return verify_stack(open_layer(d.base), [open_layer(e) for e in d.extensions],
                        d.prefixes, target)


def _check(d: Descriptor) -> None:
    errs = errors(verify_descriptor(d))
    if errs:
        first = errs[0]
        more = f" (and {len(errs) - 1} more: portable-service verify {d.path})" if len(errs) > 1 \
            else ""
        raise VerifyError(f"{d.path}: {first.path}: {first.message}{more}",
                          f"{first.fix}; or attach with --no-verify")


def _run_all(cmds: list[list[str]], dry_run: bool) -> int:
    if dry_run:
        for cmd in cmds:
            print(shlex.join(cmd))
        return 0
    from portable_service.run import find_tool, run

    for cmd in cmds:
        find_tool(cmd[0], reason="to attach portable services")
    for i, cmd in enumerate(cmds):
        print(f"+ {shlex.join(cmd)}", flush=True)
        proc = run(cmd, check=False)
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        sys.stdout.write(out)
        if proc.returncode != 0:
            # portablectl and systemctl put the reason last ("AttachImage failed: ...")
            last = next((ln for ln in reversed(out.splitlines()) if ln.strip()), "no message")
            raise ToolError(f"{shlex.join(cmd[:2])} failed (exit {proc.returncode}): "
                            f"{last.strip()}", "the commands before it have run: "
                            "portable-service detach --dry-run shows how to undo them" if i else
                            "nothing was changed; fix the cause and run it again")
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    d = load_descriptor(Path(args.descriptor))
    if args.verify and not args.dry_run:
        _check(d)
    return _run_all(attach_commands(d), args.dry_run)


def cmd_detach(args: argparse.Namespace) -> int:
    d = load_descriptor(Path(args.descriptor))
    return _run_all(detach_commands(d), args.dry_run)


def cmd_reattach(args: argparse.Namespace) -> int:
    d = load_descriptor(Path(args.descriptor))
    if args.verify and not args.dry_run:
        _check(d)
    if args.old is None:
        return _run_all([reattach_command(d)], args.dry_run)
    from portable_service.deploy.predict import predict, reattach_commands

    old = load_descriptor(Path(args.old))
    return _run_all(reattach_commands(old, d, predict(old, d)), args.dry_run)


def register(sub: Any) -> None:
    """Add attach, detach and reattach to cli's subparsers."""
    p = sub.add_parser("attach", help="attach a base and its extensions from a descriptor",
                       description="Verify the stack a deployment descriptor names, then run "
                       "portablectl attach (and systemctl enable --now for its enable list).")
    p.add_argument("descriptor", help="deployment descriptor (TOML)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not verify the stack first")
    p.set_defaults(func=cmd_attach)

    p = sub.add_parser("detach", help="detach what a descriptor attached",
                       description="Disable the descriptor's enabled units, then portablectl "
                       "detach --now the stack.")
    p.add_argument("descriptor", help="deployment descriptor (TOML)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.set_defaults(func=cmd_detach)

    p = sub.add_parser("reattach", help="upgrade an attached stack to a new descriptor",
                       description="portablectl reattach the stack of DESCRIPTOR. With --from "
                       "OLD, only units whose unit file, layer, base or profile changed are "
                       "restarted (see diff OLD NEW); without it portablectl restarts them all.")
    p.add_argument("descriptor", help="the new deployment descriptor (TOML)")
    p.add_argument("--from", dest="old", metavar="OLD", help="the descriptor attached now")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not verify the new stack first")
    p.set_defaults(func=cmd_reattach)


# -- try: the stack in a throwaway container (harness/trial.py)

CONTAINER_PORTABLES = Path("/var/lib/portables")


def in_container(d: Descriptor) -> Descriptor:
    """The descriptor as the container sees it: its images copied to /var/lib/portables,
    attached --runtime (the container is thrown away anyway)."""
    from dataclasses import replace

    return replace(d, base=CONTAINER_PORTABLES / d.base.name, runtime=True,
                   extensions=tuple(CONTAINER_PORTABLES / e.name for e in d.extensions))


def attach_stack(c: Any, d: Descriptor) -> Any:
    """Copy the layers into container ``c`` and run the descriptor's portablectl attach."""
    for image in d.images:
        c.copy_image(image)
    c.settle()
    result = c.portablectl(*attach_commands(in_container(d))[0][1:])
    c.settle()
    return result


def detach_stack(c: Any, d: Descriptor) -> Any:
    return c.portablectl(*detach_commands(in_container(d))[-1][1:])
