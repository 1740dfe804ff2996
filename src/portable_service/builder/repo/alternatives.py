"""The ``update-alternatives`` links of a pinned build's root.

A pinned root is unpacked without maintainer scripts, so the links their
``update-alternatives --install`` calls make are not there: no ``/usr/bin/awk`` (mawk),
``/usr/bin/nc`` (netcat) or ``/usr/bin/java``, and a unit or script that names one fails,
on the server. Each package's ``postinst`` is read for the calls debhelper writes,
``--install LINK NAME PATH PRIORITY [--slave LINK NAME PATH]...`` with literal
arguments (a call made of shell variables is not followed). Of the candidates for a
name whose PATH the root holds, the highest priority wins, as in dpkg's automatic mode
(a tie goes to the path that sorts last, so the choice never depends on the order the
packages were read in), and its links are made as update-alternatives makes them:
``LINK -> /etc/alternatives/NAME -> PATH``, and the same for each slave whose path is
there (a manual page's is not: documentation is left packed). A LINK a package ships
itself is left alone.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from portable_service.builder.repo.unpack import image_path
from portable_service.run import run

ALTERNATIVES = "/etc/alternatives"
SHELL_OPERATORS = frozenset(";&|()<>")


@dataclass(frozen=True)
class Alternative:
    """One ``update-alternatives --install`` call: the master link and its slaves."""

    link: str
    name: str
    path: str
    priority: int
    slaves: tuple[tuple[str, str, str], ...] = ()  # (link, name, path)


def installs(script: str) -> Iterator[Alternative]:
    """The ``--install`` calls of a maintainer script whose arguments are literal."""
    for line in script.replace("\\\n", " ").splitlines():
        if "update-alternatives" not in line or "--install" not in line:
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            words = list(lexer)
        except ValueError:  # an unbalanced quote: not a line this reads
            continue
        if "--install" not in words:
            continue
        args = words[words.index("--install") + 1:]
        end = next((i for i, w in enumerate(args) if set(w) <= SHELL_OPERATORS), len(args))
        args = args[:end]
        if len(args) < 4 or any("$" in w or "`" in w for w in args[:4]):
            continue
        link, name, path, priority = args[:4]
        if not (link.startswith("/") and path.startswith("/") and priority.isdigit()):
            continue
        slaves = []
        rest = args[4:]
        while len(rest) >= 4 and rest[0] == "--slave":
            slave = (rest[1], rest[2], rest[3])
            if not any("$" in w or "`" in w for w in slave) and slave[0].startswith("/") \
                    and slave[2].startswith("/"):
                slaves.append(slave)
            rest = rest[4:]
        yield Alternative(link, name, path, int(priority), tuple(slaves))


def postinst(deb: Path) -> str:
    """A package's ``postinst`` (empty when it has none)."""
    # a package without one: "contains no control component 'postinst'", exit 2 (the
    # archive itself was read by the unpacking before)
    done = run(["dpkg-deb", "--info", deb, "postinst"], check=False)
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else ""


def make_links(debs: dict[str, Path], root: Path) -> list[str]:
    """Make the links of every alternative the root's packages install; returns the
    master links made (image paths, sorted)."""
    candidates: dict[str, list[Alternative]] = {}
    for name in sorted(debs):
        for alt in installs(postinst(debs[name])):
            if _in_root(root, alt.path) is not None:
                candidates.setdefault(alt.name, []).append(alt)
    made = []
    for name in sorted(candidates):
        best = max(candidates[name], key=lambda a: (a.priority, a.path))
        if _link(root, best.link, best.name, best.path):
            made.append(str(image_path(best.link)))
        for link, slave, path in best.slaves:
            if _in_root(root, path) is not None:
                _link(root, link, slave, path)
    return sorted(made)


def _in_root(root: Path, path: str) -> Path | None:
    """Where an image path is in the root, when something is there."""
    where = image_path(path)
    if where is None:
        return None
    host = root / str(where).lstrip("/")
    return host if os.path.lexists(host) else None


def _link(root: Path, link: str, name: str, path: str) -> bool:
    """``link -> /etc/alternatives/name -> path`` in the root; False when ``link`` is
    there already (a package's own file) or its folder is not (nothing to put it in)."""
    at = image_path(link)
    if at is None or "/" in name or name in ("", ".", ".."):
        return False
    host = root / str(at).lstrip("/")
    if os.path.lexists(host) or not host.parent.is_dir():
        return False
    base = os.path.realpath(root)
    if not os.path.realpath(host.parent).startswith(base + "/"):
        return False  # a folder link leading out of the root
    chosen = root / ALTERNATIVES.lstrip("/") / name
    chosen.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(chosen):
        chosen.symlink_to(path)
    host.symlink_to(f"{ALTERNATIVES}/{name}")
    return True
