"""ELF references: the program interpreter and every DT_NEEDED library, found as glibc's loader does.

The search order for a library NAME needed by object O (elf/dl-load.c, ld.so(8)):

0. NAME that an object already loaded answers to (the name it was loaded by,
   or its DT_SONAME) is that object: the load is followed breadth first from
   the program, as the loader does it;
1. NAME with a ``/`` is opened as it is;
2. unless O has DT_RUNPATH: the DT_RPATH of O, then of the object that loaded
   O, and so on up to the executable;
3. (LD_LIBRARY_PATH: not set for services, so not followed);
4. the DT_RUNPATH of O only;
5. ``/etc/ld.so.cache`` (unless O is linked with ``-z nodefaultlib``);
6. the default folders (Debian: ``/lib/TRIPLET /usr/lib/TRIPLET /lib /usr/lib``).

In each folder the loader first tries the ``glibc-hwcaps/*`` subfolders (and
the legacy ``tls``/platform ones) that the CPU supports. An image may run on
another CPU, so every such variant that exists is shipped beside the plain
library. Files of the wrong ELF class or machine are passed over, as the
loader does. ``$ORIGIN`` is the folder of O in the image, ``$LIB`` and
``$PLATFORM`` what this host's loader substitutes.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from portable_service.closure import Context, Node, in_nix_store, ldcache

ELF_MAGIC = b"\x7fELF"
DF_1_NODEFLIB = 0x800
EM_386, EM_ARM, EM_X86_64, EM_AARCH64, EM_RISCV = 3, 40, 62, 183, 243
# (class bits, e_machine) -> Debian multiarch triplet and the AT_PLATFORM string
ARCHES: dict[tuple[int, int], tuple[str, str]] = {
    (64, EM_X86_64): ("x86_64-linux-gnu", "x86_64"),
    (32, EM_386): ("i386-linux-gnu", "i686"),
    (64, EM_AARCH64): ("aarch64-linux-gnu", "aarch64"),
    (32, EM_ARM): ("arm-linux-gnueabihf", "v7l"),
    (64, EM_RISCV): ("riscv64-linux-gnu", "riscv64"),
}
_DST = re.compile(r"\$(\{ORIGIN\}|ORIGIN|\{LIB\}|LIB|\{PLATFORM\}|PLATFORM)")


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
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or not head.startswith(ELF_MAGIC) or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    order = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack_from(order + "H", head, 18)
    return (32 if head[4] == 1 else 64, machine)


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
    bits, machine = elf.elfclass, elf["e_machine"]
    machine_no = _MACHINES.get(machine, machine) if isinstance(machine, str) else machine
    interp = None
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    soname = None
    nodeflib = False
    for seg in elf.iter_segments():
        ptype = seg["p_type"]
        if ptype == "PT_INTERP":
            interp = seg.get_interp_name()
        elif ptype == "PT_DYNAMIC":
            for tag in seg.iter_tags():
                t = tag.entry.d_tag
                if t == "DT_NEEDED":
                    needed.append(tag.needed)
                elif t == "DT_RPATH":
                    rpath.extend(p for p in tag.rpath.split(":") if p)
                elif t == "DT_RUNPATH":
                    runpath.extend(p for p in tag.runpath.split(":") if p)
                elif t == "DT_SONAME":
                    soname = tag.soname
                elif t == "DT_FLAGS_1":
                    nodeflib = bool(tag.entry.d_val & DF_1_NODEFLIB)
    return ElfInfo(bits, machine_no, interp, tuple(needed), tuple(rpath), tuple(runpath), soname, nodeflib)


# pyelftools names e_machine values; the loader compares numbers
_MACHINES = {"EM_386": EM_386, "EM_ARM": EM_ARM, "EM_X86_64": EM_X86_64, "EM_AARCH64": EM_AARCH64,
             "EM_RISCV": EM_RISCV, "EM_PPC64": 21, "EM_S390": 22, "EM_PPC": 20, "EM_MIPS": 8,
             "EM_LOONGARCH": 258}


def expand_dst(entry: str, origin: PurePosixPath, lib: str, platform: str) -> str | None:
    """Substitute $ORIGIN, $LIB, $PLATFORM; None for an entry the loader would drop."""
    def sub(m: re.Match[str]) -> str:
        token = m.group(1).strip("{}")
        return str(origin) if token == "ORIGIN" else lib if token == "LIB" else platform

    expanded = _DST.sub(sub, entry)
    if "$" in expanded or not expanded.startswith("/"):
        return None  # unknown tokens and paths relative to the service's cwd cannot be followed
    return os.path.normpath(expanded)


@dataclass(frozen=True)
class Found:
    """Where a library was found: the file the loader opens first, then per-CPU variants."""

    paths: tuple[str, ...]
    via: str  # "RPATH", "RUNPATH", "ld.so.cache", "default folder", "path"


@dataclass
class LoaderConfig:
    """This host's loader: cache entries, default folders and substitutions per ELF kind."""

    cache: dict[str, list[ldcache.CacheEntry]]
    host_machine: str = field(default_factory=lambda: os.uname().machine)

    @classmethod
    def from_host(cls, cache_file: Path | None = None) -> LoaderConfig:
        return cls(ldcache.lookup_table(ldcache.read(cache_file)))

    def triplet(self, kind: tuple[int, int]) -> str | None:
        arch = ARCHES.get(kind)
        return arch[0] if arch else None

    def platform(self, kind: tuple[int, int]) -> str:
        arch = ARCHES.get(kind)
        if arch and arch[0].startswith(self.host_machine):
            return self.host_machine
        return arch[1] if arch else self.host_machine

    def lib(self, kind: tuple[int, int]) -> str:
        triplet = self.triplet(kind)
        if triplet and os.path.isdir(f"/usr/lib/{triplet}"):
            return f"lib/{triplet}"  # Debian's multiarch $LIB
        return "lib64" if kind[0] == 64 and os.path.isdir("/usr/lib64") else "lib"

    def default_dirs(self, kind: tuple[int, int]) -> tuple[str, ...]:
        triplet = self.triplet(kind)
        if triplet and os.path.isdir(f"/usr/lib/{triplet}"):
            return (f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib")
        if kind[0] == 64:
            return ("/lib64", "/usr/lib64")
        return ("/lib", "/usr/lib")


class Loader:
    """Find libraries as the loader does; folder listings and ELF kinds are cached."""

    def __init__(self, config: LoaderConfig, host_of: Callable[[str], str] | None = None) -> None:
        self.config = config
        # image path -> host path (contents may place a host folder elsewhere)
        self.host_of: Callable[[str], str] = host_of or (lambda p: p)
        self._names: dict[str, frozenset[str]] = {}
        self._kinds: dict[str, tuple[int, int] | None] = {}

    def names(self, folder: str) -> frozenset[str]:
        got = self._names.get(folder)
        if got is None:
            try:
                got = frozenset(os.listdir(self.host_of(folder)))
            except OSError:
                got = frozenset()
            self._names[folder] = got
        return got

    def kind_of(self, path: str) -> tuple[int, int] | None:
        if path not in self._kinds:
            self._kinds[path] = elf_kind(self.host_of(path))
        return self._kinds[path]

    def in_folder(self, folder: str, name: str, kind: tuple[int, int]) -> tuple[str, ...]:
        """The plain file and its CPU variants in one search folder, or () when absent."""
        variants = []
        names = self.names(folder)
        if "glibc-hwcaps" in names:
            hw = f"{folder}/glibc-hwcaps"
            for sub in sorted(self.names(hw), reverse=True):  # x86-64-v4 before v3 ...
                variants.append(f"{hw}/{sub}/{name}")
        platform = self.config.platform(kind)
        for sub in (f"tls/{platform}", "tls", platform):
            if sub.split("/")[0] in names:
                variants.append(f"{folder}/{sub}/{name}")
        found = [v for v in variants if name in self.names(os.path.dirname(v))
                 and self.kind_of(v) == kind]
        if name in names:
            plain = f"{folder}/{name}"
            if self.kind_of(plain) == kind:
                return (plain, *found)
        return tuple(found)

    def find(self, name: str, info: ElfInfo, origin: PurePosixPath,
             inherited_rpath: Sequence[str] = ()) -> Found | None:
        """Where ``name``, needed by an object like ``info`` in folder ``origin``, is loaded from."""
        kind = info.kind
        if "/" in name:
            path = expand_dst(name, origin, self.config.lib(kind), self.config.platform(kind))
            return Found((path,), "path") if path and self.kind_of(path) == kind else None
        lib, platform = self.config.lib(kind), self.config.platform(kind)
        if not info.runpath:
            own = [d for d in (expand_dst(e, origin, lib, platform) for e in info.rpath) if d]
            for folder in (*own, *inherited_rpath):
                hit = self.in_folder(folder, name, kind)
                if hit:
                    return Found(hit, "RPATH")
        for folder in (d for d in (expand_dst(e, origin, lib, platform) for e in info.runpath) if d):
            hit = self.in_folder(folder, name, kind)
            if hit:
                return Found(hit, "RUNPATH")
        if info.nodeflib:
            return None
        for entry in self.config.cache.get(name, ()):
            if self.kind_of(entry.path) == kind:
                folder = os.path.dirname(entry.path)
                variants = self.in_folder(folder, os.path.basename(entry.path), kind)
                rest = tuple(v for v in variants if v != entry.path)
                return Found((entry.path, *rest), "ld.so.cache")
        for folder in self.config.default_dirs(kind):
            hit = self.in_folder(folder, name, kind)
            if hit:
                return Found(hit, "default folder")
        return None

    def rpath_for_children(self, info: ElfInfo, origin: PurePosixPath,
                           inherited: Sequence[str]) -> tuple[str, ...]:
        """The RPATH folders an object passes down to the libraries it loads."""
        if info.runpath:
            return tuple(inherited)  # its RPATH is ignored, its loaders' still apply
        lib, platform = self.config.lib(info.kind), self.config.platform(info.kind)
        own = tuple(d for d in (expand_dst(e, origin, lib, platform) for e in info.rpath) if d)
        return own + tuple(inherited)


class ElfResolver:
    """Resolver: an ELF file brings its interpreter and every library its load pulls in.

    The load is simulated as the loader does it: breadth first from the
    object, each DT_NEEDED name searched from the object that needs it
    (with the RPATHs of the objects that loaded that one), and a name that an
    already loaded object carries (as the name it was loaded by, or its
    DT_SONAME) is not searched again. That last rule matters: a library may
    need one that only the program's RUNPATH finds, which works because the
    program loaded it first. Libraries loaded this way are not resolved again
    on their own.
    """

    def __init__(self, ctx: Context, loader: Loader | None = None) -> None:
        self.ctx = ctx
        self.loader = loader or Loader(LoaderConfig.from_host(), ctx.host_of)
        self._infos: dict[tuple[int, int], ElfInfo | None] = {}
        self._loaded: set[str] = set()  # image paths (and their real paths) already resolved in a load
        self._by_path: dict[str, ElfInfo | None] = {}
        self._real: dict[str, str] = {}
        # a library resolved on its own may need one only its program's load provides:
        # its misses count only if no program loads it (see finish)
        self._deferred: dict[str, list[tuple[str, str]]] = {}
        self._by_programs: set[str] = set()  # paths some program's load pulls in

    def realpath(self, path: Path | str) -> str:
        key = str(path)
        got = self._real.get(key)
        if got is None:
            got = self._real[key] = os.path.realpath(key)
        return got

    def info_at(self, image: PurePosixPath | str, host: Path | str) -> ElfInfo | None:
        key = str(host)
        if key in self._by_path:
            return self._by_path[key]
        info = self._by_path[key] = self._info_by_inode(image, host)
        return info

    def _info_by_inode(self, image: PurePosixPath | str, host: Path | str) -> ElfInfo | None:
        try:
            st = os.stat(host)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        key = (st.st_dev, st.st_ino)
        if key not in self._infos:
            try:
                self._infos[key] = read_elf(host)
            except NotElf as e:
                self.ctx.closure.warnings.append(
                    f"{image} starts like an ELF file but cannot be read ({e}); "
                    "its libraries are not followed")
                self._infos[key] = None
        return self._infos[key]

    def __call__(self, node: Node) -> Iterator[Node]:
        if in_nix_store(node.image) or node.host.is_symlink():
            return  # Nix records store closures itself; a link's target is resolved in its turn
        if str(node.image) in self._loaded or self.realpath(node.host) in self._loaded:
            return
        info = self.info_at(node.image, node.host)
        if info is None:
            return
        if info.interp:
            self._loaded.add(str(node.image))
        if info.interp:
            interp = PurePosixPath(info.interp)
            host = Path(self.ctx.host_of(info.interp))
            if os.path.exists(host):
                self._mark(info.interp, host)
                yield Node(interp, host, "PT_INTERP", node.image)
            else:
                self.ctx.missing(f"{node.image} needs the program interpreter {interp}, "
                                 "which is not on this host",
                                 "install the loader for its architecture or leave the file out")
        yield from self._load(node, info)

    def _mark(self, image: str, host: Path | str, by_program: bool = True) -> None:
        paths = (image, self.realpath(host))
        self._loaded.update(paths)
        if by_program:
            self._by_programs.update(paths)

    def finish(self) -> None:
        """Report the misses of libraries no program of the closure loads."""
        for root, misses in self._deferred.items():
            if root not in self._by_programs:
                for message, hint in misses:
                    self.ctx.missing(message, hint)
        self._deferred.clear()

    def _load(self, root: Node, root_info: ElfInfo) -> Iterator[Node]:
        standalone = root_info.interp is None  # a library (or plugin): no program loads it yet
        names: set[str] = set()  # names the loaded objects answer to
        files: set[str] = {self.realpath(root.host)}
        queue: deque[tuple[PurePosixPath, ElfInfo, tuple[str, ...]]] = deque(
            [(root.image, root_info, ())])
        while queue:
            image, info, inherited = queue.popleft()
            origin = image.parent
            passed_on = self.loader.rpath_for_children(info, origin, inherited)
            for name in info.needed:
                if name in names:
                    continue
                found = self.loader.find(name, info, origin, inherited)
                if found is None:
                    miss = (f"{image} needs {name}, which the loader would not find "
                            f"(searched {self._searched(info, origin, inherited)})",
                            "install the package that ships it, add its folder to contents, "
                            "or set allow-missing = true to build anyway")
                    if standalone:
                        self._deferred.setdefault(str(root.image), []).append(miss)
                    else:
                        self.ctx.missing(*miss)
                    continue
                names.add(name)
                for path in found.paths:
                    host = self.ctx.host_of(path)
                    self._mark(path, host, not standalone)
                    yield Node(PurePosixPath(path), Path(host), f"DT_NEEDED {name} ({found.via})", image)
                first = found.paths[0]
                real = self.realpath(self.ctx.host_of(first))
                if real in files:
                    continue  # the same file under another name: loaded once
                files.add(real)
                lib_info = self.info_at(first, self.ctx.host_of(first))
                if lib_info is not None:
                    if lib_info.soname:
                        names.add(lib_info.soname)
                    queue.append((PurePosixPath(first), lib_info, passed_on))

    def _searched(self, info: ElfInfo, origin: PurePosixPath, inherited: Sequence[str]) -> str:
        cfg = self.loader.config
        lib, platform = cfg.lib(info.kind), cfg.platform(info.kind)
        dirs = [expand_dst(e, origin, lib, platform) for e in (() if info.runpath else info.rpath)]
        dirs += list(inherited) if not info.runpath else []
        dirs += [expand_dst(e, origin, lib, platform) for e in info.runpath]
        where = [d for d in dirs if d]
        if not info.nodeflib:
            where += ["ld.so.cache", *cfg.default_dirs(info.kind)]
        return ", ".join(where)
