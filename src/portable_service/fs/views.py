"""A read-only view of an image's files, whatever holds them.

``inspect``, ``verify``, ``diff`` and ``size`` only need to stat, list, walk
and read paths. Three things provide that: a squashfs image file (through the
pure-Python reader, no root needed), the in-memory :class:`ImageTree` of
a build that is not written yet, so a build can be checked with the same
rules as a finished image, and a folder of this machine (:class:`HostFS`: the
host for the build's loader model, or an unpacked root).
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import posixpath
import shutil
import stat as stat_mod
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, Protocol

from portable_service.errors import ImageError, ToolError
from portable_service.fs.errors import NotInImage, squashfs_errors
from portable_service.fs.tree import Entry, ImageTree, Kind

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from portable_service.squashfs import reader as squashfs_reader

_TYPE_CHAR = {"dir": "d", "file": "-", "symlink": "l", "chardev": "c", "blockdev": "b",
              "fifo": "p", "socket": "s"}
MAX_LINKS = 40  # as the kernel and ld.so: a longer chain counts as a loop


@dataclass(frozen=True)
class Stat:
    kind: str  # dir, file, symlink, chardev, blockdev, fifo or socket
    mode: int  # permission bits (0o7777)
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0
    inode: int = 0
    nlink: int = 1
    target: str | None = None

    def mode_string(self) -> str:
        """``ls -l`` style, e.g. ``drwxr-xr-x`` or ``-rwsr-xr-x``."""
        return _TYPE_CHAR.get(self.kind, "?") + stat_mod.filemode(self.mode)[1:]


class ImageFS(Protocol):
    """What the read-only commands need from an image. Paths are absolute image paths."""

    def stat(self, path: str) -> Stat:
        """The entry itself; the last component is not followed if it is a symlink."""

    def listdir(self, path: str) -> list[str]:
        """Names in a folder, sorted byte-wise."""

    def walk(self) -> Iterator[tuple[str, Stat]]:
        """Every path, "/" first, depth-first, sorted."""

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        """Bytes of a regular file."""

    def readlink(self, path: str) -> str:
        """A symlink's target as stored."""


@dataclass(frozen=True)
class ImageInfo:
    """Facts about the container of the files, for ``inspect``."""

    format: str  # "squashfs 4.0" or "image tree (not written)"
    compressor: str | None = None
    block_size: int | None = None
    file_size: int | None = None  # bytes of the image file
    bytes_used: int | None = None
    mkfs_time: int | None = None


# -- the in-memory tree of a build


class TreeFS:
    """An :class:`ImageTree` seen as an image: owners root, times the build's fixed time."""

    def __init__(self, tree: ImageTree, mtime: int = 0) -> None:
        self.tree = tree
        self.mtime = mtime
        self.info = ImageInfo(format="image tree (not written)")

    def _entry(self, path: str) -> Entry:
        entry = self.tree.get(PurePosixPath(path))
        if entry is None:
            raise NotInImage(f"{path}: no such file in the image", "check the path")
        return entry

    def stat(self, path: str) -> Stat:
        e = self._entry(path)
        kind = {Kind.DIR: "dir", Kind.FILE: "file", Kind.SYMLINK: "symlink"}[e.kind]
        # a folder's link count would need its children (a scan of the tree): not worth it here
        nlink = 2 if e.kind is Kind.DIR else 1
        return Stat(kind, e.mode, size=e.size, mtime=self.mtime, nlink=nlink, target=e.target)

    def listdir(self, path: str) -> list[str]:
        e = self._entry(path)
        if e.kind is not Kind.DIR:
            raise ImageError(f"{path} is not a folder", "give a folder")
        return [c.path.name for c in self.tree.children(e.path)]

    def walk(self) -> Iterator[tuple[str, Stat]]:
        for entry in self.tree:
            yield str(entry.path), self.stat(str(entry.path))

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        e = self._entry(path)
        if e.kind is not Kind.FILE:
            raise ImageError(f"{path} is not a regular file", "give a file")
        with e.open() as f:
            f.seek(offset)
            return f.read() if size is None else f.read(size)

    def readlink(self, path: str) -> str:
        e = self._entry(path)
        if e.kind is not Kind.SYMLINK:
            raise ImageError(f"{path} is not a symlink", "give a symlink")
        return e.target or ""

    def close(self) -> None:
        pass


