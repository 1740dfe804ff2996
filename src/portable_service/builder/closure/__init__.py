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

Data is not a program: only what the units execute (Exec*= programs, the
commands of ``env NAME`` and ``sh -c``) and what those programs execute in turn
(``#!`` interpreters, symlink targets) is marked ``executed``, and only an
executed script brings its interpreter. Everything else (folder entries,
package files, the targets of data symlinks) is data, whatever its mode bits say.
"""

from __future__ import annotations

import errno
import filecmp
import fnmatch
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from portable_service.builder.spec import Content, Spec
from portable_service.builder.units import Unit, environment_files, exec_programs
from portable_service.errors import ClosureError, TreeError
from portable_service.rules import portabled
from portable_service.rules.portabled import SYSTEMD_PATH


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

    def missing(self, message: str, hint: str) -> None:
        """A reference that cannot be satisfied: an error, or a warning with allow-missing."""
        if self.spec.allow_missing:
            self.closure.warnings.append(message)
        else:
            raise ClosureError(message, hint)

    def host_of(self, image: str) -> str:
        """The host file behind an image path: contents moved with { source, target } map back."""
        p = _plain(image)
        for source, target in _moves(self.spec.contents):
            if within(p, target):
                return rebase(p, target, source)
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


def _moves(contents: tuple[Content, ...]) -> tuple[tuple[str, str], ...]:
    """(source, target) of every content as plain strings, in the spec's order.

    Remembered for the last spec's contents, by identity: hashing the contents (every
    Path in them) would cost more than the answer saves.
    """
    if _MOVES[0] is not contents:
        _MOVES[:] = [contents, tuple((str(c.source), str(c.target)) for c in contents)]
    moves: tuple[tuple[str, str], ...] = _MOVES[1]
    return moves


_MOVES: list[Any] = [None, ()]


def relocation(spec: Spec, node: Node) -> tuple[Path, PurePosixPath] | None:
    """(source, target) of the ``{ source, target }`` content ``node`` was moved with, if any."""
    host, image = str(node.host), str(node.image)
    if host == image:
        return None
    for c, (source, target) in zip(spec.contents, _moves(spec.contents), strict=True):
        # the target first: of many contents from one source, one target holds the image
        if within(image, target) and within(host, source) and \
                image == rebase(host, source, target):
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
    return text if moved is None else _moved_link(node, text, moved)


def _moved_link(node: Node, text: str, moved: tuple[Path, PurePosixPath]) -> str:
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
    return path.parts[1:3] == ("nix", "store")


def host_spelling(path: PurePosixPath) -> PurePosixPath:
    """``path`` with the host's folder symlinks above it resolved: /bin/sh -> /usr/bin/sh."""
    return PurePosixPath(os.path.realpath(path.parent)) / path.name


def root_nodes(spec: Spec, units: list[Unit], ctx: Context | None = None) -> list[Node]:
    """What the spec names directly, the programs and files the units need, package files."""
    from portable_service.builder.closure import runtime

    ctx = ctx or Context(spec, Closure())
    roots: list[Node] = []
    for content in spec.contents:
        try:
            os.lstat(content.source)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as e:  # a folder above it the build may not enter
            ctx.missing(f"cannot read content {content.source}: {e.strerror}", UNREADABLE_HINT)
            continue
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
    roots.extend(runtime.root_nodes(spec, units, ctx))
    if spec.packages:
        from portable_service.builder.closure import deb

        # the packages of what the units run are shipped whole (a program's own data)
        roots.extend(deb.package_nodes(spec, ctx, used=[n.image for n in from_units]))
    return roots


def unit_nodes(spec: Spec, units: list[Unit], ctx: Context) -> Iterator[Node]:
    """Programs in Exec*= lines (bare names looked up as systemd does).

    EnvironmentFile= files are not followed: the service manager reads them on the host.

    Paths the spec places itself (contents targets, symlinks) and paths made at
    run time are not host dependencies.
    """
    from portable_service.builder.closure.scripts import env_commands, shell_commands, which

    placed = [host_spelling(c.target) for c in spec.contents]
    placed += [host_spelling(s.symlink) for s in spec.symlinks]
    links = [(host_spelling(s.symlink), PurePosixPath(os.path.abspath(s.object)))
             for s in spec.symlinks]

    def mark_executed(p: PurePosixPath) -> None:
        # a program the spec places itself is run too: a content file, or the object of
        # one of the spec's symlinks
        spelled = host_spelling(p)
        ctx.executed.update((p, spelled))
        for link, obj in links:
            if spelled == link or link in spelled.parents:
                target = obj / spelled.relative_to(link)
                ctx.executed.update((target, host_spelling(target)))

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
            mark_executed(path)
            if not wanted(path):
                continue
            if not os.path.lexists(path):
                ctx.missing(f"{directive} runs {path}, which does not exist on this host",
                            "install it, ship it with contents (source, target), or fix the unit")
                continue
            yield Node(path, Path(path), f"program of {directive}", executed=True)
        for file, directive in environment_files(unit, optional=True):
            # systemd reads it on the host, before the unit's root image is mounted
            ctx.closure.warnings.append(
                f"{directive} names {file}: systemd reads it on the host before the image is "
                "mounted, so a copy in the image is not used; put the variables in "
                "Environment=, keep the file on the host, or read it in ExecStart=")


def folder_resolver(node: Node) -> Iterator[Node]:
    """A folder brings every entry in it (symlinks stay links; they are not followed here)."""
    if node.package is not None or not _is_dir(node.host):
        return
    try:
        names = sorted(os.listdir(node.host), key=os.fsencode)
    except OSError as e:
        raise Unreadable(node.host, e.strerror or str(e)) from None
    for name in names:
        yield Node(node.image / name, node.host / name, "in folder", node.image)


