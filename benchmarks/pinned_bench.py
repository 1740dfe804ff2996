"""Pinned builds against a host build of the same service, in one run.

    PYTHONPATH=src python3 benchmarks/pinned_bench.py [--runs N] [--release bookworm]

The service: lighttpd (``packages = ["lighttpd"]``, one unit running it), built

- from the host's installed package (the standard path: ``packages`` without ``release``);
- pinned, cold: an empty cache (no apt indexes, no .deb files) and no lock file, so apt
  resolves against the archive, the indexes and packages are downloaded and verified;
- pinned, warm: the lock file and the cache from the cold build (no network).

Every build runs the same pipeline with verify, zstd compression, into a fresh folder.
Prints a Markdown table with each time's ratio to the host build, and the load average
before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """pname = "www"
version = "1"
packages = ["lighttpd"]
squash-compression = "zstd"
units = [{ name = "www.service", text = '''
[Service]
ExecStart=/usr/sbin/lighttpd -D -f /etc/lighttpd/lighttpd.conf
''' }]
"""


def build(folder: Path, env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "portable_service", "build", str(folder), "-q",
                    "-o", str(folder / "out")], env=env, check=True, capture_output=True)
    took = time.perf_counter() - start
    return took, (folder / "out/www_1.raw").stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--release", default="bookworm")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}")
    times: dict[str, list[float]] = {"host": [], "cold": [], "warm": []}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            host = Path(tmp, f"host{run}")
            host.mkdir()
            (host / "portable.toml").write_text(SPEC)
            t, sizes["host"] = build(host, env)
            times["host"].append(t)
            pinned = Path(tmp, f"pinned{run}")
            pinned.mkdir()
            (pinned / "portable.toml").write_text(
                SPEC + f'distribution = "debian"\nrelease = "{args.release}"\n')
            cache_env = {**env, "PORTABLE_SERVICE_CACHE": str(Path(tmp, f"cache{run}"))}
            t, sizes["cold"] = build(pinned, cache_env)
            times["cold"].append(t)
            subprocess.run(["rm", "-rf", str(pinned / "out")], check=True)
            t, sizes["warm"] = build(pinned, cache_env)
            times["warm"].append(t)
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}\n")
    base = statistics.median(times["host"])
    print("| build | median | runs | vs host build | image |")
    print("|---|---|---|---|---|")
    labels = {"host": "host-installed lighttpd", "cold": f"pinned {args.release}, cold cache",
              "warm": f"pinned {args.release}, warm (lock + cache)"}
    for key, label in labels.items():
        med = statistics.median(times[key])
        runs = ", ".join(f"{t:.1f}" for t in times[key])
        print(f"| {label} | {med:.1f} s | {runs} | {med / base:.2f}x | {sizes[key] / 2**20:.2f} MiB |")


if __name__ == "__main__":
    main()
