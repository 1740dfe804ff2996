"""The closure: every host path the image must carry, each with the reason it is there.

Roots come from the spec (contents, symlink objects, Debian packages) and the
units (the programs they run, the environment files they read); each resolver
turns a path into the paths it references:

- folders: their entries (``folder_resolver``);
- symlinks: the chain of targets (``symlink_resolver``);
- ELF files: interpreter and libraries, as the loader finds them (``elf``);
- scripts: the ``#!`` interpreter, and NAME of ``#!/usr/bin/env NAME`` (``scripts``);
- Nix store paths: the requisites Nix records (``nix``).

``walk.resolve`` follows them transitively and records for every path the one that
first pulled it in, so ``why`` can show the chain.

Data is not a program: only what the units execute (Exec*= programs, the
commands of ``env NAME`` and ``sh -c``) and what those programs execute in turn
(``#!`` interpreters, symlink targets) is marked ``executed``, and only an
executed script brings its interpreter. Everything else (folder entries,
package files, the targets of data symlinks) is data, whatever its mode bits say.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from portable_service.builder.spec import Spec
from portable_service.errors import ClosureError
from portable_service.rules import portabled


@dataclass(frozen=True)
class Node:
    """A path to ship: ``host`` is read, ``image`` is where it goes (usually the same)."""

    image: PurePosixPath
    host: Path
    reason: str  # e.g. "content", "DT_NEEDED libc.so.6", "symlink target"
    parent: PurePosixPath | None = None  # the node that pulled this one in; None for a root
    # the Debian package this is a file of: dpkg lists every file itself, so a
    # folder does not bring its entries
    package: str | None = None
    # a unit runs it (directly, through env or sh -c, as a #! interpreter or through a
    # symlink): only then does a script bring its interpreter; anything else is data
    executed: bool = False


@dataclass
class Closure:
    nodes: dict[PurePosixPath, Node] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out or replaced, for the build output
    # files made for the image rather than copied from the host (its ld.so.cache)
    generated: dict[PurePosixPath, bytes] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __contains__(self, path: object) -> bool:
        return path in self.nodes

    def why(self, path: PurePosixPath) -> list[Node]:
        """The chain from a root to ``path``, root first; empty when it is not in the closure."""
        chain: list[Node] = []
        seen: set[PurePosixPath] = set()
        current: PurePosixPath | None = path
        while current is not None and current in self.nodes and current not in seen:
            seen.add(current)
            node = self.nodes[current]
            chain.append(node)
            current = node.parent
        return list(reversed(chain))


# A resolver looks at one node (its host file) and names what it references.
Resolver = Callable[[Node], Iterable[Node]]


def follows_executed(resolver: Callable[[Node], Iterable[Node]]) -> Callable[[Node], Iterable[Node]]:
    """Mark a resolver whose answer depends on ``Node.executed``: a node first reached as
    data and then run by a unit is given to it again."""
    setattr(resolver, "follows_executed", True)  # noqa: B010 (mypy knows no such attribute)
    return resolver


class Unreadable(Exception):
    """A resolver cannot read a host path; ``resolve`` turns it into an error or a warning."""

    def __init__(self, path: os.PathLike[str] | str, strerror: str) -> None:
        super().__init__(f"{path}: {strerror}")
        self.path, self.strerror = str(path), strerror


UNREADABLE_HINT = ("run the build as root, make it readable (chmod), or add it to exclude; "
                   "with allow-missing it is left out with a warning")

# paths a service finds made at run time, and the image's own files: never dependencies
RUNTIME_ROOTS = tuple(PurePosixPath(p) for p in portabled.RUNTIME_ROOTS)
SCAFFOLD_FILES = tuple(PurePosixPath(p) for p in portabled.SCAFFOLD_FILES)


@dataclass
class Context:
    """What resolvers share: the spec, the closure being built (for warnings), path mapping."""

    spec: Spec
    closure: Closure
    # image paths the units run, each in its literal and its host spelling (unit_nodes)
    executed: set[PurePosixPath] = field(default_factory=set)
    _parents: dict[PurePosixPath, PurePosixPath] = field(default_factory=dict, repr=False)
    # the file system the image's paths are read from when not the host's: the private
    # root of a pinned build (builder/repo), where image path P is root/P
    root: Path | None = None

    def spelling(self, path: PurePosixPath) -> PurePosixPath:
        """:func:`host_spelling`, with the parent folders' answers remembered."""
        real = self._parents.get(path.parent)
        if real is None:
            real = self._parents[path.parent] = PurePosixPath(os.path.realpath(path.parent))
        return real / path.name

    def runs(self, image: PurePosixPath) -> bool:
        """Whether a unit executes the file at ``image`` (spelled any way the host allows)."""
        return bool(self.executed) and (image in self.executed
                                        or self.spelling(image) in self.executed)

    def excluded(self, image: PurePosixPath) -> bool:
        """``exclude`` matches the path as the image shows it (host folder links resolved,
        /lib/x -> /usr/lib/x on merged-/usr hosts) and as written."""
        patterns = self.spec.exclude
        return bool(patterns) and (excluded(image, patterns)
                                   or excluded(self.spelling(image), patterns))

    def missing(self, message: str, hint: str) -> None:
        """A reference that cannot be satisfied: an error, or a warning with allow-missing."""
        if self.spec.allow_missing:
            self.closure.warnings.append(message)
        else:
            raise ClosureError(message, hint)

    def in_root(self, image: str) -> str:
        """Where the image path is read from, contents aside: the host's path, or the root's."""
        return image if self.root is None else str(self.root) + "/" + image.lstrip("/")

    def host_of(self, image: str) -> str:
        """The host file behind an image path: contents moved with { source, target } map back."""
        p = PurePosixPath(image)
        for c in self.spec.contents:
            if c.target == p or c.target in p.parents:
                return str(c.source / p.relative_to(c.target))
        if self.root is not None:
            return str(self.root) + "/" + image.lstrip("/")
        return image


