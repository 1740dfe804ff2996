"""The loader, stated once: glibc's ld.so finding an object's libraries, over any file system.

The build (over the host, :class:`ElfResolver`) and ``verify`` (over the image,
:mod:`portable_service.look.elfcheck`) both use :class:`Loader`. The search for a library NAME needed by
object O follows elf/dl-load.c ``_dl_map_object``:

0. a NAME that an object already loaded answers to (the name it was loaded by,
   or its DT_SONAME; ld.so itself by its PT_INTERP path and soname) is that
   object: the load goes breadth first from the program, as the loader's does;
1. a NAME with a ``/`` is opened as it is (after $ORIGIN and co.);
2. unless O has DT_RUNPATH: the DT_RPATH of O, then of the object that loaded
   O, and so on up to the executable (whose DT_RPATH is dropped when it has a
   DT_RUNPATH);
3. (LD_LIBRARY_PATH: not set for services, so not followed);
4. the DT_RUNPATH of O only;
5. ``/etc/ld.so.cache`` of that file system (with ``-z nodefaultlib``, no
   entry from the system folders);
6. the default folders (Debian: ``/lib/TRIPLET /usr/lib/TRIPLET /lib /usr/lib``),
   unless O is linked with ``-z nodefaultlib``.

In each folder the loader tries the ``glibc-hwcaps/*`` subfolders this CPU
supports, best first (glibc >= 2.33), then the folder. An image may run on
another CPU, so every variant that exists is shipped beside the one the loader
opens here. Files of the wrong ELF class or machine are passed over. $ORIGIN
is the folder the object was opened from (the program's real folder), $LIB
the multiarch folder, $PLATFORM what this CPU's loader substitutes. One file
is loaded once, whatever names lead to it. Not modelled: the legacy hwcaps
subfolders of glibc < 2.37 (``tls``, ``haswell``...) come after the folder
itself here (they are shipped), and a cache's hwcaps entries are not used.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import stat
import struct
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment, DynamicTag
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE
from elftools.elf.segments import InterpSegment

from portable_service.builder.closure import Context, Node, in_nix_store, is_link, ldcache, lstat_of
from portable_service.errors import PortableServiceError, ToolError
from portable_service.fs.views import HostFS, ImageFS, open_file, read_bytes, resolve
from portable_service.run import run

ELF_MAGIC = b"\x7fELF"
DF_1_NODEFLIB = 0x800
EM_386, EM_ARM, EM_X86_64, EM_AARCH64, EM_RISCV = 3, 40, 62, 183, 243
# (class bits, e_machine) -> Debian multiarch triplet, the AT_PLATFORM string, the loader
ARCHES: dict[tuple[int, int], tuple[str, str, str]] = {
    (64, EM_X86_64): ("x86_64-linux-gnu", "x86_64", "/lib64/ld-linux-x86-64.so.2"),
    (32, EM_386): ("i386-linux-gnu", "i686", "/lib/ld-linux.so.2"),
    (64, EM_AARCH64): ("aarch64-linux-gnu", "aarch64", "/lib/ld-linux-aarch64.so.1"),
    (32, EM_ARM): ("arm-linux-gnueabihf", "v7l", "/lib/ld-linux-armhf.so.3"),
    (64, EM_RISCV): ("riscv64-linux-gnu", "riscv64", "/lib/ld-linux-riscv64-lp64d.so.1"),
}
# a token is $NAME followed by / or the end, or ${NAME} (elf/dl-load.c is_dst)
_DST = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?=/|$))")


@dataclass(frozen=True)
class ElfInfo:
    """What the loader reads from one ELF file."""

    bits: int  # 32 or 64
    machine: int  # e_machine
    interp: str | None = None
    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    soname: str | None = None
    nodeflib: bool = False

    @property
    def kind(self) -> tuple[int, int]:
        return (self.bits, self.machine)


def elf_kind(path: Path | str) -> tuple[int, int] | None:
    """(class bits, machine) from the first 20 bytes, or None for a file that is not ELF."""
    try:
        with open(path, "rb") as f:
            return header_kind(f.read(20))
    except OSError:
        return None


class NotElf(Exception):
    """The file looked like ELF but its headers cannot be read."""


def read_elf(path: Path | str) -> ElfInfo | None:
    """The loader's view of ``path``; None when it is not an ELF file.

    The loader reads only the program headers, the PT_INTERP string and the
    PT_DYNAMIC entries (with DT_STRTAB found through the PT_LOAD mappings), so
    that is all :func:`read_dynamic` reads, with every offset bounded: it is
    several times faster than a full parse. Anything it does not expect
    (section-header-only files, PN_XNUM, a string table outside every
    segment) goes to pyelftools, which is also the reference the tests
    compare it with.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; pyelftools reads lazily
    except OSError:
        return None
    with f:
        if f.read(4) != ELF_MAGIC:
            return None
        try:
            return read_dynamic(f)
        except _Unusual:
            pass
        return read_with_pyelftools(f)


