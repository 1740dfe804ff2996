"""The native squashfs writer against mksquashfs and gensquashfs, side by side, in one run.

Input shapes (issue 15): ``tiny`` (/usr/share/zoneinfo: many tiny files), ``service``
(/usr/lib/python3.11: a typical service tree), ``large`` (three files of 50, 100 and
150 MB, /usr/lib binaries concatenated, made under /tmp) and, with ``--big``, ``mixed``
(1 GB of /usr files in a fixed pseudo-random order, made under /tmp); each with gzip,
xz, zstd and lz4. For each: wall time against both C writers and against the faster of
them, CPU seconds, sizes, peak memory, and the "physical limit": the compressor's own
time on the same blocks in this process (one thread, CPU time: "comp CPU") divided by
the cores ("limit s"), as a fraction of our wall time ("of limit"); "CPU share" is the
compressor's CPU time over all of ours (1.00: we spend nothing but compressing). Then a
linearity table (1x/4x/16x of a sample of /usr).

For each input tree and configuration the three writers pack the same tree
(all files owned by root, fixed times) alternately ``--runs`` times; the
script prints the median wall time, the image size and the peak memory (max
RSS of the process) of each, with the ratios native/mksquashfs and
native/gensquashfs, and the load average before and after. mksquashfs uses
all cores (its default), gensquashfs one job per core (``-j``), the native
writer one compression thread per core. Then it builds one spec end to end
(closure + image) with each of our writers, and packs the tree of the
image it built (unpacked with unsquashfs) with mksquashfs and gensquashfs:
an image is only comparable with theirs of the same tree.

    PYTHONPATH=src python3 benchmarks/squashfs_bench.py [--shape tiny ...] [--big] [--runs 3]
    PYTHONPATH=src python3 benchmarks/squashfs_bench.py --tree /some/dir   # any tree
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WRITE = Path(__file__).resolve().parent / "squashfs_write.py"  # the native writer's process
sys.path.insert(0, str(WRITE.parent))
from squashfs_write import MTIME, parse_block_size  # noqa: E402

CONFIGS = [("xz -Xdict-size 100%", "1M"), ("gzip", "128K"), ("zstd", "128K"), ("lz4", "128K")]
INPUTS = Path("/tmp/sqfs-bench-inputs")  # generated trees, kept between runs
SHAPES = ["tiny", "service", "large"]
LIMIT_SAMPLE = 48 << 20  # bytes of blocks the compressor is timed on (scaled to the tree)
# gensquashfs' name for each of mksquashfs' compressor options
GENSQUASHFS_EXTRA = {"-Xdict-size": "dictsize", "-Xcompression-level": "level"}
E2E_CONTENTS = ["/usr/bin/gdb", "/usr/bin/cmake", "/usr/bin/perf"]


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MB, CPU seconds) of one command.

    CPU seconds (user + system) say how much work a writer does whatever
    else runs on the machine; wall time is what a user waits.
    """
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def warm(tree: Path) -> int:
    """Read the tree once so that neither writer pays for a cold page cache."""
    total = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        total += len(chunk)
    return total


def mksquashfs_cmd(tree: Path, out: Path, compression: str, block: str) -> list[str]:
    return ["mksquashfs", str(tree), str(out), "-noappend", "-quiet", "-no-progress",
            "-all-root", "-all-time", str(MTIME), "-mkfs-time", str(MTIME), "-b", block,
            "-comp", *compression.split()]


