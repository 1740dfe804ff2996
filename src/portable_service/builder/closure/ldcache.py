"""/etc/ld.so.cache: read the host's, write the image's.

The format is glibc's ``glibc-ld.so.cache1.1`` (elf/cache.c, sysdeps/generic/
dl-cache.h): a 48-byte header, ``nlibs`` 24-byte entries sorted the way the
loader's binary search expects, then the string table. String offsets count
from the start of the new-format header. Files that start with the old
``ld.so-1.7.0`` table (glibc < 2.32 wrote both) are read past that table.

The image gets its own cache holding the host's entries for the libraries it
carries, so a library the host finds through ``/etc/ld.so.conf.d`` (outside the
loader's default folders) is found the same way inside the image.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from portable_service.errors import ClosureError

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
# magic[20], nlibs, len_strings, flags, pad[3], extension_offset, unused[3]
HEADER = struct.Struct("<20sIIB3xI12x")
# flags, key, value, osversion, hwcap
ENTRY = struct.Struct("<iIIIQ")
OLD_ENTRY_SIZE = 12
FLAG_TYPE_MASK = 0x00FF
FLAG_ELF_LIBC6 = 0x0003
HWCAP_EXTENSION = 1 << 62  # the entry belongs to a glibc-hwcaps subfolder
CACHE_LITTLE_ENDIAN = 2  # header flags: endianness recorded by ldconfig


@dataclass(frozen=True)
class CacheEntry:
    name: str  # the soname the loader looks up, e.g. libc.so.6
    path: str  # the file it maps to
    flags: int
    osversion: int = 0
    hwcap: int = 0

    @property
    def is_libc6(self) -> bool:
        return self.flags & FLAG_TYPE_MASK == FLAG_ELF_LIBC6

    @property
    def is_hwcaps_variant(self) -> bool:
        return bool(self.hwcap & HWCAP_EXTENSION)


def parse(data: bytes, where: str = "ld.so.cache") -> list[CacheEntry]:
    """Entries in file order (the loader's preference order among equal names)."""
    base = 0
    if data.startswith(OLD_MAGIC):
        if len(data) < 16:
            raise ClosureError(f"{where} is truncated", "regenerate it with ldconfig")
        (nold,) = struct.unpack_from("<I", data, 12)
        base = 16 + nold * OLD_ENTRY_SIZE
        base = (base + 7) & ~7  # the new table is aligned like a cache_file_new
    if data[base:base + len(NEW_MAGIC)] != NEW_MAGIC or len(data) < base + HEADER.size:
        raise ClosureError(f"{where} is not a glibc ld.so.cache (format 1.1)",
                           "regenerate it with ldconfig")
    _, nlibs, _len_strings, _flags, _ext = HEADER.unpack_from(data, base)
    end_entries = base + HEADER.size + nlibs * ENTRY.size
    if end_entries > len(data):
        raise ClosureError(f"{where} is truncated ({nlibs} entries announced)",
                           "regenerate it with ldconfig")
    entries = []
    for i in range(nlibs):
        flags, key, value, osv, hwcap = ENTRY.unpack_from(data, base + HEADER.size + i * ENTRY.size)
        entries.append(CacheEntry(_string(data, base + key, where), _string(data, base + value, where),
                                  flags, osv, hwcap))
    return entries


def _string(data: bytes, offset: int, where: str) -> str:
    end = data.find(b"\0", offset)
    if offset >= len(data) or end < 0:
        raise ClosureError(f"{where} has a string offset out of bounds", "regenerate it with ldconfig")
    return data[offset:end].decode("utf-8", "surrogateescape")


HOST_CACHE = Path("/etc/ld.so.cache")


def read(path: Path | None = None) -> list[CacheEntry]:
    """The host's cache; a host without one (static systems, containers) has no entries."""
    path = path or HOST_CACHE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ClosureError(f"cannot read {path}: {e.strerror}", "fix its permissions") from None
    return parse(data, str(path))


def libcmp(a: str, b: str) -> int:
    """glibc's _dl_cache_libcmp: runs of digits compare as numbers, a digit sorts after a non-digit."""
    i = j = 0
    while i < len(a):
        ca = a[i]
        cb = b[j] if j < len(b) else ""
        if ca.isdigit() and ca.isascii():
            if not (cb.isdigit() and cb.isascii()):
                return 1
            i2, j2 = i, j
            while i2 < len(a) and a[i2].isascii() and a[i2].isdigit():
                i2 += 1
            while j2 < len(b) and b[j2].isascii() and b[j2].isdigit():
                j2 += 1
            va, vb = int(a[i:i2]), int(b[j:j2])
            if va != vb:
                return va - vb
            i, j = i2, j2
        elif cb.isdigit() and cb.isascii():
            return -1
        elif ca != cb:
            return ord(ca) - (ord(cb) if cb else 0)
        else:
            i += 1
            j += 1
    return 0 - (ord(b[j]) if j < len(b) else 0)


def _order(e1: CacheEntry, e2: CacheEntry) -> int:
    # ldconfig's compare(): names descending, then flags and hwcap descending
    res = libcmp(e2.name, e1.name)
    if res:
        return res
    for a, b in ((e1.flags, e2.flags), (e1.hwcap, e2.hwcap), (e1.osversion, e2.osversion)):
        if a != b:
            return -1 if a > b else 1
    return 0


def sort_entries(entries: Iterable[CacheEntry]) -> list[CacheEntry]:
    """The loader's binary-search order; ties keep their given order (ldconfig's first folder wins)."""
    return sorted(entries, key=functools.cmp_to_key(_order))


def render(entries: Iterable[CacheEntry]) -> bytes:
    """A ``glibc-ld.so.cache1.1`` file for ``entries`` (glibc-hwcaps variants are left out:
    they need the cache's extension section; the loader still finds them by folder)."""
    ordered = [e for e in sort_entries(entries) if not e.is_hwcaps_variant]
    strings = bytearray()
    offsets: dict[str, int] = {}
    table_start = HEADER.size + len(ordered) * ENTRY.size

    def offset(text: str) -> int:
        if text not in offsets:
            offsets[text] = table_start + len(strings)
            strings.extend(text.encode("utf-8", "surrogateescape") + b"\0")
        return offsets[text]

    body = bytearray()
    for e in ordered:
        value = offset(e.path)
        # like ldconfig, a name that ends the path shares the path's bytes
        tail = "/" + e.name
        key = value + len(e.path.encode()) - len(e.name.encode()) if e.path.endswith(tail) \
            else offset(e.name)
        body += ENTRY.pack(e.flags, key, value, e.osversion, e.hwcap)
    header = HEADER.pack(NEW_MAGIC, len(ordered), len(strings), CACHE_LITTLE_ENDIAN, 0)
    return bytes(header + body + strings)


def lookup_table(entries: Iterable[CacheEntry]) -> dict[str, list[CacheEntry]]:
    """name -> libc6 entries in preference order (what the loader's search walks)."""
    table: dict[str, list[CacheEntry]] = {}
    for e in entries:
        if e.is_libc6 and not e.is_hwcaps_variant:
            table.setdefault(e.name, []).append(e)
    return table
