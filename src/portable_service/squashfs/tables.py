"""The lookup tables: id, fragment, export and xattr.

Each is a run of metadata blocks followed by an index of u64 pointers to
those blocks, the index being what the superblock points at. The kernel
checks that each index ends exactly where the next table's blocks begin,
so the writer lays them out back to back in this order: fragment, export,
id, xattr.
"""

from __future__ import annotations

from portable_service.squashfs import format as fmt
from portable_service.squashfs.compressor import Compressor
from portable_service.squashfs.errors import InputError
from portable_service.squashfs.metadata import MetadataWriter


def pack_table(entries: bytes, at: int, compressor: Compressor) -> tuple[bytes, int]:
    """A table written at offset ``at``: its bytes and the offset of its index."""
    meta = MetadataWriter(compressor)
    meta.write(entries)
    blocks = meta.finish()
    index = b"".join(fmt.U64.pack(at + s) for s in meta.block_starts)
    return blocks + index, at + len(blocks)


class IdTable:
    """uids and gids, stored once each; inodes refer to them by index."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self._index: dict[int, int] = {}

    def index(self, value: int) -> int:
        found = self._index.get(value)
        if found is None:
            if len(self.ids) >= 0xFFFF:
                raise InputError("more than 65535 distinct owners", "use fewer uids and gids")
            found = self._index[value] = len(self.ids)
            self.ids.append(value)
        return found

    def pack(self) -> bytes:
        return b"".join(fmt.U32.pack(i) for i in self.ids)


PREFIX_IDS = {prefix: n for n, prefix in fmt.XATTR_PREFIXES.items()}


class XattrTable:
    """Sets of extended attributes; identical sets are stored once."""

    def __init__(self, compressor: Compressor) -> None:
        self.kv = MetadataWriter(compressor)
        self.ids = bytearray()
        self.count = 0
        self._sets: dict[tuple[tuple[str, bytes], ...], int] = {}

    def index(self, pairs: tuple[tuple[str, bytes], ...]) -> int:
        """The id of a set of (name, value) pairs; NO_XATTR for none."""
        if not pairs:
            return fmt.NO_XATTR
        key = tuple(sorted(pairs))
        found = self._sets.get(key)
        if found is not None:
            return found
        block, offset = self.kv.position()
        size = 0
        for name, value in key:
            prefix = next((p for p in PREFIX_IDS if name.startswith(p)), None)
            suffix = name[len(prefix):].encode("utf-8", "surrogateescape") if prefix else b""
            if prefix is None or not suffix or len(suffix) > 0xFFFF:
                raise InputError(f"extended attribute {name!r} cannot be stored in squashfs",
                                 "only user., trusted. and security. attributes can")
            self.kv.write(fmt.XATTR_KEY.pack(PREFIX_IDS[prefix], len(suffix)) + suffix
                          + fmt.U32.pack(len(value)) + value)
            size += len(prefix) + len(suffix) + 1 + len(value)
        self.ids += fmt.XATTR_ID.pack(fmt.inode_ref(block, offset), len(key), size)
        found = self._sets[key] = self.count
        self.count += 1
        return found

    def pack(self, at: int, compressor: Compressor) -> tuple[bytes, int]:
        """The key/value blocks, id blocks and header written at ``at``; returns the header's
        offset, which the superblock records."""
        kv = self.kv.finish()
        ids = MetadataWriter(compressor)
        ids.write(bytes(self.ids))
        id_blocks = ids.finish()
        ids_at = at + len(kv)
        header_at = ids_at + len(id_blocks)
        header = fmt.XATTR_ID_TABLE.pack(at, self.count, 0) + b"".join(
            fmt.U64.pack(ids_at + s) for s in ids.block_starts)
        return kv + id_blocks + header, header_at