def read_with_pyelftools(f: BinaryIO) -> ElfInfo:
    f.seek(0)
    try:
        return _parse(ELFFile(f))
    except (ELFError, struct.error, ValueError, IndexError, KeyError, AttributeError) as e:
        raise NotElf(str(e) or type(e).__name__) from None


class _Unusual(Exception):
    """A layout the fast reader leaves to pyelftools."""


PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
DT_FLAGS_1 = 0x6FFFFFFB
# after e_ident: e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize e_phentsize e_phnum
_EHDR = {32: "HHIIIIIHHH", 64: "HHIQQQIHHH"}
# p_type, p_offset, p_vaddr, p_filesz (positions differ between the classes)
_PHDR = {32: ("IIIIIIII", 32, (0, 1, 2, 4)), 64: ("IIQQQQQQ", 56, (0, 2, 3, 5))}
_DYN = {32: ("ii", 8), 64: ("qQ", 16)}
_MAX_DYNAMIC = 1 << 20  # no real dynamic section or string table comes near this


def read_dynamic(f: BinaryIO) -> ElfInfo:
    """Program headers, PT_INTERP and PT_DYNAMIC of an open ELF file, read with struct."""
    f.seek(0)
    ident = f.read(16)
    if len(ident) < 16 or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise _Unusual
    bits = 32 if ident[4] == 1 else 64
    order = "<" if ident[5] == 1 else ">"
    ehdr = struct.Struct(order + _EHDR[bits])
    raw = f.read(ehdr.size)
    if len(raw) < ehdr.size:
        raise _Unusual
    _type, machine, _ver, _entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum = ehdr.unpack(raw)
    fmt, size, (i_type, i_off, i_vaddr, i_filesz) = _PHDR[bits]
    if phnum == 0xFFFF or phentsize != size or phnum > 256:
        raise _Unusual
    f.seek(phoff)
    table = f.read(size * phnum)
    if len(table) < size * phnum:
        raise _Unusual
    phdr = struct.Struct(order + fmt)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    interp = None
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        h = phdr.unpack_from(table, i * size)
        ptype, off, vaddr, filesz = h[i_type], h[i_off], h[i_vaddr], h[i_filesz]
        if ptype == PT_LOAD:
            loads.append((vaddr, off, filesz))
        elif ptype == PT_INTERP:
            interp = _read_at(f, off, min(filesz, 4096)).split(b"\0", 1)[0].decode(
                "utf-8", "surrogateescape")
        elif ptype == PT_DYNAMIC:
            dynamic = (off, filesz)
    if dynamic is None:
        return ElfInfo(bits, machine, interp)
    dfmt, dsize = _DYN[bits]
    data = _read_at(f, dynamic[0], min(dynamic[1], _MAX_DYNAMIC))
    entry = struct.Struct(order + dfmt)
    tags: list[tuple[int, int]] = []
    for i in range(len(data) // dsize):
        tag, val = entry.unpack_from(data, i * dsize)
        if tag == DT_NULL:
            break
        tags.append((tag, val))
    values = dict(tags)
    if DT_STRTAB not in values:
        raise _Unusual
    strtab_off = _file_offset(loads, values[DT_STRTAB])
    strings = _read_at(f, strtab_off, min(values.get(DT_STRSZ, _MAX_DYNAMIC), _MAX_DYNAMIC))

    def string(offset: int) -> str:
        end = strings.find(b"\0", offset)
        if offset >= len(strings) or end < 0:
            raise _Unusual
        return strings[offset:end].decode("utf-8", "surrogateescape")

    needed = tuple(string(v) for t, v in tags if t == DT_NEEDED)
    rpath = tuple(p for t, v in tags if t == DT_RPATH for p in string(v).split(":") if p)
    runpath = tuple(p for t, v in tags if t == DT_RUNPATH for p in string(v).split(":") if p)
    soname = string(values[DT_SONAME]) if DT_SONAME in values else None
    nodeflib = bool(values.get(DT_FLAGS_1, 0) & DF_1_NODEFLIB)
    return ElfInfo(bits, machine, interp, needed, rpath, runpath, soname, nodeflib)


def _file_offset(loads: list[tuple[int, int, int]], addr: int) -> int:
    for vaddr, off, filesz in loads:
        if vaddr <= addr < vaddr + filesz:
            return addr - vaddr + off
    raise _Unusual


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) < size:
        raise _Unusual
    return data


