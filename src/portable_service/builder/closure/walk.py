"""The walk: the closure's roots, and every reference followed from them.

Roots come from the spec and the units (:func:`root_nodes`); :func:`resolve` follows
each resolver (folders, symlinks, ELF, scripts, Nix, runtimes) breadth first, each path
once. The records it works on (:class:`Node`, :class:`Closure`, :class:`Context`) are
the package's (``closure/__init__.py``), which the resolver modules import as well.
"""

from __future__ import annotations

import errno
import filecmp
import os
import stat
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath

from portable_service.builder.closure import (
    RUNTIME_ROOTS,
    SCAFFOLD_FILES,
    UNREADABLE_HINT,
    Closure,
    Context,
    Lstat,
    Node,
    Resolver,
    Unreadable,
    acts_on,
    deb,
    elf,
    excluded,
    folder_entry,
    follows_executed,
    host_spelling,
    is_link,
    ldcache,
    lstat_of,
    moved_link,
    nix,
    relocation,
    runtime,
    scripts,
)
from portable_service.builder.closure.scripts import env_commands, shell_commands, which
from portable_service.builder.spec import Spec
from portable_service.builder.units import Unit, environment_files, exec_programs
from portable_service.errors import ClosureError, TreeError
from portable_service.fs.paths import child
from portable_service.rules.portabled import SYSTEMD_PATH


def root_nodes(spec: Spec, units: list[Unit], ctx: Context | None = None) -> list[Node]:
    """What the spec names directly, the programs and files the units need, package files."""
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
        # the packages of what the units run are shipped whole (a program's own data)
        roots.extend(deb.package_nodes(spec, ctx, admin_dir=Path(ctx.host_of(str(deb.ADMIN_DIR))),
                                       used=[n.image for n in from_units]))
    return roots


def unit_nodes(spec: Spec, units: list[Unit], ctx: Context) -> Iterator[Node]:
    """Programs in Exec*= lines (bare names looked up as systemd does).

    EnvironmentFile= files are not followed: the service manager reads them on the host.

    Paths the spec places itself (contents targets, symlinks) and paths made at
    run time are not host dependencies.
    """
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
            found = word if word.startswith("/") else which(word, root=ctx.root)
            if found is None and (word, directive) in in_shell:
                # a shell may define it as a function or alias: worth a warning only
                ctx.closure.warnings.append(
                    f"{directive} runs {word!r}, which is not in systemd's PATH {ctx.here}")
                continue
            if found is None:
                ctx.missing(f"{directive} runs {word!r}, which is not in systemd's PATH "
                            f"({':'.join(SYSTEMD_PATH)}) {ctx.here}",
                            ctx.how_to_get()
                            + ", give its absolute path, or ship it with contents")
                continue
            path = PurePosixPath(os.path.normpath(found))
            mark_executed(path)
            if not wanted(path):
                continue
            if not os.path.lexists(ctx.host_of(str(path))):
                ctx.missing(f"{directive} runs {path}, which does not exist {ctx.here}",
                            ctx.how_to_get()
                            + ", ship it with contents (source, target), or fix the unit")
                continue
            yield Node(path, Path(ctx.host_of(str(path))), f"program of {directive}", executed=True)
        for file, directive in environment_files(unit, optional=True):
            # systemd reads it on the host, before the unit's root image is mounted
            ctx.closure.warnings.append(
                f"{directive} names {file}: systemd reads it on the host before the image is "
                "mounted, so a copy in the image is not used; put the variables in "
                "Environment=, keep the file on the host, or read it in ExecStart=")


@acts_on(stat.S_IFDIR)
def folder_resolver(node: Node) -> Iterator[Node]:
    """A folder brings every entry in it (symlinks stay links; they are not followed here)."""
    if node.package is not None or not _is_dir(node):
        return
    try:
        with os.scandir(node.host) as found:
            entries = sorted(found, key=lambda e: os.fsencode(e.name))
    except OSError as e:
        raise Unreadable(node.host, e.strerror or str(e)) from None
    for entry in entries:
        try:  # each entry's lstat, made once here for the resolvers and the layout
            st: Lstat | None = Lstat.of(entry.stat(follow_symlinks=False))
        except OSError:
            st = None  # gone or unreadable: the walk's own check reports it
        yield folder_entry(child(node.image, entry.name), child(node.host, entry.name),
                           node.image, st)


def _is_dir(node: Node) -> bool:
    """A folder itself, not a link to one (``not is_symlink() and is_dir()``, one lstat)."""
    try:
        return stat.S_ISDIR(lstat_of(node).st_mode)
    except (OSError, ValueError):
        return False


