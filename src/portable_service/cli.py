"""The command line. This is the one place where errors become a line on stderr and an exit code."""

from __future__ import annotations

import argparse
import codecs
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from portable_service import jsonout
from portable_service.errors import EXIT_USAGE, PortableServiceError, SpecError
from portable_service.progress import Reporter

PROG = "portable-service"


def _exit_epilog() -> str:
    import textwrap

    from portable_service.errors import EXIT_CODES

    return "exit codes (every verb):\n" + "\n".join(
        textwrap.fill(text.replace("`", ""), 78, initial_indent=f"  {code}  ",
                      subsequent_indent="     ") for code, (text, _verbs) in EXIT_CODES.items())


EXIT_EPILOG = _exit_epilog()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # --json=STYLE is one option per style (jsonout): name them for a style that is not one
        bad = re.fullmatch(r"argument --json: ignored explicit argument '(.*)'", message)
        if bad:
            message = (f"--json={bad[1]} is not a JSON style; use --json, "
                       + ", ".join(f"--json={s}" for s in jsonout.STYLES))
        # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_spec_flags(parser: argparse.ArgumentParser) -> None:
    from portable_service.builder.spec import SETTINGS  # the read verbs' start-up goes without

    group = parser.add_argument_group("spec settings (override the spec file)")
    for s in SETTINGS:
        kwargs: dict[str, Any] = {"dest": f"spec_{s.attr}", "help": s.help.replace("%", "%%"),
                                  "default": None}
        if s.is_bool:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        else:
            kwargs["metavar"] = s.metavar or s.key.upper().replace("-", "_")
            if s.repeatable:
                kwargs["action"] = "append"
        names = [s.flag] + [f"--{a}" for a in s.aliases]
        group.add_argument(*names, **kwargs)


def spec_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from portable_service.builder.spec import SETTINGS

    return {
        s.key: getattr(args, f"spec_{s.attr}")
        for s in SETTINGS
        if getattr(args, f"spec_{s.attr}", None) is not None
    }


def load_spec_from_args(args: argparse.Namespace) -> Any:
    """The spec file (if any) with the flags on top; no file is needed when flags say it all."""
    from portable_service.builder.spec import load_spec, spec_from_flags

    overrides = spec_overrides(args)
    if args.spec is not None:
        return load_spec(Path(args.spec), overrides)
    default = Path("portable.toml")
    if default.exists():
        return load_spec(default, overrides)
    if not overrides:
        raise SpecError(f"there is no portable.toml in {Path.cwd()}",
                        "start one with 'portable-service init /usr/bin/PROGRAM', name a spec "
                        "file or folder (portable-service build PATH), or give --pname, "
                        "--version and --unit")
    return spec_from_flags(overrides)


def cmd_build(args: argparse.Namespace) -> int:
    from portable_service.api import build_image
    from portable_service.builder.pipeline import Plan

    style = jsonout.wanted(args)
    if style and args.print_closure:
        raise SpecError("--print-closure and --json both print on stdout",
                        "use one; build --json has a closure summary, 'why --json' a chain")
    reporter = Reporter(quiet=args.quiet)
    spec = load_spec_from_args(args)
    plans: list[Plan] = []

    def inspect(plan: Plan) -> None:
        plans.append(plan)
        if args.print_closure:
            from portable_service.builder.closure.report import closure_listing

            print("\n".join(closure_listing(plan.closure)))

    output = Path(args.output)
    if output.suffix == ".raw" and not output.is_dir():
        raise SpecError(f"-o {args.output} names a file, but -o takes the folder the image goes "
                        f"to (the image is named {spec.image_name}, as portabled expects)",
                        f"use -o {output.parent}")
    out = build_image(spec, output, reporter, inspect=inspect, verify=args.verify,
                      update=args.update)
    if style:
        jsonout.emit("build", build_json(out, plans[0], reporter.warnings, args.verify), style)
    else:
        print(out)
    return 0


