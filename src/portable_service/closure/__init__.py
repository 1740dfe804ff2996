"""The closure: every host path the image must carry, each with the reason it is there.

Roots come from the spec (contents, symlink objects, Debian packages) and the
units (the programs they run, the environment files they read); each resolver
turns a path into the paths it references:

- folders: their entries (``folder_resolver``);
- symlinks: the chain of targets (``symlink_resolver``);
- ELF files: interpreter and libraries, as the loader finds them (``elf``);
- scripts: the ``#!`` interpreter, and NAME of ``#!/usr/bin/env NAME`` (``scripts``);
- Nix store paths: the requisites Nix records (``nix``).

``resolve`` follows them transitively and records for every path the one that
first pulled it in, so ``why`` can show the chain.
"""

from __future__ import annotations

import filecmp
import fnmatch
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from portable_service.errors import ClosureError, TreeError
from portable_service.spec import Spec
from portable_service.units import SYSTEMD_PATH, Unit, environment_files, exec_programs


@dataclass(frozen=True)
class Node:
    """A path to ship: ``host`` is read, ``image`` is where it goes (usually the same)."""

    image: PurePosixPath
    host: Path
    reason: str  # e.g. "content", "DT_NEEDED libc.so.6", "symlink target"
    parent: PurePosixPath | None = None  # the node that pulled this one in; None for a root
    # the Debian package this is a file of: dpkg lists every file itself, so a
    # folder does not bring its entries and a script does not bring its interpreter
    package: str | None = None


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

# Paths a service finds created at run time (or mounted by systemd): never dependencies.
RUNTIME_ROOTS = tuple(PurePosixPath(p) for p in (
    "/run", "/tmp", "/var/tmp", "/var/lib", "/var/cache", "/var/log", "/proc", "/sys", "/dev"))
SCAFFOLD_FILES = tuple(PurePosixPath(p) for p in
                       ("/etc/machine-id", "/etc/resolv.conf", "/etc/os-release"))


@dataclass
class Context:
    """What resolvers share: the spec, the closure being built (for warnings), path mapping."""

    spec: Spec
    closure: Closure

    def missing(self, message: str, hint: str) -> None:
        """A reference that cannot be satisfied: an error, or a warning with allow-missing."""
        if self.spec.allow_missing:
            self.closure.warnings.append(message)
        else:
            raise ClosureError(message, hint)

    def host_of(self, image: str) -> str:
        """The host file behind an image path: contents moved with { source, target } map back."""
        p = PurePosixPath(image)
        for c in self.spec.contents:
            if c.target == p or c.target in p.parents:
                return str(c.source / p.relative_to(c.target))
        return image


def in_nix_store(path: PurePosixPath) -> bool:
    return path.parts[1:3] == ("nix", "store")


def host_spelling(path: PurePosixPath) -> PurePosixPath:
    """``path`` with the host's folder symlinks above it resolved: /bin/sh -> /usr/bin/sh."""
    return PurePosixPath(os.path.realpath(path.parent)) / path.name


def root_nodes(spec: Spec, units: list[Unit], ctx: Context | None = None) -> list[Node]:
    """What the spec names directly, the programs and files the units need, package files."""
    ctx = ctx or Context(spec, Closure())
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
    from_units = list(unit_nodes(spec, units, ctx))
    roots.extend(from_units)
    if spec.packages:
        from portable_service.closure import deb

        # the packages of what the units run are shipped whole (a program's own data)
        roots.extend(deb.package_nodes(spec, ctx, used=[n.image for n in from_units]))
    return roots


