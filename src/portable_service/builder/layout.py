"""The image tree of a build: the portable scaffold, the units, the symlinks and the closure."""

from __future__ import annotations

import json
import os
import posixpath
import stat
import weakref
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from portable_service.builder.closure import (
    UNREADABLE_HINT,
    Closure,
    Node,
    image_link,
    lstat_of,
    runtime,
)
from portable_service.builder.spec import Spec
from portable_service.builder.units import Unit, exec_programs, mount_points
from portable_service.errors import ClosureError, TreeError
from portable_service.fs import views
from portable_service.fs.tree import ImageTree, Kind
from portable_service.rules.osrelease import parse_os_release, quote_os_release
from portable_service.rules.portabled import (
    CLOSURE_RECORD_PATH,
    SCAFFOLD_DIRS,
    SCAFFOLD_FILES,
    UNIT_DIRS,
    is_portable_unit,
    prefix_matches,
)

P = PurePosixPath
STICKY_TMP = ("/tmp", "/var/tmp")
# xattrs that belong to the file rather than to the host's security policy
KEPT_XATTRS = ("security.capability",)


def host_os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    for candidate in (path, Path("/usr/lib/os-release")):
        try:
            return parse_os_release(candidate.read_text(encoding="utf-8"))
        except OSError:
            continue
    return {}


def os_release_fields(spec: Spec, host: dict[str, str] | None = None) -> dict[str, str]:
    host = host_os_release() if host is None else host
    fields: dict[str, str] = {}
    fields["ID"] = host.get("ID", "linux")
    if host.get("VERSION_ID"):
        fields["VERSION_ID"] = host["VERSION_ID"]
    # the files come from the host's distribution: portablectl shows it as the image's
    # "Operating System", unless the spec names another ID
    if host.get("PRETTY_NAME") and "ID" not in dict(spec.os_release):
        fields["PRETTY_NAME"] = host["PRETTY_NAME"]
    fields["PORTABLE_ID"] = spec.pname
    if spec.description:
        fields["PORTABLE_PRETTY_NAME"] = spec.description
    if spec.homepage:
        fields["HOME_URL"] = spec.homepage
    fields["IMAGE_ID"] = spec.pname
    fields["IMAGE_VERSION"] = spec.version
    fields["PORTABLE_PREFIXES"] = spec.pname
    fields.update(dict(spec.os_release))
    return fields


def render_os_release(fields: dict[str, str]) -> bytes:
    for key, value in fields.items():
        if "\n" in value:
            raise TreeError(f"os-release field {key} contains a line break", "use one line")
    return "".join(f"{k}={quote_os_release(v)}\n" for k, v in fields.items()).encode()


def scaffold(tree: ImageTree, spec: Spec) -> None:
    for d in SCAFFOLD_DIRS:
        tree.add_dir(P(d), 0o1777 if d in STICKY_TMP else 0o755, origin="scaffold")
    tree.add_file(P("/etc/machine-id"), data=b"", origin="scaffold")
    tree.add_file(P("/etc/resolv.conf"), data=b"", origin="scaffold")
    fields = os_release_fields(spec)
    if not fields.get("ID"):
        raise TreeError("os-release ID is empty: portabled refuses such an image",
                        "set os-release.ID to a distribution id, e.g. debian")
    tree.add_file(P("/etc/os-release"), data=render_os_release(fields), origin="scaffold")


# the image's own paths (portabled binds or reads them) and the kernel's file systems
_SCAFFOLD_PATHS = frozenset({*SCAFFOLD_FILES, "/etc/systemd/system"})
_KERNEL_DIRS = ("/proc", "/sys", "/dev")
# a kernel folder or anything below it (``within``), in one test per path
_OWN_PATHS = _SCAFFOLD_PATHS | set(_KERNEL_DIRS)
_BELOW_KERNEL_DIRS = tuple(d + "/" for d in _KERNEL_DIRS)


def is_scaffold_path(path: PurePosixPath) -> bool:
    text = str(path)  # as str: this is asked for every entry of the image
    return text in _OWN_PATHS or text.startswith(_BELOW_KERNEL_DIRS)


def check_placement(path: PurePosixPath, what: str) -> None:
    if is_scaffold_path(path):
        raise TreeError(f"{what} {path} would replace the image's own {path}",
                        "portabled needs that path as it is: choose another target")


def add_units(tree: ImageTree, units: list[Unit]) -> None:
    for unit in units:
        tree.add_file(unit.image_path, data=unit.text.encode(), origin=f"unit {unit.origin}")


def add_symlinks(tree: ImageTree, spec: Spec) -> None:
    for link in spec.symlinks:
        check_placement(link.symlink, "symlink")
        target = os.path.abspath(link.object)
        path = mirror_host_parents(tree, link.symlink, f"symlink {link.symlink}")
        existing = tree.get(path)
        if existing is not None and not (existing.kind is Kind.SYMLINK and existing.target == target):
            raise TreeError(
                f"symlink {link.symlink} conflicts with {existing.origin or 'the scaffold'}",
                "give each image path to one entry only",
            )
        tree.add_symlink(path, target, origin=f"symlink {link.symlink}")


