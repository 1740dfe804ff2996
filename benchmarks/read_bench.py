"""The read side against unsquashfs, on the same images, in one run: ``ls``, ``cat``, ``verify``.

    PYTHONPATH=src python3 benchmarks/read_bench.py [--work DIR] [--runs 3] [--src DIR]

Packs the inputs once with mksquashfs (kept in ``--work`` for the next run):

- ``lib``: /usr/lib/x86_64-linux-gnu without static archives and libLLVM (about 340 MB
  of shared libraries, 3,000 entries), once per compressor: xz (1M blocks, as our
  builds), zstd, gzip, lz4 (128K blocks, mksquashfs' default);
- ``venv``: 20 copies of /usr/lib/python3 (65,000 entries, mostly small files), xz;
- ``zoneN``: N copies of /usr/share/zoneinfo (1,300 entries each), N = 1, 4, 16;
- ``bigN``: one file of N MiB (the head of libLLVM + libicudata), N = 16, 64, 256,
  xz 1M and zstd 128K.

and times, each pair alternately ``--runs`` times (best run kept: the machine is
shared, and the fastest run is the one least disturbed), the whole command as a
user runs it, output to /dev/null:

- ``portable-service ls -lR IMAGE`` (every entry, long form) vs ``unsquashfs -lln IMAGE``;
- ``portable-service cat IMAGE PATH`` vs ``unsquashfs -cat IMAGE PATH``;
- ``portable-service verify IMAGE`` vs ``unsquashfs -lln`` (the least a check of every
  entry must do) and ``unsquashfs -d`` (what looking at every file costs without this tool);

plus the same walk and file read in-process (no interpreter start). CPU s is user +
system of the process and its threads, which other load on the machine hardly
changes; wall time moves with it. ``--src`` runs the command from another source
tree (e.g. the main checkout, for a before/after).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIB = Path("/usr/lib/x86_64-linux-gnu")
QUIET = ["-noappend", "-quiet", "-no-progress", "-all-root", "-keep-as-directory",
         "-mkfs-time", "0", "-all-time", "0"]
COMPRESSORS = {"xz": ["-comp", "xz", "-b", "1M"], "zstd": ["-comp", "zstd"],
               "gzip": ["-comp", "gzip"], "lz4": ["-comp", "lz4"]}


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_cmd(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of one command, its output thrown away."""
    cpu, start = _cpu_children(), time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                          check=False)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):  # verify exits 1 on problems: still a full run
        raise SystemExit(f"{' '.join(cmd)} failed with exit {done.returncode}")
    return wall, _cpu_children() - cpu


def run_here(fn: Callable[[], object]) -> tuple[float, float]:
    cpu, start = _cpu_self(), time.perf_counter()
    fn()
    return time.perf_counter() - start, _cpu_self() - cpu


def best(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(w for w, _ in pairs), min(c for _, c in pairs)


class Bench:
    def __init__(self, runs: int, src: Path) -> None:
        self.runs = runs
        self.env = {**os.environ, "PYTHONPATH": str(src)}
        self.ours = [sys.executable, "-m", "portable_service"]
        self.rows: list[tuple[str, str, str, tuple[float, float], tuple[float, float]]] = []

    def pair(self, case: str, task: str, tool: str, ours: Callable[[], tuple[float, float]],
             theirs: Callable[[], tuple[float, float]]) -> None:
        a: list[tuple[float, float]] = []
        b: list[tuple[float, float]] = []
        for _ in range(self.runs):  # alternately: a load change hits both
            a.append(ours())
            b.append(theirs())
        self.rows.append((case, task, tool, best(a), best(b)))
        self.print_row(self.rows[-1])

    def cli(self, *args: str) -> Callable[[], tuple[float, float]]:
        return lambda: run_cmd([*self.ours, *args], self.env)

    @staticmethod
    def tool(*args: str) -> Callable[[], tuple[float, float]]:
        return lambda: run_cmd(["unsquashfs", *args])

    HEAD = (f"| {'image':13} | {'task':24} | {'ours s':>7} | {'tool s':>7} | {'wall x':>6} | "
            f"{'ours CPU':>8} | {'tool CPU':>8} | {'CPU x':>6} | tool")

    @staticmethod
    def print_row(row: tuple[str, str, str, tuple[float, float], tuple[float, float]]) -> None:
        case, task, tool, (aw, ac), (bw, bc) = row
        print(f"| {case:13} | {task:24} | {aw:7.3f} | {bw:7.3f} | {aw / bw:6.2f} | "
              f"{ac:8.3f} | {bc:8.3f} | {ac / max(bc, 1e-3):6.2f} | {tool}", flush=True)


def mksquashfs(src: list[Path], out: Path, comp: list[str], extra: list[str] = ()) -> None:
    if out.exists():
        return
    tmp = out.with_suffix(".tmp")
    subprocess.run(["mksquashfs", *map(str, src), str(tmp), *QUIET, *comp, *extra], check=True,
                   stdout=subprocess.DEVNULL)
    tmp.rename(out)


def prepare(work: Path) -> dict[str, Path]:
    """The images, made once and kept (with the trees they were made of)."""
    work.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}

    def copies(tree: Path, src: str, n: int) -> Path:
        if not tree.exists():
            for i in range(n):
                shutil.copytree(src, tree / f"z{i}", symlinks=True)
        return tree

    for n in (1, 4, 16):
        images[f"zone{n}"] = img = work / f"zone{n}.xz.raw"
        if not img.exists():
            mksquashfs([copies(work / f"zone{n}", "/usr/share/zoneinfo", n)], img,
                       COMPRESSORS["xz"])
    images["venv"] = work / "venv.xz.raw"
    if not images["venv"].exists():
        mksquashfs([copies(work / "venv", "/usr/lib/python3", 20)], images["venv"],
                   COMPRESSORS["xz"])
    for n in (16, 64, 256):
        for comp in ("xz", "zstd"):
            images[f"big{n}.{comp}"] = img = work / f"big{n}.{comp}.raw"
            tree = work / f"big{n}"
            if not img.exists():
                if not (tree / "big.bin").exists():
                    tree.mkdir(exist_ok=True)
                    with (tree / "big.bin").open("wb") as out:
                        libs = sorted(LIB.glob("libLLVM-*.so.1")) + sorted(
                            LIB.glob("libicudata.so.*"))
                        for lib in libs:
                            out.write(lib.read_bytes())
                        out.truncate(min(out.tell(), n << 20))
                mksquashfs([tree], img, COMPRESSORS[comp])
    for comp, opts in COMPRESSORS.items():
        images[f"lib.{comp}"] = img = work / f"lib.{comp}.raw"
        mksquashfs([LIB], img, opts, ["-wildcards", "-e", "... *.a", "libLLVM*"])
    return images


