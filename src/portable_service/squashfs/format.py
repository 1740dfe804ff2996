"""On-disk records of squashfs 4.0: struct formats, pack() and parse().

All integers are little-endian. Names follow squashfs-tools-ng's
``doc/format.adoc``. Parsing checks only what one record can check; the
reader checks references between records.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from portable_service.squashfs.errors import CorruptImageError, UnsupportedError

MAGIC = 0x73717368  # "hsqs"
SUPERBLOCK_SIZE = 96
METADATA_SIZE = 8192
METADATA_UNCOMPRESSED = 0x8000  # bit in a metadata block header
BLOCK_UNCOMPRESSED = 1 << 24  # bit in a data block or fragment size
NO_FRAGMENT = 0xFFFFFFFF
NO_XATTR = 0xFFFFFFFF
NO_TABLE = 0xFFFFFFFFFFFFFFFF
MAX_NAME = 256
DIR_HEADER_MAX = 256  # entries per directory header
DEVBLK_SIZE = 4096  # images are padded to this

# superblock flags
F_UNCOMPRESSED_INODES = 0x0001
F_UNCOMPRESSED_DATA = 0x0002
F_CHECK = 0x0004
F_UNCOMPRESSED_FRAGMENTS = 0x0008
F_NO_FRAGMENTS = 0x0010
F_ALWAYS_FRAGMENTS = 0x0020
F_DUPLICATES = 0x0040
F_EXPORTABLE = 0x0080
F_UNCOMPRESSED_XATTRS = 0x0100
F_NO_XATTRS = 0x0200
F_COMPRESSOR_OPTIONS = 0x0400
F_UNCOMPRESSED_IDS = 0x0800

COMPRESSOR_IDS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
COMPRESSOR_NAMES = {v: k for k, v in COMPRESSOR_IDS.items()}

# inode types; extended = basic + 7
DIR, FILE, SYMLINK, BLKDEV, CHRDEV, FIFO, SOCKET = 1, 2, 3, 4, 5, 6, 7
LDIR, LFILE, LSYMLINK, LBLKDEV, LCHRDEV, LFIFO, LSOCKET = 8, 9, 10, 11, 12, 13, 14
KIND_OF_TYPE = {
    DIR: "dir", FILE: "file", SYMLINK: "symlink", BLKDEV: "blockdev", CHRDEV: "chardev",
    FIFO: "fifo", SOCKET: "socket",
}
S_IFMT = {"dir": 0o040000, "file": 0o100000, "symlink": 0o120000, "blockdev": 0o060000,
          "chardev": 0o020000, "fifo": 0o010000, "socket": 0o140000}


def basic_type(inode_type: int) -> int:
    return inode_type - 7 if inode_type > 7 else inode_type


def kind_of(inode_type: int) -> str:
    return KIND_OF_TYPE[basic_type(inode_type)]


def _unpack(fmt: struct.Struct, data: bytes | memoryview, offset: int, what: str) -> tuple[int, ...]:
    if offset < 0 or offset + fmt.size > len(data):
        raise CorruptImageError(f"truncated {what}")
    return fmt.unpack_from(data, offset)


@dataclass(frozen=True)
class Superblock:
    inode_count: int
    mkfs_time: int
    block_size: int
    fragment_count: int
    compression_id: int
    block_log: int
    flags: int
    id_count: int
    version_major: int
    version_minor: int
    root_inode: int
    bytes_used: int
    id_table: int
    xattr_table: int
    inode_table: int
    directory_table: int
    fragment_table: int
    export_table: int

    FMT = struct.Struct("<IIIIIHHHHHHQQQQQQQQ")

    @property
    def compressor(self) -> str:
        return COMPRESSOR_IDS.get(self.compression_id, f"unknown-{self.compression_id}")

    @property
    def version(self) -> tuple[int, int]:
        return (self.version_major, self.version_minor)

    def pack(self) -> bytes:
        return self.FMT.pack(
            MAGIC, self.inode_count, self.mkfs_time, self.block_size, self.fragment_count,
            self.compression_id, self.block_log, self.flags, self.id_count,
            self.version_major, self.version_minor, self.root_inode, self.bytes_used,
            self.id_table, self.xattr_table, self.inode_table, self.directory_table,
            self.fragment_table, self.export_table,
        )

    @classmethod
    def parse(cls, data: bytes) -> Superblock:
        if len(data) < SUPERBLOCK_SIZE:
            raise CorruptImageError("not a squashfs image: shorter than a superblock")
        magic, *rest = cls.FMT.unpack_from(data)
        if magic != MAGIC:
            raise CorruptImageError("not a squashfs image: bad magic")
        sb = cls(*rest)
        if sb.version != (4, 0):
            raise UnsupportedError(f"squashfs version {sb.version_major}.{sb.version_minor} "
                                   "is not supported (only 4.0)")
        if sb.compression_id not in COMPRESSOR_IDS:
            raise UnsupportedError(f"unknown compressor id {sb.compression_id}")
        bs = sb.block_size
        if bs < 4096 or bs > (1 << 20) or bs & (bs - 1) or (1 << sb.block_log) != bs:
            raise CorruptImageError(f"bad block size {bs} (log {sb.block_log})")
        if sb.inode_count == 0:
            raise CorruptImageError("the image claims to have no inodes")
        return sb


@dataclass(frozen=True)
class InodeHeader:
    type: int
    mode: int
    uid_idx: int
    gid_idx: int
    mtime: int
    inode_number: int

    FMT = struct.Struct("<HHHHII")

    def pack(self) -> bytes:
        return self.FMT.pack(self.type, self.mode, self.uid_idx, self.gid_idx, self.mtime,
                             self.inode_number)

    @classmethod
    def parse(cls, data: bytes, offset: int = 0) -> InodeHeader:
        return cls(*_unpack(cls.FMT, data, offset, "inode header"))


# Bodies after the inode header. A dataclass per kind would add nothing: the
# writer packs and the reader parses with these formats directly.
DIR_BODY = struct.Struct("<IIHHI")  # start_block, nlink, file_size, offset, parent
LDIR_BODY = struct.Struct("<IIIIHHI")  # nlink, size, start, parent, i_count, offset, xattr
DIR_INDEX = struct.Struct("<III")  # index, start_block, name_size - 1 ; then the name
FILE_BODY = struct.Struct("<IIII")  # blocks_start, fragment, frag_offset, file_size
LFILE_BODY = struct.Struct("<QQQIIII")  # blocks_start, size, sparse, nlink, frag, frag_off, xattr
SYMLINK_BODY = struct.Struct("<II")  # nlink, target size ; then target (+ xattr u32 if ext)
DEV_BODY = struct.Struct("<II")  # nlink, device
LDEV_BODY = struct.Struct("<III")  # nlink, device, xattr
IPC_BODY = struct.Struct("<I")  # nlink
LIPC_BODY = struct.Struct("<II")  # nlink, xattr
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
U16 = struct.Struct("<H")

DIR_HEADER = struct.Struct("<III")  # count - 1, inode block start, base inode number
DIR_ENTRY = struct.Struct("<HhHH")  # offset, inode delta, basic type, name_size - 1

FRAGMENT_ENTRY = struct.Struct("<QII")  # start, size (| BLOCK_UNCOMPRESSED), unused
XATTR_ID = struct.Struct("<QII")  # kv ref, count, size
XATTR_ID_TABLE = struct.Struct("<QII")  # kv table start, id count, unused
XATTR_KEY = struct.Struct("<HH")  # type (| XATTR_OOL), name size
XATTR_OOL = 0x0100
XATTR_PREFIXES = {0: "user.", 1: "trusted.", 2: "security."}

GZIP_OPTIONS = struct.Struct("<IHH")  # level, window, strategies
XZ_OPTIONS = struct.Struct("<II")  # dict size, filters
LZ4_OPTIONS = struct.Struct("<II")  # version, flags
ZSTD_OPTIONS = struct.Struct("<I")  # level
LZO_OPTIONS = struct.Struct("<II")  # algorithm, level


def inode_ref(block: int, offset: int) -> int:
    """A reference: the metadata block's start relative to its table, and the offset in it."""
    return (block << 16) | offset


def split_ref(ref: int) -> tuple[int, int]:
    return ref >> 16, ref & 0xFFFF


@dataclass(slots=True)
class DirEntry:
    """One name in a directory listing, as the writer builds and the reader returns it."""

    name: bytes
    inode_block: int  # metadata block start of the inode, relative to the inode table
    inode_offset: int
    inode_number: int
    type: int  # basic inode type