def resolve_in(tree: ImageTree, path: PurePosixPath) -> PurePosixPath | None:
    """Where ``path`` leads inside the image (symlinks followed as systemd does), or None."""
    real = views.resolve(views.TreeFS(tree), str(path))
    return None if real is None else P(real)


def add_mount_points(tree: ImageTree, units: list[Unit]) -> None:
    """Create what systemd mounts over: a read-only image cannot grow them at start."""
    for unit in units:
        for mp in mount_points(unit):
            if resolve_in(tree, mp.path) is not None:
                continue
            parent = resolve_in(tree, mp.path.parent)
            path = (parent or mp.path.parent) / mp.path.name
            origin = f"mount point for {mp.directive}"
            try:
                if mp.is_file:
                    tree.add_file(path, data=b"", origin=origin)
                else:
                    tree.add_dir(path, origin=origin)
            except TreeError:
                continue  # a parent is a link or file: systemd follows it, nothing to create


def place(tree: ImageTree, node: Node, spec: Spec | None = None) -> PurePosixPath:
    """Put one closure node into the tree with its host metadata; returns where it went.

    With ``spec``, a symlink moved with ``{ source, target }`` gets the target it
    means in the image (:func:`portable_service.builder.closure.image_link`).
    """
    image = mirror_host_parents(tree, node.image, node.reason)
    check_placement(image, node.reason)
    try:
        st = lstat_of(node)
    except OSError as e:
        raise ClosureError(f"cannot read {node.host}: {e.strerror}", UNREADABLE_HINT) from None
    mode = stat.S_IMODE(st.st_mode)
    # everything in the image is owned by root: a set-id bit of another owner would turn
    # into root's, so it is dropped (a root-owned one stays, and verify warns about it)
    if st.st_uid != 0:
        mode &= ~stat.S_ISUID
    if st.st_gid != 0:
        mode &= ~stat.S_ISGID
    mode |= readable_by_others(mode, st.st_uid, st.st_gid)
    origin = node.reason if node.parent is None else f"{node.reason} (from {node.parent})"
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(node.host) if spec is None else image_link(spec, node)
        tree.add_symlink(image, target, origin=origin)
    elif stat.S_ISDIR(st.st_mode):
        tree.add_dir(image, mode, origin=origin)
    elif stat.S_ISREG(st.st_mode):
        # readable: the closure took only what it could read (walk._readable)
        tree.add_file(image, source=node.host, mode=mode, xattrs=_xattrs(node.host), origin=origin,
                      source_size=st.st_size)
    else:
        raise ClosureError(
            f"{node.host} is a device, fifo or socket: a portable image has no use for it",
            "leave it out of contents (or add it to exclude)",
        )
    return image


def readable_by_others(mode: int, uid: int, gid: int) -> int:
    """The read (and search) bits a file's service user must get in the image.

    Everything in the image is owned by root, and the service runs as a dynamic user
    (or one of the host's): a file only its package's user or group could read on the
    host (``/etc/redis`` is ``2770 redis:redis``) would be unreadable by the service. So the
    read and execute bits of a non-root owner or group are given to others too. Write bits
    are not: the image is read-only anyway.
    """
    extra = 0
    if uid != 0:
        extra |= (mode >> 6) & 0o5
    if gid != 0:
        extra |= (mode >> 3) & 0o5
    return extra


def mirror_host_parents(tree: ImageTree, path: PurePosixPath, why: str) -> PurePosixPath:
    """Where ``path`` lands when the host's folder symlinks above it are kept as links.

    On merged-/usr hosts /bin, /lib, /lib64 and /sbin are links into /usr; the
    image gets the same links, so every absolute path that works on the host
    works in the image, whichever spelling pulled a file in.
    """
    text = str(path)
    folder, _, name = text.rpartition("/")
    real = _host_folder(tree, folder or "/", why)
    if real == (folder or "/"):
        return path
    return P(real) / name


# per tree: a folder's path -> where it lands with the host's folder links above it
# kept. Every entry of a folder asks the same question; the links it adds are in the
# tree after the first answer, so the rest need not ask the host again.
_HOST_FOLDERS: weakref.WeakKeyDictionary[ImageTree, dict[str, str]] = weakref.WeakKeyDictionary()


def _host_folder(tree: ImageTree, folder: str, why: str) -> str:
    memo = _HOST_FOLDERS.setdefault(tree, {"/": "/"})
    real = memo.get(folder)
    if real is not None:
        return real
    parent, _, part = folder.rpartition("/")
    candidate = posixpath.join(_host_folder(tree, parent or "/", why), part)
    hops = 0
    while _is_symlink(candidate):
        hops += 1
        if hops > 40:
            raise ClosureError(f"symlink loop at {candidate}", "fix the host's symlinks")
        target = os.readlink(candidate)
        tree.add_symlink(P(candidate), target, origin=f"host folder link (for {why})")
        candidate = os.path.normpath(posixpath.join(posixpath.dirname(candidate), target))
    memo[folder] = candidate
    return candidate


