"""ELF files in an image: is their loader there, and does every DT_NEEDED library resolve?

The search follows glibc's ld.so inside the image: DT_RPATH (only without
DT_RUNPATH), then DT_RUNPATH with $ORIGIN, then the image's ld.so.conf
folders and the default ones (Debian's multiarch folders, /lib, /usr/lib,
and lib64 for 64-bit objects). A library only counts when its ELF class and
machine match the object's, as ld.so skips the others. Not modelled:
LD_LIBRARY_PATH, DT_RPATH inherited from the executable, $PLATFORM, hwcaps
subfolders and a stale ld.so.cache.
"""

from __future__ import annotations

import fnmatch
import posixpath
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile

from portable_service.closure import ldcache
from portable_service.errors import PortableServiceError
from portable_service.imagefs import ImageFS, Stat, open_file, read_bytes, resolve

if TYPE_CHECKING:
    from portable_service.verify import Problem

ELF_MAGIC = b"\x7fELF"
# e_machine -> Debian multiarch triplets
MULTIARCH: dict[int, tuple[str, ...]] = {
    62: ("x86_64-linux-gnu",),
    3: ("i386-linux-gnu",),
    183: ("aarch64-linux-gnu",),
    40: ("arm-linux-gnueabihf", "arm-linux-gnueabi"),
    21: ("powerpc64le-linux-gnu", "powerpc64-linux-gnu"),
    22: ("s390x-linux-gnu",),
    243: ("riscv64-linux-gnu",),
    8: ("mips64el-linux-gnuabi64", "mipsel-linux-gnu"),
}
SKIP_ROOTS = ("/usr/lib/debug",)  # separate debug files carry headers without code


@dataclass(frozen=True)
class ElfFacts:
    key: tuple[int, int, int]  # (class, data encoding, machine): what a library must match
    interp: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]
    rpath: tuple[str, ...]


def header_key(head: bytes) -> tuple[int, int, int] | None:
    """(EI_CLASS, EI_DATA, e_machine) of an ELF header, or None for anything else."""
    if len(head) < 20 or not head.startswith(ELF_MAGIC) or head[5] not in (1, 2):
        return None
    machine = struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)[0]
    return head[4], head[5], machine


def read_facts(fs: ImageFS, path: str, size: int) -> ElfFacts | None:
    """The dynamic-linking facts of an ELF file; None when it is not a (readable) ELF object."""
    interp: str | None = None
    needed: list[str] = []
    runpath: list[str] = []
    rpath: list[str] = []
    try:
        with open_file(fs, path, size) as stream:
            key = header_key(stream.read(20))
            if key is None:
                return None
            stream.seek(0)
            elf = ELFFile(stream)
            if elf["e_type"] not in ("ET_EXEC", "ET_DYN"):
                return None
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_INTERP":
                    interp = seg.get_interp_name()
                elif isinstance(seg, DynamicSegment):
                    for tag in seg.iter_tags():
                        if tag.entry.d_tag == "DT_NEEDED":
                            needed.append(tag.needed)
                        elif tag.entry.d_tag == "DT_RUNPATH":
                            runpath.extend(p for p in tag.runpath.split(":") if p)
                        elif tag.entry.d_tag == "DT_RPATH":
                            rpath.extend(p for p in tag.rpath.split(":") if p)
    except (ELFError, ValueError, KeyError, struct.error, UnicodeDecodeError, IndexError):
        return None  # not something ld.so would load either; other tools report corruption
    return ElfFacts(key, interp, tuple(needed), tuple(runpath), tuple(rpath))


def ld_so_conf_dirs(fs: ImageFS) -> list[str]:
    """Folders named by the image's /etc/ld.so.conf and its includes."""
    dirs: list[str] = []
    seen: set[str] = set()

    def read(path: str, depth: int) -> None:
        if depth > 8 or path in seen:
            return
        seen.add(path)
        real = resolve(fs, path)
        if real is None or fs.stat(real).kind != "file":
            return
        text = fs.read(real, 0, 1 << 16).decode("utf-8", "replace")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("include"):
                pattern = line[len("include"):].strip()
                if not pattern.startswith("/"):
                    pattern = posixpath.join(posixpath.dirname(path), pattern)
                for match in _glob(fs, pattern):
                    read(match, depth + 1)
            elif line and not line.startswith("hwcap"):
                dirs.extend(w for w in line.replace(",", " ").replace(":", " ").split()
                            if w.startswith("/"))

    read("/etc/ld.so.conf", 0)
    return dirs


def ld_so_cache_dirs(fs: ImageFS) -> list[str]:
    """Folders of the libraries listed in the image's /etc/ld.so.cache (the build writes one
    when the host found libraries through ld.so.conf.d)."""
    data = read_bytes(fs, "/etc/ld.so.cache", limit=64 << 20)
    if data is None:
        return []
    try:
        entries = ldcache.parse(data, "the image's /etc/ld.so.cache")
    except PortableServiceError:
        return []  # ld.so ignores a cache it cannot read; so do we
    return [posixpath.dirname(e.path) for e in entries]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _glob(fs: ImageFS, pattern: str) -> list[str]:
    folder, name = posixpath.split(pattern)
    real = resolve(fs, folder)
    if real is None or fs.stat(real).kind != "dir":
        return []
    return [posixpath.join(folder, n) for n in sorted(fs.listdir(real)) if fnmatch.fnmatch(n, name)]