# -- a folder of this machine (the host, or an unpacked root)


class HostFS:
    """The files below ``root`` (``/``: the host itself) seen as an image.

    ``mapping`` turns an image path into the host path that provides it
    (a build's contents placed with { source, target }); without it image
    path P is ``root``/P. Symlinks are reported as stored, so :func:`resolve`
    follows absolute ones against the image root, as in the image.
    """

    def __init__(self, root: Path | str = "/", mapping: Callable[[str], str] | None = None) -> None:
        self.root = os.path.abspath(root)
        self.mapping = mapping
        self.info = ImageInfo(format=f"folder {self.root}")
        # on the host itself the kernel resolves paths as the image's loader would
        self.is_host = self.root == "/" and mapping is None

    def host_path(self, path: str) -> str:
        mapped = self.mapping(path) if self.mapping is not None else path
        return mapped if self.root == "/" else self.root + "/" + mapped.lstrip("/")

    def stat(self, path: str) -> Stat:
        try:
            st = os.lstat(self.host_path(path))
        except OSError:  # absent, below a file, or unreadable: nothing the loader could open
            raise NotInImage(f"{path}: no such file in {self.root}", "check the path") from None
        kind = _HOST_KINDS.get(stat_mod.S_IFMT(st.st_mode), "file")
        target = os.readlink(self.host_path(path)) if kind == "symlink" else None
        return Stat(kind, stat_mod.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size,
                    int(st.st_mtime), st.st_ino, st.st_nlink, target)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self.host_path(path)), key=os.fsencode)
        except OSError as e:
            raise ImageError(f"cannot list {path}: {e.strerror}", "give a folder") from None

    def walk(self) -> Iterator[tuple[str, Stat]]:
        stack = ["/"]
        while stack:
            path = stack.pop()
            st = self.stat(path)
            yield path, st
            if st.kind == "dir":
                stack.extend(posixpath.join(path, n) for n in reversed(self.listdir(path)))

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        with open(self.host_path(path), "rb") as f:
            f.seek(offset)
            return f.read() if size is None else f.read(size)

    def readlink(self, path: str) -> str:
        return os.readlink(self.host_path(path))

    def close(self) -> None:
        pass


_HOST_KINDS = {stat_mod.S_IFDIR: "dir", stat_mod.S_IFREG: "file", stat_mod.S_IFLNK: "symlink",
               stat_mod.S_IFCHR: "chardev", stat_mod.S_IFBLK: "blockdev", stat_mod.S_IFIFO: "fifo",
               stat_mod.S_IFSOCK: "socket"}


# -- a squashfs image file, through the pure-Python reader


class SquashfsFS:
    """A squashfs image file read without root or mounting."""

    def __init__(self, path: Path, offset: int = 0, length: int | None = None,
                 container: str = "") -> None:
        from portable_service.squashfs.reader import SquashfsImage

        self.path = path
        with squashfs_errors():
            self._image = SquashfsImage(path, offset, length)
        sb = self._image.superblock
        version = getattr(sb, "version", (4, 0))
        if isinstance(version, tuple):
            version = ".".join(map(str, version))
        self.info = ImageInfo(
            format=f"{container}squashfs {version}",
            compressor=sb.compressor,
            block_size=sb.block_size,
            file_size=path.stat().st_size,
            bytes_used=sb.bytes_used,
            mkfs_time=sb.mkfs_time,
        )

    @property
    def image(self) -> squashfs_reader.SquashfsImage:
        """The squashfs reader itself (block-level access, for diff: map its errors with
        :func:`~portable_service.fs.errors.squashfs_errors`)."""
        return self._image

    # every call into the reader maps its errors to the application's
    def stat(self, path: str) -> Stat:
        with squashfs_errors():
            return _convert(self._image.stat(path))

    def listdir(self, path: str) -> list[str]:
        with squashfs_errors():
            return list(self._image.listdir(path))

    def walk(self) -> Iterator[tuple[str, Stat]]:
        with squashfs_errors():
            # the reader builds our Stat directly (same fields, same order): one record
            # per entry instead of two
            yield from self._image.walk_as(_stat_record)

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        with squashfs_errors():
            return self._image.read(path, offset, size)

    def readlink(self, path: str) -> str:
        with squashfs_errors():
            return self._image.readlink(path)

    def stream(self, path: str) -> Iterator[bytes]:
        """A file's bytes in order, decoded ahead on every core (for ``cat``); a missing
        path or a folder fails at the first ``next``."""
        with squashfs_errors():
            yield from self._image.stream(path)

    def close(self) -> None:
        self._image.close()