def _parse(elf: ELFFile) -> ElfInfo:
    bits, machine_no = elf.elfclass, _machine_number(elf["e_machine"])
    interp = None
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    soname = None
    nodeflib = False
    for seg in elf.iter_segments():
        # pyelftools makes every PT_INTERP an InterpSegment, every PT_DYNAMIC a DynamicSegment
        if isinstance(seg, InterpSegment):
            interp = seg.get_interp_name()
        elif isinstance(seg, DynamicSegment):
            for tag in seg.iter_tags():
                t = tag.entry.d_tag
                if t == "DT_NEEDED":
                    needed.append(_tag_string(tag))
                elif t == "DT_RPATH":
                    rpath.extend(p for p in _tag_string(tag).split(":") if p)
                elif t == "DT_RUNPATH":
                    runpath.extend(p for p in _tag_string(tag).split(":") if p)
                elif t == "DT_SONAME":
                    soname = _tag_string(tag)
                elif t == "DT_FLAGS_1":
                    nodeflib = bool(tag.entry.d_val & DF_1_NODEFLIB)
    return ElfInfo(bits, machine_no, interp, tuple(needed), tuple(rpath), tuple(runpath), soname, nodeflib)


def _tag_string(tag: DynamicTag) -> str:
    """The string of a DT_NEEDED, DT_RPATH, DT_RUNPATH or DT_SONAME tag.

    pyelftools stores it with setattr under the tag's name (``tag.needed``, ``tag.soname``),
    which its type hints do not declare.
    """
    value: str = getattr(tag, tag.entry.d_tag[3:].lower())
    return value


def _machine_number(machine: int | str) -> int:
    """e_machine as a number: pyelftools names the values it knows; the loader compares numbers."""
    if isinstance(machine, int):
        return machine
    return _MACHINES.get(machine, ENUM_E_MACHINE.get(machine, -1))


_MACHINES = {"EM_386": EM_386, "EM_ARM": EM_ARM, "EM_X86_64": EM_X86_64, "EM_AARCH64": EM_AARCH64,
             "EM_RISCV": EM_RISCV, "EM_PPC64": 21, "EM_S390": 22, "EM_PPC": 20, "EM_MIPS": 8,
             "EM_LOONGARCH": 258}


# -- how the kernel starts a file that is not ELF (fs/binfmt_script.c)

SHEBANG_MAX = 256  # BINPRM_BUF_SIZE: the kernel reads no more of the #! line


def parse_shebang(head: bytes) -> tuple[str, str | None] | None:
    """(interpreter, optional argument) of a ``#!`` line, as the kernel splits it.

    Only spaces and tabs separate: the kernel keeps a ``\r`` (so a DOS line end
    names an interpreter that does not exist), and everything after the
    interpreter is one argument. The build's script resolver and ``verify``
    both read the line here.
    """
    if not head.startswith(b"#!"):
        return None
    line = head[2:SHEBANG_MAX].split(b"\n", 1)[0].strip(b" \t")
    m = re.match(rb"([^ \t\0]+)[ \t]*(.*)", line, re.DOTALL)
    if m is None:
        return None
    interp, arg = (g.decode("utf-8", "surrogateescape") for g in m.groups())
    return interp, arg or None


# -- the search, over any file system: the host (build), a build's tree or an image (verify)


def expand_dst(entry: str, origin: str, lib: str, platform: str) -> str:
    """One RPATH/RUNPATH entry, or a DT_NEEDED name with a ``/``, as ld.so expands it.

    $ORIGIN, $LIB and $PLATFORM (braced or not) are substituted; an unknown
    ``$NAME`` stays as written (_dl_dst_substitute copies it). Nothing is
    normalised: ``..`` is taken by the kernel after the symlinks before it,
    and :class:`Files` resolves it the same way. A relative entry is relative
    to the working folder, ``/`` for a service.
    """
    def sub(m: re.Match[str]) -> str:
        token = m.group(1) or m.group(2)
        return origin if token == "ORIGIN" else lib if token == "LIB" else platform

    expanded = _DST.sub(sub, entry)
    if not expanded.startswith("/"):
        expanded = "/" + expanded
    return expanded.rstrip("/") or "/"