def gensquashfs_cmd(tree: Path, out: Path, compression: str, block: str) -> list[str]:
    name, *opts = compression.split()
    bs = parse_block_size(block)
    extra = []
    for k, v in zip(opts[::2], opts[1::2], strict=True):
        if v.endswith("%"):  # gensquashfs 1.2 takes no percentage, whatever its help says
            v = str(bs * int(v[:-1]) // 100)
        extra.append(f"{GENSQUASHFS_EXTRA[k]}={v}")
    return ["gensquashfs", "-q", "-f", "--all-root", "-D", str(tree), "-d", f"mtime={MTIME}",
            "-j", str(os.cpu_count() or 1), "-e", "-c", name, "-b", str(bs),
            *(["-X", ",".join(extra)] if extra else []), str(out)]


def child_limit(tree: str, compression: str, block: str) -> None:
    """Print the compressor's CPU seconds for the tree's blocks, one thread, in this process.

    The files are cut as the writer cuts them (full blocks, tails packed into fragment
    blocks); at most LIMIT_SAMPLE bytes of blocks, spread evenly over the tree, are
    compressed and the time is scaled to all of them.
    """
    from portable_service.squashfs.compressor import from_options

    name, *opts = compression.split()
    bs = parse_block_size(block)
    comp = from_options(name, tuple(opts), bs)
    blocks: list[bytes] = []
    frag = bytearray()
    for dirpath, dirs, files in os.walk(tree):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            with open(p, "rb") as fh:
                data = fh.read()
            full = len(data) // bs * bs
            blocks.extend(data[k:k + bs] for k in range(0, full, bs))
            if len(frag) + len(data) - full > bs:
                blocks.append(bytes(frag))
                frag.clear()
            frag += data[full:]
    if frag:
        blocks.append(bytes(frag))
    total = sum(len(b) for b in blocks)
    step = max(1, total // LIMIT_SAMPLE)
    sample = blocks[::step]
    start = time.process_time()
    for b in sample:
        comp.compress(b)
    spent = time.process_time() - start
    print(spent * total / max(1, sum(len(b) for b in sample)))


def child_env() -> dict[str, str]:
    """The native child's environment: bytecode cached (as an installed package has it),
    kept out of the source tree."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return {"PYTHONPATH": str(REPO / "src"), "PYTHONPYCACHEPREFIX": str(INPUTS / "pycache")}


def warm_up() -> None:
    """Import what the native child imports once, so no run pays for compiling it."""
    env = {**child_env(), "PYTHONPATH": f"{REPO / 'src'}:{WRITE.parent}"}
    measure([sys.executable, "-c", "import portable_service.squashfs.writer, lz4.block, "
             "zstandard, squashfs_write"], env)


def bench_tree(tree: Path, runs: int, work: Path, label: str = "") -> list[str]:
    env = child_env()
    rows = []
    size = warm(tree)
    files = sum(len(f) for _, _, f in os.walk(tree))
    cores = os.cpu_count() or 1
    print(f"{label or 'tree'} {tree}: {size / 1e6:.1f} MB in {files} files; {cores} cores; "
          f"median of {runs} runs; load average before: {loadavg()}", flush=True)
    cols = [("options", 20), ("mksq s", 7), ("gensq s", 7), ("native s", 8), ("/mksq", 5),
            ("/gensq", 6), ("/faster", 7), ("mksq CPU", 8), ("gensq CPU", 9),
            ("native CPU", 10), ("native bytes", 13), ("size /mksq", 10), ("size /gensq", 11),
            ("mksq MB", 7), ("gensq MB", 8), ("native MB", 9), ("comp CPU", 8),
            ("limit s", 7), ("of limit", 8), ("CPU share", 9)]
    header = "| " + " | ".join(f"{n:>{w}}" if i else f"{n:<{w}}"
                               for i, (n, w) in enumerate(cols)) + " |"
    rows.append(header)
    rows.append("|" + "|".join("-" * (w + 2) for _, w in cols) + "|")
    print(header, flush=True)
    for compression, block in CONFIGS:
        imgs = {k: work / f"{k}.img" for k in ("mksq", "gensq", "native")}
        walls: dict[str, list[float]] = {k: [] for k in imgs}
        peaks: dict[str, list[float]] = {k: [] for k in imgs}
        cpus: dict[str, list[float]] = {k: [] for k in imgs}
        for _ in range(runs):
            for p in imgs.values():
                p.unlink(missing_ok=True)
            cmds = {
                "mksq": (mksquashfs_cmd(tree, imgs["mksq"], compression, block), None),
                "gensq": (gensquashfs_cmd(tree, imgs["gensq"], compression, block), None),
                "native": ([sys.executable, str(WRITE), str(tree), str(imgs["native"]),
                            compression, block], env),
            }
            for k, (cmd, cmd_env) in cmds.items():
                wall, rss, cpu = measure(cmd, cmd_env)
                walls[k].append(wall)
                peaks[k].append(rss)
                cpus[k].append(cpu)
        limit_cpu = float(subprocess.run(
            [sys.executable, __file__, "--limit", str(tree), compression, block],
            env={**os.environ, **env}, check=True, capture_output=True, text=True).stdout)
        limit = limit_cpu / cores  # the compressor alone, on every core
        t = {k: statistics.median(v) for k, v in walls.items()}
        c = {k: statistics.median(v) for k, v in cpus.items()}
        sz = {k: p.stat().st_size for k, p in imgs.items()}
        short = compression.split()[0] + " " + block
        cells = [f"{short:<20}", f"{t['mksq']:>7.2f}", f"{t['gensq']:>7.2f}",
                 f"{t['native']:>8.2f}", f"{t['native'] / t['mksq']:>5.2f}",
                 f"{t['native'] / t['gensq']:>6.2f}",
                 f"{t['native'] / min(t['mksq'], t['gensq']):>7.2f}",
                 f"{c['mksq']:>8.2f}", f"{c['gensq']:>9.2f}", f"{c['native']:>10.2f}",
                 f"{sz['native']:>13,}", f"{sz['native'] / sz['mksq']:>10.4f}",
                 f"{sz['native'] / sz['gensq']:>11.4f}", f"{max(peaks['mksq']):>7.0f}",
                 f"{max(peaks['gensq']):>8.0f}", f"{max(peaks['native']):>9.0f}",
                 f"{limit_cpu:>8.3f}", f"{limit:>7.3f}", f"{limit / t['native']:>8.2f}",
                 f"{limit_cpu / c['native']:>9.2f}"]
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    print(f"load average after: {loadavg()}", flush=True)
    return rows


def usr_files() -> list[Path]:
    """Regular files of /usr in a fixed pseudo-random order (by a hash of the path)."""
    found: list[Path] = []
    for dirpath, dirs, files in os.walk("/usr"):
        dirs.sort()
        for f in files:
            p = Path(dirpath, f)
            if p.is_file() and not p.is_symlink():
                found.append(p)
    return sorted(found, key=lambda p: hashlib.sha256(bytes(p)).digest())


def make_sample(dest: Path, total: int, files: list[Path], max_file: int = 0) -> Path:
    """The first ``total`` bytes' worth of ``files`` (each at most ``max_file`` bytes, when
    given), copied under ``dest`` at their paths."""
    if dest.exists():
        return dest
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    got = 0
    for p in files:
        if got >= total:
            break
        try:
            size = p.stat().st_size
            if max_file and size > max_file:
                continue
            target = tmp / p.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
        except OSError:
            continue
        got += size
    tmp.rename(dest)
    return dest


def make_large(dest: Path) -> Path:
    """Three files of 50, 100 and 150 MB: /usr/lib files over 100 KB concatenated in order,
    each file starting further along the list, so no two are alike."""
    if dest.exists():
        return dest
    sources = sorted(p for p in Path("/usr/lib").rglob("*")
                     if p.is_file() and not p.is_symlink() and p.stat().st_size > 100_000)
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for n, mb in enumerate((50, 100, 150)):
        want, k = mb << 20, n * len(sources) // 3
        with open(tmp / f"blob{n}", "wb") as out:
            while out.tell() < want:
                data = sources[k % len(sources)].read_bytes()
                out.write(data[: want - out.tell()])
                k += 1
    tmp.rename(dest)
    return dest


def shape_tree(shape: str) -> Path:
    if shape == "tiny":
        return Path("/usr/share/zoneinfo")
    if shape == "service":
        return Path("/usr/lib/python3.11")
    if shape == "large":
        return make_large(INPUTS / "large")
    if shape == "mixed":
        return make_sample(INPUTS / "mixed-1g", 1 << 30, usr_files())
    raise SystemExit(f"unknown shape {shape}")


def bench_linear(work: Path, configs: list[tuple[str, str]]) -> list[str]:
    """The same kind of input at 1x, 4x and 16x: 16, 64 and 256 MB samples of /usr, files of
    at most 2 MB (so that no one file makes a sample overshoot its size)."""
    files = usr_files()
    env = child_env()
    rows = [f"linearity: samples of /usr (fixed pseudo-random order) at 1x/4x/16x; one run each; "
            f"load average before: {loadavg()}",
            "| options | input | MB | files | mksq s | native s | native/mksq | native CPU s "
            "| native CPU s per MB | per MB /1x |", "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    for compression, block in configs:
        base = 0.0
        for mult in (1, 4, 16):
            tree = make_sample(INPUTS / f"usr-{16 * mult}m-2m", (16 * mult) << 20, files, 2 << 20)
            size = warm(tree)
            count = sum(len(f) for _, _, f in os.walk(tree))
            img = work / "lin.img"
            img.unlink(missing_ok=True)
            mw, _, _ = measure(mksquashfs_cmd(tree, img, compression, block))
            img.unlink()
            nw, _, nc = measure([sys.executable, str(WRITE), str(tree), str(img),
                                 compression, block], env)
            per_mb = nc / (size / 1e6)
            base = base or per_mb
            rows.append(f"| {compression.split()[0]} {block} | {mult}x | {size / 1e6:.0f} | "
                        f"{count} | {mw:.2f} | {nw:.2f} | {nw / mw:.2f} | {nc:.2f} | "
                        f"{per_mb * 1000:.1f} ms | {per_mb / base:.2f} |")
            print(rows[-1], flush=True)
    print(f"load average after: {loadavg()}", flush=True)
    return rows


def loadavg() -> str:
    """The load average as /proc/loadavg has it (1, 5, 15 minutes)."""
    return ", ".join(Path("/proc/loadavg").read_text().split()[:3])


def bench_same_tree(work: Path) -> list[str]:
    """Our build's image against the C writers packing the very tree it holds.

    A spec of 8 copies of /usr/share/zoneinfo (``{ source, target }``), lz4, 128K: the
    image also holds what the unit's program needs (libc, the loader, C.UTF-8, the
    closure record), so the comparison that says something packs the unpacked image.
    """
    spec = work / "zspec"
    spec.mkdir()
    (spec / "zb.service").write_text("[Service]\nExecStart=/usr/bin/true\n")
    contents = ", ".join(f'{{ source = "/usr/share/zoneinfo", target = "/srv/z{i}" }}'
                         for i in range(8))
    (spec / "portable.toml").write_text(
        'pname = "zb"\nversion = "1"\nunits = ["zb.service"]\nsquash-compression = "lz4"\n'
        f'squash-block-size = "128K"\ncontents = [{contents}]\n')
    env = {"PYTHONPATH": str(REPO / "src"), "SOURCE_DATE_EPOCH": str(MTIME)}
    rows = ["same tree: 8 copies of /usr/share/zoneinfo, lz4 128K, built end to end, then "
            "the image's own tree packed by the C writers:"]
    print(rows[0], flush=True)
    sizes: dict[str, int] = {}
    for writer in ("native", "mksquashfs"):
        out = work / f"z-{writer}"
        measure([sys.executable, "-m", "portable_service", "build", str(spec), "--writer",
                 writer, "--no-verify", "-q", "-o", str(out)], env)
        sizes[writer] = next(out.glob("*.raw")).stat().st_size
    unpacked = work / "z-tree"
    measure(["unsquashfs", "-q", "-n", "-d", str(unpacked), str(next(
        (work / "z-native").glob("*.raw")))])
    entries = 1 + sum(len(d) + len(f) for _, d, f in os.walk(unpacked))
    for name, make in (("mksquashfs", mksquashfs_cmd), ("gensquashfs", gensquashfs_cmd)):
        img = work / f"z-{name}.img"
        measure(make(unpacked, img, "lz4", "128K"))
        sizes[f"C {name}"] = img.stat().st_size
    only = work / "z-only"
    only.mkdir()
    for i in range(8):
        shutil.copytree("/usr/share/zoneinfo", only / f"z{i}", symlinks=True)
    measure(mksquashfs_cmd(only, work / "z-o.img", "lz4", "128K"))
    sizes["C mksquashfs, zoneinfo copies only"] = (work / "z-o.img").stat().st_size
    rows.append(f"  image tree: {entries} entries")
    for name, value in sizes.items():
        rows.append(f"  {name:<36} {value:>12,} bytes  "
                    f"{value / sizes['C mksquashfs']:.3f} of mksquashfs (same tree)")
        print(rows[-1], flush=True)
    return rows


def bench_e2e(work: Path, runs: int) -> list[str]:
    contents = [c for c in E2E_CONTENTS if os.path.exists(c)]
    spec = work / "spec"
    spec.mkdir()
    (spec / "bench.service").write_text("[Service]\nExecStart=/usr/bin/gdb --version\n")
    (spec / "portable.toml").write_text(
        'pname = "bench"\nversion = "1"\nunits = ["bench.service"]\n'
        f"contents = {contents!r}\n".replace("'", '"'))
    env = {"PYTHONPATH": str(REPO / "src"), "SOURCE_DATE_EPOCH": str(MTIME)}
    rows = [f"end-to-end build of a spec with contents {', '.join(contents)} "
            "(closure + image, spec's default compression):"]
    print(rows[0], flush=True)
    for writer in ("mksquashfs", "native"):
        walls, rss_all, cpus = [], [], []
        for _ in range(runs):
            out = work / f"out-{writer}"
            shutil.rmtree(out, ignore_errors=True)
            wall, rss, cpu = measure([sys.executable, "-m", "portable_service", "build",
                                      str(spec), "--writer", writer, "-q", "-o", str(out)], env)
            walls.append(wall)
            rss_all.append(rss)
            cpus.append(cpu)
        image = next((work / f"out-{writer}").glob("*.raw"))
        rows.append(f"  {writer:<10} {statistics.median(walls):6.2f} s  "
                    f"CPU {statistics.median(cpus):6.2f} s  "
                    f"{image.stat().st_size:>12,} bytes  peak {max(rss_all):5.0f} MB")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--limit":
        child_limit(*sys.argv[2:5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", action="append", choices=[*SHAPES, "mixed"],
                    help=f"input shape (repeatable; default {', '.join(SHAPES)})")
    ap.add_argument("--big", action="store_true", help="add the 1 GB mixed tree")
    ap.add_argument("--tree", type=Path, action="append", help="any input tree (repeatable)")
    ap.add_argument("--compression", action="append",
                    help="only these compressors (gzip, xz, zstd, lz4; repeatable)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-linear", action="store_true", help="skip the 1x/4x/16x table")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end builds")
    args = ap.parse_args()
    for tool in ("mksquashfs", "gensquashfs", "unsquashfs"):
        if not shutil.which(tool):
            print(f"{tool} is not installed: nothing to compare with "
                  "(apt-get install squashfs-tools squashfs-tools-ng)", file=sys.stderr)
            return 2
    if args.compression:
        CONFIGS[:] = [c for c in CONFIGS if c[0].split()[0] in args.compression]
    work = Path(tempfile.mkdtemp(prefix="sqfs-bench-"))
    warm_up()
    try:
        if args.tree:
            for tree in args.tree:
                bench_tree(tree, args.runs, work)
        else:
            shapes = (args.shape or SHAPES) + (["mixed"] if args.big else [])
            for shape in shapes:
                bench_tree(shape_tree(shape), args.runs, work, label=shape)
        if not args.no_linear:
            bench_linear(work, [c for c in CONFIGS if c[0].split()[0] in ("zstd", "lz4")])
        if not args.no_e2e:
            bench_same_tree(work)
            bench_e2e(work, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