class LibraryResolver:
    """Finds libraries in the image as ld.so would; caches headers and lookups."""

    def __init__(self, fs: ImageFS) -> None:
        self.fs = fs
        self.conf_dirs = _unique(ld_so_conf_dirs(fs) + ld_so_cache_dirs(fs))
        self._keys: dict[str, tuple[int, int, int] | None] = {}
        self._found: dict[tuple[str, tuple[str, ...], tuple[int, int, int]], str | None] = {}

    def default_dirs(self, key: tuple[int, int, int]) -> list[str]:
        triplets = MULTIARCH.get(key[2], ())
        dirs = [*self.conf_dirs]
        for t in triplets:
            dirs += [f"/lib/{t}", f"/usr/lib/{t}"]
        if key[0] == 2:
            dirs += ["/lib64", "/usr/lib64"]
        return [*dirs, "/lib", "/usr/lib"]

    def search_dirs(self, facts: ElfFacts, origin: str) -> list[str]:
        explicit = facts.runpath if facts.runpath else facts.rpath
        dirs: list[str] = []
        for entry in explicit:
            dirs.extend(_expand(entry, origin, facts.key))
        return dirs + self.default_dirs(facts.key)

    def key_of(self, path: str) -> tuple[int, int, int] | None:
        if path not in self._keys:
            st = self.fs.stat(path)
            self._keys[path] = header_key(self.fs.read(path, 0, 20)) if st.kind == "file" \
                else None
        return self._keys[path]

    def find(self, name: str, dirs: list[str], key: tuple[int, int, int]) -> str | None:
        """The real path of library ``name`` as found in ``dirs``, or None."""
        cache_key = (name, tuple(dirs), key)
        if cache_key in self._found:
            return self._found[cache_key]
        found = None
        candidates = [name] if "/" in name else [posixpath.join(d, name) for d in dirs]
        for candidate in candidates:
            real = resolve(self.fs, candidate)
            if real is not None and self.key_of(real) == key:
                found = real
                break
        self._found[cache_key] = found
        return found


def _expand(entry: str, origin: str, key: tuple[int, int, int]) -> list[str]:
    """$ORIGIN and $LIB as ld.so expands them; relative entries are relative to nothing useful."""
    if "$PLATFORM" in entry or "${PLATFORM}" in entry:
        return []
    entry = entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
    if "$LIB" in entry or "${LIB}" in entry:
        libs = [f"lib/{t}" for t in MULTIARCH.get(key[2], ())] + ["lib64", "lib"]
        return [posixpath.normpath(entry.replace("${LIB}", lib).replace("$LIB", lib))
                for lib in libs]
    if not entry.startswith("/"):
        return []  # relative to the process's working folder: not checkable
    return [posixpath.normpath(entry)]


def _candidates(entries: dict[str, Stat], programs: set[str]) -> Iterator[tuple[str, Stat]]:
    """Files that may be ELF objects worth loading: executables, shared objects, programs."""
    for path, st in entries.items():
        if st.kind != "file" or st.size < 52 or any(path.startswith(r + "/") for r in SKIP_ROOTS):
            continue
        name = posixpath.basename(path)
        if st.mode & 0o111 or ".so" in name or path in programs:
            yield path, st


def check_elf_files(fs: ImageFS, entries: dict[str, Stat], programs: set[str]) -> list[Problem]:
    """Missing loaders and libraries: errors for what the units run, warnings elsewhere."""
    from portable_service.verify import ERROR, WARNING, Problem

    resolver = LibraryResolver(fs)
    facts: dict[str, ElfFacts] = {}
    missing: dict[str, list[tuple[str, str, str]]] = {}  # path -> (rule, message, fix)
    edges: dict[str, set[str]] = {}
    for path, st in _candidates(entries, programs):
        f = read_facts(fs, path, st.size)
        if f is None:
            continue
        facts[path] = f
        found_edges: set[str] = set()
        if f.interp:
            real = resolve(fs, f.interp)
            if real is None or fs.stat(real).kind != "file":
                missing.setdefault(path, []).append((
                    "elf-interpreter",
                    f"its ELF loader {f.interp} is not in the image; it cannot be run "
                    "(status=203/EXEC)",
                    f"add {f.interp} (from the C library) to the image"))
            else:
                found_edges.add(real)
        dirs = resolver.search_dirs(f, posixpath.dirname(path))
        for lib in f.needed:
            real = resolver.find(lib, dirs, f.key)
            if real is None:
                missing.setdefault(path, []).append((
                    "elf-library",
                    f"needs {lib}, which is not in the image's library path "
                    f"({_short(dirs)}); the loader stops with 'cannot open shared object file'",
                    f"add {lib} to the image (its package or file), or fix its RUNPATH"))
            else:
                found_edges.add(real)
        edges[path] = found_edges
    critical = _reachable(programs, edges)
    problems = []
    for path in sorted(missing):
        severity = ERROR if path in critical else WARNING
        for rule, message, fix in missing[path]:
            if severity == WARNING:
                message += " (no unit runs it directly)"
            problems.append(Problem(severity, rule, path, message, fix))
    return problems


def _reachable(roots: set[str], edges: dict[str, set[str]]) -> set[str]:
    seen = set(roots)
    queue = list(roots)
    while queue:
        for nxt in edges.get(queue.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def _short(dirs: list[str]) -> str:
    unique = list(dict.fromkeys(dirs))
    return ":".join(unique[:4]) + (":..." if len(unique) > 4 else "")