@follows_executed
@acts_on(stat.S_IFLNK)
def symlink_resolver(node: Node) -> Iterator[Node]:
    """A symlink at its host path brings its target, so the chain resolves inside the image.

    The target is executed when the link is (a unit running /usr/bin/python3 runs
    python3.11), data otherwise.
    """
    if str(node.image) != str(node.host) or not is_link(node):
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
    @acts_on(stat.S_IFLNK)
    def resolve(node: Node) -> Iterator[Node]:
        host = str(node.host)
        if host == str(node.image) or not is_link(node):
            return
        if ctx.root is not None and str(node.host) == ctx.host_of(str(node.image)):
            # a link of the root: its target is an image path, read from the root
            text = os.readlink(node.host)
            named = PurePosixPath(os.path.normpath(os.path.join(node.image.parent, text)))
            if os.path.lexists(ctx.host_of(str(named))):
                yield Node(named, Path(ctx.host_of(str(named))), f"symlink target of {node.image}",
                           node.image, package=node.package, executed=node.executed)
            return
        moved = relocation(ctx.spec, node)
        if moved is None:
            return
        # plain strings until a node is made: this runs for every link of a moved tree
        text = os.readlink(host)
        meant = os.path.normpath(os.path.join(os.path.dirname(host), text))
        in_image = os.path.normpath(os.path.join(os.path.dirname(node.image),
                                                 moved_link(node, text, moved)))
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


def standard_resolvers(ctx: Context) -> tuple[Resolver, ...]:
    """Every kind of reference: folders, symlinks, ELF, scripts, Nix store paths."""
    return (folder_resolver, symlink_resolver, relocated_link_resolver(ctx), elf.ElfResolver(ctx),
            scripts.script_resolver(ctx), nix.NixResolver(ctx), runtime.RuntimeResolver(ctx))


def resolve(
    spec: Spec,
    units: list[Unit],
    resolvers: Iterable[Resolver] | None = None,
    root: Path | None = None,
) -> Closure:
    """Follow every reference from the roots, breadth first, each path once.

    ``root``: read the image's paths below this folder instead of the host's (a pinned
    build's unpacked packages); contents still come from where the spec says.
    """
    closure = Closure()
    ctx = Context(spec, closure, root=root)
    resolvers = standard_resolvers(ctx) if resolvers is None else tuple(resolvers)
    queue = deque(root_nodes(spec, units, ctx))
    # a path the spec makes a symlink is the spec's: the host's file there is not shipped
    spec_links = {host_spelling(s.symlink) for s in spec.symlinks}
    by_kind: dict[int, tuple[Resolver, ...]] = {}
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
            elif node.whole and old.package is not None and old.host == node.host \
                    and _is_dir(node):
                # a package's folder (dpkg lists only its own entries there) that a rule
                # wants with all it holds (entries already reached are skipped above)
                _follow(ctx, folder_resolver, replace(node, package=None), queue)
            continue
        if not _readable(ctx, node):
            continue
        closure.nodes[node.image] = node
        # the resolvers that can answer for this kind of node (its lstat, made by
        # _readable; all of them when there is none): a data file is asked of four, not seven
        kind = stat.S_IFMT(node.st.st_mode) if node.st is not None else -1
        asked = by_kind.get(kind)
        if asked is None:
            asked = by_kind[kind] = tuple(r for r in resolvers
                                          if kind in getattr(r, "kinds", (kind,)))
        for resolver in asked:  # _follow, inline: this runs for every node
            try:
                queue.extend(resolver(node))
            except Unreadable as e:
                ctx.missing(f"cannot read {e.path}: {e.strerror}", UNREADABLE_HINT)
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
        st = lstat_of(node)
    except FileNotFoundError:
        return True  # image.place names a path that vanished; not a permission matter
    except OSError as e:
        ctx.missing(f"cannot read {node.host}: {e.strerror}", UNREADABLE_HINT)
        return False
    if stat.S_ISREG(st.st_mode) and not _readable_by_bits(st) and not os.access(node.host, os.R_OK):
        ctx.missing(f"cannot read {node.host}: {os.strerror(errno.EACCES)}", UNREADABLE_HINT)
        return False
    return True


def _readable_by_bits(st: Lstat) -> bool:
    """Readable for sure, without asking the kernel (``access``, a path walk per file): the
    build runs as root (which reads any file of a local file system), or owner, group and
    others may all read it (and its lstat, just made, walked the same folders). Otherwise
    ``access`` decides (who the build is, its groups, ACLs)."""
    return _EUID == 0 or st.st_mode & 0o444 == 0o444


_EUID = os.geteuid()


IMAGE_LD_CACHE = PurePosixPath("/etc/ld.so.cache")


def _add_ld_cache(closure: Closure, spec: Spec) -> None:
    """Give the image the host's cache entries for the libraries it carries.

    Libraries the host finds through /etc/ld.so.conf.d live outside the
    loader's default folders; without a cache the image's loader would miss them.
    """
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
