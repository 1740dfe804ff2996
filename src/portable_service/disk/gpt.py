"""GUID Partition Tables, written and read natively (UEFI specification 2.x, chapter 5).

The layout, in 512-byte sectors: a protective MBR (LBA 0), the primary header (LBA 1),
128 entries of 128 bytes (LBA 2-33), the partitions, then the backup entries and the
backup header in the last sector. Checksums are CRC32 (zlib.crc32 is the same CRC the
specification names). Nothing here depends on time or chance: the same partitions and
GUIDs give the same bytes.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from portable_service.errors import ImageError

SECTOR = 512
ALIGN = 4096  # partitions start and end on 4 KiB boundaries (file system block size)
ENTRIES = 128
ENTRY_SIZE = 128
ENTRY_SECTORS = ENTRIES * ENTRY_SIZE // SECTOR  # 32
SIGNATURE = b"EFI PART"
REVISION = 0x00010000
HEADER_SIZE = 92
NAME_CHARS = 36  # 72 bytes of UTF-16LE

_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")


@dataclass(frozen=True)
class Partition:
    """One GPT entry; ``first_lba`` and ``last_lba`` are inclusive sector numbers."""

    type_uuid: uuid.UUID
    uuid: uuid.UUID
    name: str
    first_lba: int
    last_lba: int
    attributes: int = 0

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


@dataclass(frozen=True)
class Table:
    disk_uuid: uuid.UUID
    partitions: tuple[Partition, ...]
    disk_size: int


@dataclass(frozen=True)
class Content:
    """What a partition should hold: ``size`` bytes read from ``source`` (padded with zeros)."""

    type_uuid: uuid.UUID
    uuid: uuid.UUID
    name: str
    source: BinaryIO
    size: int
    attributes: int = 0


def _align(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to


def layout(contents: Sequence[Content], disk_uuid: uuid.UUID, min_size: int = 0) -> Table:
    """Place the partitions one after the other on 4 KiB boundaries, after the primary
    table; the disk is at least ``min_size`` bytes (zeros after the last partition)."""
    if len(contents) > ENTRIES:
        raise ValueError(f"a GPT holds at most {ENTRIES} partitions")
    pos = _align((2 + ENTRY_SECTORS) * SECTOR)
    parts = []
    for c in contents:
        if len(c.name) > NAME_CHARS:
            raise ValueError(f"partition name {c.name!r} is longer than {NAME_CHARS} characters")
        size = _align(max(c.size, 1))
        parts.append(Partition(c.type_uuid, c.uuid, c.name, pos // SECTOR,
                               (pos + size) // SECTOR - 1, c.attributes))
        pos += size
    # the backup entries and header follow; the disk ends on a 4 KiB boundary too
    disk_size = _align(max(pos + (ENTRY_SECTORS + 1) * SECTOR, min_size))
    return Table(disk_uuid, tuple(parts), disk_size)


def protective_mbr(disk_sectors: int) -> bytes:
    """LBA 0: one partition of type 0xEE covering the disk, so MBR tools leave it alone."""
    mbr = bytearray(SECTOR)
    entry = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1,
                        min(disk_sectors - 1, 0xFFFFFFFF))
    mbr[446:462] = entry
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def _entries(parts: Sequence[Partition]) -> bytes:
    out = bytearray(ENTRIES * ENTRY_SIZE)
    for i, p in enumerate(parts):
        name = p.name.encode("utf-16-le").ljust(72, b"\0")
        _ENTRY.pack_into(out, i * ENTRY_SIZE, p.type_uuid.bytes_le, p.uuid.bytes_le,
                         p.first_lba, p.last_lba, p.attributes, name)
    return bytes(out)


def _header(table: Table, entries_crc: int, backup: bool) -> bytes:
    last = table.disk_size // SECTOR - 1
    first_usable = 2 + ENTRY_SECTORS
    last_usable = last - ENTRY_SECTORS - 1
    my_lba, alt_lba = (last, 1) if backup else (1, last)
    entries_lba = last - ENTRY_SECTORS if backup else 2

    def pack(crc: int) -> bytes:
        return _HEADER.pack(SIGNATURE, REVISION, HEADER_SIZE, crc, 0, my_lba, alt_lba,
                            first_usable, last_usable, table.disk_uuid.bytes_le, entries_lba,
                            ENTRIES, ENTRY_SIZE, entries_crc)

    header = pack(zlib.crc32(pack(0)))
    return header.ljust(SECTOR, b"\0")


def write(out: BinaryIO, table: Table, contents: Sequence[Content], chunk: int = 1 << 20) -> None:
    """Write the whole disk: MBR, primary table, each partition's bytes, backup table."""
    entries = _entries(table.partitions)
    crc = zlib.crc32(entries)
    out.seek(0)
    out.write(protective_mbr(table.disk_size // SECTOR))
    out.write(_header(table, crc, backup=False))
    out.write(entries)
    pos = (2 + ENTRY_SECTORS) * SECTOR
    for part, content in zip(table.partitions, contents, strict=True):
        out.write(b"\0" * (part.offset - pos))
        left = content.size
        while left:
            data = content.source.read(min(chunk, left))
            if not data:
                raise ImageError(f"partition {part.name}: its content ended {left} bytes early",
                                 "build again")
            out.write(data)
            left -= len(data)
        out.write(b"\0" * (part.size - content.size))
        pos = part.offset + part.size
    backup_entries = table.disk_size - (ENTRY_SECTORS + 1) * SECTOR
    out.write(b"\0" * (backup_entries - pos))
    out.write(entries)
    out.write(_header(table, crc, backup=True))


# -- reading


def is_gpt(head: bytes) -> bool:
    return head[SECTOR:SECTOR + 8] == SIGNATURE


def read(f: BinaryIO, size: int | None = None) -> Table:
    """The partition table of a disk image, checked: signature, CRCs, bounds.

    Reads the primary table, falling back to the backup one when the primary is damaged,
    as the kernel and libblkid do.
    """
    if size is None:
        f.seek(0, 2)
        size = f.tell()
    if size < (2 * (ENTRY_SECTORS + 1) + 1) * SECTOR:
        raise ImageError("the disk image is too small to hold a GPT", "is it a GPT disk image?")
    problems = []
    for lba in (1, size // SECTOR - 1):
        try:
            return _read_at(f, lba, size)
        except ImageError as e:
            problems.append(e.message)
    raise ImageError(f"no valid GPT: {problems[0]}; backup: {problems[1]}",
                     "the disk image is damaged or not a GPT disk image")


def _read_at(f: BinaryIO, lba: int, size: int) -> Table:
    f.seek(lba * SECTOR)
    raw = f.read(SECTOR)
    if len(raw) < HEADER_SIZE or raw[:8] != SIGNATURE:
        raise ImageError(f"no GPT header at sector {lba}")
    (_sig, _rev, hsize, crc, _res, my_lba, _alt, first, last, disk, entries_lba, count,
     esize, entries_crc) = _HEADER.unpack_from(raw)
    if not HEADER_SIZE <= hsize <= SECTOR:
        raise ImageError(f"GPT header at sector {lba} has size {hsize}")
    check = bytearray(raw[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != crc:
        raise ImageError(f"GPT header at sector {lba} has a wrong CRC32")
    if my_lba != lba or esize < ENTRY_SIZE or count > 1024 or \
            (entries_lba * SECTOR + count * esize) > size:
        raise ImageError(f"GPT header at sector {lba} points outside the disk")
    f.seek(entries_lba * SECTOR)
    table = f.read(count * esize)
    if zlib.crc32(table) != entries_crc:
        raise ImageError(f"GPT entries of the header at sector {lba} have a wrong CRC32")
    parts = []
    for i in range(count):
        t, u, lo, hi, attrs, name = _ENTRY.unpack_from(table, i * esize)
        if t == b"\0" * 16:
            continue
        if not first <= lo <= hi <= last or (hi + 1) * SECTOR > size:
            raise ImageError(f"GPT partition {i + 1} lies outside the disk's usable sectors")
        parts.append(Partition(uuid.UUID(bytes_le=t), uuid.UUID(bytes_le=u),
                               name.decode("utf-16-le", "replace").split("\0", 1)[0], lo, hi,
                               attrs))
    return Table(uuid.UUID(bytes_le=disk), tuple(parts), size)
