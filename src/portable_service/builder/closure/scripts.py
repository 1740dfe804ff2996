"""Scripts: an executable file starting with ``#!`` brings its interpreter.

The kernel reads at most 256 bytes of the ``#!`` line (BINPRM_BUF_SIZE) and
splits it into the interpreter and one optional argument. For
``#!/usr/bin/env NAME`` the interpreter is ``env`` and NAME is looked up in the
PATH a service starts with: systemd's fixed default. A unit's own
``Exec*=/usr/bin/env NAME`` brings NAME the same way (:func:`env_commands`), and the
commands of ``Exec*=/bin/sh -c 'SCRIPT'`` are followed too (:func:`shell_commands`), as
are the commands of an executed shell script (:func:`script_needs`, read with
tree-sitter's bash grammar): Debian's scripts run programs of Essential packages their
package does not depend on.

Only executed scripts (``Node.executed``: what the units run, and what that runs)
bring their interpreters. A script that is data (a folder entry, a package file:
Python's standard library has executable modules starting ``#! /usr/local/bin/python``,
packages their admin and cron scripts) brings nothing; when its interpreter is
missing the build says so in a warning, since running it would fail.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from portable_service.builder.closure import (
    Context,
    Node,
    Resolver,
    acts_on,
    follows_executed,
    in_nix_store,
    lstat_of,
    within,
)
from portable_service.builder.closure.elf import SHEBANG_MAX, parse_shebang
from portable_service.builder.units import Unit, exec_commands
from portable_service.rules.portabled import RUNTIME_ROOTS, SCAFFOLD_FILES, SYSTEMD_PATH


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


# Reserved words: never a program (the grammar can take one for a command word where it
# does not know a form, such as POSIX's ``for NAME do``)
SHELL_RESERVED = frozenset(["!", "{", "}", "if", "then", "else", "elif", "fi", "do", "done",
                            "while", "until", "for", "in", "case", "esac", "function", "select"])
# Commands that run the word after their options (and the options' values): the shell's
# exec and command, and the programs nohup, nice, setsid and env (which also skips
# VAR=value words)
SHELL_WRAPPERS: dict[str, frozenset[str]] = {
    "exec": frozenset(["-a"]), "command": frozenset(), "nohup": frozenset(),
    "nice": frozenset(["-n", "--adjustment"]), "setsid": frozenset(),
    "env": frozenset(["-u", "--unset", "-C", "--chdir", "-S", "--split-string"]),
}


@functools.cache
def _shell_parser() -> Any:
    """tree-sitter's bash grammar (POSIX sh is a subset), loaded on first use (15 ms)."""
    import tree_sitter
    import tree_sitter_bash

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_bash.language()))


@dataclass(frozen=True)
class ShellScript:
    """What a shell script's text says it runs (:func:`parse_shell`)."""

    programs: tuple[str, ...]  # command words, in order, each once (its functions too)
    functions: frozenset[str]  # the functions it defines
    sourced: tuple[str, ...]  # the files it reads with '.' or 'source', as written


