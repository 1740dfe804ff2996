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
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, TypeVar

from portable_service.builder.spec import Content, Spec
from portable_service.errors import ClosureError
from portable_service.rules import portabled


class Lstat(NamedTuple):
    """What the build reads of a node's lstat: a tenth of an ``os.stat_result``'s memory
    (645 bytes, with its times), kept for every node of the closure."""

    st_mode: int
    st_size: int
    st_uid: int
    st_gid: int

    @classmethod
    def of(cls, st: os.stat_result) -> Lstat:
        return cls(st.st_mode, st.st_size, st.st_uid, st.st_gid)


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
    # a folder a rule wants with all it holds, even where it is also a package's folder
    # (the CA store /etc/ssl/certs, which the openssl package lists empty)
    whole: bool = False
    # the lstat of ``host`` once someone made it (the folder listing that found it, or the
    # walk's readability check): every resolver and the layout ask for the kind and mode
    # of every node, and a syscall each made that several per entry. Not part of the
    # node's identity.
    st: Lstat | None = field(default=None, compare=False, repr=False)


def folder_entry(image: PurePosixPath, host: Path, folder: PurePosixPath,
                 st: Lstat | None) -> Node:
    """``Node(image, host, "in folder", folder, st=st)``, the node made for every entry of
    every folder: filled in directly, not through the frozen record's __init__ and its
    setattr per field (twice the cost, per entry)."""
    node = object.__new__(Node)
    node.__dict__.update(image=image, host=host, reason=FOLDER_ENTRY, parent=folder,
                         package=None, executed=False, whole=False, st=st)
    return node


FOLDER_ENTRY = "in folder"  # the reason folder_resolver gives an entry of a folder


def lstat_of(node: Node) -> Lstat:
    """``os.lstat(node.host)``, made once per node (raises OSError as lstat does)."""
    st = node.st
    if st is None:
        st = Lstat.of(os.lstat(node.host))
        # a frozen record filled in once: the value is a fact about host, not a new node
        object.__setattr__(node, "st", st)
    return st


def is_link(node: Node) -> bool:
    """``os.path.islink(node.host)``, from the node's lstat."""
    try:
        return stat.S_ISLNK(lstat_of(node).st_mode)
    except (OSError, ValueError):
        return False


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
R = TypeVar("R")


def follows_executed(resolver: Callable[[Node], Iterable[Node]]) -> Callable[[Node], Iterable[Node]]:
    """Mark a resolver whose answer depends on ``Node.executed``: a node first reached as
    data and then run by a unit is given to it again."""
    setattr(resolver, "follows_executed", True)  # noqa: B010 (mypy knows no such attribute)
    return resolver


def acts_on(*kinds: int) -> Callable[[R], R]:
    """Mark a resolver that can only answer for nodes of these ``stat.S_IFMT`` kinds (a
    folder's entries, a link's target): the walk does not ask it of others. Unmarked
    resolvers are asked of every node."""
    def mark(resolver: R) -> R:
        setattr(resolver, "kinds", frozenset(kinds))  # noqa: B010 (as follows_executed)
        return resolver
    return mark


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
        if not self.executed:
            return False
        name = image.name  # a few paths are run: most names match none of them
        return any(p.name == name for p in self.executed) and (
            image in self.executed or self.spelling(image) in self.executed)

    def excluded(self, image: PurePosixPath) -> bool:
        """``exclude`` matches the path as the image shows it (host folder links resolved,
        /lib/x -> /usr/lib/x on merged-/usr hosts) and as written."""
        patterns = self.spec.exclude
        return bool(patterns) and (excluded(image, patterns)
                                   or excluded(self.spelling(image), patterns))

    @property
    def here(self) -> str:
        """Where this build's files come from, as a message says it."""
        return "on this host" if self.root is None else "in this pinned build's packages"

    def how_to_get(self, package: str = "the package that has it",
                   host_hint: str = "install it") -> str:
        """The hint for a file this build lacks: ``host_hint`` (install it on the host), or
        for a pinned build, to name ``package`` in ``packages`` (the host does not count)."""
        return host_hint if self.root is None else f"add {package} to packages"

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
        p = _plain(image)
        moves = _moves(self.spec.contents)
        found = moves.holding(p)
        if found:
            source, target = moves.pairs[found[0]]
            return rebase(p, target, source)
        if self.root is not None:
            return str(self.root) + "/" + image.lstrip("/")
        return image