def build_json(out: Path, plan: Any, warnings: list[str], verified: bool) -> dict[str, Any]:
    """``build --json``: the image, what is in it, and what the build warned about."""
    from portable_service.builder.closure.report import sizes

    rows = sizes(plan.closure)
    generated = plan.closure.generated
    spec = plan.spec
    return {
        "image": str(out),
        "bytes": out.stat().st_size,
        "pname": spec.pname,
        "version": spec.version,
        "units": [u.name for u in plan.units],
        "writer": plan.writer.name,
        "compression": plan.options.compression.name,
        "block_size": plan.options.block_size,
        "entries": len(plan.tree),
        "closure": {
            "paths": len(rows) + len(generated),
            "bytes": sum(r.size for r in rows) + sum(len(d) for d in generated.values()),
            "roots": [{"path": str(r.node.image), "reason": r.node.reason}
                      for r in sorted(rows, key=lambda r: str(r.node.image))
                      if r.node.parent is None],
            "generated": sorted(str(p) for p in generated),
        },
        "verified": verified,
        "warnings": list(warnings),
    }


def cmd_why(args: argparse.Namespace) -> int:
    from portable_service.builder.closure.report import why_report

    style = jsonout.wanted(args)
    spec = load_spec_from_args(args)
    if style:
        data = why_json(spec, args.path)
        jsonout.emit("why", data, style)
        return 0 if data["found"] else 1
    lines, found = why_report(spec, args.path)
    print("\n".join(lines))
    return 0 if found else 1


def why_json(spec: Any, path: str) -> dict[str, Any]:
    """``why --json``: the chain from a root of the spec to ``path``, root first."""
    from pathlib import PurePosixPath

    from portable_service.builder.closure.report import find
    from portable_service.builder.closure.runtime import GENERATED_WHY
    from portable_service.builder.closure.walk import resolve
    from portable_service.builder.units import load_units

    if not path.startswith("/"):
        raise SpecError(f"path {path!r} is not absolute", f"give the image path, e.g. /{path}")
    closure = resolve(spec, load_units(spec))
    key = find(closure, PurePosixPath(os.path.normpath(path)))
    chain: list[dict[str, str]] = []
    if key is not None and key in closure.generated:
        what = GENERATED_WHY.get(key, "the loader cache for the libraries the image carries")
        chain = [{"path": str(key), "reason": f"generated by the build: {what}"}]
    elif key is not None:
        chain = [{"path": str(n.image), "reason": n.reason} for n in closure.why(key)]
    return {"path": path, "pname": spec.pname, "found": bool(chain), "chain": chain}


def _why_parser(sub: Any) -> None:
    p = sub.add_parser("why", help="show the chain of references that pulls PATH into the image",
                       description="Explain why a path is in the image's closure "
                                   "(exit 1 when it is not).")
    p.add_argument("spec", nargs="?", help="spec file, or a folder with portable.toml")
    p.add_argument("path", help="absolute path in the image, e.g. /usr/lib/x86_64-linux-gnu/libc.so.6")
    jsonout.add_json_flag(p)
    _add_spec_flags(p)
    p.set_defaults(func=cmd_why)


def _build_parser(sub: Any) -> None:
    p = sub.add_parser("build", help="build result/<pname>_<version>.raw from a spec",
                       description="Build a portable service image.")
    p.add_argument("spec", nargs="?", help="spec file, or a folder with portable.toml "
                   "(default: ./portable.toml)")
    p.add_argument("-o", "--output", default="result", metavar="DIR",
                   help="output folder (default: ./result)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress: print only the image "
                   "path (warnings are still shown)")
    jsonout.add_json_flag(p)
    p.add_argument("--print-closure", action="store_true",
                   help="list the closure with sizes, largest first, before the image path")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not check the result with 'verify' before it replaces the old image")
    p.add_argument("--update", action="store_true",
                   help="pinned builds: resolve packages again and rewrite portable.lock")
    _add_spec_flags(p)
    p.set_defaults(func=cmd_build)


def _image_verbs(sub: Any) -> None:
    from portable_service.look.verbs import register

    register(sub)


def _init_parser(sub: Any) -> None:
    from portable_service.init import register

    register(sub)


def _try_parser(sub: Any) -> None:
    from portable_service.harness.trial import register

    register(sub)


def _sign_parser(sub: Any) -> None:
    from portable_service.builder.sign import register

    register(sub)


def _deploy_verbs(sub: Any) -> None:
    from portable_service.deploy.attach import register

    register(sub)


def _fleet_verbs(sub: Any) -> None:
    from portable_service.deploy import hostconfig, publish

    publish.register(sub)
    hostconfig.register(sub)


# The verbs look/verbs.py registers. A command starting with one of them (as usually
# typed) gets a parser of these alone: importing every verb's module (the build
# pipeline, cryptography, ELF parsing) was most of an `ls` or `cat`. The same holds for
# every verb: `build` does not load `try`'s harness (0.1 s) or `sign`'s cryptography.
READ_VERBS = frozenset({"inspect", "ls", "cat", "verify", "diff", "size"})

