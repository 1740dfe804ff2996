"""A squashfs 4.0 reader: list, stat, read files and links, xattrs.

It reads images made by mksquashfs as well as by our writer, and treats
every image as hostile: offsets are checked against the image and its
tables, counts and sizes against sane limits, every metadata read moves
forward, and a directory met twice while walking is reported as a cycle.
Any problem becomes one :class:`~portable_service.squashfs.errors.SquashfsError`.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import functools
import io
import itertools
import operator
import os
import stat as stat_mod
import struct
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from portable_service.squashfs import compressor as comp
from portable_service.squashfs import format as fmt
from portable_service.squashfs.errors import (
    CorruptImageError,
    NotFoundError,
    OutOfBoundsError,
    SquashfsError,
    UnsupportedError,
)
from portable_service.squashfs.format import Superblock
from portable_service.squashfs.metadata import MetadataReader

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["SquashfsImage", "Stat", "Superblock"]

_S = TypeVar("_S")

MAX_LISTING = 8 << 20  # bytes of one directory listing (about 200,000 names)
MAX_CACHED_ENTRIES = 1 << 20  # directory entries kept decoded, over all listings
MAX_BLOCK_LIST = 4 << 20  # data blocks of one file (4 TiB at 1 MiB blocks, 16 GiB at 4 KiB)
MAX_SYMLINK = 64 << 10
MAX_XATTR_VALUE = 16 << 20
MAX_XATTR_COUNT = 65536
MAX_READ = 1 << 30  # read() returns bytes; larger files are for open()
MAX_LINKS = 40  # symlinks followed in one path lookup
MAX_DEPTH = 4096
DATA_CACHE_BYTES = 16 << 20  # decoded data blocks kept per image
LOOKUP_CACHE = 1024  # resolved paths kept per image (verify reads a file in many chunks)
READ_AHEAD_BYTES = 32 << 20  # decoded blocks in flight while streaming a file

# Header and body of the common inode types in one unpack: a walk decodes tens of
# thousands of them, and one struct call per inode is most of its cost.
_HEAD = "<HHHHII"  # type, mode, uid index, gid index, mtime, inode number
_DIR_INODE = struct.Struct(_HEAD + fmt.DIR_BODY.format[1:])
_LDIR_INODE = struct.Struct(_HEAD + fmt.LDIR_BODY.format[1:])
_FILE_INODE = struct.Struct(_HEAD + fmt.FILE_BODY.format[1:])
_LFILE_INODE = struct.Struct(_HEAD + fmt.LFILE_BODY.format[1:])
_SYMLINK_INODE = struct.Struct(_HEAD + fmt.SYMLINK_BODY.format[1:])
_KIND = {t: fmt.kind_of(t) for t in range(1, 15)}

# A directory listing as the reader keeps it: (name, inode reference, basic type),
# sorted by name, so bisect finds a name and tuples cost less than records.
ListEntry = tuple[bytes, int, int]


@dataclass(frozen=True)
class Stat:
    kind: str  # 'dir', 'file', 'symlink', 'chardev', 'blockdev', 'fifo', 'socket'
    mode: int  # permission bits (0o7777)
    uid: int
    gid: int
    size: int
    mtime: int
    inode: int
    nlink: int
    target: str | None = None

    @property
    def st_mode(self) -> int:
        """The full mode with the file type bits, as os.stat gives it."""
        return fmt.S_IFMT[self.kind] | self.mode

    def filemode(self) -> str:
        return stat_mod.filemode(self.st_mode)


@dataclass
class Inode:
    """A decoded inode; which fields mean something depends on ``kind``."""

    ref: int
    type: int
    mode: int
    uid: int
    gid: int
    mtime: int
    number: int
    nlink: int = 1
    size: int = 0
    xattr: int = fmt.NO_XATTR
    # directories
    dir_block: int = 0
    dir_offset: int = 0
    parent: int = 0
    index_count: int = 0
    # files
    blocks_start: int = 0
    fragment: int = fmt.NO_FRAGMENT
    frag_offset: int = 0
    sparse: int = 0
    blocks_at: tuple[int, int] = (0, 0)  # where the block size list starts in the inode table
    # symlinks and devices
    target: bytes = b""
    device: int = 0
    _blocks: array.array[int] | None = field(default=None, repr=False)
    _block_starts: array.array[int] | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return fmt.kind_of(self.type)


class SquashfsImage:
    """An open squashfs image. Paths are absolute image paths such as ``/etc/os-release``."""

    def __init__(self, path: str | os.PathLike[str], offset: int = 0,
                 length: int | None = None) -> None:
        """``offset`` and ``length`` pick a file system inside a larger file (a disk
        image's partition)."""
        self.path = os.fspath(path)
        self._offset = offset
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise NotFoundError(f"cannot open image {self.path}: {e.strerror}",
                                "check the path") from None
        try:
            self._size = os.fstat(self._fd).st_size - offset
            if length is not None:
                self._size = min(self._size, length)
            self._setup()
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    # -- life cycle

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SquashfsImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- raw access

    def _read_at(self, pos: int, size: int) -> bytes:
        if pos < 0 or size < 0 or pos + size > self._limit:
            raise OutOfBoundsError(f"read of {size} bytes at {pos} is beyond the image "
                                   f"({self._limit} bytes)")
        if self._fd < 0:
            raise UnsupportedError("the image is closed")
        data = os.pread(self._fd, size, self._offset + pos)
        if len(data) != size:
            raise OutOfBoundsError(f"the image is truncated at {pos + len(data)}")
        return data

    def _setup(self) -> None:
        self._limit = self._size
        sb = self.superblock = Superblock.parse(self._read_at(0, fmt.SUPERBLOCK_SIZE)
                                                if self._size >= fmt.SUPERBLOCK_SIZE else b"")
        if sb.bytes_used > self._size:
            raise OutOfBoundsError(f"the image is truncated: it should have {sb.bytes_used} "
                                   f"bytes, the file has {self._size}")
        self._limit = sb.bytes_used
        for name in ("inode_table", "directory_table", "id_table"):
            if not fmt.SUPERBLOCK_SIZE <= getattr(sb, name) < sb.bytes_used:
                raise OutOfBoundsError(f"superblock: {name} at {getattr(sb, name)} is outside "
                                       "the image")
        if not sb.inode_table < sb.directory_table:
            raise CorruptImageError("superblock: the inode table does not precede directories")
        record = None
        if sb.flags & fmt.F_COMPRESSOR_OPTIONS:
            # the options record is one metadata block right after the superblock
            opts = MetadataReader(self._read_at, comp.Compressor("gzip", sb.block_size),
                                  fmt.SUPERBLOCK_SIZE, sb.inode_table, "compressor options")
            header = self._read_at(fmt.SUPERBLOCK_SIZE, 2)
            if not fmt.U16.unpack(header)[0] & fmt.METADATA_UNCOMPRESSED:
                raise UnsupportedError("compressed compressor options are not supported")
            record, _ = opts.block(fmt.SUPERBLOCK_SIZE)
        self.compressor = comp.from_image(sb.compression_id, record, sb.block_size)
        # two images whose compressors agree store equal blocks as equal bytes
        self.codec = (sb.compression_id, record)
        self._inodes = MetadataReader(self._read_at, self.compressor, sb.inode_table,
                                      sb.directory_table, "inode table")
        self._dirs = MetadataReader(self._read_at, self.compressor, sb.directory_table,
                                    sb.bytes_used, "directory table")
        self._tables = MetadataReader(self._read_at, self.compressor, fmt.SUPERBLOCK_SIZE,
                                      sb.bytes_used, "lookup tables")
        self._ids = self._read_ids()
        self._listings: OrderedDict[int, list[ListEntry]] = OrderedDict()
        self._lookups: OrderedDict[tuple[str, bool], Inode] = OrderedDict()
        self._cached_entries = 0
        self._frag_cache: OrderedDict[int, bytes] = OrderedDict()
        self._frag_ahead: dict[int, Future[bytes]] = {}  # the next block, being decoded
        self._frag_last = -2
        self._data_cache: OrderedDict[int, bytes] = OrderedDict()
        self._xattr_start = 0
        self._xattr_count = 0
        if sb.xattr_table != fmt.NO_TABLE:
            if not sb.xattr_table + fmt.XATTR_ID_TABLE.size <= sb.bytes_used:
                raise OutOfBoundsError("superblock: the xattr table is outside the image")
            kv, count, _ = fmt.XATTR_ID_TABLE.unpack(
                self._read_at(sb.xattr_table, fmt.XATTR_ID_TABLE.size))
            if not fmt.SUPERBLOCK_SIZE <= kv <= sb.xattr_table:
                raise OutOfBoundsError("xattr table: key/value start is outside the image")
            self._xattr_start, self._xattr_count = kv, count
        self.root = self._inode(sb.root_inode)
        if self.root.kind != "dir":
            raise CorruptImageError("the root inode is not a directory")

    def _table_entry(self, index_start: int, count: int, entry_size: int, i: int,
                     what: str) -> bytes:
        """Entry ``i`` of a table stored as metadata blocks behind an index of u64 pointers."""
        if not 0 <= i < count:
            raise OutOfBoundsError(f"{what}: entry {i} of {count}")
        per_block = fmt.METADATA_SIZE // entry_size
        n_blocks = -(-count // per_block)
        if index_start + 8 * n_blocks > self._limit:
            raise OutOfBoundsError(f"{what}: the index is beyond the image")
        (block,) = fmt.U64.unpack(self._read_at(index_start + 8 * (i // per_block), 8))
        if block >= index_start:
            raise OutOfBoundsError(f"{what}: a block pointer points past the index")
        data, _, _ = self._tables.read(block, (i % per_block) * entry_size, entry_size)
        return data

    def _read_ids(self) -> list[int]:
        sb = self.superblock
        if sb.id_count == 0:
            raise CorruptImageError("the image has no id table entries")
        return [fmt.U32.unpack(self._table_entry(sb.id_table, sb.id_count, 4, i, "id table"))[0]
                for i in range(sb.id_count)]

    def _id(self, idx: int) -> int:
        if idx >= len(self._ids):
            raise OutOfBoundsError(f"an inode names id {idx} of {len(self._ids)}")
        return self._ids[idx]

    # -- inodes

    def _inode(self, ref: int) -> Inode:
        block, offset = fmt.split_ref(ref)
        if offset >= fmt.METADATA_SIZE:
            raise OutOfBoundsError(f"inode reference {ref:#x} has offset {offset}")
        pos = self.superblock.inode_table + block
        raw, pos, offset = self._inodes.read(pos, offset, fmt.InodeHeader.FMT.size)
        h = fmt.InodeHeader.parse(raw)
        if not 1 <= h.type <= 14:
            raise CorruptImageError(f"inode {h.inode_number}: unknown type {h.type}")
        if not 1 <= h.inode_number <= self.superblock.inode_count:
            raise CorruptImageError(f"inode number {h.inode_number} is out of range")
        ino = Inode(ref, h.type, h.mode & 0o7777, self._id(h.uid_idx), self._id(h.gid_idx),
                    h.mtime, h.inode_number)

        def take(s: struct.Struct) -> tuple[int, ...]:
            nonlocal pos, offset
            data, pos, offset = self._inodes.read(pos, offset, s.size)
            return s.unpack(data)

        t = h.type
        if t == fmt.DIR:
            ino.dir_block, ino.nlink, ino.size, ino.dir_offset, ino.parent = take(fmt.DIR_BODY)
        elif t == fmt.LDIR:
            (ino.nlink, ino.size, ino.dir_block, ino.parent, ino.index_count, ino.dir_offset,
             ino.xattr) = take(fmt.LDIR_BODY)
        elif t == fmt.FILE:
            ino.blocks_start, ino.fragment, ino.frag_offset, ino.size = take(fmt.FILE_BODY)
            ino.blocks_at = (pos, offset)
        elif t == fmt.LFILE:
            (ino.blocks_start, ino.size, ino.sparse, ino.nlink, ino.fragment, ino.frag_offset,
             ino.xattr) = take(fmt.LFILE_BODY)
            ino.blocks_at = (pos, offset)
        elif t in (fmt.SYMLINK, fmt.LSYMLINK):
            ino.nlink, n = take(fmt.SYMLINK_BODY)
            if n > MAX_SYMLINK:
                raise OutOfBoundsError(f"inode {h.inode_number}: symlink target of {n} bytes")
            ino.target, pos, offset = self._inodes.read(pos, offset, n)
            ino.size = n
            if t == fmt.LSYMLINK:
                (ino.xattr,) = take(fmt.U32)
        elif t in (fmt.BLKDEV, fmt.CHRDEV):
            ino.nlink, ino.device = take(fmt.DEV_BODY)
        elif t in (fmt.LBLKDEV, fmt.LCHRDEV):
            ino.nlink, ino.device, ino.xattr = take(fmt.LDEV_BODY)
        elif t in (fmt.FIFO, fmt.SOCKET):
            (ino.nlink,) = take(fmt.IPC_BODY)
        else:
            ino.nlink, ino.xattr = take(fmt.LIPC_BODY)
        if ino.kind == "dir" and ino.size < 3:
            raise CorruptImageError(f"directory inode {ino.number} has size {ino.size}")
        return ino

    def _stat(self, ino: Inode) -> Stat:
        return Stat(*self._fields(ino))

    @staticmethod
    def _fields(ino: Inode) -> tuple[str, int, int, int, int, int, int, int, str | None]:
        """The positional fields of :class:`Stat` for an inode."""
        target = os.fsdecode(ino.target) if ino.kind == "symlink" else None
        return (ino.kind, ino.mode, ino.uid, ino.gid, ino.size, ino.mtime, ino.number,
                ino.nlink, target)

    # -- directories

    def _listing(self, ino: Inode) -> list[ListEntry]:
        return self._listing_at(ino.ref, ino.number, ino.dir_block, ino.dir_offset, ino.size)

    def _listing_at(self, ref: int, number: int, dir_block: int, dir_offset: int,
                    dir_size: int) -> list[ListEntry]:
        cached = self._listings.get(ref)
        if cached is not None:
            self._listings.move_to_end(ref)
            return cached
        size = dir_size - 3  # the size counts "." and ".." that are not stored
        if size > MAX_LISTING:
            raise OutOfBoundsError(f"directory inode {number}: listing of {size} bytes")
        if dir_offset >= fmt.METADATA_SIZE:
            raise OutOfBoundsError(f"directory inode {number}: bad offset")
        data = b""
        if size > 0:
            data, _, _ = self._dirs.read(self.superblock.directory_table + dir_block,
                                         dir_offset, size)
        entries = parse_listing(data)
        self._listings[ref] = entries
        self._cached_entries += len(entries)
        while len(self._listings) > 1 and (len(self._listings) > 64
                                           or self._cached_entries > MAX_CACHED_ENTRIES):
            _, dropped = self._listings.popitem(last=False)
            self._cached_entries -= len(dropped)
        return entries

    def _entries(self, ino: Inode) -> list[ListEntry]:
        if ino.kind != "dir":
            raise NotFoundError("not a directory")
        return self._listing(ino)

    def _lookup(self, path: str, follow_last: bool = False) -> Inode:
        """Resolve an absolute image path; symlinks on the way are followed inside the image.

        Results are kept: readers such as verify's ELF checks read one file in many
        chunks, and each chunk would otherwise resolve every component again.
        """
        key = (path, follow_last)
        hit = self._lookups.get(key)
        if hit is not None:
            return hit
        ino = self._resolve(path, follow_last)
        self._lookups[key] = ino
        if len(self._lookups) > LOOKUP_CACHE:
            self._lookups.popitem(last=False)
        return ino

    def _resolve(self, path: str, follow_last: bool) -> Inode:
        if not isinstance(path, str) or not path.startswith("/"):
            raise NotFoundError(f"{path!r} is not an absolute image path", "start it with /")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        stack = [self.root]
        links = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            cur = stack[-1]
            if cur.kind != "dir":
                raise NotFoundError(f"{path}: a component is not a directory")
            name = os.fsencode(part)
            listing = self._listing(cur)  # sorted by name: checked when parsed
            at = bisect.bisect_left(listing, (name,))
            if at == len(listing) or listing[at][0] != name:
                raise NotFoundError(f"{path} is not in the image")
            child = self._inode(listing[at][1])
            if child.kind == "symlink" and (parts or follow_last):
                links += 1
                if links > MAX_LINKS:
                    raise NotFoundError(f"{path}: too many levels of symbolic links")
                target = os.fsdecode(child.target)
                new = [p for p in target.split("/") if p not in ("", ".")]
                if target.startswith("/"):
                    del stack[1:]
                parts = new + parts
                continue
            stack.append(child)
            if len(stack) > MAX_DEPTH:
                raise OutOfBoundsError(f"{path}: nested too deeply")
        return stack[-1]

    # -- the public API

    def stat(self, path: str) -> Stat:
        """The entry at ``path``; a symlink in the last component is not followed."""
        return self._stat(self._lookup(path))

    def listdir(self, path: str) -> list[str]:
        ino = self._lookup(path, follow_last=True)
        if ino.kind != "dir":
            raise NotFoundError(f"{path} is not a directory")
        return [os.fsdecode(e[0]) for e in self._listing(ino)]

    def walk(self) -> Iterator[tuple[str, Stat]]:
        """Every entry, ``/`` first, depth-first in sorted order."""
        return self.walk_as(Stat)

    def walk_as(self, make: Callable[..., _S]) -> Iterator[tuple[str, _S]]:
        """:meth:`walk`, where ``make`` builds each entry's record from the positional fields of :class:`Stat`
        (kind, mode, uid, gid, size, mtime, inode, nlink, target), so a caller with a
        record of its own gets it without a second object per entry.
        """
        root = self.root
        yield "/", make(*self._fields(root))
        seen = {root.ref}
        listings = {(root.dir_block, root.dir_offset): "/"} if root.size > 3 else {}
        stack: list[tuple[str, Iterator[ListEntry]]] = [("", iter(self._listing(root)))]
        # the loop below is the hot path of verify, diff, size and inspect: names are local
        table = self.superblock.inode_table
        block = self._inodes.block
        ids, n_ids, n_inodes = self._ids, len(self._ids), self.superblock.inode_count
        kinds = _KIND
        encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
        here, data, end = -1, b"", 0  # the inode block in hand: siblings share one
        while stack:
            prefix, it = stack[-1]
            for name, ref, etype in it:
                if ref >> 16 != here:
                    here = ref >> 16
                    data = block(table + here)[0]
                    end = len(data)
                off = ref & 0xFFFF
                t = data[off] | data[off + 1] << 8 if off + 2 <= end else 0
                target = None
                nlink = 1
                if t == fmt.FILE and off + 32 <= end:
                    (_, mode, uidx, gidx, mtime, number, _, _, _,
                     size) = _FILE_INODE.unpack_from(data, off)
                    d = None
                elif t == fmt.DIR and off + 32 <= end:
                    (_, mode, uidx, gidx, mtime, number, dblock, nlink, size, doff,
                     _) = _DIR_INODE.unpack_from(data, off)
                    d = (dblock, doff, size)
                elif t == fmt.SYMLINK and off + 24 <= end:
                    _, mode, uidx, gidx, mtime, number, nlink, size = _SYMLINK_INODE.unpack_from(
                        data, off)
                    if size > MAX_SYMLINK or off + 24 + size > end:
                        t = 0  # too long, or continued in the next block: the careful path
                    else:
                        target = data[off + 24: off + 24 + size].decode(encoding, errors)
                    d = None
                elif t == fmt.LFILE and off + 56 <= end:
                    (_, mode, uidx, gidx, mtime, number, _, size, _, nlink, _, _,
                     _) = _LFILE_INODE.unpack_from(data, off)
                    d = None
                elif t == fmt.LDIR and off + 40 <= end:
                    (_, mode, uidx, gidx, mtime, number, nlink, size, dblock, _, _, doff,
                     _) = _LDIR_INODE.unpack_from(data, off)
                    d = (dblock, doff, size)
                else:
                    t = 0
                if t == 0:  # other types, or an inode across two blocks
                    ino = self._inode(ref)
                    t = ino.type
                    kind, mode, uid, gid, size, mtime, number, nlink, target = self._fields(ino)
                    d = (ino.dir_block, ino.dir_offset, ino.size) if kind == "dir" else None
                else:
                    if not 1 <= number <= n_inodes:
                        raise CorruptImageError(f"inode number {number} is out of range")
                    if uidx >= n_ids or gidx >= n_ids:
                        raise OutOfBoundsError(f"an inode names id {max(uidx, gidx)} of {n_ids}")
                    uid, gid, mode = ids[uidx], ids[gidx], mode & 0o7777
                    kind = kinds[t]
                    if d is not None and size < 3:
                        raise CorruptImageError(f"directory inode {number} has size {size}")
                path = f"{prefix}/{name.decode(encoding, errors)}"  # os.fsdecode, inlined
                if (t - 7 if t > 7 else t) != etype:
                    raise CorruptImageError(f"{path}: the listing and the inode disagree on "
                                            "its type")
                yield path, make(kind, mode, uid, gid, size, mtime, number, nlink, target)
                if d is not None:
                    if ref in seen:
                        raise CorruptImageError(f"{path}: directory cycle")
                    seen.add(ref)
                    # a writer stores each listing once; directories sharing one multiply the
                    # work of a walk without growing the image (a "directory bomb")
                    where = d[:2]
                    if d[2] > 3:  # an empty one stores nothing: it may point anywhere
                        if where in listings:
                            raise CorruptImageError(f"{path}: shares its listing with "
                                                    f"{listings[where]}")
                        listings[where] = path
                    if len(stack) >= MAX_DEPTH:
                        raise OutOfBoundsError(f"{path}: nested too deeply")
                    stack.append((path, iter(self._listing_at(ref, number, *d))))
                    break  # go down; this folder's iterator resumes after it
            else:
                stack.pop()

    def readlink(self, path: str) -> str:
        ino = self._lookup(path)
        if ino.kind != "symlink":
            raise NotFoundError(f"{path} is not a symlink")
        return os.fsdecode(ino.target)

    def open(self, path: str) -> BinaryIO:
        ino = self._lookup(path, follow_last=True)
        if ino.kind != "file":
            raise NotFoundError(f"{path} is not a regular file")
        return io.BufferedReader(FileReader(self, ino), buffer_size=self.superblock.block_size)

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        ino = self._lookup(path, follow_last=True)
        if ino.kind != "file":
            raise NotFoundError(f"{path} is not a regular file")
        offset = max(0, min(offset, ino.size))
        size = ino.size - offset if size is None else max(0, min(size, ino.size - offset))
        if size > MAX_READ:
            raise OutOfBoundsError(f"{path}: reading {size} bytes at once",
                                   "use open() to stream it")
        return self._read_range(ino, offset, size)

    def xattrs(self, path: str) -> dict[str, bytes]:
        return self._xattrs(self._lookup(path))

    # -- file data

    def stored_blocks(self, path: str) -> Iterator[StoredBlock]:
        """A file's data block by block as stored: holes without reading, the rest raw.

        Lets a comparison skip holes and equal stored bytes without decompressing; the
        tail kept in a fragment comes decoded.
        """
        ino = self._lookup(path)
        if ino.kind != "file":
            raise NotFoundError(f"{path} is not a regular file")
        bs = self.superblock.block_size
        blocks = self._block_list(ino)
        starts = self._starts(ino)
        for i, word in enumerate(blocks):
            length = min(bs, ino.size - i * bs)
            size = word & (fmt.BLOCK_UNCOMPRESSED - 1)
            if size == 0:
                yield StoredBlock(length, None, functools.partial(bytes, length))
            else:
                raw = word.to_bytes(4, "little") + self._read_at(starts[i], size)
                yield StoredBlock(length, raw, functools.partial(self._block, ino, i, starts))
        tail = ino.size - len(blocks) * bs
        if tail > 0:
            data = self._fragment_tail(ino, tail)
            yield StoredBlock(tail, b"T" + data, _constant(data))

    def _block_list(self, ino: Inode) -> array.array[int]:
        if ino._blocks is not None:
            return ino._blocks
        bs = self.superblock.block_size
        has_frag = ino.fragment != fmt.NO_FRAGMENT
        n = ino.size // bs if has_frag else -(-ino.size // bs)
        if n > MAX_BLOCK_LIST:
            raise OutOfBoundsError(f"inode {ino.number}: {n} data blocks")
        pos, offset = ino.blocks_at
        raw, _, _ = self._inodes.read(pos, offset, 4 * n)
        blocks = array.array("I", raw)  # 4 bytes an entry, not a Python int each
        if sys.byteorder != "little":
            blocks.byteswap()
        end = ino.blocks_start + sum(b & (fmt.BLOCK_UNCOMPRESSED - 1) for b in blocks)
        if ino.blocks_start > self._limit or end > self._limit:
            raise OutOfBoundsError(f"inode {ino.number}: data beyond the image")
        ino._blocks = blocks
        return blocks

    def _block(self, ino: Inode, i: int, starts: array.array[int]) -> bytes:
        """Data block ``i`` of a file, decoded to its full length."""
        if i >= len(starts) or not self._block_list(ino)[i] & (fmt.BLOCK_UNCOMPRESSED - 1):
            return self._decode(ino, i, starts)  # the fragment tail (cached) or a hole
        cached = self._data_cache.get(starts[i])
        if cached is not None and len(cached) == min(self.superblock.block_size,
                                                     ino.size - i * self.superblock.block_size):
            self._data_cache.move_to_end(starts[i])
            return cached
        data = self._decode(ino, i, starts)
        # readers such as ELF parsers jump back and forth: keep a few decoded blocks
        self._data_cache[starts[i]] = data
        while len(self._data_cache) > max(2, DATA_CACHE_BYTES // self.superblock.block_size):
            self._data_cache.popitem(last=False)
        return data

    def _starts(self, ino: Inode) -> array.array[int]:
        """Where each data block of a file starts in the image (kept with the inode)."""
        if ino._block_starts is not None:
            return ino._block_starts
        starts, pos = array.array("Q"), ino.blocks_start
        for b in self._block_list(ino):
            starts.append(pos)
            pos += b & (fmt.BLOCK_UNCOMPRESSED - 1)
        ino._block_starts = starts
        return starts

    def _decode(self, ino: Inode, i: int, starts: array.array[int]) -> bytes:
        """Data block ``i`` decoded, touching no shared state: safe in worker threads."""
        bs = self.superblock.block_size
        blocks = self._block_list(ino)
        want = min(bs, ino.size - i * bs)
        if i >= len(blocks):
            return self._fragment_tail(ino, want)
        word = blocks[i]
        size = word & (fmt.BLOCK_UNCOMPRESSED - 1)
        if size == 0:
            return bytes(want)  # sparse
        if size > bs:
            raise OutOfBoundsError(f"inode {ino.number}: a block of {size} bytes")
        raw = self._read_at(starts[i], size)
        data = raw if word & fmt.BLOCK_UNCOMPRESSED else self.compressor.decompress(raw, bs)
        if len(data) != want:
            raise CorruptImageError(f"inode {ino.number}: block {i} has {len(data)} bytes, "
                                    f"not {want}")
        return data

    def _blocks_in_order(self, ino: Inode, first: int, last: int) -> Iterator[bytes]:
        """Blocks ``first`` to ``last - 1`` decoded, in order, several at once.

        The decompressors (zlib, lzma, zstd, lz4) and pread release the GIL, so worker
        threads decode the next blocks while the caller writes this one; at most
        READ_AHEAD_BYTES are in flight.
        """
        starts = self._starts(ino)
        self._block_list(ino)  # checked once, here, not in every thread
        if last - first <= 2:
            for i in range(first, last):
                yield self._decode(ino, i, starts)
            return
        # the tail in a fragment is read here: the fragment cache is not for threads
        full = len(starts)
        tail = Future[bytes]()
        if last > full:
            tail.set_result(self._fragment_tail(ino, ino.size - full * self.superblock.block_size))
        pool = _pool()
        ahead = max(2, READ_AHEAD_BYTES // self.superblock.block_size)
        pending: deque[Future[bytes]] = deque()
        nxt = first
        try:
            for i in range(first, last):
                while nxt < last and nxt - i < ahead:
                    pending.append(tail if nxt >= full else
                                   pool.submit(self._decode, ino, nxt, starts))
                    nxt += 1
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()

    def stream(self, path: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        """A file's bytes in order, decoded ahead in worker threads (``cat``).

        The path is resolved first, so a missing path or a folder fails before any
        data is yielded.
        """
        ino = self._lookup(path, follow_last=True)
        if ino.kind != "file":
            raise NotFoundError(f"{path} is not a regular file")
        if ino.size == 0:
            return iter(())
        n = -(-ino.size // self.superblock.block_size)
        return _joined(self._blocks_in_order(ino, 0, n), chunk)

    def _fragment_tail(self, ino: Inode, want: int) -> bytes:
        if ino.fragment == fmt.NO_FRAGMENT:
            raise CorruptImageError(f"inode {ino.number}: data is missing its fragment")
        block = self._fragment_block(ino.fragment)
        if ino.frag_offset + want > len(block):
            raise OutOfBoundsError(f"inode {ino.number}: the tail is beyond its fragment")
        return block[ino.frag_offset: ino.frag_offset + want]

    def _fragment_block(self, index: int) -> bytes:
        cached = self._frag_cache.get(index)
        if cached is not None:
            return cached
        ahead = self._frag_ahead.pop(index, None)
        # a block decoded ahead reports its errors here, when it is wanted, not before
        data = ahead.result() if ahead is not None else self._fragment_decode(
            *self._fragment_where(index))
        self._frag_cache[index] = data
        if len(self._frag_cache) > 8:
            self._frag_cache.popitem(last=False)
        # Files are mostly read in the order they were packed (verify, diff, size walk in
        # that order): after two blocks in a row, decode the next on another core while
        # this one is parsed. A single read (cat of one small file) starts nothing.
        follows, self._frag_last = index == self._frag_last + 1, index
        nxt = index + 1
        if follows and nxt < self.superblock.fragment_count and nxt not in self._frag_cache:
            try:
                where = self._fragment_where(nxt)
            except SquashfsError:
                pass  # reported if and when that block is read
            else:
                self._frag_ahead = {nxt: _pool().submit(self._fragment_decode, *where)}
        return data

    def _fragment_where(self, index: int) -> tuple[int, int]:
        """Where fragment block ``index`` is stored and its size word, from the table."""
        sb = self.superblock
        if sb.fragment_table == fmt.NO_TABLE:
            raise CorruptImageError("a file has a fragment but the image has no fragment table")
        raw = self._table_entry(sb.fragment_table, sb.fragment_count, fmt.FRAGMENT_ENTRY.size,
                                index, "fragment table")
        start, word, _ = fmt.FRAGMENT_ENTRY.unpack(raw)
        size = word & (fmt.BLOCK_UNCOMPRESSED - 1)
        if size > sb.block_size or size == 0:
            raise OutOfBoundsError(f"fragment {index} has size {size}")
        return start, word

    def _fragment_decode(self, start: int, word: int) -> bytes:
        """A fragment block read and decoded; touches no shared state (worker threads)."""
        data = self._read_at(start, word & (fmt.BLOCK_UNCOMPRESSED - 1))
        if not word & fmt.BLOCK_UNCOMPRESSED:
            data = self.compressor.decompress(data, self.superblock.block_size)
        return data

    def _read_range(self, ino: Inode, offset: int, size: int) -> bytes:
        bs = self.superblock.block_size
        if size <= 0:
            return b""
        starts = self._starts(ino)
        i = offset // bs
        skip = offset - i * bs
        last = -(-(offset + size) // bs)
        if last - i <= 2:  # a parser's small read: served from the block cache
            out = bytearray()
            while len(out) < size:
                data = self._block(ino, i, starts)
                out += data[skip: skip + size - len(out)]
                skip = 0
                i += 1
            return bytes(out)
        parts = []
        for data in self._blocks_in_order(ino, i, last):
            parts.append(data[skip:] if skip else data)
            skip = 0
        return b"".join(parts)[:size]

    # -- xattrs

    def _xattrs(self, ino: Inode) -> dict[str, bytes]:
        if ino.xattr == fmt.NO_XATTR:
            return {}
        sb = self.superblock
        if sb.xattr_table == fmt.NO_TABLE:
            raise CorruptImageError(f"inode {ino.number} has xattrs but the image has none")
        raw = self._table_entry(sb.xattr_table + fmt.XATTR_ID_TABLE.size, self._xattr_count,
                                fmt.XATTR_ID.size, ino.xattr, "xattr id table")
        ref, count, _size = fmt.XATTR_ID.unpack(raw)
        if count > MAX_XATTR_COUNT:
            raise OutOfBoundsError(f"inode {ino.number}: {count} xattrs")
        kv = MetadataReader(self._read_at, self.compressor, self._xattr_start, sb.xattr_table,
                            "xattr table")
        kv._cache = self._tables._cache  # share decoded blocks: same image, same positions
        block, offset = fmt.split_ref(ref)
        pos = self._xattr_start + block
        out: dict[str, bytes] = {}
        for _ in range(count):
            head, pos, offset = kv.read(pos, offset, fmt.XATTR_KEY.size)
            kind, name_size = fmt.XATTR_KEY.unpack(head)
            prefix = fmt.XATTR_PREFIXES.get(kind & 0xFF)
            if prefix is None:
                raise CorruptImageError(f"inode {ino.number}: unknown xattr prefix {kind & 0xFF}")
            name, pos, offset = kv.read(pos, offset, name_size)
            vhead, pos, offset = kv.read(pos, offset, 4)
            (vsize,) = fmt.U32.unpack(vhead)
            if vsize > MAX_XATTR_VALUE:
                raise OutOfBoundsError(f"inode {ino.number}: xattr value of {vsize} bytes")
            value, pos, offset = kv.read(pos, offset, vsize)
            if kind & fmt.XATTR_OOL:
                if vsize != 8:
                    raise CorruptImageError(f"inode {ino.number}: bad out-of-line xattr")
                vblock, voff = fmt.split_ref(fmt.U64.unpack(value)[0])
                vhead, vpos, vo = kv.read(self._xattr_start + vblock, voff, 4)
                (vsize,) = fmt.U32.unpack(vhead)
                if vsize > MAX_XATTR_VALUE:
                    raise OutOfBoundsError(f"inode {ino.number}: xattr value of {vsize} bytes")
                value, _, _ = kv.read(vpos, vo, vsize)
            out[prefix + os.fsdecode(name)] = value
        return out


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """The decoding threads, one per core, shared by every open image."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                              thread_name_prefix="squashfs-decode")


def _joined(blocks: Iterator[bytes], chunk: int) -> Iterator[bytes]:
    """Blocks regrouped into writes of at least ``chunk`` bytes (fewer system calls)."""
    parts: list[bytes] = []
    have = 0
    for data in blocks:
        parts.append(data)
        have += len(data)
        if have >= chunk:
            yield parts[0] if len(parts) == 1 else b"".join(parts)
            parts, have = [], 0
    if parts:
        yield b"".join(parts)


@dataclass(frozen=True)
class StoredBlock:
    """One block of a file as stored: ``raw`` is None for a hole; ``data()`` decodes it."""

    length: int
    raw: bytes | None
    data: Callable[[], bytes]


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def parse_listing(data: bytes) -> list[ListEntry]:
    """A directory listing (headers and entries) as (name, inode reference, basic type),
    checked for sanity."""
    entries: list[ListEntry] = []
    names: list[bytes] = []
    append, append_name = entries.append, names.append
    unpack_entry = fmt.DIR_ENTRY.unpack_from
    pos, end = 0, len(data)
    while pos < end:
        if pos + fmt.DIR_HEADER.size > end:
            raise CorruptImageError("a directory listing ends inside a header")
        count, block, _base = fmt.DIR_HEADER.unpack_from(data, pos)
        pos += fmt.DIR_HEADER.size
        if count + 1 > fmt.DIR_HEADER_MAX:
            raise CorruptImageError(f"a directory header counts {count + 1} entries")
        base_ref = block << 16  # the inode read checks the block
        for _ in range(count + 1):
            if pos + 8 > end:
                raise CorruptImageError("a directory listing ends inside an entry")
            offset, _delta, itype, name_size = unpack_entry(data, pos)
            start = pos + 8
            pos = start + name_size + 1
            if name_size >= fmt.MAX_NAME or pos > end:
                raise CorruptImageError("a directory entry's name is too long or truncated")
            name = data[start:pos]
            if not 1 <= itype <= 7:
                raise CorruptImageError(f"directory entry {name!r} has type {itype}")
            append_name(name)
            append((name, base_ref | offset, itype))
    # the names checked all at once, in C loops rather than a few tests per name
    joined = b"/".join(names)
    if names and (joined.count(b"/") != len(names) - 1 or b"\0" in joined or b"." in names
                  or b".." in names):
        bad = next(n for n in names if b"/" in n or b"\0" in n or n in (b".", b".."))
        raise CorruptImageError(f"directory entry {bad!r} is not a valid name")
    if not all(map(operator.lt, names, itertools.islice(names, 1, None))):
        raise CorruptImageError("directory entries are not sorted or repeat a name")
    return entries


class FileReader(io.RawIOBase):
    """A file in the image as a seekable binary stream, decoding one block at a time."""

    def __init__(self, image: SquashfsImage, ino: Inode) -> None:
        self.image, self.ino = image, ino
        self.pos = 0
        self._starts = image._starts(ino) if ino.size else array.array("Q")
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.ino.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self.pos >= self.ino.size:
            return 0
        bs = self.image.superblock.block_size
        i = self.pos // bs
        if self._cached is None or self._cached[0] != i:
            self._cached = (i, self.image._block(self.ino, i, self._starts))
        data = self._cached[1]
        skip = self.pos - i * bs
        # any writable buffer, counted in bytes; released before the caller resizes it
        with memoryview(buffer) as view, view.cast("B") as buf:
            n = min(len(buf), len(data) - skip)
            buf[:n] = data[skip: skip + n]
        self.pos += n
        return n
