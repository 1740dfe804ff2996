"""Scripts: an executable file starting with ``#!`` brings its interpreter.

The kernel reads at most 256 bytes of the ``#!`` line (BINPRM_BUF_SIZE) and
splits it into the interpreter and one optional argument. For
``#!/usr/bin/env NAME`` the interpreter is ``env`` and NAME is looked up in the
PATH a service starts with: systemd's fixed default. A unit's own
``Exec*=/usr/bin/env NAME`` brings NAME the same way (:func:`env_commands`), and the
commands of ``Exec*=/bin/sh -c 'SCRIPT'`` are followed too (:func:`shell_commands`).

Only executed scripts (``Node.executed``: what the units run, and what that runs)
bring their interpreters. A script that is data (a folder entry, a package file:
Python's standard library has executable modules starting ``#! /usr/local/bin/python``,
packages their admin and cron scripts) brings nothing; when its interpreter is
missing the build says so in a warning, since running it would fail.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from portable_service.builder.closure import (
    Context,
    Node,
    Resolver,
    acts_on,
    follows_executed,
    in_nix_store,
    lstat_of,
)
from portable_service.builder.closure.elf import SHEBANG_MAX, parse_shebang
from portable_service.builder.units import Unit, exec_commands
from portable_service.rules.portabled import SYSTEMD_PATH


def read_shebang(path: Path) -> tuple[str, str | None] | None:
    """(interpreter, optional argument) of a ``#!`` line, as the kernel splits it."""
    try:
        with open(path, "rb") as f:
            head = f.read(SHEBANG_MAX)
    except OSError:
        return None
    return parse_shebang(head)


def env_program(arg: str | None) -> str | None:
    """The program ``env ARG`` runs: skip env's options and VAR=value words (``-S`` splits)."""
    if not arg:
        return None
    words = arg.split()
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("-u", "--unset", "-C", "--chdir"):
            i += 2
            continue
        if w.startswith("-S") and len(w) > 2:  # -Spython3 -u
            return w[2:]
        if w.startswith("-") or ("=" in w and not w.startswith("/")):
            i += 1
            continue
        return w
    return None


def env_commands(unit: Unit) -> list[tuple[str, str]]:
    """(NAME, directive) for each ``Exec*=/usr/bin/env [OPTIONS] NAME ...`` of a unit."""
    out = []
    for command in exec_commands(unit):
        if os.path.basename(command.argv[0]) == "env":
            name = env_program(" ".join(command.argv[1:]))
            if name:
                out.append((name, f"{command.directive} (through env)"))
    return out


SHELLS = ("sh", "dash", "bash", "ash", "busybox", "zsh", "ksh", "mksh")
# Words a shell handles itself: no program to ship for them.
SHELL_BUILTINS = frozenset([
    ".", ":", "[", "alias", "bg", "break", "cd", "command", "continue", "echo", "eval", "exec",
    "exit", "export", "false", "fg", "getopts", "hash", "jobs", "kill", "local", "printf", "pwd",
    "read", "readonly", "return", "set", "shift", "source", "test", "times", "trap", "true",
    "type", "ulimit", "umask", "unalias", "unset", "wait",
])
# Reserved words after which a new command starts.
SHELL_RESERVED = frozenset(["!", "{", "}", "if", "then", "else", "elif", "fi", "do", "done",
                            "while", "until", "for", "case", "esac"])
_SHELL_PUNCTUATION = frozenset("();<>|&")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_commands(unit: Unit) -> list[tuple[str, str]]:
    """(program, directive) for the commands of each ``Exec*=/bin/sh -c 'SCRIPT'``.

    Units often wrap their program in a shell line; the programs it starts must
    be in the image as much as the shell itself.
    """
    out = []
    for command in exec_commands(unit):
        argv = command.argv
        if os.path.basename(argv[0]) not in SHELLS or "-c" not in argv[1:-1]:
            continue
        script = argv[argv.index("-c", 1) + 1]
        for program in shell_script_programs(script):
            out.append((program, f"{command.directive} (through sh -c)"))
    return out


