"""The image tree: every path of the image with its kind, mode and where its bytes come from.

It knows nothing of squashfs or any other format: writers walk it. Owners
and times are not stored: every entry is owned by root and stamped with the
build's fixed time, which is what makes images reproducible.
"""

from __future__ import annotations

import enum
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from portable_service.errors import TreeError

ROOT = PurePosixPath("/")


class Kind(enum.Enum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"


@dataclass(frozen=True)
class Entry:
    """One path in the image. A FILE has ``source`` (a host file) or ``data`` (inline bytes)."""

    path: PurePosixPath
    kind: Kind
    mode: int  # permission bits only (0o7777)
    source: Path | None = None
    data: bytes | None = None
    target: str | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()
    origin: str = field(default="", compare=False)  # what put it there, for why/size
    # the source's size when it was placed (the closure's lstat of it): not stat'ed again
    source_size: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind is Kind.FILE and (self.source is None) == (self.data is None):
            raise ValueError(f"{self.path}: a file needs exactly one of source and data")
        if self.kind is Kind.SYMLINK and not self.target:
            raise ValueError(f"{self.path}: a symlink needs a target")

    @property
    def size(self) -> int:
        if self.kind is Kind.SYMLINK:
            return len(os.fsencode(self.target or ""))
        if self.kind is Kind.DIR:
            return 0
        if self.data is not None:
            return len(self.data)
        assert self.source is not None
        if self.source_size is not None:
            return self.source_size
        try:
            return os.stat(self.source).st_size
        except OSError as e:
            raise self._unreadable(e) from None

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The file's bytes in pieces of up to ``size``; a host file's read from a descriptor
        (no buffered file object: asked of every file by the SBOM, it costs a third less)."""
        if self.data is not None:
            yield self.data
            return
        if self.source is None:
            raise ValueError(f"{self.path} is not a file")
        try:
            fd = os.open(self.source, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise self._unreadable(e) from None
        try:
            while chunk := os.read(fd, size):
                yield chunk
        finally:
            os.close(fd)

    def _unreadable(self, e: OSError) -> TreeError:
        # the closure checked it could read every file; this one changed since
        return TreeError(f"cannot read {self.source} (for {self.path}): {e.strerror}",
                         "run the build as root, make it readable (chmod), or exclude it")

    def open(self) -> BinaryIO:
        """The file's bytes, streamed from the host or from memory."""
        if self.data is not None:
            return io.BytesIO(self.data)
        if self.source is None:
            raise ValueError(f"{self.path} is not a file")
        try:
            return open(self.source, "rb")
        except OSError as e:
            raise self._unreadable(e) from None


def sort_key(path: PurePosixPath) -> bytes:
    """Byte-wise order of path components: the order squashfs directories need.

    The path's bytes with each "/" made a NUL, which no name holds: comparing them is
    comparing the components one by one (a name before a longer one it starts), in one
    C comparison instead of a tuple of encoded parts."""
    return os.fsencode(str(path)).replace(b"/", b"\0")


class ImageTree:
    """A set of entries keyed by absolute image path, parents always present."""

    def __init__(self) -> None:
        self._entries: dict[PurePosixPath, Entry] = {
            ROOT: Entry(ROOT, Kind.DIR, 0o755, origin="scaffold")
        }
        self._order: list[PurePosixPath] | None = None  # sorted paths, until the next change
        # the folders' paths as text: an entry's folder is found from its path's text,
        # without making (and hashing) a new path object for its parent
        self._dirs: set[str] = {"/"}

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: PurePosixPath) -> Entry | None:
        return self._entries.get(path)

    def __iter__(self) -> Iterator[Entry]:
        """Entries in byte-wise path order, each folder before its contents."""
        if self._order is None:  # the writer, the SBOM and the checks each walk it
            self._order = sorted(self._entries, key=sort_key)
        for path in self._order:
            yield self._entries[path]

    def children(self, path: PurePosixPath) -> list[Entry]:
        return sorted(
            (e for p, e in self._entries.items() if p.parent == path and p != ROOT),
            key=lambda e: os.fsencode(e.path.name),
        )

    def add(self, entry: Entry) -> Entry:
        """Add an entry, creating missing parent folders (0755).

        The same path added twice is fine when both agree (folders always
        agree); otherwise it is a conflict the user has to resolve.
        """
        self._ensure_parents(entry.path, entry.origin)
        old = self._entries.get(entry.path)
        if old is not None:
            if old.kind is Kind.DIR and entry.kind is Kind.DIR:
                return old
            if old == entry or _same_content(old, entry):
                return old
            raise TreeError(
                f"{entry.path} is claimed twice: by {old.origin or 'the scaffold'} "
                f"({old.kind.value}) and by {entry.origin} ({entry.kind.value})",
                "remove one of them from the spec or move it with { source, target }",
            )
        self._entries[entry.path] = entry
        self._order = None
        if entry.kind is Kind.DIR:
            self._dirs.add(str(entry.path))
        return entry

    def add_dir(self, path: PurePosixPath, mode: int = 0o755, origin: str = "") -> Entry:
        return self.add(Entry(path, Kind.DIR, mode, origin=origin))

    def add_file(
        self,
        path: PurePosixPath,
        *,
        source: Path | None = None,
        data: bytes | None = None,
        mode: int = 0o644,
        xattrs: tuple[tuple[str, bytes], ...] = (),
        origin: str = "",
        source_size: int | None = None,
    ) -> Entry:
        return self.add(Entry(path, Kind.FILE, mode, source=source, data=data, xattrs=xattrs,
                              origin=origin, source_size=source_size))

    def add_symlink(self, path: PurePosixPath, target: str, origin: str = "") -> Entry:
        return self.add(Entry(path, Kind.SYMLINK, 0o777, target=target, origin=origin))

    def remove(self, path: PurePosixPath) -> None:
        """Drop an entry and everything below it."""
        for p in [p for p in self._entries if p == path or path in p.parents]:
            if p != ROOT:
                del self._entries[p]
                self._order = None
                self._dirs.discard(str(p))

    def _ensure_parents(self, path: PurePosixPath, origin: str) -> None:
        if (str(path).rpartition("/")[0] or "/") in self._dirs:
            return  # the usual case: its own parents came with it
        for parent in reversed(path.parents):
            old = self._entries.get(parent)
            if old is None:
                self._entries[parent] = Entry(parent, Kind.DIR, 0o755, origin=origin)
                self._order = None
                self._dirs.add(str(parent))
            elif old.kind is not Kind.DIR:
                raise TreeError(
                    f"{path} lies below {parent}, which is a {old.kind.value} "
                    f"(from {old.origin or 'the scaffold'})",
                    "place it at a path that is not below a file or symlink",
                )

    def total_size(self) -> int:
        return sum(e.size for e in self._entries.values())


def _same_content(a: Entry, b: Entry) -> bool:
    """Two file entries with byte-identical content and equal metadata do not conflict."""
    if a.kind is not b.kind or a.mode != b.mode or a.target != b.target or a.xattrs != b.xattrs:
        return False
    if a.kind is not Kind.FILE:
        return a.kind is Kind.SYMLINK
    if a.source is not None and b.source is not None:
        try:
            if os.path.samefile(a.source, b.source):
                return True
        except OSError:
            return False
    if a.size != b.size:
        return False
    with a.open() as fa, b.open() as fb:
        while True:
            ca, cb = fa.read(1 << 16), fb.read(1 << 16)
            if ca != cb:
                return False
            if not ca:
                return True