def _stat_record(kind: str, mode: int, uid: int, gid: int, size: int, mtime: int, inode: int,
                 nlink: int, target: str | None) -> Stat:
    """``Stat(...)`` for a walk of tens of thousands of entries: a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, twice the cost of
    giving the new record its attribute dict at once. Same fields, same object."""
    st = _new(Stat)
    _setattr(st, "__dict__", {"kind": kind, "mode": mode, "uid": uid, "gid": gid, "size": size,
                              "mtime": mtime, "inode": inode, "nlink": nlink, "target": target})
    return st


_new, _setattr = object.__new__, object.__setattr__


def _convert(st: squashfs_reader.Stat) -> Stat:
    return _stat_record(st.kind, st.mode & 0o7777, st.uid, st.gid, st.size, st.mtime, st.inode,
                        st.nlink, st.target)


def open_image(path: str | Path) -> SquashfsFS | HostFS:
    """Open an image file; every way it can fail is one :class:`ImageError` (exit 2)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageError(f"{p} does not exist", "give the path of a .raw image") from None
    except OSError as e:
        raise ImageError(f"cannot read {p}: {e.strerror}", "check the path and its permissions") \
            from None
    if stat_mod.S_ISDIR(st.st_mode):
        raise ImageError(f"{p} is a folder, not an image file",
                         "give a squashfs .raw file (directory images are not read by this tool)")
    if not os.access(p, os.R_OK):
        raise ImageError(f"cannot read {p}: permission denied", "check its permissions")
    opened = open_disk_or_erofs(p)
    if opened is not None:
        return opened
    other = _other_format(p)
    if other is not None:
        raise ImageError(f"{p} is {other}; this tool reads bare squashfs images only",
                         "use portablectl inspect for it, or extract its root file system")
    try:
        return SquashfsFS(p)
    except ImageError as e:
        raise ImageError(f"{p}: {e.message}", e.hint or "is it a squashfs image?") from None
    except OSError as e:
        raise ImageError(f"cannot read {p}: {e.strerror or e}", "check the file") from None


def _other_format(path: Path) -> str | None:
    """Name the other image formats portabled accepts, for a clearer refusal."""
    try:
        with open(path, "rb") as f:
            head = f.read(2048)
    except OSError:
        return None
    if head[512:520] == b"EFI PART":
        return "a GPT disk image (a Discoverable Disk Image, as mkosi makes by default)"
    if head[1024:1028] == b"\xe2\xe1\xf5\xe0":
        return "an erofs image"
    if head[1080:1082] == b"\x53\xef":
        return "an ext2/3/4 image"
    return None


# -- path resolution inside the image


def resolve(fs: ImageFS, path: str, follow_last: bool = True) -> str | None:
    """Follow symlinks inside the image, absolute ones against the image root.

    Returns the final path, or None when it dangles, loops or runs through a
    non-folder. This is how systemd and the loader see paths in the unit's root.
    """
    parts = [p for p in path.split("/") if p]
    current = "/"
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = posixpath.dirname(current) or "/"
            continue
        candidate = current + part if current == "/" else current + "/" + part
        try:
            st = fs.stat(candidate)
        except FileNotFoundError:
            return None
        if st.kind == "symlink" and (parts or follow_last):
            links += 1
            if links > MAX_LINKS:
                return None
            target = st.target if st.target is not None else fs.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            parts = [p for p in target.split("/") if p] + parts
            continue
        if parts and st.kind != "dir":
            return None
        current = candidate
    return current


def stat_resolved(fs: ImageFS, path: str) -> tuple[str, Stat] | None:
    """The path symlinks lead to and its stat, or None when nothing is there."""
    real = resolve(fs, path)
    if real is None:
        return None
    try:
        return real, fs.stat(real)
    except FileNotFoundError:
        return None


def exists(fs: ImageFS, path: str) -> bool:
    try:
        fs.stat(path)
    except FileNotFoundError:
        return False
    return True


def read_bytes(fs: ImageFS, path: str, limit: int = 1 << 20) -> bytes | None:
    """A small file, symlinks followed; None when absent or not a file."""
    found = stat_resolved(fs, path)
    if found is None or found[1].kind != "file":
        return None
    return fs.read(found[0], 0, limit)


def read_text(fs: ImageFS, path: str, limit: int = 1 << 20) -> str | None:
    """A small text file, symlinks followed; None when absent or not a file."""
    data = read_bytes(fs, path, limit)
    return None if data is None else data.decode("utf-8", "replace")


class ImageFile(io.RawIOBase):
    """A seekable stream over one file of the image (what pyelftools needs).

    Reads whole aligned chunks (the image's block size) and keeps the last few:
    a parser jumping between headers, tables and strings then decompresses each
    block once instead of once per jump.
    """

    def __init__(self, fs: ImageFS, path: str, size: int, chunk: int = 128 << 10,
                 keep: int = 4) -> None:
        self.fs, self.path, self.size, self.pos = fs, path, size, 0
        self.chunk, self.keep = max(4096, chunk), keep
        self._chunks: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def _chunk(self, index: int) -> bytes:
        data = self._chunks.pop(index, None)
        if data is None:
            start = index * self.chunk
            data = self.fs.read(self.path, start, min(self.chunk, self.size - start))
            if len(self._chunks) >= self.keep:
                del self._chunks[next(iter(self._chunks))]
        self._chunks[index] = data  # most recently used last
        return data

    def readinto(self, buffer: WriteableBuffer) -> int:
        # any writable buffer, counted in bytes; released before the caller resizes it
        with memoryview(buffer) as view, view.cast("B") as out:
            want = min(len(out), max(0, self.size - self.pos))
            done = 0
            while done < want:
                index, skip = divmod(self.pos, self.chunk)
                piece = self._chunk(index)[skip: skip + want - done]
                if not piece:
                    break
                out[done: done + len(piece)] = piece
                done += len(piece)
                self.pos += len(piece)
        return done


def open_file(fs: ImageFS, path: str, size: int) -> BinaryIO:
    """A seekable reader of one image file, chunked by the image's block size."""
    info = getattr(fs, "info", None)
    chunk = info.block_size if info is not None and info.block_size else 128 << 10
    # the C buffer serves a parser's many tiny reads; the chunks spare re-decompression
    return io.BufferedReader(ImageFile(fs, path, size, chunk), buffer_size=16 << 10)


class IndexedFS:
    """Any ImageFS with its whole listing held in memory: stat and listdir without I/O.

    verify and diff resolve many paths; one walk up front is cheaper than a
    directory lookup per path component.
    """

    def __init__(self, fs: ImageFS) -> None:
        self.fs = fs
        self.info: ImageInfo | None = getattr(fs, "info", None)
        self.entries: dict[str, Stat] = {}
        self._children: dict[str, list[str]] = {}
        entries, children = self.entries, self._children
        with _gc_paused():
            for path, st in fs.walk():
                entries[path] = st
                if path != "/":
                    folder, _, name = path.rpartition("/")
                    children.setdefault(folder or "/", []).append(name)

    def stat(self, path: str) -> Stat:
        # the keys are normal paths: most lookups hit without normalizing
        st = self.entries.get(path)
        if st is None:
            st = self.entries.get(_norm(path))
        if st is None:
            raise NotInImage(f"{path}: no such file in the image", "check the path")
        return st

    def listdir(self, path: str) -> list[str]:
        st = self.stat(path)
        if st.kind != "dir":
            raise ImageError(f"{path} is not a folder", "give a folder")
        return list(self._children.get(_norm(path), []))

    def walk(self) -> Iterator[tuple[str, Stat]]:
        yield from self.entries.items()

    def read(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        return self.fs.read(_norm(path), offset, size)

    def readlink(self, path: str) -> str:
        st = self.stat(path)
        if st.target is not None:
            return st.target
        return self.fs.readlink(_norm(path))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while an index of records, which hold no cycles, is
    built: each collection would scan every record made so far."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _norm(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/")) if path not in ("", "/") else "/"


