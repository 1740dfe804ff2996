"""The squashfs writer: nodes in, an image out, in squashfs-tools-ng's fixed order.

Superblock placeholder, compressor options, data blocks and fragments
(streamed, compressed in parallel), then the inode and directory tables,
the fragment, export, id and xattr tables, and finally the real superblock.
Everything that could depend on the host (listing order, thread timing,
source times) is fixed, so the same nodes give the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import stat as stat_mod
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from portable_service.squashfs import format as fmt
from portable_service.squashfs.compressor import Compressor
from portable_service.squashfs.data import BlockProcessor, FileData
from portable_service.squashfs.directory import Listing, write_listing
from portable_service.squashfs.errors import InputError
from portable_service.squashfs.metadata import MetadataWriter, pack_block
from portable_service.squashfs.tables import IdTable, XattrTable, pack_table

TYPE_CHECKING = False  # typing is not imported at run time: see data.py
if TYPE_CHECKING:
    from typing import BinaryIO

Path_ = tuple[bytes, ...]  # an image path as its components; () is the root
MAX_SYMLINK = 4095
STORABLE_XATTRS = ("user.", "trusted.", "security.")


@dataclass(frozen=True)
class Node:
    """One path of the image. Files give ``size`` and ``opener``; hard links share ``link``.

    ``source``, when given, is the host path ``opener`` opens: the writer then reads a
    small file with one ``os.open`` and ``pread`` (no file object), and calls ``opener``
    only if that fails, so the error a user sees is still the opener's.
    """

    path: Path_
    kind: str  # 'dir', 'file' or 'symlink'
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    opener: Callable[[], BinaryIO] | None = field(default=None, compare=False)
    target: bytes = b""
    xattrs: tuple[tuple[str, bytes], ...] = ()
    link: object = None
    source: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class WriterOptions:
    compressor: Compressor
    block_size: int
    mkfs_time: int
    workers: int | None = None  # compression threads; default: one per CPU
    fragments: bool = True
    dedupe: bool = True
    inline: bool | None = None  # compress in the writing thread; None: when Compressor.fast


def write_image(nodes: Iterable[Node], out: BinaryIO, options: WriterOptions,
                progress: Callable[[int], None] | None = None) -> fmt.Superblock:
    """Write a whole image to ``out`` (a new file open for writing) and return its superblock."""
    tree = _Tree(nodes)
    comp = options.compressor
    record = comp.options_record()
    head = pack_block(record, comp, compress=False) if record else b""
    out.write(bytes(fmt.SUPERBLOCK_SIZE) + head)
    data, fragments = _write_data(tree, out, options, progress)
    meta = _Metadata(tree, data, comp)
    return _write_tables(out, options, meta, fragments, record is not None)


def _write_data(tree: _Tree, out: BinaryIO, options: WriterOptions,
                progress: Callable[[int], None] | None
                ) -> tuple[dict[object, FileData], list[tuple[int, int]]]:
    """File bytes in path order, duplicates and hard links stored once.

    A small file (most of a tree: :data:`IN_MEMORY` bytes or less) is read once, whole:
    its hash finds an earlier copy before anything is written, so duplicates cost one
    read and no compression. Larger files that share a size with another are hashed in
    a pass of their own first (:func:`_duplicates`), so memory stays bounded.
    """
    dups = _duplicates(tree) if options.dedupe else {}
    # a file whose size no other file has cannot be a duplicate: only shared sizes are hashed
    shared = _shared_sizes(tree) if options.dedupe else set()
    seen: dict[tuple[int, bytes], FileData] = {}  # (size, sha256) of small files stored
    data: dict[object, FileData] = {}
    bp = BlockProcessor(out, out.tell(), options.compressor, options.block_size,
                        options.workers, options.fragments, options.inline)
    try:
        for node in tree.preorder():
            key = tree.key(node)
            if node.kind != "file" or key in data:
                continue
            original = dups.get(key)
            if original is not None:
                data[key] = data[original]
                if progress:
                    progress(node.size)
                continue
            if 0 < node.size <= IN_MEMORY:
                whole = _read_whole(node, tree.name(node))
                digest = ((node.size, hashlib.sha256(whole).digest())
                          if node.size in shared else None)
                stored = seen.get(digest) if digest is not None else None
                if stored is None:
                    stored = bp.add_bytes(whole, tree.name(node), progress)
                    if digest is not None:
                        seen[digest] = stored
                elif progress:
                    progress(node.size)
                data[key] = stored
                continue
            data[key] = _add_file(bp, node, tree.name(node), progress)
        end = bp.finish()
        assert end == out.tell()
    except BaseException:
        bp.abort()
        raise
    return data, bp.fragment_table


# files up to this size are read whole, once (see _write_data)
IN_MEMORY = 1 << 20


def _shared_sizes(tree: _Tree) -> set[int]:
    """The sizes of small files that more than one file (inode) has."""
    once: set[int] = set()
    shared: set[int] = set()
    seen: set[object] = set()
    for node in tree.nodes.values():
        if node.kind != "file" or not 0 < node.size <= IN_MEMORY:
            continue
        key = tree.key(node)
        if key in seen:
            continue
        seen.add(key)
        if node.size in once:
            shared.add(node.size)
        else:
            once.add(node.size)
    return shared


def _read_whole(node: Node, name: str) -> bytes:
    """All of a small file's bytes, checked against the size it was listed with."""
    data = _read_source(node.source, node.size + 1) if node.source is not None else None
    if data is None:
        data = _read_opened(node, name)
    if len(data) > node.size:
        raise InputError(f"{name} grew while the image was written",
                         "build again when it is no longer being written to")
    if len(data) < node.size:
        raise InputError(f"{name} shrank while the image was written",
                         "build again when it is no longer being written to")
    return data