# Each verb registers itself here: the function adding its parser, and the verbs it adds.
VERBS: list[tuple[Callable[[Any], None], frozenset[str]]] = [
    (_init_parser, frozenset({"init"})),
    (_build_parser, frozenset({"build"})),
    (_why_parser, frozenset({"why"})),
    (_image_verbs, READ_VERBS),
    (_try_parser, frozenset({"try"})),
    (_sign_parser, frozenset({"sign"})),
    (_fleet_verbs, frozenset({"publish", "host-config"})),
    (_deploy_verbs, frozenset({"attach", "detach", "reattach"})),
]


GLOBAL_HELP = {
    "debug": "log every external command; show tracebacks",
    "quiet": "no progress lines (warnings and findings are still shown)",
}


def make_parser(first: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``first``, the first argument, when it is a verb, picks the
    verbs registered with it alone (anything else, ``--help`` say, gets them all)."""
    parser = _Parser(prog=PROG, description="Build and check systemd portable service images.",
                     epilog=EXIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=GLOBAL_HELP["debug"])
    parser.add_argument("-q", "--quiet", action="store_true", help=GLOBAL_HELP["quiet"])
    jsonout.add_json_flag(parser, default="off")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    add_completion_flag(parser)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    chosen = [register for register, names in VERBS if first in names]
    for register in chosen or [register for register, _ in VERBS]:
        register(sub)
    for verb in sub.choices.values():
        # the global flags also after the verb, where users put them (`build --debug`);
        # SUPPRESS keeps one given before the verb
        verb.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help=GLOBAL_HELP["debug"])
        quiet = verb._option_string_actions.get("--quiet")
        if quiet is None:
            verb.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                              help=GLOBAL_HELP["quiet"])
        else:
            quiet.default = argparse.SUPPRESS
    return parser


def add_completion_flag(parser: argparse.ArgumentParser) -> None:
    """``--print-completion bash|zsh|fish``: a completion script made from this parser.

    shtab writes it; it is imported only when asked (it costs a tenth of the start-up).
    """
    parser.add_argument("--print-completion", choices=COMPLETION_SHELLS, default=None,
                        action=_PrintCompletion, help="print a shell completion script for "
                        "bash, zsh or fish (the README's 'Install' says where it goes)")


COMPLETION_SHELLS = ("bash", "zsh", "fish")


class _PrintCompletion(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        import shtab

        print(shtab.complete(parser, values))
        parser.exit(0)


def _version() -> str:
    from portable_service import __version__

    return __version__


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # run the cleanups: no temporary file is left behind


def _escape_unencodable(err: UnicodeError) -> tuple[str, int]:
    """Bytes of a name that are not text (kept as surrogates by os.fsdecode) print as ``\\xNN``,
    as systemd prints them; other characters the stream cannot encode as ``\\uNNNN``."""
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for ch in err.object[err.start:err.end]:
        code = ord(ch)
        out.append(f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else
                   f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out), err.end


codecs.register_error("portable-service-escape", _escape_unencodable)


def _escape_streams() -> None:
    """Names in images may be any bytes: never let printing one crash a verb."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="portable-service-escape")


def one_line(text: str) -> str:
    """An error is one line, whatever a name or value in it holds."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def interrupted(error: BaseException) -> bool:
    """Whether a Ctrl-C is behind ``error``: one that lands while a module the verb loads
    late defines a class reaches us as "RuntimeError: Error calling __set_name__", caused
    by the KeyboardInterrupt."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, _interrupt)
    _escape_streams()
    parser = parser or make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help, --version, --print-completion: flushed here, into `| head` too
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    if jsonout.wanted(args) and not getattr(args, "json_verb", False):
        print(f"{PROG}: error: {args.verb} prints no facts to give as JSON; drop --json "
              "(see --help)", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except PortableServiceError as e:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except (KeyboardInterrupt, RuntimeError) as e:
        if not interrupted(e):
            raise
        print(f"{PROG}: interrupted; no image was written or changed", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (| head): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if args.debug:
            traceback.print_exc()
        where = f" ({e.filename})" if e.filename else ""
        print(f"{PROG}: error: {one_line(f'{e.strerror or e}{where}')}", file=sys.stderr)
        return EXIT_USAGE  # a file we were given or told to write: an input error


if __name__ == "__main__":
    sys.exit(main())
