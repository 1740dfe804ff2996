"""The native squashfs writer against mksquashfs, side by side, in one run.

For each configuration both writers pack the same tree (all files owned by
root, fixed times) alternately ``--runs`` times; the script prints the
median wall time, the image size and the peak memory (max RSS of the
process) of each, with the ratios native/mksquashfs. mksquashfs uses all
cores (its default); the native writer uses one compression thread per core.
Then it builds one spec end to end (closure + image) with each writer.

    PYTHONPATH=src python3 benchmarks/squashfs_bench.py [--tree /usr/lib/python3.11] [--runs 3]
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
CONFIGS = [("xz -Xdict-size 100%", "1M"), ("zstd", "128K"), ("gzip", "128K")]
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


def bench_tree(tree: Path, runs: int, work: Path) -> list[str]:
    env = {"PYTHONPATH": str(REPO / "src")}
    rows = []
    size = warm(tree)
    files = sum(len(f) for _, _, f in os.walk(tree))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"tree {tree}: {size / 1e6:.1f} MB in {files} files; {os.cpu_count()} cores; "
          f"median of {runs} runs; load average before: {load}", flush=True)
    header = (f"| {'options':<24} | {'mksquashfs s':>12} | {'native s':>8} | {'time x':>6} | "
              f"{'mksq CPU s':>10} | {'native CPU s':>12} | "
              f"{'mksquashfs bytes':>16} | {'native bytes':>12} | {'size x':>6} | "
              f"{'mksq MB':>7} | {'native MB':>9} |")
    rows.append(header)
    rows.append("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for compression, block in CONFIGS:
        theirs, ours = work / "theirs.img", work / "ours.img"
        t_m, t_n, m_m, m_n, c_m, c_n = [], [], [], [], [], []
        for _ in range(runs):
            for p in (theirs, ours):
                p.unlink(missing_ok=True)
            wall, rss, cpu = measure(["mksquashfs", str(tree), str(theirs), "-noappend", "-quiet",
                                      "-no-progress", "-all-root", "-all-time", str(MTIME),
                                      "-mkfs-time", str(MTIME), "-b", block, "-comp",
                                      *compression.split()])
            t_m.append(wall)
            m_m.append(rss)
            c_m.append(cpu)
            wall, rss, cpu = measure([sys.executable, __file__, "--child", str(tree), str(ours),
                                      compression, block], env)
            t_n.append(wall)
            m_n.append(rss)
            c_n.append(cpu)
        s_m, s_n = theirs.stat().st_size, ours.stat().st_size
        tm, tn = statistics.median(t_m), statistics.median(t_n)
        rows.append(f"| {compression + ' ' + block:<24} | {tm:>12.2f} | {tn:>8.2f} | "
                    f"{tn / tm:>6.2f} | {statistics.median(c_m):>10.2f} | "
                    f"{statistics.median(c_n):>12.2f} | "
                    f"{s_m:>16,} | {s_n:>12,} | {s_n / s_m:>6.3f} | "
                    f"{max(m_m):>7.0f} | {max(m_n):>9.0f} |")
        print(rows[-1], flush=True)
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
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
    ap.add_argument("--tree", type=Path, default=Path("/usr/lib/python3.11"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-e2e", action="store_true")
    args = ap.parse_args()
    if not shutil.which("mksquashfs"):
        print("mksquashfs is not installed: nothing to compare with", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="sqfs-bench-"))
    try:
        bench_tree(args.tree, args.runs, work)
        if not args.no_e2e:
            bench_e2e(work, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