def shown(path: str) -> str:
    """A searched path as messages show it (the search itself keeps ``..`` as the kernel sees it)."""
    return posixpath.normpath(path)


def _join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


class Files:
    """What the loader reads from one file system, each fact read once.

    On the host itself (:class:`HostFS` at ``/`` without a mapping) the kernel
    resolves paths exactly as the image's loader will, so paths go to ``os``
    directly: that is what keeps the build's closure several times faster than
    ``ldd``. Anywhere else symlinks are followed inside the image
    (:func:`portable_service.fs.views.resolve`), absolute ones against its root.
    """

    def __init__(self, fs: ImageFS, warn: Callable[[str], None] | None = None) -> None:
        self.fs = fs
        self.warn = warn or (lambda message: None)
        self._host = fs if isinstance(fs, HostFS) else None
        self._kernel = isinstance(fs, HostFS) and fs.root == "/"
        self._real: dict[str, str | None] = {}
        self._ident: dict[str, str | None] = {}
        self._names: dict[str, frozenset[str]] = {}
        self._kinds: dict[str, tuple[int, int] | None] = {}
        self._infos: dict[str, ElfInfo | None] = {}

    def real(self, path: str) -> str | None:
        """``path`` with every symlink and ``..`` resolved in the image; None when nothing is there."""
        if path not in self._real:
            if self._host is not None and self._host.is_host:
                real = os.path.realpath(path)
                self._real[path] = real if os.path.lexists(real) else None
            else:
                self._real[path] = resolve(self.fs, path)
        return self._real[path]

    def _os_path(self, path: str) -> str | None:
        """The path ``os`` can open for an image path (HostFS only)."""
        assert self._host is not None
        if self._kernel:
            return self._host.host_path(path)
        real = self.real(path)
        return None if real is None else self._host.host_path(real)

    def ident(self, path: str) -> str | None:
        """Which file ``path`` is (the loader compares device and inode: one file loads once)."""
        if path not in self._ident:
            if self._kernel:
                host = self._os_path(path)
                self._ident[path] = os.path.realpath(host) if host else None
            else:
                self._ident[path] = self.real(path)
        return self._ident[path]

    def names(self, folder: str) -> frozenset[str]:
        got = self._names.get(folder)
        if got is None:
            got = frozenset()
            try:
                if self._host is not None:
                    host = self._os_path(folder)
                    if host is not None:
                        got = frozenset(os.listdir(host))
                else:
                    real = self.real(folder)
                    if real is not None and self.fs.stat(real).kind == "dir":
                        got = frozenset(self.fs.listdir(real))
            except (OSError, PortableServiceError):
                pass
            self._names[folder] = got
        return got

    def kind(self, path: str) -> tuple[int, int] | None:
        """(class bits, machine) of the regular file at ``path``; None for anything else."""
        if path not in self._kinds:
            self._kinds[path] = header_kind(self.read(path, 20) or b"")
        return self._kinds[path]

    def read(self, path: str, limit: int) -> bytes | None:
        """The first ``limit`` bytes of a regular file, symlinks followed; None when there is none."""
        try:
            if self._host is not None:
                host = self._os_path(path)
                if host is None or not os.path.isfile(host):
                    return None
                # os.open: no buffered file object for a few header bytes, asked of every file
                fd = os.open(host, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    return os.read(fd, limit)
                finally:
                    os.close(fd)
            return read_bytes(self.fs, path, limit)
        except (OSError, PortableServiceError):
            return None

    def info(self, path: str) -> ElfInfo | None:
        """The loader's view of the ELF file at ``path``; None when it is not one (or unreadable)."""
        key = self.ident(path)
        if key is None:
            return None
        if key not in self._infos:
            try:
                self._infos[key] = self._read_info(path)
            except NotElf as e:
                self.warn(f"{path} starts like an ELF file but cannot be read ({e}); "
                          "its libraries are not followed")
                self._infos[key] = None
        return self._infos[key]

    def _read_info(self, path: str) -> ElfInfo | None:
        if self._host is not None:
            host = self._os_path(path)
            return read_elf(host) if host is not None and os.path.isfile(host) else None
        real = self.real(path)
        if real is None:
            return None
        st = self.fs.stat(real)
        if st.kind != "file":
            return None
        with open_file(self.fs, real, st.size) as f:
            if f.read(4) != ELF_MAGIC:
                return None
            try:
                return read_dynamic(f)
            except _Unusual:
                return read_with_pyelftools(f)


def header_kind(head: bytes) -> tuple[int, int] | None:
    """(class bits, machine) from an ELF header's first 20 bytes; None for anything else."""
    if len(head) < 20 or not head.startswith(ELF_MAGIC) or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    order = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack_from(order + "H", head, 18)
    return (32 if head[4] == 1 else 64, machine)


@dataclass(frozen=True)
class HostLoader:
    """What this machine's loader says of this CPU (``ld.so --help``, glibc >= 2.33)."""

    hwcaps: tuple[str, ...] = ()  # glibc-hwcaps subfolders it searches, best first
    platform: str | None = None  # AT_PLATFORM as the loader uses it for $PLATFORM (glibc < 2.37)


@functools.cache
def host_loader() -> HostLoader:
    arch = host_arch()
    if arch is None or not os.path.exists(arch[2]):
        return HostLoader()
    try:
        out = run([arch[2], "--help"], check=False, timeout=30).stdout.decode("utf-8", "replace")
    except ToolError:
        return HostLoader()
    hwcaps: list[str] = []
    platform = None
    section = ""
    for line in out.splitlines():
        if not line.startswith(" "):
            section = line
            continue
        word, _, rest = line.strip().partition(" ")
        if section.startswith("Subdirectories of glibc-hwcaps") and "supported" in rest:
            hwcaps.append(word)
        elif "AT_PLATFORM" in rest:
            platform = word
    return HostLoader(tuple(hwcaps), platform)


def host_arch() -> tuple[str, str, str] | None:
    machine = os.uname().machine
    for triplet, platform, interp in ARCHES.values():
        if triplet.startswith(machine) or platform == machine:
            return triplet, platform, interp
    return None


class LoaderConfig:
    """One loader's fixed facts: its ld.so.cache, default folders, $LIB, $PLATFORM, hwcaps.

    Read from the file system it runs on: the host for a build, the image for
    verify. The CPU is this machine's (the image is tried and verified here);
    glibc-hwcaps subfolders count when that file system's loader knows them.
    """

    def __init__(self, files: Files, host: HostLoader | None = None) -> None:
        self.files = files
        host = host or host_loader()
        fs = files.fs
        if isinstance(fs, HostFS) and fs.root == "/" and fs.host_path(IMAGE_LD_CACHE) == IMAGE_LD_CACHE:
            entries = ldcache.read()  # the host's own (ldcache.HOST_CACHE)
        else:  # an image's, or the one the spec's contents place at /etc/ld.so.cache
            data = files.read(IMAGE_LD_CACHE, 64 << 20)
            try:
                entries = ldcache.parse(data, f"{IMAGE_LD_CACHE}") if data else []
            except PortableServiceError:
                entries = []  # ld.so ignores a cache it cannot read
        self.cache = ldcache.lookup_table(entries)
        self.host_machine = os.uname().machine
        if isinstance(fs, HostFS) and fs.root == "/":
            self.hwcaps = host.hwcaps  # the build runs the host's loader: it said what it searches
        else:
            arch = host_arch()
            interp = files.read(arch[2], 8 << 20) if arch else None
            # the loader of glibc >= 2.33 names the subfolders it searches; older ones have none
            self.hwcaps = host.hwcaps if interp and b"glibc-hwcaps" in interp else ()
        self.host_platform = host.platform

    @classmethod
    def from_host(cls) -> LoaderConfig:
        return cls(Files(HostFS()))

    def triplet(self, kind: tuple[int, int]) -> str | None:
        arch = ARCHES.get(kind)
        return arch[0] if arch else None

    def platform(self, kind: tuple[int, int]) -> str:
        arch = ARCHES.get(kind)
        if arch and arch[0].startswith(self.host_machine):
            return self.host_platform or self.host_machine
        return arch[1] if arch else self.host_machine

    def multiarch(self, kind: tuple[int, int]) -> bool:
        triplet = self.triplet(kind)
        return bool(triplet) and self.files.real(f"/usr/lib/{triplet}") is not None

    def lib(self, kind: tuple[int, int]) -> str:
        if self.multiarch(kind):
            return f"lib/{self.triplet(kind)}"  # Debian's multiarch $LIB
        return "lib64" if kind[0] == 64 and self.files.real("/usr/lib64") is not None else "lib"

    def default_dirs(self, kind: tuple[int, int]) -> tuple[str, ...]:
        if self.multiarch(kind):
            triplet = self.triplet(kind)
            return (f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib")
        if kind[0] == 64:
            return ("/lib64", "/usr/lib64")
        return ("/lib", "/usr/lib")


IMAGE_LD_CACHE = "/etc/ld.so.cache"


@dataclass(frozen=True)
class Found:
    """Where a library was found: the file the loader opens on this CPU, then variants for others."""

    paths: tuple[str, ...]
    via: str  # "RPATH", "RUNPATH", "ld.so.cache", "default folder", "path"


@dataclass(frozen=True)
class Loaded:
    """An object in a load: its path as the loader opened it, and the RPATH chain it searches."""

    path: str
    info: ElfInfo
    origin: str  # $ORIGIN: the folder of path, as opened (the program's: its real folder)
    chain: tuple[str, ...]  # DT_RPATH folders: its own, then its loader's, up to the program


@dataclass(frozen=True)
class Lookup:
    """One DT_NEEDED name searched for one object."""

    needer: str
    name: str
    found: Found | None
    searched: tuple[str, ...]  # the folders tried, for messages


@dataclass(frozen=True)
class Load:
    """What loading one object (a program, or a library on its own) brings in."""

    root: str
    lookups: tuple[Lookup, ...]
    objects: frozenset[str]  # identities (Files.ident) of every object loaded, the root included


class Loader:
    """glibc's ld.so (elf/dl-load.c ``_dl_map_object``) over one file system."""

    def __init__(self, files: Files, config: LoaderConfig | None = None) -> None:
        self.files = files
        self.config = config or LoaderConfig(files)
        self._found: dict[tuple[str, str, tuple[str, ...]], tuple[Found | None, tuple[str, ...]]] = {}

    def expand(self, entries: Sequence[str], origin: str, kind: tuple[int, int]) -> tuple[str, ...]:
        lib, platform = self.config.lib(kind), self.config.platform(kind)
        return tuple(expand_dst(e, origin, lib, platform) for e in entries)

    def _has(self, path: str, kind: tuple[int, int]) -> bool:
        folder, name = path.rsplit("/", 1)
        return name in self.files.names(folder or "/") and self.files.kind(path) == kind

    def in_folder(self, folder: str, name: str, kind: tuple[int, int]) -> tuple[str, ...]:
        """The file the loader opens in one search folder on this CPU, then the variants
        for other CPUs (shipped too: the image may run elsewhere); () when it opens none."""
        names = self.files.names(folder)
        if not names:
            return ()
        opened: list[str] = []
        others: list[str] = []
        if "glibc-hwcaps" in names:
            hw = _join(folder, "glibc-hwcaps")
            present = self.files.names(hw)
            for sub in self.config.hwcaps:  # best first
                if sub in present and self._has(f"{hw}/{sub}/{name}", kind):
                    opened.append(f"{hw}/{sub}/{name}")
                    break
            others += [f"{hw}/{sub}/{name}" for sub in sorted(present, reverse=True)
                       if f"{hw}/{sub}/{name}" not in opened and self._has(f"{hw}/{sub}/{name}", kind)]
        plain = _join(folder, name)
        if name in names and self.files.kind(plain) == kind:
            (others if opened else opened).append(plain)
        # the legacy subfolders of glibc < 2.37 (tls, the platform): shipped, not modelled first
        platform = self.config.platform(kind)
        for sub in (f"tls/{platform}", "tls", platform):
            if sub.split("/")[0] in names and self._has(f"{_join(folder, sub)}/{name}", kind):
                (others if opened else opened).append(f"{_join(folder, sub)}/{name}")
        return tuple(opened + others)

    def find(self, name: str, obj: Loaded) -> tuple[Found | None, tuple[str, ...]]:
        """Where ``name``, needed by ``obj``, is loaded from, and the folders searched."""
        key = (name, obj.path, obj.chain)
        got = self._found.get(key)
        if got is None:
            got = self._found[key] = self._search(name, obj)
        return got

    def _search(self, name: str, obj: Loaded) -> tuple[Found | None, tuple[str, ...]]:
        info, kind = obj.info, obj.info.kind
        if "/" in name:
            path = expand_dst(name, obj.origin, self.config.lib(kind), self.config.platform(kind))
            return (Found((path,), "path") if self.files.kind(path) == kind else None), (path,)
        searched: list[str] = []
        steps: list[tuple[str, Sequence[str]]] = []
        if not info.runpath:  # an object with DT_RUNPATH ignores every DT_RPATH
            steps.append(("RPATH", obj.chain))
        # (LD_LIBRARY_PATH: a service does not have it)
        steps.append(("RUNPATH", self.expand(info.runpath, obj.origin, kind)))
        for via, folders in steps:
            for folder in folders:
                searched.append(folder)
                hit = self.in_folder(folder, name, kind)
                if hit:
                    return Found(hit, via), tuple(searched)
        system = self.config.default_dirs(kind)
        searched.append("ld.so.cache")
        for entry in self.config.cache.get(name, ()):
            if info.nodeflib and any(entry.path.startswith(d + "/") for d in system):
                break  # -z nodefaultlib: not from the cache's system folders either
            if self.files.kind(entry.path) == kind:
                folder, base = entry.path.rsplit("/", 1)
                variants = self.in_folder(folder or "/", base, kind)
                return Found((entry.path, *(v for v in variants if v != entry.path)),
                             "ld.so.cache"), tuple(searched)
        if not info.nodeflib:
            for folder in system:
                searched.append(folder)
                hit = self.in_folder(folder, name, kind)
                if hit:
                    return Found(hit, "default folder"), tuple(searched)
        return None, tuple(searched)

    def load(self, root: str, info: ElfInfo, program: bool) -> Load:
        """Load ``root`` as the loader does: breadth first, each name once, each file once.

        A program's $ORIGIN is its real folder (the kernel hands the loader the
        resolved executable); a library's is the folder it was opened from. A
        library on its own (``program`` false) is searched as if a program
        without paths of its own loaded it.
        """
        files = self.files
        origin = posixpath.dirname(files.real(root) or root) if program else posixpath.dirname(root)
        own = self.expand(info.rpath, origin, info.kind)
        if program and info.runpath:
            own = ()  # the program's DT_RPATH is dropped when it has DT_RUNPATH (_dl_init_paths)
        names: set[str] = set()  # names the loaded objects answer to
        if program and info.interp:
            names.add(info.interp)  # ld.so itself is loaded, by its PT_INTERP name and soname
            interp = files.info(info.interp)
            if interp is not None and interp.soname:
                names.add(interp.soname)
        idents = {files.ident(root) or root}
        lookups: list[Lookup] = []
        queue = deque([Loaded(root, info, origin, own)])
        while queue:
            obj = queue.popleft()
            for name in obj.info.needed:
                if name in names:
                    continue
                found, searched = self.find(name, obj)
                if found is None:
                    # not entered as a name: the next object that needs it searches again
                    lookups.append(Lookup(obj.path, name, None, searched))
                    continue
                names.add(name)
                first = found.paths[0]
                key = files.ident(first) or first
                new = key not in idents
                lookups.append(Lookup(obj.path, name, found, searched))
                if not new:
                    continue  # the same file under another name: loaded once
                idents.add(key)
                lib_info = files.info(first)
                if lib_info is None:
                    continue
                if lib_info.soname:
                    names.add(lib_info.soname)
                lib_origin = posixpath.dirname(first)
                # DT_RPATH of a library applies to what it loads even when it has DT_RUNPATH
                chain = self.expand(lib_info.rpath, lib_origin, lib_info.kind) + obj.chain
                queue.append(Loaded(first, lib_info, lib_origin, chain))
        return Load(root, tuple(lookups), frozenset(idents))


def _dotted(path: str) -> bool:
    return any(part in (".", "..") for part in path.split("/"))


def image_spelling(files: Files, path: str) -> str:
    """Where a found library sits in the image: ``..`` after a folder link resolved as the
    kernel does (the folder links themselves are kept, as the loader opened them)."""
    if not _dotted(path):
        return path
    folder, name = path.rsplit("/", 1)
    real = files.real(folder or "/")
    return _join(real, name) if real is not None else shown(path)


def links_crossed(files: Files, path: str) -> list[str]:
    """The folder symlinks a searched path with ``..`` runs through: the image needs them
    for the loader to take the same way (``lk/../lib`` is not ``lib`` when lk is a link)."""
    if not _dotted(path):
        return []
    out: list[str] = []
    current = "/"
    for part in path.rsplit("/", 1)[0].split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            current = posixpath.dirname(current) or "/"
            continue
        candidate = _join(current, part)
        real = files.real(candidate)
        if real is None:
            break
        if real != candidate:
            out.append(candidate)  # its folder is real, so it is itself a link
        current = real
    return out


def _starts_like_elf(node: Node) -> bool:
    """Whether the node is a regular file starting with the ELF magic: its lstat (made by
    the folder listing) says which nodes are files of four bytes or more, and only those
    are opened (asked of every node, so without a stat or a file object of its own)."""
    try:
        st = lstat_of(node)
        if not stat.S_ISREG(st.st_mode) or st.st_size < len(ELF_MAGIC):
            return False
        fd = os.open(node.host, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, len(ELF_MAGIC)) == ELF_MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


class ElfResolver:
    """Resolver: an ELF file brings its interpreter and every library its load pulls in.

    The load is :meth:`Loader.load`, over the host with the spec's contents
    mapped in (:class:`HostFS`). Libraries loaded this way are not resolved
    again on their own. A library met on its own (a plugin) may need one that
    only its program's load provides: its misses count only if no program of
    the closure loads it (see :meth:`finish`).
    """

    kinds = frozenset({stat.S_IFREG})  # what it reads is a regular file (walk: acts_on)

    def __init__(self, ctx: Context, loader: Loader | None = None) -> None:
        self.ctx = ctx
        if loader is None:
            mapped = ctx.root is not None or any(PurePosixPath(c.source) != c.target
                                                 for c in ctx.spec.contents)
            fs = HostFS("/", ctx.host_of if mapped else None)
            loader = Loader(Files(fs, ctx.closure.warnings.append))
        self.loader = loader
        self.files = loader.files
        self._loaded: set[str] = set()  # image paths and identities already resolved in a load
        self._deferred: dict[str, list[tuple[str, str]]] = {}
        self._by_programs: set[str] = set()  # paths some program's load pulls in
        self._nodes: dict[tuple[str, str, str, str], Node] = {}

    def realpath(self, path: Path | str) -> str:
        return self.files.ident(str(path)) or str(path)

    def __call__(self, node: Node) -> Iterator[Node]:
        if in_nix_store(node.image) or is_link(node):
            return  # Nix records store closures itself; a link's target is resolved in its turn
        image = str(node.image)
        if image in self._loaded:
            return
        if not _starts_like_elf(node):
            return  # most of a tree is data: four bytes tell, before any realpath
        if self.realpath(image) in self._loaded:
            return
        info = self.files.info(image)
        if info is None:
            return
        program = info.interp is not None
        if info.interp:
            self._loaded.add(image)
            host = Path(self.ctx.host_of(info.interp))
            if os.path.exists(host):
                self._mark(info.interp)
                yield Node(PurePosixPath(info.interp), host, "PT_INTERP", node.image)
            else:
                self.ctx.missing(f"{node.image} needs the program interpreter {info.interp}, "
                                 f"which is not {self.ctx.here}",
                                 "install the loader for its architecture or leave the file out")
        load = self.loader.load(image, info, program)
        for lookup in load.lookups:
            needer = image_spelling(self.files, lookup.needer)
            if lookup.found is None:
                miss = (f"{needer} needs {lookup.name}, which the loader would not find "
                        f"(searched {', '.join(shown(s) for s in lookup.searched)})",
                        "install the package that ships it, add its folder to contents, "
                        "or set allow-missing = true to build anyway")
                if program:
                    self.ctx.missing(*miss)
                else:
                    self._deferred.setdefault(image, []).append(miss)
                continue
            for path in lookup.found.paths:
                for link in links_crossed(self.files, path):
                    self._mark(link, program)
                    yield Node(PurePosixPath(link), Path(self.ctx.host_of(link)),
                               f"folder link on the way to {lookup.name}", PurePosixPath(needer))
                yield self._node(path, lookup.name, lookup.found.via, needer, program)

    def _node(self, path: str, name: str, via: str, needer: str, program: bool) -> Node:
        """One library node; programs share most libraries, so each is made once."""
        key = (path, name, via, needer)
        node = self._nodes.get(key)
        if node is None:
            placed = image_spelling(self.files, path)
            node = self._nodes[key] = Node(PurePosixPath(placed), Path(self.ctx.host_of(placed)),
                                           f"DT_NEEDED {name} ({via})", PurePosixPath(needer))
        self._mark(str(node.image), program)
        return node

    def _mark(self, image: str, by_program: bool = True) -> None:
        paths = (image, self.realpath(image))
        self._loaded.update(paths)
        if by_program:
            self._by_programs.update(paths)

    def finish(self) -> None:
        """Report the misses of libraries no program of the closure loads."""
        for root, misses in self._deferred.items():
            if root not in self._by_programs and self.realpath(root) not in self._by_programs:
                for message, hint in misses:
                    self.ctx.missing(message, hint)
        self._deferred.clear()
