"""How long the image-reading verbs take, as ratios against unsquashfs on the same image.

    PYTHONPATH=src python3 benchmarks/inspect_bench.py [HOST_FOLDER ...]

Packs the host folders (default: /usr/bin and /usr/lib/x86_64-linux-gnu, i.e. thousands
of ELF files) with mksquashfs (xz, 1M blocks, as our builds) and times, in one run:

- listing every entry: our walk vs ``unsquashfs -lln``;
- reading the largest file: ours vs ``unsquashfs -cat``;
- a whole ``verify`` (listing, units, every ELF file's loader and libraries) and a
  ``diff`` of the image with itself (reads every byte twice) vs ``unsquashfs -d`` into a
  temporary folder: without this tool, looking at files inside means extracting them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str]) -> int:
    from portable_service.fs.views import IndexedFS, open_image
    from portable_service.look.diff import diff_images
    from portable_service.look.verify import verify

    folders = argv or [p for p in ("/usr/bin", "/usr/lib/x86_64-linux-gnu") if Path(p).is_dir()]
    mksquashfs, unsquashfs = shutil.which("mksquashfs"), shutil.which("unsquashfs")
    if not (mksquashfs and unsquashfs):
        print("needs mksquashfs and unsquashfs (squashfs-tools)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "bench_1.raw"
        run(mksquashfs, *folders, str(img), "-noappend", "-quiet", "-no-progress",
            "-all-root", "-keep-as-directory", "-comp", "xz", "-b", "1M")
        fs = IndexedFS(open_image(img))
        files = [(p, st.size) for p, st in fs.entries.items() if st.kind == "file"]
        biggest = max(files, key=lambda f: f[1])
        print(f"image: {img.stat().st_size / 2**20:.1f} MiB from {', '.join(folders)}; "
              f"{len(fs.entries)} entries, {sum(s for _, s in files) / 2**20:.1f} MiB content")

        rows = []
        ours = timed(lambda: IndexedFS(open_image(img)), 3)
        theirs = timed(lambda: run(unsquashfs, "-lln", str(img)), 3)
        rows.append(("list every entry", ours, theirs, "unsquashfs -lln"))

        ours = timed(lambda: open_image(img).read(biggest[0]), 3)
        theirs = timed(lambda: run(unsquashfs, "-cat", str(img), biggest[0].lstrip("/")), 3)
        rows.append((f"read {biggest[1] / 2**20:.1f} MiB file", ours, theirs, "unsquashfs -cat"))

        out = Path(tmp) / "x"
        extract = timed(lambda: (shutil.rmtree(out, ignore_errors=True),
                                 run(unsquashfs, "-d", str(out), "-no-progress", str(img))))
        shutil.rmtree(out, ignore_errors=True)
        problems: list[object] = []
        ours = timed(lambda: problems.extend(verify(IndexedFS(open_image(img)), img.name)))
        elves = sum(1 for p in problems if getattr(p, "rule", "").startswith("elf-"))
        rows.append(("verify (every ELF file)", ours, extract, "unsquashfs -d (extract)"))

        ours = timed(lambda: diff_images(IndexedFS(open_image(img)), img.name,
                                         IndexedFS(open_image(img)), img.name))
        rows.append(("diff image with itself", ours, extract, "unsquashfs -d (extract)"))

        print(f"{'task':28} {'ours':>9} {'tool':>9} {'ratio':>7}  tool")
        for task, a, b, tool in rows:
            print(f"{task:28} {a:8.3f}s {b:8.3f}s {a / b:6.1f}x  {tool}")
        print(f"verify found {len(problems)} problem(s), {elves} about ELF files "
              "(the folders are not a portable image: no loader, no libraries)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