def shell_script_programs(script: str) -> list[str]:
    """The programs a simple shell script runs: the first word of each command.

    Assignments, redirections, builtins and words the shell expands at run time
    ($VAR, `...`) are passed over; ``exec``, ``command`` and ``nohup`` lead to
    the word after them.
    """
    lexer = shlex.shlex(script.replace("\n", ";"), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return []  # unbalanced quotes: the shell fails on it before running anything
    programs: list[str] = []
    at_start, skip_next = True, False
    for token in tokens:
        if skip_next:
            skip_next = False
            continue
        if set(token) <= _SHELL_PUNCTUATION:
            if "<" in token or ">" in token:
                skip_next = True  # a redirection: the next word is a file
            else:
                at_start = True  # ; && || | & ( ): a new command starts
            continue
        if not at_start:
            continue
        if token in SHELL_RESERVED or token in ("exec", "command", "nohup") or \
                _ASSIGNMENT.match(token):
            continue  # still waiting for the command word
        at_start = False
        if any(c in token for c in "$`%*?") or token in SHELL_BUILTINS:
            continue
        if token not in programs:
            programs.append(token)
    return programs


def which(name: str, path: Sequence[str] = SYSTEMD_PATH, root: os.PathLike[str] | None = None) -> str | None:
    """The first executable ``name`` in ``path``, as systemd and env look it up (in ``root``)."""
    for folder in path:
        candidate = os.path.join(folder, name)
        there = candidate if root is None else os.path.join(root, candidate.lstrip("/"))
        if os.path.isfile(there) and os.access(there, os.X_OK):
            return candidate
    return None


def script_resolver(ctx: Context) -> Resolver:
    @follows_executed
    @acts_on(stat.S_IFREG)
    def resolve(node: Node) -> Iterator[Node]:
        if in_nix_store(node.image):
            return  # the Nix resolver knows a store path's references
        try:
            st = lstat_of(node)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            return  # the kernel runs only executable files
        shebang = read_shebang(node.host)
        if shebang is None:
            return
        if not node.executed:
            _check_data_script(ctx, node, *shebang)
            return
        interp, arg = shebang
        if not interp.startswith("/"):
            ctx.missing(f"script {node.image} names a relative interpreter {interp!r}",
                        "write the interpreter as an absolute path")
            return
        if not os.path.exists(ctx.host_of(interp)):
            ctx.missing(f"script {node.image} runs {interp}, which is not {ctx.here}",
                        ctx.how_to_get() + ", or fix the #! line")
            return
        yield Node(PurePosixPath(interp), Path(ctx.host_of(interp)), "#! interpreter", node.image,
                   executed=True)
        if os.path.basename(interp) == "env":
            name = env_program(arg)
            if name is None:
                return
            found = name if name.startswith("/") else which(name)
            if found is None or not os.path.exists(found):
                ctx.missing(f"script {node.image} runs {name!r} through env, but it is not in "
                            f"systemd's PATH ({':'.join(SYSTEMD_PATH)})",
                            f"install {name}, or use an absolute #! path")
                return
            yield Node(PurePosixPath(found), Path(found), f"#!/usr/bin/env {name}", node.image,
                       executed=True)

    return resolve


def _check_data_script(ctx: Context, node: Node, interp: str, arg: str | None) -> None:
    """An executable script no unit runs: a warning when it could not run, nothing shipped."""
    if not interp.startswith("/"):
        missing = f"a relative interpreter {interp!r}"
    elif not os.path.exists(ctx.host_of(interp)):
        missing = f"{interp}, which is not {ctx.here}"
    elif os.path.basename(interp) == "env" and (name := env_program(arg)) is not None and \
            (name if name.startswith("/") and os.path.exists(name) else which(name)) is None:
        missing = f"{name!r} through env, which is not in systemd's PATH"
    else:
        return
    ctx.closure.warnings.append(
        f"{node.image} is an executable script for {missing}; no unit runs it, so it is "
        "shipped as data and its interpreter is not added")
