"""Directory listings: runs of entries behind headers, and the index of a large directory.

A listing is written into the directory table's metadata blocks. A new
header starts when 256 entries are reached, when the entries' inodes move
to another metadata block, when an inode number is too far from the
header's, or when the listing crosses into a new metadata block: then the
directory index can point the kernel at that block's first header.
"""

from __future__ import annotations

from dataclasses import dataclass

from portable_service.squashfs import format as fmt
from portable_service.squashfs.metadata import MetadataWriter


@dataclass(frozen=True)
class Listing:
    """Where a written listing is, for the directory's inode."""

    start_block: int  # relative to the directory table
    offset: int
    size: int  # bytes of the listing + 3, as the inode records it
    index: bytes  # packed directory index entries (for an extended inode)
    index_count: int


def write_listing(dirs: MetadataWriter, entries: list[fmt.DirEntry]) -> Listing:
    """Write a directory's entries (sorted by name) and return where they went."""
    start_block, start_offset = dirs.position()
    base = dirs.uncompressed_size  # uncompressed position of the listing's first byte
    out = bytearray()
    index: list[tuple[int, int, bytes]] = []  # (offset in listing, metadata block no., name)
    i = 0
    while i < len(entries):
        head_at = len(out)
        head_block = (base + head_at) // fmt.METADATA_SIZE
        first = entries[i]
        run: list[fmt.DirEntry] = []
        size = fmt.DIR_HEADER.size
        while i < len(entries) and len(run) < fmt.DIR_HEADER_MAX:
            e = entries[i]
            if e.inode_block != first.inode_block or not -32768 <= \
                    e.inode_number - first.inode_number <= 32767:
                break
            if run and (base + head_at + size) // fmt.METADATA_SIZE != head_block:
                break  # the entry would start in the next metadata block
            run.append(e)
            size += fmt.DIR_ENTRY.size + len(e.name)
            i += 1
        if head_block != base // fmt.METADATA_SIZE:
            index.append((head_at, head_block, first.name))
        out += fmt.DIR_HEADER.pack(len(run) - 1, first.inode_block, first.inode_number)
        for e in run:
            out += fmt.DIR_ENTRY.pack(e.inode_offset, e.inode_number - first.inode_number,
                                      e.type, len(e.name) - 1)
            out += e.name
    dirs.write(bytes(out))
    # the blocks holding the indexed headers are written now, so their disk offsets are known
    packed = bytearray()
    first_block = base // fmt.METADATA_SIZE
    for at, block_no, name in index:
        disk = dirs.block_starts[block_no] if block_no < len(dirs.block_starts) else len(dirs.out)
        assert block_no > first_block
        packed += fmt.DIR_INDEX.pack(at, disk, len(name) - 1) + name
    return Listing(start_block, start_offset, len(out) + 3, bytes(packed), len(index))