def parse_shell(script: str | bytes) -> ShellScript:
    """The command word of every simple command, wherever it is: lists, pipelines,
    conditions, loops, ``case`` branches, functions, ``$(...)`` and backquotes.

    Passed over: builtins, reserved words, and command words the shell expands at run
    time ($VAR, globs); ``exec``, ``command``, ``nohup``, ``nice``, ``setsid`` and ``env``
    lead to the word after their options (``command -v`` runs nothing). Parsed with
    tree-sitter's bash grammar: heredocs, quotes and comments are the shell's.
    """
    text = script.encode() if isinstance(script, str) else script
    root = _shell_parser().parse(text).root_node
    commands, functions = [], set()
    values: dict[str, list[str]] = {}  # NAME=VALUE with a literal value, anywhere in the script
    stack = [root]
    while stack:  # depth first, in the script's order
        node = stack.pop()
        if node.type == "function_definition":
            name = node.child_by_field_name("name")
            if name is not None:
                functions.add(name.text.decode(errors="replace"))
        elif node.type == "command":
            commands.append(node)
        elif node.type == "variable_assignment":
            name, value = node.child_by_field_name("name"), node.child_by_field_name("value")
            found = _word(value, values) if value is not None else None
            if name is not None and found:  # the first word: "$NAME args" splits at spaces
                values.setdefault(name.text.decode(errors="replace"), []).extend(
                    w.split()[0] for w in ((found,) if isinstance(found, str) else found)
                    if w.strip())
        stack.extend(reversed(node.children))
    programs: list[str] = []
    sourced: list[str] = []
    for command in commands:
        words = [_word(c, values) for c in command.children
                 if c.type in ("command_name", "word", "string", "raw_string", "concatenation",
                               "number", "simple_expansion", "expansion",
                               "command_substitution")]
        while words:
            word = words.pop(0)
            if isinstance(word, tuple):  # $DAEMON: each literal value the script gives it
                programs.extend(w for w in word if w not in programs and w not in SHELL_BUILTINS)
                break
            if word is None or word in SHELL_RESERVED:
                break  # expanded at run time, or a misread keyword
            if word in (".", "source"):
                if words and isinstance(words[0], str) and words[0] not in sourced:
                    sourced.append(words[0])
                break
            if word not in SHELL_BUILTINS and word not in programs:
                programs.append(word)  # nohup, nice, setsid, env are programs themselves
            valued = SHELL_WRAPPERS.get(word)
            if valued is None or (word == "command" and any(w in ("-v", "-V") for w in words)):
                break  # not a wrapper; or command -v, which looks the name up and runs nothing
            while words and isinstance(words[0], str) and (
                    words[0].startswith("-") or (word == "env" and "=" in words[0])):
                if words.pop(0) in valued and words:
                    words.pop(0)  # the option's value
    return ShellScript(tuple(programs), frozenset(functions), tuple(sourced))


def shell_script_programs(script: str | bytes) -> list[str]:
    """The programs a shell script runs, in order, each once: not its own functions."""
    parsed = parse_shell(script)
    return [p for p in parsed.programs if p not in parsed.functions]


# files a script sources, and the files they source, read at most
SOURCED_MAX = 16


def script_needs(text: bytes, read: Callable[[str], bytes | None]) -> tuple[list[str], list[str]]:
    """(programs, sourced files) a shell script needs in the image.

    Programs: absolute paths (normalised) and names for systemd's PATH; paths made at run
    time (/run, /tmp, /var/lib, ...) and paths relative to the working folder are passed
    over. The files it sources with a literal absolute path (``. /usr/share/x/functions``)
    are read with ``read`` (None: not there): their functions are the script's, and
    what they run is run too; the image's own files (os-release) and run-time paths are
    not read.
    """
    parsed = [parse_shell(text)]
    sourced: list[str] = []
    queue = list(parsed[0].sourced)
    while queue and len(sourced) < SOURCED_MAX:
        path = os.path.normpath(queue.pop(0))
        if not path.startswith("/") or path in sourced or "$" in path or path in SCAFFOLD_FILES \
                or any(within(path, r) for r in RUNTIME_ROOTS):
            continue  # the image's own (os-release), or made at run time
        data = read(path)
        if data is None:
            continue
        sourced.append(path)
        parsed.append(parse_shell(data))
        queue.extend(parsed[-1].sourced)
    functions = frozenset().union(*(p.functions for p in parsed))
    out: list[str] = []
    for word in (w for p in parsed for w in p.programs):
        if "%" in word or word in functions:
            continue
        if word.startswith("/"):
            word = os.path.normpath(word)
            if any(within(word, r) for r in RUNTIME_ROOTS):
                continue
        elif "/" in word:
            continue
        if word not in out:
            out.append(word)
    return out, sourced


