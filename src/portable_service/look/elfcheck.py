"""ELF files in an image: is their loader there, and does every DT_NEEDED library resolve?

The search is the build's own (:class:`portable_service.builder.closure.elf.Loader`),
run over the image: its ld.so.cache, its folders, DT_RPATH of the loader
chain, DT_RUNPATH, $ORIGIN/$LIB/$PLATFORM, glibc-hwcaps subfolders, ELF class
and machine. The loader does not read /etc/ld.so.conf (only ldconfig does,
to write the cache), so neither does this check.

Every program (an ELF file with PT_INTERP) is loaded as the loader would; a
miss in the load of a program a unit runs is an error, elsewhere a warning.
A library no program loads (a plugin) is loaded on its own: its misses are
warnings.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from portable_service.builder.closure.elf import Files, Loader, Lookup, shown
from portable_service.fs.views import ImageFS, Stat, resolve
from portable_service.look.problems import ERROR, WARNING, Problem

SKIP_ROOTS = ("/usr/lib/debug",)  # separate debug files carry headers without code


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
    files = Files(fs)
    loader = Loader(files)
    found: list[tuple[str, bool]] = []  # (path, is a program)
    for path, _st in _candidates(entries, programs):
        info = files.info(path)
        if info is not None:
            found.append((path, info.interp is not None))
    problems: dict[tuple[str, str, str], tuple[str, str]] = {}  # (rule, path, message) -> (severity, fix)
    loaded: set[str] = set()  # identities of the objects some program loads

    def report(severity: str, rule: str, path: str, message: str, fix: str) -> None:
        old = problems.get((rule, path, message))
        if old is None or (old[0] == WARNING and severity == ERROR):
            problems[(rule, path, message)] = (severity, fix)

    # programs the units run first: their problems are errors, whoever else shares them
    for path, _ in sorted((p for p in found if p[1]), key=lambda p: p[0] not in programs):
        info = files.info(path)
        assert info is not None and info.interp is not None
        severity = ERROR if path in programs else WARNING
        real = resolve(fs, info.interp)
        if real is None or fs.stat(real).kind != "file":
            report(severity, "elf-interpreter", path,
                   f"its ELF loader {info.interp} is not in the image; it cannot be run "
                   "(status=203/EXEC)", f"add {info.interp} (from the C library) to the image")
        load = loader.load(path, info, program=True)
        loaded |= load.objects
        for lookup in load.lookups:
            if lookup.found is None:
                report(severity, "elf-library", _spelled(files, lookup.needer), *_missing(lookup))
    for path, is_program in found:
        if is_program or (files.ident(path) or path) in loaded:
            continue
        info = files.info(path)
        assert info is not None
        for lookup in loader.load(path, info, program=False).lookups:
            if lookup.found is None:
                report(WARNING, "elf-library", _spelled(files, lookup.needer), *_missing(lookup))
    out = [Problem(severity, rule, path,
                   message + (" (no unit runs it directly)" if severity == WARNING else ""), fix)
           for (rule, path, message), (severity, fix) in problems.items()]
    return sorted(out, key=lambda p: (p.path, p.severity != ERROR, p.message))


def _spelled(files: Files, path: str) -> str:
    return files.real(path) or shown(path)


def _missing(lookup: Lookup) -> tuple[str, str]:
    return (f"needs {lookup.name}, which is not in the image's library path "
            f"({_short([shown(s) if s.startswith('/') else s for s in lookup.searched])}); "
            "the loader stops with 'cannot open shared object file'",
            f"add {lookup.name} to the image (its package or file), or fix its RUNPATH")


def _short(dirs: list[str]) -> str:
    unique = list(dict.fromkeys(dirs))
    return ":".join(unique[:4]) + (":..." if len(unique) > 4 else "")
