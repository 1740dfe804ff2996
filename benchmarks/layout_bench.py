"""The build's own cost per image entry (closure, layout, SBOM, write, verify) at 1x, 4x and 16x input.

The input is a spec whose ``contents`` are N copies of /usr/share/zoneinfo
placed with ``{ source, target }`` (about 1,300 entries each: tiny files and
relative symlinks, the shape that makes per-entry cost show), lz4, 128K
blocks, one unit running /usr/bin/true. Each phase is timed in its own child
process per scale (wall seconds; wall and CPU microseconds per image entry), so a
``--before`` source tree (another checkout's ``src``) is measured in the same
run, alternating with this one. The writer is the native one; mksquashfs packs
the written image's tree alongside, for the cost of the writer itself.

    PYTHONPATH=src python3 benchmarks/layout_bench.py [--copies 4] [--scales 1,4,16]
        [--before /tmp/before/src] [--runs 1] [--tree FOLDER]

With ``--tree`` the contents are that one folder (a virtualenv, a node_modules)
instead of the zoneinfo copies. BENCHMARKS.md's virtualenv-like tree: 8 ``cp -a``
copies of this project's .venv, then ``find T -size +64k -delete``, ``find T -type l
-lname '/*' -delete`` (links into the host's pyenv: a secret place) and ``find T -xtype l
-delete``. Use ``--runs 3`` there: the first run pays the page cache for the tree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MTIME = 1_700_000_000
PHASES = ("closure", "layout", "sbom", "write", "verify")


def child(spec_dir: str, out_dir: str) -> None:
    """Run the build's phases one after the other and print their times as JSON."""
    from portable_service.builder import layout, sbom
    from portable_service.builder import units as units_mod
    from portable_service.builder.closure.secrets import check_no_secrets
    from portable_service.builder.closure.walk import resolve as resolve_closure
    from portable_service.builder.spec import load_spec
    from portable_service.builder.writers.native import NativeWriter
    from portable_service.builder.writers.options import PackOptions
    from portable_service.look.verify import check_written
    from portable_service.progress import QUIET

    times: dict[str, tuple[float, float]] = {}

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        times[name] = (time.perf_counter() - wall, time.process_time() - cpu)
        return result

    spec = load_spec(Path(spec_dir))
    units = units_mod.load_units(spec)

    def resolve():  # type: ignore[no-untyped-def]
        found = resolve_closure(spec, units)
        check_no_secrets(found)
        return found

    found = timed("closure", resolve)
    tree = timed("layout", lambda: layout.assemble(spec, units, found))
    timed("sbom", lambda: sbom.add_to_tree(tree, spec, found, None, MTIME))
    options = PackOptions(spec.squash_compression, spec.squash_block_size, MTIME)
    out = Path(out_dir) / spec.image_name
    timed("write", lambda: NativeWriter().write(tree, out, options, QUIET))
    timed("verify", lambda: check_written(out, out.name, lambda line: None,
                                          allow_missing=spec.allow_missing))
    print(json.dumps({"entries": len(tree), "times": times, "image": str(out)}))


def make_spec(work: Path, copies: int, tree: Path | None = None) -> Path:
    spec = work / f"spec-{copies}"
    spec.mkdir()
    (spec / "zb.service").write_text("[Service]\nExecStart=/usr/bin/true\n")
    contents = ", ".join(f'{{ source = "/usr/share/zoneinfo", target = "/srv/z{i}" }}'
                         for i in range(copies))
    if tree is not None:  # one tree of the user's (a virtualenv, a node_modules)
        contents = f'{{ source = "{tree}", target = "/opt/app" }}'
    (spec / "portable.toml").write_text(
        'pname = "zb"\nversion = "1"\nunits = ["zb.service"]\nsquash-compression = "lz4"\n'
        f'squash-block-size = "128K"\ncontents = [{contents}]\n')
    return spec


def run_child(src: Path, spec: Path, out: Path) -> dict[str, object]:
    out.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src), "SOURCE_DATE_EPOCH": str(MTIME)}
    proc = subprocess.run([sys.executable, __file__, "--child", str(spec), str(out)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({src}):\n{proc.stderr}")
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def mksquashfs_seconds(image: Path, work: Path) -> float:
    """Wall time of mksquashfs packing the tree our image holds (unpacked first)."""
    tree, img = work / "unpacked", work / "m.img"
    shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(image)], check=True,
                   stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    subprocess.run(["mksquashfs", str(tree), str(img), "-noappend", "-quiet", "-no-progress",
                    "-all-root", "-comp", "lz4", "-b", "128K"], check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    shutil.rmtree(tree, ignore_errors=True)
    img.unlink()
    return wall


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=4, help="copies of zoneinfo at 1x")
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--before", type=Path, help="another checkout's src, measured alongside")
    ap.add_argument("--runs", type=int, default=1, help="runs per case (median)")
    ap.add_argument("--tree", type=Path,
                    help="one folder as the contents instead of zoneinfo copies (at /opt/app)")
    args = ap.parse_args()
    srcs = {"after": REPO / "src"}
    if args.before:
        srcs = {"before": args.before.resolve(), **srcs}
    work = Path(tempfile.mkdtemp(prefix="layout-bench-"))
    print(f"{os.cpu_count()} cores; load average before: {loadavg()}", flush=True)
    print("| input | entries | source | "
          + " | ".join(f"{p} s (wall / CPU us/entry)" for p in PHASES)
          + " | build on top of writer us/entry | CPU us/entry | mksquashfs of the tree s |",
          flush=True)
    print("|---|---|---|" + "---|" * (len(PHASES) + 3), flush=True)
    try:
        scales = [1] if args.tree else [int(x) for x in args.scales.split(",")]
        for scale in scales:
            copies = args.copies * scale
            spec = make_spec(work, copies, args.tree.resolve() if args.tree else None)
            results: dict[str, list[dict[str, object]]] = {k: [] for k in srcs}
            for _ in range(args.runs):
                for name, src in srcs.items():
                    results[name].append(run_child(src, spec, work / f"out-{name}-{copies}"))
            for name, runs in results.items():
                n = int(runs[0]["entries"])  # type: ignore[call-overload]
                walls = {p: statistics.median(r["times"][p][0] for r in runs)  # type: ignore[index]
                         for p in PHASES}
                cpus = {p: statistics.median(r["times"][p][1] for r in runs)  # type: ignore[index]
                        for p in PHASES}
                extra = sum(walls[p] for p in PHASES if p != "write")
                extra_cpu = sum(cpus[p] for p in PHASES if p != "write")
                mksq = mksquashfs_seconds(Path(str(runs[-1]["image"])), work)
                cells = " | ".join(f"{walls[p]:.2f} ({walls[p] / n * 1e6:.0f} / "
                                   f"{cpus[p] / n * 1e6:.0f})" for p in PHASES)
                label = str(args.tree) if args.tree else f"{scale}x ({copies} copies)"
                print(f"| {label} | {n:,} | {name} | {cells} | "
                      f"{extra / n * 1e6:.0f} | {extra_cpu / n * 1e6:.0f} | {mksq:.2f} |",
                      flush=True)
            shutil.rmtree(work / f"out-after-{copies}", ignore_errors=True)
            shutil.rmtree(work / f"out-before-{copies}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {loadavg()}", flush=True)
    return 0


def loadavg() -> str:
    return ", ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    sys.exit(main())