def _word(node: Any, values: dict[str, list[str]]) -> str | tuple[str, ...] | None:
    """A word as written (:func:`_literal`), or for ``$NAME``, ``${NAME}``, ``"$NAME"`` and
    ``${NAME:-DEFAULT}`` the literal values the script gives NAME (and the default): a
    daemon's path is often set once at the top. None: known at run time only."""
    if node.type == "command_name" and len(node.children) == 1:
        node = node.children[0]
    if node.type == "string" and [c.type for c in node.children][1:-1] in (
            ["simple_expansion"], ["expansion"]):
        node = node.children[1]
    if node.type not in ("simple_expansion", "expansion"):
        return _literal(node)
    inner = [c for c in node.children if c.type not in ("$", "${", "}")]
    if not inner or inner[0].type != "variable_name":
        return None
    found = list(values.get(inner[0].text.decode(errors="replace"), []))
    if len(inner) == 3 and inner[1].type in (":-", "-"):
        default = _literal(inner[2])
        if default is None:
            return None
        found.append(default)
    elif len(inner) != 1:
        return None  # ${NAME#x}, ${NAME/a/b}, ...: computed
    return tuple(found) or None


def _literal(node: Any) -> str | None:
    """A word's text when the shell takes it as written (quotes removed), else None."""
    if node.type == "command_name":
        if len(node.children) != 1:
            return None
        node = node.children[0]
    if node.type in ("word", "number"):
        text = node.text.decode(errors="replace")
        return None if any(c in text for c in "*?[~\\") else text
    if node.type == "raw_string":
        return str(node.text.decode(errors="replace")[1:-1])
    if node.type == "string" and all(c.type in ('"', "string_content") for c in node.children):
        return str(node.text.decode(errors="replace")[1:-1])
    return None


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
        if runs_shell(interp, arg) and st.st_size <= SHELL_SCRIPT_MAX:
            yield from _script_programs(ctx, node)

    return resolve


# a shell script larger than this is not read for its commands (an installer with a payload)
SHELL_SCRIPT_MAX = 1 << 20


def runs_shell(interp: str, arg: str | None) -> bool:
    """Whether a ``#!`` line names a shell (directly, or through env)."""
    name = os.path.basename(interp)
    if name == "env":
        name = os.path.basename(env_program(arg) or "")
    return name in SHELLS


def _script_programs(ctx: Context, node: Node) -> Iterator[Node]:
    """The programs an executed shell script runs, found as systemd's PATH finds them.

    A Debian package's script leans on Essential packages its package does not depend on
    (apachectl runs id, mkdir and mktemp of coreutils): without them the script stops at
    "id: not found". A name found nowhere is a warning, as for ``sh -c``: the script may
    never reach it, or get it from a variable's PATH.
    """
    def read(host: str) -> bytes | None:
        try:
            with open(host, "rb") as f:
                return f.read(SHELL_SCRIPT_MAX)
        except OSError:
            return None

    text = read(str(node.host))
    if text is None:
        return
    programs, sourced = script_needs(text, lambda path: read(ctx.host_of(path)))
    for path in sourced:  # read by the script: data it cannot do without
        yield Node(PurePosixPath(path), Path(ctx.host_of(path)), f"sourced by script {node.image}",
                   node.image)
    missing = []
    for word in programs:
        if word.startswith("/"):
            found: str | None = word if os.path.lexists(ctx.host_of(word)) else None
        else:
            found = _which_in_image(ctx, word)
        if found is None:
            missing.append(word)
            continue
        yield Node(PurePosixPath(found), Path(ctx.host_of(found)), f"run by script {node.image}",
                   node.image, executed=True)
    if missing:
        them = "it" if len(missing) == 1 else "them"
        ctx.closure.warnings.append(
            f"script {node.image} runs {', '.join(missing)}, not in systemd's PATH "
            f"({':'.join(SYSTEMD_PATH)}) {ctx.here}: the script fails where it reaches {them}; "
            f"{ctx.how_to_get('the package that has ' + them, 'install ' + them)} if it does")


def _which_in_image(ctx: Context, name: str) -> str | None:
    """Where systemd's PATH finds ``name`` in the image: a file the spec places there counts."""
    for folder in SYSTEMD_PATH:
        candidate = f"{folder}/{name}"
        there = ctx.host_of(candidate)
        if os.path.isfile(there) and os.access(there, os.X_OK):
            return candidate
    return None


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