def _is_dir(path: Path) -> bool:
    """A folder itself, not a link to one (``not is_symlink() and is_dir()``, one lstat)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


@follows_executed
def symlink_resolver(node: Node) -> Iterator[Node]:
    """A symlink at its host path brings its target, so the chain resolves inside the image.

    The target is executed when the link is (a unit running /usr/bin/python3 runs
    python3.11), data otherwise.
    """
    if str(node.image) != str(node.host) or not os.path.islink(node.host):
        return
    target = os.readlink(node.host)
    resolved = PurePosixPath(os.path.normpath(os.path.join(node.host.parent, target)))
    if os.path.lexists(resolved):
        # a package's link (dpkg lists /lib -> usr/lib) must not turn into the whole folder
        yield Node(resolved, Path(resolved), f"symlink target of {node.image}", node.image,
                   package=node.package, executed=node.executed)


def relocated_link_resolver(ctx: Context) -> Resolver:
    """A symlink moved with ``{ source, target }``: what it means in the image must be there.

    A target inside ``source`` moves with the tree (:func:`image_link` rewrites an
    absolute one); a target outside it is brought in at its host path; one that
    would dangle in the image is a warning naming the link.
    """

    @follows_executed
    def resolve(node: Node) -> Iterator[Node]:
        host = str(node.host)
        if host == str(node.image) or not os.path.islink(host):
            return
        moved = relocation(ctx.spec, node)
        if moved is None:
            return
        # plain strings until a node is made: this runs for every link of a moved tree
        text = os.readlink(host)
        meant = os.path.normpath(os.path.join(os.path.dirname(host), text))
        in_image = os.path.normpath(os.path.join(os.path.dirname(node.image),
                                                 _moved_link(node, text, moved)))
        in_image_host = ctx.host_of(in_image)
        if not os.path.lexists(in_image_host):
            ctx.closure.warnings.append(
                f"symlink {node.host} (placed at {node.image}) points to {text}, which does "
                "not exist: it dangles in the image")
            return
        if in_image == meant and ctx.host_of(meant) == meant:
            # outside the moved tree: the host path it names must be in the image too
            yield Node(PurePosixPath(meant), Path(meant), f"symlink target of {node.image}",
                       node.image, executed=node.executed)
        elif node.executed:
            # inside the moved tree: already there as a folder entry, but now it is run
            yield Node(PurePosixPath(in_image), Path(in_image_host),
                       f"symlink target of {node.image}", node.image, executed=True)

    return resolve


DEFAULT_RESOLVERS: tuple[Resolver, ...] = (folder_resolver, symlink_resolver)


def standard_resolvers(ctx: Context) -> tuple[Resolver, ...]:
    """Every kind of reference: folders, symlinks, ELF, scripts, Nix store paths."""
    from portable_service.builder.closure import elf, nix, runtime, scripts

    return (folder_resolver, symlink_resolver, relocated_link_resolver(ctx), elf.ElfResolver(ctx),
            scripts.script_resolver(ctx), nix.NixResolver(ctx), runtime.RuntimeResolver(ctx))


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
        if ctx.excluded(node.image):
            continue
        if node.parent is not None and spec_links and host_spelling(node.image) in spec_links:
            continue
        if not node.executed and ctx.runs(node.image):
            node = replace(node, executed=True)
        old = closure.nodes.get(node.image)
        if old is not None:
            _check_same_source(old, node)
            if node.executed and not old.executed:
                # reached as data first (a folder entry), run by a unit all the same
                closure.nodes[node.image] = upgraded = replace(old, executed=True)
                for resolver in resolvers:
                    if getattr(resolver, "follows_executed", False):
                        _follow(ctx, resolver, upgraded, queue)
            continue
        if not _readable(ctx, node):
            continue
        closure.nodes[node.image] = node
        for resolver in resolvers:
            _follow(ctx, resolver, node, queue)
    for resolver in resolvers:
        finish = getattr(resolver, "finish", None)
        if finish is not None:
            finish()  # checks that need the whole closure (a library's misses)
    _add_ld_cache(closure, spec)
    return closure


def _follow(ctx: Context, resolver: Resolver, node: Node, queue: deque[Node]) -> None:
    try:
        queue.extend(resolver(node))
    except Unreadable as e:
        ctx.missing(f"cannot read {e.path}: {e.strerror}", UNREADABLE_HINT)


def _readable(ctx: Context, node: Node) -> bool:
    """Whether the build can read what it must copy of ``node``: a file it cannot read is
    an error (or, with allow-missing, a warning and the file is left out), never a gap.

    A folder needs no check here: listing it is the folder resolver's, and each entry
    is checked on its own.
    """
    try:
        st = os.lstat(node.host)
    except FileNotFoundError:
        return True  # image.place names a path that vanished; not a permission matter
    except OSError as e:
        ctx.missing(f"cannot read {node.host}: {e.strerror}", UNREADABLE_HINT)
        return False
    if stat.S_ISREG(st.st_mode) and not os.access(node.host, os.R_OK):
        ctx.missing(f"cannot read {node.host}: {os.strerror(errno.EACCES)}", UNREADABLE_HINT)
        return False
    return True


IMAGE_LD_CACHE = PurePosixPath("/etc/ld.so.cache")


def _add_ld_cache(closure: Closure, spec: Spec) -> None:
    """Give the image the host's cache entries for the libraries it carries.

    Libraries the host finds through /etc/ld.so.conf.d live outside the
    loader's default folders; without a cache the image's loader would miss them.
    """
    from portable_service.builder.closure import ldcache

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