def _read_source(path: str, n: int) -> bytes | None:
    """Up to ``n`` bytes of a host file without a file object; None if it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # the opener tries again and says why it fails
    try:
        return _pread_upto(fd, n)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_opened(node: Node, name: str) -> bytes:
    assert node.opener is not None
    try:
        with node.opener() as f:
            return _read_upto(f, node.size + 1)
    except OSError as e:
        raise InputError(f"cannot read {getattr(e, 'filename', None) or name}: "
                         f"{e.strerror or e}", "check that it exists and is readable") from None


def _read_upto(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes from the start of ``f``: pread on a host file (no buffer copy)."""
    try:
        fd = f.fileno()
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        fd = None
    if fd is None:
        return f.read(n)
    return _pread_upto(fd, n)


def _pread_upto(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes from the start of ``fd``, fewer only at its end."""
    data = os.pread(fd, n, 0)
    while len(data) < n:
        more = os.pread(fd, n - len(data), len(data))
        if not more:
            break
        data += more
    return data


class _Metadata:
    """Inodes and directory listings, children before their directory (refs are then known)."""

    def __init__(self, tree: _Tree, data: dict[object, FileData], comp: Compressor) -> None:
        self.inodes, self.dirs = MetadataWriter(comp), MetadataWriter(comp)
        self.ids, self.xattrs = IdTable(), XattrTable(comp)
        self.numbers = tree.numbers()
        self.refs: dict[object, tuple[int, int]] = {}
        for node in tree.postorder():
            key = tree.key(node)
            if key not in self.refs:
                self.refs[key] = self.inodes.write(self._inode(tree, node, data))
        self.root = fmt.inode_ref(*self.refs[tree.key(tree.nodes[()])])

    def _inode(self, tree: _Tree, node: Node, data: dict[object, FileData]) -> bytes:
        key = tree.key(node)
        # the common header's fields after its type, which each kind puts first
        header = (node.mode & 0o7777, self.ids.index(node.uid), self.ids.index(node.gid),
                  node.mtime, self.numbers[key])
        xattr = self.xattrs.index(node.xattrs) if node.xattrs else fmt.NO_XATTR
        nlink = tree.link_counts.get(key, 1)
        if node.kind == "file":
            return _file_inode(header, data[key], nlink, xattr)
        if node.kind == "symlink":
            return _symlink_inode(header, node.target, nlink, xattr)
        children = tree.children(node.path)
        entries = []
        for child in children:
            block, offset = self.refs[tree.key(child)]
            entries.append(fmt.DirEntry(child.path[-1], block, offset,
                                        self.numbers[tree.key(child)], _basic(child.kind)))
        listing = write_listing(self.dirs, entries)
        nlink = 2 + sum(1 for c in children if c.kind == "dir")
        # the root's parent is one past the last inode, as mksquashfs has it
        parent = (self.numbers[tree.key(tree.nodes[node.path[:-1]])] if node.path
                  else len(self.numbers) + 1)
        return _dir_inode(header, listing, nlink, parent, xattr)


_Header = tuple[int, int, int, int, int]  # mode, uid index, gid index, mtime, inode number


def _dir_inode(header: _Header, listing: Listing, nlink: int, parent: int,
               xattr: int) -> bytes:
    if listing.index_count or xattr != fmt.NO_XATTR or listing.size > 0xFFFF:
        body = fmt.LDIR_BODY.pack(nlink, listing.size, listing.start_block, parent,
                                  listing.index_count, listing.offset, xattr)
        return _with_type(header, fmt.LDIR) + body + listing.index
    body = fmt.DIR_BODY.pack(listing.start_block, nlink, listing.size, listing.offset, parent)
    return _with_type(header, fmt.DIR) + body


def _file_inode(header: _Header, fd: FileData, nlink: int, xattr: int) -> bytes:
    blocks = struct.pack(f"<{len(fd.blocks)}I", *fd.blocks)
    if (fd.blocks_start > 0xFFFFFFFF or fd.size > 0xFFFFFFFF or nlink > 1
            or xattr != fmt.NO_XATTR or fd.sparse):
        body = fmt.LFILE_BODY.pack(fd.blocks_start, fd.size, fd.sparse, nlink, fd.fragment,
                                   fd.frag_offset, xattr)
        return _with_type(header, fmt.LFILE) + body + blocks
    body = fmt.FILE_BODY.pack(fd.blocks_start, fd.fragment, fd.frag_offset, fd.size)
    return _with_type(header, fmt.FILE) + body + blocks


def _symlink_inode(header: _Header, target: bytes, nlink: int, xattr: int) -> bytes:
    body = fmt.SYMLINK_BODY.pack(nlink, len(target)) + target
    if xattr != fmt.NO_XATTR:
        return _with_type(header, fmt.LSYMLINK) + body + fmt.U32.pack(xattr)
    return _with_type(header, fmt.SYMLINK) + body


def _write_tables(out: BinaryIO, options: WriterOptions, meta: _Metadata,
                  fragments: list[tuple[int, int]], has_options: bool) -> fmt.Superblock:
    """The metadata tables back to back after the data, then the superblock at the start."""
    comp = options.compressor
    inode_table = out.tell()
    out.write(meta.inodes.finish())
    directory_table = out.tell()
    out.write(meta.dirs.finish())
    frag_entries = b"".join(fmt.FRAGMENT_ENTRY.pack(s, w, 0) for s, w in fragments)
    blob, fragment_table = pack_table(frag_entries, out.tell(), comp)
    out.write(blob)
    by_number = sorted((meta.numbers[k], ref) for k, ref in meta.refs.items())
    export = b"".join(fmt.U64.pack(fmt.inode_ref(*ref)) for _, ref in by_number)
    blob, export_table = pack_table(export, out.tell(), comp)
    out.write(blob)
    blob, id_table = pack_table(meta.ids.pack(), out.tell(), comp)
    out.write(blob)
    xattr_table = fmt.NO_TABLE
    if meta.xattrs.count:
        blob, xattr_table = meta.xattrs.pack(out.tell(), comp)
        out.write(blob)
    bytes_used = out.tell()
    out.write(bytes(-bytes_used % fmt.DEVBLK_SIZE))

    flags = fmt.F_EXPORTABLE | (fmt.F_DUPLICATES if options.dedupe else 0)
    flags |= fmt.F_COMPRESSOR_OPTIONS if has_options else 0
    flags |= 0 if options.fragments else fmt.F_NO_FRAGMENTS
    sb = fmt.Superblock(
        inode_count=len(meta.numbers), mkfs_time=options.mkfs_time,
        block_size=options.block_size, fragment_count=len(fragments), compression_id=comp.id,
        block_log=options.block_size.bit_length() - 1, flags=flags, id_count=len(meta.ids.ids),
        version_major=4, version_minor=0, root_inode=meta.root, bytes_used=bytes_used,
        id_table=id_table, xattr_table=xattr_table, inode_table=inode_table,
        directory_table=directory_table, fragment_table=fragment_table,
        export_table=export_table,
    )
    out.seek(0)
    out.write(sb.pack())
    out.seek(0, os.SEEK_END)
    return sb


def _add_file(bp: BlockProcessor, node: Node, name: str,
              progress: Callable[[int], None] | None) -> FileData:
    assert node.opener is not None
    try:
        with node.opener() as f:
            return bp.add_file(f, node.size, name, progress)
    except OSError as e:
        raise InputError(f"cannot read {getattr(e, 'filename', None) or name}: "
                         f"{e.strerror or e}", "check that it exists and is readable") from None


def _with_type(header: _Header, inode_type: int) -> bytes:
    return _HEADER_PACK(inode_type, *header)


_HEADER_PACK = fmt.InodeHeader.FMT.pack


def _basic(kind: str) -> int:
    return {"dir": fmt.DIR, "file": fmt.FILE, "symlink": fmt.SYMLINK}[kind]


class _Tree:
    """The nodes checked and indexed: children sorted byte-wise, hard links counted."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes: dict[Path_, Node] = {}
        kids: dict[Path_, list[Node]] = {}
        self.link_counts: dict[object, int] = {}
        for node in nodes:
            _check(node)
            if node.path in self.nodes:
                raise InputError(f"{self.name(node)} is given twice")
            self.nodes[node.path] = node
            if node.path:
                kids.setdefault(node.path[:-1], []).append(node)
            if node.link is not None:
                self.link_counts[node.link] = self.link_counts.get(node.link, 0) + 1
        root = self.nodes.get(())
        if root is None or root.kind != "dir":
            raise InputError("the image has no root directory")
        for parent, children in kids.items():
            p = self.nodes.get(parent)
            if p is None or p.kind != "dir":
                raise InputError(f"{self.name(children[0])} has no parent directory")
            children.sort(key=lambda n: n.path[-1])
        self._kids = kids
        self._preorder: list[Node] | None = None

    def key(self, node: Node) -> object:
        return node.link if node.link is not None else node.path

    def children(self, path: Path_) -> list[Node]:
        return self._kids.get(path, [])

    def name(self, node: Node) -> str:
        return "/" + os.fsdecode(b"/".join(node.path))

    def preorder(self) -> list[Node]:
        """Every node, each folder before what it holds (worked out once: two passes use it)."""
        if self._preorder is None:
            order: list[Node] = []
            stack = [self.nodes[()]]
            while stack:
                node = stack.pop()
                order.append(node)
                if node.kind == "dir":
                    stack.extend(reversed(self.children(node.path)))
            self._preorder = order
        return self._preorder

    def postorder(self) -> Iterable[Node]:
        stack: list[tuple[Node, bool]] = [(self.nodes[()], False)]
        while stack:
            node, expanded = stack.pop()
            if expanded or node.kind != "dir":
                yield node
                continue
            stack.append((node, True))
            stack.extend((c, False) for c in reversed(self.children(node.path)))

    def numbers(self) -> dict[object, int]:
        """Inode numbers in the order inodes are written: from 1, the root last."""
        numbers: dict[object, int] = {}
        for node in self.postorder():
            numbers.setdefault(self.key(node), len(numbers) + 1)
        return numbers


def _check(node: Node) -> None:
    where = "/" + os.fsdecode(b"/".join(node.path))
    if node.kind not in ("dir", "file", "symlink"):
        raise InputError(f"{where} is a {node.kind}: device nodes, fifos and sockets "
                         "have no place in a portable image", "remove it from the input")
    # only the last name: every folder above is a node of its own, checked as such
    for part in node.path[-1:]:
        if not part or len(part) > 255 or b"/" in part or b"\0" in part or part in (b".", b".."):
            raise InputError(f"{where}: {part!r} is not a valid file name",
                             "names are 1 to 255 bytes without '/' or NUL")
    if node.kind == "symlink" and not 0 < len(node.target) <= MAX_SYMLINK:
        raise InputError(f"{where}: a symlink target must be 1 to {MAX_SYMLINK} bytes")
    if node.kind == "file" and (node.opener is None or node.size < 0):
        raise InputError(f"{where}: a file needs its size and contents")
    if not 0 <= node.uid <= 0xFFFFFFFF or not 0 <= node.gid <= 0xFFFFFFFF:
        raise InputError(f"{where}: owner {node.uid}:{node.gid} is out of range")


def _duplicates(tree: _Tree) -> dict[object, object]:
    """Large files whose bytes equal an earlier file's: {key: key of the first such file}.

    Only files over :data:`IN_MEMORY` that share a size with another are read here
    (hashed), so the common case of unique sizes costs nothing; smaller files are
    matched as they are written.
    """
    by_size: dict[int, list[Node]] = {}
    seen: set[object] = set()
    for node in tree.preorder():
        key = tree.key(node)
        if node.kind == "file" and node.size > IN_MEMORY and key not in seen:
            seen.add(key)
            by_size.setdefault(node.size, []).append(node)
    out: dict[object, object] = {}
    for nodes in by_size.values():
        if len(nodes) < 2:
            continue
        first: dict[bytes, object] = {}
        for node in nodes:
            assert node.opener is not None
            h = hashlib.sha256()
            try:
                with node.opener() as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            except OSError as e:
                raise InputError(f"cannot read {tree.name(node)}: {e.strerror or e}",
                                 "check that it exists and is readable") from None
            digest = h.digest()
            if digest in first:
                out[tree.key(node)] = first[digest]
            else:
                first[digest] = tree.key(node)
    return out


def _open_binary(path: str) -> BinaryIO:
    return open(path, "rb")


def nodes_from_directory(root: str | os.PathLike[str], *, mtime: int | None = None,
                         all_root: bool = True) -> list[Node]:
    """The nodes of a host directory, as mksquashfs would take it.

    Device nodes, fifos and sockets are refused. Hard links become shared
    inodes; extended attributes squashfs can store are kept. Paths are plain
    strings and each entry costs one lstat (and one listxattr): this walk is per entry.
    """
    nodes: list[Node] = []

    def node_of(path: str, parts: Path_) -> Node:
        st = os.lstat(path)
        mode = st.st_mode
        kind = ("dir" if stat_mod.S_ISDIR(mode) else "file" if stat_mod.S_ISREG(mode)
                else "symlink" if stat_mod.S_ISLNK(mode) else _odd_kind(mode))
        if kind not in ("dir", "file", "symlink"):
            raise InputError(f"{path} is a {kind}: device nodes, fifos and sockets have no "
                             "place in a portable image", "remove it from the input directory")
        uid, gid = (0, 0) if all_root else (st.st_uid, st.st_gid)
        when = int(st.st_mtime) if mtime is None else mtime
        xattrs = _host_xattrs(path)
        if kind == "file":
            link = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
            return Node(parts, kind, stat_mod.S_IMODE(mode), uid, gid, when, size=st.st_size,
                        opener=functools.partial(_open_binary, path), xattrs=xattrs, link=link,
                        source=path)
        if kind == "symlink":
            return Node(parts, kind, stat_mod.S_IMODE(mode), uid, gid, when,
                        target=os.fsencode(os.readlink(path)), xattrs=xattrs)
        return Node(parts, kind, stat_mod.S_IMODE(mode), uid, gid, when, xattrs=xattrs)

    stack: list[tuple[str, Path_]] = [(os.fspath(root), ())]
    while stack:
        path, parts = stack.pop()
        node = node_of(path, parts)
        nodes.append(node)
        if node.kind == "dir":
            with os.scandir(path) as it:
                names = sorted(os.fsencode(e.name) for e in it)
            stack.extend((os.path.join(path, os.fsdecode(n)), (*parts, n)) for n in names)
    return nodes


def _odd_kind(mode: int) -> str:
    if stat_mod.S_ISCHR(mode):
        return "character device"
    if stat_mod.S_ISBLK(mode):
        return "block device"
    if stat_mod.S_ISFIFO(mode):
        return "fifo"
    if stat_mod.S_ISSOCK(mode):
        return "socket"
    return "file of unknown type"


def _host_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for name in sorted(names):
        if name.startswith(STORABLE_XATTRS):
            try:
                out.append((name, os.getxattr(path, name, follow_symlinks=False)))
            except OSError:
                continue
    return tuple(out)