def unit_nodes(spec: Spec, units: list[Unit], ctx: Context) -> Iterator[Node]:
    """Programs in Exec*= lines (bare names looked up as systemd does) and EnvironmentFile= files.

    Paths the spec places itself (contents targets, symlinks) and paths made at
    run time are not host dependencies.
    """
    from portable_service.closure.scripts import env_commands, shell_commands, which

    placed = [host_spelling(c.target) for c in spec.contents]
    placed += [host_spelling(s.symlink) for s in spec.symlinks]

    def wanted(p: PurePosixPath) -> bool:
        if p in SCAFFOLD_FILES or any(p == r or r in p.parents for r in RUNTIME_ROOTS):
            return False
        spelled = host_spelling(p)
        return not any(spelled == t or t in spelled.parents for t in placed)

    for unit in units:
        in_shell = shell_commands(unit)
        for word, directive in exec_programs(unit) + env_commands(unit) + in_shell:
            if "%" in word or "$" in word:
                continue  # specifiers and variables are only known at run time
            found = word if word.startswith("/") else which(word)
            if found is None and (word, directive) in in_shell:
                # a shell may define it as a function or alias: worth a warning only
                ctx.closure.warnings.append(
                    f"{directive} runs {word!r}, which is not in systemd's PATH on this host")
                continue
            if found is None:
                ctx.missing(f"{directive} runs {word!r}, which is not in systemd's PATH "
                            f"({':'.join(SYSTEMD_PATH)}) on this host",
                            "install it, give its absolute path, or ship it with contents")
                continue
            path = PurePosixPath(os.path.normpath(found))
            if not wanted(path):
                continue
            if not os.path.lexists(path):
                ctx.missing(f"{directive} runs {path}, which does not exist on this host",
                            "install it, ship it with contents (source, target), or fix the unit")
                continue
            yield Node(path, Path(path), f"program of {directive}")
        for file, directive in environment_files(unit):
            path = PurePosixPath(os.path.normpath(file))
            if not wanted(path):
                continue
            if not os.path.lexists(path):
                ctx.missing(f"{directive} reads {path}, which does not exist on this host",
                            "create it, ship it with contents, or write EnvironmentFile=-PATH")
                continue
            yield Node(path, Path(path), f"{directive}")


def folder_resolver(node: Node) -> Iterator[Node]:
    """A folder brings every entry in it (symlinks stay links; they are not followed here)."""
    if node.package is not None or node.host.is_symlink() or not node.host.is_dir():
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
        # a package's link (dpkg lists /lib -> usr/lib) must not turn into the whole folder
        yield Node(resolved, Path(resolved), f"symlink target of {node.image}", node.image,
                   package=node.package)


DEFAULT_RESOLVERS: tuple[Resolver, ...] = (folder_resolver, symlink_resolver)


def standard_resolvers(ctx: Context) -> tuple[Resolver, ...]:
    """Every kind of reference: folders, symlinks, ELF, scripts, Nix store paths."""
    from portable_service.closure import elf, nix, scripts

    return (folder_resolver, symlink_resolver, elf.ElfResolver(ctx), scripts.script_resolver(ctx),
            nix.NixResolver(ctx))


def resolve(
    spec: Spec,
    units: list[Unit],
    resolvers: Iterable[Resolver] | None = None,
) -> Closure:
    """Follow every reference from the roots, breadth first, each path once."""
    closure = Closure()
    ctx = Context(spec, closure)
    resolvers = standard_resolvers(ctx) if resolvers is None else tuple(resolvers)
    queue = deque(root_nodes(spec, units, ctx))
    # a path the spec makes a symlink is the spec's: the host's file there is not shipped
    spec_links = {host_spelling(s.symlink) for s in spec.symlinks}
    while queue:
        node = queue.popleft()
        if excluded(node.image, spec.exclude):
            continue
        if node.parent is not None and spec_links and host_spelling(node.image) in spec_links:
            continue
        if node.image in closure.nodes:
            _check_same_source(closure.nodes[node.image], node)
            continue
        closure.nodes[node.image] = node
        for resolver in resolvers:
            queue.extend(resolver(node))
    for resolver in resolvers:
        finish = getattr(resolver, "finish", None)
        if finish is not None:
            finish()  # checks that need the whole closure (a library's misses)
    _add_ld_cache(closure, spec)
    return closure


IMAGE_LD_CACHE = PurePosixPath("/etc/ld.so.cache")


def _add_ld_cache(closure: Closure, spec: Spec) -> None:
    """Give the image the host's cache entries for the libraries it carries.

    Libraries the host finds through /etc/ld.so.conf.d live outside the
    loader's default folders; without a cache the image's loader would miss them.
    """
    from portable_service.closure import ldcache

    if IMAGE_LD_CACHE in closure.nodes or excluded(IMAGE_LD_CACHE, spec.exclude):
        return
    entries = [e for e in ldcache.read()
               if (node := closure.nodes.get(PurePosixPath(e.path))) is not None
               and str(node.host) == e.path]
    if entries:
        closure.generated[IMAGE_LD_CACHE] = ldcache.render(entries)


def _check_same_source(old: Node, new: Node) -> None:
    """Two host paths may land on one image path only when they are the same file."""
    if old.host == new.host:
        return
    if old.package is None and new.package is not None and old.host != Path(old.image):
        return  # the user's contents win over a package's file (a link into them included)
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
