"""The command line. This is the one place where errors become a line on stderr and an exit code."""

from __future__ import annotations

import argparse
import codecs
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from portable_service.builder.spec import SETTINGS, load_spec, spec_from_flags
from portable_service.errors import PortableServiceError, SpecError
from portable_service.progress import Reporter

PROG = "portable-service"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_spec_flags(parser: argparse.ArgumentParser) -> None:
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
    return {
        s.key: getattr(args, f"spec_{s.attr}")
        for s in SETTINGS
        if getattr(args, f"spec_{s.attr}", None) is not None
    }


def load_spec_from_args(args: argparse.Namespace) -> Any:
    """The spec file (if any) with the flags on top; no file is needed when flags say it all."""
    overrides = spec_overrides(args)
    if args.spec is not None:
        return load_spec(Path(args.spec), overrides)
    default = Path("portable.toml")
    if default.exists():
        return load_spec(default, overrides)
    if not overrides:
        raise SpecError(f"there is no portable.toml in {Path.cwd()}",
                        "write one (the README's 'A spec' shows how), name a spec file or "
                        "folder (portable-service build PATH), or give --pname, --version and "
                        "--unit")
    return spec_from_flags(overrides)


def cmd_build(args: argparse.Namespace) -> int:
    from portable_service.api import build_image

    reporter = Reporter(quiet=args.quiet)
    spec = load_spec_from_args(args)
    inspect = None
    if args.print_closure:
        from portable_service.builder.closure.report import closure_listing

        def inspect(plan: Any) -> None:
            print("\n".join(closure_listing(plan.closure)))

    output = Path(args.output)
    if output.suffix == ".raw" and not output.is_dir():
        raise SpecError(f"-o {args.output} names a file, but -o takes the folder the image goes "
                        f"to (the image is named {spec.image_name}, as portabled expects)",
                        f"use -o {output.parent}")
    out = build_image(spec, output, reporter, inspect=inspect, verify=args.verify)
    print(out)
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    from portable_service.builder.closure.report import why_report

    lines, found = why_report(load_spec_from_args(args), args.path)
    print("\n".join(lines))
    return 0 if found else 1


def _why_parser(sub: Any) -> None:
    p = sub.add_parser("why", help="show the chain of references that pulls PATH into the image",
                       description="Explain why a path is in the image's closure "
                                   "(exit 1 when it is not).")
    p.add_argument("spec", nargs="?", help="spec file, or a folder with portable.toml")
    p.add_argument("path", help="absolute path in the image, e.g. /usr/lib/x86_64-linux-gnu/libc.so.6")
    _add_spec_flags(p)
    p.set_defaults(func=cmd_why)


def _build_parser(sub: Any) -> None:
    p = sub.add_parser("build", help="build result/<pname>_<version>.raw from a spec",
                       description="Build a portable service image.")
    p.add_argument("spec", nargs="?", help="spec file, or a folder with portable.toml "
                   "(default: ./portable.toml)")
    p.add_argument("-o", "--output", default="result", metavar="DIR",
                   help="output folder (default: ./result)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image path")
    p.add_argument("--print-closure", action="store_true",
                   help="list the closure with sizes, largest first, before the image path")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not check the result with 'verify' before it replaces the old image")
    _add_spec_flags(p)
    p.set_defaults(func=cmd_build)


def _image_verbs(sub: Any) -> None:
    from portable_service.look.verbs import register

    register(sub)


def _try_parser(sub: Any) -> None:
    from portable_service.harness.trial import register

    register(sub)


# Each verb registers itself here: (name -> function adding its parser).
VERBS: list[Callable[[Any], None]] = [_build_parser, _why_parser, _image_verbs, _try_parser]


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Build and check systemd portable service images.")
    parser.add_argument("--debug", action="store_true", help="log external commands; "
                        "show tracebacks")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for register in VERBS:
        register(sub)
    for verb in sub.choices.values():
        # also after the verb, where users put it (`build --debug`); SUPPRESS keeps a
        # --debug given before the verb
        verb.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="log every external command; show tracebacks")
    return parser


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


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, _interrupt)
    _escape_streams()
    parser = parser or make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except PortableServiceError as e:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
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
        return 1


if __name__ == "__main__":
    sys.exit(main())
