"""The native squashfs writer against mksquashfs and gensquashfs, side by side, in one run.

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

    PYTHONPATH=src python3 benchmarks/squashfs_bench.py [--tree /usr/lib/python3.11 ...] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [("xz -Xdict-size 100%", "1M"), ("gzip", "128K"), ("zstd", "128K"), ("lz4", "128K")]
TREES = [Path("/usr/lib/python3.11"), Path("/usr/share/zoneinfo")]
# gensquashfs' name for each of mksquashfs' compressor options
GENSQUASHFS_EXTRA = {"-Xdict-size": "dictsize", "-Xcompression-level": "level"}
MTIME = 1_700_000_000
E2E_CONTENTS = ["/usr/bin/gdb", "/usr/bin/cmake", "/usr/bin/perf"]


def child_native(tree: str, out: str, compression: str, block: str) -> None:
    """Run in a child process so its peak memory is its own."""
    from portable_service.builder.writers.options import parse_block_size
    from portable_service.squashfs.compressor import from_options
    from portable_service.squashfs.writer import WriterOptions, nodes_from_directory, write_image

    name, *opts = compression.split()
    bs = parse_block_size(block)
    with open(out, "wb", buffering=1 << 20) as f:
        write_image(nodes_from_directory(tree, mtime=MTIME), f,
                    WriterOptions(from_options(name, tuple(opts), bs), bs, MTIME))


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
    from portable_service.builder.writers.options import parse_block_size

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


def bench_tree(tree: Path, runs: int, work: Path) -> list[str]:
    env = {"PYTHONPATH": str(REPO / "src")}
    rows = []
    size = warm(tree)
    files = sum(len(f) for _, _, f in os.walk(tree))
    print(f"tree {tree}: {size / 1e6:.1f} MB in {files} files; {os.cpu_count()} cores; "
          f"median of {runs} runs; load average before: {loadavg()}", flush=True)
    cols = [("options", 24), ("mksq s", 7), ("gensq s", 7), ("native s", 8), ("/mksq", 5),
            ("/gensq", 6), ("native CPU s", 12), ("mksquashfs bytes", 16),
            ("gensquashfs bytes", 17), ("native bytes", 12), ("size /mksq", 10),
            ("mksq MB", 7), ("gensq MB", 8), ("native MB", 9)]
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
                "native": ([sys.executable, __file__, "--child", str(tree), str(imgs["native"]),
                            compression, block], env),
            }
            for k, (cmd, cmd_env) in cmds.items():
                wall, rss, cpu = measure(cmd, cmd_env)
                walls[k].append(wall)
                peaks[k].append(rss)
                cpus[k].append(cpu)
        t = {k: statistics.median(v) for k, v in walls.items()}
        sz = {k: p.stat().st_size for k, p in imgs.items()}
        cells = [f"{compression + ' ' + block:<24}", f"{t['mksq']:>7.2f}", f"{t['gensq']:>7.2f}",
                 f"{t['native']:>8.2f}", f"{t['native'] / t['mksq']:>5.2f}",
                 f"{t['native'] / t['gensq']:>6.2f}",
                 f"{statistics.median(cpus['native']):>12.2f}",
                 f"{sz['mksq']:>16,}", f"{sz['gensq']:>17,}", f"{sz['native']:>12,}",
                 f"{sz['native'] / sz['mksq']:>10.3f}", f"{max(peaks['mksq']):>7.0f}",
                 f"{max(peaks['gensq']):>8.0f}", f"{max(peaks['native']):>9.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
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
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_native(*sys.argv[2:6])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", type=Path, action="append",
                    help=f"input tree (repeatable; default {', '.join(map(str, TREES))})")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-e2e", action="store_true")
    args = ap.parse_args()
    for tool in ("mksquashfs", "gensquashfs", "unsquashfs"):
        if not shutil.which(tool):
            print(f"{tool} is not installed: nothing to compare with "
                  "(apt-get install squashfs-tools squashfs-tools-ng)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="sqfs-bench-"))
    try:
        for tree in args.tree or TREES:
            bench_tree(tree, args.runs, work)
        bench_same_tree(work)
        if not args.no_e2e:
            bench_e2e(work, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