def within(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies below it (both plain absolute paths, as str).

    The string form of ``PurePosixPath(root) in PurePosixPath(path).parents``: the
    closure asks it for every path, where pathlib's objects cost more than the rest.
    """
    return path == root or path.startswith(root if root == "/" else root + "/")


def rebase(path: str, old: str, new: str) -> str:
    """``path`` (``old`` or below it) moved from ``old`` to ``new``, as pathlib would spell it."""
    if path == old:
        return new
    rest = path[len(old):] if old != "/" else path
    return rest if new == "/" else new + rest


def _plain(path: str) -> str:
    """``path`` as ``str(PurePosixPath(path))``, without the object when it is already so."""
    if "//" in path or "/./" in path or (path.endswith(("/.", "/")) and path != "/"):
        return str(PurePosixPath(path))
    return path


class _Moves:
    """The spec's contents as (source, target) strings, and which targets hold a path.

    ``holding`` answers for a path from its own entry and its folder's (remembered per
    folder): a lookup per path instead of a comparison with every content, which made
    the closure's cost per entry grow with the number of contents.
    """

    def __init__(self, contents: tuple[Content, ...]) -> None:
        self.pairs = tuple((str(c.source), str(c.target)) for c in contents)
        self._at: dict[str, tuple[int, ...]] = {}  # target -> indices of the contents there
        for i, (_, target) in enumerate(self.pairs):
            self._at[target] = (*self._at.get(target, ()), i)
        self._folders: dict[str, tuple[int, ...]] = {}

    def holding(self, path: str) -> tuple[int, ...]:
        """Indices, in the spec's order, of the contents whose target ``within`` ``path``."""
        if not path.startswith("/"):  # not an image path: compare as within does
            return tuple(i for i, (_, t) in enumerate(self.pairs) if within(path, t))
        own = self._at.get(path, ())
        if path == "/":
            return own
        folder = path[:path.rindex("/")] or "/"
        up = self._folders.get(folder)
        if up is None:
            up = self._folders[folder] = self.holding(folder)
        if not own:
            return up
        return tuple(sorted({*own, *up})) if up else own


def _moves(contents: tuple[Content, ...]) -> _Moves:
    """The :class:`_Moves` of the contents, remembered for the last spec's, by identity:
    hashing the contents (every Path in them) would cost more than the answer saves."""
    if _MOVES[0] is not contents:
        _MOVES[:] = [contents, _Moves(contents)]
    moves: _Moves = _MOVES[1]
    return moves


_MOVES: list[Any] = [None, None]


def relocation(spec: Spec, node: Node) -> tuple[Path, PurePosixPath] | None:
    """(source, target) of the ``{ source, target }`` content ``node`` was moved with, if any."""
    host, image = str(node.host), str(node.image)
    if host == image:
        return None
    moves = _moves(spec.contents)
    # the target first: of many contents from one source, one target holds the image
    for i in moves.holding(image):
        source, target = moves.pairs[i]
        if within(host, source) and image == rebase(host, source, target):
            c = spec.contents[i]
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
    return text if moved is None else moved_link(node, text, moved)


def moved_link(node: Node, text: str, moved: tuple[Path, PurePosixPath]) -> str:
    """:func:`image_link` of a link that was moved, from its host text."""
    source, target = moved
    meant = os.path.normpath(os.path.join(os.path.dirname(node.host), text))
    inside: str | None = str(source)
    if not within(meant, str(source)):  # the host's own spelling of source, only when needed
        real = os.path.realpath(source)
        inside = real if within(meant, real) else None
    if inside is None:
        return meant
    there = rebase(meant, inside, str(target))
    if text.startswith("/"):
        return there
    # a relative link that stays within the tree means the same after the move; one that
    # climbs out of it and back in (../src/y) is rewritten to reach the same file
    image_parent = str(node.image.parent)
    if os.path.normpath(os.path.join(image_parent, text)) == there:
        return text
    return os.path.relpath(there, image_parent)


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
    text = str(path)  # asked by four resolvers of every node: most answers need no parts
    if text.startswith("/") and not text.startswith(("/nix/store", "//nix/store")):
        return False
    return path.parts[1:3] == ("nix", "store")


def host_spelling(path: PurePosixPath) -> PurePosixPath:
    """``path`` with the host's folder symlinks above it resolved: /bin/sh -> /usr/bin/sh."""
    return PurePosixPath(os.path.realpath(path.parent)) / path.name


def excluded(path: PurePosixPath, patterns: Iterable[str]) -> bool:
    text = str(path)
    return any(fnmatch.fnmatchcase(text, pat) or fnmatch.fnmatchcase(text, pat.rstrip("/") + "/*")
               for pat in patterns)