def relocation(spec: Spec, node: Node) -> tuple[Path, PurePosixPath] | None:
    """(source, target) of the ``{ source, target }`` content ``node`` was moved with, if any."""
    if PurePosixPath(node.host) == node.image:
        return None
    for c in spec.contents:
        if (c.source == node.host or c.source in node.host.parents) and \
                node.image == c.target / node.host.relative_to(c.source):
            return c.source, c.target
    return None


def image_link(spec: Spec, node: Node) -> str:
    """The target a symlink node carries in the image: its meaning there, not its host text.

    A link moved with ``{ source, target }`` that points into ``source`` (absolutely,
    or relatively from outside it) points to the same place under ``target``; one that
    points out of ``source`` keeps the host path it means (the closure brings that path in).
    """
    text = os.readlink(node.host)
    moved = relocation(spec, node)
    if moved is None:
        return text
    source, target = moved
    meant = PurePosixPath(os.path.normpath(os.path.join(node.host.parent, text)))
    sources = {PurePosixPath(source), PurePosixPath(os.path.realpath(source))}
    inside = next((s for s in sources if meant == s or s in meant.parents), None)
    if inside is None:
        return str(meant)
    there = target / meant.relative_to(inside)
    if text.startswith("/"):
        return str(there)
    # a relative link that stays within the tree means the same after the move; one that
    # climbs out of it and back in (../src/y) is rewritten to reach the same file
    if PurePosixPath(os.path.normpath(os.path.join(node.image.parent, text))) == there:
        return text
    return os.path.relpath(there, node.image.parent)


def present(path: os.PathLike[str] | str, ctx: Context) -> bool:
    """``os.path.lexists``, except that a path the build may not look at is not "missing":
    it is reported as unreadable (an error, or a warning with allow-missing)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        ctx.missing(f"cannot read {path}: {e.strerror}", UNREADABLE_HINT)
        return False
    return True


def in_nix_store(path: PurePosixPath) -> bool:
    return path.parts[1:3] == ("nix", "store")


def host_spelling(path: PurePosixPath) -> PurePosixPath:
    """``path`` with the host's folder symlinks above it resolved: /bin/sh -> /usr/bin/sh."""
    return PurePosixPath(os.path.realpath(path.parent)) / path.name


def excluded(path: PurePosixPath, patterns: Iterable[str]) -> bool:
    text = str(path)
    return any(fnmatch.fnmatchcase(text, pat) or fnmatch.fnmatchcase(text, pat.rstrip("/") + "/*")
               for pat in patterns)