# -- images that are not a bare squashfs: a GPT Discoverable Disk Image, an erofs file system


def open_disk_or_erofs(path: Path) -> SquashfsFS | HostFS | None:
    """The file system inside ``path`` when it is a DDI or erofs; None for anything else."""
    from portable_service.disk import ddi, gpt

    with open(path, "rb") as f:
        head = f.read(2048)
    if gpt.is_gpt(head):
        found = ddi.find_root(path)
        root = found.root
        label = f"DDI (GPT), root partition {root.name or found.arch}"
        if found.verity is not None:
            label += " + verity" + (" + signature" if found.signature is not None else "")
        if found.filesystem == "squashfs":
            try:
                return SquashfsFS(path, root.offset, root.size, container=f"{label}: ")
            except ImageError as e:  # the bytes the reader saw are the partition's
                raise ImageError(f"{path}: the squashfs in root partition {root.name} cannot be "
                                 f"read: {e.message}", e.hint or "is the image damaged?") from None
        if found.filesystem == "erofs":
            return ErofsFS(path, root.offset, root.size, container=f"{label}: ")
        raise ImageError(f"{path}: the root partition holds neither squashfs nor erofs",
                         "portable-service reads squashfs and erofs root partitions only")
    if ddi.filesystem_kind(head) == "erofs":
        return ErofsFS(path)
    return None


