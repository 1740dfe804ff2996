"""Closure benchmark: our ELF resolver against a loop of ``ldd`` over every ELF program in a folder.

    python3 benchmarks/closure_bench.py [--dir /usr/bin] [--image-sizes DEBOOTSTRAP_ROOT]

Prints the time of both, the ratio, and whether both found the same set of
libraries for every program (as real paths). With ``--image-sizes`` it also
builds ``packages = ["lighttpd"]`` with the default packing (xz, 1M) and packs
a debootstrap root (minbase + lighttpd) with the same mksquashfs options.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' ldd helper
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from portable_service.builder.closure import Closure, Context, Node
from portable_service.builder.closure.elf import ElfResolver, Files, Loader, LoaderConfig, elf_kind, read_elf
from portable_service.builder.spec import spec_from_mapping
from portable_service.fs.views import HostFS
from tests.builder.closure.closure_helpers import ldd_libraries


def elf_programs(folder: Path) -> list[Path]:
    """Dynamically linked ELF programs (regular files) in ``folder``."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_symlink() or not p.is_file() or elf_kind(p) is None:
            continue
        info = read_elf(p)
        if info is not None and info.interp:
            out.append(p)
    return out


def ours(programs: list[Path], fresh: bool = False) -> dict[str, set[str]]:
    """Every program's library closure, one resolver (and its caches) shared by all,
    or with ``fresh`` a new resolver per program: only the parsed ld.so.cache is shared
    (the loader maps it once too); ELF headers and folder listings are read again."""
    spec = spec_from_mapping({"pname": "b", "version": "1", "units": [{"name": "b.service",
                              "text": "[Service]\n"}]}, Path.cwd())
    ctx = Context(spec, Closure())
    config = LoaderConfig.from_host()
    resolver = ElfResolver(ctx, Loader(Files(HostFS()), config))
    result = {}
    for prog in programs:
        if fresh:
            resolver = ElfResolver(ctx, Loader(Files(HostFS()), config))
        seen: set[PurePosixPath] = set()
        libs: set[str] = set()
        queue = deque([Node(PurePosixPath(prog), prog, "program")])
        while queue:
            node = queue.popleft()
            if node.image in seen:
                continue
            seen.add(node.image)
            for ref in resolver(node):
                real = resolver.realpath(ref.host)
                libs.add(real)
                queue.append(Node(PurePosixPath(real), Path(real), ref.reason, node.image))
        result[str(prog)] = libs
    return result


def ldd(programs: list[Path]) -> dict[str, set[str]]:
    return {str(prog): ldd_libraries(str(prog)) for prog in programs}


def timed(fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def image_sizes(debootstrap_root: Path) -> None:
    from portable_service import build

    with tempfile.TemporaryDirectory() as tmp:
        unit = {"name": "lt.service",
                "text": "[Service]\nExecStart=/usr/sbin/lighttpd -D -f /etc/lighttpd/lighttpd.conf\n"}
        (_, secs) = timed(lambda: build(pname="lt", version="1", units=[unit], packages=["lighttpd"],
                                        output_dir=tmp), )
        ours_size = (Path(tmp) / "lt_1.raw").stat().st_size
        sizes = {}
        # as debootstrap leaves it, and with apt's download cache and lists cleaned (apt-get clean)
        for label, extra in (("as debootstrap leaves it", []),
                             ("apt caches cleaned", ["-wildcards", "-e", "var/cache/apt/archives/*.deb",
                                                     "var/lib/apt/lists/*"])):
            tree = Path(tmp) / "tree.raw"
            subprocess.run(["mksquashfs", str(debootstrap_root), str(tree), "-quiet", "-noappend",
                            "-all-root", "-no-hardlinks", "-no-xattrs", "-b", "1M", "-comp", "xz",
                            "-Xdict-size", "100%", "-mkfs-time", "0", "-all-time", "0", *extra],
                           check=True, stdout=subprocess.DEVNULL)
            sizes[label] = tree.stat().st_size
    print(f"packages=[lighttpd] image (xz, 1M): {ours_size / 1e6:.1f} MB, built in {secs:.1f} s")
    for label, size in sizes.items():
        print(f"debootstrap minbase + lighttpd, same packing, {label}: {size / 1e6:.1f} MB "
              f"({size / ours_size:.1f}x larger)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/usr/bin"))
    ap.add_argument("--image-sizes", type=Path, metavar="DEBOOTSTRAP_ROOT")
    args = ap.parse_args()

    programs = elf_programs(args.dir)
    mine, t_ours = timed(ours, programs)
    cold, t_cold = timed(ours, programs, True)
    theirs, t_ldd = timed(ldd, programs)
    differ = [p for p in theirs if mine[p] != theirs[p] or cold[p] != theirs[p]]
    n_libs = len(set().union(*mine.values())) if mine else 0
    print(f"{len(programs)} dynamically linked ELF programs in {args.dir}, {n_libs} distinct libraries")
    print(f"portable-service closure, one resolver:     {t_ours:.2f} s")
    print(f"portable-service closure, fresh per program: {t_cold:.2f} s")
    print(f"ldd loop:                                    {t_ldd:.2f} s")
    print(f"ratio: {t_ldd / t_ours:.1f}x faster than ldd (fresh resolver per program: "
          f"{t_ldd / t_cold:.1f}x)")
    print(f"same library set: {len(programs) - len(differ)}/{len(programs)} programs")
    for p in differ[:10]:
        print(f"  {p}: only ours {sorted(mine[p] - theirs[p])}, only ldd {sorted(theirs[p] - mine[p])}")
    if args.image_sizes:
        image_sizes(args.image_sizes)
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
