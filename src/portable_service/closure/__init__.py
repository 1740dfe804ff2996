"""The closure: every host path the image must carry, each with the reason it is there.

Roots come from the spec (contents, symlink objects) and the units; each
resolver (folders, symlink chains, later ELF, scripts, packages, Nix) turns a
path into the paths it references. ``resolve`` follows them transitively and
records for every path the one that first pulled it in, so ``why`` can show
the chain.
"""

from __future__ import annotations

import filecmp
import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from portable_service.errors import ClosureError, TreeError
from portable_service.spec import Spec
from portable_service.units import Unit


@dataclass(frozen=True)
class Node:
    """A path to ship: ``host`` is read, ``image`` is where it goes (usually the same)."""

    image: PurePosixPath
    host: Path
    reason: str  # e.g. "content", "DT_NEEDED libc.so.6", "symlink target"
    parent: PurePosixPath | None = None  # the node that pulled this one in; None for a root


@dataclass
class Closure:
    nodes: dict[PurePosixPath, Node] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

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


def root_nodes(spec: Spec, units: list[Unit]) -> list[Node]:
    """What the spec names directly."""
    roots: list[Node] = []
    for content in spec.contents:
        if not os.path.lexists(content.source):
            raise ClosureError(f"content {content.source} does not exist",
                               "fix the path in contents or create it first")
        roots.append(Node(content.target, content.source, "content"))
    for link in spec.symlinks:
        if not os.path.lexists(link.object):
            raise ClosureError(f"symlink object {link.object} (for {link.symlink}) does not exist",
                               "fix the object path in symlinks")
        obj = PurePosixPath(os.path.abspath(link.object))
        roots.append(Node(obj, Path(obj), f"object of symlink {link.symlink}"))
    return roots


def folder_resolver(node: Node) -> Iterator[Node]:
    """A folder brings every entry in it (symlinks stay links; they are not followed here)."""
    if node.host.is_symlink() or not node.host.is_dir():
        return
    try:
        names = sorted(os.listdir(node.host), key=os.fsencode)
    except OSError as e:
        raise ClosureError(f"cannot read folder {node.host}: {e.strerror}",
                           "fix its permissions or leave it out") from None
    for name in names:
        yield Node(node.image / name, node.host / name, "in folder", node.image)


def symlink_resolver(node: Node) -> Iterator[Node]:
    """A symlink at its host path brings its target, so the chain resolves inside the image."""
    if node.image != PurePosixPath(node.host) or not node.host.is_symlink():
        return
    target = os.readlink(node.host)
    resolved = PurePosixPath(os.path.normpath(os.path.join(node.host.parent, target)))
    if os.path.lexists(resolved):
        yield Node(resolved, Path(resolved), f"symlink target of {node.image}", node.image)


DEFAULT_RESOLVERS: tuple[Resolver, ...] = (folder_resolver, symlink_resolver)


def resolve(
    spec: Spec,
    units: list[Unit],
    resolvers: Iterable[Resolver] = DEFAULT_RESOLVERS,
) -> Closure:
    """Follow every reference from the roots, breadth first, each path once."""
    resolvers = tuple(resolvers)
    closure = Closure()
    queue = list(root_nodes(spec, units))
    while queue:
        node = queue.pop(0)
        if excluded(node.image, spec.exclude):
            continue
        if node.image in closure.nodes:
            _check_same_source(closure.nodes[node.image], node)
            continue
        closure.nodes[node.image] = node
        for resolver in resolvers:
            queue.extend(resolver(node))
    return closure


def _check_same_source(old: Node, new: Node) -> None:
    """Two host paths may land on one image path only when they are the same file."""
    if old.host == new.host:
        return
    if all(p.is_dir() and not p.is_symlink() for p in (old.host, new.host)):
        return  # two folders merge
    try:
        if os.path.samefile(old.host, new.host) or filecmp.cmp(old.host, new.host, shallow=False):
            return
    except OSError:
        pass
    raise TreeError(
        f"{new.image} is claimed twice: by {old.host} ({old.reason}) and by {new.host} "
        f"({new.reason})",
        "place one of them elsewhere with { source, target }, or drop one",
    )


def excluded(path: PurePosixPath, patterns: Iterable[str]) -> bool:
    text = str(path)
    return any(fnmatch.fnmatchcase(text, pat) or fnmatch.fnmatchcase(text, pat.rstrip("/") + "/*")
               for pat in patterns)