def _is_symlink(path: str) -> bool:
    """``Path.is_symlink``: a path the build cannot look at is no link."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


def _xattrs(path: Path | str) -> tuple[tuple[str, bytes], ...]:
    try:  # one listing, empty for most files, instead of an ENODATA error per kept name
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for name in KEPT_XATTRS:
        if name in names:
            try:
                out.append((name, os.getxattr(path, name, follow_symlinks=False)))
            except OSError:
                continue
    return tuple(out)


def check_not_a_unit(path: PurePosixPath, node: Node, pname: str) -> None:
    """Units enter the image only through ``units``, where they are checked and merged:
    portabled would attach any other unit file of the image that matches the prefix."""
    if node.package is not None:
        return  # packages' own units are left out with the package closure
    folder, _, name = str(path).rpartition("/")  # as str: asked of every entry
    folder = folder or "/"
    if folder in UNIT_DIRS and is_portable_unit(name) and prefix_matches(name, pname):
        raise TreeError(f"{node.reason} puts the unit file {path} into the image, where "
                        "portabled would attach it unchecked",
                        "name it in units instead of contents, or exclude it")


def link_program_parents(tree: ImageTree, units: list[Unit]) -> None:
    """The host's folder links above each unit program (/bin -> usr/bin), also when the
    program itself came in by another spelling (contents = ["/usr/bin/true"])."""
    for unit in units:
        for program, directive in exec_programs(unit):
            if program.startswith("/") and "%" not in program and "$" not in program:
                mirror_host_parents(tree, P(program), f"program of {directive}")


def assemble(spec: Spec, units: list[Unit], closure: Closure) -> ImageTree:
    tree = ImageTree()
    scaffold(tree, spec)
    add_units(tree, runtime.adapt_units(units, closure))  # services reach the user database
    add_symlinks(tree, spec)
    for node in closure:
        check_not_a_unit(place(tree, node, spec), node, spec.pname)
    link_program_parents(tree, units)
    for path, data in sorted(closure.generated.items()):
        tree.add_file(mirror_host_parents(tree, path, "generated"), data=data,
                      origin=f"generated {path}")
    add_mount_points(tree, units)
    add_closure_record(tree, closure, units)
    return tree


# Read by `inspect` and `size`: the roots of the
# closure and, for every other path, the path that pulled it in, as placed in the image.
CLOSURE_RECORD = P(CLOSURE_RECORD_PATH)


def add_closure_record(tree: ImageTree, closure: Closure, units: Sequence[Unit] = ()) -> None:
    real_folder = _FolderResolver(tree)
    # a folder is the parent of each of its entries: its answer is looked up, not made again
    memo: dict[PurePosixPath, str] = {}

    def placed(path: PurePosixPath) -> str:
        got = memo.get(path)
        if got is not None:
            return got
        folder, _, name = str(path).rpartition("/")
        folder = folder or "/"
        got = memo[path] = posixpath.join(real_folder(folder) or folder, name)
        return got

    roots = [{"path": placed(n.image), "reason": n.reason} for n in closure if n.parent is None]
    parents = {placed(n.image): placed(n.parent) for n in closure if n.parent is not None}
    # "units": the unit files the build was given; verify reports any other unit
    # portabled would attach (a package's own units, say)
    declared = sorted(u.name for u in units if "/" not in u.name)
    record = {"format": "portable-service closure 1", "roots": roots, "parents": parents,
              "units": declared}
    data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    tree.add_file(CLOSURE_RECORD, data=data, origin="closure record")


class _FolderResolver:
    """Where a folder path leads in the tree (:func:`resolve_in`), one folder at a time.

    Every entry of a folder asks the same, and a folder's answer is its parent's answer
    plus one step: only a step onto a symlink needs the full resolution. A deep tree
    (a virtualenv) is then not walked from the root once per folder.
    """

    def __init__(self, tree: ImageTree) -> None:
        self.tree = tree
        self.memo: dict[str, str | None] = {"/": "/"}

    def __call__(self, folder: str) -> str | None:
        pending = []
        while folder not in self.memo:  # up to the nearest folder already answered
            pending.append(folder)
            folder = folder.rpartition("/")[0] or "/"
        real = self.memo[folder]
        for path in reversed(pending):
            if real is not None:
                step = ("" if real == "/" else real) + "/" + path.rpartition("/")[2]
                entry = self.tree.get(P(step))
                if entry is None:
                    real = None  # nothing there: resolve_in says so too
                elif entry.kind is Kind.SYMLINK:
                    found = resolve_in(self.tree, P(step))
                    real = None if found is None else str(found)
                else:
                    real = step
            self.memo[path] = real
        return real
