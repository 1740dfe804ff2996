"""Fuzz the squashfs reader with mutated images: every case must read or raise SquashfsError.

Seeds are small images made by mksquashfs (each compressor) and by our
writer. Each case mutates one seed (byte flips, random bytes, 0xFF runs,
truncation, superblock fields), then lists, stats and reads everything.
Seeds and mutations are fixed by --seed, so a run can be repeated exactly.
A case that raises anything but SquashfsError, takes over --case-timeout
seconds, or runs out of the address-space limit is a finding and is saved.

    PYTHONPATH=src python3 benchmarks/fuzz_reader.py --cases 10000
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from portable_service.errors import ImageError
from portable_service.squashfs import format as fmt
from portable_service.squashfs.errors import SquashfsError
from portable_service.squashfs.reader import SquashfsImage

READ_CAP = 4 << 20  # bytes read per file in one case


class Timeout(Exception):
    pass


def _alarm(_sig: int, _frame: object) -> None:
    raise Timeout


def make_source(root: Path) -> None:
    (root / "d/sub").mkdir(parents=True)
    (root / "d/file").write_bytes(b"abc" * 3000)
    (root / "d/random").write_bytes(random.Random(1).randbytes(9000))
    (root / "tail").write_bytes(b"tail")
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("d/file")
    (root / "d/sub/deep").write_text("deep")
    with open(root / "sparse", "wb") as f:
        f.truncate(20000)
        f.write(b"x")
    many = root / "many"
    many.mkdir()
    for i in range(300):
        (many / f"entry-{i:04d}-with-a-longer-name").write_text(str(i))
    os.setxattr(root / "tail", "user.x", b"y")
    os.setxattr(root / "d/file", "security.capability", b"\1\0\0\2" + bytes(16))


def make_seeds(work: Path) -> list[Path]:
    src = work / "src"
    make_source(src)
    seeds = []
    for comp in ("gzip", "xz", "zstd", "lz4"):
        out = work / f"mksquashfs-{comp}.img"
        subprocess.run(["mksquashfs", str(src), str(out), "-noappend", "-quiet", "-no-progress",
                        "-comp", comp, "-b", "4K", "-all-root", "-mkfs-time", "0",
                        "-all-time", "0"], check=True, capture_output=True)
        seeds.append(out)
    from portable_service.squashfs.compressor import from_options
    from portable_service.squashfs.writer import WriterOptions, nodes_from_directory, write_image

    for comp in ("gzip", "zstd"):
        out = work / f"native-{comp}.img"
        with open(out, "wb") as f:
            write_image(nodes_from_directory(src, mtime=0), f,
                        WriterOptions(from_options(comp, (), 4096), 4096, 0))
        seeds.append(out)
    return seeds


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    sb = fmt.Superblock.parse(data)
    meta_start = sb.inode_table
    for _ in range(rng.choice((1, 1, 2, 3, 8, 32))):
        r = rng.random()
        # most bugs hide in metadata: aim there more often than at file data
        if r < 0.15:
            i = rng.randrange(fmt.SUPERBLOCK_SIZE)
        elif r < 0.75:
            i = rng.randrange(meta_start, sb.bytes_used)
        else:
            i = rng.randrange(len(buf))
        how = rng.random()
        if how < 0.4:
            buf[i] ^= 1 << rng.randrange(8)
        elif how < 0.7:
            buf[i] = rng.randrange(256)
        elif how < 0.85:
            buf[i: i + 4] = bytes([0xFF]) * 4
        else:
            buf[i: i + 2] = bytes(2)
    if rng.random() < 0.05:
        del buf[rng.randrange(len(buf)):]
    return bytes(buf[: len(data)])


def exercise(path: Path) -> None:
    with SquashfsImage(path) as im:
        for name, st in im.walk():
            im.stat(name)
            im.xattrs(name)
            if st.kind == "dir":
                im.listdir(name)
            elif st.kind == "symlink":
                im.readlink(name)
            elif st.kind == "file":
                with im.open(name) as f:
                    left = READ_CAP
                    while left > 0 and (chunk := f.read(min(left, 1 << 16))):
                        left -= len(chunk)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--case-timeout", type=float, default=5.0)
    ap.add_argument("--memory-limit-mb", type=int, default=1024)
    ap.add_argument("--findings", type=Path, default=Path("fuzz-findings"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sqfs-fuzz-"))
    try:
        seeds = [(p.name, p.read_bytes()) for p in make_seeds(work)]
        for _name, data in seeds:  # the seeds themselves must read cleanly
            (work / "case").write_bytes(data)
            exercise(work / "case")
        limit = args.memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        signal.signal(signal.SIGALRM, _alarm)
        rng = random.Random(args.seed)
        counts = {"read fine": 0, "ImageError": 0}
        findings: list[str] = []
        slowest = 0.0
        start = time.monotonic()
        case = work / "case"
        for n in range(args.cases):
            name, data = rng.choice(seeds)
            case.write_bytes(mutate(data, rng))
            t0 = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, args.case_timeout)
            try:
                exercise(case)
                counts["read fine"] += 1
            except (ImageError, SquashfsError):  # the reader's own errors, as it is a library
                counts["ImageError"] += 1
            except (Timeout, MemoryError, Exception) as e:  # findings, all of them
                args.findings.mkdir(exist_ok=True)
                shutil.copy(case, args.findings / f"case-{n}-{name}")
                findings.append(f"case {n} ({name}): {type(e).__name__}: {e}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, time.monotonic() - t0)
        elapsed = time.monotonic() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"cases: {args.cases} from {len(seeds)} seeds in {elapsed:.1f} s "
          f"(slowest case {slowest * 1000:.0f} ms, peak RSS {peak:.0f} MB, "
          f"address space limit {args.memory_limit_mb} MB)")
    print(f"read fine: {counts['read fine']}, ImageError: {counts['ImageError']}, "
          f"findings: {len(findings)}")
    for line in findings[:50]:
        print("  " + line)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