class ErofsFS(HostFS):
    """An erofs image unpacked with ``fsck.erofs --extract`` into a private folder.

    Owners are what fsck.erofs could restore: the image's when run as root, else the
    caller's (only ``ls -l`` and ``diff`` show owners; modes, links and bytes are exact).
    """

    def __init__(self, path: Path, offset: int = 0, length: int | None = None,
                 container: str = "") -> None:
        from portable_service.run import find_tool, run

        try:
            tool = find_tool("fsck.erofs", reason="to read an erofs image")
        except ToolError as e:
            raise ImageError(f"{path}: erofs is not readable by portable-service without "
                             "fsck.erofs", e.hint or "install erofs-utils, or mount it") from None
        self._work = Path(tempfile.mkdtemp(prefix="portable-service-erofs."))
        try:
            image = path
            if offset or length is not None:
                image = self._work / "partition"
                _copy_range(path, image, offset, length)
            tree = self._work / "root"
            proc = run([tool, f"--extract={tree}", image], check=False)
            if proc.returncode != 0:
                from portable_service.run import tool_message

                raise ImageError(f"{path}: fsck.erofs cannot read this erofs file system: "
                                 f"{tool_message(proc)}", "is the image damaged?")
            if image != path:
                image.unlink()
        except BaseException:
            shutil.rmtree(self._work, ignore_errors=True)
            raise
        super().__init__(tree)
        superblock = _erofs_superblock(path, offset)
        self.info = ImageInfo(format=f"{container}erofs (read by unpacking with fsck.erofs)",
                              compressor=superblock.compressor,
                              block_size=superblock.block_size,
                              file_size=path.stat().st_size,
                              mkfs_time=superblock.build_time)

    def close(self) -> None:
        shutil.rmtree(self._work, ignore_errors=True)


def _copy_range(src: Path, dst: Path, offset: int, length: int | None) -> None:
    with open(src, "rb") as f, open(dst, "wb") as out:
        f.seek(offset)
        left = length if length is not None else -1
        while left:
            chunk = f.read(1 << 20 if left < 0 else min(1 << 20, left))
            if not chunk:
                break
            out.write(chunk)
            if left > 0:
                left -= len(chunk)


# the erofs on-disk superblock at byte 1024 (linux fs/erofs/erofs_fs.h)
_ALGORITHMS = {0: "lz4", 1: "lzma", 2: "deflate", 3: "zstd"}


@dataclass(frozen=True)
class ErofsSuperblock:
    block_size: int | None = None
    build_time: int | None = None
    compressor: str | None = None


def _erofs_superblock(path: Path, offset: int) -> ErofsSuperblock:

    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(offset + 1024)
        sb = f.read(128)
        if len(sb) == 128:
            blkszbits = sb[12]
            build_time = struct.unpack_from("<Q", sb, 24)[0]
            feature_incompat = struct.unpack_from("<I", sb, 80)[0]
            algs = struct.unpack_from("<H", sb, 84)[0]
            compressor: str | None = None
            # bit 0 of feature_incompat: "lz4_0padding"; bit 1: compr_cfgs (available algs)
            if feature_incompat & 0x2:
                names = [n for b, n in _ALGORITHMS.items() if algs & (1 << b)]
                compressor = ",".join(names) or None
            elif feature_incompat & 0x1:
                compressor = "lz4"
            return ErofsSuperblock(1 << blkszbits, build_time, compressor)
    return ErofsSuperblock()
