"""Hash-tree benchmark: our dm-verity tree against ``veritysetup format`` on the same data.

    python3 benchmarks/verity_bench.py [--sizes 4,64,512] [--runs 5] [--image IMG ...]

For each input (random data of the given sizes in MiB, and any images named), both compute
the hash tree with the same salt and UUID; the script checks that the root hash and the hash
device bytes are identical, and prints the best of ``--runs`` wall times and CPU times of
each (ratios > 1: ours is faster) and the load average. On a loaded machine the CPU times
are the steadier comparison; ours may spread over several threads, veritysetup uses one.
Our time includes reading the file (as veritysetup's does) and, for ``tree_for_image``, the
extra pass that derives the salt from the image's digest.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from portable_service.disk import verity

SALT = hashlib.sha256(b"bench").digest()
UUID = "8f2e0b1c-3d4a-4b5c-8d6e-7f8091a2b3c4"


def cpu_now() -> float:
    """CPU seconds of this process (all threads) and of its waited-for children: unlike wall
    time, barely moved by other processes competing for the cores."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def best(fn, runs: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The best wall time and the best CPU time of ``runs`` calls."""
    walls, cpus = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), cpu_now()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(cpu_now() - cpu)
    return min(walls), min(cpus)


def veritysetup(data: Path, hash_dev: Path) -> str:
    hash_dev.unlink(missing_ok=True)
    out = subprocess.run(["veritysetup", "format", str(data), str(hash_dev), "--salt", SALT.hex(),
                          "--uuid", UUID], capture_output=True, text=True, check=True).stdout
    return next(ln.split()[-1] for ln in out.splitlines() if ln.startswith("Root hash:"))


def bench(data: Path, runs: int, work: Path) -> None:
    theirs_dev = work / "theirs.verity"
    their_root = veritysetup(data, theirs_dev)
    ours = verity.build_hash_tree(data, salt=SALT, uuid=UUID)
    same = ours.root_hash.hex() == their_root and ours.hash_tree == theirs_dev.read_bytes()
    t_theirs = best(lambda: veritysetup(data, theirs_dev), runs)
    t_ours = best(lambda: verity.build_hash_tree(data, salt=SALT, uuid=UUID), runs)
    t_seeded = best(lambda: verity.tree_for_image(data), runs)
    mib = data.stat().st_size / 2**20
    print(f"{data.name} ({mib:.1f} MiB), identical: {'yes' if same else 'NO'}")
    for what, i in (("wall", 0), ("cpu", 1)):
        print(f"  {what:>4}: veritysetup {t_theirs[i] * 1000:7.1f} ms   "
              f"ours {t_ours[i] * 1000:7.1f} ms ({t_theirs[i] / t_ours[i]:5.2f}x)   "
              f"ours with the seed pass {t_seeded[i] * 1000:7.1f} ms "
              f"({t_theirs[i] / t_seeded[i]:5.2f}x)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="4,64,512", help="random inputs, MiB (comma-separated)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--image", action="append", type=Path, default=[], help="also this image")
    args = ap.parse_args()
    print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")
    print(subprocess.run(["veritysetup", "--version"], capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory(prefix="verity-bench.") as tmp:
        work = Path(tmp)
        for size in (int(s) for s in args.sizes.split(",") if s):
            data = work / f"random-{size}M"
            with open(data, "wb") as f:
                for _ in range(size):
                    f.write(os.urandom(2**20))
            bench(data, args.runs, work)
            data.unlink()
        for image in args.image:
            bench(image, args.runs, work)
    print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