def read_all(image: str, path: str) -> int:
    """Every byte of a file, as cat reads it (by 1 MiB reads where there is no stream)."""
    from portable_service.fs.views import open_image

    fs = open_image(image)
    stream = getattr(fs, "stream", None)
    if stream is not None:
        return sum(map(len, stream(path)))
    size, n = fs.stat(path).size, 0
    for offset in range(0, size, 1 << 20):
        n += len(fs.read(path, offset, 1 << 20))
    return n


def largest_file(image: Path) -> tuple[str, int]:
    from portable_service.squashfs.reader import SquashfsImage

    with SquashfsImage(image) as im:
        return max(((p, st.size) for p, st in im.walk() if st.kind == "file"),
                   key=lambda f: f[1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "read-bench",
                    help="where the images are made and kept")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--src", type=Path, default=REPO / "src",
                    help="the source tree whose command is timed (default: this one)")
    ap.add_argument("--only", default="", help="comma-separated image names to time")
    ap.add_argument("--tasks", default="ls,walk,cat,read,verify,extract",
                    help="comma-separated tasks to time (default: all)")
    args = ap.parse_args(argv)
    if not (shutil.which("mksquashfs") and shutil.which("unsquashfs")):
        print("needs mksquashfs and unsquashfs (squashfs-tools)", file=sys.stderr)
        return 2
    from portable_service.fs.views import IndexedFS, open_image
    from portable_service.squashfs.reader import SquashfsImage

    images = prepare(args.work)
    only = set(filter(None, args.only.split(",")))
    b = Bench(args.runs, args.src)
    tasks = set(args.tasks.split(","))
    print(f"{os.cpu_count()} cores, load average before: {loadavg()}; best of {args.runs} "
          f"runs; ours = {args.src}")
    for name, img in images.items():
        if only and name not in only:
            continue
        with SquashfsImage(img) as im:
            entries = sum(1 for _ in im.walk())
        print(f"# {name}: {img.stat().st_size / 2**20:.1f} MiB, {entries} entries, "
              f"{im.superblock.compressor} {im.superblock.block_size >> 10}K blocks")
    print(Bench.HEAD)
    for name, img in images.items():
        if only and name not in only:
            continue
        i = str(img)
        if not name.startswith("big"):
            if "ls" in tasks:
                b.pair(name, "ls -lR (every entry)", "unsquashfs -lln", b.cli("ls", "-lR", i),
                       b.tool("-lln", i))
            if "walk" in tasks:
                b.pair(name, "walk, in-process", "unsquashfs -lln",
                       lambda i=i: run_here(lambda: IndexedFS(open_image(i))),
                       b.tool("-lln", i))
        if name.startswith(("big", "lib")):
            path, size = largest_file(img)
            if "cat" in tasks:
                b.pair(name, f"cat {size / 2**20:.0f} MiB file", "unsquashfs -cat",
                       b.cli("cat", i, path), b.tool("-cat", i, path.lstrip("/")))
            if "read" in tasks:
                b.pair(name, "read file, in-process", "unsquashfs -cat",
                       lambda i=i, path=path: run_here(lambda: read_all(i, path)),
                       b.tool("-cat", i, path.lstrip("/")))
        if name.startswith(("lib", "venv", "zone")):
            if "verify" in tasks:
                b.pair(name, "verify", "unsquashfs -lln", b.cli("verify", i),
                       b.tool("-lln", i))
            if "extract" not in tasks:
                continue
            out = args.work / "extracted"

            def extract(i: str = i, out: Path = out) -> tuple[float, float]:
                shutil.rmtree(out, ignore_errors=True)
                try:
                    return run_cmd(["unsquashfs", "-no-progress", "-d", str(out), i])
                finally:
                    shutil.rmtree(out, ignore_errors=True)

            b.pair(name, "verify", "unsquashfs -d", b.cli("verify", i), extract)
    print(f"load average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
