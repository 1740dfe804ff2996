"""Discoverable Disk Images and erofs: sizes per format and compressor, and our DDI build
against ``systemd-repart --make-ddi=portable`` on the same tree, in one run.

1. The spec (``packages = ["lighttpd"]``, as closure_bench.py) is planned once; then each
   writer/compressor packs the same tree, bare (``format = "raw"``) and as a DDI, the
   median of ``--runs`` wall times each (the plan, i.e. the closure, is not timed).
2. The same tree, staged as a folder, goes to systemd-repart 257 (Debian 13, booted with
   the test harness; ``systemd-repart`` and ``erofs-utils`` installed into its throwaway
   overlay) with a key and certificate: root (erofs) + root-verity + root-verity-sig.
   Ours builds the same three partitions (erofs root, the native hash tree, the PKCS#7
   signature) from the tree. Both timed from tree to finished DDI.

    PYTHONPATH=src python3 benchmarks/ddi_bench.py [--runs 3] [--no-repart]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from portable_service.builder.ddi import protect, seed_of
from portable_service.builder.pipeline import plan
from portable_service.builder.spec import spec_from_mapping
from portable_service.builder.writers.erofs import ErofsWriter, stage
from portable_service.builder.writers.mksquashfs import MksquashfsWriter
from portable_service.builder.writers.options import Compression, PackOptions
from portable_service.disk import ddi
from portable_service.progress import QUIET

UNIT = {"name": "lt.service",
        "text": "[Service]\nExecStart=/usr/sbin/lighttpd -D -f /etc/lighttpd/lighttpd.conf\n"}
SQUASHFS = ["xz -Xdict-size 100%", "zstd", "gzip", "lz4"]
EROFS_ALL = ["lzma", "zstd", "deflate", "lz4hc", "lz4", "none"]
BLOCK = 1 << 20


def timed(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.monotonic()
        fn()
        times.append(time.monotonic() - start)
    return statistics.median(times)


def keys(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "bench.key", folder / "bench.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-subj", "/CN=bench", "-days", "30"], check=True,
                   capture_output=True)
    key.chmod(0o600)
    return key, cert


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-repart", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ddi-bench."))
    try:
        spec = spec_from_mapping({"pname": "lt", "version": "1", "units": [UNIT],
                                  "packages": ["lighttpd"]}, work)
        p = plan(spec)
        content = p.tree.total_size()
        print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")
        print(f"tree: packages=[lighttpd], {len(p.tree)} entries, {content / 1e6:.2f} MB of "
              f"file content; median of {args.runs} runs")
        print(f"{'writer':10} {'compression':22} {'raw MB':>8} {'DDI MB':>8} {'write s':>8} "
              f"{'DDI s':>7}")
        erofs = ErofsWriter.find(seed=spec.image_name)
        rows: list[tuple[str, str, object]] = [
            ("mksquashfs", c, MksquashfsWriter.find()) for c in SQUASHFS]
        rows += [("erofs", c, erofs) for c in EROFS_ALL if c == "none" or c in erofs.compressors]
        for name, comp, writer in rows:
            words = comp.split()
            options = PackOptions(Compression(words[0], tuple(words[1:])), BLOCK, 0)
            raw = work / f"{name}-{words[0]}.raw"
            disk = work / f"{name}-{words[0]}.ddi"
            secs = timed(lambda w=writer, o=options, r=raw: w.write(p.tree, r, o, QUIET),  # type: ignore[attr-defined]
                         args.runs)
            ddi_secs = timed(lambda r=raw, d=disk: ddi.write_ddi(r, d, seed=seed_of("lt_1.raw")),
                             args.runs)
            print(f"{name:10} {comp:22} {raw.stat().st_size / 1e6:8.2f} "
                  f"{disk.stat().st_size / 1e6:8.2f} {secs:8.2f} {ddi_secs:7.3f}")
        if not args.no_repart:
            against_repart(p, erofs, work, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def against_repart(p: object, erofs: ErofsWriter, work: Path, runs: int) -> None:
    from portable_service.harness import nspawn, roots

    tree = p.tree  # type: ignore[attr-defined]
    key, cert = keys(work)
    results: dict[str, tuple[float, float, float, int]] = {}
    for comp in ("lz4hc", "none"):
        options = PackOptions(Compression(comp), BLOCK, 0)
        steps: list[tuple[float, float, float]] = []
        for _ in range(runs):
            filesystem = work / "ours.fs"
            start = time.monotonic()
            erofs.write(tree, filesystem, options, QUIET)
            t_fs = time.monotonic()
            verity = protect(filesystem, work / "ours.verity", key, cert, QUIET)
            t_verity = time.monotonic()
            out = work / "lt_1.raw"
            ddi.write_ddi(filesystem, out, seed=seed_of(out.name), verity=verity)
            steps.append((t_fs - start, t_verity - t_fs, time.monotonic() - t_verity))
        med = [statistics.median(s[i] for s in steps) for i in range(3)]
        results[comp] = (med[0], med[1], med[2], (work / "lt_1.raw").stat().st_size)
    release = roots.RELEASES["trixie"]
    if not roots.is_ready(release):
        print("repart: the Debian 13 root is not cached (run the e2e tests once); skipped")
        return
    with nspawn.booted(release, roots.root_path(release)) as c:
        got = c.run("sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                    "apt-get install -y -qq --no-install-recommends systemd-repart "
                    "erofs-utils libcryptsetup12", timeout=600)
        if not got.ok:
            sys.exit(f"cannot install systemd-repart in the container: {got.output}")
        base = c.root / "tmp/bench"
        (base / "tree").mkdir(parents=True)
        stage(tree, base / "tree", QUIET)
        for f in (key, cert):
            shutil.copyfile(f, base / f.name)
        (base / key.name).chmod(0o600)
        mkfs = c.run("mkfs.erofs", "--version").output.strip().splitlines()[0]
        times = []
        for _ in range(runs):
            (base / "repart.raw").unlink(missing_ok=True)
            start = time.monotonic()
            made = c.run("systemd-repart", "--make-ddi=portable",
                         "--copy-source=/tmp/bench/tree", "--empty=create", "--size=auto",
                         f"--private-key=/tmp/bench/{key.name}",
                         f"--certificate=/tmp/bench/{cert.name}", "/tmp/bench/repart.raw",
                         timeout=600)
            times.append(time.monotonic() - start)
            if not made.ok:
                sys.exit(f"systemd-repart failed: {made.output}")
        repart_secs = statistics.median(times)
        repart_size = (base / "repart.raw").stat().st_size
        print()
        print(f"tree -> signed verity DDI (root erofs + root-verity + root-verity-sig), median "
              f"of {runs}:")
        print(f"  systemd-repart 257 --make-ddi=portable ({mkfs}, as root in the container): "
              f"{repart_secs:.2f} s, {repart_size / 1e6:.2f} MB")
        for comp, (fs_s, verity_s, gpt_s, size) in results.items():
            total = fs_s + verity_s + gpt_s
            print(f"  ours, mkfs.erofs {erofs_version(erofs)} {comp}: {total:.2f} s (file system "
                  f"{fs_s:.2f}, hash tree + signature {verity_s:.2f}, GPT {gpt_s:.3f}), "
                  f"{size / 1e6:.2f} MB; ours/repart: time {total / repart_secs:.2f}, "
                  f"size {size / repart_size:.2f}")


def erofs_version(erofs: ErofsWriter) -> str:
    out = subprocess.run([str(erofs.binary), "--version"], capture_output=True, text=True,
                         check=False)
    return (out.stdout + out.stderr).split()[1] if (out.stdout + out.stderr).split()[1:] else "?"


if __name__ == "__main__":
    main()
